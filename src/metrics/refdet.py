"""Reference-based detection in drone video: the Zalo AI Challenge 2025 "AeroEyes" metric and format.

* ST-IoU (Spatio-Temporal IoU), as the challenge defines it, for one video:

      ST-IoU = sum_{f in F_true ∩ F_pred} IoU(B_f, B'_f) / |F_true ∪ F_pred|

  where F_true are the frames holding a ground-truth box and F_pred the frames holding a predicted
  one. Reporting the object where it is absent and missing it where it is present both enlarge the
  denominator. The score of a set of videos is the mean of the per-video values. No maintained library
  has it, so it is written here.
* Our extension for a frame with several boxes (the challenge has one object per frame): the spatial
  term is a one-to-one matching of truth and predicted boxes maximising the summed IoU
  (``scipy.optimize.linear_sum_assignment``), divided by ``max(T, P)``, so an extra or a missing box in
  the frame costs. With one box on each side it is plain IoU.
* Conventions: boxes are xyxy in absolute pixels; a frame whose box list is empty counts as absent;
  a video with no truth and no prediction scores 1.0 (nothing to find, nothing reported).
* ``RefDetMeter`` also reports per-frame detection mAP at IoU 0.5 (single class, every frame of every
  video is an image) through ``torchmetrics``' ``MeanAveragePrecision`` with the pycocotools backend,
  i.e. COCO's 101-point interpolated AP, not all-point (VOC 2010+) AP: for scores TP, FP, TP over two
  truth boxes COCO gives (51 + 50 * 2/3) / 101 = 0.8350 where all-point gives 0.8333.
* ``submission`` / ``read_submission`` write and read the challenge's submission format,
  ``[{"video_id": str, "detections": [{"bboxes": [{"frame", "x1", "y1", "x2", "y2"}, ...]}, ...]}]``,
  one ``bboxes`` group per run of consecutive frames. The annotation file has the same shape with the
  key ``annotations`` (``read_submission(obj, key="annotations")`` reads it).
"""
from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping

import torch
from scipy.optimize import linear_sum_assignment
from torchvision.ops import box_iou

from src.metrics.meter import Meter

_COORDS = ("x1", "y1", "x2", "y2")


def _as_boxes(boxes) -> torch.Tensor:
    """Any box container -> (N, 4) float64 CPU tensor: a tensor or array (N, 4) or (4,), a list of
    4-lists or of 4-tensors, one flat 4-list, or None / empty for no box."""
    if boxes is None:
        return torch.zeros(0, 4, dtype=torch.float64)
    if isinstance(boxes, torch.Tensor):
        t = boxes.detach().to("cpu", torch.float64)
    elif isinstance(boxes, (list, tuple)) and boxes and isinstance(boxes[0], torch.Tensor):
        t = torch.stack([b.detach().to("cpu", torch.float64).reshape(-1) for b in boxes])
    else:
        t = torch.as_tensor(boxes, dtype=torch.float64)
    if t.numel() == 0:
        return t.reshape(0, 4)
    if t.dim() == 1 and t.numel() == 4:
        return t.reshape(1, 4)
    if t.dim() != 2 or t.shape[1] != 4:
        raise ValueError(f"expected boxes of shape (N, 4) or (4,) in xyxy pixels, got shape {tuple(t.shape)}")
    return t


def frame_iou(true_boxes, pred_boxes) -> float:
    """Spatial term of one frame. One box each: IoU. Several (our extension): optimal one-to-one
    matching, summed IoU / max(T, P). Both empty: 1.0; one side empty: 0.0."""
    t, p = _as_boxes(true_boxes), _as_boxes(pred_boxes)
    if len(t) == 0 and len(p) == 0:
        return 1.0
    if len(t) == 0 or len(p) == 0:
        return 0.0
    # degenerate (zero-area) boxes give 0/0 in box_iou: they overlap nothing
    iou = box_iou(t, p).nan_to_num(0.0)                       # T, P
    if iou.shape == (1, 1):
        return float(iou[0, 0])
    rows, cols = linear_sum_assignment(iou.numpy(), maximize=True)
    return float(iou[rows, cols].sum()) / max(iou.shape)


