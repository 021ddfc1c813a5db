"""Start-up costs at real data sizes: what a training run pays before its first step, cold and with caches.

Three sections, one measurement each (no ratios, so no alternating rounds), all on generated inputs in
a temp folder that is deleted at the end:

1. OCR (``train_vietocr.py``): ``--lines`` text lines, ``--unique-lines`` demo lines
   (``ensure_demo_ocr``) resized to 32 px high and repeated under distinct file names, with an
   annotation file in VietOCR's format (``path<TAB>label``). Measured: the LMDB build (``build_lmdb``:
   seconds, LMDB size, peak RSS), then opening the dataset over the built LMDB as a training run does
   (``build_lmdb`` finding its cache: reads the annotation file, stats every image and hashes both,
   then ``OCRDataset`` reads every label into its index, then the first item), cold and cached.
2. OVD (``train_ovd.py``): a Flickr30k Entities index of ``--flickr-images`` images (the demo generator
   ``ensure_demo_ovd``, its caption files padded to ``--captions`` captions per image as in the real set;
   its images are small, 128-176 px, which does not matter: the reader opens only their headers).
   Measured: ``read_grounding_split``, cold and cached. The project keeps no index cache, so "cached"
   is the OS page cache alone (what a second run pays).
3. RefDet (``train_yolov8n_refdet.py``): ``--videos`` demo videos of ``--video-size`` (default
   1920x1080) x ``--video-frames`` frames (``ensure_demo_refdet``). Measured: ``ensure_frame_cache``
   with ``max_side`` None (full-size JPEGs) and 640, each into its own cache folder: cold (decoding and
   writing every cached frame) and warm (everything cached: the second call); frames decoded per
   second, JPEGs and MB written.

How: every measurement runs in its own child process, forked from a server process that has imported
the project's modules and done nothing else (multiprocessing's forkserver), so a measurement reuses no
in-process state of another (no open LMDB handle, no parsed file) and pays no interpreter start.
Seconds are the wall time of the measured call alone. Peak RSS is the child's VmHWM (its own
high-water mark: ``ru_maxrss`` would carry the parent's peak, see bench/data_pipeline.py), next to its
RSS when it started (the imports). Cold: the inputs are first written back and dropped from the OS
page cache (``os.sync`` + ``posix_fadvise(DONTNEED)`` on every input file, no root needed), so they are
read from the disk (a virtual machine's disk may still be cached by its host). Cached: a new child
right after, the page cache warm.

    python -m bench.startup                       # the full run (about 10 minutes on 2 CPU cores)
    python -m bench.startup --quick               # tiny inputs, a few seconds: checks that it runs
    python -m bench.startup --lines 20000 --flickr-images 5000 --videos 1 --out startup.md
"""
from __future__ import annotations

import argparse
import multiprocessing
import multiprocessing.forkserver
import os
import shutil
import sys
import tempfile
import time
from typing import Callable

import av
import torch
from PIL import Image

from bench.timing import command_line, device_name, emit
from src.data.aeroeyes import VideoRecord, read_aeroeyes
from src.data.demo_ocr import ensure_demo_ocr
from src.data.demo_ovd import ensure_demo_ovd
from src.data.demo_refdet import ensure_demo_refdet
from src.data.flickr30k import read_grounding_split
from src.data.frames import CACHE_SEED, ensure_frame_cache
from src.data.loading import DataWarnings
from src.data.ocr import IMAGE_HEIGHT, VIETOCR_VOCAB, OCRDataset, Vocab, build_lmdb

# what the measured calls import, loaded once by the forkserver (not this module: under ``python -m`` the
# children run it as their __main__, and runpy warns when it is imported already)
CHILD_IMPORTS = ["av", "torch", "bench.timing", "src.data.aeroeyes", "src.data.flickr30k", "src.data.frames",
                 "src.data.loading", "src.data.ocr"]
