"""``--export onnx``: a model written as ONNX through PyTorch's ``torch.export``-based exporter
(``torch.onnx.export(..., dynamo=True)``, which needs ``onnxscript``) and checked with ONNX Runtime on
the example input before success is reported."""
from __future__ import annotations

import importlib.util
import logging
import warnings
from contextlib import contextmanager
from typing import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from src.errors import DataError, TrainingError

log = logging.getLogger("src")


@contextmanager
def _quiet_optimizer():
    """The ONNX optimizer's notes on what it skips, not about the model: onnxscript's constant folding
    warns once per multi-output Split (the ViT's rotary embedding, hundreds of lines), onnx_ir's
    deduplication once per constant output (anchors, strides)."""
    loggers = [logging.getLogger(n) for n in ("onnxscript.optimizer", "onnx_ir.passes")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def export_onnx(module: nn.Module, inputs: tuple[torch.Tensor, ...], path: str, input_names: Sequence[str],
                output_names: Sequence[str], dynamic_batch: bool = True,
                dynamic: Sequence[Mapping[int, str | tuple[str, int]] | None] | None = None, legacy: bool = False,
                output_dynamic: Sequence[Mapping[int, str] | None] | None = None,
                metadata: Mapping[str, object] | None = None) -> None:
    """Write ``module`` (eval mode, on the CPU) for ``inputs`` to ``path``.

    ``dynamic``: per input, its symbolic dimensions ``{axis: name}`` or ``{axis: (name, largest size)}``
    (one name = one size across inputs); without it, ``dynamic_batch`` makes the first dimension of
    every input ``batch``. ``metadata``: key/value pairs written into the file (ONNX metadata_props).
    ``legacy``: PyTorch's TorchScript-based exporter instead of ``torch.export`` (for modules the
    latter cannot decompose yet, such as a bidirectional GRU in torch 2.14); it also takes the outputs'
    symbolic dimensions (``output_dynamic``).
    """
    # the exporter's dependencies: say so in one line rather than with an ImportError from deep inside it
    if not all(importlib.util.find_spec(m) for m in ("onnx", "onnxscript", "onnxruntime")):
        raise DataError("needs onnx, onnxscript and onnxruntime: pip install onnx onnxscript onnxruntime",
                        param="export")
    module = module.eval().cpu()
    if dynamic is None:
        dynamic = [{0: "batch"} if dynamic_batch else None for _ in inputs]
    if legacy:
        axes = {n: dict(d) for n, d in zip(list(input_names) + list(output_names),
                                           list(dynamic) + list(output_dynamic or [])) if d}
        with warnings.catch_warnings():    # its deprecation notice, once per export: not the user's concern
            warnings.simplefilter("ignore")
            torch.onnx.export(module, inputs, path, input_names=list(input_names), output_names=list(output_names),
                              dynamic_axes=axes, dynamo=False, opset_version=17)
        return
    dims: dict[str, torch.export.Dim] = {}

    def dim(spec):
        name, top = (spec, 65536) if isinstance(spec, str) else spec
        return dims.setdefault(name, torch.export.Dim(name, min=1, max=top))

    shapes = tuple(None if d is None else {axis: dim(spec) for axis, spec in d.items()} for d in dynamic)
    with warnings.catch_warnings(), _quiet_optimizer():
        # inputs sharing a symbolic size (one Dim object) make the exporter note that it keeps one name
        warnings.filterwarnings("ignore", message=".*axis name")
        program = torch.onnx.export(module, inputs, input_names=list(input_names), output_names=list(output_names),
                                    dynamic_shapes=shapes, dynamo=True, verbose=False)
    program.model.metadata_props.update({k: str(v) for k, v in (metadata or {}).items()})
    program.save(path)


def check_onnx(path: str, module: nn.Module, inputs: tuple[torch.Tensor, ...], atol: float = 1e-4,
               input_names: Sequence[str] | None = None) -> float:
    """Run ``path`` with ONNX Runtime and ``module`` with PyTorch on ``inputs``; the largest absolute
    difference of any output, or :class:`TrainingError` when it is above ``atol``. With ``input_names``
    (the export's), inputs the graph dropped as unused are left out of its feed."""
    import onnxruntime as ort

    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    names = list(input_names) if input_names else [i.name for i in session.get_inputs()]
    wanted = {i.name for i in session.get_inputs()}
    feed = {n: x.detach().cpu().numpy() for n, x in zip(names, inputs) if n in wanted}
    got = session.run(None, feed)
    with torch.no_grad():
        ref = module.eval().cpu()(*inputs)
    ref = ref if isinstance(ref, (tuple, list)) else (ref,)
    diff = max(float(np.abs(g - r.numpy()).max()) for g, r in zip(got, ref))
    if diff > atol:
        raise TrainingError(f"{path}: ONNX Runtime and PyTorch differ by {diff:.3g} (more than {atol:g}) on the "
                            f"example input; the export is not usable as it is")
    return diff
