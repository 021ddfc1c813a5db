"""Image classification, the plugin of both classification scripts: the task (training step,
validation step and meter, confusion matrices), its flags and data (``--predict``:
:mod:`src.tasks.classification_inference`). The scripts differ only in their default ``--model`` and
their seed documents' defaults (:data:`SCRIPT_DEFAULTS`)."""
from __future__ import annotations

import argparse
import logging
import math
import os
from typing import Sequence

import torch
import torch.nn.functional as F
from timm.data import Mixup
from timm.data.mixup import mixup_target
from timm.loss import SoftTargetCrossEntropy
from torch import nn

from src import cli
from src.errors import DataError
from src.data.classification import Augment, ClassificationData, build_classification_data
from src.data.demo_classification import ensure_demo_classification
from src.data.loading import make_loader
from src.metrics.classification import ClassificationMeter, confusion
from src.models.classifiers import MODELS
from src.training.distributed import all_reduce_sum
from src.training.plots import plot_confusion
from src.training.run import Run
from src.training.task import Task

log = logging.getLogger("src")

# each script's defaults are its seed document's tables (../shared/seeds/<script>.md); the ResNet18
# seed gives no weight decay in its table, its custom recipe uses 1e-2. --demo replaces them (DEMO_DEFAULTS)
SCRIPT_DEFAULTS = {
    "MobileNetV3_Small_BoT_Linear": dict(epochs=30, batch_size=32, patience=10, base_lr=5e-5, head_lr=5e-4,
                                         weight_decay=1e-2, image_size=224, heads=4, dropout=0.1, num_workers=4),
    "ResNet18_Hybrid": dict(epochs=10, batch_size=32, patience=5, base_lr=1e-4, head_lr=1e-3, weight_decay=1e-2,
                            image_size=224, heads=4, reduction=32, dropout=0.1, num_workers=4),
}

# --demo: small images and a short schedule so a 2-core CPU finishes in minutes; from scratch,
# so the backbone learns at the head's rate
DEMO_DEFAULTS = dict(image_size=96, epochs=12, batch_size=32, base_lr=2e-3, head_lr=2e-3, weight_decay=0.05,
                     warmup_epochs=1.0, patience=0, num_workers=2)
# MobileNetV3-Small from random init (BN + SE + hard-swish) needs a longer, hotter schedule than
# ResNet18 to pass 0.90 on the demo (12 epochs at 2e-3 reached 0.82); its epochs cost a third as much
DEMO_OVERRIDES = {"MobileNetV3_Small": dict(epochs=24, base_lr=4e-3, head_lr=4e-3)}


def demo_defaults(model: str) -> dict:
    """``--demo`` defaults for ``model`` (by backbone family: the name's prefix)."""
    family = next((f for f in DEMO_OVERRIDES if model.startswith(f)), None)
    return {**DEMO_DEFAULTS, **DEMO_OVERRIDES.get(family, {})}


