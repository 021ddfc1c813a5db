"""``--evaluate``: every script scores a checkpoint with the metric code of its training run's final
evaluation (the same figures to 1e-6), into a new run directory, on any split its data flags give."""
import json
from pathlib import Path

import pytest

from tests.conftest import read_json, run_dirs, run_script
from tests.test_reference_runs import CASES

# case -> (the other split, flags that add it when the training command line has none)
OTHER_SPLIT = {
    "mobilenetv3": ("test", []),
    "resnet18_hybrid": ("test", []),
    "vietocr": ("test", []),
    "ovd": ("test_novel", []),
    "refdet": ("test", ["--test-data-root", "{root}/refdet", "--test-annotations",
                        "{root}/refdet/annotations/annotations.json"]),
}


def _figures(metrics: dict, split: str) -> dict:
    return {k: v for k, v in metrics.items() if k.startswith(f"{split}_") and isinstance(v, (int, float))}


@pytest.mark.parametrize("case", list(CASES))
def test_evaluate_gives_the_training_runs_figures_and_writes_a_new_run_dir(case, reference_runs, tmp_path):
    script, _ = CASES[case]
    eval_results = tmp_path / "evals"
    scratch, run = reference_runs(case)        # the behaviour pins' 2-epoch run, trained once per session
    before = sorted(p.name for p in run.iterdir())
    trained = read_json(run / "metrics.json")
    weights = str(run / "best_model.pt")

    out = run_script(script, ["--evaluate", "--weights", weights, "--results-dir", str(eval_results)], tmp_path)
    (evaluated,) = run_dirs(eval_results)
    assert evaluated.name.startswith(f"{trained['model_name']}_eval_valid_")
    scored = read_json(evaluated / "metrics.json")
    assert json.loads(out.stdout) == scored and scored["split"] == "valid" and scored["weights_epoch"] >= 1
    expected = _figures(trained, "valid")
    assert expected and set(_figures(scored, "valid")) == set(expected)
    for key, value in expected.items():
        assert scored[key] == pytest.approx(value, abs=1e-6, nan_ok=True), key

    split, extra = OTHER_SPLIT[case]
    extra = [a.format(root=scratch) for a in extra]
    run_script(script, ["--evaluate", "--weights", weights, "--split", split, *extra,
                        "--results-dir", str(eval_results)], tmp_path)
    (other,) = [d for d in run_dirs(eval_results) if d != evaluated]
    figures = _figures(read_json(other / "metrics.json"), split)
    assert figures and other.name.startswith(f"{trained['model_name']}_eval_{split}_")
    for key, value in _figures(trained, split).items():      # a split the training run also scored
        assert figures[key] == pytest.approx(value, abs=1e-6, nan_ok=True), key
    assert sorted(p.name for p in run.iterdir()) == before     # the training run is never written to


def test_evaluate_input_errors_are_one_line(reference_runs, tmp_path):
    script, make_args = CASES["resnet18_hybrid"]
    bad = run_script(script, ["--evaluate", *make_args(tmp_path)], tmp_path, check=False)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1] == (
        "error: --weights: --evaluate needs --weights RUN/best_model.pt")
    _, run = reference_runs("resnet18_hybrid")
    for split, message in (("nope", "error: --split: no split 'nope' here; the data flags give: valid, test"),
                           ("train", "error: --split: the training split is read with augmentation")):
        bad = run_script(script, ["--evaluate", "--weights", str(run / "best_model.pt"), "--split", split,
                                  "--results-dir", str(tmp_path / "e")], tmp_path, check=False)
        assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].startswith(message), bad.stderr
        assert "Traceback" not in bad.stderr
    assert not Path(tmp_path / "e").exists() or not run_dirs(tmp_path / "e")
