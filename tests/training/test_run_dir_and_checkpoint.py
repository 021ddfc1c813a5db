import datetime as dt
import os

import pytest
import torch

from src.training.checkpoint import (atomic_json_dump, atomic_torch_save, capture_rng_state, load_checkpoint,
                                     restore_rng_state)
from src.training.run_dir import create_run_dir


def test_runs_in_same_minute_get_distinct_dirs(tmp_path):
    now = dt.datetime(2026, 11, 23, 9, 41)
    dirs = [create_run_dir(str(tmp_path), "M", now) for _ in range(3)]
    assert [os.path.basename(d) for d in dirs] == ["M_23_11_2026_0941", "M_23_11_2026_0941_2", "M_23_11_2026_0941_3"]


def test_atomic_save_keeps_old_file_when_write_fails(tmp_path):
    path = str(tmp_path / "last.pt")
    atomic_torch_save({"model": {"w": torch.ones(2)}}, path)

    class Boom:
        def __reduce__(self):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_torch_save({"model": {"w": torch.zeros(2)}, "x": Boom()}, path)
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.ones(2))
    assert os.listdir(tmp_path) == ["last.pt"]  # no temp file left behind
    atomic_json_dump({"a": 1}, str(tmp_path / "m.json"))
    assert (tmp_path / "m.json").read_text().strip().startswith("{")


def test_rng_state_round_trip_is_weights_only_loadable(tmp_path):
    import random

    import numpy as np

    torch.manual_seed(1)
    np.random.seed(1)
    random.seed(1)
    path = str(tmp_path / "rng.pt")
    atomic_torch_save({"model": {}, "rng": capture_rng_state()}, path)
    expected = (torch.rand(3), np.random.rand(3), random.random())
    restore_rng_state(torch.load(path, weights_only=True)["rng"])
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(expected[0], got[0]) and np.array_equal(expected[1], got[1]) and expected[2] == got[2]


def test_load_checkpoint_rejects_garbage(tmp_path):
    from src.errors import DataError

    bad = tmp_path / "x.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(DataError, match="x.pt: not a readable checkpoint"):
        load_checkpoint(str(bad))


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_a_crafted_pickle_is_refused_without_advice_to_disable_the_check(tmp_path):
    from src.errors import DataError

    path = tmp_path / "evil.pt"
    torch.save({"model": _RunsCode()}, path)
    with pytest.raises(DataError) as info:
        load_checkpoint(str(path))
    message = str(info.value)
    assert message.startswith(f"{path}: not a checkpoint of this project, nor a safe one") and "\n" not in message
    assert "weights_only" not in message and "succeed" not in message and "posix.system" in message


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_run_files_follow_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        atomic_json_dump({"a": 1}, str(tmp_path / "metrics.json"))
        atomic_torch_save({"model": {}}, str(tmp_path / "last.pt"))
        with open(tmp_path / "train.log", "w"):
            pass
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir()}
    assert modes == dict.fromkeys(("metrics.json", "last.pt", "train.log"), 0o666 & ~umask)


def test_a_results_folder_that_cannot_be_written_is_one_line(tmp_path, monkeypatch):
    """Read-only or not ours (the tests run as root, which writes anywhere: the refusal is simulated)."""
    from src.errors import DataError

    def refuse(path, *args, **kwargs):
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr(os, "mkdir", refuse)
    with pytest.raises(DataError) as info:
        create_run_dir(str(tmp_path), "M")
    assert info.value.param == "results_dir"
    assert str(info.value) == f"{tmp_path}: cannot create a run directory there (Permission denied)"
