"""The one evaluation loop: :func:`evaluate` (the engine's half that :func:`src.training.fit` and the
scripts' evaluation share), and :func:`to_device`, the one device move of a batch."""
from __future__ import annotations

from contextlib import nullcontext
from typing import Any, Callable, ContextManager

import torch
from torch import nn

from src.data.loading import DataWarnings
from src.training import distributed as D
from src.training.task import Task, skipped, usable


def to_device(batch: Any, device: torch.device, non_blocking: bool = False) -> Any:
    """``batch`` with every tensor on ``device``: tensors inside dicts, lists and tuples at any depth
    (a detector's list of per-image target dicts included); anything else is left as it is."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=non_blocking)
    if isinstance(batch, dict):
        return {k: to_device(v, device, non_blocking) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device, non_blocking) for v in batch)
    return batch


def gathered_warnings(task: Task) -> DataWarnings:
    """Every rank's data warnings of ``task``, merged (the same counts on every rank)."""
    merged = DataWarnings()
    for state in D.all_gather_objects(task.warnings.state()):
        merged.load_state(state)
    return merged


@torch.no_grad()
def evaluate(model: nn.Module, task: Task, loader, device: torch.device, split: str,
             autocast: Callable[[], ContextManager] = nullcontext) -> dict[str, float]:
    """Score ``model`` on ``loader``: the metrics of ``task``'s meter (without the ``split`` prefix),
    reduced over every DDP rank.

    Counts the batches' skipped samples in ``task.warnings``, passes over batches with no usable sample,
    runs in eval mode without gradients (restoring the mode after) and under ``autocast``. Each rank's
    meter state is gathered; every rank merges all of them in rank order into a fresh meter, so the
    ranks agree on the figures exactly.
    """
    was_training = model.training
    model.eval()
    meter = task.new_meter(split)
    non_blocking = device.type == "cuda"
    try:
        with autocast():
            for batch in loader:
                task.warnings.add_many(skipped(batch))
                if usable(batch):
                    task.validation_step(model, to_device(batch, device, non_blocking), meter, split)
    finally:
        model.train(was_training)
    states = D.all_gather_objects(meter.state())
    if len(states) > 1:
        meter = task.new_meter(split)
        meter.merge(states)
    return meter.compute()
