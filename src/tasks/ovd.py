"""``train_ovd.py``: open-vocabulary phrase grounding on the Flickr30k Entities layout, through the shared loop.

Data: :mod:`src.data.flickr30k` (reader) and :mod:`src.data.grounding` (tensors, augmentation);
model: :mod:`src.models.ovd`; matching and losses: :mod:`src.models.ovd_matching`; metrics:
:mod:`src.metrics.grounding`. Monitors ``valid_recall@1`` (higher is better).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Sequence

import torch
from PIL import Image
from torch import nn

from src import cli
from src.errors import DataError
from src.data.demo_ovd import ensure_demo_ovd
from src.data.flickr30k import read_grounding_split
from src.data.grounding import GroundingDataset, collate_grounding, encode_words, to_pixels
from src.data.images import IMAGENET_MEAN, IMAGENET_STD, BadImage, image_to_tensor, letterbox, load_rgb
from src.data.loading import DataWarnings, make_loader
from src.metrics.grounding import GroundingMeter
from src.models.ovd import DEFAULT_BUCKETS, GroundingModel, build_grounding_model
from src.models.ovd_matching import GroundingCriterion, HungarianMatcher
from src.training import distributed as D
from src.training.checkpoint import load_checkpoint
from src.training.loop import build_train_config, fit, seed_everything
from src.training.plots import draw_grounding, plot_grounding_samples
from src.training.run_dir import prepare_run_dir, setup_logging, write_config

log = logging.getLogger("src")

# --demo: a light CNN encoder at stride 16 (Swin-T trains at a few images/s on a 2-core CPU) and a
# schedule that reaches the demo's targets from random init in CPU minutes (docs/train_ovd.md)
DEMO_DEFAULTS = dict(image_encoder="resnet18", feature_index=3, image_size=128, out_dim=128, text_layers=1,
                     fusion_layers=1, fusion_heads=4, decoder_layers=3, num_queries=20, epochs=4, batch_size=16,
                     lr=1e-3, num_workers=1, patience=0,
                     test_splits=["test", "test_novel"])
MODEL_KEYS = ("image_encoder", "out_dim", "fusion_layers", "fusion_heads", "decoder_layers", "num_queries",
              "text_layers", "buckets", "max_words", "image_size", "feature_index")


def _to_device(batch: dict, device: torch.device):
    targets = [{k: v.to(device) for k, v in t.items()} for t in batch["targets"]]
    return targets, batch["phrase_valid"].to(device)


def model_inputs(batch: dict) -> tuple:
    return batch["image"], batch["words"], batch["text_mask"], batch["phrase_mask"]


class GroundingTask:
    """DETR-style set loss on phrase logits and boxes; Recall@k, mAP and a phrase-agnostic baseline."""

    name = "ovd"
    monitor = "valid_recall@1"
    mode = "max"

    def __init__(self, model_config: dict, criterion: GroundingCriterion, with_map: bool = True) -> None:
        self.model_config, self.criterion, self.with_map = model_config, criterion, with_map
        size = model_config["image_size"]
        self.fps_image_size = [size, size]
        self.warnings = DataWarnings()
        self._samples: dict[str, list] = {}

    def training_step(self, model: nn.Module, batch: dict, device: torch.device):
        self.warnings.add_many(batch["bad"])
        if "image" not in batch:
            return None, 0
        targets, phrase_valid = _to_device(batch, device)
        loss, _ = self.criterion(model(*model_inputs(batch)), targets, phrase_valid)
        return loss, int(batch["image"].shape[0])

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader, device: torch.device, split: str) -> dict[str, float]:
        was_training = model.training
        model.eval()
        meter = GroundingMeter(with_map=self.with_map)
        loss_sum, n, samples = 0.0, 0, []
        size = self.model_config["image_size"]
        for batch in loader:
            self.warnings.add_many(batch["bad"])
            if "image" not in batch:
                continue
            batch = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
            targets, phrase_valid = _to_device(batch, device)
            outputs = model(*model_inputs(batch))
            loss, _ = self.criterion(outputs, targets, phrase_valid)
            B = batch["image"].shape[0]
            loss_sum, n = loss_sum + float(loss) * B, n + B
            final = outputs["layers"][-1]
            num_phrases = batch["phrase_valid"].sum(1).tolist()
            meter.update(final["logits"], final["boxes"], targets, num_phrases,
                         [size / s for s in batch["scale"]])
            if len(samples) < 8:
                samples += [self._sample(batch, final, b, size) for b in range(min(B, 8 - len(samples)))]
        model.train(was_training)
        self._samples[split] = samples
        totals = D.all_reduce_sum([loss_sum, float(n), *meter.values()], device)
        return {"loss": totals[0] / totals[1] if totals[1] else float("nan"), **meter.compute(totals[2:])}

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
        words = encode_words("a small red circle left of the blue square".split(), self.model_config["buckets"])
        L = words.shape[0]
        phrase_mask = torch.zeros(batch_size, 2, L, dtype=torch.bool, device=device)
        phrase_mask[:, 0, :4], phrase_mask[:, 1, 6:] = True, True
        return {"images": torch.randn(batch_size, 3, size, size, device=device),
                "words": words.expand(batch_size, -1, -1).to(device),
                "text_mask": torch.ones(batch_size, L, dtype=torch.bool, device=device), "phrase_mask": phrase_mask}

    def final_artifacts(self, model: nn.Module, run_dir: str, device: torch.device) -> None:
        if self._samples.get("valid"):
            plot_grounding_samples(self._samples["valid"], os.path.join(run_dir, "sample_predictions.png"))


# ----------------------------------------------------------------------------- inference API

def load_for_inference(weights: str, device: torch.device) -> tuple[GroundingModel, dict]:
    """(model in eval mode, model_config) from a ``best_model.pt`` of this script."""
    ckpt = load_checkpoint(weights)
    cfg = ckpt.get("model_config") or {}
    if ckpt.get("task") != GroundingTask.name or "image_encoder" not in cfg:
        raise DataError(f"{weights}: not a train_ovd.py checkpoint")
    model = build_grounding_model(**_model_kwargs(cfg))
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval(), cfg


def _model_kwargs(cfg: dict) -> dict:
    """``build_grounding_model`` arguments from a model_config (``out_dim`` is its ``dim``)."""
    return {("dim" if k == "out_dim" else k): cfg[k] for k in MODEL_KEYS}


def phrases_caption(phrases: Sequence[str]) -> tuple[list[str], list[tuple[int, int]]]:
    """Words of "p1, p2 and p3" (a caption like the training ones) and each phrase's word span."""
    words, spans = [], []
    for i, ph in enumerate(phrases):
        w = ph.lower().split()
        if not w:
            raise DataError("--phrases: empty phrase")
        spans.append((len(words), len(w)))
        words += w
        if i < len(phrases) - 2:
            words.append(",")
        elif i == len(phrases) - 2:
            words.append("and")
    return words, spans


