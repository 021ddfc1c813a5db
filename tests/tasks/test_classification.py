"""The two classification scripts end to end, as a user runs them (subprocesses on demo data)."""
import os
import subprocess
import sys

import pytest
import torch

from tests.conftest import REPO, assert_same_results, kill_during_epoch_2, read_json, run_dirs, run_script

MNV3 = "train_MobileNetV3_Small_BoT_Linear.py"
R18 = "train_ResNet18_Hybrid.py"
QUICK = ["--demo", "--image-size", "64", "--batch-size", "16", "--num-workers", "0"]

RUN_FILES = {"config.json", "history.json", "metrics.json", "training_plot.png", "train.log", "best_model.pt",
             "last.pt", "confusion_matrix.png", "confusion_matrix_test.png"}
METRICS_KEYS = {"model_name", "task", "num_params", "trainable_params", "size_mb", "fps", "fps_batch_size",
                "fps_image_size", "fps_device", "fps_dtype", "latency_ms", "best_epoch", "epochs_run",
                "stopped_early", "train_time_s", "valid_acc", "valid_f1", "test_acc", "test_f1", "data_warnings",
                "ckpt_path"}
HISTORY_KEYS = {"train_loss", "valid_loss", "valid_acc", "valid_f1", "lr", "epoch_time_s", "data_time_s",
                "samples_per_s", "bad_steps"}


def test_run_directory_files_keys_and_predict(demo_workdir, tmp_path):
    results = tmp_path / "res"
    run_script(MNV3, QUICK + ["--epochs", "2", "--train-limit", "48", "--valid-limit", "24",
                              "--results-dir", str(results)], demo_workdir)
    (run,) = run_dirs(results)
    assert run.name.startswith("MobileNetV3_Small_BoT_Linear_")
    assert {p.name for p in run.iterdir()} == RUN_FILES
    metrics, history = read_json(run / "metrics.json"), read_json(run / "history.json")
    assert set(metrics) == METRICS_KEYS and set(history) == HISTORY_KEYS
    assert metrics["num_params"] == 1_158_132 and metrics["fps_image_size"] == 64
    assert metrics["size_mb"] == pytest.approx(4.42, abs=0.05)
    assert metrics["epochs_run"] == 2 and metrics["best_epoch"] in (1, 2) and metrics["data_warnings"] == {}
    assert 0 <= metrics["valid_acc"] <= 1 and metrics["fps"] > 0 and metrics["latency_ms"] > 0
    # the best checkpoint's re-evaluation equals the best epoch's validation figure
    assert metrics["valid_acc"] == pytest.approx(history["valid_acc"][metrics["best_epoch"] - 1], abs=1e-9)
    config = read_json(run / "config.json")
    assert config["args"]["model"] == "MobileNetV3_Small_BoT_Linear" and "torch" in config["versions"]
    for ckpt in ("best_model.pt", "last.pt"):
        assert "model" in torch.load(run / ckpt, weights_only=True)

    images = sorted((demo_workdir / "data/demo/classification/images/brown_spot").glob("valid_*.jpg"))[:2]
    out = run_script(MNV3, ["--predict", *map(str, images), "--weights", str(run / "best_model.pt")], demo_workdir)
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 2
    for line, image in zip(lines, images):
        path, *top = line.split("\t")
        assert path == str(image) and len(top) == 3
        probs = [float(t.rsplit(" ", 1)[1]) for t in top]
        assert probs == sorted(probs, reverse=True) and sum(probs) <= 1.0 + 1e-6
        assert {t.rsplit(" ", 1)[0] for t in top} <= {"bacterial_leaf_blight", "brown_spot", "healthy", "leaf_blast"}



def test_resume_after_sigkill_matches_uninterrupted_run(demo_workdir, tmp_path):
    args = QUICK + ["--epochs", "3", "--train-limit", "64", "--valid-limit", "32", "--num-workers", "2",
                    "--seed", "7"]
    ref_dir, kill_dir = tmp_path / "ref", tmp_path / "killed"
    run_script(MNV3, args + ["--results-dir", str(ref_dir)], demo_workdir)

    run = kill_during_epoch_2(MNV3, args, demo_workdir, kill_dir, delay=0.5)
    assert len(read_json(run / "history.json")["train_loss"]) == 1
    assert not (run / "metrics.json").exists()
    for name in ("best_model.pt", "last.pt"):  # nothing half-written (a kill mid-save leaves only a temp file)
        torch.load(run / name, weights_only=True)

    run_script(MNV3, ["--resume", str(run)], demo_workdir)
    assert not list(run.glob(".tmp_*"))        # what a killed writer left is cleaned up on resume
    assert run_dirs(kill_dir) == [run]  # resumed in place, no new directory
    (ref,) = run_dirs(ref_dir)
    assert_same_results(ref, run)


def test_bad_images_are_counted_skips(demo_workdir, tmp_path):
    import shutil

    src = demo_workdir / "data/demo/classification"
    ds = tmp_path / "ds"
    shutil.copytree(src / "images", ds / "images")
    lines = (src / "metadata.csv").read_text().splitlines()
    header, rows = lines[0], [r for r in lines[1:] if "_000" in r]  # a few per class and split
    (ds / "images/healthy/train_0000.jpg").write_bytes(b"")                         # zero-byte
    (ds / "images/brown_spot/train_0001.jpg").write_bytes(
        (ds / "images/brown_spot/train_0001.jpg").read_bytes()[:300])              # corrupt JPEG
    rows.append("images/leaf_blast/does_not_exist.jpg,leaf_blast,valid")             # missing file
    (ds / "metadata.csv").write_text("\n".join([header, *rows]) + "\n")
    shutil.copy(src / "label2id.json", ds / "label2id.json")
    run_script(MNV3, ["--metadata", str(ds / "metadata.csv"), "--label2id", str(ds / "label2id.json"),
                      "--image-size", "64", "--epochs", "2", "--num-workers", "2", "--batch-size", "8",
                      "--results-dir", str(tmp_path / "res")], tmp_path)
    (run,) = run_dirs(tmp_path / "res")
    metrics = read_json(run / "metrics.json")
    assert metrics["data_warnings"] == {"empty_file": 1, "missing_file": 1, "unreadable_image": 1}
    log = (run / "train.log").read_text()
    assert "does_not_exist.jpg (missing_file)" in log and "train_0000.jpg (empty_file)" in log


