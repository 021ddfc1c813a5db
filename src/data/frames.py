"""Video reading and the frame cache: AeroEyes drone videos decoded once into JPEG frames for training.

The command-line tool over it: ``python -m src.tools.extract_frames --data-root datasets/train``.

Each video is decoded ONCE, sequentially, with PyAV (frame-threaded). The seed project seeked to
every training frame it wanted (``seek_read_frames`` below keeps that method for the benchmark): each
seek lands on the previous keyframe and decodes forward again, so a GOP of 250 frames is decoded up
to 250 times. Written per video::

    CACHE/<video_id>/<frame:06d>.jpg   every annotated frame + ``background_frames`` random others
    CACHE/<video_id>/.lock             a writer's lock (``flock``): concurrent extractions take turns
    CACHE/<video_id>/index.json        written LAST, atomically:
        {"video_id", "video_path", "num_frames" (counted while decoding), "width", "height", "fps",
         "frames": {"<frame>": [[x1, y1, x2, y2], ...]}   annotated frames that exist, boxes clipped
         "background": [frame, ...]                       never an annotated frame
         "skipped": {"frame_past_end": [...], "box_outside_frame": [...], "box_clipped": [...]},
         "truncated": null or the decoder error that ended the video early,
         "key": hash of (video size + mtime, its boxes, background_frames, seed, quality[, max_side]),
         "version", and with ``max_side`` "max_side", "frame_width", "frame_height" (the stored JPEGs' size)}

``max_side`` (off by default): the JPEGs are stored downscaled so that their longer side is at most
``max_side`` (antialiased, PIL's bilinear filter): a 1920x1080 video for a 640 px model becomes a
640x360 cache, several times faster to read back per training item, and a fraction of the disk. Boxes
stay in ORIGINAL pixels ("width"/"height" stay the video's size); readers scale them by
``frame_width / width`` (:func:`frame_scale`). The cap is part of the key, so a cache of another cap
(or none) is never read as this one: it is redone; give each cap its own ``cache_dir`` to keep both.
``cap_from``: only videos whose longer side is at least this are capped; smaller ones are stored at
full size (their index then has no "max_side"); a current full-size cache of the video (extracted
before, without a cap) is then used as it is rather than decoded again. :func:`resolve_cap` turns the scripts'
``--frame-cache-max-side`` into the pair: ``auto`` (the default) caps at the model's input size the
videos at least twice as large (a 1080p video for a 640 px model: 640x360), and leaves smaller ones,
whose JPEG re-encoding at a smaller size would cost detail the letterbox still keeps, as they are.

The indexes returned by :func:`extract_video` / :func:`ensure_frame_cache` also hold ``"dir"``, the
folder of that video's JPEGs (not stored: the cache may be moved).

Resumable and idempotent: a video whose ``index.json`` has the same key is not decoded again; a
video without one (interrupted) or with another key is redone from scratch. Background frames are a
seeded reservoir sample (Vitter's algorithm R) over the unannotated frames as they stream by, so they
are uniform over the whole video without knowing its length in advance (container frame counts are
often missing or wrong) and without a second pass.

Bad input is skipped and counted (``DataWarnings`` reasons, also kept in ``index.json`` so a cached
run reports the same counts): ``frame_past_end`` (annotated frame >= the real frame count),
``box_outside_frame`` (a box under 2 px wide or high after clipping to the frame: dropped),
``box_clipped`` (a box partly outside: clipped, kept), ``truncated_video`` (decoding failed midway:
frames so far are kept), ``unreadable_video`` (cannot be opened or its first frame decoded: skipped).
"""
from __future__ import annotations

import fcntl
import hashlib
import io
import json
import logging
import os
import random
import time
from contextlib import contextmanager
from fractions import Fraction
from typing import Any, Iterator, Sequence

import av
from PIL import Image
from tqdm import tqdm

from src.data.aeroeyes import VideoRecord
from src.data.loading import DataWarnings
from src.training.checkpoint import atomic_json_dump

log = logging.getLogger(__name__)

