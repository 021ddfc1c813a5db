"""Decode AeroEyes drone videos once into the JPEG frame cache that training reads (:mod:`src.data.frames`).

    python -m src.tools.extract_frames --data-root datasets/train [--cache-dir datasets/train/frame_cache]

Run it before training to pay the decoding once: a training run with the same ``--background-frames``
(and ``--frame-cache-max-side`` / ``--image-size``) finds every video up to date: the background frames' seed is :data:`src.data.frames.CACHE_SEED` on both
sides (``--frame-cache-seed``), whatever ``--seed`` training runs with.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from typing import Sequence

from src import cli
from src.data.aeroeyes import ANNOTATIONS, read_aeroeyes, resolve_root
from src.data.frames import CACHE_SEED, describe_index, extract_video_counted, resolve_cap
from src.data.loading import DataWarnings


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m src.tools.extract_frames",
                                description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    cli.add_flag(p, "--data-root", required=True, help="AeroEyes root (with samples/) or its samples folder")
    cli.add_flag(p, "--annotations", default=None, help=f"annotation file (default: ROOT/{ANNOTATIONS})")
    cli.add_flag(p, "--cache-dir", default=None, help="frame cache folder (default: ROOT/frame_cache)")
    cli.add_flag(p, "--background-frames", type=int, default=20,
                 help="random frames without the target cached per video (negatives)")
    p.add_argument("--frame-cache-seed", "--frame_cache_seed", "--seed", dest="frame_cache_seed", type=int,
                   default=CACHE_SEED, help="seed of the background frames' choice (training's --frame-cache-seed, "
                                            "same default: change both or neither)")
    cli.add_flag(p, "--quality", type=int, default=90, help="JPEG quality of cached frames")
    cli.add_flag(p, "--frame-cache-max-side", default="auto", metavar="auto|0|N",
                 help="cap the cached frames' longer side (training's flag, same default: auto caps videos at least "
                      "twice --image-size at --image-size; 0 keeps full size)")
    cli.add_flag(p, "--image-size", type=int, default=640, help="the training run's --image-size (for auto)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        max_side, cap_from = resolve_cap(args.frame_cache_max_side, args.image_size)
    except ValueError as exc:
        parser.error(str(exc))
    dataset_root, _ = resolve_root(args.data_root)
    cache_dir = args.cache_dir or os.path.join(dataset_root, "frame_cache")
    ann = args.annotations or os.path.join(dataset_root, ANNOTATIONS)
    warnings = DataWarnings()
    # without an annotation file (a test folder) every video is cached with background frames only
    records = read_aeroeyes(args.data_root, args.annotations, warnings, require_boxes=os.path.isfile(ann))
    start = time.perf_counter()
    written_total, extracted, failed = 0, 0, 0
    for record in records:
        t0 = time.perf_counter()
        index, written, fresh = extract_video_counted(record, cache_dir, args.background_frames, args.frame_cache_seed,
                                                      args.quality, warnings, max_side, cap_from)
        written_total += written
        if index is None:
            failed += 1
            print(f"{record.video_id}: unreadable video, skipped", flush=True)
        elif fresh:
            extracted += 1
            print(f"{record.video_id}: {describe_index(index, written, time.perf_counter() - t0)}", flush=True)
        else:
            print(f"{record.video_id}: up to date", flush=True)
    counts = warnings.counts()
    print(f"videos {len(records)} (extracted {extracted}, up to date {len(records) - extracted - failed}, "
          f"failed {failed}); frames written {written_total}; {time.perf_counter() - start:.1f} s; "
          f"cache {cache_dir}; warnings: {json.dumps(counts) if counts else 'none'}", flush=True)
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s", stream=sys.stderr)
    sys.exit(cli.run_main(main))
