"""Set prediction for phrase grounding: Hungarian matching and the DETR-style losses.

A target is one (phrase, box) pair: a phrase whose entity has three boxes gives three targets, each
matched to its own query (DETR, Carion et al., ECCV 2020). The matching cost is Deformable DETR's
focal classification cost on the query's logit for the target's phrase, plus L1 and generalized IoU
(Rezatofighi et al., CVPR 2019) box costs; ``scipy.optimize.linear_sum_assignment`` solves it per
image under ``torch.no_grad`` (the seed project ran it under autograd and crashed on step 1).

Losses, each averaged over the batch's targets: sigmoid focal loss (Lin et al., ICCV 2017, torchvision)
on every (query, phrase) logit with target 1 where the query is matched to a box of that phrase;
L1 on matched cxcywh boxes; 1 - GIoU on matched boxes. The dense proposals of two-stage query
selection are matched and supervised the same way; with ``aux_loss`` every decoder layer's output
is too.
"""
from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torchvision.ops import box_convert, generalized_box_iou, generalized_box_iou_loss, sigmoid_focal_loss


class HungarianMatcher:
    """Per image: (query indices, target indices) of the minimum-cost one-to-one assignment."""

    def __init__(self, cost_class: float = 2.0, cost_l1: float = 5.0, cost_giou: float = 2.0,
                 alpha: float = 0.25, gamma: float = 2.0) -> None:
        self.cost_class, self.cost_l1, self.cost_giou = cost_class, cost_l1, cost_giou
        self.alpha, self.gamma = alpha, gamma

    @torch.no_grad()
    def __call__(self, logits: torch.Tensor, boxes: torch.Tensor,
                 targets: list[dict[str, torch.Tensor]]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """logits (B, Q, P), boxes (B, Q, 4) cxcywh; targets[b]: ``boxes`` (N, 4) cxcywh and
        ``phrase`` (N,) the phrase index of each box."""
        B = logits.shape[0]
        prob = logits.float().sigmoid()
        costs = []
        for b in range(B):
            t = targets[b]
            p = prob[b][:, t["phrase"]]                                     # (Q, N)
            pos = self.alpha * (1 - p) ** self.gamma * -(p + 1e-8).log()
            neg = (1 - self.alpha) * p ** self.gamma * -(1 - p + 1e-8).log()
            pred = boxes[b].float()
            c = (self.cost_class * (pos - neg) + self.cost_l1 * torch.cdist(pred, t["boxes"], p=1)
                 - self.cost_giou * generalized_box_iou(box_convert(pred, "cxcywh", "xyxy"),
                                                        box_convert(t["boxes"], "cxcywh", "xyxy")))
            costs.append(c.cpu())
        out = []
        for c in costs:  # one host transfer per image, then the solver on numpy
            rows, cols = linear_sum_assignment(np.nan_to_num(c.numpy(), nan=1e6, posinf=1e6, neginf=-1e6))
            out.append((torch.as_tensor(rows, dtype=torch.long), torch.as_tensor(cols, dtype=torch.long)))
        return out


class GroundingCriterion:
    """Focal + L1 + GIoU losses on matched queries; returns (total, parts for logging)."""

    def __init__(self, matcher: HungarianMatcher, weight_focal: float = 2.0, weight_l1: float = 5.0,
                 weight_giou: float = 2.0, aux_loss: bool = True, alpha: float = 0.25, gamma: float = 2.0) -> None:
        self.matcher, self.aux_loss = matcher, aux_loss
        self.w_focal, self.w_l1, self.w_giou = weight_focal, weight_l1, weight_giou
        self.alpha, self.gamma = alpha, gamma

    def layer_loss(self, out: dict[str, torch.Tensor], targets, phrase_valid: torch.Tensor) -> dict[str, torch.Tensor]:
        logits, boxes = out["logits"].float(), out["boxes"].float()
        matches = self.matcher(logits, boxes, targets)
        num = max(1, sum(len(t["phrase"]) for t in targets))
        labels = torch.zeros_like(logits)
        b_idx = torch.cat([torch.full_like(q, b) for b, (q, _) in enumerate(matches)])
        q_idx = torch.cat([q for q, _ in matches])
        t_phrase = torch.cat([t["phrase"][j] for t, (_, j) in zip(targets, matches)])
        labels[b_idx, q_idx, t_phrase.to(logits.device)] = 1.0
        focal = sigmoid_focal_loss(logits, labels, self.alpha, self.gamma, reduction="none")
        focal = (focal * phrase_valid[:, None, :]).sum() / num            # padded phrases do not count
        pred = boxes[b_idx, q_idx]
        true = torch.cat([t["boxes"][j] for t, (_, j) in zip(targets, matches)]).to(pred)
        l1 = (pred - true).abs().sum() / num
        giou = generalized_box_iou_loss(box_convert(pred, "cxcywh", "xyxy"), box_convert(true, "cxcywh", "xyxy"),
                                        reduction="sum") / num
        return {"focal": focal, "l1": l1, "giou": giou}

    def __call__(self, outputs: dict, targets, phrase_valid: torch.Tensor):
        """``outputs``: the model's ``{"layers": [...], "proposals": {...}}`` (proposals optional)."""
        layers = outputs["layers"] if self.aux_loss else outputs["layers"][-1:]
        if "proposals" in outputs:
            layers = [outputs["proposals"], *layers]
        parts = [self.layer_loss(o, targets, phrase_valid) for o in layers]
        total = sum(self.w_focal * p["focal"] + self.w_l1 * p["l1"] + self.w_giou * p["giou"] for p in parts)
        return total, {k: float(v.detach()) for k, v in parts[-1].items()}
