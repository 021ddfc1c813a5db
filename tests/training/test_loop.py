"""fit() on a tiny synthetic task: early stopping, non-finite guard, grad accumulation, schedules."""
import json
import math
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Sampler, TensorDataset

from src.data.loading import make_loader
from src.errors import TrainingError
from src.metrics.meter import SumMeter
from src.training.evaluate import evaluate
from src.training.loop import EarlyStopping, TrainConfig, fit
from src.training.optim import build_scheduler
from src.training.task import Task


class TinyMeter(SumMeter):
    def __init__(self, scripted):
        super().__init__()
        self.scripted = scripted

    def compute(self):
        return {"loss": self.scripted if self.scripted is not None else self.loss()}


class TinyTask(Task):
    """Regression of x.sum() from x; ``values`` scripts the validation losses epoch by epoch."""
    name = "toy"
    monitor = "valid_loss"
    mode = "min"

    def __init__(self, nan_from_step=None, values=None):
        super().__init__({"model_name": "toy"}, 4)
        self.steps = 0
        self.nan_from_step = nan_from_step
        self.values = values  # scripted validation losses per epoch

    def training_step(self, model, batch):
        x, y = batch
        self.steps += 1
        loss = nn.functional.mse_loss(model(x).squeeze(1), y)
        if self.nan_from_step is not None and self.steps >= self.nan_from_step:
            loss = loss * float("nan")
        return loss, len(y)

    def new_meter(self, split):
        scripted = None
        if self.values:
            scripted = self.values.pop(0) if len(self.values) > 1 else self.values[0]
        return TinyMeter(scripted)

    def validation_step(self, model, batch, meter, split):
        x, y = batch
        meter.add_loss(float(nn.functional.mse_loss(model(x).squeeze(1), y)), len(y))

    def example_input(self, batch_size, device):
        return torch.randn(batch_size, 4, device=device)


def _data(n=32):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 4, generator=g)
    return TensorDataset(x, x.sum(1))


def _fit(tmp_path, task, **cfg):
    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    train = make_loader(_data(), batch_size=8, train=True, seed=0, collate_fn=None)
    valid = make_loader(_data(16), batch_size=8, train=False, seed=0, collate_fn=None)
    config = TrainConfig(**{"epochs": 3, "head_lr": 0.05, "fps_min_time_s": 0.01, **cfg})
    metrics = fit(model, task, train, valid, config, str(tmp_path), torch.device("cpu"))
    history = json.loads((tmp_path / "history.json").read_text())
    return model, metrics, history


def test_early_stopping_strict_improvement_and_patience(tmp_path):
    stopper = EarlyStopping(patience=2, mode="min")
    assert stopper.update(1.0, 1) and not stopper.update(1.0, 2)  # equal is not an improvement
    assert not stopper.should_stop and not stopper.update(2.0, 3) and stopper.should_stop
    assert stopper.best_epoch == 1
    never = EarlyStopping(patience=0, mode="max")
    for e in range(20):
        never.update(0.0, e)
    assert not never.should_stop
    _, metrics, history = _fit(tmp_path, TinyTask(values=[3.0, 2.0, 2.5, 2.5, 2.5]), epochs=10, patience=2)
    assert metrics["best_epoch"] == 2 and metrics["epochs_run"] == 4 and metrics["stopped_early"] is True
    assert len(history["train_loss"]) == 4


def test_non_finite_losses_skip_steps_then_stop(tmp_path):
    with pytest.raises(TrainingError, match="3 non-finite losses in a row"):
        _fit(tmp_path, TinyTask(nan_from_step=6), epochs=3, max_bad_steps=3)
    # epoch 1 (4 steps) finished and was checkpointed before the bad streak began
    assert torch.load(tmp_path / "last.pt", weights_only=True)["epoch"] == 1
    (tmp_path / "b").mkdir()
    _, _, history = _fit(tmp_path / "b", TinyTask(nan_from_step=8), epochs=2, max_bad_steps=5)
    assert history["bad_steps"] == [0, 1]


