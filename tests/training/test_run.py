"""start_run and Run.open_dir: device, run directory, config record, resume, errors naming the flag."""
import json
import os

import pytest
import torch

from src.cli import run_main
from src.errors import DataError
from src.training.run import start_run


def test_a_new_run_gets_its_own_directory_and_config(tmp_path):
    with start_run("cpu") as run:
        assert run.device == torch.device("cpu") and run.is_main and run.dir is None
        first = run.open_dir(str(tmp_path), "toy", None, {"epochs": 3}, {"num_classes": 4})
        second = run.open_dir(str(tmp_path), "toy", None, {"epochs": 3})
    assert first != second and os.path.basename(second) == os.path.basename(first) + "_2"   # never overwritten
    config = json.loads(open(os.path.join(first, "config.json")).read())
    assert config["args"] == {"epochs": 3} and config["num_classes"] == 4 and config["device"] == "cpu"
    assert config["world_size"] == 1 and "torch" in config["versions"]


def test_resume_reopens_the_run_without_rewriting_its_config(tmp_path):
    run_dir = tmp_path / "toy_01_01_2026_0000"
    run_dir.mkdir()
    (run_dir / "config.json").write_text('{"args": {"epochs": 3}}')
    (run_dir / "last.pt").write_bytes(b"the last finished epoch")
    (run_dir / ".tmp_k2j4last.pt").write_bytes(b"half a checkp")       # a write the SIGKILL interrupted
    with start_run("cpu") as run:
        assert run.open_dir(str(tmp_path), "toy", str(run_dir / "last.pt"), {"epochs": 9}) == str(run_dir)
    assert json.loads((run_dir / "config.json").read_text()) == {"args": {"epochs": 3}}
    assert sorted(p.name for p in run_dir.iterdir()) == ["config.json", "last.pt", "train.log"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_missing_gpu_is_one_line_naming_the_flag(capsys):
    def main(argv):
        with start_run("cuda"):
            pass

    with pytest.raises(DataError) as info:
        main(None)
    assert info.value.param == "device"
    assert run_main(main) == 2
    assert capsys.readouterr().err == "error: --device: cuda: CUDA is not available on this machine (use cpu)\n"


def test_cpu_threads_share_the_cores_among_the_ranks():
    from src.training.run import cpu_threads

    assert cpu_threads(None, ranks_here=1, cpus=2, env={}) == 2
    assert cpu_threads(None, ranks_here=4, cpus=16, env={}) == 4      # torchrun: shared by the ranks
    assert cpu_threads(None, ranks_here=4, cpus=2, env={}) == 1       # never 0
    assert cpu_threads(3, ranks_here=1, cpus=2, env={}) == 3          # --threads wins
    assert cpu_threads(None, ranks_here=1, cpus=8, env={"OMP_NUM_THREADS": "5"}) is None


def test_start_run_sets_the_threads_warns_once_when_oversubscribed_and_restores(monkeypatch, capsys):
    import torch

    from src.training import run as run_module

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(run_module, "available_cpus", lambda: 2)
    before = torch.get_num_threads()
    monkeypatch.setattr(run_module.os, "getloadavg", lambda: (0.5, 0.5, 0.5))   # an idle machine
    with run_module.start_run("cpu"):
        assert torch.get_num_threads() == 2
    with run_module.start_run("cpu", 1):
        assert torch.get_num_threads() == 1
    with run_module.start_run("cpu", 4):
        assert torch.get_num_threads() == 4
    assert torch.get_num_threads() == before
    busy = [line for line in capsys.readouterr().err.splitlines() if "oversubscribed" in line]
    assert len(busy) == 1 and busy[0].endswith("4 threads x 1 rank(s) on 2 CPUs: oversubscribed, expect slow "
                                               "steps (fewer --threads, or unset OMP_NUM_THREADS)")
    monkeypatch.setattr(run_module.os, "getloadavg", lambda: (5.0, 5.0, 5.0))   # another job's load
    with run_module.start_run("cpu", 1):
        pass
    assert "the machine is busy (load average 5.0 on 2 CPUs)" in capsys.readouterr().err
