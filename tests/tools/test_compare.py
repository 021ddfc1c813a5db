import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import capture_warnings

from src.errors import DataError
from src.cli import run_main
from src.tools.compare import collect_runs, format_duration, main, markdown_table, sort_runs

REPO = Path(__file__).resolve().parents[2]
CLS = dict(task="classification", num_params=1158084, trainable_params=1158084, size_mb=4.4312, fps=812.34,
           fps_batch_size=32, fps_image_size=224, fps_device="cpu", fps_dtype="fp32", latency_ms=3.1,
           best_epoch=7, epochs_run=10, stopped_early=False, train_time_s=192.4,
           data_warnings={"empty_file": 2, "unreadable_image": 1}, ckpt_path="best_model.pt")


def _run(folder: Path, config: dict | None = None, **metrics) -> Path:
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps(metrics))
    if config is not None:
        (folder / "config.json").write_text(json.dumps({"args": config}))
    return folder


@pytest.fixture
def results(tmp_path) -> Path:
    root = tmp_path / "results"
    _run(root / "mnv3_run", {"model": "MobileNetV3_Small_BoT_Linear", "image_size": 224, "epochs": 30},
         **{**CLS, "model_name": "MobileNetV3_Small_BoT_Linear", "valid_acc": 0.91, "valid_f1": 0.905})
    _run(root / "sweep" / "resnet_run", **{**CLS, "model_name": "ResNet18_Hybrid", "num_params": 11647204,
                                          "valid_acc": 0.95, "valid_f1": 0.94, "train_time_s": 3725.0,
                                          "best_epoch": 12, "fps": 250.0, "data_warnings": {}})
    (root / "not_a_run").mkdir()
    _run(root / "a" / "b" / "too_deep", **{**CLS, "model_name": "deep", "valid_acc": 0.99})
    return root


@pytest.fixture
def warnings_log():
    yield from capture_warnings("src.tools.compare")


def _cells(table: str) -> list[list[str]]:
    """Header + body rows of a markdown table (the |---| rule dropped)."""
    lines = [ln for ln in table.splitlines() if ln.startswith("|")]
    assert set(lines[1]) <= set("|-:")
    return [[c.strip() for c in ln.strip("|").split("|")] for ln in [lines[0]] + lines[2:]]


def _as_dicts(table: str) -> dict[str, dict[str, str]]:
    header, *rows = _cells(table)
    return {r[0]: dict(zip(header, r)) for r in rows}


def test_collect_runs_one_and_two_levels_deep(results):
    df = collect_runs([str(results)])
    assert sorted(df["run"]) == ["mnv3_run", "resnet_run"]  # a/b/too_deep is three levels down
    row = df.set_index("run").loc["mnv3_run"]
    assert row["valid_acc"] == 0.91 and row["num_params"] == 1158084
    assert row["model_name"] == "MobileNetV3_Small_BoT_Linear"
    assert row["data_warnings"] == 3 and row["config_epochs"] == 30 and row["config_image_size"] == 224
    assert df.set_index("run").loc["resnet_run", "data_warnings"] == 0
    # a run dir given directly works too, and is not counted twice
    again = collect_runs([str(results / "mnv3_run"), str(results)])
    assert sorted(again["run"]) == ["mnv3_run", "resnet_run"]


def test_markdown_table_rows_and_values(results):
    table = markdown_table(sort_runs(collect_runs([str(results)])))
    header, *rows = _cells(table)
    assert header == ["run", "model", "params", "size MB", "valid acc", "valid F1", "FPS", "best epoch", "time"]
    assert [r[0] for r in rows] == ["resnet_run", "mnv3_run"]  # best valid acc first
    assert rows[1] == ["mnv3_run", "MobileNetV3_Small_BoT_Linear", "1,158,084", "4.43", "0.9100", "0.9050",
                       "812.3", "7", "3m12s"]
    assert rows[0] == ["resnet_run", "ResNet18_Hybrid", "11,647,204", "4.43", "0.9500", "0.9400", "250.0", "12",
                       "1h02m05s"]
    # the shared FPS setting is stated once, under the table
    assert table.count("FPS measured at batch 32, 224 px, cpu, fp32.") == 1 and "FPS setting" not in table


def test_fps_setting_per_row_when_runs_differ(tmp_path):
    _run(tmp_path / "r" / "cpu_run", **{**CLS, "model_name": "m", "valid_acc": 0.5})
    _run(tmp_path / "r" / "gpu_run", **{**CLS, "model_name": "m", "valid_acc": 0.6, "fps_device": "cuda",
                                        "fps_dtype": "fp16", "fps_batch_size": 64})
    table = markdown_table(sort_runs(collect_runs([str(tmp_path / "r")])))
    rows = _as_dicts(table)
    assert rows["gpu_run"]["FPS setting"] == "batch 64, 224 px, cuda, fp16"
    assert rows["cpu_run"]["FPS setting"] == "batch 32, 224 px, cpu, fp32"
    assert "FPS measured at" not in table


def test_sorting(results):
    df = collect_runs([str(results)])
    assert list(sort_runs(df)["run"]) == ["resnet_run", "mnv3_run"]
    assert list(sort_runs(df, "valid_acc", reverse=True)["run"]) == ["mnv3_run", "resnet_run"]
    assert list(sort_runs(df, "train_time_s")["run"]) == ["mnv3_run", "resnet_run"]  # shorter is better
    assert list(sort_runs(df, "fps")["run"]) == ["mnv3_run", "resnet_run"]  # faster is better
    assert list(sort_runs(df, "run")["run"]) == ["mnv3_run", "resnet_run"]
    with pytest.raises(DataError, match="--sort valid_cer"):
        sort_runs(df, "valid_cer")


