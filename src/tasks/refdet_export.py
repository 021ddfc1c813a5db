"""``train_yolov8n_refdet.py --export onnx``: a checkpoint as two ONNX models beside it, each checked with
ONNX Runtime (:mod:`src.training.export`), split where inference splits (``detect_video``): a video's
references are encoded once, then every frame is detected with that video's support features.

* ``<ckpt>_support.onnx``: ``support`` (V, K, 3, s, s) -> :data:`SUPPORT_OUTPUTS`, the fields of
  :class:`~src.models.refdet.SupportFeatures`: ``proto_p3/p4/p5`` (V, C_s) fusion prototypes and
  ``tokens_p3/p4/p5`` (V, K * n, C_s) patch tokens of the three scales, ``embed`` (V, E) the head's
  L2-normalized prototype. V is dynamic; K is the export's (3, the reference photos of a video).
* ``<ckpt>_detector.onnx``: ``images`` (N, 3, S, S), N dynamic, and one video's seven support tensors
  (V = 1) -> :data:`DETECTOR_OUTPUTS`, the head's raw outputs before NMS: ``logits`` (N, A), ``dist``
  (N, A, 4, reg_max) DFL logits, ``anchors`` (A, 2) and ``strides`` (A, 1) in input pixels; a dict of them
  goes straight into :func:`~src.models.refdet.postprocess`.

Images as the data layer gives them: letterboxed squares of the checkpoint's sizes (S ``image_size``,
s ``support_size``), float32 RGB in [0, 1] normalized with ImageNet's mean and std."""
from __future__ import annotations

import os

import torch
from torch import nn

from src.errors import DataError
from src.models.refdet import RefDetModel, SupportFeatures
from src.tasks.refdet_inference import load_for_inference
from src.training.export import check_onnx, export_onnx

SCALES = ("p3", "p4", "p5")
SUPPORT_OUTPUTS = tuple(f"proto_{s}" for s in SCALES) + tuple(f"tokens_{s}" for s in SCALES) + ("embed",)
DETECTOR_OUTPUTS = ("logits", "dist", "anchors", "strides")     # RefDetModel.detect's keys postprocess reads
REFERENCES = 3      # reference photos per video in the AeroEyes layout (VideoClips' support)


class SupportExport(nn.Module):
    """support (V, K, 3, s, s) -> the seven :data:`SUPPORT_OUTPUTS`. Given no cache keys,
    ``encode_support`` bypasses the support cache (a dict lookup, which has no graph)."""

    def __init__(self, model: RefDetModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, support: torch.Tensor) -> tuple[torch.Tensor, ...]:
        feats = self.model.encode_support(support)
        return (*feats.protos, *feats.tokens, feats.embed)


class DetectorExport(nn.Module):
    """images (N, 3, S, S) + one video's support tensors (V = 1) -> :data:`DETECTOR_OUTPUTS`:
    ``RefDetModel.detect`` as ``detect_video`` calls it, every frame paired with video 0.

    Raw outputs, not boxes decoded in pixels: those of a 640 input differ between the runtimes by a
    few float32 ulps (1.2e-4 measured), over the 1e-4 the check allows."""

    def __init__(self, model: RefDetModel) -> None:
        super().__init__()
        self.model = model

    # one argument per input: torch.export would take *support as one nested input
    def forward(self, images: torch.Tensor, proto_p3: torch.Tensor, proto_p4: torch.Tensor, proto_p5: torch.Tensor,
                tokens_p3: torch.Tensor, tokens_p4: torch.Tensor, tokens_p5: torch.Tensor,
                embed: torch.Tensor) -> tuple[torch.Tensor, ...]:
        feats = SupportFeatures([proto_p3, proto_p4, proto_p5], [tokens_p3, tokens_p4, tokens_p5], embed)
        zeros = torch.zeros(images.shape[0], dtype=torch.long, device=images.device)
        out = self.model.detect(images, feats, zeros)
        return tuple(out[k] for k in DETECTOR_OUTPUTS)


def _shapes(names, tensors, first: str | None = None) -> str:
    """``name (first, d1, ...)`` per tensor; ``first`` names a dynamic first dimension."""
    return ", ".join(f"{n} ({', '.join([first or str(t.shape[0]), *map(str, t.shape[1:])])})"
                     for n, t in zip(names, tensors))


def export_main(args) -> int:
    if not args.weights:
        raise DataError("--export needs --weights RUN_DIR/best_model.pt", param="weights")
    model, cfg = load_for_inference(args.weights, torch.device("cpu"), fold=True)
    size, support_size = cfg["image_size"], cfg["support_size"]
    stem = os.path.splitext(args.weights)[0]
    g = torch.Generator().manual_seed(0)
    # each is exported at one batch size and checked at another, so the dynamic dimension is checked too
    encoder, path = SupportExport(model), f"{stem}_support.onnx"
    export_onnx(encoder, (torch.randn(2, REFERENCES, 3, support_size, support_size, generator=g),), path,
                    ["support"], SUPPORT_OUTPUTS)
    support = torch.randn(1, REFERENCES, 3, support_size, support_size, generator=g)
    diff = check_onnx(path, encoder, (support,))
    with torch.no_grad():
        feats = encoder(support)
    print(f"wrote {path}: {_shapes(['support'], [support], 'V')} -> {_shapes(SUPPORT_OUTPUTS, feats, 'V')}; "
          f"ONNX Runtime vs PyTorch max abs difference {diff:.2e} at V=1")

    detector, path = DetectorExport(model), f"{stem}_detector.onnx"
    # the frames' batch is dynamic; the support inputs are one video's (V = 1)
    export_onnx(detector, (torch.randn(2, 3, size, size, generator=g), *feats), path, ("images", *SUPPORT_OUTPUTS),
                DETECTOR_OUTPUTS, dynamic=[{0: "batch"}] + [None] * len(feats))
    images = torch.randn(3, 3, size, size, generator=g)
    diff = check_onnx(path, detector, (images, *feats), input_names=("images", *SUPPORT_OUTPUTS))
    with torch.no_grad():
        outs = detector(images, *feats)
    print(f"wrote {path}: {_shapes(['images'], [images], 'N')} + the support outputs of one video (V = 1) -> "
          f"{_shapes(DETECTOR_OUTPUTS[:2], outs, 'N')}, {_shapes(DETECTOR_OUTPUTS[2:], outs[2:])} (before NMS); "
          f"ONNX Runtime vs PyTorch max abs difference {diff:.2e} at N=3")
    return 0
