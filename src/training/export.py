"""``--export onnx``: a model written as ONNX through PyTorch's ``torch.export``-based exporter
(``torch.onnx.export(..., dynamo=True)``, which needs ``onnxscript``) and checked with ONNX Runtime on
the example input before success is reported."""
from __future__ import annotations

import importlib.util
import logging
from typing import Sequence

import numpy as np
import torch
from torch import nn

from src.errors import DataError, TrainingError

log = logging.getLogger("src")


def export_onnx(module: nn.Module, inputs: tuple[torch.Tensor, ...], path: str, input_names: Sequence[str],
                output_names: Sequence[str], dynamic_batch: bool = True) -> None:
    """Write ``module`` (eval mode, on the CPU) for ``inputs`` to ``path``; with ``dynamic_batch`` the first
    dimension of every input and output is a symbol (``batch``), so any batch size runs."""
    # the exporter's dependencies: say so in one line rather than with an ImportError from deep inside it
    if not all(importlib.util.find_spec(m) for m in ("onnx", "onnxscript", "onnxruntime")):
        raise DataError("needs onnx, onnxscript and onnxruntime: pip install onnx onnxscript onnxruntime",
                        param="export")
    module = module.eval().cpu()
    shapes = None
    if dynamic_batch:
        batch = torch.export.Dim("batch", min=1, max=4096)
        shapes = tuple({0: batch} for _ in inputs)
    program = torch.onnx.export(module, inputs, input_names=list(input_names), output_names=list(output_names),
                                dynamic_shapes=shapes, dynamo=True, verbose=False)
    program.save(path)


def check_onnx(path: str, module: nn.Module, inputs: tuple[torch.Tensor, ...], atol: float = 1e-4) -> float:
    """Run ``path`` with ONNX Runtime and ``module`` with PyTorch on ``inputs``; the largest absolute
    difference of any output, or :class:`TrainingError` when it is above ``atol``."""
    import onnxruntime as ort

    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    feed = {i.name: x.detach().cpu().numpy() for i, x in zip(session.get_inputs(), inputs)}
    got = session.run(None, feed)
    with torch.no_grad():
        ref = module.eval().cpu()(*inputs)
    ref = ref if isinstance(ref, (tuple, list)) else (ref,)
    diff = max(float(np.abs(g - r.numpy()).max()) for g, r in zip(got, ref))
    if diff > atol:
        raise TrainingError(f"{path}: ONNX Runtime and PyTorch differ by {diff:.3g} (more than {atol:g}) on the "
                            f"example input; the export is not usable as it is")
    return diff
