"""Reference-based detection samples: episodic training batches from the frame cache, whole videos for
evaluation.

Training (frames from ``src.data.frames``' cache, never decoded from the mp4 here):

* :class:`RefDetFrames` items are (video, frame) pairs: every annotated frame and every cached
  background frame of each video. Geometry: the frame is letterboxed FIRST (longer side to
  ``image_size``, padded right/bottom with ``PAD_VALUE``), then augmented on the S x S canvas, so the
  cost of augmentation does not depend on the source resolution (drone frames are 1080p-4K). Boxes
  are xyxy in letterboxed pixels; ``original = letterboxed / scale``.
* Training augmentation (``transforms.v2`` on ``tv_tensors.BoundingBoxes``): horizontal and vertical
  flips (a top-down view has no "up"), ``RandomAffine`` scale 0.7-1.3 / translate 0.1 (fill
  ``PAD_VALUE``), ``ColorJitter`` 0.3/0.3/0.3 with hue 0.02 only (colour identifies the target).
  A box with less than half of its area left in view is dropped, then ``SanitizeBoundingBoxes``
  (min_size 2): a frame whose target is pushed out becomes a negative, never a sliver labelled target.
* Support: :func:`load_support` gives the video's K=3 reference photos (1-2 are repeated), each
  letterboxed to ``support_size``. View 0 is the plain photos; views 1..augment_views-1 are
  augmentations seeded by (video id, view, image index), so a support-feature cache keyed by
  ``"video_id@view"`` stays valid for the whole run.
* Episode-consistent colour swap (``permute_colours``): a video's frames and its references in one
  episode get the same RGB channel reorder (one of six, ``"video_id@viewcN"`` in the cache), so a
  red target becomes a green or blue one together with its photos. A small training set then cannot
  be learned as "these N objects are targets": which object is the target changes from episode to
  episode, and only comparing with the references tells (per-episode identity augmentation, as
  few-shot detectors vary the class set per episode).

Episode contract (:class:`EpisodeSampler` -> dataset -> :func:`collate_episode`):

* the sampler is a ``batch_sampler``; each batch is one episode, a list of :class:`EpisodeItem`
  ``(index, slot, view, support)``: ``n_way`` distinct videos, each with up to ``n_query`` annotated
  and ``n_background`` background frames, grouped by video. ``slot`` is the video's position in the
  episode, ``view`` its support view this episode, and ``support`` is True on the first item of each
  video;
* ``dataset[EpisodeItem]`` returns the frame item plus ``slot``, and, on the ``support`` item, the
  video's support tensor ``support`` (3, 3, s, s) and ``support_key`` ``"video_id@view"``: the three
  reference photos are decoded and augmented in the DataLoader worker, not in the main process;
* :func:`collate_episode` stacks the good items and the supports (see its docstring for the keys);
  ``query_video`` indexes the batch's support list.

Evaluation: :class:`VideoClips` decodes each video end to end (sequentially, once) and yields chunks
of consecutive frames with the plain support on the first chunk; :func:`video_truth` gives the
annotation boxes in original pixels.
"""
from __future__ import annotations

import logging
import math
import os
import zlib
from collections import OrderedDict
from typing import Any, Iterator, NamedTuple

import numpy as np
import torch
import torchvision.transforms.v2 as v2
import torchvision.transforms.v2.functional as TF
from torch.utils.data import Dataset, IterableDataset, Sampler, get_worker_info
from torchvision import tv_tensors

from src.data.aeroeyes import VideoRecord
from src.data.frames import BadVideo, VideoReader, frame_scale, frame_to_pil
from src.data.images import PAD_VALUE, BadImage, image_to_tensor, letterbox, load_rgb
from src.errors import DataError

log = logging.getLogger(__name__)

K_SUPPORT = 3
REFERENCE_DECODE_MIN = 1024   # reference photos larger than twice this are decoded at reduced scale
MIN_VISIBLE = 0.5        # share of a box's area that must stay in view after augmentation
# RGB channel orders for episode-consistent colour swaps (--permute-colours); 0 is the identity
COLOUR_PERMUTATIONS = ((0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0))


def reorder_channels(image: tv_tensors.Image, colour: int) -> tv_tensors.Image:
    """``image`` (3, H, W) with its RGB channels in order ``COLOUR_PERMUTATIONS[colour]`` (0: unchanged)."""
    if not colour:
        return image
    return tv_tensors.wrap(image[list(COLOUR_PERMUTATIONS[colour])], like=image)


