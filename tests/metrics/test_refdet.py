"""ST-IoU (Zalo AI 2025 AeroEyes), the RefDet meter's thresholding and mAP50, and the submission format,
on hand-computed cases."""
import json
import pickle

import pytest
import torch

from src.metrics.refdet import RefDetMeter, frame_iou, read_submission, st_iou, submission, video_st_iou

A = [0, 0, 10, 10]      # area 100
HALF = [0, 0, 10, 20]   # area 200, contains A: IoU(A, HALF) = 100 / 200 = 0.5
C = [20, 20, 30, 30]    # disjoint from A


def test_frame_iou_one_box_each_is_plain_iou():
    assert frame_iou([A], [A]) == pytest.approx(1.0)
    assert frame_iou([A], [HALF]) == pytest.approx(0.5)
    assert frame_iou([A], [C]) == 0.0
    # [5, 0, 15, 10] overlaps A on 5 x 10 = 50; union 100 + 100 - 50 = 150
    assert frame_iou([A], [[5, 0, 15, 10]]) == pytest.approx(1 / 3)


def test_boxes_as_lists_tensors_and_flat_boxes_agree():
    expected = 0.5
    assert frame_iou(torch.tensor([A]), torch.tensor([HALF])) == pytest.approx(expected)
    assert frame_iou(torch.tensor([A], dtype=torch.float16), [HALF]) == pytest.approx(expected)
    assert frame_iou(A, HALF) == pytest.approx(expected)                          # one flat box each
    assert frame_iou([torch.tensor(A)], (torch.tensor(HALF),)) == pytest.approx(expected)
    truth = {0: torch.tensor([A]), 1: [A]}
    assert video_st_iou(truth, {0: [HALF], 1: torch.tensor([HALF])}) == pytest.approx(expected)
    with pytest.raises(ValueError, match="shape"):
        frame_iou([[0, 0, 10]], [A])


def test_degenerate_boxes_overlap_nothing_instead_of_nan():
    assert frame_iou([[5, 5, 5, 5]], [[5, 5, 5, 5]]) == 0.0


def test_several_boxes_in_a_frame_use_optimal_matching_over_max_count():
    # two objects, one found exactly: (1 + 0) / max(2, 1)
    assert frame_iou([A, C], [A]) == pytest.approx(0.5)
    # both found, listed in the other order: the matching pairs them, (1 + 1) / 2
    assert frame_iou([A, C], [C, A]) == pytest.approx(1.0)
    # one object, an exact box plus a stray one: the extra box costs, (1 + 0) / max(1, 2)
    assert frame_iou([A], [A, C]) == pytest.approx(0.5)
    # both found, one at IoU 0.5: (1 + 0.5) / 2
    assert frame_iou([C, A], [HALF, C]) == pytest.approx(0.75)
    # empty frames: one side empty scores 0, both empty 1 (never reached through video_st_iou)
    assert frame_iou([A], []) == 0.0 and frame_iou([], [A]) == 0.0 and frame_iou([], []) == 1.0


def test_video_st_iou_perfect_disjoint_and_empty():
    truth = {f: [A] for f in range(10)}
    assert video_st_iou(truth, {f: [A] for f in range(10)}) == pytest.approx(1.0)
    # predictions only in frames without truth: intersection empty -> 0 / 20
    assert video_st_iou(truth, {f: [A] for f in range(10, 20)}) == 0.0
    assert video_st_iou(truth, {}) == 0.0
    # frames with an empty box list count as absent, on either side
    assert video_st_iou({**truth, 10: [], 11: torch.zeros(0, 4)}, {f: [A] for f in range(10)} | {12: []}) == 1.0
    # nothing to find, nothing reported
    assert video_st_iou({}, {}) == 1.0
    assert video_st_iou({3: []}, {4: []}) == 1.0
    assert video_st_iou({}, {0: [A]}) == 0.0


def test_video_st_iou_partial_temporal_overlap():
    truth = {f: [A] for f in range(10)}          # frames 0..9
    # predicted in frames 5..14: 5 shared frames with IoU 1, union 0..14 = 15 frames -> 5 / 15
    assert video_st_iou(truth, {f: [A] for f in range(5, 15)}) == pytest.approx(5 / 15)
    # same frames with IoU 0.5 boxes: 5 * 0.5 / 15 = 2.5 / 15
    assert video_st_iou(truth, {f: [HALF] for f in range(5, 15)}) == pytest.approx(2.5 / 15)


