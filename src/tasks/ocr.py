"""``train_vietocr.py``'s plugin: VietOCR-compatible text-line recognition on the shared engine.

Data: VietOCR annotation files + LMDB cache (:mod:`src.data.ocr`); models: :mod:`src.models.vietocr`;
metrics: :mod:`src.metrics.ocr`; inference: :mod:`src.tasks.ocr_inference`. Validation decodes batched greedy with a KV cache (or beam search
with ``--beam-size``) and monitors ``valid_cer`` (lower is better).
"""
from __future__ import annotations

import argparse
import logging
import os
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from src import cli
from src.errors import DataError
from src.data.demo_ocr import ensure_demo_ocr
from src.data.loading import DataWarnings, make_loader, seeded_subset
from src.data.ocr import (EOS, IMAGE_HEIGHT, MASK, PAD, SOS, VIETOCR_VOCAB, OCRDataset, Vocab,
                          WidthBucketBatchSampler, build_lmdb, collate_lines, resolve_annotation)
from src.metrics.ocr import OCRMeter
from src.models.vietocr import VIETOCR_ARCHS, decode_batch
from src.tasks.ocr_config import read_vietocr_config
from src.tasks.ocr_inference import Recognizer
from src.training import distributed as D
from src.training.plots import save_figure, text_samples_figure
from src.training.run import Run
from src.training.task import Task

log = logging.getLogger("src")

# --demo: the small model (VietOCR's full model trains at ~4 lines/s on a 2-core CPU), an auxiliary
# CTC loss and a schedule that reach a low CER on the generated lines from random init in a few CPU
# minutes (the search behind these values: docs/train_vietocr.md, "Why the demo trains like this")
DEMO_DEFAULTS = dict(model_size="small", ctc_weight=1.0, label_smoothing=0.0, augment=False, epochs=8,
                     batch_size=8, lr=1e-3, pct_start=0.04, max_decode_len=64, num_workers=1, patience=0)

# VietOCR's training for the shared flags (its config: OneCycle, clip 1, no weight decay)
SCRIPT_DEFAULTS = dict(scheduler="onecycle", clip_grad=1.0, weight_decay=0.0, batch_size=32, patience=0, epochs=20)


