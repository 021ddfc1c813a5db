"""``train_ovd.py``'s plugin: open-vocabulary phrase grounding on the Flickr30k Entities layout, on the shared engine.

Data: :mod:`src.data.flickr30k` (reader) and :mod:`src.data.grounding` (tensors, augmentation);
model: :mod:`src.models.ovd`; matching and losses: :mod:`src.models.ovd_matching`; metrics:
:mod:`src.metrics.grounding`; inference: :mod:`src.tasks.ovd_inference`. Monitors ``valid_recall@1`` (higher is better).
"""
from __future__ import annotations

import argparse
import logging
import os
from typing import Sequence

import torch
from PIL import Image
from torch import nn

from src import cli
from src.data.demo_ovd import ensure_demo_ovd
from src.data.flickr30k import read_grounding_split
from src.data.grounding import GroundingDataset, collate_grounding, to_pixels
from src.data.images import IMAGENET_MEAN, IMAGENET_STD
from src.data.loading import DataWarnings, make_loader, seeded_subset
from src.errors import DataError
from src.metrics.grounding import GroundingMeter
from src.models.ovd import DEFAULT_BUCKETS, GroundingModel, build_grounding_model
from src.models.ovd_matching import GroundingCriterion, HungarianMatcher
from src.models.text_encoders import HASHED
from src.tasks.ovd_inference import MODEL_KEYS, model_kwargs, text_input
from src.training.plots import draw_grounding, grounding_samples_figure, save_figure
from src.training.run import Run
from src.training.task import Task

log = logging.getLogger("src")

# --demo: a light CNN encoder at stride 16 (Swin-T trains at a few images/s on a 2-core CPU) and a
# schedule that reaches the demo's targets from random init in CPU minutes (docs/train_ovd.md)
DEMO_DEFAULTS = dict(image_encoder="resnet18", feature_index=3, image_size=128, out_dim=128, text_layers=1,
                     fusion_layers=1, fusion_heads=4, decoder_layers=3, num_queries=20, epochs=4, batch_size=16,
                     lr=1e-3, num_workers=1, patience=0,
                     test_splits=["test", "test_novel"])
# a fine-tuned pretrained text model's lr: BERT's fine-tuning range (Devlin et al. 2019: 2e-5 to 5e-5),
# a little lower since it trains for many more steps here; MDETR fine-tunes RoBERTa at 5e-5
TEXT_LR = 1e-5
# the seed's training for the shared flags (AdamW + OneCycle, clip 0.1)
SCRIPT_DEFAULTS = dict(scheduler="onecycle", clip_grad=0.1, weight_decay=1e-4, batch_size=32, patience=10, epochs=30)


def model_inputs(batch: dict, text_encoder: str) -> tuple:
    """The model's inputs; a pretrained text encoder reads the caption strings and tokenizes them."""
    text = batch["words"] if text_encoder == HASHED else batch["caption"]
    return batch["image"], text, batch["text_mask"], batch["phrase_mask"]


