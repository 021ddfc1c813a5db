"""Reference-based detection (``src.models.refdet``) speed: the support cache, and frame extraction vs seeking.

This script measures, in one run, two things about the drone-video detector's training:

1. Support cache. A training step (``zero_grad``, forward ``model(images, support, query_video,
   support_keys)``, ``RefDetCriterion`` loss, backward, ``clip_grad_norm_`` at ``--clip-grad``,
   ``AdamW`` step on ``src.training.optim.param_groups``: what ``src.training.loop`` does per step
   without AMP or accumulation) of a model whose ``support_cache`` is a :class:`SupportCache`
   (``--support-cache-mb``) vs the same model with ``support_cache = None``. The two models are one
   ``build_refdet_model(support_size=--support-size, freeze_dino_layers=F)`` (random init, seed
   ``--seed``; no pretrained weights offline, and the cost does not depend on them) and its
   ``copy.deepcopy``, each with its own AdamW. The episodes are real ones: the demo set
   (``ensure_demo_refdet(--demo-dir)``, its training videos from ``splits.txt``) or ``--data-root``,
   their frame cache built by ``ensure_frame_cache`` in a temporary folder, items of
   ``RefDetFrames(image_size=--image-size, support_size=--support-size, augment_views=--support-views,
   augment=True)`` dealt by ``EpisodeSampler(--n-way, --n-query, --n-background, --n-episodes)`` and
   ``collate_episode``: all ``--n-episodes`` episodes are collated before anything is timed (data
   loading is not timed), and both models step through the same list in the same order. With
   ``--support-views 1`` every video has one support key ``"video_id@0"``, so keys repeat across
   episodes as they do within a training run. Before timing, the script checks that the cache changes
   nothing but the cost: on the first episode, with the cache cold (miss path) and again after
   warm-up (hit path), the two models' losses must agree within ``--rtol`` and their parameter
   gradients within ``10 * --rtol`` of the largest gradient (the differences are printed). The cache
   is then warmed up by one pass of ``encode_support`` over every episode's support keys, and its
   hit/miss counts are reset right before the timed steps, so the hit rate shown is that of the
   timed steps. A second round-robin times the support encoder alone, ``encode_support(support,
   support_keys)`` on each model (train mode, autograd on as in the step, forward only), so the table
   shows where the saving comes from. ``--freeze-dino-layers`` takes one or more values (12 = all
   DINO blocks frozen, stage 1 and the demo; 6 = the last 6 train, stages 2-3), one row each.
2. Frame extraction. Our pipeline decodes each video once, sequentially, into a JPEG frame cache
   (``extract_video``) and trains from the JPEGs; the seed read every training sample by seeking in
   the video (``seek_read_frames``: seek to the keyframe at or before the frame, decode forward to
   it), every epoch. Per video, three things are timed:
   (a) ``extract_video`` into a fresh, empty folder: one sequential decode of every frame; the
       annotated frames and a seeded reservoir of background frames JPEG-encoded at ``--quality``
       and written, plus ``index.json`` (atomically, with an fsync). Our one-time cost.
   (b) ``seek_read_frames`` of exactly the frames (a) wrote, in a seeded shuffled order (as a
       training sampler requests them), ``SEEK_CHUNK`` frames per call, decode to RGB only (the
       seed's reads produce frames, not files). The seed's cost, every epoch. Its LRU of 500 decoded
       frames is not modelled: over a real training set an epoch requests far more distinct frames.
   (c) those JPEGs read back in the same shuffled order with ``load_rgb`` (what ``RefDetFrames``
       uses), from the OS file cache (they were just written). Our cost per epoch.
   Reported: seconds and wanted frames/s of each, (b)/(a) = one seek-per-frame epoch vs our one-time
   extraction, (b)/(c) = per-epoch frame reading, seek per frame vs our cache, and the break-even:
   the fewest epochs E with (a) + E x (c) < E x (b) (usually 1). Why the ratios depend on the GOP
   (keyframe interval) and the resolution: a seek lands on the previous keyframe, so (b) decodes on
   average about GOP/2 extra frames per wanted frame (the table shows the mean of wanted - keyframe
   + 1), while (a) decodes each video frame once (video frames / wanted frames per wanted frame, about
   2 here) but pays a JPEG encode per wanted frame and (c) a JPEG decode. (b)/(a) and (b)/(c) therefore
   grow about linearly with the GOP; H.264 decoding and JPEG coding both scale with the pixel count,
   so the resolution matters less, except that at tiny sizes the fixed costs per seek (decoder flush,
   refilling FFmpeg's frame threads, container seek) and per file weigh more. Two tables:
   - synthetic drone-like videos written into a temporary folder (removed at the end): libx264,
     yuv420p, 25 fps, ``--x264-preset``, crf 23, a keyframe exactly every GOP frames (no scene-cut
     keyframes), one video per ``--gops`` value (250 = x264's default keyint), ``--video-size`` and
     ``--video-frames``; content: a crop panning ``PAN_PX`` px per frame over a seeded ground-like
     noise texture (real motion for the encoder); ``--annotated-fraction`` of the frames annotated
     in 2 contiguous segments at seeded places, + ``--background-frames`` (default 20) background
     frames from ``extract_video``'s reservoir. Records are ``VideoRecord`` as annotations give them.
   - the training videos (``--videos`` limits them to the first N by id; the demo's are 384x224,
     105-120 frames, GOP 50: small and short, so fixed costs weigh more).
   Before timing, per video: one untimed (a) gets the frame list (seeded, the same in every call),
   writes the JPEGs (c) reads and brings the video into the OS file cache; then a few wanted frames
   from (b) must equal sequential decoding (``iter_video_frames``) bit for bit, and (a)'s JPEGs of
   them must decode to within JPEG error (mean absolute difference < 3 of 255). Every timed (a) must
   write the same frame list and every (b) return every frame. Then (a, b, c) and (c, b, a)
   alternate (by rep and video) until each ran ``--extract-reps`` times and ``--min-time`` seconds
   passed for that video (at most ``--max-reps``); (a)'s empty folders are made and removed outside
   the timed calls. s = fastest call. Decoding uses PyAV with ``thread_type = "AUTO"`` in (a) and
   (b): FFmpeg picks its own thread count, which ``--threads`` / ``OMP_NUM_THREADS`` do not set;
   Pillow's JPEG encoding and decoding use one thread. The section prints its own header (machine,
   versions, command), so it pastes into docs/benchmarks.md as is.

Timing (section 1): after ``--warmup`` untimed calls of each function, the compared functions run
in round-robin (a, b, a, b, ...) until each ran ``--reps`` times and ``--min-time`` seconds passed
(at most ``--max-reps``), so a change in the load of a shared machine hits them alike
(``src.training.perf.round_robin``; on CUDA it synchronizes around every call). Figures: the fastest
call (the least disturbed) and the median; spread = (slowest - fastest) / fastest of N calls shows
the noise. Ratios are between figures of the same run. Every figure is measured in the run; nothing
is hard-coded. float32 throughout. Nothing is written inside the repository except what
``ensure_demo_refdet`` writes under ``--demo-dir``; frame caches and the synthetic videos go into temporary
folders that are removed at the end.

    python -m bench.refdet                                       # CPU, torch's default threads, demo data
    python -m bench.refdet --freeze-dino-layers 12 6 --skip extract
    python -m bench.refdet --skip cache                          # section 2 only: 1280x720 x 300 frames, GOP 25 50 250
    python -m bench.refdet --skip cache --video-size 1920 1080 --gops 50 250
    python -m bench.refdet --data-root datasets/train --videos 4 --background-frames 20
    OMP_NUM_THREADS=1 python -m bench.refdet --quick --threads 1  # smoke test: tiny sizes, 2 reps (section 2: 1)
"""
from __future__ import annotations