def _present(frames: Mapping) -> dict:
    """frame -> (N, 4) boxes, only the frames that hold at least one box."""
    out = {}
    for f, boxes in frames.items():
        b = _as_boxes(boxes)
        if len(b):
            out[f] = b
    return out


def video_st_iou(truth: Mapping[int, object], pred: Mapping[int, object]) -> float:
    """ST-IoU of one video: frame -> boxes for truth and prediction (empty lists = absent frames).
    Both without any box: 1.0."""
    t, p = _present(truth), _present(pred)
    union = t.keys() | p.keys()
    if not union:
        return 1.0
    return sum(frame_iou(t[f], p[f]) for f in t.keys() & p.keys()) / len(union)


def st_iou(truth: Mapping, pred: Mapping) -> tuple[float, dict]:
    """(mean, {video_id: ST-IoU}) over the videos of ``truth``. Video ids are compared as strings;
    a video missing from ``pred`` scores as an empty prediction (0 when it has truth); videos only
    in ``pred`` are ignored (the annotation file defines the evaluation set). No video: mean 0.0."""
    by_id = {str(v): frames for v, frames in pred.items()}
    per_video = {v: video_st_iou(frames, by_id.get(str(v), {})) for v, frames in truth.items()}
    mean = sum(per_video.values()) / len(per_video) if per_video else 0.0
    return mean, per_video


