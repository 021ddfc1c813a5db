"""One run set-up for every script and every mode: :func:`start_run` joins the process group (under
torchrun), picks the device and sets up logging; :meth:`Run.open_dir` makes (or, on resume, reopens)
the run directory, logs into its ``train.log`` and records ``config.json``; leaving the ``with`` block
tears the process group down, whatever happened inside."""
from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch

from src.training import distributed as D
from src.training.checkpoint import remove_stale_temp_files
from src.training.run_dir import prepare_run_dir, setup_logging, write_config

log = logging.getLogger("src")


@dataclass
class Run:
    """A started run: its ranks (``dist``), its ``device`` and, once opened, its directory ``dir``."""

    dist: D.DistInfo
    device: torch.device
    dir: str | None = None

    @property
    def is_main(self) -> bool:
        return self.dist.is_main

    def prepare_demo(self, generate: Callable[[str], Any], root: str) -> None:
        """``--demo``: rank 0 generates the demo dataset into ``root`` (once; the generators keep a
        stamp), while the other ranks wait for it."""
        def make() -> None:
            log.info("demo data: %s", os.path.abspath(root))
            generate(root)

        D.on_rank0(make)

    def open_dir(self, results_dir: str, name: str, resume: str | None, record: dict[str, Any],
                 extra: dict[str, Any] | None = None) -> str:
        """The run directory: a new ``results_dir/<name>_<date>`` (rank 0 makes it, every rank learns
        its path), or the one holding the ``last.pt`` being resumed. A new run records ``record``
        (every resolved argument) and ``extra`` in ``config.json``; logging goes to its ``train.log``."""
        self.dir = prepare_run_dir(results_dir, name, resume)
        setup_logging(self.dir, self.is_main)
        if not self.is_main:
            return self.dir
        if resume:
            for stale in remove_stale_temp_files(self.dir):
                log.info("removed %s, a checkpoint write the interrupted run did not finish", stale)
        else:
            write_config(self.dir, record, {"device": str(self.device), "world_size": self.dist.world_size,
                                            **(extra or {})})
        return self.dir


@contextmanager
def start_run(device: str) -> Iterator[Run]:
    """Distributed init (from torchrun's environment; a no-op in one process), device resolution
    (``auto``, ``cpu``, ``cuda``, ``cuda:N``; each rank takes its local GPU) and logging to stderr."""
    dist = D.init_distributed(device)
    try:
        run = Run(dist, D.resolve_device(device, dist.local_rank))
        setup_logging(None, dist.is_main)
        yield run
    finally:
        D.cleanup_distributed()
