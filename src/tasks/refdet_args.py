"""``train_yolov8n_refdet.py``'s flags: its own groups (data in the AeroEyes layout, model, loss,
optimizer and evaluation, inference and profiling), the ``--stage`` presets, the ``--demo`` defaults,
the seed's spellings (its recipes, ``/shared/seeds/yolov8n_refdet_speed_guide.md``, run as written:
``--num-aug`` and ``--gradient-accumulation`` are aliases, ``--profile-episodes`` is the profiler's
count, :data:`SEED_ONLY` flags are accepted with one notice), and the parse that resolves them."""
from __future__ import annotations

import argparse
import os
from typing import Sequence

from src import cli
from src.data.frames import CACHE_SEED, resolve_cap

# --stage presets (defaults only: flags typed on the command line win). The seed trained in three
# stages; its stage-3 "resume" from stage 2 trained zero epochs, here stage 3 starts a new run from
# stage 2's weights with --init-from.
STAGES = {
    1: dict(freeze_dino_layers=12, supcon_weight=0.0, bbox_loss="ciou", lr=1e-3),   # detector + fusion, DINO frozen
    2: dict(freeze_dino_layers=6, supcon_weight=0.5, bbox_loss="ciou", lr=1e-3),    # + last 6 DINO blocks, contrastive
    3: dict(freeze_dino_layers=6, supcon_weight=0.2, bbox_loss="wiou", lr=2e-4),    # fine-tune, WIoU v3
}

# --demo: small frames and references, DINO fully frozen (its 21.6M parameters are random here: no
# pretrained weights offline) so the support cache serves every step; sized to finish in CPU minutes
DEMO_DEFAULTS = dict(image_size=256, support_size=64, freeze_dino_layers=12, frame_stride=2, n_way=2, n_query=4,
                     n_background=2, n_episodes=70, epochs=12, warmup_epochs=0.5, background_frames=12, num_workers=1,
                     patience=0, supcon_weight=0.2, lr=2e-3, batch_size=16, score_threshold=0.1,
                     permute_colours=True)

# flags accepted only so that the seed's recipes run: what each would have done there, and why not here
SEED_ONLY = {
    "frame_cache_size": "the seed kept an in-memory LRU of N decoded frames; here training reads every frame "
                        "from the on-disk JPEG frame cache (--frame-cache), extracted once and shared by every "
                        "worker, so there is nothing to size",
}

PROFILE_EPISODES = 10    # the seed's profiling recipe runs 10
PROFILE_BARE = -1        # --profile typed without a number

# the shared flags' defaults for this task
SCRIPT_DEFAULTS = dict(weight_decay=5e-4, clip_grad=10.0, batch_size=32, patience=10, epochs=30, num_workers=2,
                       ema_decay=0.9999)


