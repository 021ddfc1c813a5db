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
