"""bench.peers_timm --quick: both sides (our training script and the rebuilt timm train.py loop) train the
same 16 images in their own subprocesses, with equal parameter counts, and the table row is there (no
timed assertions: only that the figures exist and are positive)."""
from __future__ import annotations

import pytest

pytest.importorskip("timm")

from bench import peers_timm  # noqa: E402


def test_quick_comparison_trains_both_sides_on_the_same_images(tmp_path):
    s = peers_timm.parse_args(["--quick"])
    result = peers_timm.compare(str(tmp_path), s)
    runs = result["runs"]
    assert set(runs) == {"ours", "timm"} and all(len(r) == s.rounds for r in runs.values())
    import timm
    from src.models.classifiers import create_classifier
    ours_model = create_classifier("ResNet18", result["data"]["classes"], dropout=peers_timm.DROPOUT)
    timm_model = timm.create_model("resnet18", num_classes=result["data"]["classes"])
    count = sum(p.numel() for p in ours_model.parameters())
    assert count == sum(p.numel() for p in timm_model.parameters()) == result["param_count"]
    for side, recs in runs.items():
        for rec in recs:
            assert rec["param_count"] == count
            assert rec["train_images"] == s.images == 16
            steps = [st for e in rec["epochs"] for st in e["steps"]]
            assert len(steps) == s.images // s.batch_size and all(n == s.batch_size for _, _, n in steps)
            assert all(t_out > t_in for t_in, t_out, _ in steps)
            assert rec["images_per_s"] > 0 and rec["step_ms"] > 0
    assert len(runs["ours"][0]["epochs"]) == 1 and runs["ours"][0]["epochs"][0]["samples_per_s"] > 0
    assert runs["timm"][0]["data_config"]["input_size"] == [3, 224, 224]
    (row,) = result["rows"]
    assert row.startswith("| ResNet18 training") and row.count("|") == 7
    assert "ours " in row and "timm " in row and row.split("|")[5].strip().endswith("x")
    text = peers_timm.report(result, "`python -m bench.peers_timm --quick`", 1.0)
    assert row in text and "| ours |" in text and "| timm |" in text


def test_timm_side_keeps_train_py_defaults():
    a = peers_timm.timm_parser().parse_args(["data"])
    assert (a.model, a.batch_size, a.opt, a.lr, a.lr_base, a.momentum, a.weight_decay) == \
        ("resnet50", 128, "sgd", None, 0.1, 0.9, 2e-5)
    assert (a.sched, a.warmup_epochs, a.warmup_lr, a.smoothing, a.color_jitter, a.hflip, a.vflip, a.workers) == \
        ("cosine", 5, 1e-5, 0.1, 0.4, 0.5, 0.0, 4)
    assert a.scale == [0.08, 1.0] and a.train_interpolation == "random" and not a.no_prefetcher
