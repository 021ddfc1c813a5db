"""train_vietocr.py end to end, as a user runs it (subprocesses on demo-format data)."""
import os

import pytest
import torch

from tests.conftest import assert_same_results, kill_during_epoch_2, read_json, run_dirs, run_script

OCR = "train_vietocr.py"
RUN_FILES = {"config.json", "history.json", "results.csv", "metrics.json", "training_plot.png", "train.log", "best_model.pt",
             "last.pt", "sample_predictions.png"}
SCORES = ("cer", "wer", "acc_full_seq", "acc_per_char")
METRICS_KEYS = {"model_name", "task", "num_params", "trainable_params", "size_mb", "fps", "fps_batch_size",
                "fps_image_size", "fps_device", "fps_dtype", "latency_ms", "best_epoch", "epochs_run",
                "stopped_early", "train_time_s", "data_warnings", "ckpt_path", "train_loss",
                *(f"{s}_{k}" for s in ("valid", "test") for k in (*SCORES, "loss"))}
HISTORY_KEYS = {"train_loss", "valid_loss", *(f"valid_{k}" for k in SCORES), "lr", "epoch_time_s", "data_time_s",
                "samples_per_s", "bad_steps"}


@pytest.fixture(scope="session")
def ocr_data(tmp_path_factory):
    """A small set of demo lines in VietOCR's layout: (data root, {split: annotation file})."""
    from src.data.demo_ocr import ensure_demo_ocr

    root = tmp_path_factory.mktemp("ocr")
    return root, ensure_demo_ocr(str(root), counts=(96, 40, 16))


def data_args(root, files, splits=("train", "valid", "test")):
    out = ["--data-root", str(root)]
    for s in splits:
        out += [f"--{s}-annotation", files[s]]
    return out


QUICK = ["--model-size", "small", "--batch-size", "16", "--num-workers", "0", "--lr", "1e-3", "--max-decode-len", "24"]


def test_run_directory_files_keys_and_predict(ocr_data, tmp_path):
    root, files = ocr_data
    run_script(OCR, data_args(root, files) + QUICK + ["--epochs", "2", "--tensorboard", "--results-dir", str(tmp_path)],
               tmp_path)
    (run,) = run_dirs(tmp_path)
    assert run.name.startswith("vgg_transformer_small_")
    (events,) = run.glob("events.out.tfevents.*")
    assert {p.name for p in run.iterdir()} - {events.name} == RUN_FILES
    metrics, history = read_json(run / "metrics.json"), read_json(run / "history.json")
    assert (run / "results.csv").read_text(encoding="utf-8").splitlines()[0].split(",") == list(history)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    board = EventAccumulator(str(events))
    board.Reload()
    assert [e.value for e in board.Scalars("valid_cer")] == pytest.approx(history["valid_cer"], rel=1e-6)
    assert [e.step for e in board.Images("samples/valid")] == [1, 2]          # the sample lines per epoch
    assert set(metrics) == METRICS_KEYS and set(history) == HISTORY_KEYS
    assert metrics["task"] == "ocr" and metrics["epochs_run"] == 2 and metrics["data_warnings"] == {}
    assert metrics["fps_image_size"] == [32, 160] and metrics["fps"] > 0
    assert 0 <= metrics["valid_acc_full_seq"] <= 1 and metrics["valid_cer"] >= 0
    # the best checkpoint's re-evaluation equals the best epoch's validation figure (lower CER wins)
    best = metrics["best_epoch"]
    assert history["valid_cer"][best - 1] == min(history["valid_cer"])
    assert metrics["valid_cer"] == pytest.approx(history["valid_cer"][best - 1], abs=1e-9)
    assert all(v == v for v in history["valid_loss"])  # no NaN
    # the LMDB caches are keyed by content and kept next to the data
    assert len(os.listdir(root / ".lmdb_cache")) == 3
    for ckpt in ("best_model.pt", "last.pt"):
        assert "model" in torch.load(run / ckpt, weights_only=True)

    images = [root / "images/valid/00000.png", root / "images/valid/00001.png"]
    for extra in ([], ["--beam-size", "2"], ["--quantize", "int8"]):
        out = run_script(OCR, ["--predict", *map(str, images), "--weights", str(run / "best_model.pt"), *extra],
                         tmp_path)
        lines = out.stdout.rstrip("\n").split("\n")
        assert [ln.split("\t")[0] for ln in lines] == list(map(str, images))
        for ln in lines:
            _, text, conf = ln.split("\t")
            assert 0.0 <= float(conf) <= 1.0



def test_resume_after_sigkill_matches_uninterrupted_run(ocr_data, tmp_path):
    root, files = ocr_data
    args = data_args(root, files, ("train", "valid")) + QUICK + ["--epochs", "3", "--seed", "3", "--masked-lm"]
    ref_dir, kill_dir = tmp_path / "ref", tmp_path / "killed"
    run_script(OCR, args + ["--results-dir", str(ref_dir)], tmp_path)

    run = kill_during_epoch_2(OCR, args, tmp_path, kill_dir, delay=0.3)
    assert len(read_json(run / "history.json")["train_loss"]) == 1 and not (run / "metrics.json").exists()
    for name in ("best_model.pt", "last.pt"):   # intact (a kill mid-save leaves only a temp file)
        torch.load(run / name, weights_only=True)

    run_script(OCR, ["--resume", str(run)], tmp_path)
    (ref,) = run_dirs(ref_dir)
    assert_same_results(ref, run)