def test_history_and_metrics_keys(tmp_path):
    _, metrics, history = _fit(tmp_path, TinyTask())
    assert set(history) == {"train_loss", "valid_loss", "lr", "epoch_time_s", "data_time_s", "samples_per_s",
                            "bad_steps"}
    assert all(len(v) == 3 for v in history.values())
    assert history["train_loss"][-1] < history["train_loss"][0]
    assert metrics["num_params"] == 5 and metrics["size_mb"] == pytest.approx(5 * 4 / 2 ** 20, abs=1e-4)
    assert metrics["fps"] > 0 and metrics["fps_batch_size"] == 16 and metrics["fps_dtype"] == "float32"


class EpochBatches(Sampler):
    """A batch_sampler that batches differently every epoch (like OCR buckets or refdet episodes)."""

    def __init__(self, n, batch_size):
        self.n, self.batch_size, self.epoch, self.seen = n, batch_size, 0, []

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __iter__(self):
        self.seen.append(self.epoch)
        order = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.epoch)).tolist()
        return iter([order[i:i + self.batch_size] for i in range(0, self.n, self.batch_size)])

    def __len__(self):
        return -(-self.n // self.batch_size)


def test_batch_sampler_gets_each_epoch(tmp_path):
    # the loop must reach a batch_sampler's set_epoch: DataLoader.sampler is then a SequentialSampler, and a
    # loop that only looks there replays epoch 0's batches every epoch
    sampler = EpochBatches(32, 8)
    train = DataLoader(_data(), batch_sampler=sampler)
    valid = make_loader(_data(16), batch_size=8, train=False, seed=0, collate_fn=None)
    fit(nn.Linear(4, 1), TinyTask(), train, valid, TrainConfig(epochs=3, head_lr=0.05, fps_min_time_s=0.01),
        str(tmp_path), torch.device("cpu"))
    assert sampler.seen == [1, 2, 3]


def test_grad_accumulation_matches_large_batch():
    torch.manual_seed(0)
    x, y = torch.randn(8, 4), torch.randn(8)
    a, b = nn.Linear(4, 1), nn.Linear(4, 1)
    b.load_state_dict(a.state_dict())
    nn.functional.mse_loss(a(x).squeeze(1), y).backward()
    for half in (slice(0, 4), slice(4, 8)):
        (nn.functional.mse_loss(b(x[half]).squeeze(1), y[half]) / 2).backward()
    torch.testing.assert_close(a.weight.grad, b.weight.grad)


def test_cosine_schedule_with_warmup_and_tmax():
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = build_scheduler(opt, "cosine", total_steps=10, steps_per_epoch=2, tmax_epochs=None, warmup_epochs=1)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.5) and lrs[1] == pytest.approx(1.0)
    assert lrs[2:] == pytest.approx([0.5 * (1 + math.cos(math.pi * t / 8)) for t in range(8)])


def test_ema_weights_are_evaluated_saved_and_resumed(tmp_path):
    model, metrics, history = _fit(tmp_path, TinyTask(), epochs=2, ema_decay=0.9)
    last = torch.load(tmp_path / "last.pt", weights_only=True)
    best = torch.load(tmp_path / "best_model.pt", weights_only=True)
    # the EMA is its own set of weights, not the last step's
    assert not torch.equal(last["ema"]["weight"], last["model"]["weight"])
    if metrics["best_epoch"] == 2:      # the best checkpoint holds the EMA weights
        assert torch.equal(best["model"]["weight"], last["ema"]["weight"])
    # what was scored is what was saved: best_model.pt's weights give the history's best value
    assert history["valid_loss"][metrics["best_epoch"] - 1] == pytest.approx(
        evaluate(_linear(best["model"]), TinyTask(), make_loader(_data(16), batch_size=8, train=False, seed=0,
                                                                  collate_fn=None), torch.device("cpu"), "valid")["loss"],
        rel=1e-6)


def _linear(state):
    layer = nn.Linear(4, 1)
    layer.load_state_dict(state)
    return layer