@torch.no_grad()
def ground(model: GroundingModel, cfg: dict, image: Image.Image, phrases: Sequence[str], device: torch.device,
           top_k: int = 1) -> list[list[tuple[list[float], float]]]:
    """For each phrase, its ``top_k`` (box xyxy in the image's pixels, score in [0, 1]), best first."""
    words, spans = phrases_caption(phrases)
    if len(words) > cfg["max_words"]:
        raise DataError(f"--phrases: {len(words)} words in all; this model reads at most {cfg['max_words']}")
    size = cfg["image_size"]
    boxed, _, scale = letterbox(image, None, size)
    x = image_to_tensor(boxed)[None].to(device)
    ids = encode_words(words, cfg["buckets"])[None].to(device)
    text_mask = torch.ones(1, len(words), dtype=torch.bool, device=device)
    phrase_mask = torch.zeros(1, len(phrases), len(words), dtype=torch.bool, device=device)
    for p, (start, count) in enumerate(spans):
        phrase_mask[0, p, start:start + count] = True
    final = model(x, ids, text_mask, phrase_mask)["layers"][-1]
    scores = final["logits"][0].float().sigmoid().cpu()                   # (Q, P)
    boxes = to_pixels(final["boxes"][0].cpu(), size, scale)
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, image.width)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, image.height)
    out = []
    for p in range(len(phrases)):
        top = scores[:, p].topk(min(top_k, scores.shape[0]))
        out.append([(boxes[q].tolist(), float(s)) for s, q in zip(top.values, top.indices)])
    return out