CAP = 640                 # the refdet model's input size: the frame cache's capped variant
BACKGROUND_FRAMES = 20    # refdet's --background-frames default


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny inputs: a check that it runs (< 20 s)")
    p.add_argument("--lines", type=int, default=100_000, help="OCR lines in the annotation file and the LMDB")
    p.add_argument("--unique-lines", type=int, default=500, help="distinct rendered lines the files repeat")
    p.add_argument("--flickr-images", type=int, default=30_000, help="images in the Flickr30k Entities index")
    p.add_argument("--captions", type=int, default=5, help="captions per image (Flickr30k has 5)")
    p.add_argument("--videos", type=int, default=2, help="demo videos for the frame cache")
    p.add_argument("--video-frames", type=int, default=150, help="frames per video")
    p.add_argument("--video-size", default="1920x1080", help="WIDTHxHEIGHT of the videos (even numbers)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads in every measurement (default: torch's, the machine's cores)")
    p.add_argument("--out", help="also write the tables to this file")
    args = p.parse_args(argv)
    if args.quick:
        args.lines, args.unique_lines, args.flickr_images = 200, 40, 100
        args.videos, args.video_frames, args.video_size = 1, 8, "960x540"
    args.video_size = tuple(int(v) for v in args.video_size.lower().split("x"))
    return args


# ----------------------------------------------------------------------------- measuring

def peak_rss_mb() -> float:
    """This process's VmHWM (peak resident set) in MiB."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024


def _measured(fn: Callable[..., dict], kwargs: dict, threads: int | None) -> dict:
    """Runs in the child: ``fn(**kwargs)`` (which times itself) plus the child's RSS at start and peak."""
    if threads:
        torch.set_num_threads(threads)
    start = peak_rss_mb()   # a forked child's high-water mark starts at its RSS: the server's imports
    out = fn(**kwargs)
    return {**out, "rss_start_mb": start, "peak_rss_mb": peak_rss_mb()}


def in_child(ctx, fn: Callable[..., dict], threads: int | None, **kwargs) -> dict:
    """``fn(**kwargs)`` in a fresh child forked from the forkserver, with its peak RSS."""
    with ctx.Pool(1, maxtasksperchild=1) as pool:
        return pool.apply(_measured, (fn, kwargs, threads))


