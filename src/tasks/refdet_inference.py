"""``train_yolov8n_refdet.py --predict``: every video of a folder through a ``best_model.pt``, frame by
frame with the video's prototype computed once, into the challenge's submission JSON (and optional
preview videos); :func:`write_submissions`, the same file from an evaluation's detections."""
from __future__ import annotations

import logging
import os
import sys
import time
from typing import Mapping

import torch

from src.data.aeroeyes import read_aeroeyes
from src.data.frames import iter_video_frames
from src.data.loading import DataWarnings
from src.data.refdet import VideoClips
from src.errors import DataError
from src.metrics.refdet import RefDetMeter, submission
from src.models.layers.fold import fold_conv_bn
from src.models.refdet import RefDetModel, build_refdet_model, postprocess, to_original
from src.training.checkpoint import atomic_json_dump, load_checkpoint
from src.training.run import start_run
from src.training.task import usable

log = logging.getLogger("src")
TASK_NAME = "refdet"
# build_refdet_model's arguments recorded in a checkpoint's model_config
MODEL_KEYS = ("dino_model", "support_size", "freeze_dino_layers", "fusion", "embed_dim", "siamese", "image_size")


def load_for_inference(weights: str, device: torch.device, fold: bool = False) -> tuple[RefDetModel, dict]:
    """The model a ``best_model.pt`` was trained as; ``fold``: the detector's Conv+BN pairs folded."""
    ckpt = load_checkpoint(weights)
    cfg = ckpt.get("model_config") or {}
    if ckpt.get("task") != TASK_NAME or "dino_model" not in cfg:
        raise DataError(f"{weights}: not a train_yolov8n_refdet.py checkpoint")
    model = build_refdet_model(**{k: cfg[k] for k in MODEL_KEYS if k != "image_size"})
    model.load_state_dict(ckpt["model"])
    if fold:
        fold_conv_bn(model)
    return model.to(device).eval(), cfg


@torch.no_grad()
def detect_video(model: RefDetModel, clips, device: torch.device,
                 threshold: float) -> tuple[dict[int, list], list[tuple[str, str]]]:
    """({frame: [box xyxy original pixels]}, problems) of one video's VideoClips chunks (top-1 per frame
    >= threshold). ``problems`` lists ``(key, reason)`` when the video (or its reference photos) could
    not be read; ``found`` then holds the frames detected before the failure."""
    found: dict[int, list] = {}
    support = None
    for item in clips:
        if not usable(item):
            return found, item["bad"]
        if item["support"] is not None:
            support = model.encode_support(item["support"][None].to(device))
        images = item["images"].to(device)
        out = model.detect(images, support, torch.zeros(images.shape[0], dtype=torch.long, device=device))
        for frame, (boxes, scores) in zip(item["frames"], postprocess(out, max_det=1, min_score=threshold)):
            if scores.numel():
                found[frame] = to_original(boxes[:1], item["scale"], item["orig_size"]).cpu().tolist()
    return found, []


def write_submissions(meters: Mapping[str, RefDetMeter], truth: Mapping[str, Mapping], run_dir: str,
                      frame_step: int = 1) -> list[str]:
    """Each evaluated split's detections, those its ST-IoU scored (``RefDetMeter.predictions()``), as
    ``--predict`` writes them: ``run_dir/submission_<split>.json`` lists every video of the split's truth
    in order, ``"detections": []`` for one without a detection (or that could not be read). The paths."""
    paths = []
    for split, meter in meters.items():
        pred, ids = meter.predictions(), list(truth.get(split, {}))
        ids += [v for v in pred if v not in ids]
        path = os.path.join(run_dir, f"submission_{split}.json")
        atomic_json_dump(submission(pred, frame_step=frame_step, video_ids=ids), path)
        log.info("%s submission file (%d videos): %s", split, len(ids), path)
        paths.append(path)
    return paths


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
    with start_run(args.device, args.threads) as run:
        return _predict(args, threshold_typed, run.device)


def _predict(args, threshold_typed: bool, device: torch.device) -> int:
    model, cfg = load_for_inference(args.weights, device, fold=True)
    # the threshold the model was validated with, unless one is typed
    threshold = args.score_threshold if threshold_typed else cfg.get("score_threshold", args.score_threshold)
    print(f"score threshold {threshold}")
    warnings = DataWarnings()
    records = read_aeroeyes(args.data_root, args.annotations, warnings, require_boxes=False)
    found_all, failed = {}, 0
    for rec in records:
        t0 = time.perf_counter()
        clips = VideoClips([rec], cfg["image_size"], cfg["support_size"], stride=args.frame_stride,
                           chunk=args.batch_size)
        found, problems = detect_video(model, clips, device, threshold)
        found_all[rec.video_id] = found
        if problems:        # reported and skipped: the other videos still get their entry
            warnings.add_many(problems)
            failed += 1
            print(f"{rec.video_id}: skipped ({', '.join(reason for _, reason in problems)}); {len(found)} frames "
                  f"with the object before it failed", file=sys.stderr)
            continue
        print(f"{rec.video_id}: {len(found)} frames with the object ({time.perf_counter() - t0:.1f} s)")
        if args.preview:
            os.makedirs(args.preview, exist_ok=True)
            target = os.path.join(args.preview, f"{rec.video_id}_preview.mp4")
            write_preview(rec.video_path, found, target)
            print(f"{rec.video_id}: preview {target}")
    out = args.out or "predictions.json"
    atomic_json_dump(submission(found_all, frame_step=args.frame_stride,
                                video_ids=[r.video_id for r in records]), out)
    print(f"wrote {out} ({len(records)} videos{f', {failed} unreadable' if failed else ''})")
    if warnings.counts():
        print(f"data warnings: {warnings.counts()}", file=sys.stderr)
    return 1 if failed else 0
