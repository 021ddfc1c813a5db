import pytest
import torch
from torchvision.ops import box_iou

from src.losses.assigner import TaskAlignedAssigner

# a 4 x 4 grid of anchor points at cell centres; anchor index = 4 * row + column
ANCHORS = torch.tensor([[x + 0.5, y + 0.5] for y in range(4) for x in range(4)])  # A=16, 2


def _idx(x, y):
    return 4 * y + x


def _default_preds(num_classes=1, score=0.5):
    """Every anchor predicts a 2 x 2 box around itself with the same score: (1, A, C), (1, A, 4)."""
    boxes = torch.cat([ANCHORS - 1, ANCHORS + 1], dim=1)[None]
    return torch.full((1, 16, num_classes), score), boxes


def _assign(scores, boxes, gt_labels, gt_boxes, gt_mask=None, **kw):
    gt_labels, gt_boxes = torch.tensor(gt_labels), torch.tensor(gt_boxes, dtype=torch.float32)
    if gt_mask is None:
        gt_mask = torch.ones(gt_labels.shape, dtype=torch.bool)
    return TaskAlignedAssigner(**kw)(scores, boxes, ANCHORS, gt_labels, gt_boxes, torch.as_tensor(gt_mask))


def _fg(out, b=0):
    return set(torch.nonzero(out.fg_mask[b]).flatten().tolist())


def test_single_gt_positives_are_the_anchors_inside_it():
    scores, boxes = _default_preds()
    out = _assign(scores, boxes, [[0]], [[[0, 0, 2, 2]]])
    inside = {_idx(0, 0), _idx(1, 0), _idx(0, 1), _idx(1, 1)}
    assert _fg(out) == inside  # anchor (2.5, 0.5)'s box overlaps the gt, but its point is outside
    assert out.target_labels[0].tolist() == [0 if a in inside else 1 for a in range(16)]  # C=1 marks bg
    assert out.target_boxes[0, _idx(1, 1)].tolist() == [0, 0, 2, 2]
    assert out.target_boxes[0, _idx(3, 3)].tolist() == [0, 0, 0, 0]
    assert out.target_gt_idx.dtype == torch.long and not out.target_gt_idx.any()


def test_at_most_topk_positives_chosen_by_alignment():
    scores, boxes = _default_preds()
    boxes[0, _idx(0, 0)] = torch.tensor([0, 0, 2, 2.0])   # IoU 1
    boxes[0, _idx(1, 1)] = torch.tensor([0, 0, 2, 1.5])   # IoU 0.75; the other two: 2.25 / 5.75
    out = _assign(scores, boxes, [[0]], [[[0, 0, 2, 2]]], topk=2)
    assert _fg(out) == {_idx(0, 0), _idx(1, 1)}
    # with equal IoUs the score decides
    scores, boxes = _default_preds()
    scores[0, _idx(1, 0)] = 0.9
    out = _assign(scores, boxes, [[0]], [[[0, 0, 2, 2]]], topk=1)
    assert _fg(out) == {_idx(1, 0)}


def test_untrained_head_still_gets_every_candidate():
    # predicted boxes far away (IoU 0, metric 0 everywhere): the candidates must still win the top-k
    # slots over anchors outside the gt, whose metric is 0 too
    scores = torch.full((1, 16, 1), 0.5)
    boxes = torch.tensor([[100, 100, 101, 101.0]]).expand(1, 16, 4)
    out = _assign(scores, boxes, [[0]], [[[0, 0, 2, 2]]], topk=10)
    assert _fg(out) == {_idx(0, 0), _idx(1, 0), _idx(0, 1), _idx(1, 1)}
    assert not out.target_scores.any()  # nothing is localised yet: the soft targets are 0


