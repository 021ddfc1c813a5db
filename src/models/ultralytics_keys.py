"""ultralytics YOLOv8 detector weights onto our YOLOv8n-style detector (backbone + PAN neck).

Our :class:`~src.models.layers.yolo.YOLOv8Backbone` + :class:`~src.models.layers.yolo.YOLOv8PAN` at the
"n" scale (width 0.25, depth 0.33, max channels 1024) are ultralytics' ``yolov8n.yaml`` layers 0-21,
same shapes, same order (Jocher et al., Ultralytics YOLOv8, 2023, https://github.com/ultralytics/ultralytics:
the layer list of ``ultralytics/cfg/models/v8/yolov8.yaml`` and the sub-module names of ``Conv``,
``C2f``, ``Bottleneck`` and ``SPPF`` in ``ultralytics/nn/modules``, read, not copied: ultralytics is
AGPL-3.0 and is never imported at module level nor required). Inside a layer the tensor names agree
(``conv``/``bn``, ``cv1``/``cv2``, ``m.i.cv1``); only the layer's path differs, so the mapping is one
table of layer index -> our module path. Layer 22 is ultralytics' Detect head, which our
:class:`~src.models.refdet.RefDetHead` replaces: its tensors are skipped and counted.

The detector's channels do not depend on ``--image-size``, ``--support-size`` or ``--embed-dim`` (the
head's embedding): P3, P4, P5 have 64, 128, 256 channels, as yolov8n's. Another scale (yolov8s:
width 0.50; yolov8m: width 0.75, depth 0.67) fails on its first tensor whose shape or name does not fit.
"""
from __future__ import annotations

import importlib
import os
import pickle
import re
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from src.errors import DataError
from src.models.layers.yolo import YOLOv8Backbone, YOLOv8PAN

# yolov8n.yaml layer index -> our module path (the layers with tensors)
LAYER_PATHS = {
    0: "backbone.stem.0", 1: "backbone.stem.1", 2: "backbone.stem.2",          # Conv, Conv, C2f
    3: "backbone.stage3.0", 4: "backbone.stage3.1",                            # Conv, C2f -> P3
    5: "backbone.stage4.0", 6: "backbone.stage4.1",                            # Conv, C2f -> P4
    7: "backbone.stage5.0", 8: "backbone.stage5.1", 9: "backbone.stage5.2",    # Conv, C2f, SPPF -> P5
    12: "neck.top4", 15: "neck.top3", 16: "neck.down3", 18: "neck.bottom4", 19: "neck.down4", 21: "neck.bottom5",
}
# layers without tensors (ours are plain functions of the forward)
PARAMETERLESS = {10: "Upsample", 11: "Concat", 13: "Upsample", 14: "Concat", 17: "Concat", 20: "Concat"}
DETECT_LAYER = 22
DETECTOR_PREFIXES = ("backbone.", "neck.")
YOLOV8N = "yolov8n (width 0.25, depth 0.33, max channels 1024)"

# "model.0.conv.weight" (DetectionModel.state_dict()), "0.conv.weight" (its .model, the nn.Sequential),
# "model.model.0.conv.weight" (the YOLO wrapper's own state_dict())
_KEY = re.compile(r"^(?:model\.)*(\d+)\.(.+)$")


@dataclass
class Conversion:
    """Our detector's state dict (``backbone.*``, ``neck.*``) and the source keys skipped (Detect head)."""
    state_dict: dict[str, torch.Tensor]
    skipped: list[str]

    def describe(self, source: str, verb: str = "loaded into") -> str:
        line = f"{source}: {len(self.state_dict)} tensors of yolov8n layers 0-21 {verb} the detector (backbone + neck)"
        if self.skipped:
            line += f"; {len(self.skipped)} Detect-head tensors (model.{DETECT_LAYER}.*) skipped"
        return line


def yolov8n_detector() -> nn.Module:
    """Our detector alone, at the scale :class:`~src.models.refdet.RefDetModel` builds it (yolov8n's):
    ``backbone`` + ``neck``, what the converter fits a state dict to."""
    backbone = YOLOv8Backbone(width=0.25, depth=0.33, max_channels=1024)
    return nn.ModuleDict({"backbone": backbone, "neck": YOLOv8PAN(backbone.channels, depth=0.33)})


def detector_target(model: nn.Module) -> dict[str, torch.Tensor]:
    """The tensors a detector state dict must fill: ``model``'s ``backbone.*`` and ``neck.*`` entries."""
    return {k: v for k, v in model.state_dict().items() if k.startswith(DETECTOR_PREFIXES)}


def ultralytics_name(key: str) -> str:
    """Our detector key -> ultralytics' name for it (``backbone.stage5.2.cv1.conv.weight`` ->
    ``model.9.cv1.conv.weight``), for messages."""
    for index, path in LAYER_PATHS.items():
        if key.startswith(path + "."):
            return f"model.{index}.{key[len(path) + 1:]}"
    return key