def test_bad_lines_are_counted_and_a_tiny_validation_set_gives_finite_metrics(ocr_data, tmp_path):
    root, files = ocr_data
    train = tmp_path / "train.txt"
    lines = open(files["train"], encoding="utf-8").read().splitlines()[:20]
    lines += ["images/train/00000.png\tgiá €5",          # outside the vocabulary
              "images/train/none.png\tmất",              # missing file
              "bad.png\thỏng"]                           # unreadable
    (root / "bad.png").write_bytes(b"\x89PNG broken")
    train.write_text("\n".join(lines) + "\n", encoding="utf-8")
    valid = tmp_path / "valid.txt"
    valid.write_text("\n".join(open(files["valid"], encoding="utf-8").read().splitlines()[:3]) + "\n",
                     encoding="utf-8")  # 3 lines: less than one batch
    run_script(OCR, ["--data-root", str(root), "--train-annotation", str(train), "--valid-annotation", str(valid),
                     "--lmdb-dir", str(tmp_path / "cache"), *QUICK, "--epochs", "1",
                     "--results-dir", str(tmp_path / "res")], tmp_path)
    (run,) = run_dirs(tmp_path / "res")
    metrics = read_json(run / "metrics.json")
    assert metrics["data_warnings"] == {"missing_file": 1, "unknown_char": 1, "unreadable_image": 1}
    history = read_json(run / "history.json")
    assert all(v == v for k, v in metrics.items() if k.startswith("valid_"))
    assert history["valid_loss"][0] == history["valid_loss"][0]

    proc = run_script(OCR, ["--data-root", str(root), "--train-annotation", str(train), "--valid-annotation",
                            str(valid), "--lmdb-dir", str(tmp_path / "cache"), "--unknown-char", "error", *QUICK],
                      tmp_path, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    # the skipped images are logged first; the run then stops with one error line
    assert proc.stderr.strip().splitlines()[-1] == (f"error: --unknown-char: {train}:21: label has characters "
                                                    "outside the vocabulary '€' (skip such labels, or give a "
                                                    "vocabulary that has them)")


def test_annotation_without_tab_is_one_error_line(ocr_data, tmp_path):
    root, files = ocr_data
    bad = tmp_path / "train.txt"
    bad.write_text("images/train/00000.png\tmột\nimages/train/00001.png hai\n", encoding="utf-8")
    proc = run_script(OCR, ["--data-root", str(root), "--train-annotation", str(bad), "--valid-annotation",
                            files["valid"], *QUICK], tmp_path, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().startswith(f"error: {bad}:2: expected 'relative/path<TAB>label', found no tab")


def test_resume_refuses_what_it_cannot_continue_before_writing_anything(ocr_data, tmp_path):
    """A finished one-cycle run cannot be extended, and a resumed run cannot change its model: one line
    naming the flag, exit 2, and the run's files untouched (before: a traceback from the scheduler or
    from load_state_dict)."""
    root, files = ocr_data
    run_script(OCR, data_args(root, files, ("train", "valid")) + QUICK + ["--epochs", "1", "--results-dir",
                                                                          str(tmp_path / "res")], tmp_path)
    (run,) = run_dirs(tmp_path / "res")
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.suffix in (".pt", ".json")}
    longer = run_script(OCR, ["--resume", str(run), "--epochs", "2"], tmp_path, check=False)
    assert longer.returncode == 2 and "Traceback" not in longer.stderr
    last = longer.stderr.strip().splitlines()[-1]
    assert last.startswith("error: --epochs: ") and "one-cycle schedule has" in last and "cannot be stretched" in last
    other = run_script(OCR, ["--resume", str(run), "--model-size", "full", "--seed", "3"], tmp_path, check=False)
    assert other.returncode == 2 and "Traceback" not in other.stderr
    assert other.stderr.strip().splitlines()[-1] == (
        f"error: --resume: {run / 'last.pt'}: a resumed run keeps the arguments it started with; these differ: "
        "--model-size 'full' (the run has 'small'), --seed 3 (the run has 42). Start a new run for them")
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.suffix in (".pt", ".json")} == before


def test_under_torchrun_every_rank_stops_with_the_same_line(ocr_data, tmp_path):
    """Rank 0 meets a whole-input error while building the cache; before, the waiting rank died on a
    closed gloo connection and the real line was buried in its traceback."""
    import subprocess
    import sys

    from tests.conftest import REPO

    root, files = ocr_data
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(REPO / OCR), "--data-root", str(tmp_path / "nowhere"), "--train-annotation",
                           files["train"], "--valid-annotation", files["valid"], *QUICK, "--device", "cpu",
                           "--results-dir", str(tmp_path / "res")], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    line = f"error: --data-root: {tmp_path / 'nowhere'}: folder not found (the annotation's image paths are relative to it)"
    assert proc.returncode != 0 and proc.stderr.splitlines().count(line) == 2, proc.stderr[-3000:]   # one per rank
    assert "Connection" not in proc.stderr and "gloo" not in proc.stderr.lower()
    assert not (tmp_path / "res").exists()
