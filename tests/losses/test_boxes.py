import math

import pytest
import torch
import torch.nn.functional as F

from src.losses.boxes import (WIoUv3Loss, bbox_loss, bbox_to_ltrb, ciou_loss, dfl_decode, dfl_loss, ltrb_to_bbox,
                              wiou_v3_coefficient)


def _t(*rows):
    return torch.tensor(rows, dtype=torch.float32)


# ---------------------------------------------------------------- CIoU

def test_ciou_identical_boxes_is_zero():
    boxes = _t([0, 0, 2, 2], [1.5, 3, 7, 4.5])
    assert torch.allclose(ciou_loss(boxes, boxes.clone()), torch.zeros(2), atol=1e-6)


def test_ciou_known_pairs():
    pred = _t([0, 0, 2, 2], [0, 0, 4, 2])
    target = _t([1, 1, 3, 3], [0, 0, 2, 2])
    # pair 1: IoU 1/7, centres (1,1)-(2,2) so rho^2 = 2, enclosing 3x3 so c^2 = 18, same aspect (v = 0)
    first = 1 - 1 / 7 + 2 / 18
    # pair 2: IoU 4/8, rho^2 = 1, c^2 = 4^2 + 2^2, aspect term v = 4/pi^2 (atan(1) - atan(2))^2
    v = 4 / math.pi ** 2 * (math.atan(1) - math.atan(2)) ** 2
    second = 1 - 0.5 + 1 / 20 + v / (1 - 0.5 + v) * v
    assert ciou_loss(pred, target).tolist() == pytest.approx([first, second], rel=1e-5)


def test_bbox_loss_factory():
    assert bbox_loss("ciou") is ciou_loss
    assert isinstance(bbox_loss("wiou"), WIoUv3Loss)
    assert bbox_loss("wiou") is not bbox_loss("wiou")  # each model gets its own running mean
    with pytest.raises(ValueError, match="giou"):
        bbox_loss("giou")


# ---------------------------------------------------------------- WIoU v3

def test_wiou_coefficient_is_non_monotonic():
    beta = torch.linspace(0, 10, 10001)
    r = wiou_v3_coefficient(beta)
    peak = int(r.argmax())
    # r(beta) = beta / (delta * alpha^(beta - delta)) peaks where d/dbeta log r = 1/beta - ln(alpha) = 0
    assert beta[peak].item() == pytest.approx(1 / math.log(1.9), abs=1e-3)  # ~1.558, not delta
    assert r[peak].item() == pytest.approx(1 / math.log(1.9) / 3 * 1.9 ** (3 - 1 / math.log(1.9)), rel=1e-5)
    assert (r[1:peak + 1] > r[:peak]).all() and (r[peak + 1:] < r[peak:-1]).all()  # rises, then falls
    assert r[0].item() == 0.0
    assert wiou_v3_coefficient(torch.tensor(3.0)).item() == pytest.approx(1.0)  # r = 1 at beta = delta
    assert wiou_v3_coefficient(torch.tensor(10.0)).item() < 0.1  # outliers are damped


def test_wiou_identical_boxes_is_zero_and_known_pair():
    loss = WIoUv3Loss().eval()  # iou_mean stays 1.0, so beta = L_IoU
    boxes = _t([0, 0, 2, 2])
    assert loss(boxes, boxes.clone()).item() == pytest.approx(0.0, abs=1e-6)
    # IoU 1/7; centres 2 apart squared; enclosing box 3x3
    l_iou = 6 / 7
    expected = l_iou / (3 * 1.9 ** (l_iou - 3)) * math.exp(2 / 18) * l_iou
    assert loss(_t([0, 0, 2, 2]), _t([1, 1, 3, 3])).item() == pytest.approx(expected, rel=1e-5)


def test_wiou_enclosing_box_size_carries_no_gradient():
    # disjoint boxes: IoU is 0 around this point, so the whole gradient comes from R_WIoU
    pred = _t([4, -1, 6, 3]).requires_grad_()
    target = _t([0, 0, 2, 2])
    WIoUv3Loss().eval()(pred, target).sum().backward()
    # centres (5, 1) and (1, 1): d^2 = 16; enclosing box [0, -1, 6, 3]: W^2 + H^2 = 36 + 16 = 52;
    # beta = L_IoU = 1 so r = 1.9^2 / 3
    gain = 1.9 ** 2 / 3 * math.exp(16 / 52)
    # d(d^2)/dx1 = d(d^2)/dx2 = 2 * (5 - 1) * 0.5; y centres agree. Were W_g, H_g not detached, y1 and y2
    # (which set the enclosing height) would get a gradient and x2 a smaller one.
    assert pred.grad[0].tolist() == pytest.approx([gain * 4 / 52, 0.0, gain * 4 / 52, 0.0], rel=1e-5, abs=1e-7)