class GroundingTask(Task):
    """DETR-style set loss on phrase logits and boxes; Recall@k, mAP and a phrase-agnostic baseline."""

    name = "ovd"
    monitor = "valid_recall@1"
    mode = "max"

    def __init__(self, model_config: dict, criterion: GroundingCriterion, with_map: bool = True) -> None:
        super().__init__(model_config, [model_config["image_size"]] * 2)
        self.criterion, self.with_map = criterion, with_map
        self._samples: dict[str, list] = {}

    def training_step(self, model: nn.Module, batch: dict):
        outputs = model(*model_inputs(batch, self.model_config["text_encoder"]))
        loss, _ = self.criterion(outputs, batch["targets"], batch["phrase_valid"])
        return loss, int(batch["image"].shape[0])

    def new_meter(self, split: str) -> GroundingMeter:
        self._samples[split] = []
        return GroundingMeter(with_map=self.with_map)

    def validation_step(self, model: nn.Module, batch: dict, meter: GroundingMeter, split: str) -> None:
        size = self.model_config["image_size"]
        outputs = model(*model_inputs(batch, self.model_config["text_encoder"]))
        loss, _ = self.criterion(outputs, batch["targets"], batch["phrase_valid"])
        B = batch["image"].shape[0]
        meter.add_loss(float(loss), B)
        final = outputs["layers"][-1]
        meter.update(final["logits"], final["boxes"], batch["targets"], batch["phrase_valid"].sum(1).tolist(),
                     [size / s for s in batch["scale"]])
        samples = self._samples[split]
        if len(samples) < 8:
            samples += [self._sample(batch, final, b, size) for b in range(min(B, 8 - len(samples)))]

    @staticmethod
    def _sample(batch: dict, final: dict, b: int, size: int):
        """The letterboxed image with top-1 and true boxes per phrase, drawn (for the run dir's figure)."""
        mean, std = torch.tensor(IMAGENET_MEAN)[:, None, None], torch.tensor(IMAGENET_STD)[:, None, None]
        img = (batch["image"][b].float().cpu() * std + mean).clamp(0, 1)
        pil = Image.fromarray((img.permute(1, 2, 0).numpy() * 255).astype("uint8"))
        phrases = batch["phrases"][b]
        logits, boxes = final["logits"][b].float().cpu(), final["boxes"][b].float().cpu()
        t = batch["targets"][b]
        xyxy = to_pixels(boxes, size, 1.0)
        true = to_pixels(t["boxes"].cpu(), size, 1.0)
        best = [int(logits[:, p].argmax()) for p in range(len(phrases))]
        drawn = draw_grounding(pil, phrases, [[xyxy[q]] for q in best], [[logits[q, p].sigmoid()] for p, q in enumerate(best)],
                               [true[t["phrase"].cpu() == p] for p in range(len(phrases))])
        return drawn, batch["caption"][b]

    def example_input(self, batch_size: int, device: torch.device) -> dict:
        """A batch of 10-word captions with two phrases, at the model's image size."""
        size = self.model_config["image_size"]
        words = "a small red circle left of the blue square".split()
        L = len(words)
        text = text_input(words, self.model_config)
        text = text.expand(batch_size, -1, -1).to(device) if isinstance(text, torch.Tensor) else text * batch_size
        phrase_mask = torch.zeros(batch_size, 2, L, dtype=torch.bool, device=device)
        phrase_mask[:, 0, :4], phrase_mask[:, 1, 6:] = True, True
        return {"images": torch.randn(batch_size, 3, size, size, device=device), "words": text,
                "text_mask": torch.ones(batch_size, L, dtype=torch.bool, device=device), "phrase_mask": phrase_mask}

    def sample_figure(self, split: str, title: str):
        """The split's last evaluation's first images: top-1 box per phrase (thick) and truth (thin)."""
        if not self._samples.get(split):
            return None
        return grounding_samples_figure(self._samples[split], f"{title}: thick = top-1 prediction, thin = truth")

    def final_artifacts(self, model: nn.Module, run_dir: str, device: torch.device) -> None:
        fig = self.sample_figure("valid", "validation (best checkpoint)")
        if fig is not None:
            save_figure(fig, os.path.join(run_dir, "sample_predictions.png"), dpi=110)


# ----------------------------------------------------------------------------- flags and data

