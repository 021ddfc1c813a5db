"""``train_yolov8n_refdet.py``'s plugin: reference-based detection in drone video (Zalo AI 2025 AeroEyes),
trained episodically on the shared engine and scored with the challenge's ST-IoU.

Data: :mod:`src.data.aeroeyes` (layout), :mod:`src.data.frames` (frame cache, decoding),
:mod:`src.data.refdet` (episodes, augmentation, whole-video clips); model: :mod:`src.models.refdet`;
loss: :mod:`src.losses.refdet`; metric: :mod:`src.metrics.refdet`; inference: :mod:`src.tasks.refdet_inference`;
``--profile``: :mod:`src.tasks.refdet_profile`; flags: :mod:`src.tasks.refdet_args`. Monitors ``valid_st_iou``.
"""
from __future__ import annotations

import logging
import os

import torch
from PIL import Image
from torch import nn

from src.data.images import IMAGENET_MEAN, IMAGENET_STD
from src.errors import DataError
from src.losses.refdet import RefDetCriterion
from src.metrics.meter import WithLoss
from src.metrics.refdet import RefDetMeter
from src.models.refdet import FrameDetector, RefDetModel, SupportCache, build_refdet_model, postprocess, to_original
from src.tasks.refdet_inference import MODEL_KEYS, write_submissions
from src.training.checkpoint import load_checkpoint, unwrap_model
from src.training.plots import draw_grounding, grounding_samples_figure, save_figure
from src.training.task import Task

log = logging.getLogger("src")


# head outputs shared by every frame of a batch (the others are per frame, first dimension B)
SHARED_OUTPUTS = ("anchors", "strides")


# ----------------------------------------------------------------------------- task