def predict_main(args) -> int:
    if not args.weights:
        raise DataError("--predict needs --weights RUN_DIR/best_model.pt")
    if not args.phrases:
        raise DataError('--predict needs --phrases "a red circle" "the blue square" ...')
    device = D.resolve_device(args.device)
    model, cfg = load_for_inference(args.weights, device)
    out_dir = args.output or os.path.join(os.path.dirname(os.path.abspath(args.weights)), "predictions")
    os.makedirs(out_dir, exist_ok=True)
    failed = 0
    for path in args.predict:
        try:
            image = load_rgb(path)
        except BadImage as exc:
            print(f"{path}\terror: {exc.reason}", file=sys.stderr)
            failed += 1
            continue
        results = ground(model, cfg, image, args.phrases, device, args.top_k)
        for phrase, found in zip(args.phrases, results):
            for box, score in found:
                print(f"{path}\t{phrase}\t{' '.join(f'{v:.1f}' for v in box)}\t{score:.4f}")
        drawn = draw_grounding(image, list(args.phrases), [[b for b, _ in f] for f in results],
                               [[s for _, s in f] for f in results])
        target = os.path.join(out_dir, os.path.splitext(os.path.basename(path))[0] + "_grounded.png")
        drawn.save(target)
        print(f"{path}\tannotated image: {target}")
    return 1 if failed else 0


# ----------------------------------------------------------------------------- script

def _limit_val(value: str) -> float | int:
    v = float(value)
    if v <= 0:
        raise argparse.ArgumentTypeError("must be > 0")
    return v if v <= 1 and "." in value else int(v)


def build_parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    d = p.add_argument_group("data (Flickr30k Entities layout)")
    cli.add_flag(d, "--data-root", default=None,
                 help="folder with flickr30k_images/, Annotations/, Sentences/ and train/val/test.txt")
    cli.add_flag(d, "--test-splits", nargs="*", default=["test"], metavar="SPLIT",
                 help="held-out splits (ROOT/<split>.txt) evaluated at the end; missing files are skipped")
    cli.add_flag(d, "--demo-dir", default="data/demo/ovd", help="where --demo writes its dataset")
    cli.add_flag(d, "--image-size", type=int, default=224, help="square letterbox side")
    cli.add_flag(d, "--max-words", type=int, default=64, help="caption words read (longer captions are cut)")
    cli.add_flag(d, "--augment", action=argparse.BooleanOptionalAction, default=True,
                 help="horizontal flip (swapping left/right in captions) and colour jitter on training images")
    cli.add_flag(d, "--limit-val-batches", type=_limit_val, default=None, metavar="N|FRACTION",
                 help="per-epoch validation on N batches or a fraction (0.3); final metrics use the whole split")
    m = p.add_argument_group("model")
    cli.add_flag(m, "--image-encoder", default="swin_tiny_patch4_window7_224", help="any timm model name")
    cli.add_flag(m, "--feature-index", type=int, default=-1,
                 help="which timm feature stage gives the image tokens (-1 = last)")
    cli.add_flag(m, "--pretrained", action="store_true", help="ImageNet weights for the image encoder (timm)")
    cli.add_flag(m, "--pretrained-weights", default=None, metavar="PATH",
                 help="local timm weights file for the image encoder (implies --pretrained)")
    cli.add_flag(m, "--out-dim", type=int, default=256, help="width of the fused model")
    cli.add_flag(m, "--text-layers", type=int, default=2, help="Transformer layers of the text encoder")
    cli.add_flag(m, "--buckets", type=int, default=DEFAULT_BUCKETS, help="hashed character n-gram buckets")
    cli.add_flag(m, "--fusion-layers", type=int, default=1)
    cli.add_flag(m, "--fusion-heads", type=int, default=4)
    cli.add_flag(m, "--decoder-layers", type=int, default=3)
    cli.add_flag(m, "--num-queries", type=int, default=20)
    cli.add_flag(m, "--aux-loss", action=argparse.BooleanOptionalAction, default=True,
                 help="match and supervise every decoder layer's output")
    cli.add_flag(m, "--focal-weight", type=float, default=2.0)
    cli.add_flag(m, "--l1-weight", type=float, default=5.0)
    cli.add_flag(m, "--giou-weight", type=float, default=2.0)
    cli.add_training_args(p)
    cli.add_data_args(p)
    cli.add_output_args(p, "ovd_swin_tiny")
    o = p.add_argument_group("optimizer (seed: AdamW + OneCycle, max lr 5e-4)")
    cli.add_flag(o, "--lr", type=float, default=5e-4,
                 help="max learning rate of new parts (--head-lr); a --pretrained encoder gets lr/10 (--base-lr)")
    cli.add_flag(o, "--pct-start", type=float, default=0.1, help="OneCycle warm-up fraction")
    cli.add_flag(o, "--precision", choices=["16", "32", "bf16"], default=None,
                 help="16 = fp16 AMP, bf16 = bfloat16 autocast, 32 = off (default: AMP on CUDA only)")
    p.set_defaults(scheduler="onecycle", clip_grad=0.1, weight_decay=1e-4, batch_size=32, patience=10, epochs=30)
    i = p.add_argument_group("inference")
    cli.add_flag(i, "--predict", nargs="+", default=None, metavar="IMG", help="ground --phrases in each image")
    cli.add_flag(i, "--phrases", nargs="+", default=None, metavar="PHRASE")
    cli.add_flag(i, "--weights", default=None, metavar="CKPT", help="best_model.pt for --predict")
    cli.add_flag(i, "--top-k", type=int, default=1, help="boxes printed per phrase")
    cli.add_flag(i, "--output", default=None, metavar="DIR",
                 help="where annotated images go (default: RUN_DIR/predictions next to --weights)")
    return p


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    args = cli.parse_script_args(parser, argv, DEMO_DEFAULTS)
    # a pretrained encoder is fine-tuned gently; a randomly initialized one must learn like the rest
    pretrained = args.pretrained or args.pretrained_weights
    cli.set_default_lrs(parser, argv, args, args.lr / 10 if pretrained else args.lr, args.lr)
    if args.precision is not None:   # the seed's Lightning flag, on top of --amp/--amp-dtype
        args.amp = args.precision != "32"
        args.amp_dtype = "bf16" if args.precision == "bf16" else "fp16"
    return args


