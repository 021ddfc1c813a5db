"""``train_yolov8n_refdet.py``: reference-based detection in drone video (Zalo AI 2025 AeroEyes),
trained episodically through the shared loop and scored with the challenge's ST-IoU.

Data: :mod:`src.data.aeroeyes` (layout), :mod:`src.data.frames` (frame cache, decoding),
:mod:`src.data.refdet` (episodes, augmentation, whole-video clips); model: :mod:`src.models.refdet`;
loss: :mod:`src.losses.refdet`; metric: :mod:`src.metrics.refdet`. Monitors ``valid_st_iou``.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections import defaultdict
from contextlib import contextmanager
from typing import Sequence

import torch
from PIL import Image
from torch import nn
from torchvision.ops import nms

from src import cli
from src.errors import DataError
from src.data.aeroeyes import VideoRecord, read_aeroeyes, split_videos
from src.data.demo_refdet import ensure_demo_refdet
from src.data.images import IMAGENET_MEAN, IMAGENET_STD
from src.data.loading import DataWarnings
from src.data.refdet import EpisodeSampler, RefDetFrames, VideoClips, collate_episode, video_truth
from src.losses.refdet import RefDetCriterion, decode_boxes
from src.metrics.refdet import RefDetMeter, submission
from src.models.refdet import RefDetModel, SupportCache, build_refdet_model
from src.data.frames import ensure_frame_cache, iter_video_frames
from src.training import distributed as D
from src.training.checkpoint import atomic_json_dump, load_checkpoint, unwrap_model
from src.training.loop import build_train_config, fit, seed_everything
from src.training.plots import draw_grounding, plot_grounding_samples
from src.training.run_dir import prepare_run_dir, setup_logging, write_config

log = logging.getLogger("src")

MODEL_KEYS = ("dino_model", "support_size", "freeze_dino_layers", "fusion", "embed_dim", "siamese", "image_size")

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


# ----------------------------------------------------------------------------- task

def _to_device(batch: dict, device: torch.device) -> dict:
    return {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}


@torch.no_grad()
def postprocess(out: dict, max_det: int = 10, min_score: float = 0.01, iou: float = 0.5):
    """Per frame: (boxes (n, 4) xyxy input pixels, scores (n,)) after NMS, best first."""
    scores = out["logits"].float().sigmoid()                         # B, A
    boxes = decode_boxes(out)                                        # B, A, 4
    results = []
    for s, b in zip(scores, boxes):
        top = s.topk(min(100, s.numel()))
        keep = top.values >= min_score
        cand_s, cand_b = top.values[keep], b[top.indices[keep]]
        kept = nms(cand_b, cand_s, iou)[:max_det]
        results.append((cand_b[kept], cand_s[kept]))
    return results


class RefDetTask:
    """Episodic training step; whole-video evaluation with ST-IoU (challenge definition) and mAP50."""

    name = "refdet"
    monitor = "valid_st_iou"
    mode = "max"

    def __init__(self, model_config: dict, criterion: RefDetCriterion, score_threshold: float = 0.5,
                 swap_negatives: bool = True) -> None:
        self.model_config, self.criterion, self.score_threshold = model_config, criterion, score_threshold
        self.swap_negatives = swap_negatives
        size = model_config["image_size"]
        self.fps_image_size = [size, size]
        self.warnings = DataWarnings()
        self.truth: dict[str, dict[str, dict]] = {}       # split -> video_id -> frame -> boxes (pixels)
        self.cache: SupportCache | None = None
        self.cache_rates: list[float] = []
        self._samples: dict[str, list] = {}
        self._criterion_device: torch.device | None = None

    def _crit(self, device: torch.device) -> RefDetCriterion:
        if self._criterion_device != device:
            self.criterion.to(device)
            self._criterion_device = device
        return self.criterion

    def training_step(self, model: nn.Module, batch: dict, device: torch.device):
        self.warnings.add_many(batch["bad"])
        if "images" not in batch:
            return None, 0
        qv, boxes, mask = batch["query_video"], batch["boxes"], batch["box_mask"]
        V = batch["support"].shape[0]
        if not (self.swap_negatives and V > 1):
            out = model(batch["images"], batch["support"], qv, batch["support_keys"])
            loss, _ = self._crit(device)(out, boxes, mask, qv)
            return loss, int(batch["images"].shape[0])
        # swapped-reference negatives: each frame also meets the next video's references, and nothing
        # may fire (the frame holds another object). Without them a model can memorize the training
        # targets and ignore the reference; with them, firing depends on the reference (the negative
        # pairs of siamese trackers, e.g. DaSiamRPN, Zhu et al. 2018, https://arxiv.org/abs/1808.06048)
        negative = (qv + 1) % V
        out = model(batch["images"], batch["support"], qv, batch["support_keys"], negative_video=negative)
        loss, _ = self._crit(device)(out, torch.cat([boxes, torch.zeros_like(boxes)]),
                                     torch.cat([mask, torch.zeros_like(mask)]), torch.cat([qv, negative]))
        return loss, int(batch["images"].shape[0])

    # support-cache hit rate of the epoch that just trained (the loop calls this before validation)
    def epoch_stats(self) -> dict[str, float]:
        if self.cache is None:
            return {}
        hits, misses = self.cache.reset_counts()
        rate = hits / (hits + misses) if hits + misses else float("nan")
        self.cache_rates.append(rate)
        log.info("support cache: %d hits, %d misses (hit rate %.1f%%), %d entries", hits, misses, 100 * rate,
                 len(self.cache))
        return {"support_cache_hit_rate": rate}

    def summary(self) -> dict:
        out = {"param_breakdown": self.model_config.get("param_breakdown", {})}
        if self.cache is not None:
            out["support_cache_hit_rate"] = self.cache_rates
        return out

    def state_dict(self) -> dict:
        return {"criterion": self.criterion.state_dict(), "cache_rates": self.cache_rates}

    def load_state_dict(self, state: dict) -> None:
        self.criterion.load_state_dict(state["criterion"])
        self.cache_rates = list(state.get("cache_rates", []))

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader, device: torch.device, split: str) -> dict[str, float]:
        was_training = model.training
        model.eval()
        net: RefDetModel = unwrap_model(model)
        meter = RefDetMeter(self.score_threshold, max_boxes_per_frame=1)
        truth_all = self.truth.get(split, {})
        loss_sum, n, samples = 0.0, 0, []
        supports = {}      # chunks of different videos may interleave when several workers decode
        for item in loader:
            if "bad" in item:
                self.warnings.add(item["bad"], item["video_id"])
                continue
            vid = item["video_id"]
            if item["support"] is not None:     # a video's first chunk: its prototype, computed once
                supports[vid] = net.encode_support(item["support"][None].to(device))
            support = supports[vid]
            images = item["images"].to(device)
            zeros = torch.zeros(images.shape[0], dtype=torch.long, device=device)
            out = net.detect(images, support, zeros)
            truth, scale = truth_all.get(vid, {}), item["scale"]
            gt, mask = _frame_targets([truth.get(f, []) for f in item["frames"]], scale, device)
            loss, _ = self._crit(device)(out, gt, mask, zeros)
            loss_sum, n = loss_sum + float(loss) * images.shape[0], n + images.shape[0]
            for j, (frame, (boxes, scores)) in enumerate(zip(item["frames"], postprocess(out))):
                meter.update(vid, frame, truth.get(frame, []), to_original(boxes, scale, item["orig_size"]).cpu(),
                             scores.cpu())
                if len(samples) < 8 and (frame in truth or scores.numel() and scores[0] >= self.score_threshold) \
                        and frame % 7 == 0:
                    samples.append(self._sample(item["images"][j], boxes, scores, gt[j][mask[j]], f"{vid} frame {frame}"))
        model.train(was_training)
        self._samples[split] = samples
        for state in D.all_gather_objects(meter.state()):
            meter.merge([state])
        totals = D.all_reduce_sum([loss_sum, float(n)], device)
        result = meter.compute()
        # the ST-IoU a better --score-threshold would give (chosen on this split: a guide, not a test figure)
        sweep = meter.threshold_sweep([round(0.05 * i, 2) for i in range(1, 20)])
        best = max(sweep, key=sweep.get)
        return {"loss": totals[0] / totals[1] if totals[1] else float("nan"), "st_iou": result["st_iou"],
                "map50": result["map50"], "st_iou_best_threshold": best, "st_iou_at_best_threshold": sweep[best]}

    def _sample(self, image: torch.Tensor, boxes, scores, true_boxes, title: str):
        mean, std = torch.tensor(IMAGENET_MEAN)[:, None, None], torch.tensor(IMAGENET_STD)[:, None, None]
        img = (image.float().cpu() * std + mean).clamp(0, 1)
        pil = Image.fromarray((img.permute(1, 2, 0).numpy() * 255).astype("uint8"))
        keep = scores >= self.score_threshold
        drawn = draw_grounding(pil, ["target"], [boxes[keep][:1].cpu().tolist()], [scores[keep][:1].cpu().tolist()],
                               [true_boxes.cpu().tolist()])
        return drawn, title

    def example_input(self, batch_size: int, device: torch.device) -> torch.Tensor:
        size = self.model_config["image_size"]
        return torch.randn(batch_size, 3, size, size, device=device)

    def speed_module(self, model: nn.Module) -> nn.Module:
        """FPS = frames per second of per-frame detection with the video's support computed once
        (how a video is processed); the support encoder's one-off cost is not per frame."""
        return _FrameDetector(model, self.model_config["support_size"])

    def final_artifacts(self, model: nn.Module, run_dir: str, device: torch.device) -> None:
        if self._samples.get("valid"):
            plot_grounding_samples(self._samples["valid"], os.path.join(run_dir, "sample_predictions.png"),
                                   title=f"validation (best checkpoint): thick = prediction with score >= "
                                         f"{self.score_threshold}, thin = truth")