def test_wiou_running_mean_updates_in_train_mode_only_and_is_saved():
    pred, target = _t([0, 0, 2, 2], [0, 0, 2, 2]), _t([1, 1, 3, 3], [0, 0, 2, 2])
    loss = WIoUv3Loss(momentum=0.1)
    assert "iou_mean" in loss.state_dict() and loss.iou_mean.item() == 1.0
    out = loss(pred, target)  # train mode by default
    batch_mean = (6 / 7 + 0) / 2
    new_mean = 0.9 * 1.0 + 0.1 * batch_mean
    assert loss.iou_mean.item() == pytest.approx(new_mean, rel=1e-6)
    # beta is taken against the mean updated with this very batch (as the authors' code does)
    beta = 6 / 7 / new_mean
    expected = beta / (3 * 1.9 ** (beta - 3)) * math.exp(2 / 18) * 6 / 7
    assert out[0].item() == pytest.approx(expected, rel=1e-5)

    loss.eval()
    loss(pred, target)
    assert loss.iou_mean.item() == pytest.approx(new_mean, rel=1e-6)

    restored = WIoUv3Loss()
    restored.load_state_dict(loss.state_dict())
    assert restored.iou_mean.item() == pytest.approx(new_mean, rel=1e-6)

    loss.train()
    assert loss(torch.zeros(0, 4), torch.zeros(0, 4)).shape == (0,)  # empty batch: no NaN in the mean
    assert loss.iou_mean.item() == pytest.approx(new_mean, rel=1e-6)


def test_wiou_gradient_moves_prediction_towards_target():
    pred = _t([0.5, 0.5, 2.5, 2.5]).requires_grad_()
    WIoUv3Loss().eval()(pred, _t([1, 1, 3, 3])).sum().backward()
    assert (pred.grad < 0).all()  # every coordinate should increase


# ---------------------------------------------------------------- DFL

def _peaked_logits(bins, reg_max=16, height=30.0):
    """(1, 4, reg_max) logits with ``height`` on the given bins of each side."""
    logits = torch.zeros(1, 4, reg_max)
    for side, side_bins in enumerate(bins):
        for b in side_bins:
            logits[0, side, b] = height
    return logits


def test_dfl_integer_target_on_sharp_distribution_is_zero():
    logits = _peaked_logits([[0], [3], [7], [14]])
    assert dfl_loss(logits, _t([0, 3, 7, 14])).item() == pytest.approx(0.0, abs=1e-6)
    assert dfl_loss(logits, _t([1, 4, 8, 13])).item() > 10  # the wrong bins are expensive


def test_dfl_half_target_weights_both_bins_equally():
    torch.manual_seed(0)
    logits = torch.randn(3, 4, 16)
    target = torch.full((3, 4), 2.5)
    logp = F.log_softmax(logits, -1)
    expected = (-0.5 * logp[..., 2] - 0.5 * logp[..., 3]).mean(-1)
    assert torch.allclose(dfl_loss(logits, target), expected, atol=1e-6)
    # a distribution peaked on bin 2 alone costs the same as one peaked on bin 3 alone
    assert dfl_loss(_peaked_logits([[2]] * 4), target[:1]).item() == pytest.approx(
        dfl_loss(_peaked_logits([[3]] * 4), target[:1]).item(), rel=1e-6)
    # and the best one splits its mass between the two: loss log(2)
    assert dfl_loss(_peaked_logits([[2, 3]] * 4), target[:1]).item() == pytest.approx(math.log(2), abs=1e-6)


def test_dfl_target_is_clamped_to_the_last_bin():
    logits = _peaked_logits([[15]] * 4)
    out = dfl_loss(logits, _t([15, 20, 100, 15.0]))  # past the last bin: no index error
    # clamped to 14.99: 0.01 on bin 14 (costs ~30) and 0.99 on bin 15 (costs ~0)
    assert out.item() == pytest.approx(0.01 * 30, rel=1e-3)
    assert dfl_loss(logits, _t([-1, 0, 0, 0])).isfinite().all()


def test_dfl_decode_inverts_sharp_and_two_bin_distributions():
    assert dfl_decode(_peaked_logits([[0], [5], [9], [15]]))[0].tolist() == pytest.approx([0, 5, 9, 15], abs=1e-5)
    assert dfl_decode(_peaked_logits([[2, 3]] * 4))[0].tolist() == pytest.approx([2.5] * 4, abs=1e-5)
    assert dfl_decode(torch.zeros(2, 7, 4, 16)).shape == (2, 7, 4)
    assert dfl_decode(torch.zeros(4, 16)).tolist() == pytest.approx([7.5] * 4)  # uniform: the middle


# ---------------------------------------------------------------- ltrb encoding

def test_ltrb_round_trip_and_values():
    anchors = _t([0.5, 0.5], [1.5, 0.5], [2.5, 3.5])                              # A, 2 grid units
    boxes = _t([0, 0, 2, 3], [1, 0, 4, 1], [0.5, 1.0, 6.0, 5.0])                  # A, 4
    ltrb = bbox_to_ltrb(anchors, boxes)
    assert ltrb.flatten().tolist() == pytest.approx([0.5, 0.5, 1.5, 2.5, 0.5, 0.5, 2.5, 0.5, 2, 2.5, 3.5, 1.5])
    assert torch.allclose(ltrb_to_bbox(anchors, ltrb), boxes)
    batched = boxes.expand(2, 3, 4)                                               # B, A, 4
    assert torch.allclose(ltrb_to_bbox(anchors, bbox_to_ltrb(anchors, batched)), batched)


def test_ltrb_clamped_to_the_dfl_range():
    ltrb = bbox_to_ltrb(_t([0.5, 0.5]), _t([1, 1, 40, 3]), reg_max=16)
    assert ltrb[0].tolist() == pytest.approx([0, 0, 14.99, 2.5])