class RefDetTask(Task):
    """Episodic training step; whole-video evaluation with ST-IoU (challenge definition) and mAP50."""

    name = "refdet"
    monitor = "valid_st_iou"
    mode = "max"

    def __init__(self, model_config: dict, criterion: RefDetCriterion, score_threshold: float = 0.5,
                 swap_negatives: bool = True) -> None:
        super().__init__(model_config, [model_config["image_size"]] * 2)
        self.criterion, self.score_threshold = criterion, score_threshold
        self.swap_negatives = swap_negatives
        self.meters, self.submission_step = {}, None     # split -> its last RefDetMeter; --evaluate's frame step
        self.truth: dict[str, dict[str, dict]] = {}       # split -> video_id -> frame -> boxes (pixels)
        self.cache: SupportCache | None = None
        self._supports: dict[str, torch.Tensor] = {}    # video -> prototype, during one evaluation
        self.cache_rates: list[float] = []
        self._samples: dict[str, list] = {}
        self._criterion_device: torch.device | None = None

    def _crit(self, device: torch.device) -> RefDetCriterion:
        if self._criterion_device != device:
            self.criterion.to(device)
            self._criterion_device = device
        return self.criterion

    def training_step(self, model: nn.Module, batch: dict):
        device = batch["images"].device
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

    # support-cache hit rate of the epoch that just trained (validation does not use the cache)
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

    def new_meter(self, split: str) -> WithLoss:
        self._samples[split], self._supports = [], {}
        self.meters[split] = RefDetMeter(self.score_threshold, max_boxes_per_frame=1, sweep=True)
        return WithLoss(self.meters[split])

    def validation_step(self, model: nn.Module, item: dict, meter: WithLoss, split: str) -> None:
        """One chunk of a video's frames (:class:`~src.data.refdet.VideoClips`)."""
        net: RefDetModel = unwrap_model(model)
        vid, device = item["video_id"], item["images"].device
        if item["support"] is not None:     # a video's first chunk: its prototype, computed once
            self._supports[vid] = net.encode_support(item["support"][None])
        images = item["images"]
        zeros = torch.zeros(images.shape[0], dtype=torch.long, device=device)
        out = net.detect(images, self._supports[vid], zeros)
        truth, scale = self.truth.get(split, {}).get(vid, {}), item["scale"]
        if item["last"]:
            self._count_video_faults(vid, truth, item)
        per_frame = [truth.get(f, []) for f in item["frames"]]
        meter.add(loss_sum=self._frame_loss_sum(out, per_frame, scale, device), loss_weight=float(len(per_frame)))
        gt, mask = _frame_targets(per_frame, scale, device)
        samples = self._samples[split]
        for j, (frame, (boxes, scores)) in enumerate(zip(item["frames"], postprocess(out))):
            meter.inner.update(vid, frame, truth.get(frame, []), to_original(boxes, scale, item["orig_size"]).cpu(),
                               scores.cpu())
            if len(samples) < 8 and (frame in truth or scores.numel() and scores[0] >= self.score_threshold) \
                    and frame % 7 == 0:
                samples.append(self._sample(images[j], boxes, scores, gt[j][mask[j]], f"{vid} frame {frame}"))

    def _frame_loss_sum(self, out: dict, per_frame: list, scale: float, device: torch.device) -> float:
        """The chunk's loss as the sum of each frame's own loss: the criterion normalizes by the targets
        of what it is given, so a whole chunk at once would make ``valid_loss`` depend on how a video
        is cut into chunks (``--batch-size``)."""
        total = 0.0
        for j, boxes in enumerate(per_frame):
            frame = {k: (v if k in SHARED_OUTPUTS else v[j:j + 1]) for k, v in out.items()}
            gt, mask = _frame_targets([boxes], scale, device)
            total += float(self._crit(device)(frame, gt, mask, torch.zeros(1, dtype=torch.long, device=device))[0])
        return total

    def _count_video_faults(self, vid: str, truth: dict, item: dict) -> None:
        """An evaluated video's annotated frames past its real end, and a decoder error that cut it short,
        are counted as in training's frame cache (``frame_past_end``, ``truncated_video``)."""
        past = sorted(f for f in truth if f >= item["num_frames_total"])
        for f in past:
            self.warnings.add("frame_past_end", f"{vid}/{f}", quiet=True)
        if past:
            log.warning("%s: %d annotated frame(s) at or past the video's end (%d frames; first %d): not scored",
                        vid, len(past), item["num_frames_total"], past[0])
        if item["truncated"]:
            self.warnings.add("truncated_video", vid, item["truncated"])

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
        return FrameDetector(model, self.model_config["support_size"])

    def sample_figure(self, split: str, title: str):
        if not self._samples.get(split):
            return None
        return grounding_samples_figure(self._samples[split], f"{title}: thick = prediction with score >= "
                                                              f"{self.score_threshold}, thin = truth")

    def final_artifacts(self, model: nn.Module, run_dir: str, device: torch.device) -> None:
        fig = self.sample_figure("valid", "validation (best checkpoint)")
        if fig is not None:
            save_figure(fig, os.path.join(run_dir, "sample_predictions.png"), dpi=110)
        if self.submission_step:    # --evaluate sets it: the detections ST-IoU scored, as --predict writes them
            write_submissions(self.meters, self.truth, run_dir, self.submission_step)


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


# ----------------------------------------------------------------------------- model

def model_config(args) -> dict:
    """``build_refdet_model``'s arguments and what inference needs, recorded in ``best_model.pt``."""
    return {k: getattr(args, k) for k in MODEL_KEYS} | {"model_name": args.model_name or "yolov8n_refdet",
                                                         "score_threshold": args.score_threshold}


def build_task(args) -> RefDetTask:
    criterion = RefDetCriterion(box_loss=args.bbox_loss, cls_loss=args.cls_loss, box_weight=args.box_weight,
                                dfl_weight=args.dfl_weight, cls_weight=args.cls_weight,
                                supcon_weight=args.supcon_weight, supcon_temperature=args.supcon_temperature)
    return RefDetTask(model_config(args), criterion, args.score_threshold, args.swap_negatives)


def build_model(args) -> RefDetModel:
    model = build_refdet_model(**{k: getattr(args, k) for k in MODEL_KEYS if k != "image_size"},
                               pretrained=args.pretrained or bool(args.pretrained_weights),
                               pretrained_weights=args.pretrained_weights, support_cache_mb=args.support_cache_size_mb,
                               # a resumed run's last.pt holds the detector: only its parameter group is kept
                               detector_weights=None if args.resume else args.detector_weights,
                               pretrained_detector=bool(args.detector_weights))
    if model.detector_init:
        log.info(model.detector_init)
    if args.init_from:
        init_from(model, args.init_from)
    return model


def init_from(model: nn.Module, path: str) -> None:
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