def support_key(video_id: str, view: int, colour: int = 0) -> str:
    """Support-cache key of a video's references at ``view`` under colour permutation ``colour``."""
    return f"{video_id}@{view}" + (f"c{colour}" if colour else "")


class EpisodeItem(NamedTuple):
    """One element of an episode batch (what :class:`EpisodeSampler` yields, in lists)."""
    index: int       # item of RefDetFrames (a cached frame)
    slot: int        # position of its video in the episode's video list
    view: int        # support view of that video in this episode
    support: bool    # this item carries its video's support tensor (the video's first item)
    colour: int = 0  # index into COLOUR_PERMUTATIONS, applied to the frame AND the support (0 = none)


def _seed(*parts: Any) -> int:
    # crc32, not hash(): the same number in every process and every run
    return zlib.crc32("/".join(str(p) for p in parts).encode("utf-8"))


def load_support(record: VideoRecord, support_size: int, view: int = 0, augment_views: int = 1,
                 colour: int = 0) -> torch.Tensor:
    """(K=3, 3, s, s) float normalized reference photos of ``record``, letterboxed to ``support_size``.

    View 0: the plain photos. View v in 1..augment_views-1: each photo k gets a random resized crop
    (70-100% of the area, aspect kept within 0.85-1.18x), a horizontal flip (p 0.5), a rotation by
    0/90/180/270 degrees and a colour jitter, all drawn from a generator seeded by (video id, v, k):
    the same view is the same tensor in every worker, epoch and run. ``colour`` > 0 reorders the RGB
    channels (``COLOUR_PERMUTATIONS``) as the episode does to the video's frames. Raises :class:`BadImage`.
    """
    if not 0 <= view < max(1, augment_views):
        raise ValueError(f"support view {view} outside [0, {augment_views})")
    paths = [record.reference_paths[k % len(record.reference_paths)] for k in range(K_SUPPORT)]
    out = []
    for k, path in enumerate(paths):
        # a reference photo straight from a phone (8000 px) is decoded near the resolution it is used at
        image = TF.to_image(load_rgb(path, reduce_to=max(REFERENCE_DECODE_MIN, 4 * support_size)))
        if view > 0:
            # the global RNG is forked and reseeded so the draw is fixed and training randomness untouched
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(_seed(record.video_id, view, k))
                h, w = TF.get_size(image)
                aug = v2.Compose([
                    v2.RandomResizedCrop((h, w), scale=(0.7, 1.0), ratio=(0.85 * w / h, 1.18 * w / h), antialias=True),
                    v2.RandomHorizontalFlip(),
                    v2.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.3, hue=0.02),
                ])
                image = aug(image)
                turns = int(torch.randint(4, ()))
            image = tv_tensors.wrap(torch.rot90(image, turns, dims=(-2, -1)), like=image)
        image, _, _ = letterbox(reorder_channels(image, colour), None, support_size)
        out.append(image_to_tensor(image))
    return torch.stack(out)


def video_truth(record: VideoRecord) -> dict[int, list[list[float]]]:
    """``{frame: [[x1, y1, x2, y2], ...]}`` annotation boxes in original pixels (as annotated)."""
    return {f: [list(b) for b in boxes] for f, boxes in record.boxes.items()}