def to_original(boxes: torch.Tensor, scale: float, orig_size) -> torch.Tensor:
    """Letterboxed-input boxes -> the video's pixels, clipped to the frame (``orig_size`` = (H, W))."""
    h, w = orig_size
    out = boxes.float() / scale
    out[:, 0::2] = out[:, 0::2].clamp(0, w)
    out[:, 1::2] = out[:, 1::2].clamp(0, h)
    return out


def _frame_targets(per_frame: list, scale: float, device: torch.device):
    """Truth boxes of a chunk of frames (original pixels) -> padded (B, M, 4) input pixels + mask."""
    M = max(1, max(len(b) for b in per_frame))
    gt = torch.zeros(len(per_frame), M, 4, device=device)
    mask = torch.zeros(len(per_frame), M, dtype=torch.bool, device=device)
    for i, boxes in enumerate(per_frame):
        if len(boxes):
            gt[i, :len(boxes)] = torch.as_tensor(boxes, dtype=torch.float32, device=device) * scale
            mask[i, :len(boxes)] = True
    return gt, mask


class _FrameDetector(nn.Module):
    def __init__(self, model: nn.Module, support_size: int) -> None:
        super().__init__()
        self.model, self.support_size = model, support_size
        self._support = None

    def forward(self, images: torch.Tensor) -> dict:
        if self._support is None:
            support = torch.randn(1, 3, 3, self.support_size, self.support_size, device=images.device)
            self._support = self.model.encode_support(support)
        zeros = torch.zeros(images.shape[0], dtype=torch.long, device=images.device)
        return self.model.detect(images, self._support, zeros)


