"""``--export onnx`` for the two classification scripts: image -> logits, dynamic batch, written beside the
checkpoint and checked with ONNX Runtime (:mod:`src.training.export`).

The ONNX model takes what the classifier takes: a float32 (N, 3, S, S) image normalized with ImageNet's
mean and std (``src.data.classification``'s validation transform), S the checkpoint's image size; it returns
(N, K) logits in ``class_names`` order (recorded in the checkpoint)."""
from __future__ import annotations

import logging
import os

import torch
from torch import nn

from src.errors import DataError
from src.tasks.classification_inference import load_for_inference
from src.training.export import check_onnx, export_onnx

log = logging.getLogger("src")


def export_classifier(model: nn.Module, size: int, path: str) -> float:
    """Write ``model`` (image (N, 3, size, size) -> logits) to ``path``, checked with ONNX Runtime at another
    batch than the export's (so the dynamic batch is checked too); the max abs difference."""
    g = torch.Generator().manual_seed(0)
    export_onnx(model, (torch.randn(2, 3, size, size, generator=g),), path, ["image"], ["logits"])
    return check_onnx(path, model, (torch.randn(3, 3, size, size, generator=g),))


def export_main(args) -> int:
    if not args.weights:
        raise DataError("--export needs --weights RUN_DIR/best_model.pt", param="weights")
    model, cfg = load_for_inference(args.weights, torch.device("cpu"), fold=True)
    size = cfg["image_size"]
    path = os.path.splitext(args.weights)[0] + ".onnx"
    diff = export_classifier(model, size, path)
    print(f"wrote {path}: image (N, 3, {size}, {size}) ImageNet-normalized -> logits (N, {cfg['num_classes']}); "
          f"ONNX Runtime vs PyTorch max abs difference {diff:.2e} at batch 3")
    return 0