def add_args(p: argparse.ArgumentParser) -> None:
    """``train_ovd.py``'s own flags: data (Flickr30k Entities layout), model, optimizer, inference."""
    d = p.add_argument_group("data (Flickr30k Entities layout)")
    cli.add_flag(d, "--data-root", default=None,
                 help="folder with flickr30k_images/, Annotations/, Sentences/ and train/val/test.txt")
    cli.add_flag(d, "--test-splits", nargs="*", default=["test"], metavar="SPLIT",
                 help="held-out splits (ROOT/<split>.txt) evaluated at the end; missing files are skipped")
    cli.add_flag(d, "--demo-dir", default="data/demo/ovd", help="where --demo writes its dataset")
    cli.add_flag(d, "--image-size", type=int, default=224, help="square letterbox side")
    cli.add_flag(d, "--max-words", type=int, default=64, help="caption words read (longer captions are cut)")
    cli.add_switch(d, "--augment", True,
                   "horizontal flip (swapping left/right in captions) and colour jitter on training images")
    m = p.add_argument_group("model")
    cli.add_flag(m, "--image-encoder", default="swin_tiny_patch4_window7_224", help="any timm model name")
    cli.add_flag(m, "--feature-index", type=int, default=-1,
                 help="which timm feature stage gives the image tokens (-1 = last)")
    cli.add_flag(m, "--pretrained", action="store_true", help="ImageNet weights for the image encoder (timm)")
    cli.add_flag(m, "--pretrained-weights", default=None, metavar="PATH",
                 help="local timm weights file for the image encoder (implies --pretrained)")
    cli.add_flag(m, "--out-dim", type=int, default=256, help="width of the fused model")
    cli.add_flag(m, "--text-encoder", default=HASHED, metavar="hashed|NAME|DIR",
                 help="hashed: n-gram encoder trained from scratch, offline; or a Hugging Face encoder by hub "
                      "name (roberta-base, bert-base-uncased) or local folder (needs pip install transformers)")
    cli.add_switch(m, "--freeze-text-encoder", False, "keep a pretrained --text-encoder's weights fixed "
                   "(only its projection trains)")
    cli.add_flag(m, "--text-layers", type=int, default=2, help="Transformer layers of the hashed text encoder")
    cli.add_flag(m, "--buckets", type=int, default=DEFAULT_BUCKETS, help="hashed character n-gram buckets")
    cli.add_flag(m, "--fusion-layers", type=int, default=1)
    cli.add_flag(m, "--fusion-heads", type=int, default=4)
    cli.add_flag(m, "--decoder-layers", type=int, default=3)
    cli.add_flag(m, "--num-queries", type=int, default=20)
    cli.add_switch(m, "--aux-loss", True,
                   "match and supervise every decoder layer's output")
    cli.add_flag(m, "--focal-weight", type=float, default=2.0)
    cli.add_flag(m, "--l1-weight", type=float, default=5.0)
    cli.add_flag(m, "--giou-weight", type=float, default=2.0)
    o = p.add_argument_group("optimizer (seed: AdamW + OneCycle, max lr 5e-4)")
    cli.add_flag(o, "--lr", type=float, default=5e-4,
                 help="max learning rate of new parts (--head-lr); a --pretrained encoder gets lr/10 (--base-lr)")
    cli.add_flag(o, "--text-lr", type=float, default=None,
                 help=f"learning rate of a fine-tuned pretrained --text-encoder, its own group (default {TEXT_LR:g})")
    cli.add_flag(o, "--pct-start", type=float, default=0.1, help="OneCycle warm-up fraction")
    cli.add_flag(o, "--precision", choices=["16", "32", "bf16"], default=None,
                 help="16 = fp16 AMP, bf16 = bfloat16 autocast, 32 = off (default: AMP on CUDA only)")
    i = p.add_argument_group("inference")
    cli.add_flag(i, "--predict", nargs="+", default=None, metavar="IMG", help="ground --phrases in each image")
    cli.add_flag(i, "--phrases", nargs="+", default=None, metavar="PHRASE")
    cli.add_flag(i, "--weights", default=None, metavar="CKPT", help="best_model.pt for --predict, --evaluate, --export")
    cli.add_flag(i, "--export", choices=["onnx"], default=None, help="write --weights as ONNX beside it (image + "
                 "tokenized phrases -> boxes, logits; dynamic sizes), checked with ONNX Runtime")
    cli.add_flag(i, "--top-k", type=int, default=1, help="boxes printed per phrase")
    cli.add_flag(i, "--output", default=None, metavar="DIR",
                 help="where annotated images go (default: RUN_DIR/predictions next to --weights)")


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    args = _resolve_text_encoder(parser, argv, cli.parse_script_args(parser, argv, DEMO_DEFAULTS))
    if args.precision is not None:   # the seed's Lightning flag, on top of --amp/--amp-dtype
        args = cli.with_values(args, amp=args.precision != "32", amp_dtype="bf16" if args.precision == "bf16" else "fp16")
    if args.demo:                    # the generated dataset replaces the data root
        args = cli.with_values(args, data_root=args.demo_dir)
    return args