def _fit(pairs, target: Mapping[str, torch.Tensor], source: str, param: str | None) -> dict[str, torch.Tensor]:
    """``(source key, our key, tensor)`` triples -> our state dict, every name and shape checked and
    every target tensor filled; the first misfit raises one DataError naming it."""
    out: dict[str, torch.Tensor] = {}
    for src_key, ours, value in pairs:
        if ours not in target:
            raise DataError(f"{source}: {src_key} has no place in our detector (as {ours}); not a {YOLOV8N} "
                            f"state dict", param=param)
        if ours in out:
            raise DataError(f"{source}: {src_key} appears twice (as {ours})", param=param)
        if tuple(value.shape) != tuple(target[ours].shape):
            raise DataError(f"{source}: {src_key} has shape {tuple(value.shape)} but our detector's {ours} is "
                            f"{tuple(target[ours].shape)}; not a {YOLOV8N} state dict (another scale?)", param=param)
        # ultralytics saves fp16; our detector trains in fp32 (integer counters stay integers)
        out[ours] = value.detach().to(target[ours].dtype).clone()
    missing = [k for k in target if k not in out]
    if missing:
        name = ultralytics_name(missing[0])
        raise DataError(f"{source}: {len(missing)} of the detector's {len(target)} tensors are missing, first "
                        f"{name} (layer {name.split('.')[1] if name.startswith('model.') else '?'}, our {missing[0]})",
                        param=param)
    return {k: out[k] for k in target}


def convert_state_dict(state: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor],
                       source: str = "state dict", param: str | None = None) -> Conversion:
    """A detector state dict in ultralytics' layout (``model.N.*``, with or without ``model.``) or in
    ours (``backbone.*``/``neck.*``, what :mod:`src.tools.convert_ultralytics` writes) -> ours.

    ``target``: our detector's tensors (:func:`detector_target`), whose names and shapes every tensor
    must match, and which must all be filled. Detect-head keys (``model.22.*``) are skipped and listed.
    """
    if state and all(k.startswith(DETECTOR_PREFIXES) for k in state):     # already ours
        return Conversion(_fit(((k, k, v) for k, v in state.items()), target, source, param), [])
    skipped: list[str] = []

    def pairs():
        for key, value in state.items():
            match = _KEY.match(key)
            if match is None:
                raise DataError(f"{source}: {key} is not a key of an ultralytics detector (model.N...) nor of ours "
                                f"(backbone..., neck...)", param=param)
            index, rest = int(match.group(1)), match.group(2)
            if index == DETECT_LAYER:
                skipped.append(key)
            elif index in PARAMETERLESS or index > DETECT_LAYER:
                what = f"{PARAMETERLESS[index]}, which has no tensors" if index in PARAMETERLESS else "past Detect"
                raise DataError(f"{source}: {key}: layer {index} of yolov8n is {what}; not a {YOLOV8N} state dict",
                                param=param)
            else:
                yield key, f"{LAYER_PATHS[index]}.{rest}", value

    return Conversion(_fit(pairs(), target, source, param), skipped)


def read_state_dict(path: str, param: str | None = None, allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    """A state dict from ``path``: a plain one (``torch.load(weights_only=True)``) or, with ``allow_pickle``
    (the converter, a deliberate step) and ultralytics installed, an ultralytics ``.pt`` (a pickled model).
    Training reads tensors only: an ultralytics ``.pt`` given to it is refused with the command to convert it."""
    if not os.path.isfile(path):
        raise DataError(f"file not found: {path}", param=param)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "GLOBAL ultralytics." not in str(exc):
            raise DataError(f"{path}: holds Python objects that could run code when loaded, not a state dict; "
                            f"not loaded (save one with torch.save(model.state_dict(), PATH))", param=param) from None
        if not allow_pickle:
            raise DataError(f"{path} is an ultralytics checkpoint (a pickled model, which runs code when loaded); "
                            f"convert it once to plain tensors: python -m src.tools.convert_ultralytics {path} "
                            f"yolov8n_detector.pt", param=param) from None
        obj = _read_ultralytics_pickle(path, param)
    except Exception as exc:
        raise DataError(f"{path}: not a readable PyTorch file ({type(exc).__name__})", param=param) from None
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise DataError(f"{path}: not a state dict (a dict of tensors)", param=param)
    return dict(obj)


def _read_ultralytics_pickle(path: str, param: str | None) -> dict[str, torch.Tensor]:
    """An ultralytics checkpoint holds its pickled ``DetectionModel``: unpickling it needs ultralytics'
    classes, so ultralytics (AGPL-3.0) is imported here only, when the user has it, never required."""
    try:
        importlib.import_module("ultralytics")     # the pickle names its classes
    except ImportError:
        raise DataError(f"{path} is an ultralytics checkpoint (pickled model); install ultralytics to read it, or "
                        f"save its model.state_dict() where ultralytics is installed: torch.save(YOLO('{path}')"
                        f".model.state_dict(), 'yolov8n_sd.pt')", param=param) from None
    # a pickle runs code when loaded, as ultralytics itself loads these files: only for files the user trusts
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    model = ckpt
    if isinstance(ckpt, dict):      # the EMA when it was saved, as ultralytics' own loader prefers it
        model = ckpt["ema"] if ckpt.get("ema") is not None else ckpt.get("model")
    if not isinstance(model, nn.Module):
        raise DataError(f"{path}: an ultralytics file without a model ('ema' or 'model' entry)", param=param)
    return model.float().state_dict()


def load_detector_weights(model: nn.Module, path: str, param: str | None = "detector_weights") -> Conversion:
    """Initialize ``model.backbone`` and ``model.neck`` from ``path`` (any layout
    :func:`convert_state_dict` takes, any file :func:`read_state_dict` reads); everything else of
    ``model`` is left as it is. Returns what was loaded and skipped."""
    done = convert_state_dict(read_state_dict(path, param), detector_target(model), path, param)
    for prefix in DETECTOR_PREFIXES:
        part = {k[len(prefix):]: v for k, v in done.state_dict.items() if k.startswith(prefix)}
        getattr(model, prefix[:-1]).load_state_dict(part, strict=True)
    return done