import argparse
import copy
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time
from fractions import Fraction

import av
import numpy as np
import PIL
import PIL.features
from PIL import Image
import timm
import torch
from torch import nn

from bench.timing import (alternating_rounds, command_line, device_name, fastest, median, ms, ratio,
                          round_robin_args, spread)
from src.errors import DataError
from src.data.aeroeyes import VideoRecord, read_aeroeyes, split_videos
from src.data.demo_refdet import ensure_demo_refdet
from src.data.frames import ensure_frame_cache, extract_video, iter_video_frames, seek_read_frames
from src.data.images import load_rgb
from src.data.loading import DataWarnings
from src.data.refdet import EpisodeSampler, RefDetFrames, collate_episode
from src.losses.refdet import RefDetCriterion
from src.models.refdet import RefDetModel, SupportCache, build_refdet_model
from src.training import distributed as D
from src.training.optim import param_groups
from src.training.perf import sync

DEMO_SUPPORT_SIZE = 64   # what train_yolov8n_refdet.py --demo trains at (DEMO_DEFAULTS), stated in the table


# ----------------------------------------------------------------------------- data

def training_records(args, warnings: DataWarnings) -> tuple[list[VideoRecord], str]:
    """(training videos, sorted by id, the first ``--videos``; a description of the source)."""
    if args.data_root:
        records = read_aeroeyes(args.data_root, args.annotations, warnings)
        train, _ = split_videos(records, None, None, args.seed)
        source = f"`{args.data_root}` (all {len(train)} videos)"
    else:
        root = ensure_demo_refdet(args.demo_dir)
        records = read_aeroeyes(root, None, warnings)
        train, _ = split_videos(records, None, os.path.join(root, "splits.txt"), args.seed)
        source = f"demo set `{args.demo_dir}` ({len(train)} training videos)"
    if args.videos and len(train) > args.videos:
        train = train[:args.videos]
        source += f", first {args.videos} by id"
    if not train:
        raise DataError("no training video")
    return train, source


def make_episodes(records: list[VideoRecord], cache_dir: str, args, device: torch.device) -> tuple[list[dict], dict]:
    """Collated episodes on ``device`` (all of them, before any timing) and facts about them."""
    indexes = ensure_frame_cache(records, cache_dir, args.background_frames, args.seed, DataWarnings(),
                                 log_progress=False)
    frames = RefDetFrames([r for r in records if r.video_id in indexes], indexes, args.image_size,
                          args.support_size, args.support_views, augment=True)
    sampler = EpisodeSampler(frames, args.n_way, args.n_query, args.n_background, args.n_episodes,
                             args.support_views, seed=args.seed)
    torch.manual_seed(args.seed)                 # the augmentation draws: the same episodes every run
    episodes = []
    for items in sampler:
        batch = collate_episode([frames[it] for it in items])
        if "images" not in batch:
            continue
        episodes.append({k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()})
    if not episodes:
        raise DataError("no usable episode (every frame unreadable?)")
    sizes = sorted({int(e["images"].shape[0]) for e in episodes})
    facts = {"frames": "-".join(map(str, (sizes[0], sizes[-1]) if len(sizes) > 1 else sizes)),
             "videos": sampler.n_way, "refs": int(episodes[0]["support"].shape[1]),
             "keys": len({k for e in episodes for k in e["support_keys"]}), "n": len(episodes),
             "train_videos": len(frames.records)}
    return episodes, facts


