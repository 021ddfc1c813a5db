"""Run directories: ``<results>/<model_name>_<DD_MM_YYYY_HHMM>[_N]/``, never overwritten, plus logging
and the ``config.json`` record of how a run was made."""
from __future__ import annotations

import datetime as _dt
import logging
import os
import platform
import subprocess
import sys
from typing import Any

from src.errors import DataError
from src.training.checkpoint import atomic_json_dump
from src.training.distributed import on_rank0

log = logging.getLogger("src")


def create_run_dir(results_dir: str, name: str, now: _dt.datetime | None = None) -> str:
    """Make a fresh folder; ``os.mkdir`` fails if it exists, so two runs started in the same
    minute (even racing each other) get ``..._HHMM`` and ``..._HHMM_2``."""
    try:
        os.makedirs(results_dir, exist_ok=True)
    except OSError as exc:
        raise DataError(f"{results_dir}: cannot create the results folder ({exc.strerror or exc})",
                        param="results_dir") from None
    stamp = (now or _dt.datetime.now()).strftime("%d_%m_%Y_%H%M")
    base = os.path.join(results_dir, f"{name}_{stamp}")
    for n in range(1, 10_000):
        path = base if n == 1 else f"{base}_{n}"
        try:
            os.mkdir(path)
            return path
        except FileExistsError:
            continue
        except OSError as exc:       # read-only, no permission, disk full
            raise DataError(f"{results_dir}: cannot create a run directory there ({exc.strerror or exc})",
                            param="results_dir") from None
    raise RuntimeError(f"could not create a run directory under {results_dir}")


def setup_logging(run_dir: str | None, is_main: bool = True) -> None:
    """INFO to stderr (rank 0 only) and to ``run_dir/train.log``."""
    logger = logging.getLogger("src")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    for h in list(logger.handlers):
        logger.removeHandler(h)
        h.close()
    if not is_main:
        logger.addHandler(logging.NullHandler())
        return
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S")
    stream = logging.StreamHandler(sys.stderr)
    stream.setFormatter(fmt)
    logger.addHandler(stream)
    if run_dir:
        fh = logging.FileHandler(os.path.join(run_dir, "train.log"), encoding="utf-8")
        fh.setFormatter(fmt)
        logger.addHandler(fh)


def _git_commit() -> str | None:
    try:
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def write_config(run_dir: str, args: dict[str, Any], extra: dict[str, Any]) -> None:
    import timm
    import torch
    import torchvision

    config = {"args": args, **extra, "versions": {
        "python": platform.python_version(), "torch": torch.__version__,
        "torchvision": torchvision.__version__, "timm": timm.__version__}, "git_commit": _git_commit(),
        "command": " ".join(sys.argv)}
    atomic_json_dump(config, os.path.join(run_dir, "config.json"))


def prepare_run_dir(results_dir: str, name: str, resume: str | None) -> str:
    """New run dir (rank 0 creates it, every rank learns its path), or the resumed run's own."""
    if resume:
        return os.path.dirname(os.path.abspath(resume))
    return on_rank0(lambda: create_run_dir(results_dir, name))