# ----------------------------------------------------------------------------- profiling

@contextmanager
def _timed(totals: dict, key: str, device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    yield
    if device.type == "cuda":   # kernels are asynchronous: time them, not their launch
        torch.cuda.synchronize(device)
    totals[key] += time.perf_counter() - t0


def profile(model: RefDetModel, criterion: RefDetCriterion, loader, device: torch.device, steps: int,
            autocast) -> dict[str, float]:
    """Run ``steps`` training steps (forward + backward, no optimizer step) timing each part, like
    the seed's profiling script; print the table and the support-cache hit rate; return the totals."""
    model.to(device).train()
    criterion.to(device)
    totals: dict[str, float] = defaultdict(float)
    it, done = iter(loader), 0
    t_start = time.perf_counter()
    while done < steps:
        t0 = time.perf_counter()
        try:
            batch = next(it)
        except StopIteration:
            it = iter(loader)
            continue
        if "images" not in batch:
            continue
        batch = _to_device(batch, device)
        totals["data"] += time.perf_counter() - t0
        with autocast():
            with _timed(totals, "support encoder", device):
                sup = model.encode_support(batch["support"], batch["support_keys"])
            with _timed(totals, "detector (backbone+neck)", device):
                feats = model.features(batch["images"])
            with _timed(totals, "fusion", device):
                fused = model.fuse(feats, sup, batch["query_video"])
            with _timed(totals, "head", device):
                out = model.predict(fused, sup, batch["query_video"])
            with _timed(totals, "loss (assigner + terms)", device):
                loss, _ = criterion(out, batch["boxes"], batch["box_mask"], batch["query_video"])
        with _timed(totals, "backward", device):
            loss.backward()
        model.zero_grad(set_to_none=True)
        done += 1
    wall = time.perf_counter() - t_start
    lines = [f"profile: {steps} steps on {device}, {wall:.2f} s wall ({1000 * wall / steps:.1f} ms/step)",
             f"{'part':<28}{'total s':>9}{'ms/step':>10}{'share':>8}"]
    for key, value in totals.items():
        lines.append(f"{key:<28}{value:>9.3f}{1000 * value / steps:>10.1f}{100 * value / wall:>7.1f}%")
    if model.support_cache is not None:
        c = model.support_cache
        rate = c.hits / max(1, c.hits + c.misses)
        lines.append(f"support cache: {c.hits} hits / {c.misses} misses = {100 * rate:.1f}% hit rate "
                     f"({len(c)} entries)")
    else:
        lines.append("support cache: off (no frozen support-encoder blocks or --support-cache-size-mb 0)")
    print("\n".join(lines))
    return dict(totals)


# ----------------------------------------------------------------------------- inference API

def load_for_inference(weights: str, device: torch.device) -> tuple[RefDetModel, dict]:
    ckpt = load_checkpoint(weights)
    cfg = ckpt.get("model_config") or {}
    if ckpt.get("task") != RefDetTask.name or "dino_model" not in cfg:
        raise DataError(f"{weights}: not a train_yolov8n_refdet.py checkpoint")
    model = build_refdet_model(**{k: cfg[k] for k in MODEL_KEYS if k != "image_size"})
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval(), cfg


@torch.no_grad()
def detect_video(model: RefDetModel, clips, device: torch.device, threshold: float) -> dict[int, list]:
    """{frame: [box xyxy original pixels]} of one video's VideoClips chunks (top-1 per frame >= threshold)."""
    found: dict[int, list] = {}
    support = None
    for item in clips:
        if "bad" in item:
            raise DataError(f"{item['video_id']}: {item['bad']}")
        if item["support"] is not None:
            support = model.encode_support(item["support"][None].to(device))
        images = item["images"].to(device)
        out = model.detect(images, support, torch.zeros(images.shape[0], dtype=torch.long, device=device))
        for frame, (boxes, scores) in zip(item["frames"], postprocess(out, max_det=1, min_score=threshold)):
            if scores.numel():
                found[frame] = to_original(boxes[:1], item["scale"], item["orig_size"]).cpu().tolist()
    return found


def write_preview(video_path: str, found: dict[int, list], out_path: str, fps: float = 25.0) -> None:
    """The video with the detections drawn, encoded with PyAV (mpeg4, widely playable)."""
    import av
    import numpy as np
    from PIL import ImageDraw

    with av.open(out_path, "w") as container:
        stream = None
        for frame, image in iter_video_frames(video_path):
            if stream is None:
                stream = container.add_stream("mpeg4", rate=round(fps))
                stream.width, stream.height = image.width - image.width % 2, image.height - image.height % 2
                stream.pix_fmt = "yuv420p"
            draw = ImageDraw.Draw(image)
            for box in found.get(frame, []):
                draw.rectangle(box, outline=(255, 40, 40), width=3)
            arr = np.asarray(image)[:stream.height, :stream.width]
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(arr), format="rgb24")):
                container.mux(packet)
        if stream is not None:
            for packet in stream.encode():
                container.mux(packet)


