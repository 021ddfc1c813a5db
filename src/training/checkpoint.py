"""Checkpoint files: atomic writes, ``weights_only`` loading, RNG state capture.

A checkpoint holds only tensors, numbers, strings, lists and dicts so that
``torch.load(path, weights_only=True)`` can read it (no pickled classes, no code execution).
"""
from __future__ import annotations

import json
import os
import pickle
import random
import tempfile
from typing import Any

import numpy as np
import torch

from src.errors import DataError

FORMAT_VERSION = 1


TEMP_PREFIX = ".tmp_"


def _umask() -> int:
    mask = os.umask(0)      # the only way to read it is to set it
    os.umask(mask)
    return mask


def _atomic_write(path: str, write) -> None:
    """Write via a temp file in the same folder, fsync, then ``os.replace``: a reader (or a
    crash) sees either the old file or the new one, never half of one."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=os.path.basename(path), dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())     # mkstemp makes 0600; the file gets what open() would give
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def atomic_torch_save(obj: Any, path: str) -> None:
    _atomic_write(path, lambda f: torch.save(obj, f))


def remove_stale_temp_files(folder: str) -> list[str]:
    """Delete the temp files that writers killed mid-write (SIGKILL, power cut) left in ``folder``;
    the files they were replacing are intact. Returns the names removed."""
    stale = sorted(n for n in os.listdir(folder) if n.startswith(TEMP_PREFIX))
    for name in stale:
        os.remove(os.path.join(folder, name))
    return stale


def atomic_write_text(path: str, text: str) -> None:
    _atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def atomic_json_dump(obj: Any, path: str) -> None:
    data = json.dumps(obj, indent=2, ensure_ascii=False, default=_json_default).encode("utf-8")
    _atomic_write(path, lambda f: f.write(data))


def atomic_csv_dump(history: dict[str, list], path: str) -> None:
    """``history`` as a table, one row per epoch and one column per key (ultralytics' ``results.csv``);
    a figure an epoch did not produce is an empty cell."""
    import csv
    import io

    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(list(history))
    for row in zip(*history.values()):
        writer.writerow(["" if v is None else v for v in row])
    data = buf.getvalue().encode("utf-8")
    _atomic_write(path, lambda f: f.write(data))


def _json_default(o: Any):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, torch.Tensor):
        return o.tolist()
    return str(o)


def torch_load_file(path: str, what: str = "checkpoint", error: type[Exception] | None = None) -> Any:
    """``torch.load(path, weights_only=True)`` on CPU; a missing or unreadable file raises ``error``
    (default :class:`~src.errors.DataError`) with one line naming the file."""
    error = error or DataError
    if not os.path.isfile(path):
        raise error(f"{path}: {what} not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # weights_only refused what it read: never pass on PyTorch's advice to switch the check off
        found = next((ln.strip() for ln in str(exc).splitlines() if "GLOBAL" in ln), "")
        if not found:
            raise error(f"{path}: not a readable {what} (not a PyTorch file of tensors and plain data)") from None
        raise error(f"{path}: not a {what} of this project, nor a safe one: it holds Python objects that could "
                    f"run code when loaded ({found}); it was not loaded") from None
    except Exception as exc:
        raise error(f"{path}: not a readable {what} ({type(exc).__name__}: "
                    f"{str(exc).splitlines()[0] if str(exc) else ''})") from None


def load_checkpoint(path: str) -> dict[str, Any]:
    ckpt = torch_load_file(path)
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise DataError(f"{path}: not a checkpoint written by this project (no 'model' entry)")
    return ckpt


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The plain module under DDP and ``torch.compile`` wrappers (what checkpoints store)."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, torch.nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model


def capture_rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