def add_args(p: argparse.ArgumentParser) -> None:
    """``train_yolov8n_refdet.py``'s own flags: data (AeroEyes layout), model, loss, optimizer and
    evaluation, inference and profiling."""
    d = p.add_argument_group("data (Zalo AI 2025 AeroEyes layout)")
    cli.add_flag(d, "--data-root", default=None,
                 help="dataset root with samples/ and annotations/ (or the samples/ folder itself)")
    cli.add_flag(d, "--annotations", default=None, help="annotations.json (default ROOT/annotations/annotations.json)")
    cli.add_flag(d, "--test-data-root", default=None, help="held-out videos evaluated once at the end")
    cli.add_flag(d, "--test-annotations", default=None)
    cli.add_flag(d, "--valid-videos", default="0.2",
                 help="validation videos: a fraction (0.2), a count (3) or comma-separated video ids")
    cli.add_flag(d, "--split-file", default=None, help="'video_id train|valid' lines (overrides --valid-videos)")
    cli.add_flag(d, "--frame-cache", default=None, metavar="DIR",
                 help="extracted-frame cache (default ROOT/frame_cache); built on first use")
    cli.add_flag(d, "--frame-cache-max-side", default="auto", metavar="auto|0|N",
                 help="store cached frames with their longer side capped: auto caps videos at least twice "
                      "--image-size at --image-size (1080p for 640: 640x360 JPEGs, ~5x faster to read); 0 keeps "
                      "full size; N caps every video at N px (the extract_frames tool takes the same flag)")
    cli.add_switch(d, "--fast-decode", True,
                   help="decode cached frames at least twice --image-size at 1/2..1/8 scale (PIL draft)")
    cli.add_flag(d, "--frame-cache-seed", type=int, default=CACHE_SEED,
                 help="seed of the cached background frames' choice (the extract_frames tool's default too, so a "
                      "cache extracted beforehand is used whatever --seed training runs with)")
    cli.add_flag(d, "--background-frames", type=int, default=20,
                 help="unannotated frames per video extracted as negatives")
    cli.add_flag(d, "--frame-stride", type=int, default=1, help="evaluate every N-th frame of a video")
    cli.add_flag(d, "--image-size", type=int, default=640, help="square letterbox side of query frames (multiple of 32)")
    cli.add_flag(d, "--support-size", type=int, default=224, help="reference image side (multiple of the ViT patch)")
    cli.add_flag(d, "--support-views", type=int, default=4,
                 help="fixed augmented versions of each video's references (1 = no support augmentation)")
    cli.add_flag(d, "--num-aug", type=int, dest="support_views", default=argparse.SUPPRESS, metavar="N",
                 help="the seed's name for --support-views (an alias: its number of augmented versions of the "
                      "references; 1 = the photos only)")
    cli.add_switch(d, "--augment", True,
                   "flips, scale/translate and colour jitter on query frames")
    cli.add_switch(d, "--permute-colours", False,
                   "per episode, reorder the RGB channels of a video's frames and its references alike (one of "
                   "six orders), so few training objects cannot be memorized as the targets (on in --demo)")
    cli.add_flag(d, "--n-way", type=int, default=2, help="videos per episode")
    cli.add_flag(d, "--n-query", type=int, default=4, help="annotated frames per video per episode")
    cli.add_flag(d, "--n-background", type=int, default=1, help="background frames per video per episode")
    cli.add_flag(d, "--n-episodes", type=int, default=500, help="episodes (optimizer micro-steps) per epoch")
    cli.add_flag(d, "--frame-cache-size", type=int, default=None, metavar="N",
                 help="accepted for the seed's recipes and does nothing here (one notice at start): "
                      + SEED_ONLY["frame_cache_size"])
    cli.add_flag(d, "--demo-dir", default="data/demo/refdet", help="where --demo writes its videos")
    _add_model_args(p)
    _add_training_args(p)


def _add_model_args(p: argparse.ArgumentParser) -> None:
    m = p.add_argument_group("model")
    cli.add_flag(m, "--stage", type=int, choices=sorted(STAGES), default=None,
                 help="preset: 1 DINO frozen, 2 last 6 DINO blocks + contrastive, 3 fine-tune with WIoU "
                      "(typed flags win; start stage 3 from stage 2 with --init-from)")
    cli.add_flag(m, "--dino-model", default="vit_small_patch16_dinov3", help="timm ViT for the references")
    cli.add_flag(m, "--freeze-dino-layers", type=int, default=6, help="frozen (and cached) first ViT blocks")
    cli.add_flag(m, "--pretrained", action="store_true", help="DINOv3 LVD-1689M weights via timm")
    cli.add_flag(m, "--pretrained-weights", default=None, metavar="PATH", help="local timm weights file (implies --pretrained)")
    cli.add_flag(m, "--fusion", choices=["psalm", "cheaf"], default="psalm")
    cli.add_flag(m, "--embed-dim", type=int, default=128, help="prototype / anchor embedding width")
    cli.add_switch(m, "--siamese", True,
                   "also encode the references with the detector's own backbone (a prototype in the query "
                   "features' space, added to the DINO one)")
    cli.add_flag(m, "--support-cache-size-mb", type=float, default=200.0,
                 help="support-feature cache (frozen DINO part) in MB; 0 disables")
    cli.add_flag(m, "--init-from", default=None, metavar="CKPT",
                 help="start a new run from another run's weights (best_model.pt / last.pt / run dir)")
    cli.add_flag(m, "--detector-weights", default=None, metavar="PATH",
                 help="initialize the YOLOv8n backbone + neck (ultralytics' yolov8n layers 0-21; its Detect head is "
                      "skipped) from python -m src.tools.convert_ultralytics's output, an ultralytics state dict "
                      "(model.N.*, converted on loading) or, with ultralytics installed, its .pt; these weights get "
                      "--base-lr")
    lo = p.add_argument_group("loss")
    cli.add_switch(lo, "--swap-negatives", True,
                   "also pair each training frame with another episode video's references, as an "
                   "all-background example (teaches the detector to fire only on the referenced object)")
    cli.add_flag(lo, "--bbox-loss", choices=["ciou", "wiou"], default="ciou")
    cli.add_flag(lo, "--cls-loss", choices=["bce", "focal"], default="bce")
    cli.add_flag(lo, "--box-weight", type=float, default=7.5)
    cli.add_flag(lo, "--dfl-weight", type=float, default=1.5)
    cli.add_flag(lo, "--cls-weight", type=float, default=0.5)
    cli.add_flag(lo, "--supcon-weight", type=float, default=0.5)
    cli.add_flag(lo, "--supcon-temperature", type=float, default=0.1)