def predict_main(args, threshold_typed: bool = False) -> int:
    if not args.weights:
        raise DataError("--predict needs --weights RUN_DIR/best_model.pt")
    if not args.data_root:
        raise DataError("--predict needs --data-root (a folder with samples/<video_id>/)")
    device = D.resolve_device(args.device)
    model, cfg = load_for_inference(args.weights, device)
    # the threshold the model was validated with, unless one is typed
    threshold = args.score_threshold if threshold_typed else cfg.get("score_threshold", args.score_threshold)
    print(f"score threshold {threshold}")
    warnings = DataWarnings()
    records = read_aeroeyes(args.data_root, args.annotations, warnings, require_boxes=False)
    found_all = {}
    for rec in records:
        t0 = time.perf_counter()
        clips = VideoClips([rec], cfg["image_size"], cfg["support_size"], stride=args.frame_stride,
                           chunk=args.batch_size)
        found = detect_video(model, clips, device, threshold)
        found_all[rec.video_id] = found
        print(f"{rec.video_id}: {len(found)} frames with the object ({time.perf_counter() - t0:.1f} s)")
        if args.preview:
            os.makedirs(args.preview, exist_ok=True)
            target = os.path.join(args.preview, f"{rec.video_id}_preview.mp4")
            write_preview(rec.video_path, found, target)
            print(f"{rec.video_id}: preview {target}")
    out = args.out or "predictions.json"
    atomic_json_dump(submission(found_all, frame_step=args.frame_stride,
                                video_ids=[r.video_id for r in records]), out)
    print(f"wrote {out} ({len(records)} videos)")
    if warnings.counts():
        print(f"data warnings: {warnings.counts()}", file=sys.stderr)
    return 0


