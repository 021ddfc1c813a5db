"""The one training loop every script calls: :func:`fit`.

A *task* plugin supplies what differs between scripts (:class:`src.training.task.Task`); the loop owns the rest:
AMP, gradient accumulation and clipping, the non-finite-loss guard, parameter groups, schedules,
early stopping, atomic checkpoints, resume, seeding, DDP, progress and the run directory's files.
"""
from __future__ import annotations

import errno
import itertools
import logging
import math
import os
import random
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from src.errors import DataError, TrainingError
from src.training import distributed as D
from src.training.evaluate import evaluate, gathered_warnings, to_device
from src.training.guard import StepGuard, optimizer_step
from src.training.board import Board
from src.training.checkpoint import (FORMAT_VERSION, atomic_csv_dump, atomic_json_dump, atomic_torch_save,
                                     capture_rng_state, load_checkpoint, restore_rng_state, unwrap_model)
from src.training.optim import build_scheduler, param_groups
from src.training.perf import count_params, measure_speed, size_mb
from src.training.plots import plot_history
from src.training.task import Task, skipped, usable

log = logging.getLogger("src")


@dataclass
class TrainConfig:
    epochs: int = 30
    base_lr: float = 5e-5
    head_lr: float = 5e-4
    weight_decay: float = 1e-2
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    scheduler: str = "cosine"
    scheduler_tmax: int | None = None
    warmup_epochs: float = 0.0
    pct_start: float = 0.3
    patience: int = 10
    grad_accum: int = 1
    clip_grad: float | None = None
    max_bad_steps: int = 10
    check_every: int = 50            # optimizer steps between the host's looks at the guard (StepGuard)
    amp: bool | None = None
    amp_dtype: str = "fp16"
    compile: bool = False
    channels_last: bool = False
    sync_bn: bool = False            # SyncBatchNorm across DDP ranks (CUDA only)
    seed: int = 42
    deterministic: bool = False
    show_plot: bool = False
    ema_decay: float | None = None    # weights EMA for evaluation and checkpoints (timm ModelEmaV3)
    fps_batch_size: int = 16
    fps_min_time_s: float = 1.0
    # per-epoch validation on the first N batches (int) or fraction (float <= 1) of the loader
    # (Lightning's limit_val_batches); the final metrics always use the whole split
    limit_val_batches: float | int | None = None
    # parameter-name prefix -> its own learning rate (param_groups), e.g. a pretrained text model
    prefix_lrs: dict = field(default_factory=dict)
    tensorboard: bool = False         # event files in the run directory (src.training.board)
    tensorboard_every: int = 50       # optimizer steps between step scalars
    # validate every N epochs (and always after the last one): autoregressive OCR decoding of a real
    # validation set can take longer than the epoch's training
    val_every: int = 1
    extra: dict = field(default_factory=dict)


def build_train_config(args, **overrides) -> TrainConfig:
    """TrainConfig from the shared CLI flags (``src.cli.add_training_args``)."""
    cfg = TrainConfig(epochs=args.epochs, base_lr=args.base_lr, head_lr=args.head_lr,
                      weight_decay=args.weight_decay, scheduler=args.scheduler,
                      scheduler_tmax=args.scheduler_tmax, warmup_epochs=args.warmup_epochs,
                      patience=args.patience, grad_accum=max(1, args.grad_accum), clip_grad=args.clip_grad,
                      max_bad_steps=args.max_bad_steps, amp=args.amp, amp_dtype=args.amp_dtype,
                      compile=args.compile, channels_last=args.channels_last, sync_bn=getattr(args, "sync_bn", False),
                      seed=args.seed,
                      deterministic=args.deterministic, show_plot=args.plot,
                      ema_decay=getattr(args, "ema_decay", None), val_every=max(1, getattr(args, "val_every", 1)),
                      limit_val_batches=getattr(args, "limit_val_batches", None),
                      tensorboard=getattr(args, "tensorboard", False),
                      tensorboard_every=getattr(args, "tensorboard_every", 50))
    for k, v in overrides.items():
        setattr(cfg, k, v)
    return cfg


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def set_determinism(deterministic: bool) -> None:
    torch.backends.cudnn.benchmark = not deterministic
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True