class RefDetFrames(Dataset):
    """Cached frames of ``records`` as training items (see the module docstring for the contract).

    ``indexes``: ``{video_id: index}`` from :func:`src.data.frames.ensure_frame_cache`
    (with ``"dir"``); records without an index are left out. ``dataset[i]`` (an int) is a frame item:
    ``image`` (3, S, S) float normalized, ``boxes`` (n, 4) xyxy letterboxed pixels (n may be 0),
    ``video`` (index into ``self.records``), ``frame``, ``key`` ``"video_id/frame"``, ``scale``; an
    unreadable JPEG gives ``{"bad": (key, reason)}``. ``dataset[EpisodeItem]`` adds ``slot`` and, on
    the support item, ``support`` / ``support_key`` (or ``support_bad`` when a photo fails).

    A cache stored at a capped size (``ensure_frame_cache(..., max_side=...)``) is read as it is: its
    boxes (original pixels) are scaled to the stored JPEG, and ``scale`` still maps original pixels to
    letterboxed ones. ``fast_decode`` (off by default): a JPEG at least twice ``image_size`` on its
    longer side is decoded at 1/2, 1/4 or 1/8 scale, never below ``image_size`` (1080p for 640: 960x540),
    then resized in PIL to ``image_size`` on its longer side (``load_rgb(fit=True)``), so the letterbox only pads.
    """

    def __init__(self, records: list[VideoRecord], indexes: dict[str, dict], image_size: int, support_size: int,
                 augment_views: int = 1, augment: bool = False, fast_decode: bool = False) -> None:
        self.decode_longer_side = image_size if fast_decode else None
        self.records = [r for r in records if r.video_id in indexes]
        self.indexes = indexes
        self.image_size, self.support_size = image_size, support_size
        self.augment_views, self.augment = max(1, augment_views), augment
        self.items: list[tuple[int, int]] = []
        self.video_items: list[tuple[list[int], list[int]]] = []   # per video: (annotated, background) items
        for v, record in enumerate(self.records):
            index = indexes[record.video_id]
            annotated = sorted(int(f) for f in index["frames"])
            background = sorted(int(f) for f in index["background"])
            start = len(self.items)
            self.items += [(v, f) for f in annotated] + [(v, f) for f in background]
            self.video_items.append((list(range(start, start + len(annotated))),
                                     list(range(start + len(annotated), len(self.items)))))
        self.geometric = v2.Compose([
            v2.RandomHorizontalFlip(), v2.RandomVerticalFlip(),
            v2.RandomAffine(degrees=0, translate=(0.1, 0.1), scale=(0.7, 1.3), fill=PAD_VALUE)])
        self.jitter = v2.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.3, hue=0.02)
        self.sanitize = v2.SanitizeBoundingBoxes(min_size=2, labels_getter=None)
        self._supports: OrderedDict[tuple[int, int, int], torch.Tensor] = OrderedDict()

    def __len__(self) -> int:
        return len(self.items)

    def frame_path(self, i: int) -> str:
        v, frame = self.items[i]
        return os.path.join(self.indexes[self.records[v].video_id]["dir"], f"{frame:06d}.jpg")

    def support(self, video: int, view: int, colour: int = 0) -> torch.Tensor:
        """Support tensor of ``self.records[video]`` at ``view`` / ``colour``, kept in a small per-worker LRU cache."""
        key = (video, view, colour)
        if key in self._supports:
            self._supports.move_to_end(key)
            return self._supports[key]
        tensor = load_support(self.records[video], self.support_size, view, self.augment_views, colour)
        self._supports[key] = tensor
        if len(self._supports) > 64:
            self._supports.popitem(last=False)
        return tensor

    def _augment(self, image: tv_tensors.Image, boxes: tv_tensors.BoundingBoxes):
        image, moved = self.geometric(image, boxes)
        clamped = TF.clamp_bounding_boxes(moved, clamping_mode="hard")
        full = (moved[:, 2] - moved[:, 0]) * (moved[:, 3] - moved[:, 1])
        kept = (clamped[:, 2] - clamped[:, 0]) * (clamped[:, 3] - clamped[:, 1])
        boxes = tv_tensors.wrap(clamped[kept >= MIN_VISIBLE * full.clamp(min=1e-6)], like=clamped)
        image, boxes = self.sanitize(image, boxes)
        return self.jitter(image), boxes

    def __getitem__(self, i: int | EpisodeItem) -> dict[str, Any]:
        episode = i if isinstance(i, EpisodeItem) else None
        i = episode.index if episode else int(i)
        v, frame = self.items[i]
        vid = self.records[v].video_id
        key = f"{vid}/{frame}"
        out: dict[str, Any]
        try:
            img = load_rgb(self.frame_path(i), longer_side=self.decode_longer_side, fit=True)
        except BadImage as exc:
            out = {"bad": (key, exc.reason)}
        else:
            index = self.indexes[vid]
            raw = torch.tensor(index["frames"].get(str(frame), []), dtype=torch.float32).reshape(-1, 4)
            # stored (capped cache) or decoded (fast_decode) pixels per original pixel; the exact
            # factor 1 of a full-size read leaves the boxes untouched, bit for bit
            stored = img.width / index["width"] if index.get("width") else frame_scale(index)
            if stored != 1.0:
                raw = raw * stored
            # clamping off until the augmentation has measured how much of each box left the view
            boxes = tv_tensors.BoundingBoxes(raw, format="XYXY", canvas_size=(img.height, img.width),
                                             clamping_mode=None)
            image, boxes, scale = letterbox(TF.to_image(img), boxes, self.image_size)
            scale *= stored
            if self.augment:
                image, boxes = self._augment(image, boxes)
            if episode is not None:
                image = reorder_channels(image, episode.colour)
            out = {"image": image_to_tensor(image), "boxes": boxes.as_subclass(torch.Tensor).float().reshape(-1, 4),
                   "video": v, "frame": frame, "key": key, "scale": scale}
        if episode is not None:
            out["slot"] = episode.slot
            if episode.support:
                try:
                    out["support"] = self.support(v, episode.view, episode.colour)
                    out["support_key"] = support_key(vid, episode.view, episode.colour)
                except BadImage as exc:
                    out["support_bad"] = (exc.path, exc.reason)
        return out


