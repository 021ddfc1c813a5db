"""Zalo AI Challenge 2025 "AeroEyes" reader: drone videos, reference photos and their box annotations.

Layout (DESIGN section 4)::

    ROOT/samples/<video_id>/drone_video.mp4
    ROOT/samples/<video_id>/object_images/img_1.jpg, img_2.jpg, img_3.jpg   reference photos of the target
    ROOT/annotations/annotations.json
        [{"video_id": str, "annotations": [{"bboxes": [{"frame": int, "x1": int, "y1": int,
                                                         "x2": int, "y2": int}, ...]}, ...]}, ...]

Boxes are absolute pixels (xyxy), frames 0-based; each ``annotations`` group is one segment in which
the target is visible, and frames without a box are background. A test folder may have no annotation
file. ``ROOT`` may also be given as the ``samples`` folder itself (the seed recipes pass
``--data_root ./datasets/train/samples``).

Policy: a malformed or wrongly shaped annotation file is a :class:`~src.errors.DataError` naming the file
and the place (line/column, or entry); a single bad video is skipped and counted in a
:class:`~src.data.loading.DataWarnings` (reasons below, on :func:`read_aeroeyes`). Degenerate boxes
and frames past the end of a video are found while decoding (``src.data.frames``), because
only the decoder knows the real frame size and count.

The split is by video, never by frame: consecutive frames of one flight are near duplicates.
"""
from __future__ import annotations

import json
import logging
import math
import os
import random
import re
from dataclasses import dataclass, field

from src.data.text import read_text
from src.errors import DataError
from src.data.images import BadImage, load_rgb
from src.data.loading import DataWarnings

log = logging.getLogger(__name__)

Box = tuple[float, float, float, float]
VIDEO_FILE = "drone_video.mp4"
REFERENCE_DIR = "object_images"
ANNOTATIONS = os.path.join("annotations", "annotations.json")
NUM_REFERENCES = 3
_REFERENCE_NAME = re.compile(r"img_[123]\.(jpg|jpeg|png)", re.IGNORECASE)
_COORDS = ("x1", "y1", "x2", "y2")


@dataclass
class VideoRecord:
    video_id: str
    video_path: str
    reference_paths: list[str]                  # 1-3 readable reference photos, sorted by name
    boxes: dict[int, list[Box]] = field(default_factory=dict)   # frame -> boxes (xyxy, original pixels)
    annotated: bool = True                      # False: no annotation known (test folder), not "no target"
    root: str = ""                              # the dataset root (holds samples/; default home of frame_cache/)


def _number(value, what: str) -> float:
    # bool is an int subclass; true/false in a box is a writing error, not 1/0
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{what} is {json.dumps(value)}, not a number")
    return float(value)


def read_annotations(path: str) -> dict[str, dict[int, list[Box]]]:
    """``annotations.json`` -> ``{video_id: {frame: [(x1, y1, x2, y2), ...]}}`` (frames sorted; all
    groups of a video merged, since the groups only mark visible segments). Raises
    :class:`DataError` with one line naming the file and the line/column (bad JSON) or the entry
    (wrong structure, duplicate video id)."""
    text = read_text(path, "annotation file")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: malformed JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from None
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of videos "
                        f'([{{"video_id": ..., "annotations": [...]}}, ...]), got a {type(data).__name__}')
    out: dict[str, dict[int, list[Box]]] = {}
    for i, entry in enumerate(data):
        where = f"{path}: entry {i}"
        if not isinstance(entry, dict) or "video_id" not in entry:
            raise DataError(f"{where}: no \"video_id\" (each entry is "
                            f'{{"video_id": str, "annotations": [{{"bboxes": [...]}}, ...]}})')
        vid = entry["video_id"]
        if not isinstance(vid, str) or not vid.strip():
            raise DataError(f"{where}: \"video_id\" must be a non-empty string, got {json.dumps(vid)}")
        where = f"{path}: entry {i} (video_id {vid!r})"
        if vid in out:
            raise DataError(f"{where}: duplicate video_id (already in an earlier entry)")
        groups = entry.get("annotations")
        if not isinstance(groups, list):
            raise DataError(f"{where}: \"annotations\" must be a list of {{\"bboxes\": [...]}} groups")
        frames: dict[int, list[Box]] = {}
        for g, group in enumerate(groups):
            bboxes = group.get("bboxes") if isinstance(group, dict) else None
            if not isinstance(bboxes, list):
                raise DataError(f"{where}, annotations[{g}]: \"bboxes\" must be a list")
            for j, b in enumerate(bboxes):
                at = f"{where}, annotations[{g}].bboxes[{j}]"
                if not isinstance(b, dict):
                    raise DataError(f"{at}: expected an object with frame, x1, y1, x2, y2")
                missing = [k for k in ("frame", *_COORDS) if k not in b]
                if missing:
                    raise DataError(f"{at}: missing key {', '.join(repr(k) for k in missing)}")
                try:
                    frame = _number(b["frame"], "frame")
                    box = tuple(_number(b[k], k) for k in _COORDS)
                except ValueError as exc:
                    raise DataError(f"{at}: {exc}") from None
                if frame != int(frame) or frame < 0:
                    raise DataError(f"{at}: frame must be a non-negative integer, got {json.dumps(b['frame'])}")
                frames.setdefault(int(frame), []).append(box)
        out[vid] = dict(sorted(frames.items()))
    return out