class RefDetMeter(Meter):
    """Accumulates one validation pass, frame by frame, and turns it into ST-IoU and mAP50.

    Args:
        score_threshold: predictions scoring below it are not reported for ST-IoU (AP sees them all,
            so callers should pass every box above a low threshold).
        max_boxes_per_frame: ST-IoU keeps at most this many of a frame's highest-scoring boxes above
            the threshold (1: the challenge has one object per frame; None: no limit).
        with_map: also compute mAP50 (needs torchmetrics + pycocotools).
        sweep: ``compute()`` also gives ``st_iou_best_threshold`` and ``st_iou_at_best_threshold``, the
            ST-IoU the best score threshold of 0.05, 0.10, ..., 0.95 would give on these predictions
            (chosen on this split: a guide to ``score_threshold``, not a test figure).

    ST-IoU sees only the frames passed to ``update``: with a frame stride it is the metric of the
    strided video. Distributed evaluation: ``state()`` is a plain picklable dict
    (``torch.distributed.all_gather_object``), ``merge(states)`` folds them in. A (video, frame) given
    twice keeps the last one, so gathering this rank's own state too, or a video that
    ``DistributedSampler``'s padding evaluated on two ranks, is harmless.
    """

    def __init__(self, score_threshold: float = 0.5, max_boxes_per_frame: int | None = 1,
                 with_map: bool = True, sweep: bool = False) -> None:
        if max_boxes_per_frame is not None and max_boxes_per_frame < 1:
            raise ValueError(f"max_boxes_per_frame must be >= 1 or None, got {max_boxes_per_frame}")
        self.score_threshold = score_threshold
        self.max_boxes_per_frame = max_boxes_per_frame
        self.with_map, self.sweep = with_map, sweep
        # video_id -> frame -> (truth boxes, predicted boxes, scores), as plain lists: cheap to pickle
        self._frames: dict = {}

    def reset(self) -> None:
        self._frames = {}

    def update(self, video_id, frame: int, true_boxes, pred_boxes, pred_scores=None) -> None:
        """One frame: truth (T, 4) and every scored prediction (P, 4) + (P,), xyxy pixels, tensors or
        lists. ``pred_scores=None`` means predictions already thresholded (score 1 each)."""
        t, p = _as_boxes(true_boxes), _as_boxes(pred_boxes)
        if pred_scores is None:
            s = torch.ones(len(p), dtype=torch.float64)
        else:
            s = torch.as_tensor(pred_scores.detach().cpu() if isinstance(pred_scores, torch.Tensor) else pred_scores,
                                dtype=torch.float64).reshape(-1)
        if len(s) != len(p):
            raise ValueError(f"video {video_id!r} frame {frame}: {len(p)} predicted boxes but {len(s)} scores")
        self._frames.setdefault(video_id, {})[int(frame)] = (t.tolist(), p.tolist(), s.tolist())

    def state(self) -> dict:
        return {"frames": {v: dict(frames) for v, frames in self._frames.items()}}

    def merge(self, states: Iterable[dict]) -> None:
        for st in states:
            for v, frames in st["frames"].items():
                self._frames.setdefault(v, {}).update(frames)

    def _kept(self, boxes: list, scores: list) -> list:
        """The boxes ST-IoU reports: above threshold, highest scores first, at most max_boxes_per_frame."""
        order = sorted((i for i, s in enumerate(scores) if s >= self.score_threshold), key=lambda i: -scores[i])
        return [boxes[i] for i in order[:self.max_boxes_per_frame]]

    def truth(self) -> dict:
        return {v: {f: t for f, (t, _, _) in frames.items()} for v, frames in self._frames.items()}

    def predictions(self) -> dict:
        """video_id -> frame -> thresholded boxes (what ST-IoU scores; feed to ``submission``)."""
        return {v: {f: self._kept(b, s) for f, (_, b, s) in frames.items()} for v, frames in self._frames.items()}

    def per_video(self) -> dict:
        return st_iou(self.truth(), self.predictions())[1]

    def map50(self) -> float:
        """COCO (101-point) AP at IoU 0.5 over all frames; -1.0 when no frame holds a truth box (COCO's
        'undefined')."""
        from torchmetrics.detection import MeanAveragePrecision
        preds, gts = [], []
        for frames in self._frames.values():
            for t, b, s in frames.values():
                if not t and not b:
                    continue        # a frame with neither truth nor prediction changes no count
                preds.append({"boxes": torch.tensor(b, dtype=torch.float32).reshape(-1, 4),
                              "scores": torch.tensor(s, dtype=torch.float32),
                              "labels": torch.zeros(len(b), dtype=torch.long)})
                gts.append({"boxes": torch.tensor(t, dtype=torch.float32).reshape(-1, 4),
                            "labels": torch.zeros(len(t), dtype=torch.long)})
        if not any(len(g["boxes"]) for g in gts):
            return -1.0
        m = MeanAveragePrecision(box_format="xyxy", iou_type="bbox", iou_thresholds=[0.5], backend="pycocotools")
        m.update(preds, gts)
        return float(m.compute()["map"])

    def threshold_sweep(self, thresholds: Iterable[float]) -> dict[float, float]:
        """ST-IoU at each score threshold (the configured one untouched): how sensitive the metric is
        to ``--score-threshold``, from the same predictions."""
        kept, out = self.score_threshold, {}
        try:
            for t in thresholds:
                self.score_threshold = t
                out[t] = st_iou(self.truth(), self.predictions())[0]
        finally:
            self.score_threshold = kept
        return out

    def compute(self) -> dict[str, float]:
        out = {"st_iou": st_iou(self.truth(), self.predictions())[0]}
        if self.with_map:
            out["map50"] = self.map50()
        if self.sweep:
            by_threshold = self.threshold_sweep([round(0.05 * i, 2) for i in range(1, 20)])
            best = max(by_threshold, key=by_threshold.get)
            out["st_iou_best_threshold"], out["st_iou_at_best_threshold"] = best, by_threshold[best]
        return out