class EpisodeSampler(Sampler[list[EpisodeItem]]):
    """Episodic ``batch_sampler`` over :class:`RefDetFrames` (hand-written: no library has one).

    Each episode: ``n_way`` distinct videos (those with at least one annotated frame), each with
    ``n_query`` annotated + ``n_background`` background frames drawn without replacement (fewer if
    the video has fewer), a support view drawn uniformly in ``[0, augment_views)`` and, with
    ``permute_colours``, one of the six RGB channel orders for the video's frames and references
    alike. Videos are dealt from successive random permutations, so each video comes up about
    equally often. Seeded by
    ``(seed, epoch)`` (:meth:`set_epoch`), so a resumed run replays the same episodes. Under DDP the
    epoch's episodes (padded to a multiple of ``world_size``) are dealt round-robin to ranks; ``len``
    is this rank's count.
    """

    def __init__(self, dataset: RefDetFrames, n_way: int = 2, n_query: int = 4, n_background: int = 2,
                 n_episodes: int = 100, augment_views: int = 1, permute_colours: bool = False, seed: int = 0,
                 rank: int = 0, world_size: int = 1) -> None:
        self.video_items = dataset.video_items
        self.eligible = [v for v, (ann, _) in enumerate(self.video_items) if ann]
        if not self.eligible:
            raise DataError("no training video has an annotated frame in the frame cache (all missing, past the "
                            "video's end or outside the frame): nothing to train on")
        if n_way > len(self.eligible):
            log.warning("n_way %d > %d videos with annotated frames: using %d", n_way, len(self.eligible),
                        len(self.eligible))
        self.n_way = max(1, min(n_way, len(self.eligible)))
        self.n_query, self.n_background = n_query, n_background
        self.n_episodes, self.augment_views = n_episodes, max(1, augment_views)
        self.permute_colours = permute_colours
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def episodes(self) -> list[list[EpisodeItem]]:
        """This rank's episodes for the current epoch."""
        rng = np.random.default_rng([self.seed, self.epoch])
        total = math.ceil(self.n_episodes / self.world_size) * self.world_size
        queue: list[int] = []
        out = []
        for _ in range(total):
            videos: list[int] = []
            while len(videos) < self.n_way:
                # the next queued video not already in this episode; a repeat waits for the next episode
                j = next((j for j, v in enumerate(queue) if v not in videos), None)
                if j is None:
                    queue += [self.eligible[k] for k in rng.permutation(len(self.eligible))]
                    continue
                videos.append(queue.pop(j))
            episode = []
            for slot, v in enumerate(videos):
                ann, bg = self.video_items[v]
                chosen = [ann[j] for j in rng.choice(len(ann), min(self.n_query, len(ann)), replace=False)]
                if bg and self.n_background > 0:
                    chosen += [bg[j] for j in rng.choice(len(bg), min(self.n_background, len(bg)), replace=False)]
                view = int(rng.integers(self.augment_views))
                # drawn only when enabled, so runs without it replay the same episodes as before
                colour = int(rng.integers(len(COLOUR_PERMUTATIONS))) if self.permute_colours else 0
                episode += [EpisodeItem(int(i), slot, view, k == 0, colour) for k, i in enumerate(chosen)]
            out.append(episode)
        return out[self.rank::self.world_size]

    def __iter__(self) -> Iterator[list[EpisodeItem]]:
        return iter(self.episodes())

    def __len__(self) -> int:
        return math.ceil(self.n_episodes / self.world_size)


