"""bench.gpu_check --quick on the CPU: one row per model and mode with measured figures, and a failing
cell reported in the table instead of ending the run (no timed assertions)."""
from __future__ import annotations

import dataclasses

import pytest

from bench import gpu_check


def rows(path) -> dict[tuple[str, str], dict[str, str]]:
    """The table's rows by (model, mode), each cell by its column header."""
    lines = [line for line in path.read_text().splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    out = {}
    for line in lines[2:]:
        cells = dict(zip(header, (c.strip() for c in line.strip("|").split("|"))))
        out[(cells["model"], cells["mode"])] = cells
    return out


def test_quick_run_has_a_row_with_figures_per_model(tmp_path, capsys):
    out = tmp_path / "t.md"
    assert gpu_check.main(["--quick", "--out", str(out)]) == 0
    table = rows(out)
    assert sorted(table) == sorted((m, "fp32") for m in gpu_check.CASES)
    for row in table.values():
        assert row["error"] == ""
        assert float(row["train samples/s"]) > 0 and float(row["FPS (batch 2)"]) > 0
        assert float(row["latency ms (batch 1)"]) > 0 and row["train batch"] == "2"
        assert row["syncs/step"] == "n/a (CPU)"
    text = out.read_text()
    assert "4,216 FPS" in text and "792 FPS" in text and "CPU (" in text
    assert text in capsys.readouterr().out      # printed too


def test_a_failing_cell_is_reported_and_the_others_still_run(tmp_path, monkeypatch):
    def broken(quick):
        raise RuntimeError("injected build failure\nsecond line")

    monkeypatch.setitem(gpu_check.CASES, "vietocr", dataclasses.replace(gpu_check.CASES["vietocr"], build=broken))
    out = tmp_path / "t.md"
    # an fp32 cell failed: exit status 1, but the table is written with every row
    assert gpu_check.main(["--quick", "--models", "MobileNetV3_Small_BoT_Linear", "vietocr", "--out", str(out)]) == 1
    table = rows(out)
    assert table[("vietocr", "fp32")]["error"] == "RuntimeError: injected build failure"
    assert table[("vietocr", "fp32")]["train samples/s"] == "-"
    assert float(table[("MobileNetV3_Small_BoT_Linear", "fp32")]["train samples/s"]) > 0


def test_an_inference_failure_outside_fp32_keeps_the_training_figures_and_exit_status(tmp_path, monkeypatch):
    real = gpu_check.measure_speed

    def failing_under_autocast(module, make_input, device, dtype, *args):
        if dtype is not None:
            raise ValueError("injected inference failure")
        return real(module, make_input, device, dtype, *args)

    monkeypatch.setattr(gpu_check, "measure_speed", failing_under_autocast)
    out = tmp_path / "t.md"
    assert gpu_check.main(["--quick", "--models", "ResNet18_Hybrid", "--modes", "fp32", "bf16", "--out", str(out)]) == 0
    table = rows(out)
    bf16 = table[("ResNet18_Hybrid", "bf16")]
    assert bf16["error"] == "inference: ValueError: injected inference failure"
    assert float(bf16["train samples/s"]) > 0 and bf16["FPS (batch 2)"] == "-"
    assert table[("ResNet18_Hybrid", "fp32")]["error"] == ""


@pytest.mark.parametrize("argv", [["--steps", "0"], ["--batch-size", "1"]])
def test_bad_flags_are_refused(argv):
    with pytest.raises(SystemExit) as exc:
        gpu_check.main(["--quick", *argv])
    assert exc.value.code == 2