def submission(pred: Mapping, frame_step: int = 1, video_ids: Iterable | None = None) -> list[dict]:
    """video_id -> frame -> boxes into the challenge's submission list. Runs of predicted frames whose
    gaps are <= ``frame_step`` form one ``bboxes`` group; coordinates are rounded to integers; a frame
    with several boxes gives one entry per box. ``video_ids`` lists every video to report (in that
    order; those without prediction get ``"detections": []``); default: the videos of ``pred``."""
    if frame_step < 1:
        raise ValueError(f"frame_step must be >= 1, got {frame_step}")
    by_id = {str(v): frames for v, frames in pred.items()}
    out = []
    for vid in (video_ids if video_ids is not None else pred):
        present = _present(by_id.get(str(vid), {}))
        groups, prev = [], None
        for f in sorted(present):
            if prev is None or f - prev > frame_step:
                groups.append({"bboxes": []})
            for box in present[f].tolist():
                groups[-1]["bboxes"].append({"frame": int(f), **{k: int(round(c)) for k, c in zip(_COORDS, box)}})
            prev = f
        out.append({"video_id": str(vid), "detections": groups})
    return out


def _number(x, where: str) -> float:
    # bool is an int in Python but never a coordinate
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
        raise ValueError(f"{where}: expected a finite number, got {x!r}")
    return x


def read_submission(obj, key: str = "detections") -> dict[str, dict[int, list[list[float]]]]:
    """Parse a submission (the list, or a path to its JSON file) into video_id -> frame -> [[x1, y1,
    x2, y2], ...]. ``key="annotations"`` reads the challenge's annotation file. Raises ValueError
    naming the offending entry on malformed input."""
    if isinstance(obj, (str, os.PathLike)):
        try:
            with open(obj, encoding="utf-8") as fh:
                obj = json.load(fh)
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"cannot read submission file {os.fspath(obj)}: {e}") from e
    if not isinstance(obj, list):
        raise ValueError(f"submission must be a list of videos, got {type(obj).__name__}")
    out: dict[str, dict[int, list[list[float]]]] = {}
    for i, entry in enumerate(obj):
        if not isinstance(entry, dict) or "video_id" not in entry:
            raise ValueError(f"entry {i}: expected an object with 'video_id', got {entry!r:.80}")
        vid = entry["video_id"]
        if isinstance(vid, bool) or not isinstance(vid, (str, int)):
            raise ValueError(f"entry {i}: video_id must be a string, got {vid!r}")
        vid = str(vid)
        where = f"entry {i} (video_id {vid!r})"
        if vid in out:
            raise ValueError(f"{where}: video_id appears twice")
        if key not in entry:
            other = "annotations" if key == "detections" else "detections"
            hint = f" (it has {other!r}: pass key={other!r})" if other in entry else ""
            raise ValueError(f"{where}: missing {key!r}{hint}")
        groups = entry[key]
        if not isinstance(groups, list):
            raise ValueError(f"{where}: {key!r} must be a list, got {type(groups).__name__}")
        frames: dict[int, list[list[float]]] = {}
        for g, group in enumerate(groups):
            if not isinstance(group, dict) or not isinstance(group.get("bboxes"), list):
                raise ValueError(f"{where}, {key}[{g}]: expected an object with a 'bboxes' list")
            for j, box in enumerate(group["bboxes"]):
                at = f"{where}, {key}[{g}].bboxes[{j}]"
                if not isinstance(box, dict):
                    raise ValueError(f"{at}: expected an object, got {box!r:.80}")
                missing = [k for k in ("frame", *_COORDS) if k not in box]
                if missing:
                    raise ValueError(f"{at}: missing {', '.join(missing)}")
                f = box["frame"]
                if isinstance(f, bool) or not isinstance(f, int) or f < 0:
                    raise ValueError(f"{at}: frame must be a non-negative integer, got {f!r}")
                x1, y1, x2, y2 = (_number(box[k], f"{at}.{k}") for k in _COORDS)
                if x2 < x1 or y2 < y1:
                    raise ValueError(f"{at}: expected x1 <= x2 and y1 <= y2, got {[x1, y1, x2, y2]}")
                frames.setdefault(f, []).append([x1, y1, x2, y2])
        out[vid] = frames
    return out
