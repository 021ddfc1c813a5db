"""The reference-based detector's training loss: YOLOv8's recipe with a prototype classifier.

* Assignment: :class:`~src.losses.assigner.TaskAlignedAssigner` on every anchor of every frame,
  background frames included (they have no gt, so all their anchors are negatives: the seed never
  supervised background and fired on empty frames).
* Classification: BCE (YOLOv8) or sigmoid focal loss (Lin et al. 2017,
  https://arxiv.org/abs/1708.02002; torchvision's) on the anchor logits against the assigner's soft
  targets, summed and divided by the sum of target scores.
* Boxes: CIoU (torchvision) or WIoU v3 (:class:`~src.losses.boxes.WIoUv3Loss`) plus DFL, on the
  positive anchors, each weighted by its target score.
* Supervised contrastive loss (Khosla et al. 2020) between the embeddings of positive anchors and
  the prototypes of the episode's videos: an anchor's positives are its own video's prototype and
  the other anchors on that object; other videos' objects are negatives.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import sigmoid_focal_loss

from src.losses.assigner import TaskAlignedAssigner
from src.losses.boxes import bbox_loss, bbox_to_ltrb, dfl_decode, dfl_loss, ltrb_to_bbox
from src.losses.contrastive import supcon_loss


def decode_boxes(out: dict) -> torch.Tensor:
    """Head outputs -> predicted boxes (B, A, 4) xyxy in input pixels."""
    grid = out["anchors"] / out["strides"]                              # A, 2 in cell units
    return ltrb_to_bbox(grid, dfl_decode(out["dist"].float())) * out["strides"]


class RefDetCriterion(nn.Module):
    """Weighted sum of classification, box, DFL and contrastive terms; returns (loss, parts)."""

    def __init__(self, reg_max: int = 16, box_loss: str = "ciou", cls_loss: str = "bce", box_weight: float = 7.5,
                 dfl_weight: float = 1.5, cls_weight: float = 0.5, supcon_weight: float = 0.5,
                 supcon_temperature: float = 0.1, topk: int = 10, max_contrast_anchors: int = 256) -> None:
        super().__init__()
        if cls_loss not in ("bce", "focal"):
            raise ValueError(f"cls_loss must be 'bce' or 'focal', got {cls_loss!r}")
        self.reg_max, self.cls_loss = reg_max, cls_loss
        self.box_fn = bbox_loss(box_loss)
        # an nn.Module box loss (WIoU v3) has state - its running mean - that resume must restore
        self.box_module = self.box_fn if isinstance(self.box_fn, nn.Module) else None
        self.weights = dict(box=box_weight, dfl=dfl_weight, cls=cls_weight, supcon=supcon_weight)
        self.temperature, self.max_contrast = supcon_temperature, max_contrast_anchors
        self.assigner = TaskAlignedAssigner(topk=topk)

    def forward(self, out: dict, gt_boxes: torch.Tensor, gt_mask: torch.Tensor, query_video: torch.Tensor):
        """out: :meth:`RefDetModel.detect` outputs; gt_boxes (B, M, 4) xyxy input pixels with gt_mask
        (B, M); query_video (B,) the episode video of each frame (for the contrastive term)."""
        logits = out["logits"].float()                                  # B, A
        pred_boxes = decode_boxes(out)                                  # B, A, 4
        B, A = logits.shape
        labels = torch.zeros(gt_mask.shape, dtype=torch.long, device=logits.device)
        assign = self.assigner(logits.detach().sigmoid()[..., None], pred_boxes.detach(), out["anchors"],
                               labels, gt_boxes.float(), gt_mask)
        target = assign.target_scores[..., 0]                           # B, A
        norm = target.sum().clamp_min(1.0)
        if self.cls_loss == "bce":
            cls = F.binary_cross_entropy_with_logits(logits, target, reduction="sum") / norm
        else:
            cls = sigmoid_focal_loss(logits, target, reduction="sum") / norm
        fg = assign.fg_mask
        zero = logits.sum() * 0.0
        box = dfl = supcon = zero
        if fg.any():
            weight = target[fg]                                         # P
            box = (self.box_fn(pred_boxes[fg], assign.target_boxes[fg]) * weight).sum() / norm
            strides = out["strides"].expand(A, 1)[None].expand(B, A, 1)[fg]          # P, 1
            grid = (out["anchors"] / out["strides"])[None].expand(B, A, 2)[fg]        # P, 2
            ltrb = bbox_to_ltrb(grid, assign.target_boxes[fg] / strides, self.reg_max)
            dfl = (dfl_loss(out["dist"][fg].float(), ltrb) * weight).sum() / norm
            if self.weights["supcon"] > 0:
                supcon = self._contrast(out, fg, query_video)
        parts = {"cls": cls, "box": box, "dfl": dfl, "supcon": supcon}
        loss = sum(self.weights[k] * v for k, v in parts.items())
        return loss, {k: float(v.detach()) for k, v in parts.items()}

    def _contrast(self, out: dict, fg: torch.Tensor, query_video: torch.Tensor) -> torch.Tensor:
        """SupCon over [prototypes of the episode's videos; embeddings of (up to N) positive anchors]."""
        frame_idx, _ = fg.nonzero(as_tuple=True)
        feats = out["embed"][fg]                                        # P, E
        if feats.shape[0] > self.max_contrast:   # the cost is quadratic; a fixed subsample is enough
            keep = torch.randperm(feats.shape[0], device=feats.device)[: self.max_contrast]
            feats, frame_idx = feats[keep], frame_idx[keep]
        videos, first = _first_occurrence(query_video)
        protos = out["proto"][first]                                    # V, E
        features = torch.cat([protos.float(), feats.float()])
        labels = torch.cat([videos, query_video[frame_idx]])
        return supcon_loss(features, labels, self.temperature)


def _first_occurrence(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Unique values and the index of each one's first occurrence."""
    uniq, inverse = torch.unique(values, return_inverse=True)
    pos = torch.arange(values.numel(), device=values.device)
    first = torch.full((uniq.numel(),), values.numel(), device=values.device, dtype=torch.long)
    first = first.scatter_reduce(0, inverse, pos, reduce="amin")
    return uniq, first