def test_target_scores_normalised_per_gt_to_its_best_iou():
    scores, boxes = _default_preds()
    gt = [0, 0, 2, 2]
    boxes[0, _idx(0, 0)], scores[0, _idx(0, 0)] = torch.tensor([0, 0, 2, 1.0]), 0.25  # IoU 0.5
    boxes[0, _idx(0, 1)], scores[0, _idx(0, 1)] = torch.tensor([0, 0, 1, 2.0]), 0.64  # IoU 0.5
    boxes[0, _idx(1, 0)], scores[0, _idx(1, 0)] = torch.tensor([0, 0, 1, 1.0]), 0.25  # IoU 0.25
    boxes[0, _idx(1, 1)], scores[0, _idx(1, 1)] = torch.tensor([1, 1, 2, 2.0]), 0.25  # IoU 0.25
    out = _assign(scores, boxes, [[0]], [[gt]])
    # t = sqrt(s) * IoU^6: t(0,1) = 0.8 / 64 is the largest, and maps to the best IoU, 0.5
    ts = out.target_scores[0, :, 0]
    assert ts.max().item() == pytest.approx(0.5, rel=1e-6)
    assert ts[_idx(0, 1)].item() == pytest.approx(0.5, rel=1e-6)
    assert ts[_idx(0, 0)].item() == pytest.approx(0.5 * 0.5 / 0.8, rel=1e-6)
    assert ts[_idx(1, 0)].item() == pytest.approx(0.5 * (0.5 * 0.25 ** 6) / (0.8 * 0.5 ** 6), rel=1e-5)
    assert ts[[a for a in range(16) if a not in _fg(out)]].eq(0).all()


def test_anchor_claimed_by_two_gts_goes_to_the_higher_iou():
    scores, boxes = _default_preds(num_classes=2)
    gt_a, gt_b = [0, 0, 3, 3], [1, 1, 4, 4]
    boxes[0, _idx(1, 1)] = torch.tensor(gt_b, dtype=torch.float32)  # inside both gts, matches B
    boxes[0, _idx(2, 2)] = torch.tensor(gt_a, dtype=torch.float32)  # inside both gts, matches A
    out = _assign(scores, boxes, [[0, 1]], [[gt_a, gt_b]])
    assert out.target_gt_idx[0, _idx(1, 1)].item() == 1 and out.target_labels[0, _idx(1, 1)].item() == 1
    assert out.target_gt_idx[0, _idx(2, 2)].item() == 0 and out.target_labels[0, _idx(2, 2)].item() == 0
    assert out.target_boxes[0, _idx(1, 1)].tolist() == gt_b
    # one class column per anchor: the assigned gt's
    assert out.target_scores[0, _idx(1, 1), 0].item() == 0 and out.target_scores[0, _idx(1, 1), 1].item() > 0
    assert out.target_scores[0, _idx(1, 1), 1].item() == pytest.approx(1.0, rel=1e-6)  # IoU 1 with B
    # anchors inside only one gt keep it
    assert out.target_gt_idx[0, _idx(0, 0)].item() == 0 and out.target_gt_idx[0, _idx(3, 3)].item() == 1


def test_padded_gts_are_ignored_and_an_image_without_gts_is_background():
    scores, boxes = _default_preds()
    reference = _assign(scores, boxes, [[0]], [[[0, 0, 2, 2]]])
    # image 0: a real gt plus a padding row whose box covers everything; image 1: padding only
    out = _assign(scores.expand(2, -1, -1), boxes.expand(2, -1, -1), [[0, -1], [-1, -1]],
                  [[[0, 0, 2, 2], [0, 0, 4, 4]], [[0, 0, 4, 4], [0, 0, 4, 4]]],
                  gt_mask=[[True, False], [False, False]])
    for field in reference._fields:
        assert torch.equal(getattr(out, field)[:1], getattr(reference, field)), field
    assert not out.fg_mask[1].any() and not out.target_scores[1].any()
    assert (out.target_labels[1] == 1).all()


def test_no_gts_in_the_batch():
    scores, boxes = _default_preds(num_classes=3)
    scores, boxes = scores.expand(2, -1, -1), boxes.expand(2, -1, -1)
    out = TaskAlignedAssigner()(scores, boxes, ANCHORS, torch.zeros(2, 0, dtype=torch.long), torch.zeros(2, 0, 4),
                                torch.zeros(2, 0, dtype=torch.bool))
    assert out.fg_mask.shape == (2, 16) and not out.fg_mask.any()
    assert out.target_scores.shape == (2, 16, 3) and not out.target_scores.any()
    assert out.target_boxes.shape == (2, 16, 4) and (out.target_labels == 3).all()
    assert out.target_gt_idx.shape == (2, 16)