class OCRTask(Task):
    """Label-smoothed cross-entropy on teacher-forced decoding; CER/WER/accuracies from real decoding."""

    name = "ocr"
    monitor = "valid_cer"
    mode = "min"

    def __init__(self, vocab: Vocab, model_config: dict, label_smoothing: float = 0.1, masked_lm: float = 0.0,
                 beam_size: int = 1, max_decode_len: int = 128, fps_width: int = 160, ctc_weight: float = 0.0) -> None:
        super().__init__(model_config, [IMAGE_HEIGHT, fps_width])
        self.vocab = vocab
        self.label_smoothing, self.masked_lm, self.ctc_weight = label_smoothing, masked_lm, ctc_weight
        self.beam_size, self.max_decode_len = beam_size, max_decode_len
        self.recognizer = None      # an OnnxRecognizer under --backend onnxruntime
        self._samples: dict[str, list[tuple[torch.Tensor, str, str]]] = {}

    def loss(self, logits: torch.Tensor, tgt_output: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float().flatten(0, 1), tgt_output.flatten(), ignore_index=PAD,
                               label_smoothing=self.label_smoothing)

    def training_step(self, model: nn.Module, batch: dict):
        tgt_in = batch["tgt_input"]
        if self.masked_lm > 0:
            # masked-LM corruption (VietOCR): some input characters become <mask>, so the decoder
            # must read them from the image instead of guessing from the text so far
            hit = (torch.rand(tgt_in.shape, device=tgt_in.device) < self.masked_lm) & (tgt_in > MASK)
            tgt_in = tgt_in.masked_fill(hit, MASK)
        if self.ctc_weight <= 0:
            logits = model(batch["image"], tgt_in, batch["tgt_padding_mask"])
            return self.loss(logits, batch["tgt_output"]), int(batch["image"].shape[0])
        logits, ctc_log_probs = model(batch["image"], tgt_in, batch["tgt_padding_mask"], with_ctc=True)
        return (self.loss(logits, batch["tgt_output"]) + self.ctc_weight * self.ctc_loss(ctc_log_probs, batch),
                int(batch["image"].shape[0]))

    @staticmethod
    def ctc_loss(log_probs: torch.Tensor, batch: dict) -> torch.Tensor:
        """Auxiliary CTC loss on the encoder positions, log_probs (S, N, V) (joint CTC-attention,
        Kim, Hori & Watanabe 2017): it gives the CNN a per-position reading signal from the first
        steps, which the attention decoder alone takes thousands of steps to provide when the CNN
        starts from random init."""
        chars = batch["tgt_output"] > MASK                              # text only: no sos/eos/pad
        # every line of a batch has the same width (the width-bucketing sampler), so all S positions
        input_lengths = torch.full((log_probs.shape[1],), log_probs.shape[0], dtype=torch.long)
        return F.ctc_loss(log_probs, batch["tgt_output"][chars], input_lengths, chars.sum(1), blank=PAD,
                          zero_infinity=True)

    def new_meter(self, split: str) -> OCRMeter:
        self._samples[split] = []
        return OCRMeter()

    def validation_step(self, model: nn.Module, batch: dict, meter: OCRMeter, split: str) -> None:
        # the images are encoded once, for both the teacher-forced loss and the decoding
        memory = model.encode(batch["image"])
        logits = model.teacher_forced(memory, batch["tgt_input"], batch["tgt_padding_mask"])
        meter.add_loss(float(self.loss(logits, batch["tgt_output"])), int((batch["tgt_output"] != PAD).sum()))
        if self.recognizer is not None:     # --backend onnxruntime: the exported pair decodes, greedily
            ids = self.recognizer.decode(batch["image"], SOS, EOS, PAD, self.max_decode_len).tokens
        else:
            ids, _ = decode_batch(model, batch["image"], SOS, EOS, PAD, self.beam_size, self.max_decode_len,
                                  memory=memory)
        preds = [self.vocab.decode(row) for row in ids.tolist()]
        meter.update(batch["text"], preds)
        samples = self._samples[split]
        if len(samples) < 12:
            samples += [(img.cpu(), t, p) for img, t, p in zip(batch["image"], batch["text"], preds)][:12 - len(samples)]

    def example_input(self, batch_size: int, device: torch.device) -> torch.Tensor:
        return torch.rand(batch_size, 3, *self.fps_image_size, device=device)

    def speed_module(self, model: nn.Module) -> nn.Module:
        """FPS measures what a user runs: encode + batched decoding, lines per second."""
        return Recognizer(model, self.beam_size, self.max_decode_len)

    def sample_figure(self, split: str, title: str):
        """The split's last evaluation's first 12 lines with truth and prediction."""
        return text_samples_figure(self._samples[split], title) if self._samples.get(split) else None

    def final_artifacts(self, model: nn.Module, run_dir: str, device: torch.device) -> None:
        fig = self.sample_figure("valid", "validation lines (best checkpoint)")
        if fig is not None:
            save_figure(fig, os.path.join(run_dir, "sample_predictions.png"))


# ----------------------------------------------------------------------------- script

