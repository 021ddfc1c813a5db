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
2. Frame extraction. For each training video (``--videos`` limits them to the first N by id):
   (a) ``extract_video`` into a fresh, empty temporary cache folder (one sequential decode of the
   whole video; the annotated frames and a seeded reservoir of ``--background-frames`` others
   JPEG-encoded at ``--quality`` and written, plus ``index.json``) vs (b) ``seek_read_frames`` of
   exactly the frames (a) wrote (the seed's method: a seek to the previous keyframe and a decode
   forward per wanted frame) + the same JPEG encoding and writing of each (PIL ``save`` at
   ``--quality`` into a buffer, then a file), into another fresh folder. Both produce the same files'
   worth of work; (a) also decodes every frame and encodes the reservoir's replaced candidates,
   which is its real cost. One untimed (a) first gets the frame list (it is seeded, the same in
   every call) and brings the video into the OS file cache for both. Then (a) and (b) alternate
   (a, b on even reps of even videos, b, a otherwise) until each ran ``--reps`` times and
   ``--min-time`` seconds passed for that video (at most ``--max-reps``); the empty folders are made
   and removed outside the timed calls. The table shows the fastest call of each per video and their
   sum, written JPEGs per second, (b)/(a), and how many of (b)'s JPEGs are byte-identical to (a)'s
   (the same decoded pixels). Decoding uses PyAV with ``thread_type = "AUTO"`` in both methods;
   FFmpeg picks its own thread count, which ``--threads`` / ``OMP_NUM_THREADS`` do not set.

Timing (section 1): after ``--warmup`` untimed calls of each function, the compared functions run
in round-robin (a, b, a, b, ...) until each ran ``--reps`` times and ``--min-time`` seconds passed
(at most ``--max-reps``), so a change in the load of a shared machine hits them alike
(``src.training.perf.round_robin``; on CUDA it synchronizes around every call). Figures: the fastest
call (the least disturbed) and the median; spread = (slowest - fastest) / fastest of N calls shows
the noise. Ratios are between figures of the same run. Every figure is measured in the run; nothing
is hard-coded. float32 throughout. Nothing is written inside the repository except what
``ensure_demo_refdet`` writes under ``--demo-dir``; frame caches go into temporary folders that are
removed at the end.

    python bench/refdet.py                                       # CPU, torch's default threads, demo data
    python bench/refdet.py --freeze-dino-layers 12 6 --skip extract
    python bench/refdet.py --data-root datasets/train --videos 4 --background-frames 20
    OMP_NUM_THREADS=1 python bench/refdet.py --quick --threads 1  # smoke test: tiny sizes, 2 reps
