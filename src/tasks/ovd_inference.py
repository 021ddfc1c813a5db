"""``train_ovd.py``'s inference: ground phrases in images with a ``best_model.pt`` (the Python API
:func:`ground` and ``--predict``, which prints boxes and writes annotated images)."""
from __future__ import annotations

import os
import sys
from typing import Sequence

import torch
from PIL import Image

from src.data.grounding import encode_words, to_pixels
from src.data.images import BadImage, image_to_tensor, letterbox, load_rgb
from src.errors import DataError
from src.models.ovd import GroundingModel, build_grounding_model
from src.models.text_encoders import HASHED
from src.training.checkpoint import load_checkpoint
from src.training.plots import draw_grounding
from src.training.run import start_run

TASK_NAME = "ovd"
# build_grounding_model's arguments recorded in a checkpoint's model_config (out_dim is its dim)
MODEL_KEYS = ("image_encoder", "out_dim", "fusion_layers", "fusion_heads", "decoder_layers", "num_queries",
              "text_layers", "buckets", "max_words", "image_size", "feature_index", "text_encoder",
              "freeze_text_encoder")
# keys added after the first checkpoints were written, with the value those checkpoints mean
LATER_KEYS = {"text_encoder": HASHED, "freeze_text_encoder": False}


def load_for_inference(weights: str, device: torch.device) -> tuple[GroundingModel, dict]:
    """(model in eval mode, model_config) from a ``best_model.pt`` of this script. A pretrained text
    encoder is rebuilt from the name or folder in ``model_config["text_encoder"]`` (its tokenizer and
    architecture; the weights, fine-tuned or not, come from the checkpoint)."""
    ckpt = load_checkpoint(weights)
    cfg = ckpt.get("model_config") or {}
    if ckpt.get("task") != TASK_NAME or "image_encoder" not in cfg:
        raise DataError(f"{weights}: not a train_ovd.py checkpoint")
    try:
        model = build_grounding_model(**model_kwargs(cfg))
    except DataError as exc:   # e.g. the text model's folder has moved since training
        raise DataError(f"{weights}: rebuilding its text encoder: {exc}", param="weights") from None
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval(), cfg


def model_kwargs(cfg: dict) -> dict:
    """``build_grounding_model`` arguments from a model_config (``out_dim`` is its ``dim``)."""
    return {("dim" if k == "out_dim" else k): cfg[k] if k in cfg else LATER_KEYS[k] for k in MODEL_KEYS}


def text_input(words: list[str], cfg: dict) -> torch.Tensor | list[str]:
    """The text encoder's input for one caption of ``words``: (1, L, G) n-gram ids (hashed) or the
    caption string in a list (a pretrained encoder tokenizes it itself)."""
    if cfg.get("text_encoder", HASHED) == HASHED:
        return encode_words(words, cfg["buckets"])[None]
    return [" ".join(words)]


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
    text = text_input(words, cfg)
    text = text.to(device) if isinstance(text, torch.Tensor) else text
    text_mask = torch.ones(1, len(words), dtype=torch.bool, device=device)
    phrase_mask = torch.zeros(1, len(phrases), len(words), dtype=torch.bool, device=device)
    for p, (start, count) in enumerate(spans):
        phrase_mask[0, p, start:start + count] = True
    final = model(x, text, text_mask, phrase_mask)["layers"][-1]
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
    with start_run(args.device, args.threads) as run:
        return _predict(args, run.device)


def _predict(args, device: torch.device) -> int:
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
