"""The classification scripts' inference: a ``best_model.pt`` rebuilt without timm downloads (Conv+BN
folded for ``--predict`` and ``--export``: :mod:`src.models.layers.fold`), top-k classes per image."""
from __future__ import annotations

import sys

import torch
from torch import nn

from src.data.classification import augment_transform, base_transform
from src.data.images import BadImage, load_rgb_tensor
from src.errors import DataError
from src.models.classifiers import create_classifier
from src.models.layers.fold import fold_conv_bn
from src.tasks.classification import ClassificationTask
from src.training.checkpoint import load_checkpoint
from src.training.run import start_run


def load_for_inference(weights: str, device: torch.device, fold: bool = False):
    """Rebuild the model a ``best_model.pt`` was trained as (no timm download needed); ``fold``: Conv+BN folded."""
    ckpt = load_checkpoint(weights)
    cfg = ckpt.get("model_config") or {}
    if ckpt.get("task") != ClassificationTask.name or "model" not in cfg:
        raise DataError(f"{weights}: not a classification checkpoint of this project")
    model = create_classifier(cfg["model"], cfg["num_classes"], cfg["heads"], cfg["reduction"], cfg["dropout"])
    model.load_state_dict(ckpt["model"])
    if fold:
        fold_conv_bn(model)
    return model.to(device).eval(), cfg


@torch.no_grad()
def predict_images(model: nn.Module, paths: list[str], image_size: int, class_names: list[str],
                   device: torch.device, top_k: int = 3) -> list[tuple[str, list[tuple[str, float]] | str]]:
    """Top-k (class, probability) per image, or an error reason for unreadable images."""
    base, to_input = base_transform(image_size), augment_transform(train=False)
    results = []
    for path in paths:
        try:
            # decoded as validation decodes it (reduced-size JPEG decoding, src.data.images.load_rgb)
            x = to_input(base(load_rgb_tensor(path, longer_side=image_size, fit=True)))[None].to(device)
        except BadImage as exc:
            results.append((path, exc.reason))
            continue
        probs = model(x).float().softmax(1)[0]
        top = probs.topk(min(top_k, len(class_names)))
        results.append((path, [(class_names[i], float(p)) for p, i in zip(top.values, top.indices)]))
    return results


def predict_main(args) -> int:
    if not args.weights:
        raise DataError("--predict needs --weights RUN_DIR/best_model.pt")
    with start_run(args.device, args.threads) as run:
        model, cfg = load_for_inference(args.weights, run.device, fold=True)
        failed = 0
        for path, result in predict_images(model, args.predict, cfg["image_size"], cfg["class_names"], run.device):
            if isinstance(result, str):
                print(f"{path}\terror: {result}", file=sys.stderr)
                failed += 1
            else:
                print(f"{path}\t" + "\t".join(f"{name} {p:.4f}" for name, p in result))
    return 1 if failed else 0