def test_runs_without_grad_and_returns_a_tuple():
    scores, boxes = _default_preds()
    scores.requires_grad_()
    labels, tboxes, tscores, fg, idx = _assign(scores, boxes, [[0]], [[[0, 0, 2, 2]]])
    assert not tscores.requires_grad and fg.dtype == torch.bool and labels.dtype == torch.long
    assert tboxes.shape == (1, 16, 4) and idx.shape == (1, 16)


def _reference_assign(scores, boxes, anchors, gt_labels, gt_boxes, gt_mask, topk, alpha=0.5, beta=6.0):
    """The TOOD rules, one gt and one anchor at a time: (fg_mask, target_gt_idx, target_scores)."""
    b_size, a_size, c = scores.shape
    fg = torch.zeros(b_size, a_size, dtype=torch.bool)
    gt_idx = torch.zeros(b_size, a_size, dtype=torch.long)
    target = torch.zeros(b_size, a_size, c)
    for b in range(b_size):
        iou = box_iou(gt_boxes[b], boxes[b]).tolist()
        metric = [[float(scores[b, a, gt_labels[b, m]]) ** alpha * iou[m][a] ** beta for a in range(a_size)]
                  for m in range(len(iou))]
        claims: dict[int, list[int]] = {}
        for m, (x1, y1, x2, y2) in enumerate(gt_boxes[b].tolist()):
            if gt_mask[b, m]:
                inside = [a for a, (x, y) in enumerate(anchors.tolist()) if min(x - x1, y - y1, x2 - x, y2 - y) > 1e-9]
                for a in sorted(inside, key=lambda a: -metric[m][a])[:topk]:
                    claims.setdefault(a, []).append(m)
        owner = {a: max(ms, key=lambda m: iou[m][a]) for a, ms in claims.items()}
        for m in set(owner.values()):
            mine = [a for a in owner if owner[a] == m]
            best_iou, best_metric = max(iou[m][a] for a in mine), max(metric[m][a] for a in mine)
            for a in mine:
                fg[b, a], gt_idx[b, a] = True, m
                target[b, a, gt_labels[b, m]] = metric[m][a] * best_iou / (best_metric + 1e-9)
    return fg, gt_idx, target


@pytest.mark.parametrize("seed", range(4))
def test_matches_a_one_at_a_time_reference_on_random_scenes(seed):
    # overlapping gts, padding, several classes; predicted boxes contain their anchor point so every
    # candidate has IoU > 0 (ties at metric 0 may be broken either way)
    g = torch.Generator().manual_seed(seed)
    b, a, c, m = 2, 64, 3, 5
    anchors = torch.rand(a, 2, generator=g) * 16
    centres = anchors + torch.rand(b, a, 2, generator=g) - 0.5
    sizes = torch.rand(b, a, 2, generator=g) * 6 + 1.5
    boxes = torch.cat([centres - sizes / 2, centres + sizes / 2], -1)
    scores = torch.rand(b, a, c, generator=g)
    gt_centres, gt_sizes = torch.rand(b, m, 2, generator=g) * 16, torch.rand(b, m, 2, generator=g) * 8 + 1
    gt_boxes = torch.cat([gt_centres - gt_sizes / 2, gt_centres + gt_sizes / 2], -1)
    gt_labels = torch.randint(0, c, (b, m), generator=g)
    gt_mask = torch.rand(b, m, generator=g) > 0.3
    out = TaskAlignedAssigner(topk=4)(scores, boxes, anchors, gt_labels, gt_boxes, gt_mask)
    fg, gt_idx, target = _reference_assign(scores, boxes, anchors, gt_labels, gt_boxes, gt_mask, topk=4)
    assert torch.equal(out.fg_mask, fg)
    assert torch.equal(out.target_gt_idx, gt_idx)
    assert torch.allclose(out.target_scores, target, atol=1e-6)
    assert fg.any() and (out.fg_mask.sum(1) <= 4 * gt_mask.sum(1)).all()