"""
from __future__ import annotations

import argparse
import copy
import io
import os
import platform
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import av  # noqa: E402
import timm  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from src.cli import DataError  # noqa: E402
from src.data.aeroeyes import VideoRecord, read_aeroeyes, split_videos  # noqa: E402
from src.data.demo_refdet import ensure_demo_refdet  # noqa: E402
from src.data.loading import DataWarnings  # noqa: E402
from src.data.refdet import EpisodeSampler, RefDetFrames, collate_episode  # noqa: E402
from src.losses.refdet import RefDetCriterion  # noqa: E402
from src.models.refdet import RefDetModel, SupportCache, build_refdet_model  # noqa: E402
from src.tools.extract_frames import ensure_frame_cache, extract_video, seek_read_frames  # noqa: E402
from src.training import distributed as D  # noqa: E402
from src.training.optim import param_groups  # noqa: E402
from src.training.perf import round_robin as perf_round_robin  # noqa: E402
from src.training.perf import sync  # noqa: E402

DEMO_SUPPORT_SIZE = 64   # what train_yolov8n_refdet.py --demo trains at (DEMO_DEFAULTS), stated in the table


# ----------------------------------------------------------------------------- timing helpers

def round_robin(fns: dict[str, Callable[[], object]], device: torch.device, args,
                before: Callable[[], None] | None = None) -> dict[str, list[float]]:
    """Seconds of each call of each function after ``args.warmup`` untimed calls each, in turn;
    ``before`` runs between the warm-up and the timed calls (untimed)."""
    for fn in fns.values():
        for _ in range(args.warmup):
            fn()
    if before is not None:
        before()
    return perf_round_robin(fns, device, args.reps, args.min_time, args.max_reps)


def ms(ts: list[float]) -> float:
    return 1e3 * min(ts)


def med(ts: list[float]) -> float:
    return 1e3 * statistics.median(ts)


def spread(ts: list[float]) -> str:
    return f"{100 * (max(ts) - min(ts)) / min(ts):.0f}% of {len(ts)}"


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b > 0 else "n/a"


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

        steps = round_robin({"cache": cached.step, "plain": plain.step}, device, args, before=cache.reset_counts)
        hits, misses = cache.reset_counts()
        enc = round_robin({"cache": cached.encode, "plain": plain.encode}, device, args)
        cache.reset_counts()
        sc, sp, ec, ep = ms(steps["cache"]), ms(steps["plain"]), ms(enc["cache"]), ms(enc["plain"])
        rate = hits / (hits + misses) if hits + misses else float("nan")
        rows.append(f"| {freeze} of {depth} ({depth - freeze} train) | {n_trainable / 1e6:.2f} M | "
                    f"{sc:.0f} / {med(steps['cache']):.0f} | {spread(steps['cache'])} | "
                    f"{sp:.0f} / {med(steps['plain']):.0f} | {spread(steps['plain'])} | "
                    f"**{ratio(sp, sc)}** / {ratio(med(steps['plain']), med(steps['cache']))} | {sp - sc:.0f} | "
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

def video_facts(path: str) -> dict:
    """Codec, size, frames and keyframes (by demuxing: no decoding), file size."""
    with av.open(path) as container:
        stream = container.streams.video[0]
        codec, w, h = stream.codec_context.name, stream.codec_context.width, stream.codec_context.height
        packets = keys = 0
        for packet in container.demux(stream):
            if packet.size:
                packets += 1
                keys += bool(packet.is_keyframe)
    return {"codec": codec, "size": f"{w}x{h}", "packets": packets, "keyframes": keys,
            "mb": os.path.getsize(path) / 2 ** 20}


def seek_and_write(record: VideoRecord, frames: list[int], folder: str, quality: int) -> int:
    """(b): the seed's seek-per-frame decode of ``frames`` + the extraction's JPEG encode and write."""
    images = seek_read_frames(record.video_path, frames)
    for frame, image in images.items():
        buf = io.BytesIO()
        image.save(buf, format="JPEG", quality=quality)
        with open(os.path.join(folder, f"{frame:06d}.jpg"), "wb") as f:
            f.write(buf.getvalue())
    return len(images)


def same_files(a: str, b: str, frames: list[int]) -> int:
    same = 0
    for frame in frames:
        name = f"{frame:06d}.jpg"
        try:
            with open(os.path.join(a, name), "rb") as fa, open(os.path.join(b, name), "rb") as fb:
                same += fa.read() == fb.read()
        except OSError:
            pass
    return same


def bench_extract(args, records: list[VideoRecord], source: str) -> None:
    rows, tot_a, tot_b, tot_frames = [], 0.0, 0.0, 0
    with tempfile.TemporaryDirectory(prefix="refdet_bench_extract_") as tmp:
        for v, record in enumerate(records):
            facts = video_facts(record.video_path)
            # untimed: the frame list (seeded) and the video into the OS file cache
            first = os.path.join(tmp, "first")
            index = extract_video(record, first, args.background_frames, args.seed, args.quality)
            if index is None:
                rows.append(f"| {record.video_id} | unreadable: skipped |" + " |" * 10)
                continue
            frames = sorted([int(f) for f in index["frames"]] + list(index["background"]))
            ref_dir = os.path.join(first, record.video_id)
            counter = [0]

            def fresh() -> str:
                counter[0] += 1
                path = os.path.join(tmp, f"run{counter[0]}")
                os.makedirs(path)
                return path

            times: dict[str, list[float]] = {"a": [], "b": []}
            identical, got_b = None, None
            start, rep = time.perf_counter(), 0
            while rep < args.max_reps and (rep < args.reps or time.perf_counter() - start < args.min_time):
                for key in (("a", "b") if (v + rep) % 2 == 0 else ("b", "a")):
                    folder = fresh()
                    t0 = time.perf_counter()
                    if key == "a":
                        out = extract_video(record, folder, args.background_frames, args.seed, args.quality)
                    else:
                        out = seek_and_write(record, frames, folder, args.quality)
                    times[key].append(time.perf_counter() - t0)
                    if key == "a" and (out is None or sorted([int(f) for f in out["frames"]] + list(out["background"]))
                                       != frames):
                        raise AssertionError(f"{record.video_id}: extract_video wrote another frame list")
                    if key == "b" and identical is None:
                        got_b, identical = out, same_files(ref_dir, folder, frames)
                    shutil.rmtree(folder)
                rep += 1
            shutil.rmtree(first)
            a, b = min(times["a"]), min(times["b"])
            tot_a, tot_b, tot_frames = tot_a + a, tot_b + b, tot_frames + len(frames)
            n_ann, n_bg = len(index["frames"]), len(index["background"])
            missing = f" ({len(frames) - got_b} not found)" if got_b != len(frames) else ""
            rows.append(f"| {record.video_id} | {facts['size']} {facts['codec']}, {facts['mb']:.1f} MB | "
                        f"{index['num_frames']} | {facts['keyframes']} ({index['num_frames'] / max(1, facts['keyframes']):.0f}) | "
                        f"{len(frames)} ({n_ann} + {n_bg}) | {a:.3f} | {spread(times['a'])} | {b:.3f} | "
                        f"{spread(times['b'])} | {len(frames) / a:.0f} | {len(frames) / b:.0f} | **{ratio(b, a)}** | "
                        f"{identical}/{len(frames)}{missing} |")
            print(f"  extract, {record.video_id} measured", file=sys.stderr, flush=True)
    print(f"## 2. Frame extraction: one sequential decode (`extract_video`) vs seek per frame (`seek_read_frames`), "
          f"same frames, same JPEG encoding (PyAV {av.__version__}, quality {args.quality}, "
          f"{args.background_frames} background frames per video)\n")
    print(f"Data: {source}. (a) = `extract_video` into an empty folder: decodes every frame once, writes the annotated "
          "frames + a seeded reservoir of background frames as JPEGs and `index.json`; (b) = `seek_read_frames` of "
          "exactly the frames (a) wrote + the same JPEG encode and write. s = fastest call; frames/s = JPEGs "
          "written / s; keyframes (frames per keyframe) counted by demuxing; identical = (b)'s JPEGs byte-equal "
          "to (a)'s.\n")
    print("| video | size | frames | keyframes (GOP) | JPEGs written (annotated + background) | (a) decode once s | "
          "spread | (b) seek per frame s | spread | (a) frames/s | (b) frames/s | (b)/(a) | identical JPEGs |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    if tot_a > 0:
        print(f"| **total** | | | | {tot_frames} | {tot_a:.3f} | | {tot_b:.3f} | | {tot_frames / tot_a:.0f} | "
              f"{tot_frames / tot_b:.0f} | **{ratio(tot_b, tot_a)}** | |")
    print(flush=True)


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
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N, auto (section 1; decoding is on the CPU)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--demo-dir", default="data/demo/refdet", help="demo set (generated there if missing)")
    p.add_argument("--data-root", default=None, help="a real AeroEyes set instead of the demo (all videos are used)")
    p.add_argument("--annotations", default=None, help="annotations.json of --data-root (default ROOT/annotations/...)")
    p.add_argument("--videos", type=int, default=0, help="use only the first N training videos by id (0 = all)")
    p.add_argument("--background-frames", type=int, default=None,
                   help="background frames per video (default: 12 for the demo, 20 otherwise, as the training script)")
    p.add_argument("--quality", type=int, default=90, help="JPEG quality (extract_video's default)")
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
                   help="smoke test: 2 videos, 4 episodes, query frames 64 px, support 32 px, 2 reps, no minimum time")
    args = p.parse_args(argv)
    if args.quick:
        args.videos, args.n_episodes, args.image_size, args.support_size = 2, 4, 64, 32
        args.reps, args.max_reps, args.min_time = 2, 2, 0.0
    if args.background_frames is None:
        args.background_frames = 20 if args.data_root else 12
    for flag in ("n_way", "n_query", "n_episodes", "support_views", "reps", "max_reps"):
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
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        device = D.resolve_device(args.device)
        return run(args, device)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def run(args, device: torch.device) -> int:
    if device.type == "cuda":
        dev_name = torch.cuda.get_device_name(device)
    else:
        dev_name = f"CPU ({torch.get_num_threads()} threads)"
    print(f"# refdet: device {dev_name}; {cpu_name()}, {platform.machine()} {platform.system()}, "
          f"{os.cpu_count()} logical CPUs; torch {torch.__version__}, timm {timm.__version__}, PyAV {av.__version__} "
          f"(FFmpeg {'.'.join(map(str, av.library_versions.get('libavcodec', ())))} libavcodec), "
          f"Python {platform.python_version()}")
    print(f"command: `{shlex.join(['python', *sys.argv])}`"
          + (f" (OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']})" if "OMP_NUM_THREADS" in os.environ else ""))
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