def evict(folder: str) -> int:
    """Drop every file under ``folder`` from the OS page cache (written back first); returns the count."""
    os.sync()   # only clean pages can be dropped
    n = 0
    for d, _, names in os.walk(folder):
        for name in names:
            fd = os.open(os.path.join(d, name), os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
            n += 1
    return n


def files_mb(folder: str, suffix: str = "") -> tuple[int, float]:
    """(count, MiB) of the files under ``folder`` whose names end with ``suffix``."""
    paths = [os.path.join(d, f) for d, _, fs in os.walk(folder) for f in fs if f.endswith(suffix)]
    return len(paths), sum(map(os.path.getsize, paths)) / 2**20


# the measured calls: each runs in a child and times only the project's call

def lmdb_build(annotation: str, root: str, cache_dir: str) -> dict:
    t0 = time.perf_counter()
    path = build_lmdb(annotation, root, cache_dir)
    return {"seconds": time.perf_counter() - t0, "path": path}


def ocr_open(annotation: str, root: str, cache_dir: str) -> dict:
    """What train_vietocr.py pays per split before its first batch: the cache check, the index, one item."""
    t0 = time.perf_counter()
    path = build_lmdb(annotation, root, cache_dir)
    t1 = time.perf_counter()
    ds = OCRDataset(path, Vocab(VIETOCR_VOCAB), annotation, DataWarnings())
    t2 = time.perf_counter()
    item = ds[0]
    t3 = time.perf_counter()
    return {"seconds": t3 - t0, "check_s": t1 - t0, "index_s": t2 - t1, "item_s": t3 - t2, "lines": len(ds),
            "item_shape": tuple(item["image"].shape)}


def flickr_read(root: str, split: str) -> dict:
    t0 = time.perf_counter()
    samples = read_grounding_split(root, split, DataWarnings())
    return {"seconds": time.perf_counter() - t0, "images": len({s.image_id for s in samples}),
            "captions": len(samples), "phrases": sum(len(s.phrases) for s in samples)}


def frame_extraction(records: list[VideoRecord], cache_dir: str, max_side: int | None) -> dict:
    stats: dict = {}
    t0 = time.perf_counter()
    indexes = ensure_frame_cache(records, cache_dir, BACKGROUND_FRAMES, CACHE_SEED, log_progress=False,
                                 stats=stats, max_side=max_side)
    seconds = time.perf_counter() - t0
    # a cached video is not decoded: only the extracted ones count as decoded frames
    decoded = sum(ix["num_frames"] for ix in indexes.values()) if stats["extracted"] else 0
    return {"seconds": seconds, "decoded": decoded, "written": stats["frames_written"],
            "extracted": stats["extracted"], "cached": stats["cached"],
            "annotated": sum(len(ix["frames"]) for ix in indexes.values()),
            "background": sum(len(ix["background"]) for ix in indexes.values()),
            "jpeg_size": next((ix.get("frame_width", ix["width"]), ix.get("frame_height", ix["height"]))
                              for ix in indexes.values())}


# ----------------------------------------------------------------------------- inputs

def make_ocr_lines(folder: str, lines: int, unique: int) -> tuple[str, str, float]:
    """(annotation file, data root, mean KiB per image): ``lines`` PNG files ``images/NNNNNN.png``, 32 px
    high, each a copy of one of ``unique`` demo lines, listed as ``path<TAB>label``."""
    demo = os.path.join(folder, "demo_ocr")
    with open(ensure_demo_ocr(demo, counts=(unique, 0, 0))["train"], encoding="utf-8") as f:
        demo_lines = [ln.rstrip("\n").split("\t", 1) for ln in f]
    root = os.path.join(folder, "ocr")
    os.makedirs(os.path.join(root, "images"))
    sources = []
    for i, (rel, _) in enumerate(demo_lines):
        img = Image.open(os.path.join(demo, rel))
        src = os.path.join(folder, f"line_{i:05d}.png")
        img.resize((max(1, round(img.width * IMAGE_HEIGHT / img.height)), IMAGE_HEIGHT), Image.BICUBIC).save(src)
        sources.append(src)
    annotation = os.path.join(root, "train.txt")
    with open(annotation, "w", encoding="utf-8") as f:
        for i in range(lines):
            rel = f"images/{i:06d}.png"
            # real copies, not hard links: every line is its own file on disk, as in a real dataset
            shutil.copyfile(sources[i % unique], os.path.join(root, rel))
            f.write(f"{rel}\t{demo_lines[i % unique][1]}\n")
    shutil.rmtree(demo)
    return annotation, root, files_mb(os.path.join(root, "images"))[1] * 1024 / lines


def make_flickr(folder: str, images: int, captions: int) -> str:
    """The Flickr30k Entities layout with ``images`` images, all in ``train.txt``, ``captions`` captions each
    (the demo's two, repeated in turn)."""
    root = ensure_demo_ovd(os.path.join(folder, "flickr"), {"train": images})
    sentences = os.path.join(root, "Sentences")
    for name in os.listdir(sentences):
        path = os.path.join(sentences, name)
        with open(path, encoding="utf-8") as f:
            own = f.read().splitlines()
        with open(path, "w", encoding="utf-8") as f:
            f.write("\n".join(own[i % len(own)] for i in range(captions)) + "\n")
    return root


def make_videos(folder: str, videos: int, frames: int, size: tuple[int, int]) -> tuple[str, list[VideoRecord], str]:
    """(root, records, codec) of ``videos`` demo videos of ``frames`` frames at ``size``."""
    root = ensure_demo_refdet(os.path.join(folder, "refdet"), train_videos=videos, valid_videos=0,
                              frames=(frames, frames), size=size)
    records = read_aeroeyes(root, None, DataWarnings())
    with av.open(records[0].video_path) as c:
        codec = c.streams.video[0].codec_context.name
    return root, records, codec


def lmdb_count(path: str) -> tuple[int, int]:
    """(``num-samples``, image keys) of a built LMDB, read after the timed opens (it warms the cache)."""
    import lmdb

    env = lmdb.open(path, readonly=True, lock=False)
    try:
        with env.begin() as txn:
            keys = sum(1 for k in txn.cursor().iternext(values=False) if k.startswith(b"image-"))
            return int(txn.get(b"num-samples")), keys
    finally:
        env.close()


# ----------------------------------------------------------------------------- sections

HEADER = ["| step | seconds | rate | output | peak RSS (at start) |", "|---|---|---|---|---|"]


def rss(m: dict) -> str:
    return f"{m['peak_rss_mb']:.0f} MiB ({m['rss_start_mb']:.0f})"


def ocr_section(ctx, folder: str, args) -> tuple[str, dict]:
    annotation, root, kib = make_ocr_lines(folder, args.lines, args.unique_lines)
    cache = os.path.join(folder, "lmdb")
    evict(root)
    build = in_child(ctx, lmdb_build, args.threads, annotation=annotation, root=root, cache_dir=cache)
    db_mb = files_mb(build["path"])[1]
    evict(root)
    evict(cache)
    cold = in_child(ctx, ocr_open, args.threads, annotation=annotation, root=root, cache_dir=cache)
    cached = in_child(ctx, ocr_open, args.threads, annotation=annotation, root=root, cache_dir=cache)
    num_samples, image_keys = lmdb_count(build["path"])
    rows = [f"### 1. OCR: {args.lines} lines ({args.unique_lines} distinct demo lines, {IMAGE_HEIGHT} px high "
            f"PNGs, {kib:.1f} KiB each), `build_lmdb` + `OCRDataset`\n", *HEADER,
            f"| LMDB build, cold | {build['seconds']:.2f} | {args.lines / build['seconds']:.0f} lines/s | "
            f"{num_samples} lines ({image_keys} images) in the LMDB, {db_mb:.1f} MiB | {rss(build)} |"]
    for name, m in (("open, cold", cold), ("open, cached", cached)):
        rows.append(f"| {name} | {m['seconds']:.2f} | {m['lines'] / m['seconds']:.0f} lines/s | {m['lines']} lines "
                    f"indexed: cache check {m['check_s']:.2f} s + index {m['index_s']:.2f} s + first item "
                    f"{1e3 * m['item_s']:.1f} ms | {rss(m)} |")
    rows.append("\nopen = `build_lmdb` finding its cache (reads the annotation file, stats every image, hashes "
                "both) + `OCRDataset(...)` (reads every label) + `ds[0]`: the time until a training run can "
                "read its first line, per split. cold: images, annotation file and LMDB out of the page cache.")
    return "\n".join(rows) + "\n", {"build": build, "cold": cold, "cached": cached, "num_samples": num_samples,
                                    "image_keys": image_keys, "mb": db_mb}


def flickr_section(ctx, folder: str, args) -> tuple[str, dict]:
    root = make_flickr(folder, args.flickr_images, args.captions)
    evict(root)
    cold = in_child(ctx, flickr_read, args.threads, root=root, split="train")
    cached = in_child(ctx, flickr_read, args.threads, root=root, split="train")
    _, xml_mb = files_mb(os.path.join(root, "Annotations"))
    _, txt_mb = files_mb(os.path.join(root, "Sentences"))
    rows = [f"### 2. OVD: Flickr30k Entities index of {args.flickr_images} images ({args.captions} captions "
            f"each; Annotations {xml_mb:.1f} MiB, Sentences {txt_mb:.1f} MiB), `read_grounding_split`\n", *HEADER]
    for name, m in (("index read, cold", cold), ("index read, cached", cached)):
        rows.append(f"| {name} | {m['seconds']:.2f} | {m['images'] / m['seconds']:.0f} images/s | {m['images']} "
                    f"images, {m['captions']} captions, {m['phrases']} phrases | {rss(m)} |")
    rows.append("\nThe reader parses every XML and caption file and opens every image's header (its real size); "
                "the project keeps no index cache, so cached = the OS page cache of a second run.")
    return "\n".join(rows) + "\n", {"cold": cold, "cached": cached}


def frames_section(ctx, folder: str, args) -> tuple[str, dict]:
    root, records, codec = make_videos(folder, args.videos, args.video_frames, args.video_size)
    _, video_mb = files_mb(root, ".mp4")
    w, h = args.video_size
    rows = [f"### 3. RefDet: {len(records)} demo videos of {w}x{h} x {args.video_frames} frames ({codec}, "
            f"{video_mb:.1f} MiB), `ensure_frame_cache` (background_frames {BACKGROUND_FRAMES})\n", *HEADER]
    facts = {}
    for label, cap in (("full size", None), (f"max_side {CAP}", CAP)):
        cache = os.path.join(folder, f"frames_{cap or 'full'}")
        evict(root)
        cold = in_child(ctx, frame_extraction, args.threads, records=records, cache_dir=cache, max_side=cap)
        jpegs, mb = files_mb(cache, ".jpg")
        warm = in_child(ctx, frame_extraction, args.threads, records=records, cache_dir=cache, max_side=cap)
        size = f"{cold['jpeg_size'][0]}x{cold['jpeg_size'][1]}"
        rows.append(f"| {label}, cold | {cold['seconds']:.2f} | {cold['decoded'] / cold['seconds']:.1f} frames "
                    f"decoded/s | {cold['decoded']} frames decoded, {cold['written']} JPEGs written "
                    f"({cold['annotated']} annotated + {cold['background']} background), {jpegs} on disk, "
                    f"{size}, {mb:.1f} MiB | {rss(cold)} |")
        rows.append(f"| {label}, warm | {warm['seconds']:.3f} | {warm['cached']} of {len(records)} videos cached | "
                    f"{warm['decoded']} frames decoded, {warm['written']} JPEGs written | {rss(warm)} |")
        facts[label] = {"cold": cold, "warm": warm, "jpegs": jpegs, "mb": mb}
    rows.append("\nframes decoded/s: the video's frames over the whole call (decoding, and JPEG-encoding the "
                "cached ones: every annotated frame + the background sample).")
    return "\n".join(rows) + "\n", facts


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    module = __spec__.name if __spec__ else "bench.startup"
    command = command_line(module, argv)
    ctx = multiprocessing.get_context("forkserver")
    # the server imports the project's modules once; every child forked from it starts from there
    ctx.set_forkserver_preload(CHILD_IMPORTS)
    multiprocessing.forkserver.ensure_running()   # its imports overlap the inputs' generation
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="startup_") as folder:
        sections = [ocr_section(ctx, folder, args)[0], flickr_section(ctx, folder, args)[0],
                    frames_section(ctx, folder, args)[0]]
    lines = [f"## Start-up at real data sizes ({device_name(torch.device('cpu'))}, {os.cpu_count()} logical CPUs)\n",
             f"Command: {command}; every figure measured in this run ({time.perf_counter() - t0:.0f} s with "
             f"generating the inputs). One measurement each, in a fresh child process forked from a server that "
             f"has only imported the modules; peak RSS = the child's VmHWM, (at start) = its RSS when forked. "
             f"cold = the inputs dropped from the OS page cache first; cached / warm = a new child right after.\n",
             *sections]
    text = "\n".join(lines)
    emit(text, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
