"""The refdet criterion on hand-built head outputs: background frames are supervised (negatives only),
exact boxes cost nothing, and the classification gradient pushes the right anchors up."""
import math

import pytest
import torch

from src.losses.refdet import RefDetCriterion, decode_boxes
from src.models.refdet import make_anchors

REG = 16
GT = torch.tensor([16.0, 16.0, 48.0, 48.0])


def _outputs(shift: float = 0.0, B: int = 1):
    """Head outputs for a 64 x 64 input whose DFL distributions decode every anchor to GT (+ shift)."""
    anchors, strides = make_anchors([(8, 8), (4, 4), (2, 2)])
    A = anchors.shape[0]
    box = GT + shift
    ltrb = torch.cat([anchors - box[:2], box[2:] - anchors], 1) / strides          # A, 4 in cells
    ltrb = ltrb.clamp(0, REG - 1.01)
    lo = ltrb.floor().long()
    frac = ltrb - lo
    probs = torch.zeros(A, 4, REG)
    probs.scatter_(2, lo[..., None], (1 - frac)[..., None])
    probs.scatter_add_(2, (lo + 1)[..., None], frac[..., None])
    dist = probs.clamp_min(1e-12).log()[None].expand(B, -1, -1, -1).clone()
    logits = torch.full((B, A), -4.6, requires_grad=True)
    embed = torch.nn.functional.normalize(torch.randn(B, A, 8), dim=-1)
    proto = torch.nn.functional.normalize(torch.randn(B, 8), dim=-1)
    return {"logits": logits, "dist": dist, "embed": embed, "proto": proto, "anchors": anchors,
            "strides": strides}


def test_decoded_boxes_match_the_construction():
    out = _outputs()
    boxes = decode_boxes(out)[0]
    anchors = out["anchors"]
    inside = ((anchors > GT[:2]) & (anchors < GT[2:])).all(1) & (out["strides"][:, 0] == 8)
    assert torch.allclose(boxes[inside], GT.expand(int(inside.sum()), 4), atol=1e-3)


def test_background_frames_give_only_a_classification_loss_pushing_every_anchor_down():
    out = _outputs()
    crit = RefDetCriterion(reg_max=REG)
    loss, parts = crit(out, torch.zeros(1, 1, 4), torch.zeros(1, 1, dtype=torch.bool), torch.tensor([0]))
    assert parts["box"] == 0 and parts["dfl"] == 0 and parts["supcon"] == 0
    # no positive: BCE summed over all A anchors at target 0, divided by max(1, sum of targets) = 1
    A = out["logits"].shape[1]
    assert parts["cls"] == pytest.approx(A * math.log1p(math.exp(-4.6)), rel=1e-4)
    loss.backward()
    assert (out["logits"].grad > 0).all()           # gradient descent lowers every logit


def test_exact_boxes_cost_nothing_and_shifted_ones_do():
    crit = RefDetCriterion(reg_max=REG, supcon_weight=0.0)
    gt, mask, qv = GT[None, None], torch.ones(1, 1, dtype=torch.bool), torch.tensor([0])
    out = _outputs()
    _, exact = crit(out, gt, mask, qv)
    _, shifted = crit(_outputs(shift=4.0), gt, mask, qv)
    assert exact["box"] < 1e-3 and shifted["box"] > 0.05
    assert shifted["dfl"] > exact["dfl"]


def test_positive_anchors_are_pushed_up_background_down():
    crit = RefDetCriterion(reg_max=REG)
    out = _outputs()
    loss, parts = crit(out, GT[None, None], torch.ones(1, 1, dtype=torch.bool), torch.tensor([0]))
    assert parts["supcon"] > 0
    loss.backward()
    grad = out["logits"].grad[0]
    anchors = out["anchors"]
    inside = ((anchors > GT[:2]) & (anchors < GT[2:])).all(1)
    assert (grad[inside] < 0).sum() >= 10           # top-k (10) aligned anchors: raise their score
    assert (grad[~inside] > 0).all()                # anchors outside the object: lower it


def test_wiou_state_is_kept_for_resume():
    crit = RefDetCriterion(reg_max=REG, box_loss="wiou")
    crit(_outputs(shift=3.0), GT[None, None], torch.ones(1, 1, dtype=torch.bool), torch.tensor([0]))
    state = crit.state_dict()
    assert any("iou_mean" in k for k in state) and float(next(v for k, v in state.items() if "iou_mean" in k)) != 1.0