def test_st_iou_is_the_mean_over_the_truth_videos():
    truth = {"v1": {f: [A] for f in range(10)},
             "v2": {f: [A] for f in range(10)},
             "v3": {0: [C]},                          # missing from pred: scores 0
             "7": {0: [A]}}                           # predicted under the int id 7: ids compare as strings
    pred = {"v1": {f: [A] for f in range(10)},        # 1.0
            "v2": {f: [A] for f in range(5, 15)},     # 5 / 15
            7: {0: [HALF]},                           # 0.5
            "ghost": {0: [A]}}                        # not in truth: ignored
    mean, per_video = st_iou(truth, pred)
    assert per_video == pytest.approx({"v1": 1.0, "v2": 1 / 3, "v3": 0.0, "7": 0.5})
    assert mean == pytest.approx((1 + 1 / 3 + 0 + 0.5) / 4)
    assert st_iou({}, pred) == (0.0, {})


def _meter_video(meter, vid="v"):
    # f0: truth A; top score is the wrong box C (0.9), the right one A only 0.7
    meter.update(vid, 0, [A], [A, C], [0.7, 0.9])
    # f1: truth A; the right box at 0.4
    meter.update(vid, 1, [A], torch.tensor([A]), torch.tensor([0.4]))
    # f2: background; a stray box at 0.3
    meter.update(vid, 2, [], [C], [0.3])
    # f3: truth A; right box at 0.95
    meter.update(vid, 3, torch.tensor([A]), [A], [0.95])


def test_meter_threshold_and_top_boxes_per_frame():
    m = RefDetMeter(with_map=False)                   # threshold 0.5, top-1
    _meter_video(m)
    # kept: f0 [C] (IoU 0), f1 nothing, f2 nothing, f3 [A] (IoU 1)
    # truth frames {0, 1, 3}, predicted {0, 3}: (0 + 1) / 3
    assert m.predictions() == {"v": {0: [C], 1: [], 2: [], 3: [A]}}
    assert m.compute() == {"st_iou": pytest.approx(1 / 3)}
    assert m.per_video() == {"v": pytest.approx(1 / 3)}

    m2 = RefDetMeter(max_boxes_per_frame=2, with_map=False)
    _meter_video(m2)
    # f0 keeps [C, A]: matched IoU 1 / max(1, 2) = 0.5; f3: 1 -> (0.5 + 1) / 3
    assert m2.predictions()["v"][0] == [C, A]
    assert m2.compute()["st_iou"] == pytest.approx(0.5)

    m3 = RefDetMeter(score_threshold=0.3, with_map=False)
    _meter_video(m3)
    # f1's A (0.4) and f2's stray C (0.3, threshold inclusive) are now reported:
    # f0 0, f1 1, f3 1; union {0, 1, 2, 3} -> 2 / 4
    assert m3.compute()["st_iou"] == pytest.approx(0.5)

    # scores omitted: the boxes are taken as already thresholded
    m4 = RefDetMeter(with_map=False)
    m4.update("v", 0, [A], [A])
    assert m4.compute()["st_iou"] == 1.0
    with pytest.raises(ValueError, match="2 predicted boxes but 1 scores"):
        m4.update("v", 1, [A], [A, C], [0.9])
    with pytest.raises(ValueError):
        RefDetMeter(max_boxes_per_frame=0)


def test_meter_map50_uses_coco_101_point_interpolation():
    # two frames: frame 0 TP at 0.8, frame 1 (background) FP at 0.9. Ranked: FP, TP ->
    # precision 0, 1/2 at recall 0, 1. Interpolated precision is 1/2 at every recall level, so both
    # all-point and 101-point AP are 0.5.
    m = RefDetMeter()
    m.update("v", 0, [A], [A], [0.8])
    m.update("v", 1, [], [C], [0.9])
    out = m.compute()
    assert out["map50"] == pytest.approx(0.5)
    assert out["st_iou"] == pytest.approx(0.5)        # frame 0 IoU 1, frame 1 false alarm: 1 / 2

    # two truth boxes; ranked TP (0.9), FP (0.8), TP (0.7): precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1.
    # All-point AP = 1/2 * 1 + 1/2 * 2/3 = 0.8333. COCO samples recall 0.00..1.00 in 101 steps:
    # 51 thresholds <= 0.5 get precision 1, 50 above get 2/3 -> (51 + 50 * 2/3) / 101 = 0.83498.
    m = RefDetMeter()
    m.update("a", 0, [A], [A], [0.9])
    m.update("b", 0, [A], [C, A], [0.8, 0.7])
    assert m.compute()["map50"] == pytest.approx((51 + 50 * 2 / 3) / 101, abs=1e-6)
    assert m.compute()["map50"] != pytest.approx(5 / 6, abs=1e-4)


