"""The contract between the engine (:func:`src.training.fit`, :func:`src.training.evaluate`) and a task
plugin: every hook the engine calls, declared once with its default.

A task says only what differs between scripts: how a batch becomes a loss, how a validation batch
updates the task's metric :class:`~src.metrics.meter.Meter`, which metric is monitored and in which
direction, an example input for FPS, and optionally per-epoch figures, a summary, state kept in
``last.pt``, the module FPS is measured on and files written at the end. The engine owns iteration,
device moves, train/eval mode, bad-sample accounting, autocast and the reduction across ranks.

Batches are dicts (or any batch without skipped samples). ``batch["bad"]`` lists ``(key, reason)``
for the samples the data layer skipped (the engine counts them in :attr:`Task.warnings`); a batch
that holds nothing else has no usable sample and never reaches a step (:func:`usable`).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from src.data.loading import DataWarnings
from src.metrics.meter import Meter


def skipped(batch: Any) -> list:
    """The ``(key, reason)`` pairs of the samples the data layer skipped in ``batch``."""
    return batch.get("bad", []) if isinstance(batch, dict) else []


def usable(batch: Any) -> bool:
    """False for a batch whose samples were all skipped (a dict that holds only ``"bad"``)."""
    return not isinstance(batch, dict) or any(k != "bad" for k in batch)


class Task:
    """Base class of the task plugins; subclasses set the class attributes and override the hooks.

    Attributes: ``name`` (recorded in checkpoints), ``monitor`` (a key of the validation metrics with
    its ``valid_`` prefix, e.g. ``"valid_acc"``), ``mode`` (``"max"`` or ``"min"``),
    ``fps_image_size`` (reported next to FPS), ``model_config`` (what ``best_model.pt`` needs to
    rebuild the model), ``warnings`` (skipped inputs, reported in ``metrics.json``).
    """

    name: str = "task"
    monitor: str = "valid_loss"
    mode: str = "min"

    def __init__(self, model_config: dict, fps_image_size: Any) -> None:
        self.model_config = model_config
        self.fps_image_size = fps_image_size
        self.warnings = DataWarnings()

    # --- training -----------------------------------------------------------------------------

    def training_step(self, model: nn.Module, batch: dict) -> tuple[torch.Tensor, int]:
        """``(loss, n_samples)`` of one batch (already on the model's device, under autocast)."""
        raise NotImplementedError

    def epoch_stats(self) -> dict[str, float]:
        """Figures added to each epoch's history row (called once the epoch has trained and validated)."""
        return {}

    # --- evaluation ---------------------------------------------------------------------------

    def new_meter(self, split: str) -> Meter:
        """An empty meter for one evaluation pass over ``split``."""
        raise NotImplementedError

    def validation_step(self, model: nn.Module, batch: dict, meter: Meter, split: str) -> None:
        """Update ``meter`` with one batch (on the device, in eval mode, without gradients)."""
        raise NotImplementedError

    # --- run end ------------------------------------------------------------------------------

    def summary(self) -> dict[str, Any]:
        """Entries added to ``metrics.json``."""
        return {}

    def example_input(self, batch_size: int, device: torch.device) -> Any:
        """A model input of ``batch_size`` samples for the FPS and latency figures."""
        raise NotImplementedError

    def speed_module(self, model: nn.Module) -> nn.Module:
        """What FPS times: the model itself, or what a user runs when inference is more than one
        forward (OCR: encoding + decoding)."""
        return model

    def sample_figure(self, split: str, title: str):
        """A matplotlib figure of the split's last evaluation's sample predictions (``None``: none):
        ``sample_predictions.png`` at the end, and TensorBoard's image per epoch under --tensorboard."""
        return None

    def final_artifacts(self, model: nn.Module, run_dir: str, device: torch.device) -> None:
        """Task files written into the run dir after the final evaluation (plots, samples)."""

    # --- state kept in last.pt ----------------------------------------------------------------

    def state_dict(self) -> dict | None:
        """Task state that ``--resume`` must restore (e.g. a loss's running statistics)."""
        return None

    def load_state_dict(self, state: dict) -> None:
        """Restore what :meth:`state_dict` returned."""
