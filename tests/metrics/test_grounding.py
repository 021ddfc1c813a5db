"""Recall@k (Flickr30k Entities protocol), the phrase-agnostic baseline and COCO mAP on hand-made cases."""
import pytest
import torch

from src.metrics.grounding import GroundingMeter, baseline_hits, phrase_hits

# ground truth: phrase 0 has two boxes (either one counts), phrase 1 has one
TRUE = torch.tensor([[0.25, 0.25, 0.2, 0.2], [0.75, 0.25, 0.2, 0.2], [0.5, 0.75, 0.3, 0.2]])
TRUE_PHRASE = torch.tensor([0, 0, 1])
# queries: 0 = phrase 0's second box exactly, 1 = phrase 1's box shifted (IoU 0.6), 2 = nowhere,
# 3 = phrase 1's box shifted too far (IoU < 0.5)
BOXES = torch.tensor([[0.75, 0.25, 0.2, 0.2], [0.5 + 0.3 / 8, 0.75, 0.3, 0.2], [0.1, 0.9, 0.05, 0.05],
                      [0.5 + 0.3 / 2, 0.75, 0.3, 0.2]])


def test_recall_at_k_counts_a_phrase_when_a_top_k_box_overlaps_any_of_its_boxes():
    logits = torch.tensor([[5.0, -1.0],    # phrase 0 ranks query 0 first: a hit at k=1
                           [-2.0, 1.0],    # phrase 1 ranks query 3 (too far) first, query 1 second
                           [0.0, -3.0],
                           [-3.0, 2.0]])
    hits = phrase_hits(logits, BOXES, TRUE, TRUE_PHRASE, 2, ks=(1, 2, 3))
    assert hits.tolist() == [[True, True, True], [False, True, True]]
    # only the caption's real phrases are ranked (a padded third column is ignored)
    padded = torch.cat([logits, torch.full((4, 1), 9.0)], 1)
    assert torch.equal(phrase_hits(padded, BOXES, TRUE, TRUE_PHRASE, 2, ks=(1, 2, 3)), hits)


def test_baseline_answers_every_phrase_with_the_single_best_query():
    logits = torch.tensor([[5.0, -1.0], [-2.0, 4.0], [0.0, -3.0], [-3.0, 2.0]])
    # the best query overall is query 0 (5.0): right for phrase 0, wrong for phrase 1
    assert baseline_hits(logits, BOXES, TRUE, TRUE_PHRASE, 2).tolist() == [True, False]
    assert phrase_hits(logits, BOXES, TRUE, TRUE_PHRASE, 2, ks=(1,))[:, 0].tolist() == [True, True]


def test_meter_recall_baseline_and_map():
    meter = GroundingMeter(ks=(1, 5))
    # caption 1: perfect; caption 2: its only phrase ranks a wrong box first, the right one second
    perfect = torch.tensor([[6.0, -6.0], [-6.0, 6.0], [-6.0, -6.0], [-6.0, -6.0]])
    boxes1 = torch.stack([TRUE[1], TRUE[2], BOXES[2], BOXES[3]])
    second = torch.tensor([[1.0, 0.0], [2.0, 0.0], [-6.0, 0.0], [-6.0, 0.0]])
    boxes2 = torch.stack([TRUE[2], BOXES[2], BOXES[3], BOXES[3]])
    targets = [{"boxes": TRUE[1:], "phrase": torch.tensor([0, 1])},
               {"boxes": TRUE[2:], "phrase": torch.tensor([0])}]
    meter.update(torch.stack([perfect, second]), torch.stack([boxes1, boxes2]), targets, [2, 1], [100.0, 100.0])
    out = meter.compute()
    assert out["recall@1"] == pytest.approx(2 / 3) and out["recall@5"] == 1.0
    assert out["baseline_recall@1"] == pytest.approx(1 / 3)   # caption 1's best query fits phrase 0 only
    assert 0 < out["map50"] < 1 and out["map"] <= out["map50"]

    exact = GroundingMeter(ks=(1,))
    exact.update(perfect[None], boxes1[None], targets[:1], [2], [640.0])
    assert exact.compute()["map"] == pytest.approx(1.0)