class CountingTask(TinyTask):
    """Counts the validation batches it sees per split evaluation."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.batches_per_eval = []

    def new_meter(self, split):
        self.batches_per_eval.append(0)
        return super().new_meter(split)

    def validation_step(self, model, batch, meter, split):
        self.batches_per_eval[-1] += 1
        super().validation_step(model, batch, meter, split)


def test_validate_every_n_epochs_keeps_history_aligned_and_patience_in_epochs(tmp_path):
    # validation losses 3.0 (epoch 2), 2.0 (epoch 4), 2.5 (epoch 6), 2.5 (epoch 7: the last epoch)
    task = CountingTask(values=[3.0, 2.0, 2.5, 2.5])
    _, metrics, history = _fit(tmp_path, task, epochs=7, val_every=2, patience=0)
    assert history["valid_loss"] == [None, 3.0, None, 2.0, None, 2.5, 2.5]
    assert all(len(v) == 7 for v in history.values())
    assert metrics["best_epoch"] == 4 and metrics["epochs_run"] == 7
    assert task.batches_per_eval == [2, 2, 2, 2, 2]          # 4 per-epoch validations + the final one
    # patience counts epochs since the best, validated or not: 3.0 at 2, then 4.0 at 4 and 6 -> 4 epochs
    (tmp_path / "p").mkdir()
    _, metrics, _ = _fit(tmp_path / "p", TinyTask(values=[3.0, 4.0, 4.0, 4.0]), epochs=20, val_every=2, patience=3)
    assert metrics["best_epoch"] == 2 and metrics["epochs_run"] == 6 and metrics["stopped_early"] is True


def test_limit_val_batches_cuts_per_epoch_validation_only(tmp_path):
    task = CountingTask()
    _fit(tmp_path, task, epochs=2, limit_val_batches=1)
    assert task.batches_per_eval == [1, 1, 2]                # the final evaluation reads the whole split


def test_metrics_keep_the_best_epochs_training_figures_and_final_losses(tmp_path):
    task = TinyTask(values=[3.0, 2.0, 2.5])
    _, metrics, history = _fit(tmp_path, task, epochs=3)
    assert metrics["best_epoch"] == 2
    assert metrics["train_loss"] == history["train_loss"][1]     # the seeds' metrics.json: the best epoch's
    assert metrics["valid_loss"] == 2.5     # the final evaluation of the best weights (scripted: last value)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_peak_gpu_memory_per_epoch_on_cuda(tmp_path):
    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    train = make_loader(_data(), batch_size=8, train=True, seed=0, collate_fn=None)
    valid = make_loader(_data(16), batch_size=8, train=False, seed=0, collate_fn=None)
    metrics = fit(model, TinyTask(), train, valid, TrainConfig(epochs=2, fps_min_time_s=0.01), str(tmp_path),
                  torch.device("cuda"))
    history = json.loads((tmp_path / "history.json").read_text())
    assert len(history["gpu_mem_gb"]) == 2 and all(v > 0 for v in history["gpu_mem_gb"])
    assert metrics["peak_gpu_mem_gb"] == max(history["gpu_mem_gb"])


def test_results_csv_has_one_row_per_epoch_and_the_history_keys_as_columns(tmp_path):
    import csv

    _, _, history = _fit(tmp_path, TinyTask(values=[3.0, 2.0, 2.5, 2.5]), epochs=4, val_every=2)
    with open(tmp_path / "results.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    assert rows[0] == list(history)                                     # ultralytics' results.csv, our keys
    assert len(rows) == 1 + 4
    column = {k: [r[i] for r in rows[1:]] for i, k in enumerate(rows[0])}
    assert column["valid_loss"] == ["", "3.0", "", "2.0"]               # not validated: an empty cell
    assert [float(v) for v in column["train_loss"]] == history["train_loss"]


def test_tensorboard_event_file_holds_the_epoch_scalars_and_step_scalars(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, _, history = _fit(tmp_path, TinyTask(), epochs=3, tensorboard=True, tensorboard_every=2)
    (event_file,) = tmp_path.glob("events.out.tfevents.*")
    events = EventAccumulator(str(event_file))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train_loss", "valid_loss", "lr", "step/train_loss", "step/lr"} <= tags
    for key in ("train_loss", "valid_loss", "lr"):
        got = events.Scalars(key)
        assert [e.step for e in got] == [1, 2, 3]
        assert [e.value for e in got] == pytest.approx(history[key], rel=1e-6)
    # 4 steps per epoch (32 samples, batch 8): steps 2, 4, ..., 12
    assert [e.step for e in events.Scalars("step/train_loss")] == [2, 4, 6, 8, 10, 12]
    (tmp_path / "off").mkdir()
    _fit(tmp_path / "off", TinyTask(), epochs=1)
    assert not list((tmp_path / "off").glob("events.out.tfevents.*"))


def _host_reads_during_fit(tmp_path, n_train, monkeypatch, **cfg):
    """How many times fit() reads a tensor's value on the host (item, bool, float, int, tolist)."""
    tmp_path.mkdir()
    count = {"n": 0}
    for name in ("item", "__bool__", "__float__", "__int__", "tolist"):
        original = getattr(torch.Tensor, name)

        def counted(self, *a, _original=original, **k):
            count["n"] += 1
            return _original(self, *a, **k)
        monkeypatch.setattr(torch.Tensor, name, counted)
    torch.manual_seed(0)
    train = make_loader(_data(n_train), batch_size=8, train=True, seed=0, collate_fn=None)
    valid = make_loader(_data(16), batch_size=8, train=False, seed=0, collate_fn=None)
    config = TrainConfig(**{"epochs": 1, "head_lr": 0.05, "fps_min_time_s": 0.0, "fps_batch_size": 2, **cfg})
    fit(nn.Linear(4, 1), TinyTask(), train, valid, config, str(tmp_path), torch.device("cpu"))
    monkeypatch.undo()
    return count["n"]


