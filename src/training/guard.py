"""The training loop's non-finite guard and loss bookkeeping, kept on the device: a step never waits for
the accelerator to tell the host whether its loss was finite.

A host read of a device value (``float(loss)``, ``bool(torch.isfinite(loss))``) makes the CPU wait until
the GPU has finished everything queued so far, so the next step's kernels cannot be queued while this
step's run: one such read per step is what keeps small models from keeping a GPU busy. Here every
per-step decision is a device tensor:

- the loss sum and sample count of finite steps, and the count of non-finite losses, accumulate on the
  device (:meth:`StepGuard.add`);
- whether an optimizer step applies is ``found_inf`` (:meth:`StepGuard.found_inf`): the gradients' total
  norm is not finite, or (one process) a loss since the last step was not. PyTorch's fused optimizers
  read it on the device and leave parameters and state untouched when it is set (the mechanism
  ``GradScaler`` uses for them). Under DDP the decision comes from the all-reduced gradients alone,
  which every rank holds identically, so the ranks agree without a collective of their own (a
  non-finite loss on one rank makes every rank's reduced gradients non-finite);
- the host looks every ``check_every`` optimizer steps and at the end of the epoch
  (:meth:`StepGuard.check`): it logs the non-finite losses since its last look and stops the run after
  ``max_bad_steps`` skipped optimizer steps in a row.
"""
from __future__ import annotations

import logging

import torch

from src.errors import TrainingError

log = logging.getLogger("src")


class StepGuard:
    """Device-side counters of one epoch (see the module docstring)."""

    def __init__(self, device: torch.device, max_bad_steps: int, distributed: bool, check_every: int = 50) -> None:
        def zero(dtype=torch.float32):
            return torch.zeros((), dtype=dtype, device=device)

        self.max_bad_steps, self.distributed, self.check_every = max_bad_steps, distributed, check_every
        self.loss_sum, self.samples, self.bad_losses = zero(torch.float64), zero(torch.int64), zero(torch.int64)
        self._window_bad = zero(torch.bool)               # a non-finite loss since the last optimizer step
        self._run, self._longest = zero(torch.int64), zero(torch.int64)     # skipped optimizer steps in a row
        self._reported = 0                                # bad_losses already logged

    def add(self, loss: torch.Tensor, n: int) -> None:
        """A micro-batch's loss (0-dim) for ``n`` samples; counted in the epoch's loss when finite."""
        loss = loss.detach()
        finite = torch.isfinite(loss)
        self.loss_sum += torch.where(finite, loss.double() * n, 0.0)
        self.samples += finite.long() * n
        self.bad_losses += (~finite).long()
        self._window_bad |= ~finite

    def found_inf(self, grad_norm: torch.Tensor) -> torch.Tensor:
        """float 0-dim, 1.0 when this optimizer step must not apply; updates the run of skipped steps."""
        bad = ~torch.isfinite(grad_norm.detach())
        if not self.distributed:        # under DDP a rank's own loss would let the ranks disagree
            bad = bad | self._window_bad
        self._window_bad.zero_()
        self._run = torch.where(bad, self._run + 1, 0)
        self._longest = torch.maximum(self._longest, self._run)
        return bad.float()

    def check(self, epoch: int, step: int) -> None:
        """The host's look (a sync): log new non-finite losses; stop after ``max_bad_steps`` in a row."""
        bad, longest = int(self.bad_losses), int(self._longest)
        if bad > self._reported:
            log.warning("%d non-finite loss(es) in epoch %d by step %d: their optimizer steps were skipped",
                        bad - self._reported, epoch, step)
            self._reported = bad
        if longest >= self.max_bad_steps:
            raise TrainingError(f"{longest} non-finite losses in a row (max_bad_steps {self.max_bad_steps}); "
                                f"stopped. Try a lower learning rate, gradient clipping or no AMP. The last good "
                                f"checkpoint is kept.")

    def mean_loss(self) -> float:
        """This rank's mean finite loss so far (a sync: for the progress bar at check time)."""
        n = int(self.samples)
        return float(self.loss_sum) / n if n else float("nan")


def optimizer_step(optimizer: torch.optim.Optimizer, found_inf: torch.Tensor, scaler=None) -> None:
    """Apply ``optimizer``'s step unless ``found_inf`` (0-dim float) is set: on the device for fused
    optimizers, after one host read otherwise. With ``scaler`` (fp16 AMP), ``GradScaler`` decides from
    its own check of the gradients (an overflow also lowers its scale)."""
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    elif getattr(optimizer, "_step_supports_amp_scaling", False):
        optimizer.grad_scale, optimizer.found_inf = None, found_inf
        optimizer.step()
    elif not bool(found_inf):
        optimizer.step()
