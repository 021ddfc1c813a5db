"""``--tensorboard``: TensorBoard event files in the run directory, written through PyTorch's own
``torch.utils.tensorboard`` (the ``tensorboard`` package must be installed; it is in requirements).

Tags: every epoch figure of ``history.json`` under its own name at ``global_step = epoch``
(``train_loss``, ``valid_cer``, ``lr``...), the training loss and learning rate every N optimizer steps
under ``step/train_loss`` and ``step/lr`` at the step count, and the task's sample predictions
(:meth:`src.training.task.Task.sample_figure`) per epoch under ``samples/valid``.
"""
from __future__ import annotations

import math
from typing import Any

from src.errors import DataError


class Board:
    """One ``SummaryWriter`` for a run (rank 0 only)."""

    def __init__(self, run_dir: str) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise DataError("needs the tensorboard package: pip install tensorboard", param="tensorboard") from None
        self.writer = SummaryWriter(log_dir=run_dir)

    def step(self, step: int, loss: float, lr: float) -> None:
        """The training loss and lr after optimizer step ``step`` (the loop calls it every N steps)."""
        self.writer.add_scalar("step/train_loss", loss, step)
        self.writer.add_scalar("step/lr", lr, step)

    def epoch(self, epoch: int, row: dict[str, Any], figure=None) -> None:
        for key, value in row.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                self.writer.add_scalar(key, value, epoch)
        if figure is not None:
            self.writer.add_figure("samples/valid", figure, epoch)      # closes the figure
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