VERSION = 1
INDEX = "index.json"
# the background-frame sample's seed: one value for the tool and the trainer, so a cache extracted
# beforehand is the one training finds (it is part of each index's key)
CACHE_SEED = 0
MIN_BOX_SIDE = 2.0      # pixels; thinner boxes after clipping carry no usable target


class BadVideo(Exception):
    """A video that cannot be opened or decoded; ``reason`` is its ``data_warnings`` category."""

    def __init__(self, path: str, reason: str, detail: str = "") -> None:
        super().__init__(f"{path}: {reason}{': ' + detail if detail else ''}")
        self.path, self.reason, self.detail = path, reason, detail


class VideoReader:
    """Sequential decoding of one video. After (or during) :meth:`frames`: ``num_frames`` decoded so
    far, ``width``, ``height``, ``fps``, and ``error`` (the decoder error that ended a truncated video)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.num_frames, self.width, self.height, self.fps = 0, 0, 0, 0.0
        self.error: str | None = None

    def frames(self, stride: int = 1) -> Iterator[tuple[int, av.VideoFrame]]:
        """Yield ``(index, frame)`` for every ``stride``-th frame; all frames are decoded (inter
        frames need their predecessors) and counted. Raises :class:`BadVideo` when the video cannot
        be opened or its first frame decoded; a later decoder error ends the video early (logged,
        ``error`` set)."""
        try:
            container = av.open(self.path)
        except (av.error.FFmpegError, OSError) as exc:
            raise BadVideo(self.path, "unreadable_video", _short(exc)) from None
        with container:
            if not container.streams.video:
                raise BadVideo(self.path, "unreadable_video", "no video stream")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"   # frame + slice threads: the decoder is the bottleneck
            rate = stream.average_rate or stream.guessed_rate
            self.fps = float(rate) if rate else 0.0
            decoded = container.decode(stream)
            while True:
                try:
                    frame = next(decoded)
                except StopIteration:
                    break
                except (av.error.FFmpegError, OSError) as exc:
                    if self.num_frames == 0:
                        raise BadVideo(self.path, "unreadable_video", _short(exc)) from None
                    self.error = _short(exc)
                    log.warning("%s: decoding stopped after %d frames: %s", self.path, self.num_frames, self.error)
                    break
                if self.num_frames == 0:
                    self.width, self.height = frame.width, frame.height
                index = self.num_frames
                self.num_frames += 1
                if index % stride == 0:
                    yield index, frame
            if self.num_frames == 0:
                raise BadVideo(self.path, "unreadable_video", "no frame decoded")


def _short(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def frame_to_pil(frame: av.VideoFrame) -> Image.Image:
    """RGB PIL image of a decoded frame. Through ``to_ndarray`` rather than ``VideoFrame.to_image``:
    same pixels, but measured 0.18 ms against 7.9 ms per 384x224 frame (PyAV 18.1), which made
    the conversion, not the decoding, the cost of extraction."""
    return Image.fromarray(frame.to_ndarray(format="rgb24"))


def iter_video_frames(path: str, stride: int = 1) -> Iterator[tuple[int, Image.Image]]:
    """``(frame index, RGB PIL image)`` for every ``stride``-th frame, decoded sequentially (what
    evaluation and prediction use: whole videos, end to end). Raises :class:`BadVideo`."""
    for index, frame in VideoReader(path).frames(stride):
        yield index, frame_to_pil(frame)


def seek_read_frames(path: str, frames: Sequence[int]) -> dict[int, Image.Image]:
    """The seed's method, kept only for ``bench/``: for each wanted frame, seek to the keyframe at or
    before it and decode forward to it. Returns ``{frame: RGB image}`` (frames past the end absent).
    Assumes a constant frame rate (frame index = presentation time x fps), as drone videos have."""
    out: dict[int, Image.Image] = {}
    with av.open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        fps = Fraction(stream.average_rate or stream.guessed_rate)
        tb = Fraction(stream.time_base)
        start = stream.start_time or 0
        for wanted in frames:
            container.seek(start + round(Fraction(wanted) / fps / tb), stream=stream, any_frame=False,
                           backward=True)
            for frame in container.decode(stream):
                if frame.pts is None:
                    continue
                index = round((frame.pts - start) * tb * fps)
                if index >= wanted:
                    if index == wanted:
                        out[wanted] = frame_to_pil(frame)
                    break
    return out


def _cache_key(record: VideoRecord, background_frames: int, seed: int, quality: int,
               max_side: int | None = None) -> str:
    st = os.stat(record.video_path)
    payload = {"version": VERSION, "size": st.st_size, "mtime_ns": st.st_mtime_ns,
               "boxes": [[f, [list(b) for b in boxes]] for f, boxes in sorted(record.boxes.items())],
               "background_frames": background_frames, "seed": seed, "quality": quality}
    if max_side:   # only when set: the keys of existing (full-size) caches stay what they were
        payload["max_side"] = int(max_side)
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode("utf-8")).hexdigest()[:20]


def _load_index(path: str) -> dict | None:
    try:
        with open(path, encoding="utf-8") as f:
            index = json.load(f)
    except (OSError, ValueError):
        return None   # absent or damaged: the video is simply redone
    return index if isinstance(index, dict) else None


def _replay_warnings(index: dict, warnings: DataWarnings) -> None:
    vid = index["video_id"]
    for reason, frames in index.get("skipped", {}).items():
        for f in frames:
            warnings.add(reason, f"{vid}/{f}", quiet=True)
    if index.get("truncated"):
        warnings.add("truncated_video", index["video_path"], index["truncated"])


def _clip_boxes(boxes, width: int, height: int) -> tuple[list[list[float]], bool, bool]:
    """(boxes clipped to the frame and kept, any clipped, any dropped)."""
    kept, clipped, dropped = [], False, False
    for x1, y1, x2, y2 in boxes:
        c = [min(max(x1, 0.0), width), min(max(y1, 0.0), height), min(max(x2, 0.0), width), min(max(y2, 0.0), height)]
        if c[2] - c[0] < MIN_BOX_SIDE or c[3] - c[1] < MIN_BOX_SIDE:
            dropped = True
            continue
        clipped |= c != [x1, y1, x2, y2]
        kept.append(c)
    return kept, clipped, dropped


def resolve_cap(value: str | int | None, image_size: int) -> tuple[int | None, int | None]:
    """``(max_side, cap_from)`` of a ``--frame-cache-max-side`` value: ``auto`` -> (image_size,
    2 * image_size); ``0``/``none``/None -> full size (None, None); a number N -> (N, None).
    Raises ValueError naming the value otherwise."""
    text = str(value).strip().lower() if value is not None else "none"
    if text == "auto":
        return image_size, 2 * image_size
    if text in ("0", "none", "full"):
        return None, None
    try:
        n = int(text)
    except ValueError:
        n = -1
    if n < 32:
        raise ValueError(f"--frame-cache-max-side: expected auto, 0 (full size) or a side >= 32 px, got {value!r}")
    return n, None


def capped_size(width: int, height: int, max_side: int | None) -> tuple[int, int]:
    """(width, height) with the longer side scaled down to ``max_side`` (never up; None: unchanged)."""
    if not max_side or max(width, height) <= max_side:
        return width, height
    f = max_side / max(width, height)
    return max(1, round(width * f)), max(1, round(height * f))


def _cap(max_side: int | None, cap_from: int | None, frame) -> int | None:
    """The cap for a video whose frames are ``frame``'s size: none when it is under ``cap_from``."""
    return max_side if max_side and max(frame.width, frame.height) >= (cap_from or 0) else None