def test_meter_map50_sees_boxes_below_the_st_iou_threshold():
    m = RefDetMeter()
    m.update("v", 0, [A], [A], [0.3])                 # below 0.5: not reported for ST-IoU
    assert m.compute() == {"st_iou": 0.0, "map50": pytest.approx(1.0)}
    # no truth box anywhere: AP is undefined, COCO's -1
    m = RefDetMeter()
    m.update("v", 0, [], [A], [0.9])
    assert m.compute()["map50"] == -1.0


def test_meter_state_merges_across_ranks():
    full = RefDetMeter()
    _meter_video(full, "v")
    full.update("w", 0, [A], [HALF], [0.9])
    # rank 0 saw frames 0-1 of v and all of w, rank 1 frames 2-3 of v and, as DistributedSampler
    # padding, w again
    r0, r1 = RefDetMeter(), RefDetMeter()
    r0.update("v", 0, [A], [A, C], [0.7, 0.9])
    r0.update("v", 1, [A], [A], [0.4])
    r0.update("w", 0, [A], [HALF], [0.9])
    r1.update("v", 2, [], [C], [0.3])
    r1.update("v", 3, [A], [A], [0.95])
    r1.update("w", 0, [A], [HALF], [0.9])
    states = [pickle.loads(pickle.dumps(r.state())) for r in (r0, r1)]   # what all_gather_object moves
    merged = RefDetMeter()
    merged.merge(states)
    # v: 1/3 as above; w: 0.5 -> mean 5/12
    assert merged.per_video() == pytest.approx({"v": 1 / 3, "w": 0.5})
    assert merged.compute() == pytest.approx(full.compute())
    r0.merge(states)                                  # gathering one's own state too is harmless
    assert r0.compute() == pytest.approx(full.compute())
    assert merged.compute()["st_iou"] == pytest.approx(5 / 12)
    merged.reset()
    assert merged.compute() == {"st_iou": 0.0, "map50": -1.0}


def box(frame, b):
    return {"frame": frame, "x1": b[0], "y1": b[1], "x2": b[2], "y2": b[3]}


def test_submission_groups_consecutive_frames_into_segments():
    pred = {"v1": {6: [C], 0: [A], 1: [[0.4, 1.6, 10.2, 9.8]], 2: torch.tensor([A]), 5: [C], 3: []},
            "v2": {},
            3: {4: []}}
    sub = submission(pred)
    # frames 0, 1, 2 then a gap (3 is empty, 4 absent) then 5, 6; coordinates rounded
    assert sub == [
        {"video_id": "v1", "detections": [{"bboxes": [box(0, A), box(1, [0, 2, 10, 10]), box(2, A)]},
                                          {"bboxes": [box(5, C), box(6, C)]}]},
        {"video_id": "v2", "detections": []},
        {"video_id": "3", "detections": []},
    ]
    # evaluated every 2nd frame: gaps of 2 still join; 8 - 4 > 2 starts a new segment
    strided = submission({"v": {0: [A], 2: [A], 4: [A], 8: [A]}}, frame_step=2)
    assert [[b["frame"] for b in g["bboxes"]] for g in strided[0]["detections"]] == [[0, 2, 4], [8]]
    # every video of the test set, in the given order, even those never predicted
    assert submission({"v1": {0: [A]}}, video_ids=["v9", "v1"]) == [
        {"video_id": "v9", "detections": []},
        {"video_id": "v1", "detections": [{"bboxes": [box(0, A)]}]}]
    # two boxes in a frame: one entry each
    assert submission({"v": {0: [A, C]}})[0]["detections"] == [{"bboxes": [box(0, A), box(0, C)]}]
    with pytest.raises(ValueError):
        submission(pred, frame_step=0)


