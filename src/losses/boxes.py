"""Box-regression losses and box <-> distance encodings of an anchor-free (YOLOv8-style) head.

- ``ciou_loss``: Complete-IoU loss, Zheng et al. 2020 (https://arxiv.org/abs/1911.08287), taken from
  ``torchvision.ops.complete_box_iou_loss``.
- ``WIoUv3Loss``: Wise-IoU v3, Tong et al. 2023 (https://arxiv.org/abs/2301.10051). Written here: no
  maintained library (torchvision, timm) has it.
- ``dfl_loss`` / ``dfl_decode``: Distribution Focal Loss and its expectation decoding, Li et al. 2020,
  "Generalized Focal Loss" (https://arxiv.org/abs/2006.04388). Written here: torchvision and timm
  have no DFL.
- ``bbox_to_ltrb`` / ``ltrb_to_bbox``: the (left, top, right, bottom) distance encoding of FCOS /
  YOLOv8 boxes around an anchor point.

Units. Boxes are ``(x1, y1, x2, y2)`` throughout. The DFL head predicts each side's distance as a
distribution over ``reg_max`` bins ``0 .. reg_max - 1`` one *grid cell* wide, so ``bbox_to_ltrb``,
``ltrb_to_bbox``, ``dfl_loss`` and ``dfl_decode`` work in feature-grid units: anchor points are cell
centres ``(i + 0.5, j + 0.5)`` of their level and boxes are the pixel boxes divided by that level's
stride (as in YOLOv8). The IoU losses are scale-invariant and accept any unit, pixels included.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import complete_box_iou_loss

BoxLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def ciou_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-box CIoU loss ``1 - IoU + rho^2 / c^2 + alpha * v``.

    Args:
        pred: predicted boxes ``(N, 4)`` xyxy.
        target: matched ground-truth boxes ``(N, 4)`` xyxy, same unit as ``pred``.

    Returns:
        ``(N,)`` loss, 0 for identical boxes; the caller weights and reduces it.
    """
    return complete_box_iou_loss(pred, target, reduction="none")


def _paired_iou_and_enclosing(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-7):
    """IoU of ``pred[i]`` with ``target[i]`` and the size of their smallest enclosing box.

    Hand-written because ``torchvision.ops.box_iou`` is pairwise (N x M) and its element-wise helper
    is private; the N x N matrix would waste memory for N matched pairs.
    Returns ``iou (N,)``, ``enclosing_w (N,)``, ``enclosing_h (N,)``.
    """
    inter_wh = (torch.minimum(pred[:, 2:], target[:, 2:]) - torch.maximum(pred[:, :2], target[:, :2])).clamp(min=0)
    inter = inter_wh[:, 0] * inter_wh[:, 1]
    area_p = (pred[:, 2] - pred[:, 0]) * (pred[:, 3] - pred[:, 1])
    area_t = (target[:, 2] - target[:, 0]) * (target[:, 3] - target[:, 1])
    iou = inter / (area_p + area_t - inter + eps)
    enclosing_wh = torch.maximum(pred[:, 2:], target[:, 2:]) - torch.minimum(pred[:, :2], target[:, :2])
    return iou, enclosing_wh[:, 0], enclosing_wh[:, 1]


def wiou_v3_coefficient(beta: torch.Tensor, alpha: float = 1.9, delta: float = 3.0) -> torch.Tensor:
    """Non-monotonic focusing coefficient of WIoU v3: ``r = beta / (delta * alpha ** (beta - delta))``.

    ``r(0) = 0`` and ``r(delta) = 1``; ``r`` rises up to its maximum at ``beta = 1 / ln(alpha)``
    (about 1.56 with the default alpha) and then decays, so both easy boxes (small outlier degree) and
    outliers (large outlier degree, often low-quality labels) get small gradient gains.
    """
    return beta / (delta * alpha ** (beta - delta))


class WIoUv3Loss(nn.Module):
    """Wise-IoU v3 bounding-box loss (Tong et al. 2023, https://arxiv.org/abs/2301.10051).

    ``L_IoU = 1 - IoU``; distance attention
    ``R = exp(((x - x_gt)^2 + (y - y_gt)^2) / (W_g^2 + H_g^2)*)`` with box centres ``(x, y)`` and the
    smallest enclosing box's size ``W_g, H_g`` detached (the paper's ``*``: otherwise the gradient
    would enlarge the enclosing box instead of moving the centres together);
    ``L_v1 = R * L_IoU``; outlier degree ``beta = L_IoU* / mean(L_IoU)`` with a running mean;
    ``L_v3 = r(beta) * L_v1`` with the non-monotonic ``r`` of :func:`wiou_v3_coefficient`
    (``r`` carries no gradient since ``beta`` is detached).

    The seed project called its loss "WIoU v3" but implemented v2, the *monotonic* focusing
    ``(L_IoU* / mean(L_IoU))^gamma * L_v1``; this is the non-monotonic v3.

    The running mean is the buffer ``iou_mean`` (starts at 1.0), so it travels with ``.to(device)``
    and is saved in and restored from the ``state_dict``: register this module as a submodule of the
    model (or of the loss module that owns it). It is an exponential moving average updated once per
    ``forward`` in training mode only (before ``beta`` is computed, as in the authors' code), from the
    batch mean of ``L_IoU``; evaluation leaves it untouched. Each process keeps its own mean under DDP.

    Args:
        alpha, delta: shape of the focusing coefficient (paper defaults 1.9 and 3); ``r = 1`` at
            ``beta = delta``.
        momentum: EMA momentum ``m`` (``mean <- (1 - m) * mean + m * batch_mean``). The paper sets
            ``m = 1 - 0.05 ** (1 / (t * n))`` with ``n`` batches per epoch and ``t`` the epoch by
            which the initial value's weight should have decayed to 5%; the default 0.01 decays it
            to 5% after about 300 batches, which suits the short runs this toolkit does.
    """

    def __init__(self, alpha: float = 1.9, delta: float = 3.0, momentum: float = 0.01, eps: float = 1e-7) -> None:
        super().__init__()
        if not 0.0 < momentum <= 1.0:
            raise ValueError(f"momentum must be in (0, 1], got {momentum}")
        self.alpha, self.delta, self.momentum, self.eps = alpha, delta, momentum, eps
        self.register_buffer("iou_mean", torch.tensor(1.0))

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """pred, target: ``(N, 4)`` xyxy matched pairs -> ``(N,)`` per-box loss."""
        # fp32 even under autocast: exp() of the distance ratio and alpha ** (beta - delta) lose too
        # much in fp16
        pred, target = pred.float(), target.float()
        iou, enc_w, enc_h = _paired_iou_and_enclosing(pred, target, self.eps)       # N
        l_iou = 1.0 - iou                                                             # N
        centre_d2 = ((pred[:, :2] + pred[:, 2:] - target[:, :2] - target[:, 2:]) / 2).pow(2).sum(-1)  # N
        r_wiou = torch.exp(centre_d2 / (enc_w.pow(2) + enc_h.pow(2) + self.eps).detach())          # N
        if self.training and l_iou.numel() > 0:  # an empty batch would turn the mean into NaN
            with torch.no_grad():
                self.iou_mean.mul_(1.0 - self.momentum).add_(self.momentum * l_iou.detach().mean())
        beta = l_iou.detach() / self.iou_mean.clamp_min(self.eps)                  # N
        return wiou_v3_coefficient(beta, self.alpha, self.delta) * r_wiou * l_iou  # N

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, delta={self.delta}, momentum={self.momentum}"