def resolve_root(root: str) -> tuple[str, str]:
    """``(dataset root, samples folder)`` for ``root`` given as either of the two."""
    if os.path.isdir(os.path.join(root, "samples")):
        return root, os.path.join(root, "samples")
    if os.path.isdir(root) and (os.path.basename(os.path.normpath(root)) == "samples" or any(
            os.path.isfile(os.path.join(root, d, VIDEO_FILE)) for d in os.listdir(root))):
        return os.path.dirname(os.path.normpath(root)) or ".", root
    what = "folder not found" if not os.path.exists(root) else "no samples/ folder in it"
    raise DataError(f"{root}: {what} (AeroEyes layout: ROOT/samples/<video_id>/{VIDEO_FILE}, "
                    f"ROOT/samples/<video_id>/{REFERENCE_DIR}/img_1.jpg.., ROOT/{ANNOTATIONS})")


def _references(folder: str, warnings: DataWarnings) -> list[str]:
    if not os.path.isdir(folder):
        return []
    paths = sorted(os.path.join(folder, f) for f in os.listdir(folder) if _REFERENCE_NAME.fullmatch(f))
    usable = []
    for p in paths:
        # decoded once here so a broken photo is dropped and counted up front, instead of failing
        # inside a worker every time its video comes up in an episode
        try:
            load_rgb(p)
        except BadImage as exc:
            warnings.add("unreadable_reference", p, exc.reason)
            continue
        usable.append(p)
    return usable


def read_aeroeyes(root: str, annotations: str | None, warnings: DataWarnings,
                  require_boxes: bool = True) -> list[VideoRecord]:
    """Usable videos under ``root`` (dataset root or its ``samples`` folder), sorted by video id.

    ``annotations`` defaults to ``<dataset root>/annotations/annotations.json``; without it (and
    ``require_boxes=False``, e.g. a test folder) records have no boxes and ``annotated=False``.
    Counted in ``warnings``: ``missing_video`` (no drone_video.mp4: skipped), ``no_reference_images``
    (skipped), ``unreadable_reference`` (that photo dropped), ``fewer_than_3_references`` (kept; the
    support set repeats them), ``video_without_annotations`` (skipped when ``require_boxes``),
    ``annotated_video_missing`` (an annotated id with no samples folder). No usable video at all, or
    a missing/malformed annotation file, is a :class:`DataError`.
    """
    dataset_root, samples = resolve_root(root)
    ann_path = annotations or os.path.join(dataset_root, ANNOTATIONS)
    boxes: dict[str, dict[int, list[Box]]] | None = None
    if os.path.isfile(ann_path):
        boxes = read_annotations(ann_path)
    elif annotations or require_boxes:
        raise DataError(f"{ann_path}: annotation file not found (a folder without annotations can only be "
                        f"predicted on)", param="annotations")
    folders = sorted(d for d in os.listdir(samples)
                     if not d.startswith(".") and os.path.isdir(os.path.join(samples, d)))
    records = []
    for vid in folders:
        folder = os.path.join(samples, vid)
        video = os.path.join(folder, VIDEO_FILE)
        if not os.path.isfile(video):
            warnings.add("missing_video", folder, f"no {VIDEO_FILE}")
            continue
        if boxes is not None and vid not in boxes and require_boxes:
            warnings.add("video_without_annotations", folder, f"not in {ann_path}")
            continue
        refs = _references(os.path.join(folder, REFERENCE_DIR), warnings)
        if not refs:
            warnings.add("no_reference_images", folder, f"no readable {REFERENCE_DIR}/img_[123].jpg|jpeg|png")
            continue
        if len(refs) < NUM_REFERENCES:
            warnings.add("fewer_than_3_references", folder, f"{len(refs)} found; they are repeated")
        if boxes is not None and vid in boxes:
            records.append(VideoRecord(vid, video, refs, boxes[vid], root=dataset_root))
        else:
            records.append(VideoRecord(vid, video, refs, {}, annotated=False, root=dataset_root))
    if boxes is not None:
        for vid in sorted(set(boxes) - set(folders)):
            warnings.add("annotated_video_missing", f"{ann_path}:{vid}", f"no folder {os.path.join(samples, vid)}")
    if not records:
        counts = ", ".join(f"{k}={v}" for k, v in warnings.counts().items()) or "no video folders"
        raise DataError(f"{samples}: no usable video in {len(folders)} folder(s) ({counts})")
    return records