def add_args(p: argparse.ArgumentParser) -> None:
    """``train_vietocr.py``'s own flags: data in VietOCR's format, model, VietOCR's optimizer, inference."""
    d = p.add_argument_group("data (VietOCR format)")
    cli.add_flag(d, "--config", default=None, metavar="FILE.yml",
                 help="a VietOCR config file (base.yml + vgg-transformer.yml schema) as the defaults; typed flags "
                      "win (docs/train_vietocr.md lists what each key sets)")
    cli.add_flag(d, "--data-root", default=None, help="folder the image paths (and, as in VietOCR, annotation "
                 "paths that do not exist as given) are relative to")
    cli.add_flag(d, "--train-annotation", default=None, help="train annotation txt (path<TAB>label per line): "
                 "a path, or a name under --data-root as VietOCR's config gives it")
    cli.add_flag(d, "--valid-annotation", default=None, help="validation annotation txt")
    cli.add_flag(d, "--test-annotation", default=None, help="optional test annotation txt")
    cli.add_flag(d, "--lmdb-dir", default=None,
                 help="where LMDB caches go (default: DATA_ROOT/.lmdb_cache); keyed by annotation content")
    cli.add_flag(d, "--vocab", default=None, metavar="FILE",
                 help="characters file (default: VietOCR's 229-character Vietnamese vocabulary)")
    cli.add_flag(d, "--vocab-chars", default=None, metavar="CHARS",
                 help="the characters themselves, as a VietOCR config's vocab gives them (--vocab wins)")
    cli.add_flag(d, "--unknown-char", choices=["skip", "error"], default="skip",
                 help="labels with characters outside the vocabulary: skip and count, or stop")
    cli.add_flag(d, "--demo-dir", default="data/demo/ocr", help="where --demo writes its dataset")
    cli.add_flag(d, "--image-min-width", type=int, default=32)
    cli.add_flag(d, "--image-max-width", type=int, default=512)
    cli.add_flag(d, "--max-tokens", type=int, default=None,
                 help="dynamic batch size: about this many encoder positions (W/2 per line) per batch")
    cli.add_switch(d, "--augment", True,
                   "colour jitter, blur, perspective, invert on training lines")
    cli.add_flag(d, "--masked-lm", type=float, nargs="?", const=0.05, default=0.0, metavar="P",
                 help="masked-LM corruption of decoder inputs (flag alone: 0.05)")
    m = p.add_argument_group("model")
    cli.add_flag(m, "--arch", choices=VIETOCR_ARCHS, default="vgg_transformer")
    cli.add_flag(m, "--model-size", choices=["full", "small"], default="full",
                 help="full = VietOCR's architecture; small = scaled-down for CPU (see docs)")
    cli.add_flag(m, "--pretrained", action="store_true", help="ImageNet VGG19-bn weights (torchvision)")
    cli.add_flag(m, "--pretrained-weights", default=None, metavar="PATH",
                 help="local vgg19_bn state dict (implies --pretrained)")
    cli.add_flag(m, "--model-kwargs", nargs="*", default={}, type=cli.key_value, metavar="KEY=VALUE",
                 help="sequence model settings in VietOCR's names (a config's transformer: section), e.g. "
                      "num_decoder_layers=3 dim_feedforward=1024")
    cli.add_flag(m, "--init-from", default=None, metavar="CKPT",
                 help="start from these weights: a best_model.pt, or VietOCR's own (vgg_transformer.pth, its "
                      "config's pretrain)")
    cli.add_flag(m, "--grad-checkpointing", action="store_true",
                 help="recompute activations in backward (less memory, ~30%% slower)")
    cli.add_flag(m, "--label-smoothing", type=float, default=0.1)
    cli.add_flag(m, "--ctc-weight", type=float, default=0.0,
                 help="weight of an auxiliary CTC loss on the encoder (adds a training-only head; "
                      "0 = VietOCR's training); speeds up learning from random init")
    cli.add_flag(m, "--beam-size", type=int, default=1, help="1 = batched greedy with KV cache")
    cli.add_flag(m, "--max-decode-len", type=int, default=128)
    o = p.add_argument_group("optimizer (VietOCR: AdamW 0.9/0.98, eps 1e-9, OneCycle)")
    cli.add_flag(o, "--lr", type=float, default=3e-4, help="max learning rate (sets --base-lr and --head-lr)")
    cli.add_flag(o, "--pct-start", type=float, default=0.1, help="OneCycle warm-up fraction")
    cli.add_flag(o, "--iters", type=int, default=None,
                 help="VietOCR's trainer.iters: train about this many optimizer steps (sets --epochs from the data)")
    cli.add_flag(o, "--valid-every", type=int, default=None, metavar="STEPS",
                 help="VietOCR's trainer.valid_every, in steps (sets --val-every from the data)")
    i = p.add_argument_group("inference")
    cli.add_flag(i, "--predict", nargs="+", default=None, metavar="IMG", help="print text per image")
    cli.add_flag(i, "--weights", default=None, metavar="CKPT",
                 help="best_model.pt, or VietOCR's own weights (vgg_transformer.pth), for --predict")
    cli.add_flag(i, "--quantize", choices=["none", "int8"], default="none",
                 help="int8 dynamic quantization of Linear layers for CPU inference")
    cli.add_flag(i, "--export", choices=["onnx"], default=None,
                 help="write --weights as two ONNX files beside it (CNN + encoder, one decoder step with its cache)")
    cli.add_flag(i, "--backend", choices=["torch", "onnxruntime"], default="torch",
                 help="--predict/--evaluate: decode with PyTorch, or greedily with the --export onnx pair on the CPU")


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Flags over a ``--config`` file's values, ``--demo`` defaults and the demo data's paths, a resumed
    run's arguments; ``--lr`` is VietOCR's single learning rate (``--base-lr``/``--head-lr`` follow it
    unless typed)."""
    config = cli.explicit_args(parser, argv).get("config")
    if config:
        values, notes = read_vietocr_config(config)
        parser.set_defaults(**values)
        for line in notes:
            cli.notice(line, "warning")
    args = cli.parse_script_args(parser, argv, DEMO_DEFAULTS)
    args = cli.with_values(cli.set_default_lrs(parser, argv, args, args.lr, args.lr),
                           model_kwargs=dict(args.model_kwargs))
    if args.demo:    # the generated lines replace the data paths
        files = {split: os.path.join(args.demo_dir, f"{split}.txt") for split in ("train", "valid", "test")}
        args = cli.with_values(args, data_root=args.demo_dir, train_annotation=files["train"],
                               valid_annotation=files["valid"], test_annotation=files["test"])
    if args.backend == "onnxruntime" and (args.beam_size > 1 or args.quantize != "none"):
        raise DataError("the exported pair decodes greedily, unquantized: use --beam-size 1 and --quantize none, or "
                        "--backend torch", param="backend")
    return args


def build_vocab(args) -> Vocab:
    if args.vocab:
        return Vocab.from_file(args.vocab)
    try:
        return Vocab(args.vocab_chars or VIETOCR_VOCAB)
    except ValueError as exc:
        raise DataError(str(exc), param="vocab_chars") from None


def model_name(args) -> str:
    return args.model_name or (args.arch if args.model_size == "full" else f"{args.arch}_{args.model_size}")


def model_config(args, vocab: Vocab) -> dict:
    """What ``best_model.pt`` records to rebuild the model for inference."""
    return {"arch": args.arch, "model_size": args.model_size, "model_name": model_name(args), "vocab": vocab.chars,
            "image_min_width": args.image_min_width, "image_max_width": args.image_max_width,
            "ctc_head": args.ctc_weight > 0, "model_kwargs": args.model_kwargs}


def build_task(args, vocab: Vocab) -> OCRTask:
    return OCRTask(vocab, model_config(args, vocab), args.label_smoothing, args.masked_lm, args.beam_size,
                   args.max_decode_len, ctc_weight=args.ctc_weight)


def build_data(args, run: Run, vocab: Vocab, warnings: DataWarnings) -> dict:
    """Loaders by split (LMDB caches built first, by rank 0; the demo lines generated under ``--demo``)."""
    dist = run.dist
    if args.demo:
        run.prepare_demo(ensure_demo_ocr, args.demo_dir)
    for flag in ("data_root", "train_annotation", "valid_annotation"):
        if not getattr(args, flag):
            raise DataError(f"--{flag.replace('_', '-')} is required (or use --demo)")
    cache = args.lmdb_dir or os.path.join(args.data_root, ".lmdb_cache")
    loaders = {}
    for split in ("train", "valid", "test"):
        if not getattr(args, f"{split}_annotation"):
            continue
        ann = resolve_annotation(getattr(args, f"{split}_annotation"), args.data_root)
        # rank 0 builds; the others get its path (or its error)
        path = D.on_rank0(lambda: build_lmdb(ann, args.data_root, cache))
        ds = OCRDataset(path, vocab, ann, warnings, args.image_min_width,
                        args.image_max_width, augment=args.augment and split == "train",
                        unknown_char=args.unknown_char)
        limit = args.train_limit if split == "train" else args.valid_limit
        if limit:
            _limit(ds, limit, args.seed)
        sampler = WidthBucketBatchSampler(ds.widths, args.batch_size, shuffle=split == "train", seed=args.seed,
                                          max_tokens=args.max_tokens, rank=dist.rank,
                                          world_size=dist.world_size, pad=split == "train")
        loaders[split] = make_loader(ds, batch_size=args.batch_size, train=split == "train", seed=args.seed,
                                     num_workers=args.num_workers, pin_memory=args.pin_memory,
                                     collate_fn=collate_lines, batch_sampler=sampler)
        log.info("%s: %d lines from %s (%d batches)", split, len(ds), ann, len(sampler))
    return loaders


def _limit(ds: OCRDataset, limit: int, seed: int) -> None:
    """Keep a seeded random ``limit`` lines (in their original order)."""
    keep = seeded_subset(len(ds), limit, seed)
    for attr in ("index", "texts", "widths", "keys"):
        setattr(ds, attr, [getattr(ds, attr)[i] for i in keep])