@pytest.mark.parametrize("case", ["unknown_label", "missing_column", "empty_valid"])
def test_whole_input_errors_exit_2_with_one_line(tmp_path, case):
    (tmp_path / "label2id.json").write_text('{"a": 0, "b": 1}')
    rows = {"unknown_label": "path,label,split\nx.jpg,a,train\ny.jpg,zzz,valid\n",
            "missing_column": "path,label\nx.jpg,a\n",
            "empty_valid": "path,label,split\nx.jpg,a,train\ny.jpg,b,test\n"}[case]
    (tmp_path / "metadata.csv").write_text(rows)
    proc = run_script(MNV3, ["--metadata", "metadata.csv", "--label2id", "label2id.json"], tmp_path, check=False)
    assert proc.returncode == 2
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in proc.stderr, proc.stderr
    expected = {"unknown_label": "error: metadata.csv:3: label 'zzz' is not in label2id.json",
                "missing_column": "error: metadata.csv:1: missing column(s) split",
                "empty_valid": "error: metadata.csv: the 'valid' split is empty"}[case]
    assert err[0].startswith(expected), err[0]


def test_pretrained_offline_fails_clearly_and_local_weights_load(tmp_path, demo_workdir):
    import timm

    proc = run_script(R18, ["--demo", "--pretrained", "--epochs", "1"], demo_workdir, check=False,
                      env={"HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: --pretrained-weights: could not load pretrained")

    from src.models.classifiers import create_classifier

    torch.manual_seed(123)
    reference = timm.create_model("resnet18")  # a full timm checkpoint, classifier included
    weights = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), weights)
    model = create_classifier("ResNet18_Hybrid", 4, pretrained_weights=str(weights))
    torch.testing.assert_close(model.backbone.state_dict()["layer4.1.conv2.weight"],
                               reference.state_dict()["layer4.1.conv2.weight"])


def test_torchrun_two_ranks_reduces_metrics(demo_workdir, tmp_path):
    results = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(REPO / R18), *QUICK, "--device", "cpu", "--epochs", "2", "--train-limit", "32",
                           "--valid-limit", "18", "--results-dir", str(results)],
                          cwd=demo_workdir, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    (run,) = run_dirs(results)
    metrics = read_json(run / "metrics.json")
    assert read_json(run / "config.json")["world_size"] == 2

    # single-process re-evaluation of the saved model on the whole valid split gives the same figures:
    # the ranks' shards (9 + 9 images) were gathered, not just rank 0's
    from src.data.classification import build_classification_data
    from src.data.loading import make_loader
    from src.tasks.classification import ClassificationTask, load_for_inference

    model, cfg = load_for_inference(str(run / "best_model.pt"), torch.device("cpu"))
    root = demo_workdir / "data/demo/classification"
    data = build_classification_data(str(root / "metadata.csv"), str(root / "label2id.json"), 64, 42,
                                     train_limit=32, valid_limit=18)
    from src.training.evaluate import evaluate

    task = ClassificationTask(cfg["class_names"], 64, cfg)
    full = evaluate(model, task, make_loader(data.valid, batch_size=16, train=False, seed=42), torch.device("cpu"),
                    "valid")
    assert len(task._meters["valid"].arrays()[0]) == 18
    assert metrics["valid_acc"] == pytest.approx(full["acc"], abs=1e-9)
    assert metrics["valid_f1"] == pytest.approx(full["f1"], abs=1e-9)
    # the per-epoch validation scored the model that was saved: every rank evaluated rank 0's BatchNorm
    # statistics (before, each rank its own, and the best epoch's history disagreed with best_model.pt)
    history = read_json(run / "history.json")
    best = metrics["best_epoch"]
    assert history["valid_loss"][best - 1] == pytest.approx(full["loss"], rel=1e-6)
    assert history["valid_acc"][best - 1] == pytest.approx(metrics["valid_acc"], abs=1e-9)


def test_two_node_rendezvous_writes_one_run(small_dataset, tmp_path):
    """Two "nodes" on this machine (two torchrun agents, two processes each, gloo) meet through a c10d
    rendezvous as machines on a network would: one run of world size 4, one run directory."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    metadata, label2id = small_dataset
    results = tmp_path / "res"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    nodes = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node-rank", str(n),
                               "--nproc_per_node", "2", "--rdzv-backend", "c10d", "--rdzv-endpoint",
                               f"127.0.0.1:{port}", "--rdzv-id", "two-nodes", str(REPO / R18), "--metadata", metadata,
                               "--label2id", label2id, "--image-size", "64", "--batch-size", "4", "--num-workers", "0",
                               "--epochs", "1", "--device", "cpu", "--results-dir", str(results)],
                              cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for n in (0, 1)]
    outputs = [p.communicate(timeout=600) for p in nodes]
    assert [p.returncode for p in nodes] == [0, 0], [err[-3000:] for _, err in outputs]
    (run,) = run_dirs(results)
    assert read_json(run / "config.json")["world_size"] == 4
    assert read_json(run / "metrics.json")["epochs_run"] == 1 and (run / "best_model.pt").is_file()