@pytest.mark.parametrize("cfg", [{}, {"clip_grad": 1.0, "grad_accum": 2}])
def test_a_training_step_reads_nothing_back_from_the_device(cfg, tmp_path, monkeypatch):
    """The non-finite guard and the loss bookkeeping stay on the device (src/training/guard.py): 4 or 12
    training steps make the same number of host reads (the per-epoch ones), so a step makes none."""
    short = _host_reads_during_fit(tmp_path / "a", 32, monkeypatch, **cfg)
    long = _host_reads_during_fit(tmp_path / "b", 96, monkeypatch, **cfg)
    assert long == short


def test_a_skipped_step_leaves_the_weights_and_the_optimizer_as_they_were(tmp_path):
    """A non-finite loss: the fused optimizer's step does not apply (found_inf on the device), so the
    weights are exactly those of the last finite step, and the epoch's loss counts finite steps only."""
    from src.training.guard import StepGuard, optimizer_step

    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    opt = torch.optim.AdamW(model.parameters(), 0.1, fused=True)
    guard = StepGuard(torch.device("cpu"), max_bad_steps=2, distributed=False)
    x = torch.randn(8, 4)
    for scale in (1.0, float("nan")):
        loss = model(x).pow(2).mean() * scale
        loss.backward()
        guard.add(loss, 8)
        before = [p.detach().clone() for p in model.parameters()]
        optimizer_step(opt, guard.found_inf(nn.utils.get_total_norm([p.grad for p in model.parameters()])))
        opt.zero_grad()
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert int(opt.state[model.weight]["step"]) == 1
    assert int(guard.samples) == 8 and int(guard.bad_losses) == 1 and torch.isfinite(guard.loss_sum)
    guard.check(1, 2)                   # one in a row: under max_bad_steps
    loss = model(x).sum() * float("inf")
    loss.backward()
    guard.add(loss, 8)
    guard.found_inf(nn.utils.get_total_norm([p.grad for p in model.parameters()]))
    with pytest.raises(TrainingError, match="2 non-finite losses in a row"):
        guard.check(1, 3)