def bbox_loss(kind: str) -> BoxLoss:
    """The per-box IoU loss behind ``--bbox-loss``: ``"ciou"`` or ``"wiou"`` (WIoU v3).

    ``"wiou"`` returns a new :class:`WIoUv3Loss` module: keep it as a submodule so its running mean
    is checkpointed and follows the model's device.
    """
    if kind == "ciou":
        return ciou_loss
    if kind == "wiou":
        return WIoUv3Loss()
    raise ValueError(f"unknown bbox loss {kind!r}; choose 'ciou' or 'wiou'")


def dfl_loss(pred_dist: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Distribution Focal Loss (Li et al. 2020, https://arxiv.org/abs/2006.04388).

    A continuous target ``t`` between bins ``l = floor(t)`` and ``l + 1`` is learnt as the two-bin
    distribution ``(l + 1 - t, t - l)``: ``CE(l) * (l + 1 - t) + CE(l + 1) * (t - l)``, whose
    minimum puts the softmax expectation exactly at ``t``.

    Args:
        pred_dist: logits ``(N, 4, reg_max)`` over bins ``0 .. reg_max - 1`` for each side (ltrb).
        target: distances ``(N, 4)`` in bin (grid-cell) units; clamped to ``[0, reg_max - 1.01]`` so
            that the right bin exists.

    Returns:
        ``(N,)`` loss averaged over the four sides.
    """
    n, sides, reg_max = pred_dist.shape
    target = target.float().clamp(0, reg_max - 1 - 0.01)                        # N, 4
    left = target.long()                                                          # N, 4
    w_left = (left + 1).float() - target                                          # N, 4
    logits = pred_dist.float().reshape(-1, reg_max)                               # N*4, reg_max
    ce_left = F.cross_entropy(logits, left.reshape(-1), reduction="none").view(n, sides)
    ce_right = F.cross_entropy(logits, (left + 1).reshape(-1), reduction="none").view(n, sides)
    return (ce_left * w_left + ce_right * (1.0 - w_left)).mean(-1)               # N


def dfl_decode(pred_dist: torch.Tensor) -> torch.Tensor:
    """Expected distance of each side: ``softmax(logits) . [0, 1, ..., reg_max - 1]``.

    pred_dist: ``(..., 4, reg_max)`` logits -> ``(..., 4)`` distances in bin units.
    """
    bins = torch.arange(pred_dist.shape[-1], device=pred_dist.device, dtype=pred_dist.dtype)
    return pred_dist.softmax(-1) @ bins


def bbox_to_ltrb(anchor_points: torch.Tensor, boxes: torch.Tensor, reg_max: int | None = None) -> torch.Tensor:
    """Distances from each anchor point to the four sides of its box (the DFL regression target).

    Args:
        anchor_points: ``(A, 2)`` xy, in feature-grid units (cell centres ``i + 0.5``), as in YOLOv8.
        boxes: ``(..., A, 4)`` xyxy in the same units (pixel boxes divided by the level's stride).
        reg_max: when given, distances are clamped to ``[0, reg_max - 1.01]``, the range the DFL
            bins can represent; ``None`` leaves them as they are (exact round trip).

    Returns:
        ``(..., A, 4)`` distances (left, top, right, bottom).
    """
    ltrb = torch.cat([anchor_points - boxes[..., :2], boxes[..., 2:] - anchor_points], dim=-1)  # ..., A, 4
    if reg_max is not None:
        ltrb = ltrb.clamp(0, reg_max - 1 - 0.01)
    return ltrb


def ltrb_to_bbox(anchor_points: torch.Tensor, distances: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`bbox_to_ltrb`: anchor points ``(A, 2)`` and distances ``(..., A, 4)``
    (left, top, right, bottom; same units) -> boxes ``(..., A, 4)`` xyxy."""
    return torch.cat([anchor_points - distances[..., :2], anchor_points + distances[..., 2:]], dim=-1)
