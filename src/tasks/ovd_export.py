"""``train_ovd.py --export onnx``: a grounding checkpoint as ONNX (image + tokenized phrases -> boxes and
logits), written beside the checkpoint and checked with ONNX Runtime (:mod:`src.training.export`).

Tokenization stays in Python (:func:`onnx_feed`, the same words and n-gram ids as ``--predict``); the
graph takes what the model takes after it, every size but the image's dynamic:

* ``image`` float32 (N, 3, S, S): letterboxed, normalized with ImageNet's mean and std
  (:func:`src.data.images.image_to_tensor`), S the checkpoint's image size;
* ``ngram_ids`` int64 (N, L, G): each caption word's hashed n-gram ids, 0-padded
  (:func:`src.data.grounding.encode_words`); L <= the checkpoint's ``max_words``, G <= ``MAX_NGRAMS``;
* ``text_mask`` bool (N, L): True on words; ``phrase_mask`` bool (N, P, L): True on each phrase's words
  (an all-False row pads a caption with fewer phrases);
* outputs: the final decoder layer's ``boxes`` (N, Q, 4) cxcywh in [0, 1] of the letterboxed square and
  ``logits`` (N, Q, P), Q = ``num_queries``; ``sigmoid(logits)`` are ``--predict``'s scores.

Only the default hashed text encoder is exported: a Hugging Face encoder tokenizes strings inside its
forward, which no graph can hold. The file's metadata records what :func:`onnx_feed` needs
(``image_size``, ``buckets``, ``max_words``), read back by :func:`onnx_config`.
"""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import torch
from PIL import Image
from torch import nn

from src.data.grounding import MAX_NGRAMS, encode_words
from src.data.images import image_to_tensor, letterbox
from src.errors import DataError
from src.models.ovd import GroundingModel
from src.models.text_encoders import HASHED
from src.tasks.ovd_inference import load_for_inference, phrases_caption
from src.training.checkpoint import load_checkpoint
from src.training.export import check_onnx, export_onnx

INPUTS = ("image", "ngram_ids", "text_mask", "phrase_mask")
OUTPUTS = ("boxes", "logits")
# the model_config entries written into the ONNX file's metadata (what onnx_feed needs, and the name)
METADATA = ("image_size", "buckets", "max_words", "num_queries", "model_name")


class FinalLayer(nn.Module):
    """The grounding model with the exported inputs and only the final layer's outputs (boxes, logits):
    the proposals and auxiliary layers matter to the losses, not to a runtime."""

    def __init__(self, model: GroundingModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, image, ngram_ids, text_mask, phrase_mask) -> tuple[torch.Tensor, torch.Tensor]:
        final = self.model(image, ngram_ids, text_mask, phrase_mask)["layers"][-1]
        return final["boxes"], final["logits"]


