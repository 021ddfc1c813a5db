"""Behaviour pins: a short fixed-seed CPU run of each of the five scripts gives the figures recorded in
``tests/reference/<case>.json`` (its ``history.json`` and ``metrics.json``, timings and paths aside), to 1e-6.

The references were recorded before the engine redesign (issue 13); a refactor that changes a number
here changed behaviour. After a deliberate change of behaviour, record them again and say why in the
commit: ``python -m tests.test_reference_runs --record``.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.conftest import SMALL_DEMO, TIMING, read_json, run_dirs, run_script

REFERENCE = Path(__file__).resolve().parent / "reference"
# what a rerun on another day or folder legitimately changes
VOLATILE = TIMING | {"ckpt_path"}


def _classification(root: Path) -> list[str]:
    from src.data.demo_classification import ensure_demo_classification

    metadata, label2id = ensure_demo_classification(str(root / "cls"), **SMALL_DEMO)
    return ["--metadata", metadata, "--label2id", label2id, "--image-size", "64", "--batch-size", "16",
            "--num-workers", "0", "--epochs", "2", "--seed", "7", "--base-lr", "1e-3", "--head-lr", "1e-3"]


def _ocr(root: Path) -> list[str]:
    from src.data.demo_ocr import ensure_demo_ocr

    files = ensure_demo_ocr(str(root / "ocr"), counts=(64, 24, 16))
    return ["--data-root", str(root / "ocr"), "--train-annotation", files["train"], "--valid-annotation",
            files["valid"], "--test-annotation", files["test"], "--model-size", "small", "--batch-size", "16",
            "--num-workers", "0", "--lr", "1e-3", "--max-decode-len", "24", "--epochs", "2", "--seed", "7",
            "--ctc-weight", "0.5", "--masked-lm"]


def _ovd(root: Path) -> list[str]:
    from src.data.demo_ovd import ensure_demo_ovd

    data = ensure_demo_ovd(str(root / "ovd"), splits={"train": 16, "val": 6, "test": 4, "test_novel": 4})
    return ["--data-root", data, "--test-splits", "test", "test_novel", "--image-encoder", "resnet18",
            "--feature-index", "2", "--image-size", "64", "--out-dim", "32", "--text-layers", "1",
            "--decoder-layers", "2", "--num-queries", "8", "--buckets", "1024", "--batch-size", "8",
            "--num-workers", "0", "--lr", "1e-3", "--epochs", "2", "--seed", "7"]


def _refdet(root: Path) -> list[str]:
    from src.data.demo_refdet import ensure_demo_refdet

    data = ensure_demo_refdet(str(root / "refdet"), train_videos=3, valid_videos=2, frames=(30, 40), size=(128, 96))
    return ["--data-root", data, "--split-file", f"{data}/splits.txt", "--image-size", "64", "--support-size", "32",
            "--embed-dim", "16", "--n-way", "2", "--n-query", "2", "--n-background", "1", "--n-episodes", "6",
            "--support-views", "1", "--freeze-dino-layers", "10", "--background-frames", "3", "--batch-size", "8",
            "--num-workers", "0", "--lr", "2e-3", "--epochs", "2", "--seed", "7", "--bbox-loss", "wiou"]


# case -> (script, function of a scratch folder giving the command line)
CASES = {
    "mobilenetv3": ("train_MobileNetV3_Small_BoT_Linear.py", _classification),
    "resnet18_hybrid": ("train_ResNet18_Hybrid.py", _classification),
    "vietocr": ("train_vietocr.py", _ocr),
    "ovd": ("train_ovd.py", _ovd),
    "refdet": ("train_yolov8n_refdet.py", _refdet),
}


def train_case(case: str, scratch: Path) -> Path:
    """Run ``case`` in ``scratch``; its run directory."""
    script, make_args = CASES[case]
    results = scratch / "results"
    run_script(script, make_args(scratch) + ["--results-dir", str(results)], scratch)
    (run,) = run_dirs(results)
    return run


def figures(run: Path) -> dict:
    """``{"history": ..., "metrics": ...}`` of a run directory without the volatile keys."""
    return {name: {k: v for k, v in read_json(run / f"{name}.json").items() if k not in VOLATILE}
            for name in ("history", "metrics")}


def run_case(case: str, scratch: Path) -> dict:
    return figures(train_case(case, scratch))


def _assert_close(ref, got, where: str) -> None:
    if isinstance(ref, dict):
        assert isinstance(got, dict) and set(ref) == set(got), (where, set(ref) ^ set(got))
        for k in ref:
            _assert_close(ref[k], got[k], f"{where}.{k}")
    elif isinstance(ref, list):
        assert isinstance(got, list) and len(ref) == len(got), where
        for i, (a, b) in enumerate(zip(ref, got)):
            _assert_close(a, b, f"{where}[{i}]")
    elif isinstance(ref, float) and not isinstance(ref, bool):
        assert got == pytest.approx(ref, abs=1e-6, nan_ok=True), (where, ref, got)
    else:
        assert ref == got, (where, ref, got)


@pytest.mark.parametrize("case", list(CASES))
def test_same_figures_as_the_recorded_reference(case, reference_runs):
    ref = json.loads((REFERENCE / f"{case}.json").read_text(encoding="utf-8"))
    _assert_close(ref, figures(reference_runs(case)[1]), case)


def _record(cases: list[str]) -> None:
    import tempfile

    REFERENCE.mkdir(exist_ok=True)
    for case in cases:
        with tempfile.TemporaryDirectory() as tmp:
            out = run_case(case, Path(tmp))
        (REFERENCE / f"{case}.json").write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n",
                                                encoding="utf-8")
        print(f"recorded {case}")


if __name__ == "__main__":
    if sys.argv[1:2] != ["--record"]:
        sys.exit("usage: python -m tests.test_reference_runs --record [CASE ...]")
    _record(sys.argv[2:] or list(CASES))
