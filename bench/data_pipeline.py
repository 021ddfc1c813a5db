"""Data pipeline on inputs of real size: images/s per DataLoader worker, today's path vs the improved one.

Per worker means in one process, the dataset's ``__getitem__`` path (what each ``num_workers`` process
runs), at one thread (``--threads``, default 1: a worker's share of the cores). Two paths:

1. Classification: 640x480 JPEG leaf photos (the demo generator's leaves, rendered at 640 and cropped
   to 4:3, saved at quality 90) through ``ClassificationDataset`` (validation transform: pad to square,
   resize to 224, normalise). Today: full decode (``fast_decode=False``). Improved: reduced-size JPEG
   decoding (``fast_decode=True``, PIL's ``draft``: DCT scaling 1/2, 1/4 or 1/8, the longer side never
   below 224), here 320x240. Two more sides show the floor: the JPEG decode alone, full and 1/2 scale
   (entropy decoding does not shrink with the DCT scale).
2. Drone frames: a 1920x1080 demo video (``ensure_demo_refdet``) extracted into the frame cache and read
   back by ``RefDetFrames`` (no augmentation) letterboxed to 640. Today: the full-size 1080p cache.
   Improved: a cache capped at 640 on the longer side (``ensure_frame_cache(max_side=640)``), and
   full-size cache + reduced decoding on read (``RefDetFrames(fast_decode=True)``, 960x540).

Timing: whole passes over the inputs alternate between the sides (a, b, c, c, b, a, ...:
``alternating_rounds``); images/s = images in a pass / median pass time; spread = (slowest - fastest) /
fastest pass; a ratio counts only when both spreads are under 25% (``checked_ratio``). Agreement: the
max and mean absolute difference of each improved side's output images against today's, on the uint8
scale (normalisation undone), over every input. Start-up figures (one measurement each, no ratio):
the frame cache's extraction time and size, full vs capped, and the OCR LMDB build for ``--ocr-lines``
demo lines (seconds and peak RSS, VmHWM of a child process). All inputs are generated in a temp folder.

    python -m bench.data_pipeline            # the full run (< 5 minutes on 2 CPU cores)
    python -m bench.data_pipeline --quick    # tiny inputs, a few seconds: checks that it runs
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Callable

import numpy as np
import torch

from bench.timing import alternating_rounds, checked_ratio, command_line, device_name, emit, median, spread
from src.data.aeroeyes import read_aeroeyes
from src.data.classification import ClassificationDataset
from src.data.demo_classification import CLASSES, render_leaf_image
from src.data.demo_refdet import ensure_demo_refdet
from src.data.frames import ensure_frame_cache
from src.data.images import IMAGENET_MEAN, IMAGENET_STD, load_rgb
from src.data.loading import DataWarnings
from src.data.refdet import RefDetFrames

PHOTO = (640, 480)       # a phone photo of a leaf, as the classification datasets hold
FRAME = (1920, 1080)     # a 1080p drone video
CLS_SIZE, DET_SIZE = 224, 640


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny inputs and 2 rounds: a check that it runs")
    p.add_argument("--photos", type=int, default=24, help="640x480 leaf photos")
    p.add_argument("--video-frames", type=int, default=24, help="frames of the 1080p demo video")
    p.add_argument("--passes", type=int, default=12, help="passes over the photos per timed round (frames: half)")
    p.add_argument("--rounds", type=int, default=7, help="minimum timed rounds per side")
    p.add_argument("--min-time", type=float, default=20.0, help="minimum seconds of rounds per section")
    p.add_argument("--max-rounds", type=int, default=12)
    p.add_argument("--ocr-lines", type=int, default=2000, help="demo OCR lines for the LMDB build (0: skip)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (one DataLoader worker's)")
    p.add_argument("--out", help="also write the tables to this file")
    args = p.parse_args(argv)
    if args.quick:
        args.photos, args.video_frames, args.passes, args.rounds = 3, 6, 1, 2
        args.min_time, args.max_rounds, args.ocr_lines = 0.0, 2, 20
    return args


# ----------------------------------------------------------------------------- inputs

def make_photos(folder: str, n: int, seed: int = 1) -> list[str]:
    """``n`` 640x480 quality-90 JPEG leaf photos (the demo leaves rendered at 640, cropped to 4:3)."""
    rng = np.random.default_rng(seed)
    w, h = PHOTO
    paths = []
    for i in range(n):
        path = os.path.join(folder, f"leaf_{i:03d}.jpg")
        render_leaf_image(rng, CLASSES[i % len(CLASSES)], w).crop((0, (w - h) // 2, w, (w + h) // 2)).save(
            path, quality=90)
        paths.append(path)
    return paths


def make_frame_caches(folder: str, n_frames: int) -> tuple[list, dict, dict, dict]:
    """(records, full-size indexes, capped indexes, start-up facts) of one 1080p demo video."""
    root = ensure_demo_refdet(os.path.join(folder, "demo"), train_videos=1, valid_videos=0,
                              frames=(n_frames, n_frames), size=FRAME)
    records = read_aeroeyes(root, None, DataWarnings())
    facts = {}
    out = []
    for name, cap in (("full", None), ("capped", DET_SIZE)):
        cache = os.path.join(folder, f"cache_{name}")
        t0 = time.perf_counter()
        indexes = ensure_frame_cache(records, cache, background_frames=max(2, n_frames // 3), seed=0,
                                     log_progress=False, max_side=cap)
        seconds = time.perf_counter() - t0
        files = [os.path.join(d, f) for d, _, fs in os.walk(cache) for f in fs if f.endswith(".jpg")]
        facts[name] = dict(seconds=seconds, jpegs=len(files), mb=sum(map(os.path.getsize, files)) / 2**20,
                           size=load_rgb(files[0]).size)
        out.append(indexes)
    return records, out[0], out[1], facts


# ----------------------------------------------------------------------------- measuring

def time_sides(sides: dict[str, Callable[[], object]], args) -> dict[str, list[float]]:
    """Seconds of each timed pass per side, the passes alternating between sides; one untimed pass each first."""
    for fn in sides.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in sides}
    for _, name in alternating_rounds(list(sides), args.rounds, args.min_time, args.max_rounds):
        t0 = time.perf_counter()
        sides[name]()
        times[name].append(time.perf_counter() - t0)
    return times


def to_uint8_scale(x: torch.Tensor) -> torch.Tensor:
    """A normalised (3, H, W) float image back on the 0..255 scale."""
    return (x * torch.tensor(IMAGENET_STD)[:, None, None] + torch.tensor(IMAGENET_MEAN)[:, None, None]) * 255


def agreement(a: list[torch.Tensor], b: list[torch.Tensor]) -> tuple[float, float]:
    """(max, mean) absolute difference, uint8 scale, of two lists of same-shaped normalised images."""
    diff = torch.stack([(to_uint8_scale(x) - to_uint8_scale(y)).abs() for x, y in zip(a, b)])
    return float(diff.max()), float(diff.mean())


def table(title: str, times: dict[str, list[float]], per_pass: int, baseline: str,
          agree: dict[str, tuple[float, float]], notes: dict[str, str]) -> str:
    rows = [f"### {title}\n",
            "| side | images/s per worker | ms/image | spread | vs today | max / mean abs diff vs today (uint8) |",
            "|---|---|---|---|---|---|"]
    for name, ts in times.items():
        m = median(ts)
        vs = "1.00x" if name == baseline else checked_ratio(times[baseline], ts, stat=median)
        diff = "" if name not in agree else f"{agree[name][0]:.0f} / {agree[name][1]:.2f}"
        rows.append(f"| {name}{notes.get(name, '')} | {per_pass / m:.0f} | {1e3 * m / per_pass:.2f} | "
                    f"{spread(ts)} | {vs} | {diff} |")
    return "\n".join(rows) + "\n"


# ----------------------------------------------------------------------------- sections

def classification_section(folder: str, args) -> tuple[str, dict]:
    paths = make_photos(folder, args.photos)
    labels = [0] * len(paths)
    today = ClassificationDataset(paths, labels, CLS_SIZE, train=False, fast_decode=False)
    fast = ClassificationDataset(paths, labels, CLS_SIZE, train=False, fast_decode=True)
    agree = {"fast_decode": agreement([today[i]["image"] for i in range(len(paths))],
                                      [fast[i]["image"] for i in range(len(paths))])}

    def passes(fn):
        def run():
            for _ in range(args.passes):
                for i in range(len(paths)):
                    fn(i)
        return run

    sides = {"today (full decode)": passes(lambda i: today[i]),
             "fast_decode": passes(lambda i: fast[i]),
             "JPEG decode alone, full": passes(lambda i: load_rgb(paths[i])),
             "JPEG decode alone, reduced": passes(lambda i: load_rgb(paths[i], longer_side=CLS_SIZE))}
    times = time_sides(sides, args)
    decoded = load_rgb(paths[0], longer_side=CLS_SIZE).size
    text = table(f"1. Classification: {len(paths)} {PHOTO[0]}x{PHOTO[1]} JPEG photos (q90, "
                 f"{sum(map(os.path.getsize, paths)) / len(paths) / 1024:.0f} KiB each) -> {CLS_SIZE}, "
                 f"`ClassificationDataset.__getitem__` (validation transform)",
                 times, len(paths) * args.passes, "today (full decode)", agree,
                 {"fast_decode": f" (decoded at {decoded[0]}x{decoded[1]})"})
    return text, {"times": times, "agree": agree}


def frames_section(folder: str, args) -> tuple[str, dict, dict]:
    records, full_idx, capped_idx, facts = make_frame_caches(folder, args.video_frames)
    today = RefDetFrames(records, full_idx, DET_SIZE, 64)
    draft = RefDetFrames(records, full_idx, DET_SIZE, 64, fast_decode=True)
    capped = RefDetFrames(records, capped_idx, DET_SIZE, 64)
    n = len(today)
    ref = [today[i] for i in range(n)]
    agree = {}
    for name, ds in (("capped cache (640)", capped), ("full cache + fast_decode", draft)):
        items = [ds[i] for i in range(n)]
        assert all(torch.allclose(a["boxes"], b["boxes"], atol=1e-3) and a["scale"] == b["scale"]
                   for a, b in zip(ref, items)), f"{name}: boxes or scale differ from today's"
        agree[name] = agreement([a["image"] for a in ref], [b["image"] for b in items])
    reps = max(1, args.passes // 2)

    def passes(ds):
        def run():
            for _ in range(reps):
                for i in range(n):
                    ds[i]
        return run

    sides = {"today (1080p cache)": passes(today), "capped cache (640)": passes(capped),
             "full cache + fast_decode": passes(draft)}
    times = time_sides(sides, args)
    d = load_rgb(today.frame_path(0), longer_side=DET_SIZE).size
    text = table(f"2. Drone frames: {n} cached frames of a {FRAME[0]}x{FRAME[1]} demo video -> {DET_SIZE} "
                 f"letterbox, `RefDetFrames.__getitem__` (no augmentation)",
                 times, n * reps, "today (1080p cache)", agree,
                 {"capped cache (640)": f" ({facts['capped']['size'][0]}x{facts['capped']['size'][1]} JPEGs)",
                  "full cache + fast_decode": f" (decoded at {d[0]}x{d[1]})"})
    return text, {"times": times, "agree": agree}, facts


# the peak is VmHWM, this process image's own high-water mark: ru_maxrss would carry the parent's peak
# (Linux copies it into a forked child and keeps it across exec), here the demo generators' ~1.2 GB
LMDB_CHILD = """
import json, sys, time
from src.data.ocr import build_lmdb
def hwm():
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")) / 1024
before = hwm()
t0 = time.perf_counter()
build_lmdb(sys.argv[1], sys.argv[2], sys.argv[3])
print(json.dumps({"seconds": time.perf_counter() - t0, "rss_before_mb": before, "peak_rss_mb": hwm()}))
"""


def lmdb_startup(folder: str, lines: int) -> dict | None:
    """Seconds and peak RSS (VmHWM of a child process; before = after its imports) of ``build_lmdb``."""
    if lines <= 0:
        return None
    from src.data.demo_ocr import ensure_demo_ocr

    root = os.path.join(folder, "ocr")
    files = ensure_demo_ocr(root, counts=(lines, 0, 0))
    proc = subprocess.run([sys.executable, "-c", LMDB_CHILD, files["train"], root, os.path.join(folder, "lmdb")],
                          capture_output=True, text=True, check=True, cwd=os.getcwd())
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    db = [os.path.join(d, f) for d, _, fs in os.walk(os.path.join(folder, "lmdb")) for f in fs]
    out["mb"] = sum(map(os.path.getsize, db)) / 2**20
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    module = __spec__.name if __spec__ else "bench.data_pipeline"
    command = command_line(module, argv)
    with tempfile.TemporaryDirectory(prefix="data_pipeline_") as folder:
        t0 = time.perf_counter()
        cls_text, _ = classification_section(folder, args)
        det_text, _, facts = frames_section(folder, args)
        ocr = lmdb_startup(folder, args.ocr_lines)
    lines = [f"## Data pipeline per DataLoader worker ({device_name(torch.device('cpu'))}, {os.cpu_count()} "
             f"logical CPUs)\n", f"Command: {command}; every figure measured in this run "
             f"({time.perf_counter() - t0:.0f} s). Median pass; spread = (max - min) / min of the passes; "
             f"a ratio counts only when both spreads are under 25%.\n", cls_text, det_text,
             "### 3. Start-up (one measurement each)\n", "| what | seconds | output | peak RSS |", "|---|---|---|---|"]
    for name, f in facts.items():
        lines.append(f"| frame cache, {name} ({f['size'][0]}x{f['size'][1]}) | {f['seconds']:.2f} | "
                     f"{f['jpegs']} JPEGs, {f['mb']:.1f} MiB | |")
    if ocr:
        lines.append(f"| OCR LMDB build, {args.ocr_lines} demo lines | {ocr['seconds']:.2f} | {ocr['mb']:.1f} MiB | "
                     f"{ocr['peak_rss_mb']:.0f} MiB ({ocr['rss_before_mb']:.0f} MiB after imports) |")
    text = "\n".join(lines) + "\n"
    emit(text, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