def _read_split_file(path: str) -> dict[str, str]:
    lines = read_text(path, "split file").splitlines()
    out: dict[str, str] = {}
    for lineno, line in enumerate(lines, 1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        parts = text.split()
        if len(parts) != 2 or parts[1] not in ("train", "valid"):
            raise DataError(f"{path}:{lineno}: expected 'video_id train|valid' (tab or space), got {line!r}")
        if parts[0] in out:
            raise DataError(f"{path}:{lineno}: video {parts[0]!r} listed twice")
        out[parts[0]] = parts[1]
    return out


def split_videos(records: list[VideoRecord], valid_videos: int | float | list[str] | None,
                 split_file: str | None, seed: int) -> tuple[list[VideoRecord], list[VideoRecord]]:
    """(train, valid) records, split by video, both sorted by id.

    ``split_file``: ``video_id train|valid`` lines (records it does not list are left out, with a
    log line). Otherwise ``valid_videos``: a float in (0, 1) is a fraction of the videos (at least
    one), an int a count, a list explicit ids; the drawn videos are a seeded sample, so the same
    seed gives the same split. ``None`` (and no file): everything is training.
    """
    by_id = {r.video_id: r for r in records}
    if split_file is not None:
        if valid_videos is not None:
            raise DataError("give either a split file or a number/list of validation videos, not both")
        assignment = _read_split_file(split_file)
        unknown = sorted(set(assignment) - set(by_id))
        if unknown:
            log.warning("%s: %d listed video(s) are not usable here (skipped or absent): %s", split_file,
                        len(unknown), ", ".join(unknown[:5]) + (" ..." if len(unknown) > 5 else ""))
        unlisted = sorted(set(by_id) - set(assignment))
        if unlisted:
            log.info("%s: %d video(s) not listed are left out", split_file, len(unlisted))
        train = [by_id[v] for v in sorted(by_id) if assignment.get(v) == "train"]
        valid = [by_id[v] for v in sorted(by_id) if assignment.get(v) == "valid"]
        if not train:
            raise DataError(f"{split_file}: no usable training video listed")
        return train, valid
    if valid_videos is None:
        return sorted(records, key=lambda r: r.video_id), []
    ids = sorted(by_id)
    if isinstance(valid_videos, (list, tuple)):
        unknown = [v for v in valid_videos if v not in by_id]
        if unknown:
            raise DataError(f"validation video(s) not found among the {len(ids)} usable videos: {', '.join(unknown)}")
        chosen = set(valid_videos)
    else:
        if isinstance(valid_videos, bool) or not isinstance(valid_videos, (int, float)):
            raise DataError(f"validation videos: expected a fraction, a count or a list of ids, got {valid_videos!r}")
        if isinstance(valid_videos, float) and not valid_videos.is_integer():
            if not 0 < valid_videos < 1:
                raise DataError(f"validation fraction must be in (0, 1), got {valid_videos}")
            n = max(1, math.floor(valid_videos * len(ids) + 0.5))
        else:
            n = int(valid_videos)
            if n < 0:
                raise DataError(f"validation video count must be >= 0, got {n}")
        chosen = set(random.Random(seed).sample(ids, min(n, len(ids))))
    if len(chosen) >= len(ids):
        raise DataError(f"{len(ids)} usable video(s) are too few: {len(chosen)} for validation would leave none "
                        f"for training")
    return [by_id[v] for v in ids if v not in chosen], [by_id[v] for v in ids if v in chosen]
