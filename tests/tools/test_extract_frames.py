"""``python -m src.tools.extract_frames``: what it prints, how it fails, and that a training run after
it decodes no video again."""
import os
import shutil
from pathlib import Path

import pytest

from src import cli
from src.data.demo_refdet import ensure_demo_refdet
from src.tools import extract_frames as X
from tests.conftest import run_script


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


def _cache_files(cache: Path) -> dict:
    return {str(p.relative_to(cache)): p.stat().st_mtime_ns for p in sorted(cache.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("seed", [None, "3"])
def test_training_after_the_tool_decodes_no_video_again(demo, tmp_path, seed):
    """The documented pre-extraction, then a training run with default cache settings (and any --seed):
    every training video's cache is found up to date, nothing is written again."""
    root = tmp_path / "data"
    shutil.copytree(demo, root, ignore=shutil.ignore_patterns("frame_cache"))
    assert X.main(["--data-root", str(root)]) == 0
    before = _cache_files(root / "frame_cache")
    assert len([f for f in before if f.endswith("index.json")]) == 3 and len(before) > 3
    args = ["--data-root", str(root), "--split-file", str(root / "splits.txt"), "--epochs", "1", "--image-size", "64",
            "--support-size", "32", "--embed-dim", "16", "--n-way", "2", "--n-query", "2", "--n-episodes", "2",
            "--support-views", "1", "--freeze-dino-layers", "12", "--batch-size", "8", "--num-workers", "0",
            "--results-dir", str(tmp_path / "res")] + (["--seed", seed] if seed else [])
    proc = run_script("train_yolov8n_refdet.py", args, tmp_path)
    assert _cache_files(root / "frame_cache") == before           # no JPEG or index rewritten
    assert "frames decoded" not in proc.stderr                    # the per-video extraction log line
