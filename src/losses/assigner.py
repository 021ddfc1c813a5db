"""Task-aligned label assignment for anchor-free detection heads.

``TaskAlignedAssigner``: TOOD's task-aligned assignment, Feng et al. 2021
(https://arxiv.org/abs/2108.07755), with the settings YOLOv8 trains with (top-k 10, alpha 0.5,
beta 6). Written here: torchvision and timm have no assigner, and ultralytics' is AGPL.

The alignment metric ``t = s^alpha * u^beta`` (``s``: predicted probability of the gt's class,
``u``: IoU of the predicted box with the gt box) picks, per gt, the anchors whose classification and
localisation already agree, so the two branches are trained towards the same anchors; the
classification target is ``t`` rescaled per gt (not 1), which ranks well-localised anchors higher
at NMS time.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import box_iou


class Assignment(NamedTuple):
    """Targets for every anchor (a tuple, so ``labels, boxes, scores, fg, idx = assigner(...)`` works).

    target_labels: ``(B, A)`` long, the assigned gt's class; ``C`` (no object) for background.
    target_boxes: ``(B, A, 4)`` xyxy of the assigned gt, same units as the inputs; 0 for background.
    target_scores: ``(B, A, C)`` soft classification target: the normalised alignment metric in the
        assigned class's column, 0 elsewhere and for background.
    fg_mask: ``(B, A)`` bool, anchors assigned to a gt.
    target_gt_idx: ``(B, A)`` long index of the assigned gt row in ``gt_boxes``; 0 for background,
        so read it only where ``fg_mask`` holds.
    """

    target_labels: torch.Tensor
    target_boxes: torch.Tensor
    target_scores: torch.Tensor
    fg_mask: torch.Tensor
    target_gt_idx: torch.Tensor


class TaskAlignedAssigner(nn.Module):
    """Assign anchors to ground-truth boxes by the task-alignment metric (TOOD / YOLOv8).

    1. Candidates of a gt: anchors whose point lies strictly inside the gt box.
    2. Among its candidates each gt takes the ``topk`` with the largest ``t = s^alpha * u^beta``.
    3. An anchor taken by several gts goes to the one its predicted box overlaps most (IoU).
    4. Target score of a positive anchor: ``t * max_u / max_t``, with both maxima over the anchors
       assigned to that gt, so each gt's best anchor gets the best IoU any of them reached.

    Args:
        topk: positives per gt at most (fewer when fewer candidates exist).
        alpha: exponent of the classification score in the metric.
        beta: exponent of the IoU; large, so that localisation dominates the choice.
        eps: guards the point-in-box test and the normalisation's division.
    """

    def __init__(self, topk: int = 10, alpha: float = 0.5, beta: float = 6.0, eps: float = 1e-9) -> None:
        super().__init__()
        if topk < 1:
            raise ValueError(f"topk must be >= 1, got {topk}")
        self.topk, self.alpha, self.beta, self.eps = topk, alpha, beta, eps

    @torch.no_grad()
    def forward(self, pred_scores: torch.Tensor, pred_boxes: torch.Tensor, anchor_points: torch.Tensor,
                gt_labels: torch.Tensor, gt_boxes: torch.Tensor, gt_mask: torch.Tensor) -> Assignment:
        """
        Args:
            pred_scores: ``(B, A, C)`` class probabilities (after sigmoid), detached or not.
            pred_boxes: ``(B, A, 4)`` decoded predicted boxes, xyxy.
            anchor_points: ``(A, 2)`` anchor xy in the same units as the boxes.
            gt_labels: ``(B, M)`` class indices (any value in padded rows).
            gt_boxes: ``(B, M, 4)`` xyxy, padded to the largest gt count of the batch.
            gt_mask: ``(B, M)`` bool, False for padding rows.
        """
        b, a, c = pred_scores.shape
        m = gt_boxes.shape[1]
        device = pred_scores.device
        if m == 0:  # no gt in the whole batch: everything is background
            return Assignment(
                target_labels=torch.full((b, a), c, dtype=torch.long, device=device),
                target_boxes=torch.zeros(b, a, 4, device=device),
                target_scores=torch.zeros(b, a, c, device=device),
                fg_mask=torch.zeros(b, a, dtype=torch.bool, device=device),
                target_gt_idx=torch.zeros(b, a, dtype=torch.long, device=device),
            )
        # fp32: u^6 of small IoUs underflows in fp16 under autocast
        pred_scores, pred_boxes = pred_scores.float(), pred_boxes.float()
        gt_boxes, anchor_points = gt_boxes.float(), anchor_points.float()
        gt_mask = gt_mask.reshape(b, m).bool()
        labels = gt_labels.reshape(b, m).long().clamp(0, c - 1)  # padded rows may hold -1

        side_dist = torch.cat([anchor_points - gt_boxes[:, :, None, :2],
                               gt_boxes[:, :, None, 2:] - anchor_points], dim=-1)     # B, M, A, 4
        candidates = (side_dist.amin(-1) > self.eps) & gt_mask[:, :, None]         # B, M, A

        iou = torch.stack([box_iou(g, p) for g, p in zip(gt_boxes, pred_boxes)])   # B, M, A
        score = pred_scores.gather(2, labels[:, None, :].expand(b, a, m)).transpose(1, 2)  # B, M, A
        align = score.pow(self.alpha) * iou.pow(self.beta) * candidates            # B, M, A

        # non-candidates rank below every candidate, even below one whose metric is 0 (as for an
        # untrained head), so a gt never loses a candidate slot to an anchor outside it
        top_idx = align.masked_fill(~candidates, -1.0).topk(min(self.topk, a), dim=-1).indices  # B, M, k
        pos = torch.zeros_like(candidates).scatter_(-1, top_idx, True) & candidates  # B, M, A

        # an anchor taken by several gts keeps only the gt its predicted box overlaps most
        multi = pos.sum(1, keepdim=True) > 1                                        # B, 1, A
        best = iou.masked_fill(~pos, -1.0).argmax(1, keepdim=True)                  # B, 1, A
        pos = torch.where(multi, torch.zeros_like(pos).scatter_(1, best, True), pos)  # B, M, A

        fg_mask = pos.any(1)                                                        # B, A
        gt_idx = pos.to(torch.uint8).argmax(1)                                      # B, A
        target_labels = labels.gather(1, gt_idx).masked_fill(~fg_mask, c)           # B, A
        target_boxes = gt_boxes.gather(1, gt_idx[..., None].expand(b, a, 4)) * fg_mask[..., None]  # B, A, 4

        # per gt, rescale t so that its largest value equals the largest IoU among its positives
        align = align * pos                                                         # B, M, A
        max_iou = (iou * pos).amax(-1, keepdim=True)                                # B, M, 1
        max_align = align.amax(-1, keepdim=True)                                    # B, M, 1
        norm = (align * max_iou / (max_align + self.eps)).amax(1)                  # B, A
        target_scores = F.one_hot(target_labels, c + 1)[..., :c].float() * norm[..., None]  # B, A, C
        return Assignment(target_labels, target_boxes, target_scores, fg_mask, gt_idx * fg_mask)
