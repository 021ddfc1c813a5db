"""Shared fixtures: a small demo dataset generated once per test session, and a helper that runs a
training script as a user would (subprocess, real argv)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# small enough for CI, big enough for every split to have each class
SMALL_DEMO = dict(per_class=(16, 8, 4), size=64, seed=0)


@pytest.fixture(scope="session")
def demo_workdir(tmp_path_factory) -> Path:
    """A working directory whose ``data/demo/classification`` already holds the real demo set
    (generated once per session, shared by every script test)."""
    from src.data.demo_classification import ensure_demo_classification

    work = tmp_path_factory.mktemp("work")
    ensure_demo_classification(str(work / "data/demo/classification"))
    return work


@pytest.fixture(scope="session")
def small_dataset(tmp_path_factory) -> tuple[str, str]:
    """(metadata.csv, label2id.json) of a tiny demo-format dataset."""
    from src.data.demo_classification import ensure_demo_classification

    root = tmp_path_factory.mktemp("small")
    return ensure_demo_classification(str(root / "ds"), **SMALL_DEMO)


@pytest.fixture(scope="session")
def reference_runs(tmp_path_factory):
    """``case -> (scratch folder, run dir)``, each case trained once per session: the pins here and
    ``tests/training/test_scoring.py`` (which evaluates the same checkpoints) share the runs."""
    from tests.test_reference_runs import train_case

    done: dict[str, tuple[Path, Path]] = {}

    def get(case: str) -> tuple[Path, Path]:
        if case not in done:
            scratch = tmp_path_factory.mktemp(case)
            done[case] = scratch, train_case(case, scratch)
        return done[case]
    return get


def run_script(script: str, args: list[str], cwd: Path, timeout: float = 600, env: dict | None = None,
               check: bool = True) -> subprocess.CompletedProcess:
    """``python <repo>/<script> args`` in ``cwd`` with CPU-friendly settings."""
    full_env = {**os.environ, "OMP_NUM_THREADS": "2", "PYTHONUNBUFFERED": "1", **(env or {})}
    full_env.pop("DISPLAY", None)
    proc = subprocess.run([sys.executable, str(REPO / script), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env=full_env)
    if check and proc.returncode != 0:
        raise AssertionError(f"{script} {' '.join(args)} exited {proc.returncode}\n"
                             f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-5000:]}")
    return proc


def run_dirs(results: Path) -> list[Path]:
    return sorted(p for p in results.iterdir() if p.is_dir()) if results.exists() else []


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text(encoding="utf-8"))


# speed figures, and cache hit rates (a resumed process starts with an empty support cache)
TIMING = {"fps", "latency_ms", "train_time_s", "epoch_time_s", "data_time_s", "samples_per_s", "fps_device",
          "support_cache_hit_rate"}


def assert_same_results(ref: Path, run: Path) -> None:
    """``history.json`` and ``metrics.json`` of two run dirs agree (to 1e-6), timings aside: a resumed
    run must end exactly where an uninterrupted one does."""
    for name in ("history.json", "metrics.json"):
        a, b = read_json(ref / name), read_json(run / name)
        assert set(a) == set(b)
        for key in set(a) - TIMING:
            if isinstance(a[key], (list, float)):
                assert a[key] == pytest.approx(b[key], abs=1e-6), (name, key)
            else:
                assert a[key] == b[key], (name, key)


def kill_during_epoch_2(script: str, args: list[str], cwd: Path, results: Path, delay: float = 0.5) -> Path:
    """Start ``script``, SIGKILL it ``delay`` s after epoch 1's ``history.json`` appears; return the
    run directory (a user's power cut, mid-epoch)."""
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    proc = subprocess.Popen([sys.executable, str(REPO / script), *args, "--results-dir", str(results)], cwd=cwd,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    deadline, found = time.time() + 300, False
    while time.time() < deadline and proc.poll() is None:
        dirs = run_dirs(results)
        if dirs and (dirs[0] / "history.json").exists():
            found = True
            break
        time.sleep(0.02)
    assert found, proc.stderr.read().decode()[-3000:]
    time.sleep(delay)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    (run,) = run_dirs(results)
    return run


def capture_warnings(logger_name: str) -> Iterator[list]:
    """Yield the list of WARNING+ records of ``logger_name`` (its own handler: another test may have
    turned propagation off); for fixtures: ``yield from capture_warnings(...)``."""
    import logging

    records: list = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append
    logger = logging.getLogger(logger_name)
    logger.addHandler(handler)
    try:
        yield records
    finally:
        logger.removeHandler(handler)
