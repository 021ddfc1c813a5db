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

RUN_FILES = {"config.json", "history.json", "results.csv", "metrics.json", "training_plot.png", "train.log", "best_model.pt",
             "last.pt", "confusion_matrix.png", "confusion_matrix_test.png"}
METRICS_KEYS = {"model_name", "task", "num_params", "trainable_params", "size_mb", "fps", "fps_batch_size",
                "fps_image_size", "fps_device", "fps_dtype", "latency_ms", "best_epoch", "epochs_run",
                "stopped_early", "train_time_s", "valid_acc", "valid_f1", "test_acc", "test_f1", "data_warnings",
                "ckpt_path", "train_loss", "train_acc", "valid_loss", "test_loss"}
HISTORY_KEYS = {"train_loss", "train_acc", "valid_loss", "valid_acc", "valid_f1", "lr", "epoch_time_s", "data_time_s",
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
    assert all(0 <= a <= 1 for a in history["train_acc"]) and len(history["train_acc"]) == 2
    assert metrics["train_acc"] == history["train_acc"][metrics["best_epoch"] - 1]   # the best epoch's
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
    from src.tasks.classification import ClassificationTask
    from src.tasks.classification_inference import load_for_inference

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


# --- per-script defaults, augmentation flags, mixup, train_acc ---------------------------------------

SEED_DEFAULTS = {   # the tables of ../shared/seeds/<script>.md
    MNV3: dict(epochs=30, batch_size=32, patience=10, base_lr=5e-5, head_lr=5e-4, weight_decay=1e-2, image_size=224,
               heads=4, dropout=0.1, seed=42, metadata="data/metadata.csv", label2id="data/label2id.json"),
    R18: dict(epochs=10, batch_size=32, patience=5, base_lr=1e-4, head_lr=1e-3, image_size=224, heads=4,
              reduction=32, dropout=0.1, metadata="data/metadata.csv", label2id="data/label2id.json"),
}


def _script(script):
    import importlib
    return importlib.import_module(script[:-3])


@pytest.mark.parametrize("script", [MNV3, R18])
def test_defaults_are_the_seed_documents_and_demo_keeps_its_own(script):
    from src.tasks.classification import demo_defaults, parse_args

    parser = _script(script).build_parser()
    args = parse_args(parser, [])
    assert {k: getattr(args, k) for k in SEED_DEFAULTS[script]} == SEED_DEFAULTS[script]
    assert parser.get_default("num_workers") == 4     # parsing caps an untyped default at the CPUs
    demo = parse_args(_script(script).build_parser(), ["--demo"])
    assert {k: getattr(demo, k) for k in demo_defaults(args.model)} == demo_defaults(args.model)
    # augmentation defaults: the pipeline from before the flags (flips both ways, 15 degrees, jitter)
    assert (args.hflip, args.vflip, args.rotation, args.color_jitter, args.aa, args.reprob, args.mixup,
            args.cutmix, args.label_smoothing) == (0.5, 0.5, 15.0, [0.2, 0.2, 0.2, 0.02], None, 0.0, 0.0, 0.0, 0.0)


def test_timm_flag_spellings_and_aa_turns_jitter_off_unless_typed():
    from src.tasks.classification import parse_args

    parser = _script(R18).build_parser()
    a = parse_args(parser, ["--smoothing", "0.1", "--mixup_switch_prob", "0.3", "--color_jitter", "0.4"])
    b = parse_args(parser, ["--label-smoothing", "0.1", "--mixup-switch-prob", "0.3", "--color-jitter", "0.4"])
    assert vars(a) == vars(b) and a.label_smoothing == 0.1 and a.color_jitter == [0.4]
    assert parse_args(parser, ["--aa", "rand-m9-mstd0.5-inc1"]).color_jitter == [0.0]
    assert parse_args(parser, ["--aa", "rand-m9-mstd0.5-inc1", "--color-jitter", "0.3"]).color_jitter == [0.3]
    assert parse_args(parser, ["--aa", "3a"]).color_jitter == [0.2, 0.2, 0.2, 0.02]     # timm keeps it for 3a


@pytest.mark.parametrize("flags,message", [
    (["--aa", "rand-x9"], "error: --aa: not a timm augmentation policy: 'rand-x9'"),
    (["--mixup-prob", "2"], "error: --mixup-prob: must be in [0, 1], got 2"),
    (["--color-jitter", "0.1", "0.2"], "error: --color-jitter: give 1, 3 or 4 factors"),
])
def test_bad_augmentation_flags_stop_with_one_line(tmp_path, flags, message):
    proc = run_script(R18, flags + ["--device", "cpu"], tmp_path, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and proc.stderr.startswith(message), proc.stderr
    assert not (tmp_path / "results").exists()


class _Seen(torch.nn.Module):
    """A linear classifier on the flattened image that keeps the last input it saw."""

    def __init__(self, pixels: int, classes: int) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = torch.nn.Linear(pixels, classes)

    def forward(self, x):
        self.seen = x.detach().clone()
        return self.fc(x.flatten(1))


def _task(flags=(), classes=4):
    from src.tasks.classification import build_task, parse_args
    args = parse_args(_script(MNV3).build_parser(), ["--image-size", "4", *flags])
    return build_task(args, [f"c{i}" for i in range(classes)])


def test_mixup_gives_soft_targets_that_sum_to_one_and_trains_a_finite_step():
    import numpy as np

    task = _task(["--mixup", "1", "--cutmix", "1", "--smoothing", "0.1"])
    assert task.mixup.mixup_alpha == 1 and task.mixup.label_smoothing == 0.1 and task.mixup.num_classes == 4
    x, y = torch.randn(6, 3, 4, 4), torch.tensor([0, 1, 2, 3, 0, 1])
    np.random.seed(0)
    mixed, target = task.mixup(x.clone(), y)
    assert target.shape == (6, 4) and (target >= 0).all()
    torch.testing.assert_close(target.sum(1), torch.ones(6))
    assert not torch.equal(mixed, x)

    model = _Seen(48, 4)
    np.random.seed(1)
    loss, n = task.training_step(model, {"image": x.clone(), "label": y})
    assert n == 6 and torch.isfinite(loss) and loss.item() > 0
    loss.backward()
    assert model.fc.weight.grad is not None and torch.isfinite(model.fc.weight.grad).all()
    assert not torch.equal(model.seen, x)                        # the model trained on mixed images
    odd = x[:5].clone()   # timm's Mixup needs an even batch: an odd one trains unmixed, on soft targets
    loss, n = task.training_step(model, {"image": odd, "label": y[:5]})
    assert n == 5 and torch.isfinite(loss) and torch.equal(model.seen, x[:5])


def test_train_acc_counts_every_trained_batch_and_resets_each_epoch():
    task, model = _task(), _Seen(48, 4)
    batches = [(torch.randn(8, 3, 4, 4), torch.randint(0, 4, (8,))) for _ in range(2)]
    hits = sum(int((model(x).argmax(1) == y).sum()) for x, y in batches)     # the same model, by hand
    for x, y in batches:
        task.training_step(model, {"image": x, "label": y})
    assert task.epoch_stats() == {"train_acc": hits / 16}
    task.training_step(model, {"image": batches[0][0], "label": batches[0][1]})
    assert task.epoch_stats()["train_acc"] == int((model(batches[0][0]).argmax(1) == batches[0][1]).sum()) / 8


def test_train_acc_under_mixup_is_against_the_mixed_targets_argmax():
    import numpy as np

    task, model = _task(["--mixup", "0.4"]), _Seen(48, 4)
    x, y = torch.randn(8, 3, 4, 4), torch.tensor([0, 1, 2, 3, 3, 2, 1, 0])
    np.random.seed(3)
    task.training_step(model, {"image": x.clone(), "label": y})
    np.random.seed(3)
    _, target = task.mixup(x.clone(), y)
    expected = int((model(model.seen).argmax(1) == target.argmax(1)).sum()) / 8
    assert task.epoch_stats()["train_acc"] == expected


def _two_rank_train_acc(rank, port, out):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    task, model = _task(), _Seen(48, 4)
    torch.manual_seed(100 + rank)      # each rank its own batch, of its own size
    x, y = torch.randn(4 + 4 * rank, 3, 4, 4), torch.randint(0, 4, (4 + 4 * rank,))
    task.training_step(model, {"image": x, "label": y})
    out[rank] = (int((model(x).argmax(1) == y).sum()), len(y), task.epoch_stats()["train_acc"])
    dist.destroy_process_group()


def test_train_acc_is_summed_over_ranks_before_dividing():
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = mp.Manager().dict()
    mp.spawn(_two_rank_train_acc, args=(port, out), nprocs=2)
    (c0, n0, acc0), (c1, n1, acc1) = out[0], out[1]
    assert acc0 == acc1 == (c0 + c1) / (n0 + n1)


def test_train_acc_in_history_is_the_first_batchs_accuracy(small_dataset, tmp_path):
    """One epoch of one batch without random augmentation or dropout: train_acc is the initial model's
    accuracy on that batch, recomputed here independently of the engine."""
    from src.data.classification import Augment, build_classification_data
    from src.data.loading import make_loader
    from src.models.classifiers import build_classifier
    from src.tasks.classification import parse_args
    from src.training.loop import seed_everything

    metadata, label2id = small_dataset
    flags = ["--metadata", metadata, "--label2id", label2id, "--image-size", "64", "--batch-size", "16",
             "--train-limit", "16", "--valid-limit", "8", "--epochs", "1", "--num-workers", "0", "--seed", "5",
             "--hflip", "0", "--vflip", "0", "--rotation", "0", "--color-jitter", "0", "--dropout", "0"]
    run_script(MNV3, flags + ["--results-dir", str(tmp_path / "res")], tmp_path)
    (run,) = run_dirs(tmp_path / "res")
    history = read_json(run / "history.json")

    args = parse_args(_script(MNV3).build_parser(), flags)
    data = build_classification_data(metadata, label2id, 64, 5, 16, 8, augment=Augment(0, 0, 0, (0,)))
    seed_everything(5)                      # as the script does before building the model
    model = build_classifier(args, len(data.class_names)).train()
    loader = make_loader(data.train, batch_size=16, train=True, seed=5)
    loader.sampler.set_epoch(1)
    (batch,) = list(loader)
    with torch.no_grad():
        hits = int((model(batch["image"]).argmax(1) == batch["label"]).sum())
    assert history["train_acc"] == [hits / 16]