def autocast_factory(device: torch.device, amp: bool | None, amp_dtype: str):
    """(context factory, dtype or None, GradScaler or None). AMP defaults to on for CUDA only."""
    use = amp if amp is not None else device.type == "cuda"
    if not use:
        return (lambda: nullcontext()), None, None
    dtype = torch.bfloat16 if (amp_dtype == "bf16" or device.type != "cuda") else torch.float16
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
    return (lambda: torch.autocast(device.type, dtype=dtype)), dtype, scaler


class EarlyStopping:
    """Strict improvement of the monitored metric; ``patience <= 0`` never stops."""

    def __init__(self, patience: int, mode: str) -> None:
        self.patience, self.mode = patience, mode
        self.best: float | None = None
        self.best_epoch = 0
        self.bad_epochs = 0

    def improved(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        return self.best is None or (value > self.best if self.mode == "max" else value < self.best)

    def update(self, value: float, epoch: int) -> bool:
        """Record ``value`` for ``epoch`` (1-based); True when it is a new best."""
        if self.improved(value):
            self.best, self.best_epoch, self.bad_epochs = value, epoch, 0
            return True
        # epochs since the best, not validations: patience means the same under --val-every N
        self.bad_epochs = epoch - self.best_epoch
        return False

    @property
    def should_stop(self) -> bool:
        return self.patience > 0 and self.bad_epochs >= self.patience

    def state_dict(self) -> dict:
        return {"best": self.best, "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.best_epoch, self.bad_epochs = state["best"], state["best_epoch"], state["bad_epochs"]



class TrainState:
    """Everything ``last.pt`` holds, saved and restored by one pair of methods (a resumed run continues
    exactly where the killed one stopped): the model, optimizer, schedule, AMP scaler, weights EMA,
    early stopping, the task's own state, history, epoch, training time, RNG states and data warnings."""

    def __init__(self, model: nn.Module, task: Task, optimizer, scheduler, scaler, ema, stopper: EarlyStopping) -> None:
        self.model, self.task, self.optimizer, self.scheduler = model, task, optimizer, scheduler
        self.scaler, self.ema, self.stopper = scaler, ema, stopper
        self.history: dict[str, list] = {}
        self.board: Board | None = None    # --tensorboard (rank 0): not part of last.pt
        self.epoch, self.train_time = 0, 0.0

    def _parts(self) -> dict[str, Any]:
        """The stateful objects by their ``last.pt`` key (None where the run has none)."""
        return {"model": unwrap_model(self.model), "optimizer": self.optimizer, "scheduler": self.scheduler,
                "scaler": self.scaler, "early_stopping": self.stopper,
                "ema": self.ema.module if self.ema is not None else None, "task_state": self.task}

    def save(self, path: str, args_record: dict | None) -> None:
        parts = {k: (obj.state_dict() if obj is not None else None) for k, obj in self._parts().items()}
        atomic_torch_save({"format_version": FORMAT_VERSION, **parts, "epoch": self.epoch, "history": self.history,
                           "train_time_s": self.train_time, "rng": capture_rng_state(),
                           "data_warnings": self.task.warnings.state(), "args": args_record or {},
                           "model_config": self.task.model_config, "task": self.task.name}, path)

    def load(self, path: str) -> None:
        ckpt = load_checkpoint(path)
        saved_steps = (ckpt.get("scheduler") or {}).get("total_steps")
        new_steps = getattr(self.scheduler, "total_steps", None)
        if saved_steps is not None and new_steps is not None and saved_steps != new_steps:
            # OneCycleLR: its warm-up and annealing were laid out for the original length
            raise DataError(f"{path}: this run's one-cycle schedule has {saved_steps} optimizer steps; the resumed "
                            f"run would need {new_steps} (another number of epochs or steps per epoch). A one-cycle "
                            f"schedule cannot be stretched: start a new run for a longer one", param="epochs")
        for key, obj in self._parts().items():
            if obj is not None and ckpt.get(key) is not None:
                obj.load_state_dict(ckpt[key])
        self.history, self.epoch, self.train_time = ckpt["history"], ckpt["epoch"], ckpt.get("train_time_s", 0.0)
        self.task.warnings.load_state(ckpt.get("data_warnings", {}))
        restore_rng_state(ckpt["rng"])


def fit(model: nn.Module, task: Task, train_loader: DataLoader, valid_loader: DataLoader, cfg: TrainConfig,
        run_dir: str, device: torch.device, dist: D.DistInfo = D.DistInfo(),
        test_loaders: Mapping[str, DataLoader] | None = None, resume_from: str | None = None,
        args_record: dict | None = None) -> dict[str, Any]:
    """Train ``model`` on ``task`` and write the run directory. Returns ``metrics.json``'s content.

    ``run_dir`` must exist (:func:`src.training.run.start_run` makes it); only rank 0 writes.
    ``resume_from`` is a ``last.pt`` to continue from (same run dir). ``test_loaders`` are held-out
    splits evaluated once at the end with the best weights, reported as ``<name>_<metric>``.
    """
    set_determinism(cfg.deterministic)
    seed_everything(cfg.seed)
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    if cfg.sync_bn and dist.enabled:
        if device.type != "cuda":
            raise DataError("SyncBatchNorm works on CUDA devices only; on CPUs every rank validates rank 0's "
                            "BatchNorm statistics without it", param="sync_bn")
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)     # same parameters and state-dict keys
    autocast, amp_dtype, scaler = autocast_factory(device, cfg.amp, cfg.amp_dtype)
    state = _new_state(model, task, len(train_loader), cfg, scaler)
    if resume_from:
        state.load(resume_from)
        log.info("resumed from %s at epoch %d (best %s = %s at epoch %d)", resume_from, state.epoch,
                 task.monitor, state.stopper.best, state.stopper.best_epoch)
    train_model: nn.Module = model
    if dist.enabled:
        train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile:
        train_model = torch.compile(train_model)
    eval_model = state.ema.module if state.ema is not None else (torch.compile(model) if cfg.compile else model)
    stopped_early = state.stopper.should_stop
    state.board = Board(run_dir) if cfg.tensorboard and dist.is_main else None
    try:
        for epoch in range(state.epoch + 1, cfg.epochs + 1):
            if stopped_early:
                break
            stopped_early = _fit_epoch(state, epoch, train_model, eval_model, train_loader, valid_loader, cfg,
                                       run_dir, device, dist, autocast, args_record)
    finally:
        if state.board is not None:
            state.board.close()
    D.barrier()
    return _finish(model, task, valid_loader, dict(test_loaders or {}), cfg, run_dir, device, dist, state,
                   stopped_early, autocast, amp_dtype)


def _new_state(model: nn.Module, task: Task, batches: int, cfg: TrainConfig, scaler) -> TrainState:
    # fused: one kernel for all parameters, and a skipped step (the guard's found_inf) stays on the device
    device_type = next(model.parameters()).device.type
    optimizer = torch.optim.AdamW(param_groups(model, cfg.base_lr, cfg.head_lr, cfg.weight_decay, cfg.prefix_lrs),
                                  betas=cfg.betas, eps=cfg.eps, fused=device_type in ("cpu", "cuda") or None)
    steps_per_epoch = max(1, math.ceil(batches / cfg.grad_accum))
    scheduler = build_scheduler(optimizer, cfg.scheduler, steps_per_epoch * cfg.epochs, steps_per_epoch,
                                cfg.scheduler_tmax, cfg.warmup_epochs, cfg.pct_start)
    # an exponential moving average of the weights (timm's ModelEmaV3, with warm-up so short runs
    # average only recent steps) is what gets evaluated and saved: detectors trained from scratch
    # swing from epoch to epoch, their average does not (YOLOv5/v8 evaluate an EMA too)
    ema = None
    if cfg.ema_decay:
        from timm.utils import ModelEmaV3
        ema = ModelEmaV3(model, decay=cfg.ema_decay, use_warmup=True)
    return TrainState(model, task, optimizer, scheduler, scaler, ema, EarlyStopping(cfg.patience, task.mode))


def _fit_epoch(state: TrainState, epoch: int, train_model, eval_model, train_loader, valid_loader, cfg, run_dir,
               device, dist, autocast, args_record) -> bool:
    """Train and validate one epoch, record it, write the checkpoints; True when early stopping says stop."""
    task, stopper = state.task, state.stopper
    # every epoch starts from RNG states that depend only on (seed, epoch, rank): a resumed run
    # shuffles, augments and drops out exactly like an uninterrupted one
    seed_everything(cfg.seed + 1000 * epoch + dist.rank)
    # a batch_sampler (OCR buckets, refdet episodes) is where the epoch matters when there is one:
    # the loader's .sampler is then a plain SequentialSampler and every epoch would replay epoch 0
    for sampler in (train_loader.sampler, train_loader.batch_sampler):
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
    t0 = time.perf_counter()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    stats = _train_one_epoch(train_model, task, train_loader, state, autocast, cfg, device, dist, epoch)
    # every rank validates the model rank 0 saves: the same parameters, and rank 0's BatchNorm statistics
    D.broadcast_buffers(state.model)
    if state.ema is not None:
        D.broadcast_buffers(state.ema.module)
    validate = epoch % cfg.val_every == 0 or epoch == cfg.epochs
    valid = evaluate(eval_model, task, limit_batches(valid_loader, cfg.limit_val_batches), device, "valid",
                     autocast) if validate else {}
    epoch_time = time.perf_counter() - t0
    state.train_time += epoch_time
    row = {"train_loss": stats["loss"], **{f"valid_{k}": v for k, v in valid.items()},
           "lr": max(g["lr"] for g in state.optimizer.param_groups), "epoch_time_s": epoch_time,
           "data_time_s": stats["data_time"], "samples_per_s": stats["samples_per_s"], "bad_steps": stats["bad_steps"]}
    if device.type == "cuda":    # the seeds' monitoring checklists watch it
        row["gpu_mem_gb"] = torch.cuda.max_memory_allocated(device) / 1e9
    row.update(task.epoch_stats())
    if validate and task.monitor not in row:
        raise TrainingError(f"the monitored metric {task.monitor!r} is not among this task's epoch figures "
                            f"({', '.join(k for k in row if k.startswith(('valid_', 'train_')))})")
    _append_row(state.history, row, epoch)
    state.epoch = epoch
    is_best = validate and stopper.update(row[task.monitor], epoch)
    if dist.is_main:
        with _disk_full_explained(run_dir, epoch):
            if is_best:
                atomic_torch_save(_best_payload(eval_model if state.ema is not None else state.model, task, epoch,
                                                row[task.monitor], args_record), os.path.join(run_dir, "best_model.pt"))
            state.save(os.path.join(run_dir, "last.pt"), args_record)
            atomic_json_dump(state.history, os.path.join(run_dir, "history.json"))
            atomic_csv_dump(state.history, os.path.join(run_dir, "results.csv"))
        if state.board is not None:
            state.board.epoch(epoch, row, task.sample_figure("valid", f"validation, epoch {epoch}") if validate
                              else None)
    metrics_txt = (" ".join(f"{k}={v:.4f}" for k, v in row.items() if k.startswith("valid_")) if validate
                   else f"(validation every {cfg.val_every} epochs)")
    log.info("epoch %d/%d train_loss=%.4f %s lr=%.2e time=%.1fs data=%.1fs %.1f samples/s%s%s",
             epoch, cfg.epochs, stats["loss"], metrics_txt, row["lr"], epoch_time, stats["data_time"],
             stats["samples_per_s"], f" bad_steps={stats['bad_steps']}" if stats["bad_steps"] else "",
             " *best*" if is_best else "")
    if stopper.should_stop:
        log.info("early stopping: %s did not improve for %d epochs (best %.4f at epoch %d)",
                 task.monitor, cfg.patience, stopper.best, stopper.best_epoch)
    return stopper.should_stop


def _append_row(history: dict[str, list], row: dict[str, Any], epoch: int) -> None:
    """Add one epoch to ``history``, every list ``epoch`` long: a figure an epoch did not produce
    (no validation under --val-every) is ``None`` (``null`` in history.json)."""
    for k in [*history, *(k for k in row if k not in history)]:
        column = history.setdefault(k, [])
        column.extend([None] * (epoch - 1 - len(column)))
        column.append(row.get(k))


@contextmanager
def _disk_full_explained(run_dir: str, epoch: int):
    """A full disk while saving: the atomic writes left every file as it was, so say which checkpoint
    is the last good one instead of an ``OSError`` traceback."""
    try:
        yield
    except OSError as exc:
        if exc.errno != errno.ENOSPC:
            raise
        last = os.path.join(run_dir, "last.pt")
        good = f"{last} (epoch {epoch - 1})" if epoch > 1 and os.path.isfile(last) else "none yet"
        raise TrainingError(f"disk full while saving epoch {epoch} in {run_dir}; nothing was overwritten. Last good "
                            f"checkpoint: {good}; free some space and resume the run") from None


def _best_payload(model, task, epoch, value, args_record) -> dict:
    return {"format_version": FORMAT_VERSION, "model": unwrap_model(model).state_dict(), "epoch": epoch,
            "monitor": task.monitor, "metric": value, "task": task.name, "model_config": task.model_config,
            "args": args_record or {}}


def _train_one_epoch(model, task: Task, loader, state: TrainState, autocast, cfg, device, dist, epoch):
    """One epoch of training steps with no host-device sync per step: losses, the non-finite guard and
    the skip decision stay on the device (:class:`~src.training.guard.StepGuard`); the host looks every
    ``cfg.check_every`` optimizer steps, at TensorBoard's steps and at the end."""
    model.train()
    optimizer, scheduler, scaler = state.optimizer, state.scheduler, state.scaler
    guard = StepGuard(device, cfg.max_bad_steps, dist.enabled, cfg.check_every)
    data_time = 0.0
    non_blocking = device.type == "cuda"
    bar = tqdm(total=len(loader), desc=f"epoch {epoch}/{cfg.epochs}", disable=None if dist.is_main else True,
               leave=False, dynamic_ncols=True)
    start = t_fetch = time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    micro, accumulated, substitute = 0, False, None
    for i, batch in enumerate(loader):
        data_time += time.perf_counter() - t_fetch
        task.warnings.add_many(skipped(batch))
        last_micro = (micro + 1 == cfg.grad_accum) or (i + 1 == len(loader))
        sync_ctx = model.no_sync() if (dist.enabled and not last_micro and hasattr(model, "no_sync")) else nullcontext()
        with sync_ctx:
            loss = None
            if usable(batch):     # a batch whose samples were all unreadable has nothing to learn from
                batch = substitute = to_device(batch, device, non_blocking)
                with autocast():
                    loss, n = task.training_step(model, batch)
                guard.add(loss, n)
            elif dist.enabled:
                # every rank must run backward, or DDP's all-reduce waits forever: the last usable batch,
                # with no weight (its gradients are zero)
                if substitute is None:
                    raise TrainingError(f"rank {dist.rank}: epoch {epoch} starts with a batch whose every sample "
                                        f"was unreadable (see the data warnings); fix or remove those files")
                with autocast():
                    loss = task.training_step(model, substitute)[0] * 0.0
            if loss is not None:
                scaled = loss / cfg.grad_accum
                (scaler.scale(scaled) if scaler is not None else scaled).backward()
                accumulated = True
        micro += 1
        if last_micro:
            if accumulated:
                _optimizer_step(model, optimizer, scaler, cfg.clip_grad, guard)
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            if state.ema is not None:    # the scheduler's step count restarts with it on --resume
                state.ema.update(state.model, step=scheduler.last_epoch)
            if state.board is not None and loss is not None and scheduler.last_epoch % cfg.tensorboard_every == 0:
                state.board.step(scheduler.last_epoch, float(loss.detach()), optimizer.param_groups[-1]["lr"])
            if scheduler.last_epoch % cfg.check_every == 0:
                guard.check(epoch, i + 1)
                elapsed = time.perf_counter() - start
                bar.set_postfix(loss=f"{guard.mean_loss():.4f}", lr=f"{optimizer.param_groups[-1]['lr']:.2e}",
                                sps=f"{int(guard.samples) * dist.world_size / max(elapsed, 1e-9):.1f}")
            micro, accumulated = 0, False
        bar.update(1)
        t_fetch = time.perf_counter()
    try:
        guard.check(epoch, len(loader))
    finally:
        bar.close()
    elapsed = time.perf_counter() - start
    loss_total, n_total, bad_total = D.all_reduce_sum([float(guard.loss_sum), float(guard.samples),
                                                       float(guard.bad_losses)], device)
    return {"loss": loss_total / n_total if n_total else float("nan"), "samples": int(n_total),
            "samples_per_s": n_total / max(elapsed, 1e-9), "data_time": data_time, "bad_steps": int(bad_total)}


def _train_figures(history: dict[str, list], best_epoch: int) -> dict[str, Any]:
    """The training figures (``train_loss``, a task's ``train_acc``...) of the best epoch (the last one when
    no epoch improved), and the peak GPU memory of the run (CUDA): what the seeds' metrics.json shows."""
    n = len(history.get("train_loss", []))
    if not n:
        return {}
    at = (best_epoch or n) - 1
    out = {k: v[at] for k, v in history.items() if k.startswith("train_")}
    if history.get("gpu_mem_gb"):
        out["peak_gpu_mem_gb"] = max(v for v in history["gpu_mem_gb"] if v is not None)
    return out


def _optimizer_step(model: nn.Module, optimizer, scaler, clip_grad: float | None, guard: StepGuard) -> None:
    if scaler is not None:
        scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
    # the total norm is both the clipping's and the guard's: not finite = a non-finite gradient somewhere
    if clip_grad:
        norm = nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
    else:
        norm = nn.utils.get_total_norm([p.grad for p in model.parameters() if p.grad is not None])
    optimizer_step(optimizer, guard.found_inf(norm), scaler)


class _Limited:
    """The first ``n`` batches of a loader (iterable with a length)."""

    def __init__(self, loader, n: int) -> None:
        self.loader, self.n = loader, n

    def __iter__(self):
        return itertools.islice(iter(self.loader), self.n)

    def __len__(self) -> int:
        return self.n


def limit_batches(loader, limit: float | int | None):
    """``loader`` cut to ``limit`` batches (int) or to that fraction of its batches (float <= 1)."""
    if limit is None:
        return loader
    n = int(limit) if isinstance(limit, int) or limit > 1 else max(1, math.ceil(limit * len(loader)))
    return loader if n >= len(loader) else _Limited(loader, n)


def _finish(model, task: Task, valid_loader, test_loaders: dict, cfg, run_dir, device, dist, state: TrainState,
            stopped_early: bool, autocast, amp_dtype) -> dict[str, Any]:
    """Reload the best weights, re-evaluate, measure, write ``metrics.json`` and the plots."""
    best_path = os.path.join(run_dir, "best_model.pt")
    if os.path.isfile(best_path):
        model.load_state_dict(load_checkpoint(best_path)["model"])
    final = {}
    for name, loader in {"valid": valid_loader, **test_loaders}.items():
        final.update({f"{name}_{k}": v for k, v in evaluate(model, task, loader, device, name, autocast).items()})
    merged = gathered_warnings(task)
    if not dist.is_main:
        return {}
    total, trainable = count_params(model)
    # a task may time more than the bare forward (OCR: encode + autoregressive decoding)
    speed = measure_speed(task.speed_module(model), lambda b: task.example_input(b, device), device, amp_dtype,
                          cfg.fps_batch_size, cfg.fps_min_time_s)
    stopper = state.stopper
    metrics = {"model_name": task.model_config.get("model_name", task.name), "task": task.name,
               "num_params": total, "trainable_params": trainable, "size_mb": round(size_mb(model), 4),
               **{k: speed[k] for k in ("fps", "fps_batch_size")}, "fps_image_size": task.fps_image_size,
               "fps_device": speed["fps_device"], "fps_dtype": speed["fps_dtype"], "latency_ms": speed["latency_ms"],
               "best_epoch": stopper.best_epoch, "epochs_run": len(state.history.get("train_loss", [])),
               "stopped_early": stopped_early, "train_time_s": state.train_time,
               **final, **_train_figures(state.history, stopper.best_epoch),
               **task.summary(), "data_warnings": merged.counts(), "ckpt_path": "best_model.pt"}
    atomic_json_dump(metrics, os.path.join(run_dir, "metrics.json"))
    plot_history(state.history, os.path.join(run_dir, "training_plot.png"), task.monitor, show=cfg.show_plot)
    task.final_artifacts(model, run_dir, device)
    shown = {k: v for k, v in metrics.items() if k.startswith(("valid_", "test_"))}
    log.info("finished: best %s at epoch %d; %s; %.1f FPS (batch %d, %s, %s); %.1f ms latency; %s params; "
             "run dir %s", task.monitor, stopper.best_epoch,
             " ".join(f"{k}={v:.4f}" for k, v in shown.items()), metrics["fps"], metrics["fps_batch_size"],
             metrics["fps_device"], metrics["fps_dtype"], metrics["latency_ms"], f"{total:,}", run_dir)
    if metrics["data_warnings"]:
        log.warning("data warnings (skipped inputs): %s", metrics["data_warnings"])
    return metrics