# ----------------------------------------------------------------------------- 1. support cache

class Trainer:
    """One model + AdamW; ``step()`` trains on the next episode of the shared list."""

    def __init__(self, model: RefDetModel, criterion: RefDetCriterion, episodes: list[dict], args) -> None:
        self.model, self.criterion, self.episodes, self.args = model, criterion, episodes, args
        self.optimizer = torch.optim.AdamW(param_groups(model, args.lr, args.lr, args.weight_decay))
        self.i = 0

    def loss(self, batch: dict) -> torch.Tensor:
        out = self.model(batch["images"], batch["support"], batch["query_video"], batch["support_keys"])
        return self.criterion(out, batch["boxes"], batch["box_mask"], batch["query_video"])[0]

    def step(self) -> None:
        batch = self.episodes[self.i % len(self.episodes)]
        self.i += 1
        self.optimizer.zero_grad(set_to_none=True)
        self.loss(batch).backward()
        if self.args.clip_grad:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.args.clip_grad)
        self.optimizer.step()

    def encode(self) -> None:
        batch = self.episodes[self.i % len(self.episodes)]
        self.i += 1
        self.model.encode_support(batch["support"], batch["support_keys"])

    def grads(self, batch: dict) -> tuple[float, list[torch.Tensor]]:
        """(loss, gradients of the trainable parameters) on ``batch``, no optimizer step."""
        self.model.zero_grad(set_to_none=True)
        loss = self.loss(batch)
        loss.backward()
        grads = [p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p)
                 for p in self.model.parameters() if p.requires_grad]
        self.model.zero_grad(set_to_none=True)
        return float(loss.detach()), grads


def check_same(cached: Trainer, plain: Trainer, batch: dict, rtol: float, what: str) -> tuple[float, float]:
    """(relative loss difference, largest gradient difference / largest gradient); raises if too big."""
    l1, g1 = cached.grads(batch)
    l2, g2 = plain.grads(batch)
    dl = abs(l1 - l2) / max(abs(l2), 1e-12)
    scale = max(float(g.abs().max()) for g in g2) or 1.0
    dg = max(float((a - b).abs().max()) for a, b in zip(g1, g2)) / scale
    if not (dl <= rtol and dg <= 10 * rtol):
        raise AssertionError(f"{what}: the support cache changes the result: loss {l1:.6g} vs {l2:.6g} "
                             f"(relative {dl:.2g}), largest gradient difference {dg:.2g} of the largest gradient")
    return dl, dg