def collate_episode(items: list[dict[str, Any]]) -> dict[str, Any]:
    """One episode's items -> batch.

    Keys: ``images`` (B, 3, S, S); ``boxes`` (B, M, 4) xyxy letterboxed pixels, zero-padded, with
    ``box_mask`` (B, M) bool (M = max boxes in the batch, at least 1); ``query_video`` (B,) long, the
    row of ``support`` that belongs to each image; ``support`` (V, 3, 3, s, s); ``support_keys`` V
    strings ``"video_id@view"``; ``videos`` V video ids; ``keys`` B strings ``"video_id/frame"``;
    ``bad`` list of (key, reason). Bad items are dropped; a video whose support failed loses its
    items (its support item lists the failure in ``bad``). With no good item left the batch holds
    only ``bad``.
    """
    bad = [it["bad"] for it in items if "bad" in it] + [it["support_bad"] for it in items if "support_bad" in it]
    supports = {it["slot"]: it for it in items if "support" in it}
    good = [it for it in items if "bad" not in it and it.get("slot") in supports]
    if not good:
        return {"bad": bad}
    slots = sorted(supports)
    row = {slot: r for r, slot in enumerate(slots)}
    B = len(good)
    M = max(1, max(it["boxes"].shape[0] for it in good))
    boxes = torch.zeros(B, M, 4)
    mask = torch.zeros(B, M, dtype=torch.bool)
    for b, it in enumerate(good):
        n = it["boxes"].shape[0]
        boxes[b, :n] = it["boxes"]
        mask[b, :n] = True
    return {"images": torch.stack([it["image"] for it in good]), "boxes": boxes, "box_mask": mask,
            "query_video": torch.tensor([row[it["slot"]] for it in good], dtype=torch.long),
            "support": torch.stack([supports[s]["support"] for s in slots]),
            "support_keys": [supports[s]["support_key"] for s in slots],
            "videos": [supports[s]["support_key"].rsplit("@", 1)[0] for s in slots],
            "keys": [it["key"] for it in good], "bad": bad}


class VideoClips(IterableDataset):
    """Whole videos for evaluation/prediction, decoded sequentially once, in chunks of ``chunk`` frames.

    Use with ``DataLoader(clips, batch_size=None, num_workers=...)``. Videos are sharded by rank
    (``records[rank::world_size]``) and then by DataLoader worker; one video is always decoded by one
    worker, so its chunks arrive in order, but chunks of different videos may interleave when several
    workers run: group by ``video_id`` (``first``/``last`` mark a video's ends). Each chunk:
    ``video_id``; ``frames`` list of frame indices (every ``stride``-th frame); ``images`` (b, 3, S, S)
    letterboxed and normalized; ``scale`` (original pixels = letterboxed / scale); ``orig_size``
    (height, width); ``support`` (3, 3, s, s) plain view on the video's first chunk, else None;
    ``first``, ``last``; ``num_frames_total`` (frames in the video, all decoded ones, on the last chunk,
    else None) and ``truncated`` (the decoder error that ended the video early, or None). An unreadable
    video, or one whose reference photos fail, yields one ``{"bad": [(video_id, reason)]}`` (a batch
    with no usable sample, as the engine counts them).
    """

    def __init__(self, records: list[VideoRecord], image_size: int, support_size: int, chunk: int = 16,
                 stride: int = 1, rank: int = 0, world_size: int = 1) -> None:
        super().__init__()
        self.records, self.image_size, self.support_size = list(records), image_size, support_size
        self.chunk, self.stride = max(1, chunk), max(1, stride)
        self.rank, self.world_size = rank, world_size

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        for record in self.records[self.rank::self.world_size][worker::workers]:
            yield from self._video(record)

    def _chunk(self, record: VideoRecord, frames: list[int], images: list[torch.Tensor], scale: float,
               size: tuple[int, int], support: torch.Tensor | None) -> dict[str, Any]:
        return {"video_id": record.video_id, "frames": frames, "images": torch.stack(images), "scale": scale,
                "orig_size": size, "support": support, "first": support is not None, "last": False,
                "num_frames_total": None, "truncated": None}

    def _video(self, record: VideoRecord) -> Iterator[dict[str, Any]]:
        try:
            support: torch.Tensor | None = load_support(record, self.support_size)
        except BadImage as exc:
            yield {"bad": [(record.video_id, exc.reason)]}
            return
        reader = VideoReader(record.video_path)
        pending, frames, images, scale = None, [], [], 1.0
        try:
            for index, frame in reader.frames(self.stride):
                image, _, scale = letterbox(frame_to_pil(frame), None, self.image_size)
                frames.append(index)
                images.append(image_to_tensor(image))
                if len(frames) == self.chunk:
                    # one chunk of look-ahead, so the video's last chunk can be flagged as such
                    if pending is not None:
                        yield pending
                    pending = self._chunk(record, frames, images, scale, (reader.height, reader.width), support)
                    frames, images, support = [], [], None
        except BadVideo as exc:
            yield {"bad": [(record.video_id, exc.reason)]}
            return
        if frames:
            if pending is not None:
                yield pending
            pending = self._chunk(record, frames, images, scale, (reader.height, reader.width), support)
        pending.update(last=True, num_frames_total=reader.num_frames, truncated=reader.error)
        yield pending
