"""A sixth task plugged into the engine as docs/architecture.md describes it: regression on random
tensors, with bad samples. fit, evaluate, resume, the monitored-metric check and the engine's own
bookkeeping (bad samples, empty batches, device moves, train/eval mode)."""
import json

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from src.data.loading import make_loader
from src.errors import TrainingError
from src.metrics.meter import SumMeter
from src.training.evaluate import evaluate, to_device
from src.training.loop import TrainConfig, fit
from src.training.task import Task, usable

BAD = {5, 17}          # sample indices the toy data layer cannot read


class Points(Dataset):
    """x ~ N(0, 1)^4, y = x @ w + 0.5; samples in ``BAD`` are skipped and reported as the data layer does."""

    def __init__(self, n: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 4, generator=g)
        self.y = self.x @ torch.tensor([1.0, -2.0, 0.5, 3.0]) + 0.5

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict:
        if i in BAD:
            return {"bad": (f"point/{i}", "unreadable_point")}
        return {"x": self.x[i], "y": self.y[i]}


class MSEMeter(SumMeter):
    def __init__(self) -> None:
        super().__init__("abs_err", "n")

    def compute(self) -> dict:
        return {"loss": self.loss(), "mae": self.sums["abs_err"] / self.sums["n"] if self.sums["n"] else float("nan")}


class Regression(Task):
    """The whole plugin: a loss, a validation step, a meter, an example input."""

    name = "regression"
    monitor = "valid_mae"
    mode = "min"

    def __init__(self, fail_at_epoch: int | None = None) -> None:
        super().__init__({"model_name": "linear"}, 4)
        self.fail_at_epoch, self.epochs_seen, self.modes = fail_at_epoch, 0, []

    def training_step(self, model, batch):
        return nn.functional.mse_loss(model(batch["x"]).squeeze(1), batch["y"]), len(batch["y"])

    def new_meter(self, split):
        return MSEMeter()

    def validation_step(self, model, batch, meter, split):
        self.modes.append(model.training)
        pred = model(batch["x"]).squeeze(1)
        meter.add_loss(float(nn.functional.mse_loss(pred, batch["y"])), len(pred))
        meter.add(abs_err=float((pred - batch["y"]).abs().sum()), n=len(pred))

    def epoch_stats(self):
        self.epochs_seen += 1
        if self.epochs_seen == self.fail_at_epoch:     # a power cut after this epoch's training
            raise KeyboardInterrupt
        return {}

    def example_input(self, batch_size, device):
        return torch.randn(batch_size, 4, device=device)


def _loaders():
    train = make_loader(Points(48, 0), batch_size=8, train=True, seed=0)
    valid = make_loader(Points(24, 1), batch_size=8, train=False, seed=0)
    return train, valid


def _fit(run_dir, task, resume_from=None, epochs=6):
    run_dir.mkdir(exist_ok=True)
    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    train, valid = _loaders()
    cfg = TrainConfig(epochs=epochs, head_lr=0.5, fps_min_time_s=0.01, patience=0)
    return fit(model, task, train, valid, cfg, str(run_dir), torch.device("cpu"), test_loaders={"test": valid},
               resume_from=resume_from)


def _history(run_dir):
    return json.loads((run_dir / "history.json").read_text())


def test_toy_task_fits_evaluates_and_counts_bad_samples(tmp_path):
    task = Regression()
    metrics = _fit(tmp_path, task)
    history = _history(tmp_path)
    assert history["valid_mae"][-1] < history["valid_mae"][0] / 2          # it learns
    assert metrics["valid_mae"] == pytest.approx(min(history["valid_mae"]), abs=1e-9)
    assert metrics["test_mae"] == pytest.approx(metrics["valid_mae"], abs=1e-9)
    # index 5 is in both sets, 17 in training only: each bad input is counted once
    assert metrics["data_warnings"] == {"unreadable_point": 2}
    assert not any(task.modes)                                              # validation ran in eval mode
    assert {p.name for p in tmp_path.iterdir()} >= {"best_model.pt", "last.pt", "history.json", "metrics.json"}

    # evaluate() alone, on the saved best weights, gives the final figures again
    model = nn.Linear(4, 1)
    model.load_state_dict(torch.load(tmp_path / "best_model.pt", weights_only=True)["model"])
    model.train()
    again = evaluate(model, Regression(), _loaders()[1], torch.device("cpu"), "valid")
    assert again["mae"] == pytest.approx(metrics["valid_mae"], abs=1e-9) and model.training