def test_other_tasks_metrics_become_columns_and_missing_cells_are_dashes(tmp_path):
    root = tmp_path / "results"
    _run(root / "cls", **{**CLS, "model_name": "cls_model", "valid_acc": 0.8, "valid_f1": 0.7})
    _run(root / "ocr", model_name="vgg_transformer", task="ocr", num_params=37650217, valid_cer=0.0512,
         valid_wer=0.2, fps=100.0, fps_batch_size=32, fps_image_size=[32, 512], fps_device="cpu", fps_dtype="fp32",
         train_time_s=45)
    _run(root / "refdet", model_name="yolov8n_refdet", task="refdet", valid_st_iou=0.4321, valid_map50=0.61)
    df = sort_runs(collect_runs([str(root)]))
    table = markdown_table(df)
    header = _cells(table)[0]
    assert header[4:9] == ["valid acc", "valid F1", "valid CER", "valid ST-IoU", "valid mAP50"]
    assert "valid R@1" not in header  # no run has valid_recall@1
    rows = _as_dicts(table)
    assert rows["ocr"]["valid acc"] == "-" and rows["ocr"]["valid F1"] == "-" and rows["ocr"]["valid CER"] == "0.0512"
    assert rows["ocr"]["size MB"] == "-" and rows["ocr"]["best epoch"] == "-" and rows["ocr"]["time"] == "45s"
    assert rows["ocr"]["FPS setting"] == "batch 32, 32x512 px, cpu, fp32"
    assert rows["cls"]["valid CER"] == "-" and rows["cls"]["valid acc"] == "0.8000"
    assert rows["refdet"]["valid ST-IoU"] == "0.4321" and rows["refdet"]["FPS"] == "-"
    assert rows["refdet"]["FPS setting"] == "-" and rows["refdet"]["params"] == "-"
    assert [r[0] for r in _cells(table)[1:]][0] == "cls"  # only run with the first metric column sorts first


def test_duplicate_run_names_get_their_group(tmp_path):
    _run(tmp_path / "r" / "exp1" / "run", **{**CLS, "valid_acc": 0.1})
    _run(tmp_path / "r" / "exp2" / "run", **{**CLS, "valid_acc": 0.2})
    assert sorted(collect_runs([str(tmp_path / "r")])["run"]) == ["exp1/run", "exp2/run"]


def test_format_duration():
    assert [format_duration(s) for s in (192.4, 45, 0.4, 3725, None, float("nan"))] == \
        ["3m12s", "45s", "0s", "1h02m05s", "-", "-"]


def test_cli_writes_csv_and_png(results, tmp_path, capsys):
    out = tmp_path / "report"
    assert run_main(main, [str(results), "--sort", "train_time_s", "--out", str(out)]) == 0
    stdout = capsys.readouterr().out
    assert [r[0] for r in _cells(stdout)[1:]] == ["mnv3_run", "resnet_run"]
    csv = pd.read_csv(out / "compare.csv")
    assert list(csv["run"]) == ["mnv3_run", "resnet_run"]
    assert list(csv["valid_acc"]) == [0.91, 0.95] and list(csv["num_params"]) == [1158084, 11647204]
    assert list(csv["train_time_s"]) == [192.4, 3725.0]
    png = (out / "compare.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000
    # default --out: the first folder given
    assert run_main(main, [str(results)]) == 0
    assert (results / "compare.csv").is_file() and (results / "compare.png").is_file()


def test_corrupt_and_partial_metrics_are_skipped_with_warning(results, warnings_log, capsys):
    (results / "crashed").mkdir()
    (results / "crashed" / "metrics.json").write_text('{"valid_acc": 0.9, "fps"')
    _run(results / "partial", model_name="m", num_params=10)
    assert run_main(main, [str(results), "--out", str(results / "out")]) == 0
    messages = [r.getMessage() for r in warnings_log]
    assert any(str(results / "crashed" / "metrics.json") in m and "invalid JSON" in m for m in messages), messages
    assert any(str(results / "partial" / "metrics.json") in m for m in messages), messages
    names = [r[0] for r in _cells(capsys.readouterr().out)[1:]]
    assert names == ["resnet_run", "mnv3_run"]


def test_no_runs_exits_2(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert run_main(main, [str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: no runs found under")
    assert run_main(main, [str(tmp_path / "missing")]) == 2
    assert capsys.readouterr().err.strip() == f"error: {tmp_path / 'missing'}: folder not found"


def test_no_runs_exits_2_as_a_command(tmp_path):
    (tmp_path / "results" / "broken").mkdir(parents=True)
    (tmp_path / "results" / "broken" / "metrics.json").write_text("")
    proc = subprocess.run([sys.executable, "-m", "src.tools.compare", str(tmp_path / "results")], cwd=REPO,
                          capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 2, proc.stderr
    assert "metrics.json" in proc.stderr and "skipped" in proc.stderr  # the one file found is named
    assert proc.stderr.strip().splitlines()[-1].startswith("error: no runs found") and "Traceback" not in proc.stderr
    assert not (tmp_path / "results" / "compare.csv").exists()
