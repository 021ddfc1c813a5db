"""``python -m src.tools.extract_frames``: what it prints, how it fails, and that a training run after
it decodes no video again."""
import os

import pytest

from src import cli
from src.data.demo_refdet import ensure_demo_refdet
from src.tools import extract_frames as X


@pytest.fixture(scope="session")
def demo(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("refdet_x") / "demo")
    ensure_demo_refdet(root, train_videos=2, valid_videos=1, frames=(30, 30), size=(128, 96))
    return root


def test_cli(demo, tmp_path, capsys):
    cache = tmp_path / "fc"
    assert X.main(["--data-root", os.path.join(demo, "samples"), "--cache_dir", str(cache),
                   "--background-frames", "2"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("train_00: 30 frames decoded (128x96 @ 25.00 fps)")
    assert out[-1].startswith("videos 3 (extracted 3, up to date 0, failed 0); frames written ")
    assert out[-1].endswith("warnings: none")
    assert X.main(["--data-root", demo, "--cache-dir", str(cache), "--background-frames", "2"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[:3] == ["train_00: up to date", "train_01: up to date", "valid_00: up to date"]
    assert "frames written 0;" in out[-1]
    assert cli.run_main(X.main, ["--data-root", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {tmp_path / 'missing'}: folder not found") and err.count("\n") == 1