def frame_scale(index: dict) -> float:
    """Stored JPEG pixels per original pixel of a cache ``index`` (1.0 for a full-size cache)."""
    return index["frame_width"] / index["width"] if index.get("frame_width") else 1.0


def _jpeg_bytes(frame: av.VideoFrame, quality: int, max_side: int | None = None) -> bytes:
    buf = io.BytesIO()
    img = frame_to_pil(frame)
    size = capped_size(img.width, img.height, max_side)
    if size != img.size:
        img = img.resize(size, Image.BILINEAR)   # PIL's resize is antialiased (a triangle filter as wide as the scale)
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _write(path: str, data: bytes) -> None:
    # temp file + rename: a second run extracting the same video at the same time, or a reader,
    # never sees a half-written JPEG
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


@contextmanager
def _video_lock(folder: str) -> Iterator[None]:
    """An exclusive lock on one video's cache folder (``flock`` on ``.lock`` in it): two processes
    extracting the same video (two runs, or the tool beside a run) take turns instead of deleting each
    other's files; the second then finds the first one's cache up to date."""
    with open(os.path.join(folder, ".lock"), "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _current(index_path: str, keys: tuple[str, ...]) -> dict | None:
    index = _load_index(index_path)
    return index if index is not None and index.get("key") in keys and index.get("version") == VERSION else None


def extract_video_counted(record: VideoRecord, cache_dir: str, background_frames: int, seed: int, quality: int,
                          warnings: DataWarnings, max_side: int | None = None,
                          cap_from: int | None = None) -> tuple[dict | None, int, bool]:
    """(index or None when unreadable, JPEG files written, whether the video was decoded: False when
    its cache was current). ``max_side``, ``cap_from``: see the module docstring."""
    folder = os.path.join(cache_dir, record.video_id)
    index_path = os.path.join(folder, INDEX)
    # the key says how the frames ARE stored: with cap_from (auto) a video is either capped at max_side
    # (large) or stored full size (small, or extracted before without a cap: used as it is, read with
    # reduced decoding, not decoded again)
    keys = (_cache_key(record, background_frames, seed, quality, max_side),)
    if cap_from:
        keys += (_cache_key(record, background_frames, seed, quality),)
    index = _current(index_path, keys)
    if index is None:
        os.makedirs(folder, exist_ok=True)
        with _video_lock(folder):
            index = _current(index_path, keys)       # another process may have just finished it
            if index is None:
                return _extract_locked(record, folder, background_frames, seed, quality, warnings, max_side,
                                       cap_from)
    _replay_warnings(index, warnings)
    return {**index, "dir": folder}, 0, False


def _extract_locked(record: VideoRecord, folder: str, background_frames: int, seed: int, quality: int,
                    warnings: DataWarnings, max_side: int | None = None,
                    cap_from: int | None = None) -> tuple[dict | None, int, bool]:
    """Decode ``record`` into ``folder`` from scratch (the caller holds the folder's lock)."""
    vid = record.video_id
    index_path = os.path.join(folder, INDEX)
    # the index goes first: from here on the folder is "in progress" until the new index lands
    if os.path.exists(index_path):
        os.remove(index_path)
    for name in os.listdir(folder):
        if name.endswith(".jpg"):
            os.remove(os.path.join(folder, name))
    reader = VideoReader(record.video_path)
    # str seeds are hashed with SHA-512 by random.Random: stable across processes and runs
    rng = random.Random(f"{seed}/{vid}")
    frames: dict[str, list[list[float]]] = {}
    skipped: dict[str, list[int]] = {"frame_past_end": [], "box_outside_frame": [], "box_clipped": []}
    reservoir: list[tuple[int, bytes]] = []
    seen = written = 0
    cap = None
    try:
        for i, frame in reader.frames():
            if i == 0:   # one size per video: its cap is known from the first frame
                cap = _cap(max_side, cap_from, frame)
            if i in record.boxes:
                # an annotated frame whose boxes are all dropped is neither target nor background
                kept, clipped, dropped = _clip_boxes(record.boxes[i], frame.width, frame.height)
                if clipped:
                    skipped["box_clipped"].append(i)
                if dropped:
                    skipped["box_outside_frame"].append(i)
                if kept:
                    _write(os.path.join(folder, f"{i:06d}.jpg"), _jpeg_bytes(frame, quality, cap))
                    written += 1
                    frames[str(i)] = kept
                continue
            if background_frames <= 0:
                continue
            seen += 1
            if len(reservoir) < background_frames:
                reservoir.append((i, _jpeg_bytes(frame, quality, cap)))
            else:
                j = rng.randrange(seen)
                if j < background_frames:
                    reservoir[j] = (i, _jpeg_bytes(frame, quality, cap))
    except BadVideo as exc:
        warnings.add(exc.reason, record.video_path, exc.detail)
        return None, written, True
    for i, data in sorted(reservoir):
        _write(os.path.join(folder, f"{i:06d}.jpg"), data)
        written += 1
    skipped["frame_past_end"] = [f for f in record.boxes if f >= reader.num_frames]
    if skipped["frame_past_end"]:
        past = skipped["frame_past_end"]
        log.warning("%s: %d annotated frame(s) at or past the video's end (%d frames; first %d): skipped",
                    record.video_path, len(past), reader.num_frames, past[0])
    index = {"video_id": vid, "video_path": record.video_path, "num_frames": reader.num_frames,
             "width": reader.width, "height": reader.height, "fps": reader.fps, "frames": frames,
             "background": sorted(i for i, _ in reservoir), "skipped": skipped, "truncated": reader.error,
             "version": VERSION}
    index["key"] = _cache_key(record, background_frames, seed, quality, cap)
    if cap:
        index["max_side"] = int(cap)
        index["frame_width"], index["frame_height"] = capped_size(reader.width, reader.height, cap)
    atomic_json_dump(index, index_path)
    _replay_warnings(index, warnings)
    return {**index, "dir": folder}, written, True


def extract_video(record: VideoRecord, cache_dir: str, background_frames: int = 20, seed: int = 0,
                  quality: int = 90, warnings: DataWarnings | None = None, max_side: int | None = None,
                  cap_from: int | None = None) -> dict | None:
    """Bring ``record``'s frame cache up to date; return its index (the ``index.json`` content), or
    None when the video is unreadable (counted as ``unreadable_video``). ``max_side``: see the module
    docstring."""
    return extract_video_counted(record, cache_dir, background_frames, seed, quality,
                    warnings if warnings is not None else DataWarnings(), max_side, cap_from)[0]


def ensure_frame_cache(records: Sequence[VideoRecord], cache_dir: str, background_frames: int = 20, seed: int = 0,
                       warnings: DataWarnings | None = None, log_progress: bool = True, quality: int = 90,
                       stats: dict[str, Any] | None = None, max_side: int | None = None,
                       cap_from: int | None = None) -> dict[str, dict]:
    """Extract every video whose cache is missing or stale; return ``{video_id: index}`` of the usable
    ones (unreadable videos are dropped and counted). ``stats``, when given, receives ``videos``,
    ``extracted``, ``cached``, ``failed``, ``frames_written`` and ``seconds``. ``max_side``: store the
    frames with their longer side capped at it (the module docstring); None keeps full size; ``cap_from``:
    only videos whose longer side is at least this are capped."""
    warnings = warnings if warnings is not None else DataWarnings()
    out: dict[str, dict] = {}
    counts = {"videos": len(records), "extracted": 0, "cached": 0, "failed": 0, "frames_written": 0}
    start = time.perf_counter()
    for record in tqdm(records, desc="frame cache", unit="video", disable=None if log_progress else True,
                       leave=False):
        t0 = time.perf_counter()
        index, written, fresh = extract_video_counted(record, cache_dir, background_frames, seed, quality, warnings,
                                                       max_side, cap_from)
        counts["frames_written"] += written
        if index is None:
            counts["failed"] += 1
            continue
        out[record.video_id] = index
        if fresh:
            counts["extracted"] += 1
            if log_progress:
                log.info("%s: %s", record.video_id, describe_index(index, written, time.perf_counter() - t0))
        else:
            counts["cached"] += 1
    if stats is not None:
        stats.update(counts, seconds=time.perf_counter() - start)
    return out


def describe_index(index: dict, written: int, seconds: float) -> str:
    return (f"{index['num_frames']} frames decoded ({index['width']}x{index['height']} @ {index['fps']:.2f} fps), "
            f"{written} written ({len(index['frames'])} annotated + {len(index['background'])} background) "
            f"in {seconds:.1f} s")