def _resolve_text_encoder(parser: argparse.ArgumentParser, argv, args) -> argparse.Namespace:
    """--base-lr/--head-lr from --lr, and the text encoder's lr, folder and freezing, resolved:
    ``args.text_lr`` records what the text model gets (None when it does not train); it has its own lr
    group (:func:`prefix_lrs`), apart from the image backbone's --base-lr and the new parts' --head-lr."""
    pretrained = args.pretrained or args.pretrained_weights
    hf = args.text_encoder != HASHED
    if args.freeze_text_encoder and not hf:
        raise DataError("needs a pretrained --text-encoder (the hashed encoder starts from random weights)",
                        param="freeze_text_encoder")
    if hf and os.path.isdir(args.text_encoder):   # checkpoints rebuild it from any working directory
        args = cli.with_values(args, text_encoder=os.path.abspath(args.text_encoder))
    # a pretrained encoder is fine-tuned gently; a randomly initialized one must learn like the rest
    args = cli.set_default_lrs(parser, argv, args, args.lr / 10 if pretrained else args.lr, args.lr)
    trains = hf and not args.freeze_text_encoder
    return cli.with_values(args, text_lr=(args.text_lr if args.text_lr is not None else TEXT_LR) if trains else None)


def prefix_lrs(args) -> dict[str, float]:
    """The fine-tuned text model's own lr group, for ``build_train_config``."""
    return {"text_encoder.model.": args.text_lr} if args.text_lr is not None else {}


def model_config(args) -> dict:
    """``build_grounding_model``'s arguments and the model name, recorded in ``best_model.pt``."""
    return {k: getattr(args, k) for k in MODEL_KEYS} | {"model_name": args.model_name or
                                                         f"ovd_{args.image_encoder.split('.')[0]}"}


def build_task(args) -> GroundingTask:
    criterion = GroundingCriterion(HungarianMatcher(args.focal_weight, args.l1_weight, args.giou_weight),
                                   args.focal_weight, args.l1_weight, args.giou_weight, args.aux_loss)
    return GroundingTask(model_config(args), criterion)


def build_model(args) -> GroundingModel:
    return build_grounding_model(**model_kwargs(model_config(args)), pretrained=args.pretrained or
                                 bool(args.pretrained_weights), pretrained_weights=args.pretrained_weights)


def build_data(args, run: Run, warnings: DataWarnings) -> dict:
    """Loaders of train, valid and each ``--test-splits`` split whose file exists (in that order)."""
    dist = run.dist
    if args.demo:
        run.prepare_demo(ensure_demo_ovd, args.demo_dir)
    if not args.data_root:
        raise DataError("--data-root is required (or use --demo)")
    splits = ["train", "valid"] + [s for s in args.test_splits
                                   if os.path.isfile(os.path.join(args.data_root, f"{s}.txt"))]
    loaders = {}
    for split in splits:
        samples = read_grounding_split(args.data_root, split, warnings)
        limit = args.train_limit if split == "train" else args.valid_limit
        samples = [samples[i] for i in seeded_subset(len(samples), limit, args.seed)]
        if not samples:
            raise DataError(f"{args.data_root}: the {split} split has no usable caption")
        ds = GroundingDataset(samples, os.path.join(args.data_root, "flickr30k_images"), args.image_size,
                              args.buckets, args.max_words, augment=args.augment and split == "train")
        loaders[split] = make_loader(ds, batch_size=args.batch_size, train=split == "train", seed=args.seed,
                                     num_workers=args.num_workers, pin_memory=args.pin_memory, rank=dist.rank,
                                     world_size=dist.world_size, collate_fn=collate_grounding)
        log.info("%s: %d captions of %d images, %d phrases", split, len(samples),
                 len({s.image_id for s in samples}), sum(len(s.phrases) for s in samples))
    return loaders
