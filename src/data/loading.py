"""Pieces every dataset shares: skip-and-count bookkeeping, a collate that drops bad samples, an
epoch-seeded (and rank-sharded) sampler, and the DataLoader factory.

Policy (DESIGN section 4): a bad single sample is skipped and counted, never a crash inside a worker.
Datasets return ``{"bad": (key, reason)}`` for such a sample; :func:`collate_skip_bad` moves those to
``batch["bad"]`` and the task records them in a :class:`DataWarnings`, which counts each bad input
once however many epochs see it.
"""
from __future__ import annotations

import logging
import math
import random
from collections import defaultdict
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from torch.utils.data._utils.collate import default_collate

log = logging.getLogger(__name__)


class DataWarnings:
    """Unique bad inputs per reason; ``counts()`` feeds ``metrics.json`` ``data_warnings``."""

    def __init__(self) -> None:
        self._seen: dict[str, set[str]] = defaultdict(set)

    def add(self, reason: str, key: str, detail: str = "", quiet: bool = False) -> None:
        """Count ``key`` once under ``reason``; ``quiet`` skips the per-item log line, for reasons
        that are routine in a dataset (Flickr30k Entities phrases without a box) and only summarized."""
        if key not in self._seen[reason]:
            self._seen[reason].add(key)
            if not quiet:
                log.warning("skipped %s (%s)%s", key, reason, f": {detail}" if detail else "")

    def add_many(self, items: Sequence[tuple[str, str]]) -> None:
        for key, reason in items:
            self.add(reason, key)

    def merge(self, other: "DataWarnings") -> None:
        for reason, keys in other._seen.items():
            self._seen[reason] |= keys

    def state(self) -> dict[str, list[str]]:
        return {reason: sorted(keys) for reason, keys in self._seen.items()}

    def load_state(self, state: dict[str, list[str]]) -> None:
        for reason, keys in state.items():
            self._seen[reason] |= set(keys)

    def counts(self) -> dict[str, int]:
        return {reason: len(keys) for reason, keys in sorted(self._seen.items()) if keys}


def seeded_subset(size: int, limit: int | None, seed: int) -> list[int]:
    """Indices of ``limit`` of ``size`` items drawn by a seeded shuffle, in their original order
    (all of them when ``limit`` is None or not smaller): the ``--train-limit``/``--valid-limit`` choice
    of the datasets without labels to stratify by."""
    if not limit or limit >= size:
        return list(range(size))
    g = torch.Generator().manual_seed(seed)
    return sorted(torch.randperm(size, generator=g)[:limit].tolist())


def collate_skip_bad(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack the good samples; list the bad ones under ``"bad"`` as ``(key, reason)``.

    A batch whose samples were all bad has no tensors, only ``"bad"``; steps skip it.
    """
    good = [it for it in items if "bad" not in it]
    batch: dict[str, Any] = default_collate(good) if good else {}
    batch["bad"] = [it["bad"] for it in items if "bad" in it]
    return batch


class EpochSampler(Sampler[int]):
    """Shuffles with ``seed + epoch`` (so a resumed run sees the same order) and shards by rank.

    Training shards are padded by repeating indices so every rank runs the same number of steps
    (DDP needs that); evaluation shards (``pad=False``) cover each sample exactly once.
    """

    def __init__(self, size: int, shuffle: bool, seed: int, rank: int = 0, world_size: int = 1,
                 pad: bool = True) -> None:
        self.size, self.shuffle, self.seed = size, shuffle, seed
        self.rank, self.world_size, self.pad = rank, world_size, pad
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _indices(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            idx = torch.randperm(self.size, generator=g).tolist()
        else:
            idx = list(range(self.size))
        if self.pad and self.world_size > 1 and idx:
            total = math.ceil(len(idx) / self.world_size) * self.world_size
            idx += idx[: total - len(idx)]
        return idx[self.rank::self.world_size]

    def __iter__(self) -> Iterator[int]:
        return iter(self._indices())

    def __len__(self) -> int:
        if self.world_size == 1:
            return self.size
        if self.pad:
            return math.ceil(self.size / self.world_size)
        return len(range(self.rank, self.size, self.world_size))


def _seed_worker(worker_id: int) -> None:
    # torch seeds each worker from the loader's base seed; numpy and random need it passed on
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def make_loader(dataset: Dataset, *, batch_size: int, train: bool, seed: int, num_workers: int = 0,
                pin_memory: bool = False, rank: int = 0, world_size: int = 1,
                collate_fn: Callable = collate_skip_bad, batch_sampler: Sampler | None = None) -> DataLoader:
    """DataLoader with an :class:`EpochSampler`; call ``loader.sampler.set_epoch`` (the loop does).

    Workers are not persistent on purpose: they are re-created each epoch from the re-seeded global
    RNG, which makes augmentation after ``--resume`` identical to an uninterrupted run.
    """
    common = dict(num_workers=num_workers, pin_memory=pin_memory, collate_fn=collate_fn,
                  worker_init_fn=_seed_worker)
    if batch_sampler is not None:
        return DataLoader(dataset, batch_sampler=batch_sampler, **common)
    sampler = EpochSampler(len(dataset), shuffle=train, seed=seed, rank=rank, world_size=world_size,
                           pad=train)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=False, **common)