def build_data(args, dist: D.DistInfo, warnings: DataWarnings) -> dict:
    if args.demo:
        if dist.is_main:
            log.info("demo data: %s", os.path.abspath(args.demo_dir))
            ensure_demo_ovd(args.demo_dir)
        D.barrier()
        args.data_root = args.demo_dir
    if not args.data_root:
        raise DataError("--data-root is required (or use --demo)")
    splits = ["train", "valid"] + [s for s in args.test_splits
                                   if os.path.isfile(os.path.join(args.data_root, f"{s}.txt"))]
    loaders = {}
    for split in splits:
        samples = read_grounding_split(args.data_root, split, warnings)
        limit = args.train_limit if split == "train" else args.valid_limit
        if limit and len(samples) > limit:
            g = torch.Generator().manual_seed(args.seed)
            samples = [samples[i] for i in sorted(torch.randperm(len(samples), generator=g)[:limit].tolist())]
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


def main(argv: Sequence[str] | None = None,
         description: str = "Train an open-vocabulary phrase-grounding model.") -> int:
    parser = build_parser(description)
    args = parse_args(parser, argv)
    if args.predict:
        return predict_main(args)
    dist = D.init_distributed(args.device)
    try:
        device = D.resolve_device(args.device, dist.local_rank)
        setup_logging(None, dist.is_main)
        name = args.model_name or f"ovd_{args.image_encoder.split('.')[0]}"
        model_config = {k: getattr(args, k) for k in MODEL_KEYS} | {"model_name": name}
        criterion = GroundingCriterion(HungarianMatcher(args.focal_weight, args.l1_weight, args.giou_weight),
                                       args.focal_weight, args.l1_weight, args.giou_weight, args.aux_loss)
        task = GroundingTask(model_config, criterion)
        loaders = build_data(args, dist, task.warnings)
        seed_everything(args.seed)
        model = build_grounding_model(**_model_kwargs(model_config),
                                      pretrained=args.pretrained or bool(args.pretrained_weights),
                                      pretrained_weights=args.pretrained_weights)
        run_dir = prepare_run_dir(args.results_dir, name, args.resume, dist.is_main)
        setup_logging(run_dir, dist.is_main)
        record = dict(vars(args))
        if dist.is_main and not args.resume:
            write_config(run_dir, record, {"device": str(device), "world_size": dist.world_size})
        enc = model.image_encoder
        log.info("run dir %s | %s (%s params; image tokens %d x %d from stride %d) | device %s x %d", run_dir, name,
                 f"{sum(p.numel() for p in model.parameters()):,}", (args.image_size // enc.reduction) ** 2,
                 enc.channels, enc.reduction, device, dist.world_size)
        cfg = build_train_config(args, pct_start=args.pct_start, limit_val_batches=args.limit_val_batches)
        tests = {s: loaders[s] for s in loaders if s not in ("train", "valid")}
        fit(model, task, loaders["train"], loaders["valid"], cfg, run_dir, device, dist,
            test_loader=tests.pop("test", None), resume_from=args.resume, args_record=record,
            extra_test_loaders=tests)
    finally:
        D.cleanup_distributed()
    return 0