def test_toy_task_resumes_exactly(tmp_path):
    _fit(tmp_path / "ref", Regression())
    with pytest.raises(KeyboardInterrupt):
        _fit(tmp_path / "cut", Regression(fail_at_epoch=3))      # last.pt holds epoch 2
    assert len(_history(tmp_path / "cut")["train_loss"]) == 2
    _fit(tmp_path / "cut", Regression(), resume_from=str(tmp_path / "cut" / "last.pt"))
    ref, cut = _history(tmp_path / "ref"), _history(tmp_path / "cut")
    for key in ("train_loss", "valid_loss", "valid_mae", "lr"):
        assert cut[key] == pytest.approx(ref[key], abs=1e-6), key


def test_a_monitor_that_validation_does_not_report_stops_with_a_clear_error(tmp_path):
    task = Regression()
    task.monitor = "valid_acc"                         # a typo: regression has no accuracy
    with pytest.raises(TrainingError, match="'valid_acc' is not among .*valid_loss, valid_mae"):
        _fit(tmp_path, task)
    assert not (tmp_path / "best_model.pt").exists() and not (tmp_path / "last.pt").exists()


def test_a_batch_with_no_usable_sample_never_reaches_a_step(tmp_path):
    calls = []

    class Counting(Regression):
        def validation_step(self, model, batch, meter, split):
            calls.append(len(batch["y"]))
            super().validation_step(model, batch, meter, split)

    only_bad = [{"bad": [("a", "unreadable_point"), ("b", "unreadable_point")]},
                {"x": torch.ones(2, 4), "y": torch.zeros(2), "bad": [("c", "truncated")]}]
    task = Counting()
    out = evaluate(nn.Linear(4, 1), task, only_bad, torch.device("cpu"), "valid")
    assert calls == [2] and task.warnings.counts() == {"truncated": 1, "unreadable_point": 2}
    assert out["mae"] == out["mae"] and not usable(only_bad[0]) and usable(only_bad[1])


def test_to_device_moves_tensors_at_any_depth():
    batch = {"image": torch.ones(1), "targets": [{"boxes": torch.zeros(2, 4)}], "ids": ["a"], "n": (torch.ones(1), 3)}
    moved = to_device(batch, torch.device("meta"))
    assert moved["image"].is_meta and moved["targets"][0]["boxes"].is_meta and moved["n"][0].is_meta
    assert moved["ids"] == ["a"] and moved["n"][1] == 3


def test_a_full_disk_while_saving_names_the_last_good_checkpoint(tmp_path, monkeypatch):
    """Epoch 2's save hits ENOSPC: one TrainingError line, and last.pt still holds epoch 1 intact."""
    import errno

    from src.training import loop

    real_save, calls = loop.atomic_torch_save, []

    def save(obj, path):
        calls.append(path)
        if len(calls) > 2:            # epoch 1 wrote best_model.pt and last.pt
            raise OSError(errno.ENOSPC, "No space left on device")
        real_save(obj, path)

    monkeypatch.setattr(loop, "atomic_torch_save", save)
    with pytest.raises(TrainingError) as info:
        _fit(tmp_path, Regression())
    assert str(info.value) == (f"disk full while saving epoch 2 in {tmp_path}; nothing was overwritten. Last good "
                               f"checkpoint: {tmp_path / 'last.pt'} (epoch 1); free some space and resume the run")
    assert torch.load(tmp_path / "last.pt", weights_only=True)["epoch"] == 1