# ----------------------------------------------------------------------------- script

def build_parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
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
    cli.add_flag(d, "--background-frames", type=int, default=20,
                 help="unannotated frames per video extracted as negatives")
    cli.add_flag(d, "--frame-stride", type=int, default=1, help="evaluate every N-th frame of a video")
    cli.add_flag(d, "--image-size", type=int, default=640, help="square letterbox side of query frames (multiple of 32)")
    cli.add_flag(d, "--support-size", type=int, default=224, help="reference image side (multiple of the ViT patch)")
    cli.add_flag(d, "--support-views", type=int, default=4,
                 help="fixed augmented versions of each video's references (1 = no support augmentation)")
    cli.add_flag(d, "--augment", action=argparse.BooleanOptionalAction, default=True,
                 help="flips, scale/translate and colour jitter on query frames")
    cli.add_flag(d, "--permute-colours", action=argparse.BooleanOptionalAction, default=False,
                 help="per episode, reorder the RGB channels of a video's frames and its references alike (one of "
                      "six orders), so few training objects cannot be memorized as the targets (on in --demo)")
    cli.add_flag(d, "--n-way", type=int, default=2, help="videos per episode")
    cli.add_flag(d, "--n-query", type=int, default=4, help="annotated frames per video per episode")
    cli.add_flag(d, "--n-background", type=int, default=1, help="background frames per video per episode")
    cli.add_flag(d, "--n-episodes", type=int, default=500, help="episodes (optimizer micro-steps) per epoch")
    cli.add_flag(d, "--frame-cache-size", type=int, default=None,
                 help="accepted for the seed's recipes; frames come from the on-disk JPEG cache instead")
    cli.add_flag(d, "--demo-dir", default="data/demo/refdet", help="where --demo writes its videos")
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
    cli.add_flag(m, "--siamese", action=argparse.BooleanOptionalAction, default=True,
                 help="also encode the references with the detector's own backbone (a prototype in the query "
                      "features' space, added to the DINO one)")
    cli.add_flag(m, "--support-cache-size-mb", type=float, default=200.0,
                 help="support-feature cache (frozen DINO part) in MB; 0 disables")
    cli.add_flag(m, "--init-from", default=None, metavar="CKPT",
                 help="start a new run from another run's weights (best_model.pt / last.pt / run dir)")
    lo = p.add_argument_group("loss")
    cli.add_flag(lo, "--swap-negatives", action=argparse.BooleanOptionalAction, default=True,
                 help="also pair each training frame with another episode video's references, as an "
                      "all-background example (teaches the detector to fire only on the referenced object)")
    cli.add_flag(lo, "--bbox-loss", choices=["ciou", "wiou"], default="ciou")
    cli.add_flag(lo, "--cls-loss", choices=["bce", "focal"], default="bce")
    cli.add_flag(lo, "--box-weight", type=float, default=7.5)
    cli.add_flag(lo, "--dfl-weight", type=float, default=1.5)
    cli.add_flag(lo, "--cls-weight", type=float, default=0.5)
    cli.add_flag(lo, "--supcon-weight", type=float, default=0.5)
    cli.add_flag(lo, "--supcon-temperature", type=float, default=0.1)
    cli.add_training_args(p)
    cli.add_data_args(p)
    cli.add_output_args(p, "yolov8n_refdet")
    o = p.add_argument_group("optimizer and evaluation")
    cli.add_flag(o, "--lr", type=float, default=1e-3,
                 help="learning rate of new parts (--head-lr); a --pretrained DINO gets lr/10 (--base-lr)")
    cli.add_flag(o, "--gradient-accumulation", type=int, dest="grad_accum", default=argparse.SUPPRESS,
                 help="the seed's name for --grad-accum")
    cli.add_flag(o, "--score-threshold", type=float, default=0.5, help="detection score for ST-IoU and --predict")
    p.set_defaults(weight_decay=5e-4, clip_grad=10.0, batch_size=32, patience=10, epochs=30, num_workers=2, ema_decay=0.9999)
    i = p.add_argument_group("inference and profiling")
    cli.add_flag(i, "--predict", action="store_true",
                 help="write detections for every video under --data-root (challenge submission format)")
    cli.add_flag(i, "--weights", default=None, metavar="CKPT", help="best_model.pt for --predict")
    cli.add_flag(i, "--out", default=None, metavar="JSON", help="--predict output (default predictions.json)")
    cli.add_flag(i, "--preview", default=None, metavar="DIR", help="also write annotated preview videos here")
    cli.add_flag(i, "--profile", type=int, default=0, metavar="N",
                 help="run N training steps, print a time breakdown and cache hit rates, then exit")
    return p


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    pre, _ = parser.parse_known_args(argv)
    parser.set_defaults(**STAGES[pre.stage or 2])
    args = cli.parse_script_args(parser, argv, DEMO_DEFAULTS)
    pretrained = args.pretrained or args.pretrained_weights
    cli.set_default_lrs(parser, argv, args, args.lr / 10 if pretrained else args.lr, args.lr)
    if args.image_size % 32:
        parser.error(f"--image-size must be a multiple of 32 (the detector's largest stride), got {args.image_size}")
    return args