class ClassificationTask(Task):
    """Cross-entropy training (soft-target cross-entropy under mixup/CutMix: ``mixup``, a timm
    :class:`~timm.data.Mixup`), ``train_acc`` per epoch; validation accuracy (monitored) and macro F1
    with hard-label cross-entropy as the validation loss."""

    name = "classification"
    monitor = "valid_acc"
    mode = "max"

    def __init__(self, class_names: list[str], image_size: int, model_config: dict,
                 channels_last: bool = False, label_smoothing: float = 0.0, mixup: Mixup | None = None) -> None:
        super().__init__(model_config, image_size)
        self.class_names = class_names
        self.channels_last = channels_last
        self.label_smoothing = label_smoothing
        self.mixup = mixup
        self._meters: dict[str, ClassificationMeter] = {}
        # this epoch's training hits (a device tensor: no host sync per step) and samples
        self._correct, self._seen, self._device = 0, 0, torch.device("cpu")

    def _images(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def training_step(self, model: nn.Module, batch: dict):
        """Loss of ``batch["image"]`` (B, 3, S, S) against ``batch["label"]`` (B,).

        Under mixup (Zhang et al. 2018, https://arxiv.org/abs/1710.09412) or CutMix (Yun et al. 2019,
        https://arxiv.org/abs/1905.04899) timm's ``Mixup`` mixes the images in place and gives soft
        targets (B, num_classes) that sum to 1 (label smoothing included). It pairs sample i with
        B-1-i and needs an even batch: an odd one (the last, or one with skipped images) trains unmixed,
        on the same smoothed soft targets.
        """
        x, y = self._images(batch["image"]), batch["label"]
        target = None
        if self.mixup is not None and len(y) % 2 == 0:
            x, target = self.mixup(x, y)
        elif self.mixup is not None:
            target = mixup_target(y, self.mixup.num_classes, 1.0, self.mixup.label_smoothing)
        logits = model(x).float()
        if target is None:
            loss = F.cross_entropy(logits, y, label_smoothing=self.label_smoothing)
        else:
            loss = SoftTargetCrossEntropy()(logits, target)
        # the mixed target's argmax: the label with the larger share (ties go to the lower class id)
        truth = y if target is None else target.argmax(1)
        self._correct = self._correct + (logits.detach().argmax(1) == truth).sum()
        self._seen += int(y.numel())
        self._device = logits.device
        return loss, int(y.numel())

    def epoch_stats(self) -> dict[str, float]:
        """``train_acc``: top-1 accuracy over every training batch of the epoch as it was trained
        (augmented, in train mode, before its step; a skipped non-finite step included), its hits and
        samples summed over ranks before dividing; then reset for the next epoch. Under mixup/CutMix the
        truth is the argmax of the mixed target."""
        correct, seen = all_reduce_sum([float(self._correct), float(self._seen)], self._device)
        self._correct, self._seen = 0, 0
        return {"train_acc": correct / seen if seen else float("nan")}

    def new_meter(self, split: str) -> ClassificationMeter:
        self._meters[split] = ClassificationMeter(len(self.class_names))   # kept for the confusion matrix
        return self._meters[split]

    def validation_step(self, model: nn.Module, batch: dict, meter: ClassificationMeter, split: str) -> None:
        logits = model(self._images(batch["image"])).float()
        y = batch["label"]
        meter.update(logits.argmax(1).cpu(), y.cpu(), float(F.cross_entropy(logits, y, reduction="sum")))

    def example_input(self, batch_size: int, device: torch.device) -> torch.Tensor:
        return self._images(torch.randn(batch_size, 3, self.fps_image_size, self.fps_image_size, device=device))

    def final_artifacts(self, model: nn.Module, run_dir: str, device: torch.device) -> None:
        for split, fname in (("valid", "confusion_matrix.png"), ("test", "confusion_matrix_test.png")):
            if split in self._meters:
                y_true, y_pred = self._meters[split].arrays()
                plot_confusion(confusion(y_true, y_pred, len(self.class_names)), self.class_names,
                               os.path.join(run_dir, fname), f"{split} confusion matrix (best checkpoint)")


def add_args(parser: argparse.ArgumentParser, default_model: str) -> None:
    """The classification scripts' own flags: data (metadata CSV), model, inference."""
    g = parser.add_argument_group("data")
    cli.add_flag(g, "--metadata", default="data/metadata.csv", help="CSV with columns path,label,split")
    cli.add_flag(g, "--label2id", default="data/label2id.json", help='JSON {"label": id}')
    cli.add_flag(g, "--image-size", type=int, default=224)
    cli.add_flag(g, "--cache-images", action="store_true",
                 help="keep decoded, resized images in RAM after the first epoch")
    cli.add_flag(g, "--demo-dir", default="data/demo/classification", help="where --demo writes its dataset")
    m = parser.add_argument_group("model")
    cli.add_flag(m, "--model", choices=list(MODELS), default=default_model)
    cli.add_flag(m, "--heads", type=int, default=4, help="attention heads of BoT blocks")
    cli.add_flag(m, "--reduction", type=int, default=32, help="Coordinate Attention reduction ratio")
    cli.add_flag(m, "--dropout", type=float, default=0.1, help="dropout before the classifier")
    cli.add_flag(m, "--pretrained", action="store_true", help="ImageNet weights through timm (needs internet)")
    cli.add_flag(m, "--pretrained-weights", default=None, metavar="PATH",
                 help="local timm weights file for the backbone (implies --pretrained)")
    add_augment_args(parser)
    i = parser.add_argument_group("inference")
    cli.add_flag(i, "--predict", nargs="+", default=None, metavar="IMG", help="print top-3 classes per image")
    cli.add_flag(i, "--weights", default=None, metavar="CKPT", help="best_model.pt for --predict, --evaluate, --export")
    cli.add_flag(i, "--export", choices=["onnx"], default=None,
                 help="write --weights as ONNX beside it (image -> logits, dynamic batch), checked with ONNX Runtime")


def add_augment_args(parser: argparse.ArgumentParser) -> None:
    """timm ``train.py``'s augmentation and regularization flags, by the same names and meanings; the
    defaults reproduce the pipeline from before they existed (:class:`~src.data.classification.Augment`)."""
    d = Augment()
    g = parser.add_argument_group("augmentation and regularization (timm's flags)")
    cli.add_flag(g, "--hflip", type=float, default=d.hflip, metavar="P", help="horizontal flip probability")
    cli.add_flag(g, "--vflip", type=float, default=d.vflip, metavar="P", help="vertical flip probability")
    cli.add_flag(g, "--rotation", type=float, default=d.rotation, metavar="DEG",
                 help="random rotation within +-DEG degrees; 0 disables")
    cli.add_flag(g, "--color-jitter", type=float, nargs="+", default=list(d.color_jitter), metavar="F",
                 help="brightness contrast saturation [hue] factors; one value S = S S S without hue (timm); "
                      "0 disables; off by default under --aa, as in timm, unless typed")
    cli.add_flag(g, "--aa", default=None, metavar="POLICY",
                 help="timm AutoAugment policy: rand-m9-mstd0.5-inc1 (RandAugment), original, v0, 3a, "
                      "augmix-m5-w4-d2; default off")
    cli.add_flag(g, "--reprob", type=float, default=d.reprob, metavar="P", help="random erasing probability")
    cli.add_flag(g, "--remode", choices=["const", "rand", "pixel"], default=d.remode, help="random erasing fill")
    cli.add_flag(g, "--recount", type=int, default=d.recount, help="random erasing: at most this many boxes")
    cli.add_flag(g, "--mixup", type=float, default=0.0, metavar="ALPHA", help="mixup Beta alpha; 0 = off")
    cli.add_flag(g, "--cutmix", type=float, default=0.0, metavar="ALPHA", help="CutMix Beta alpha; 0 = off")
    cli.add_flag(g, "--mixup-prob", type=float, default=1.0, metavar="P",
                 help="probability of mixing a batch when --mixup or --cutmix is on")
    cli.add_flag(g, "--mixup-switch-prob", type=float, default=0.5, metavar="P",
                 help="probability of CutMix instead of mixup when both are on")
    cli.add_flag(g, "--mixup-mode", choices=["batch", "pair", "elem"], default="batch",
                 help="one mixing draw per batch, per pair of samples or per sample")
    # timm spells it --smoothing, the seeds --label-smoothing: one flag, three spellings
    g.add_argument("--label-smoothing", "--label_smoothing", "--smoothing", dest="label_smoothing", type=float,
                   default=0.0, help="label smoothing (also of the mixed targets)")


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Flags, ``--demo`` defaults by backbone family, the demo dataset's paths, a resumed run's arguments;
    under ``--aa`` colour jitter goes off unless typed (timm's rule). A bad augmentation value stops with
    one line naming its flag (:class:`~src.errors.DataError`)."""
    args = cli.parse_script_args(parser, argv, lambda first: demo_defaults(first.model))
    if args.demo:    # the generated dataset replaces the data paths
        args = cli.with_values(args, metadata=os.path.join(args.demo_dir, "metadata.csv"),
                               label2id=os.path.join(args.demo_dir, "label2id.json"))
    # timm disables colour jitter under AutoAugment/RandAugment (their Color, Contrast and Brightness ops
    # take its place) except for 3a; typing --color-jitter keeps it (timm's force_color_jitter). A resumed
    # run's arguments were resolved when it started
    if args.aa and "3a" not in args.aa and not args.resume and "color_jitter" not in cli.explicit_args(parser, argv):
        args = cli.with_values(args, color_jitter=[0.0])
    augment_from_args(args)     # validates
    for name, top in (("mixup", math.inf), ("cutmix", math.inf), ("mixup_prob", 1), ("mixup_switch_prob", 1),
                      ("label_smoothing", 1)):
        if not 0 <= getattr(args, name) <= top:
            raise DataError(f"must be in [0, {top:g}], got {getattr(args, name):g}", param=name)
    return args


def augment_from_args(args) -> Augment:
    return Augment(args.hflip, args.vflip, args.rotation, tuple(args.color_jitter), args.aa, args.reprob,
                   args.remode, args.recount)


def build_task(args, class_names: list[str]) -> ClassificationTask:
    """The task, with timm's ``Mixup`` when ``--mixup`` or ``--cutmix`` is on."""
    mixup = None
    if args.mixup > 0 or args.cutmix > 0:
        mixup = Mixup(mixup_alpha=args.mixup, cutmix_alpha=args.cutmix, prob=args.mixup_prob,
                      switch_prob=args.mixup_switch_prob, mode=args.mixup_mode,
                      label_smoothing=args.label_smoothing, num_classes=len(class_names))
    return ClassificationTask(class_names, args.image_size, model_config(args, class_names), args.channels_last,
                              args.label_smoothing, mixup)


def model_config(args, class_names: list[str]) -> dict:
    """What ``best_model.pt`` records to rebuild the model for inference."""
    return {"model": args.model, "model_name": args.model_name or args.model, "num_classes": len(class_names),
            "heads": args.heads, "reduction": args.reduction, "dropout": args.dropout, "class_names": class_names,
            "image_size": args.image_size}


def build_data(args, run: Run) -> tuple[ClassificationData, dict]:
    """The dataset (generated first under ``--demo``, by rank 0) and its loaders by split."""
    if args.demo:
        run.prepare_demo(ensure_demo_classification, args.demo_dir)
    data = build_classification_data(args.metadata, args.label2id, args.image_size, args.seed,
                                     args.train_limit, args.valid_limit, args.cache_images, augment_from_args(args))
    common = dict(batch_size=args.batch_size, seed=args.seed, num_workers=args.num_workers,
                  pin_memory=args.pin_memory, rank=run.dist.rank, world_size=run.dist.world_size)
    loaders = {"train": make_loader(data.train, train=True, **common),
               "valid": make_loader(data.valid, train=False, **common)}
    if data.test:
        loaders["test"] = make_loader(data.test, train=False, **common)
    log.info("data: %d train / %d valid / %d test images, %d classes", len(data.train), len(data.valid),
             len(data.test) if data.test else 0, len(data.class_names))
    return data, loaders