def _add_training_args(p: argparse.ArgumentParser) -> None:
    o = p.add_argument_group("optimizer and evaluation")
    cli.add_flag(o, "--lr", type=float, default=1e-3,
                 help="learning rate of new parts (--head-lr); a --pretrained DINO and a --detector-weights "
                      "detector get lr/10 (--base-lr)")
    cli.add_flag(o, "--gradient-accumulation", type=int, dest="grad_accum", default=argparse.SUPPRESS,
                 help="the seed's name for --grad-accum")
    cli.add_flag(o, "--score-threshold", type=float, default=0.5, help="detection score for ST-IoU and --predict")
    i = p.add_argument_group("inference and profiling")
    cli.add_flag(i, "--predict", action="store_true",
                 help="write detections for every video under --data-root (challenge submission format)")
    cli.add_flag(i, "--weights", default=None, metavar="CKPT",
                 help="best_model.pt for --predict, --evaluate, --export")
    cli.add_flag(i, "--export", choices=["onnx"], default=None,
                 help="write --weights as two ONNX models beside it (support encoder: references -> support "
                      "features; detector: frames + support features -> raw head outputs, dynamic batch), each "
                      "checked with ONNX Runtime")
    cli.add_flag(i, "--out", default=None, metavar="JSON", help="--predict output (default predictions.json)")
    cli.add_flag(i, "--preview", default=None, metavar="DIR", help="also write annotated preview videos here")
    cli.add_flag(i, "--profile", type=int, nargs="?", const=PROFILE_BARE, default=0, metavar="N",
                 help=f"run N training steps (episodes; bare --profile: --profile-episodes, default "
                      f"{PROFILE_EPISODES}), print a time breakdown and cache hit rates, then exit")
    cli.add_flag(i, "--profile-episodes", type=int, default=None, metavar="N",
                 help="episodes (training steps) --profile runs, the seed profiler's flag; implies --profile")


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    pre, _ = parser.parse_known_args(argv)
    parser.set_defaults(**STAGES[pre.stage or 2])
    args = cli.parse_script_args(parser, argv, DEMO_DEFAULTS)
    pretrained = args.pretrained or args.pretrained_weights or args.detector_weights
    args = cli.set_default_lrs(parser, argv, args, args.lr / 10 if pretrained else args.lr, args.lr)
    args = cli.with_values(args, profile=_profile_steps(parser, args))
    if args.detector_weights and args.init_from:
        parser.error("--detector-weights and --init-from both set the detector's weights (--init-from all of "
                     "the model's); give one")
    if args.image_size % 32:
        parser.error(f"--image-size must be a multiple of 32 (the detector's largest stride), got {args.image_size}")
    try:
        resolve_cap(args.frame_cache_max_side, args.image_size)
    except ValueError as exc:
        parser.error(str(exc))
    if args.demo:     # --demo replaces a recipe's data paths
        args = cli.with_values(args, data_root=args.demo_dir, annotations=None, test_data_root=None,
                               split_file=args.split_file or os.path.join(args.demo_dir, "splits.txt"))
    for line in seed_flag_notices(args):
        cli.notice(line)
    return args


def _profile_steps(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """``--profile [N]`` and the seed's ``--profile-episodes N`` -> episodes to profile (0: train)."""
    episodes = args.profile_episodes
    if episodes is not None and episodes < 1:
        parser.error(f"--profile-episodes must be >= 1, got {episodes}")
    if args.profile == PROFILE_BARE:
        return episodes or PROFILE_EPISODES
    if args.profile < 0:
        parser.error(f"--profile takes a number of episodes >= 1, got {args.profile}")
    if args.profile and episodes and episodes != args.profile:
        parser.error(f"--profile {args.profile} and --profile-episodes {episodes} disagree; give one")
    return args.profile or episodes or 0


def seed_flag_notices(args: argparse.Namespace) -> list[str]:
    """One line per seed-only flag given (:data:`SEED_ONLY`), said once at start (:func:`src.cli.notice`)."""
    return [f"--{dest.replace('_', '-')} is accepted for the seed's recipes and does nothing here: {why}"
            for dest, why in SEED_ONLY.items() if getattr(args, dest, None) is not None]
