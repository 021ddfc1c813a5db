"""The one interface of every metric meter: ``update`` (task-specific arguments), ``state``, ``merge``,
``compute``. The engine reduces every task's metrics across DDP ranks the same way: each rank's
``state()`` is gathered, and every rank merges all of them, in rank order, into an empty meter, so
all ranks compute the same figures from the same data.
"""
from __future__ import annotations

from typing import Any, Sequence


class Meter:
    """Base class. ``state()`` must be picklable (it crosses ranks); ``merge(states)`` adds those
    states to this meter's own; ``compute()`` returns the metrics without a split prefix."""

    def state(self) -> Any:
        raise NotImplementedError

    def merge(self, states: Sequence[Any]) -> None:
        raise NotImplementedError

    def compute(self) -> dict[str, float]:
        raise NotImplementedError


class SumMeter(Meter):
    """Named running sums (``add(loss=..., n=...)``): the state is the sums, merging adds them.

    Every meter here keeps the validation loss this way: ``add_loss(mean_loss, weight)`` with the
    weight the loss was averaged over (samples or tokens); :meth:`loss` is the weighted mean.
    """

    def __init__(self, *keys: str) -> None:
        self.sums: dict[str, float] = dict.fromkeys(("loss_sum", "loss_weight", *keys), 0.0)

    def add(self, **values: float) -> None:
        for k, v in values.items():
            self.sums[k] += v

    def add_loss(self, loss: float, weight: float) -> None:
        self.sums["loss_sum"] += loss * weight
        self.sums["loss_weight"] += weight

    def loss(self) -> float:
        return self.sums["loss_sum"] / self.sums["loss_weight"] if self.sums["loss_weight"] else float("nan")

    def state(self) -> Any:
        return dict(self.sums)

    def merge(self, states: Sequence[Any]) -> None:
        for state in states:
            for k, v in state.items():
                self.sums[k] += v

    def compute(self) -> dict[str, float]:
        return {"loss": self.loss()}


class WithLoss(SumMeter):
    """A metric meter plus the validation loss: ``meter.inner.update(...)`` for the metric,
    ``meter.add_loss(...)`` for the loss; ``compute()`` gives both."""

    def __init__(self, inner: Meter) -> None:
        super().__init__()
        self.inner = inner

    def state(self) -> Any:
        return {"sums": super().state(), "inner": self.inner.state()}

    def merge(self, states: Sequence[Any]) -> None:
        super().merge([s["sums"] for s in states])
        self.inner.merge([s["inner"] for s in states])

    def compute(self) -> dict[str, float]:
        # the inner meter's own loss, if it keeps one, is not the one fed here
        return {"loss": self.loss(), **{k: v for k, v in self.inner.compute().items() if k != "loss"}}