def text_tensors(phrases: Sequence[Sequence[str]], cfg: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``ngram_ids`` (N, L, G), ``text_mask`` (N, L), ``phrase_mask`` (N, P, L) for N images' phrase lists:
    each list becomes the caption "p1, p2 and p3" that ``--predict`` builds, padded to the batch's
    longest as the training batches are (:func:`src.data.grounding.collate_grounding`)."""
    captions = [phrases_caption(p) for p in phrases]
    for words, _ in captions:
        if len(words) > cfg["max_words"]:
            raise DataError(f"--phrases: {len(words)} words in all; this model reads at most {cfg['max_words']}")
    ids = [encode_words(words, int(cfg["buckets"])) for words, _ in captions]
    N, L, P = len(ids), max(i.shape[0] for i in ids), max(len(s) for _, s in captions)
    ngram_ids = torch.zeros(N, L, max(i.shape[1] for i in ids), dtype=torch.long)
    text_mask = torch.zeros(N, L, dtype=torch.bool)
    phrase_mask = torch.zeros(N, P, L, dtype=torch.bool)
    for b, (i, (_, spans)) in enumerate(zip(ids, captions)):
        ngram_ids[b, :i.shape[0], :i.shape[1]] = i
        text_mask[b, :i.shape[0]] = True
        for p, (start, count) in enumerate(spans):
            phrase_mask[b, p, start:start + count] = True
    return ngram_ids, text_mask, phrase_mask


def onnx_feed(images: Sequence[Image.Image], phrases: Sequence[Sequence[str]], cfg: dict
              ) -> tuple[dict[str, np.ndarray], list[float]]:
    """The exported model's inputs for PIL images and each image's phrases, prepared as ``--predict``
    prepares them, and each image's letterbox scale (pixels = box * image_size / scale, as
    :func:`src.data.grounding.to_pixels`). ``cfg``: the checkpoint's model_config or :func:`onnx_config`.

        import onnxruntime as ort
        session = ort.InferenceSession("best_model.onnx")
        feed, scales = onnx_feed([image], [["a red circle", "the blue square"]], onnx_config("best_model.onnx"))
        boxes, logits = session.run(None, feed)     # (1, Q, 4) cxcywh in [0, 1], (1, Q, 2)
    """
    size = int(cfg["image_size"])
    boxed = [letterbox(im, None, size) for im in images]
    image = torch.stack([image_to_tensor(b) for b, _, _ in boxed])
    text = text_tensors(phrases, cfg)
    return {k: v.numpy() for k, v in zip(INPUTS, (image, *text))}, [s for _, _, s in boxed]


def onnx_config(path: str) -> dict:
    """The model_config entries recorded in an exported file's metadata (integers as integers)."""
    import onnxruntime as ort

    meta = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).get_modelmeta().custom_metadata_map
    return {k: int(v) if v.isdigit() else v for k, v in meta.items() if k in METADATA}


def export_final_layer(module: FinalLayer, inputs: tuple[torch.Tensor, ...], path: str, cfg: dict) -> None:
    """Write ``module`` for ``inputs`` to ``path`` with batch, words, n-grams and phrases dynamic and the
    metadata :func:`onnx_config` reads."""
    words = ("words", cfg["max_words"])        # the text encoder's position table bounds it
    export_onnx(module, inputs, path, INPUTS, OUTPUTS,
                dynamic=[{0: "batch"}, {0: "batch", 1: words, 2: ("ngrams", MAX_NGRAMS)}, {0: "batch", 1: words},
                         {0: "batch", 1: "phrases", 2: words}],
                metadata={k: cfg[k] for k in METADATA if k in cfg})


def export_main(args) -> int:
    if not args.weights:
        raise DataError("--export needs --weights RUN_DIR/best_model.pt", param="weights")
    # read before the model is built: rebuilding a Hugging Face encoder may need transformers or the hub
    encoder = (load_checkpoint(args.weights).get("model_config") or {}).get("text_encoder", HASHED)
    if encoder != HASHED:
        raise DataError(f"onnx supports only the hashed text encoder; this checkpoint's {encoder} tokenizes "
                        "caption strings inside the model", param="export")
    model, cfg = load_for_inference(args.weights, torch.device("cpu"))
    module, size = FinalLayer(model), cfg["image_size"]
    path = os.path.splitext(args.weights)[0] + ".onnx"
    g = torch.Generator().manual_seed(0)
    example = [["a small red circle", "the blue square"], ["a green star"]]
    export_final_layer(module, (torch.randn(2, 3, size, size, generator=g), *text_tensors(example, cfg)), path, cfg)
    # checked at other sizes than the export's, so the dynamic batch, words and phrases are checked too
    check = [["the red circle"], ["a big yellow diamond", "the star", "a blue square"],
             ["a purple triangle", "a circle"]]
    diff = check_onnx(path, module, (torch.randn(3, 3, size, size, generator=g), *text_tensors(check, cfg)))
    print(f"wrote {path}: image (N, 3, {size}, {size}) ImageNet-normalized, ngram_ids (N, L, G), text_mask (N, L), "
          f"phrase_mask (N, P, L) -> boxes (N, {cfg['num_queries']}, 4) cxcywh, logits (N, {cfg['num_queries']}, P) "
          f"(inputs: src.tasks.ovd_export.onnx_feed); ONNX Runtime vs PyTorch max abs difference {diff:.2e} "
          f"at batch 3 with 1-3 phrases")
    return 0
