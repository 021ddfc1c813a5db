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


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask: a container or ``taskset`` may allow fewer than
    the machine has)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:      # macOS, Windows
        return os.cpu_count() or 1


def cpu_threads(typed: int | None, ranks_here: int, cpus: int, env: dict[str, str]) -> int | None:
    """PyTorch's intra-op threads for a run: ``typed`` (``--threads``), else None (keep PyTorch's own
    choice) when ``OMP_NUM_THREADS`` is set, else this machine's CPUs shared by its ranks, at least 1.

    PyTorch's default gives every process every core, so N torchrun ranks on one machine ask for N
    times its cores; on a busy 2-core machine that kind of oversubscription made a refdet training step
    25x slower (12.5 s against 0.49 s with one thread). DataLoader workers are not subtracted: measured on
    this project's 2-core machine with nothing else running, a demo epoch took 25 s with 2 threads and
    34 s with 1 next to one OCR worker, 6.9 s and 10.2 s next to two classification workers (the
    workers wait on files and cached images more than they compute)."""
    if typed:
        return typed
    if env.get("OMP_NUM_THREADS"):
        return None
    return max(1, cpus // max(1, ranks_here))


def _oversubscribed(threads: int, ranks_here: int, cpus: int) -> str | None:
    """A one-line warning when the threads alone ask for more CPUs than there are, or when other jobs
    keep the machine busy (a load average over twice its CPUs). DataLoader workers are left out: they
    wait on files as much as they compute (:func:`cpu_threads`)."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    if threads * ranks_here > cpus:
        return (f"{threads} threads x {ranks_here} rank(s) on {cpus} CPUs: oversubscribed, expect slow steps "
                f"(fewer --threads, or unset OMP_NUM_THREADS)")
    if load > 2 * cpus:
        return (f"the machine is busy (load average {load:.1f} on {cpus} CPUs): other jobs share its cores, "
                f"so this run's speed figures are lower than an idle machine's")
    return None


@contextmanager
def start_run(device: str, threads: int | None = None) -> Iterator[Run]:
    """Distributed init (from torchrun's environment; a no-op in one process), device resolution
    (``auto``, ``cpu``, ``cuda``, ``cuda:N``; each rank takes its local GPU), logging to stderr, and
    PyTorch's CPU threads (:func:`cpu_threads`; restored on leaving)."""
    dist = D.init_distributed(device)
    before = torch.get_num_threads()
    try:
        run = Run(dist, D.resolve_device(device, dist.local_rank))
        setup_logging(None, dist.is_main)
        ranks_here = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
        cpus = available_cpus()
        chosen = cpu_threads(threads, ranks_here, cpus, dict(os.environ))
        if chosen is not None:
            torch.set_num_threads(chosen)
        warning = _oversubscribed(torch.get_num_threads(), ranks_here, cpus)
        if warning and dist.is_main:
            log.warning(warning)
        yield run
    finally:
        torch.set_num_threads(before)
        D.cleanup_distributed()