def test_read_submission_round_trip_and_scoring_against_annotations(tmp_path):
    pred = {"v1": {0: [A], 1: [A], 5: [C]}, "v2": {}}
    sub = submission(pred)
    assert read_submission(sub) == pred
    assert submission(read_submission(sub)) == sub
    path = tmp_path / "submission.json"
    path.write_text(json.dumps(sub))
    assert read_submission(path) == read_submission(str(path)) == pred
    # the annotation file has the same shape under "annotations": score the submission with it
    ann = [{"video_id": "v1", "annotations": [{"bboxes": [{"frame": f, "x1": 0, "y1": 0, "x2": 10, "y2": 10}
                                                          for f in range(4)]}]},
           {"video_id": "v2", "annotations": []}]
    truth = read_submission(ann, key="annotations")
    # v1: truth 0..3, pred 0, 1, 5 -> shared 0, 1 (IoU 1), union {0, 1, 2, 3, 5} -> 2 / 5; v2: 1.0
    mean, per_video = st_iou(truth, read_submission(sub))
    assert per_video == pytest.approx({"v1": 2 / 5, "v2": 1.0})
    assert mean == pytest.approx(0.7)
    with pytest.raises(ValueError, match="key='annotations'"):
        read_submission(ann)


GOOD_BOX = {"frame": 0, "x1": 0, "y1": 0, "x2": 10, "y2": 10}


def _sub(**box):
    return [{"video_id": "v", "detections": [{"bboxes": [{**GOOD_BOX, **box}]}]}]


@pytest.mark.parametrize("obj, message", [
    ({"video_id": "v"}, "must be a list"),
    (["v"], "entry 0: expected an object with 'video_id'"),
    ([{"detections": []}], "entry 0: expected an object with 'video_id'"),
    ([{"video_id": None, "detections": []}], "video_id must be a string"),
    ([{"video_id": "v"}], r"entry 0 \(video_id 'v'\): missing 'detections'"),
    ([{"video_id": "v", "detections": {}}], "'detections' must be a list"),
    ([{"video_id": "v", "detections": [{"boxes": []}]}], r"detections\[0\]: expected an object with a 'bboxes'"),
    ([{"video_id": "v", "detections": [{"bboxes": [[0, 0, 10, 10]]}]}], r"bboxes\[0\]: expected an object"),
    ([{"video_id": "v", "detections": []}, {"video_id": "v", "detections": []}], "appears twice"),
    ([{"video_id": "v", "detections": [{"bboxes": [{"frame": 0, "x1": 0, "y1": 0}]}]}], "missing x2, y2"),
    (_sub(frame=-1), "frame must be a non-negative integer"),
    (_sub(frame=1.5), "frame must be a non-negative integer"),
    (_sub(frame=True), "frame must be a non-negative integer"),
    (_sub(x1="0"), r"\.x1: expected a finite number"),
    (_sub(y2=float("nan")), r"\.y2: expected a finite number"),
    (_sub(x1=20), "expected x1 <= x2"),
])
def test_malformed_submission_raises_value_error(obj, message):
    with pytest.raises(ValueError, match=message):
        read_submission(obj)


def test_unreadable_submission_file_raises_value_error(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("[{")
    with pytest.raises(ValueError, match="cannot read submission file .*bad.json"):
        read_submission(bad)
    with pytest.raises(ValueError, match="cannot read submission file"):
        read_submission(tmp_path / "missing.json")


def test_threshold_sweep_scores_each_threshold_and_keeps_the_configured_one():
    meter = RefDetMeter(score_threshold=0.5)
    box = [0.0, 0.0, 10.0, 10.0]
    meter.update("v", 0, [box], [box], [0.9])      # truth frame, confident hit
    meter.update("v", 1, [box], [box], [0.3])      # truth frame, weak hit
    meter.update("v", 2, [], [box], [0.4])         # background frame, false alarm
    # union of truth {0, 1} and predicted frames; hits sum IoU 1 each
    sweep = meter.threshold_sweep([0.2, 0.35, 0.45, 0.95])
    assert sweep[0.2] == pytest.approx(2 / 3)      # predicted {0, 1, 2}: 2 hits / 3 frames
    assert sweep[0.35] == pytest.approx(1 / 3)     # frames 0 and 2 predicted, truth 0 and 1: 1 / 3
    assert sweep[0.45] == pytest.approx(1 / 2)     # only frame 0: 1 / |{0, 1}|
    assert sweep[0.95] == 0.0
    assert meter.score_threshold == 0.5 and meter.compute()["st_iou"] == pytest.approx(1 / 2)
