"""``train_vietocr.py``'s inference: a ``best_model.pt`` (or its int8-quantized copy) turned into text,
batched by line width, greedy with a KV cache or beam search; ``--predict``."""
from __future__ import annotations

import os
import sys
from typing import Sequence

import torch
from PIL import Image
from torch import nn

from src.data.images import BadImage, load_rgb
from src.data.ocr import EOS, IMAGE_HEIGHT, PAD, SOS, VIETOCR_VOCAB, Vocab, WidthBucketBatchSampler, line_tensor, resized_width
from src.errors import DataError
from src.models.layers.fold import fold_conv_bn
from src.models.vietocr import build_vietocr, config_from_state_dict, decode_batch
from src.models.vietocr_onnx import OnnxRecognizer
from src.training.checkpoint import torch_load_file
from src.training.run import start_run

TASK_NAME = "ocr"


class Recognizer(nn.Module):
    """Images (N, 3, 32, W) -> decoded token ids (N, L): what a user runs, timed for FPS."""

    def __init__(self, model: nn.Module, beam_size: int, max_len: int) -> None:
        super().__init__()
        self.model, self.beam_size, self.max_len = model, beam_size, max_len

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return decode_batch(self.model, images, SOS, EOS, PAD, self.beam_size, self.max_len)[0]


def read_weights(path: str, vocab: Vocab | None = None, nhead: int | None = None) -> tuple[dict, dict]:
    """(state dict, model config) from a ``best_model.pt`` of this script or a VietOCR weights file: the
    plain state dict VietOCR exports and publishes (``vgg_transformer.pth``) or its trainer checkpoint
    (``{'state_dict': ...}``). VietOCR's files do not record their vocabulary: ``vocab`` (default
    VietOCR's) must have as many tokens as the weights."""
    obj = torch_load_file(path, "weights file")
    if isinstance(obj, dict) and "model" in obj:            # this project's checkpoint
        cfg = obj.get("model_config") or {}
        if obj.get("task") != TASK_NAME or "arch" not in cfg:
            raise DataError(f"{path}: not an OCR checkpoint (its task: {obj.get('task')})")
        return obj["model"], {**cfg, "epoch": obj.get("epoch")}
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise DataError(f"{path}: neither a best_model.pt of this script nor a VietOCR state dict")
    try:
        found = config_from_state_dict(state, nhead)
    except DataError as exc:
        raise DataError(f"{path}: {exc}") from None
    vocab = vocab or Vocab(VIETOCR_VOCAB)
    if found["vocab_size"] != len(vocab):
        raise DataError(f"{path}: the weights have {found['vocab_size']} tokens, the vocabulary has {len(vocab)} "
                        f"({len(vocab.chars)} characters + {Vocab.n_special} specials); pass the characters it was "
                        f"trained with (--vocab FILE, or the config's vocab)")
    return state, {**found, "vocab": vocab.chars, "model_name": f"vietocr_{found['arch']}"}


def load_for_inference(weights: str, device: torch.device, quantize: str = "none", vocab: Vocab | None = None,
                       nhead: int | None = None, fold: bool = False):
    """(model in eval mode, vocab, model_config) from :func:`read_weights`'s file; ``fold``: the CNN's
    Conv+BN pairs folded (:mod:`src.models.layers.fold`)."""
    state, cfg = read_weights(weights, vocab, nhead)
    vocab = Vocab(cfg["vocab"])
    model = build_vietocr(cfg["arch"], len(vocab), cfg["model_size"], ctc_head=cfg.get("ctc_head", False),
                          model_kwargs=cfg.get("model_kwargs"))
    model.load_state_dict(state)
    if fold:
        fold_conv_bn(model)
    model = model.to(device).eval()
    if quantize == "int8":
        model = quantize_int8(model)
    return model, vocab, cfg


def init_from(model: nn.Module, path: str, vocab: Vocab) -> None:
    """Start training from :func:`read_weights`'s file (VietOCR's ``pretrain``): every tensor but a new
    CTC head must fit the model built from the flags."""
    state, cfg = read_weights(path, vocab, getattr(model.transformer, "nhead", None))
    own = model.state_dict()
    missing = [k for k in own if k not in state and not k.startswith("ctc_head.")]
    unfit = [k for k in state if k not in own or state[k].shape != own[k].shape]
    if missing or unfit:
        raise DataError(f"{path}: a {cfg['arch']} {cfg['model_size']} model {cfg.get('model_kwargs') or ''}; the flags "
                        f"build another ({len(missing)} tensors missing, {len(unfit)} of another shape or name, e.g. "
                        f"{(missing + unfit)[0]})", param="init_from")
    model.load_state_dict(state, strict=False)


