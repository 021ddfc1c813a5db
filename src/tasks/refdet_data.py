"""The reference-detection task's data: training episodes over the frame cache, evaluation clips.

``build_data`` brings the training videos' frame cache up to date (rank 0; ``--frame-cache-max-side``:
:func:`src.data.frames.resolve_cap`), then builds the episode loader over :class:`RefDetFrames` and one
:class:`VideoClips` loader per evaluated split, with the truth of every evaluated video.
"""
from __future__ import annotations

import logging
import os

import torch

from src.data.aeroeyes import VideoRecord, read_aeroeyes, split_videos
from src.data.demo_refdet import ensure_demo_refdet
from src.data.frames import ensure_frame_cache, resolve_cap
from src.data.loading import DataWarnings, seeded_subset
from src.data.refdet import EpisodeSampler, RefDetFrames, VideoClips, collate_episode, video_truth
from src.errors import DataError
from src.training import distributed as D
from src.training.run import Run

log = logging.getLogger("src")


def _valid_spec(value: str):
    if "," in value or not value.replace(".", "", 1).isdigit():
        return [v for v in value.split(",") if v]
    return float(value) if "." in value else int(value)


def _limit(records: list[VideoRecord], limit: int | None, seed: int) -> list[VideoRecord]:
    return [records[i] for i in seeded_subset(len(records), limit, seed)]


def build_data(args, run: Run, warnings: DataWarnings) -> dict:
    """Train/valid(/test) loaders and the truth of every evaluated video; the training videos' frame
    cache is brought up to date first (by rank 0)."""
    dist = run.dist
    if args.demo:
        run.prepare_demo(ensure_demo_refdet, args.demo_dir)
    if not args.data_root:
        raise DataError("--data-root is required (or use --demo)")
    records = read_aeroeyes(args.data_root, args.annotations, warnings)
    train, valid = split_videos(records, None if args.split_file else _valid_spec(args.valid_videos), args.split_file,
                                args.seed)
    train, valid = _limit(train, args.train_limit, args.seed), _limit(valid, args.valid_limit, args.seed)
    if not train or not valid:
        raise DataError(f"{args.data_root}: need at least one training and one validation video "
                        f"(got {len(train)} and {len(valid)}); see --valid-videos / --split-file")
    cache_dir = args.frame_cache or os.path.join(records[0].root, "frame_cache")
    # rank 0 extracts (and counts the warnings); the others get its indexes (or its error)
    max_side, cap_from = resolve_cap(args.frame_cache_max_side, args.image_size)
    indexes = D.on_rank0(lambda: ensure_frame_cache(train, cache_dir, args.background_frames, args.frame_cache_seed,
                                                    warnings, max_side=max_side, cap_from=cap_from))
    train = [r for r in train if r.video_id in indexes]
    # reduced JPEG decoding: a cached frame at least twice image_size (a full-size 1080p cache) is decoded
    # at 1/2..1/8 scale; frames of a capped cache are already small and decode exactly
    frames = RefDetFrames(train, indexes, args.image_size, args.support_size, args.support_views, augment=args.augment,
                          fast_decode=args.fast_decode)
    sampler = EpisodeSampler(frames, args.n_way, args.n_query, args.n_background, args.n_episodes, args.support_views,
                             args.permute_colours, seed=args.seed, rank=dist.rank, world_size=dist.world_size)
    loader_kw = dict(num_workers=args.num_workers, pin_memory=args.pin_memory)
    out = {"train": torch.utils.data.DataLoader(frames, batch_sampler=sampler, collate_fn=collate_episode,
                                                **loader_kw), "truth": {}}
    evals = {"valid": valid}
    if args.test_data_root:
        evals["test"] = read_aeroeyes(args.test_data_root, args.test_annotations, warnings)
    for split, recs in evals.items():
        clips = VideoClips(recs, args.image_size, args.support_size, stride=args.frame_stride, chunk=args.batch_size,
                           rank=dist.rank, world_size=dist.world_size)
        out[split] = torch.utils.data.DataLoader(clips, batch_size=None, num_workers=min(1, args.num_workers))
        out["truth"][split] = {r.video_id: video_truth(r) for r in recs}
    log.info("videos: %d train (%d annotated + %d background frames cached), %d valid%s", len(train),
             sum(len(i["frames"]) for i in indexes.values()), sum(len(i["background"]) for i in indexes.values()),
             len(valid), f", {len(evals['test'])} test" if "test" in evals else "")
    return out
