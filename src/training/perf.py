"""Model size and speed figures for ``metrics.json``: parameters, fp32 size, FPS and latency.

FPS is measured the same way for every script so runs compare: eval mode, ``no_grad``, random
input of the task's example shape, warm-up first, CUDA synchronised around the timed region; the
device, dtype, batch size and input size are recorded next to the figure.
"""
from __future__ import annotations

import time
from contextlib import nullcontext
from typing import Callable

import torch
from torch import nn


def count_params(model: nn.Module) -> tuple[int, int]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return total, trainable


def size_mb(model: nn.Module) -> float:
    """Parameters + floating-point buffers (BN statistics) as fp32, in MiB (2**20 bytes)."""
    n = sum(p.numel() for p in model.parameters())
    n += sum(b.numel() for b in model.buffers() if b.is_floating_point())
    return n * 4 / 2 ** 20


def sync(device: torch.device) -> None:
    """Wait for queued CUDA work, so host timers measure it (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def time_forward(model: nn.Module, make_input: Callable[[int], object], batch_size: int, device: torch.device,
                 autocast_dtype: torch.dtype | None = None, min_time_s: float = 1.0, warmup: int = 2,
                 max_iters: int = 50) -> float:
    """Seconds per forward call at ``batch_size`` (median-free mean over at least ``min_time_s``)."""
    was_training = model.training
    model.eval()
    x = make_input(batch_size)
    ctx = (torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype is not None else nullcontext())
    with ctx:
        for _ in range(warmup):
            model(x) if not isinstance(x, dict) else model(**x)
        sync(device)
        iters, start = 0, time.perf_counter()
        while iters < max_iters:
            model(x) if not isinstance(x, dict) else model(**x)
            iters += 1
            if iters >= 3:
                sync(device)
                if time.perf_counter() - start >= min_time_s:
                    break
        sync(device)
        elapsed = time.perf_counter() - start
    model.train(was_training)
    return elapsed / iters


def measure_speed(model: nn.Module, make_input: Callable[[int], object], device: torch.device,
                  autocast_dtype: torch.dtype | None, fps_batch_size: int = 16, min_time_s: float = 1.0) -> dict:
    per_batch = time_forward(model, make_input, fps_batch_size, device, autocast_dtype, min_time_s)
    per_image = time_forward(model, make_input, 1, device, autocast_dtype, min_time_s / 2)
    return {"fps": fps_batch_size / per_batch, "fps_batch_size": fps_batch_size,
            "fps_device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
            "fps_dtype": str(autocast_dtype).replace("torch.", "") if autocast_dtype else "float32",
            "latency_ms": per_image * 1000.0}


def round_robin(fns: dict[str, Callable[[], object]], device: torch.device, min_reps: int, min_time_s: float,
                max_reps: int) -> dict[str, list[float]]:
    """Seconds of each call of each function, calling them in turn (a, b, c, a, b, c, ...) until each
    ran ``min_reps`` times and ``min_time_s`` passed (or ``max_reps``): a change in machine load
    hits every compared method alike (used by ``bench/``)."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    start = time.perf_counter()
    reps = 0
    while reps < max_reps and (reps < min_reps or time.perf_counter() - start < min_time_s):
        for key, fn in fns.items():
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            times[key].append(time.perf_counter() - t0)
        reps += 1
    return times