def load_any_weights(model: nn.Module, vocab: Vocab, path: str) -> int | None:
    """``--evaluate``'s loader: a best_model.pt of this script or VietOCR's weights, strictly (every
    tensor, a CTC head included when the model has one); the checkpoint's epoch (None for VietOCR's)."""
    state, cfg = read_weights(path, vocab, getattr(model.transformer, "nhead", None))
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise DataError(f"{path}: does not fit the model the flags build ({str(exc).splitlines()[0]})",
                        param="weights") from None
    return cfg.get("epoch")


def quantize_int8(model: nn.Module) -> nn.Module:
    """Dynamic int8 quantization of every ``nn.Linear`` (weights int8, activations quantized on
    the fly): a CPU inference speed-up for the transformer; the CNN stays fp32."""
    return torch.ao.quantization.quantize_dynamic(model.cpu(), {nn.Linear}, dtype=torch.qint8)


def onnx_paths(weights: str) -> tuple[str, str]:
    stem = os.path.splitext(weights)[0]
    return f"{stem}_encoder.onnx", f"{stem}_decoder.onnx"


def load_recognizer(weights: str) -> OnnxRecognizer:
    """``--backend onnxruntime``: the pair exported from ``weights``, or one line saying how to make it."""
    paths = onnx_paths(weights)
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise DataError(f"{missing[0]} not found: export it first (python train_vietocr.py --export onnx --weights "
                        f"{weights})", param="backend")
    return OnnxRecognizer(*paths)


@torch.no_grad()
def decode_images(model: nn.Module | OnnxRecognizer, images: Sequence[Image.Image], device: torch.device, batch_size: int = 32,
                  beam_size: int = 1, max_len: int = 128, min_width: int = 32,
                  max_width: int = 512) -> list[tuple[list[int], float]]:
    """Decoded token ids (as :func:`decode_batch` returns them) and confidence for each PIL image, in
    input order.

    Images are resized with VietOCR's rule and grouped by resized width, so each batch needs no
    padding and the decoder runs on full batches.
    """
    widths = [resized_width(im.width, im.height, IMAGE_HEIGHT, min_width, max_width) for im in images]
    out: list[tuple[list[int], float] | None] = [None] * len(images)
    for idx in WidthBucketBatchSampler(widths, batch_size, shuffle=False):
        x = torch.stack([line_tensor(images[i], widths[i]) for i in idx]).to(device).float().div_(255)
        if isinstance(model, OnnxRecognizer):      # --backend onnxruntime: greedy only (parse_args checks)
            ids, conf = model.decode(x, SOS, EOS, PAD, max_len)
        else:
            ids, conf = decode_batch(model, x, SOS, EOS, PAD, beam_size, max_len)
        for i, row, c in zip(idx, ids.tolist(), conf.tolist()):
            out[i] = (row, float(c))
    return out  # type: ignore[return-value]


def recognize(model: nn.Module, vocab: Vocab, images: Sequence[Image.Image], device: torch.device,
              batch_size: int = 32, beam_size: int = 1, max_len: int = 128, min_width: int = 32,
              max_width: int = 512) -> list[tuple[str, float]]:
    """Text and confidence for each PIL image, in input order (batched by width: :func:`decode_images`)."""
    return [(vocab.decode(row), conf) for row, conf in
            decode_images(model, images, device, batch_size, beam_size, max_len, min_width, max_width)]


def predict_main(args, vocab: Vocab) -> int:
    """``--predict IMG...``: text and confidence per image; ``vocab`` is for VietOCR's weights files
    (this project's checkpoints carry their own)."""
    if not args.weights:
        raise DataError("--predict needs --weights RUN_DIR/best_model.pt")
    with start_run("cpu" if args.quantize == "int8" else args.device, args.threads) as run:
        return _predict(args, vocab, run.device)


def _predict(args, vocab: Vocab, device: torch.device) -> int:
    model, vocab, cfg = load_for_inference(args.weights, device, args.quantize, vocab,
                                           dict(args.model_kwargs).get("nhead"), fold=True)
    if args.backend == "onnxruntime":          # the vocabulary and widths still come from the weights file
        model = load_recognizer(args.weights)
    images, paths, failed = [], [], 0
    for path in args.predict:
        try:
            images.append(load_rgb(path))
            paths.append(path)
        except BadImage as exc:
            print(f"{path}\terror: {exc.reason}", file=sys.stderr)
            failed += 1
    results = recognize(model, vocab, images, device, args.batch_size, args.beam_size, args.max_decode_len,
                        cfg.get("image_min_width", 32), cfg.get("image_max_width", 512))
    for path, (text, conf) in zip(paths, results):
        print(f"{path}\t{text}\t{conf:.4f}")
    return 1 if failed else 0