def _valid_spec(value: str):
    if "," in value or not value.replace(".", "", 1).isdigit():
        return [v for v in value.split(",") if v]
    return float(value) if "." in value else int(value)


def _limit(records: list[VideoRecord], limit: int | None, seed: int) -> list[VideoRecord]:
    if not limit or len(records) <= limit:
        return records
    g = torch.Generator().manual_seed(seed)
    return [records[i] for i in sorted(torch.randperm(len(records), generator=g)[:limit].tolist())]


def build_data(args, dist: D.DistInfo, warnings: DataWarnings) -> dict:
    """Train/valid(/test) loaders and the truth of every evaluated video."""
    if args.demo:
        if dist.is_main:
            log.info("demo data: %s", os.path.abspath(args.demo_dir))
            ensure_demo_refdet(args.demo_dir)
        D.barrier()
        args.data_root = args.demo_dir
        args.split_file = args.split_file or os.path.join(args.demo_dir, "splits.txt")
        args.annotations = args.test_data_root = None      # --demo replaces a recipe's data paths
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
    # rank 0 extracts (and counts the warnings); the others read the finished indexes afterwards
    indexes = ensure_frame_cache(train, cache_dir, args.background_frames, args.seed, warnings) if dist.is_main else None
    D.barrier()
    if indexes is None:
        indexes = ensure_frame_cache(train, cache_dir, args.background_frames, args.seed, DataWarnings(),
                                     log_progress=False)
    train = [r for r in train if r.video_id in indexes]
    frames = RefDetFrames(train, indexes, args.image_size, args.support_size, args.support_views, augment=args.augment)
    sampler = EpisodeSampler(frames, args.n_way, args.n_query, args.n_background, args.n_episodes, args.support_views,
                             args.permute_colours, seed=args.seed, rank=dist.rank, world_size=dist.world_size)
    loader_kw = dict(num_workers=args.num_workers, pin_memory=args.pin_memory)
    out = {"train": torch.utils.data.DataLoader(frames, batch_sampler=sampler, collate_fn=collate_episode,
                                                **loader_kw),
           "truth": {}, "counts": {"train": len(train), "valid": len(valid)}}
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