def bench_cache(args, device: torch.device, dev_name: str, records: list[VideoRecord], source: str) -> None:
    rows, notes = [], []
    with tempfile.TemporaryDirectory(prefix="refdet_bench_cache_") as tmp:
        t0 = time.perf_counter()
        episodes, facts = make_episodes(records, tmp, args, device)
        print(f"  {facts['n']} episodes ready in {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    criterion = RefDetCriterion().to(device)
    for freeze in args.freeze_dino_layers:
        torch.manual_seed(args.seed)
        try:
            base = build_refdet_model(support_size=args.support_size, freeze_dino_layers=freeze).to(device).train()
        except ValueError as exc:
            raise DataError(f"--freeze-dino-layers {freeze}: {exc}") from None
        depth = base.support_encoder.depth
        plain_model = copy.deepcopy(base)
        plain_model.support_cache = None
        base.support_cache = cache = SupportCache(args.support_cache_mb)
        cached, plain = Trainer(base, criterion, episodes, args), Trainer(plain_model, criterion, episodes, args)
        n_trainable = sum(p.numel() for p in base.parameters() if p.requires_grad)

        # the cache must change nothing but the cost: miss path (cold), then hit path (warm)
        diffs = [check_same(cached, plain, episodes[0], args.rtol, f"freeze {freeze}, cold cache")]
        with torch.no_grad():
            for batch in episodes:
                base.encode_support(batch["support"], batch["support_keys"])
        diffs.append(check_same(cached, plain, episodes[0], args.rtol, f"freeze {freeze}, warm cache"))
        enc_ = base.support_encoder
        entries = len(cache)           # each entry: K references x tokens x dim, float32
        cache_mb = entries * facts["refs"] * (enc_.grid[0] * enc_.grid[1] + enc_.num_prefix) * enc_.dim * 4 / 2 ** 20

        steps = round_robin_args({"cache": cached.step, "plain": plain.step}, device, args, before=cache.reset_counts)
        hits, misses = cache.reset_counts()
        enc = round_robin_args({"cache": cached.encode, "plain": plain.encode}, device, args)
        cache.reset_counts()
        sc, sp, ec, ep = ms(steps["cache"]), ms(steps["plain"]), ms(enc["cache"]), ms(enc["plain"])
        mc, mp = ms(steps["cache"], median), ms(steps["plain"], median)
        rate = hits / (hits + misses) if hits + misses else float("nan")
        rows.append(f"| {freeze} of {depth} ({depth - freeze} train) | {n_trainable / 1e6:.2f} M | "
                    f"{sc:.0f} / {mc:.0f} | {spread(steps['cache'])} | "
                    f"{sp:.0f} / {mp:.0f} | {spread(steps['plain'])} | "
                    f"**{ratio(sp, sc)}** / {ratio(mp, mc)} | {sp - sc:.0f} | "
                    f"{ec:.1f} | {ep:.1f} | {ep - ec:.1f} | {100 * rate:.1f}% ({hits}/{hits + misses}) | "
                    f"{entries} keys, {cache_mb:.1f} MB |")
        notes.append(f"freeze {freeze}: loss differs by {max(d[0] for d in diffs):.1e} (relative), gradients by "
                     f"{max(d[1] for d in diffs):.1e} of the largest gradient")
        print(f"  cache, freeze {freeze} measured", file=sys.stderr, flush=True)
        del base, plain_model, cached, plain, cache
    print(f"## 1. Support cache: training step with vs without ({dev_name}, float32, episodes of "
          f"{facts['videos']} videos x ({args.n_query} + {args.n_background} frames) = {facts['frames']} query "
          f"frames at {args.image_size} px, support {facts['videos']} x {facts['refs']} reference images at "
          f"{args.support_size} px)\n")
    real = "the real training size" if args.support_size == 224 else "not the real 224"
    print(f"Data: {source}; {facts['n']} episodes collated before timing ({facts['keys']} distinct support keys, "
          f"`--support-views {args.support_views}`), both models step through them in the same order. Support "
          f"size {args.support_size} px ({real}; the `--demo` recipe trains at {DEMO_SUPPORT_SIZE}). "
          f"`vit_small_patch16_dinov3`, random init. Step = zero_grad + forward + `RefDetCriterion()` + backward + "
          f"clip_grad_norm_({args.clip_grad:g}) + AdamW step; the models start with identical weights (deepcopy), "
          f"checked to give the same loss and gradients with the cache cold and warm ("
          + "; ".join(notes) + "). The cache is warmed by one pass over the episodes' keys; hit rate = during the "
          "timed steps. ms = fastest / median call; ratio = no cache / cache (fastest / median); encoder = "
          "`encode_support` alone (train mode, autograd on, forward only).\n")
    print("| frozen DINO blocks | trainable params | cache ms/step | spread | no cache ms/step | spread | "
          "no cache / cache | saved ms/step | encoder ms, cache | encoder ms, no cache | encoder saved ms | "
          "hit rate (timed steps) | cache content |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows) + "\n", flush=True)


# ----------------------------------------------------------------------------- 2. frame extraction

SEEK_CHUNK = 32          # frames per seek_read_frames call in (b): bounds the decoded images held at once
PAN_PX = (3, 1)          # synthetic videos: texture crop moves (x, y) px per frame
X264 = {"crf": "23", "sc_threshold": "0"}   # x264's default quality; no scene-cut keyframes: the GOP is exact


def video_facts(path: str) -> dict:
    """Codec, size, frame rate, packets and keyframe indices (by demuxing: no decoding), file size."""
    with av.open(path) as container:
        stream = container.streams.video[0]
        codec, w, h = stream.codec_context.name, stream.codec_context.width, stream.codec_context.height
        fps = Fraction(stream.average_rate or stream.guessed_rate)
        tb, start = Fraction(stream.time_base), stream.start_time or 0
        packets, keys = 0, []
        for packet in container.demux(stream):
            if packet.size:
                packets += 1
                if packet.is_keyframe and packet.pts is not None:
                    keys.append(round((packet.pts - start) * tb * fps))
    return {"codec": codec, "size": f"{w}x{h}", "packets": packets, "keyframes": sorted(keys),
            "fps": float(fps), "mb": os.path.getsize(path) / 2 ** 20}


def texture(width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    """A ground-like RGB texture (uint8, height x width x 3) seen from above: fields blending green,
    brown soil and grey, their colour from coarse smoothed noise, their brightness from octaves of
    smoothed noise down to a faint pixel grain; numpy + PIL resizes only (well under a second at 720p)."""
    def octave(cell: int, channels: int = 1) -> np.ndarray:
        small = rng.integers(0, 256, (height // cell + 2, width // cell + 2, channels), dtype=np.uint8)
        big = Image.fromarray(small[..., 0] if channels == 1 else small).resize(
            (small.shape[1] * cell, small.shape[0] * cell), Image.BICUBIC)
        arr = np.asarray(big, dtype=np.float32)[:height, :width] / 255.0
        return arr[..., None] if channels == 1 else arr
    mix = octave(192, 2)
    green, soil, grey = (np.array(c, dtype=np.float32) for c in ((80, 115, 55), (135, 105, 75), (145, 145, 140)))
    colour = green + (soil - green) * mix[..., :1]
    colour += (grey - colour) * mix[..., 1:] ** 3
    light = sum(w * (octave(c) - 0.5) for c, w in ((96, 0.7), (24, 0.45), (6, 0.25), (1, 0.05)))
    return np.clip(colour * (1.0 + light), 0, 255).astype(np.uint8)


def write_synthetic(path: str, width: int, height: int, n_frames: int, gop: int, preset: str,
                    ground: np.ndarray) -> None:
    """libx264 (yuv420p, 25 fps, keyframe every ``gop`` frames) of a crop of ``ground`` panning
    ``PAN_PX`` px per frame."""
    with av.open(path, "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {**X264, "preset": preset, "g": str(gop), "keyint_min": str(gop)}
        for i in range(n_frames):
            x, y = i * PAN_PX[0], i * PAN_PX[1]
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(ground[y:y + height, x:x + width]),
                                               format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def synthetic_boxes(width: int, height: int, n_frames: int, fraction: float, rng: random.Random) -> dict:
    """Boxes on ``fraction`` of the frames, in 2 contiguous segments at seeded places (a target seen
    twice), a box crossing the frame; the rest is left to ``extract_video``'s background sampling."""
    n_ann = min(n_frames - 1, max(2, round(fraction * n_frames)))
    s1 = n_ann // 2
    free = n_frames - n_ann                  # >= 1: at least one frame between the two segments
    c1, c2 = sorted(rng.randint(0, free - 1) for _ in range(2))
    first, second = c1, c1 + s1 + 1 + (c2 - c1)
    frames = list(range(first, first + s1)) + list(range(second, second + n_ann - s1))
    bw, bh = max(8, width // 20), max(8, height // 15)
    return {f: [(x1, 0.45 * height, x1 + bw, 0.45 * height + bh)]
            for f in frames for x1 in [(width - bw) * f / max(1, n_frames - 1)]}


def synthetic_records(args, tmp: str) -> list[VideoRecord]:
    width, height = args.video_size
    pan = (PAN_PX[0] * (args.video_frames - 1), PAN_PX[1] * (args.video_frames - 1))
    t0 = time.perf_counter()
    ground = texture(width + pan[0], height + pan[1], np.random.default_rng(args.seed))
    records = []
    for gop in args.gops:
        vid = f"pan_{width}x{height}_{args.video_frames}f_gop{gop}"
        path = os.path.join(tmp, f"{vid}.mp4")
        write_synthetic(path, width, height, args.video_frames, gop, args.x264_preset, ground)
        boxes = synthetic_boxes(width, height, args.video_frames, args.annotated_fraction,
                                random.Random(f"{args.seed}/{vid}"))
        records.append(VideoRecord(video_id=vid, video_path=path, reference_paths=[], boxes=boxes, root=tmp))
    print(f"  {len(records)} synthetic videos written in {time.perf_counter() - t0:.1f} s", file=sys.stderr,
          flush=True)
    return records


def seek_epoch(path: str, order: list[int]) -> int:
    """(b): the seed's reads of one epoch, in the sampler's order: seek + decode forward per frame."""
    got = 0
    for i in range(0, len(order), SEEK_CHUNK):
        got += len(seek_read_frames(path, order[i:i + SEEK_CHUNK]))
    return got


def cache_epoch(folder: str, order: list[int]) -> int:
    """(c): our reads of one epoch: each cached JPEG decoded to RGB by the loader RefDetFrames uses."""
    for frame in order:
        load_rgb(os.path.join(folder, f"{frame:06d}.jpg"))
    return len(order)


def check_frames(record: VideoRecord, frames: list[int], jpeg_dir: str, rng: random.Random) -> tuple[int, float]:
    """Before timing: a few wanted frames read by (b) must equal sequential decoding bit for bit, and
    the JPEGs of (a) must decode to within JPEG error of them. Returns (frames checked, largest mean
    absolute difference of a JPEG, 0-255)."""
    picks = sorted({frames[0], frames[-1], *rng.sample(frames, min(4, len(frames)))})
    seq = {}
    for i, image in iter_video_frames(record.video_path):
        if i in picks:
            seq[i] = np.asarray(image)
        if i >= picks[-1]:
            break
    order = picks[:]
    rng.shuffle(order)
    seeked = seek_read_frames(record.video_path, order)
    worst = 0.0
    for f in picks:
        if f not in seq or f not in seeked or not np.array_equal(np.asarray(seeked[f]), seq[f]):
            raise AssertionError(f"{record.video_id}: frame {f} from seek_read_frames differs from sequential decoding")
        jpeg = np.asarray(load_rgb(os.path.join(jpeg_dir, f"{f:06d}.jpg")), dtype=np.int16)
        diff = float(np.abs(jpeg - seq[f].astype(np.int16)).mean())
        if jpeg.shape != seq[f].shape or diff >= 3.0:
            raise AssertionError(f"{record.video_id}: cached JPEG of frame {f} is off by {diff:.2f} (mean abs, 0-255)")
        worst = max(worst, diff)
    return len(picks), worst


def break_even(a: float, b: float, c: float) -> str:
    """Fewest epochs E >= 1 with a + E*c < E*b (our one-time extraction + E cache epochs vs E seek epochs)."""
    return str(int(a // (b - c)) + 1) if b > c else "never"


def measure_videos(args, records: list[VideoRecord], background: int, tmp: str, v0: int) -> tuple[list[str], dict]:
    """Time (a), (b), (c) on each video; table rows and totals."""
    rows, tot = [], {"a": 0.0, "b": 0.0, "c": 0.0, "n": 0, "checked": 0, "jpeg_diff": 0.0, "e": []}
    for v, record in enumerate(records, start=v0):
        facts = video_facts(record.video_path)
        # untimed: the frame list (seeded), the JPEGs (c) reads, the video into the OS file cache
        first = os.path.join(tmp, "first")
        index = extract_video(record, first, background, args.seed, args.quality)
        if index is None:
            rows.append(f"| {record.video_id} | unreadable: skipped |" + " |" * 14)
            continue
        frames = sorted([int(f) for f in index["frames"]] + list(index["background"]))
        ref_dir = os.path.join(first, record.video_id)
        rng = random.Random(f"{args.seed}/{record.video_id}/order")
        order = frames[:]
        rng.shuffle(order)                   # as a training sampler requests them
        checked, diff = check_frames(record, frames, ref_dir, rng)
        tot["checked"] += checked
        tot["jpeg_diff"] = max(tot["jpeg_diff"], diff)
        jpeg_mb = sum(os.path.getsize(os.path.join(ref_dir, f"{f:06d}.jpg")) for f in frames) / 2 ** 20
        counter = [0]
        times: dict[str, list[float]] = {"a": [], "b": [], "c": []}

        def run_a() -> None:
            counter[0] += 1
            folder = os.path.join(tmp, f"run{counter[0]}")
            os.makedirs(folder)
            t0 = time.perf_counter()
            out = extract_video(record, folder, background, args.seed, args.quality)
            times["a"].append(time.perf_counter() - t0)
            if out is None or sorted([int(f) for f in out["frames"]] + list(out["background"])) != frames:
                raise AssertionError(f"{record.video_id}: extract_video wrote another frame list")
            shutil.rmtree(folder)

        def run_b() -> None:
            t0 = time.perf_counter()
            got = seek_epoch(record.video_path, order)
            times["b"].append(time.perf_counter() - t0)
            if got != len(frames):
                raise AssertionError(f"{record.video_id}: seek_read_frames found {got} of {len(frames)} frames")

        def run_c() -> None:
            t0 = time.perf_counter()
            cache_epoch(ref_dir, order)
            times["c"].append(time.perf_counter() - t0)

        fns = {"a": run_a, "b": run_b, "c": run_c}
        for _, key in alternating_rounds(("a", "b", "c"), args.extract_reps, args.min_time, args.max_reps,
                                         reverse_first=v % 2 == 1):
            fns[key]()
        shutil.rmtree(first)
        a, b, c = fastest(times["a"]), fastest(times["b"]), fastest(times["c"])
        n, n_frames = len(frames), index["num_frames"]
        tot["a"], tot["b"], tot["c"], tot["n"] = tot["a"] + a, tot["b"] + b, tot["c"] + c, tot["n"] + n
        keys = facts["keyframes"] or [0]
        # decoded per wanted frame: (a) the whole video once; (b) from the keyframe at or before it
        dec_b = statistics.mean(f - max(k for k in keys if k <= f) + 1 for f in frames)
        # keyframe interval: the usual distance between keyframes; one keyframe: longer than the video
        gop = (str(statistics.mode(k2 - k1 for k1, k2 in zip(keys, keys[1:]))) if len(keys) > 1
               else f">= {n_frames}")
        e = break_even(a, b, c)
        tot["e"].append(e)
        rows.append(f"| {record.video_id} | {facts['size']} {facts['codec']}, {facts['mb']:.1f} MB | {n_frames} | "
                    f"{gop} ({len(keys)}) | {n} ({len(index['frames'])} + {len(index['background'])}), "
                    f"{jpeg_mb:.1f} MB | {n_frames / n:.1f} / {dec_b:.1f} | {a:.3f} | {n / a:.0f} | {b:.3f} | "
                    f"{n / b:.0f} | {c:.3f} | {n / c:.0f} | **{ratio(b, a)}** | **{ratio(b, c)}** | {e} | "
                    f"{spread(times['a'], with_count=False)} / {spread(times['b'], with_count=False)} / "
                    f"{spread(times['c'])} |")
        print(f"  extract, {record.video_id} measured", file=sys.stderr, flush=True)
    return rows, tot


def print_extract_table(title: str, note: str, rows: list[str], tot: dict) -> None:
    print(f"### {title}\n")
    print(note + "\n")
    print("| video | size | frames | GOP (keyframes) | wanted frames (annotated + background), JPEGs | "
          "decoded per wanted frame (a) / (b) | (a) extract s | (a) frames/s | (b) seek per frame s | "
          "(b) frames/s | (c) cache s | (c) frames/s | (b)/(a) | (b)/(c) | break-even epochs | spread a / b / c |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    if tot["a"] > 0:
        a, b, c, n = tot["a"], tot["b"], tot["c"], tot["n"]
        print(f"| **total** | | | | {n} | | {a:.3f} | {n / a:.0f} | {b:.3f} | {n / b:.0f} | {c:.3f} | "
              f"{n / c:.0f} | **{ratio(b, a)}** | **{ratio(b, c)}** | {break_even(a, b, c)} | |")
        per_video = sorted(set(tot["e"]), key=lambda e: (e == "never", int(e) if e != "never" else 0))
        e = break_even(a, b, c)
        print(f"\nBreak-even: our total (a) + E x (c) is below seek-per-frame's E x (b) from epoch E = {e} on the "
              f"total (" + (f"{per_video[0]} for every video" if len(per_video) == 1
                            else f"{' to '.join((per_video[0], per_video[-1]))} by video") + "): "
              + ("the one-time extraction is paid back within the first epoch." if e == "1"
                 else "the seed's reading never catches up." if e == "never"
                 else f"the one-time extraction is paid back by epoch {e}."))
    print(flush=True)


def bench_extract(args, records: list[VideoRecord], source: str) -> None:
    width, height = args.video_size
    synth_bg = args.synthetic_background
    with tempfile.TemporaryDirectory(prefix="refdet_bench_extract_") as tmp:
        synth = synthetic_records(args, tmp)
        rows_s, tot_s = measure_videos(args, synth, synth_bg, tmp, 0)
        rows_d, tot_d = measure_videos(args, records, args.background_frames, tmp, len(synth))
    jpeg_ver = PIL.features.version("jpg") or "?"
    turbo = " (libjpeg-turbo)" if PIL.features.check_feature("libjpeg_turbo") else ""
    print("## 2. Frame extraction: decode once into a JPEG cache (`extract_video`) vs seek per frame "
          "(`seek_read_frames`, the seed's method)\n")
    try:
        ram = f", {os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2 ** 30:.0f} GiB RAM"
    except (ValueError, OSError, AttributeError):
        ram = ""
    print(f"Machine: {cpu_name()}, {os.cpu_count()} logical CPUs{ram}; PyAV {av.__version__} (FFmpeg libavcodec "
          f"{'.'.join(map(str, av.library_versions.get('libavcodec', ())))}), Pillow {PIL.__version__} "
          f"(libjpeg {jpeg_ver}{turbo}), numpy {np.__version__}, Python {platform.python_version()}. Command: "
          f"{command_line(__spec__.name)}"
          + ("; QUICK smoke-test sizes, not for the docs" if args.quick else "") + ".\n")
    print(f"Per video: (a) = `extract_video` into an empty folder, the one-time cost of our pipeline: one sequential "
          f"decode of every frame, the annotated frames + a seeded reservoir of background frames JPEG-encoded "
          f"(quality {args.quality}) and written, `index.json` (atomic, with fsync). (b) = `seek_read_frames` of exactly the frames (a) "
          f"wrote, in a seeded shuffled order as a training sampler requests them, decode to RGB only (no file "
          f"written; {SEEK_CHUNK} frames per call): the seed's cost, every epoch (its LRU of 500 decoded frames is "
          f"not modelled: over a real training set an epoch requests far more than 500 distinct frames). (c) = "
          f"those JPEGs read back with `load_rgb` (what `RefDetFrames` uses) in the same order, from the OS file "
          f"cache: our cost per epoch. Checked before timing: {tot_s['checked'] + tot_d['checked']} frames from (b) "
          f"equal sequential decoding bit for bit, and (a)'s JPEGs of them differ by at most "
          f"{max(tot_s['jpeg_diff'], tot_d['jpeg_diff']):.2f} (mean abs, 0-255). s = fastest call of >= "
          f"{args.extract_reps} (>= {args.min_time:g} s per video, <= {args.max_reps}), (a, b, c) and (c, b, a) "
          f"alternating by rep and video; frames/s = wanted frames / s; decoded per wanted frame = video frames "
          f"/ wanted for (a), mean of (wanted - keyframe before it + 1) for (b); break-even = fewest epochs E with "
          f"(a) + E x (c) < E x (b). (b)/(a) = one seek-per-frame epoch vs our one-time extraction; (b)/(c) = "
          f"per-epoch frame reading, seek per frame vs our cache. Decoding: PyAV `thread_type = \"AUTO\"` in (a) "
          f"and (b) (FFmpeg picks its thread count); JPEG encoding and decoding: Pillow, one thread.\n")
    print_extract_table(
        f"Synthetic drone-like videos ({width}x{height}, {args.video_frames} frames, 25 fps)",
        f"Generated in a temporary folder: libx264 (preset {args.x264_preset}, crf {X264['crf']}, yuv420p, "
        f"B-frames as the preset sets, no scene-cut keyframes) of a crop panning {PAN_PX[0]} px right and "
        f"{PAN_PX[1]} px down per frame over a seeded noise texture; {100 * args.annotated_fraction:g}% of the "
        f"frames annotated in 2 contiguous segments at seeded places + {synth_bg} background frames "
        f"(`extract_video`'s reservoir). GOP 250 = x264's default keyint.", rows_s, tot_s)
    print_extract_table(
        f"Training videos: {source}",
        f"{args.background_frames} background frames per video.", rows_d, tot_d)


# ----------------------------------------------------------------------------- main

def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog=f"python -m {__spec__.name}", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N, auto (section 1; decoding is on the CPU)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--demo-dir", default="data/demo/refdet", help="demo set (generated there if missing)")
    p.add_argument("--data-root", default=None, help="a real AeroEyes set instead of the demo (all videos are used)")
    p.add_argument("--annotations", default=None, help="annotations.json of --data-root (default ROOT/annotations/...)")
    p.add_argument("--videos", type=int, default=0, help="use only the first N training videos by id (0 = all)")
    p.add_argument("--background-frames", type=int, default=None,
                   help="background frames per video (default: 12 for the demo, 20 otherwise, as the training "
                        "script; 20 for the synthetic videos of section 2)")
    p.add_argument("--quality", type=int, default=90, help="JPEG quality (extract_video's default)")
    p.add_argument("--video-size", type=int, nargs=2, default=[1280, 720], metavar=("W", "H"),
                   help="section 2: synthetic videos' frame size (even)")
    p.add_argument("--video-frames", type=int, default=300, help="section 2: synthetic videos' length (25 fps)")
    p.add_argument("--gops", type=int, nargs="+", default=[25, 50, 250],
                   help="section 2: one synthetic video per keyframe interval (250 = x264's default)")
    p.add_argument("--annotated-fraction", type=float, default=0.5,
                   help="section 2: share of a synthetic video's frames annotated (2 contiguous segments)")
    p.add_argument("--x264-preset", default="medium",
                   choices=["ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower",
                            "veryslow"],
                   help="section 2: libx264 preset of the synthetic videos (medium = x264's default)")
    p.add_argument("--extract-reps", type=int, default=3,
                   help="section 2: timed calls per method and video, at least (--min-time, --max-reps apply)")
    p.add_argument("--image-size", type=int, default=256, help="query frame side (multiple of 32)")
    p.add_argument("--support-size", type=int, default=224,
                   help=f"reference image side (224 = real training; the demo trains at {DEMO_SUPPORT_SIZE})")
    p.add_argument("--support-views", type=int, default=1, help="support views per video (1: keys repeat)")
    p.add_argument("--freeze-dino-layers", type=int, nargs="+", default=[12],
                   help="frozen (cached) DINO blocks, one table row each (12 = all, 6 = stage 2)")
    p.add_argument("--support-cache-mb", type=float, default=200.0, help="SupportCache size")
    p.add_argument("--n-way", type=int, default=2)
    p.add_argument("--n-query", type=int, default=4)
    p.add_argument("--n-background", type=int, default=2)
    p.add_argument("--n-episodes", type=int, default=16, help="episodes collated and cycled through")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--clip-grad", type=float, default=10.0, help="0 = no clipping")
    p.add_argument("--rtol", type=float, default=1e-4, help="cache vs no cache: loss tolerance (gradients: 10x)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--warmup", type=int, default=1, help="untimed calls per function before timing (section 1)")
    p.add_argument("--reps", type=int, default=5, help="timed calls per function, at least")
    p.add_argument("--max-reps", type=int, default=30, help="timed calls per function, at most")
    p.add_argument("--min-time", type=float, default=5.0, help="seconds each round-robin (per video) runs, at least")
    p.add_argument("--skip", nargs="*", choices=["cache", "extract"], default=[], help="sections to leave out")
    p.add_argument("--quick", action="store_true",
                   help="smoke test: 2 videos, 4 episodes, query frames 64 px, support 32 px, 2 reps, no minimum "
                        "time; section 2: one 320x192 60-frame synthetic video per GOP 25 and 250, 1 rep")
    args = p.parse_args(argv)
    if args.quick:
        args.videos, args.n_episodes, args.image_size, args.support_size = 2, 4, 64, 32
        args.reps, args.max_reps, args.min_time = 2, 2, 0.0
        args.video_size, args.video_frames, args.gops, args.extract_reps = [320, 192], 60, [25, 250], 1
    args.gops = list(dict.fromkeys(args.gops))    # one video per distinct GOP
    args.synthetic_background = 20 if args.background_frames is None else args.background_frames
    if args.background_frames is None:
        args.background_frames = 20 if args.data_root else 12
    for flag in ("n_way", "n_query", "n_episodes", "support_views", "reps", "max_reps", "extract_reps"):
        if getattr(args, flag) < 1:
            p.error(f"--{flag.replace('_', '-')} must be >= 1")
    if args.n_background < 0 or args.background_frames < 0 or args.videos < 0 or args.warmup < 0:
        p.error("--n-background, --background-frames, --videos and --warmup must be >= 0")
    if args.image_size % 32 or args.image_size < 32:
        p.error("--image-size must be a positive multiple of 32")
    if args.support_size % 16 or args.support_size < 16:
        p.error("--support-size must be a positive multiple of 16 (the ViT patch)")
    if min(args.freeze_dino_layers) < 1:
        p.error("--freeze-dino-layers must be >= 1 (0 trains every block and bypasses the cache)")
    if args.support_cache_mb <= 0:
        p.error("--support-cache-mb must be > 0")
    if min(args.video_size) < 32 or any(x % 2 for x in args.video_size):
        p.error("--video-size must be even and >= 32 (yuv420p)")
    if args.video_frames < 10 or min(args.gops) < 1:
        p.error("--video-frames must be >= 10 and --gops >= 1")
    if not 0 < args.annotated_fraction < 1:
        p.error("--annotated-fraction must be in (0, 1)")
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        device = D.resolve_device(args.device)
        return run(args, device)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def run(args, device: torch.device) -> int:
    dev_name = device_name(device)
    print(f"# refdet: device {dev_name}; {cpu_name()}, {platform.machine()} {platform.system()}, "
          f"{os.cpu_count()} logical CPUs; torch {torch.__version__}, timm {timm.__version__}, PyAV {av.__version__} "
          f"(FFmpeg {'.'.join(map(str, av.library_versions.get('libavcodec', ())))} libavcodec), "
          f"Python {platform.python_version()}")
    print(f"command: {command_line(__spec__.name)}")
    print(f"float32; episodes of {args.n_way} videos x ({args.n_query} + {args.n_background}) query frames at "
          f"{args.image_size} px, {args.n_way} x 3 references at {args.support_size} px; timing: fastest (and median) "
          f"of >= {args.reps} calls per function (>= {args.min_time:g} s per round-robin, <= {args.max_reps}) after "
          f"{args.warmup} warm-up (section 1); spread = (slowest - fastest) / fastest of N calls"
          + ("; QUICK smoke-test sizes, not for the docs" if args.quick else "") + "\n", flush=True)
    warnings = DataWarnings()
    t0 = time.perf_counter()
    records, source = training_records(args, warnings)
    print(f"  data ready in {time.perf_counter() - t0:.1f} s ({len(records)} videos)", file=sys.stderr, flush=True)
    sections = {"cache": lambda: bench_cache(args, device, dev_name, records, source),
                "extract": lambda: bench_extract(args, records, source)}
    for name, fn in sections.items():
        if name in args.skip:
            print(f"## {name}: skipped (--skip)\n")
            continue
        t0 = time.perf_counter()
        fn()
        sync(device)
        print(f"  section {name} took {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    if warnings.counts():
        print(f"data warnings: {warnings.counts()}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