def main(argv: Sequence[str] | None = None,
         description: str = "Train a reference-based drone-video detector.") -> int:
    parser = build_parser(description)
    args = parse_args(parser, argv)
    if args.predict:
        return predict_main(args, "score_threshold" in cli.explicit_args(parser, argv))
    if args.frame_cache_size is not None:
        log.info("--frame-cache-size: frames are read from the on-disk JPEG cache; the flag is accepted and unused")
    dist = D.init_distributed(args.device)
    try:
        device = D.resolve_device(args.device, dist.local_rank)
        setup_logging(None, dist.is_main)
        name = args.model_name or "yolov8n_refdet"
        model_config = {k: getattr(args, k) for k in MODEL_KEYS} | {"model_name": name,
                                                                     "score_threshold": args.score_threshold}
        criterion = RefDetCriterion(box_loss=args.bbox_loss, cls_loss=args.cls_loss, box_weight=args.box_weight,
                                    dfl_weight=args.dfl_weight, cls_weight=args.cls_weight,
                                    supcon_weight=args.supcon_weight, supcon_temperature=args.supcon_temperature)
        task = RefDetTask(model_config, criterion, args.score_threshold, args.swap_negatives)
        data = build_data(args, dist, task.warnings)
        task.truth = data["truth"]
        seed_everything(args.seed)
        model = build_refdet_model(**{k: model_config[k] for k in MODEL_KEYS if k != "image_size"},
                                   pretrained=args.pretrained or bool(args.pretrained_weights),
                                   pretrained_weights=args.pretrained_weights,
                                   support_cache_mb=args.support_cache_size_mb)
        if args.init_from:
            _init_from(model, args.init_from)
        task.cache = model.support_cache
        breakdown = model.param_breakdown()
        model_config["param_breakdown"] = breakdown
        log.info("parameters: %s (total %s; trainable %s)", ", ".join(f"{k} {v:,}" for k, v in breakdown.items()),
                 f"{sum(breakdown.values()):,}", f"{sum(p.numel() for p in model.parameters() if p.requires_grad):,}")
        if args.profile:
            from src.training.loop import TrainConfig, _autocast
            autocast = _autocast(device, TrainConfig(amp=args.amp, amp_dtype=args.amp_dtype))[0]
            profile(model, criterion, data["train"], device, args.profile, autocast)
            return 0
        run_dir = prepare_run_dir(args.results_dir, name, args.resume, dist.is_main)
        setup_logging(run_dir, dist.is_main)
        record = dict(vars(args))
        if dist.is_main and not args.resume:
            write_config(run_dir, record, {"device": str(device), "world_size": dist.world_size})
        log.info("run dir %s | %s | device %s x %d | episodes of %d videos x (%d + %d frames), %d per epoch",
                 run_dir, name, device, dist.world_size, args.n_way, args.n_query, args.n_background, args.n_episodes)
        cfg = build_train_config(args)
        fit(model, task, data["train"], data["valid"], cfg, run_dir, device, dist, test_loader=data.get("test"),
            resume_from=args.resume, args_record=record)
    finally:
        D.cleanup_distributed()
    return 0


def _init_from(model: nn.Module, path: str) -> None:
    """Weights of another run (a new stage): the model only; optimizer, schedule and epochs start fresh."""
    if os.path.isdir(path):
        path = os.path.join(path, "best_model.pt")
    ckpt = load_checkpoint(path)
    if ckpt.get("task") not in (None, RefDetTask.name):
        raise DataError(f"--init-from {path}: a {ckpt.get('task')} checkpoint, not a refdet one")
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as exc:
        raise DataError(f"--init-from {path}: the architecture differs ({str(exc).splitlines()[0]}); "
                            f"use the same --dino-model/--support-size/--fusion/--embed-dim") from None
    log.info("initialized from %s (epoch %s, %s = %s)", path, ckpt.get("epoch"), ckpt.get("monitor"), ckpt.get("metric"))

