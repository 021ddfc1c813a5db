"""``train_yolov8n_refdet.py --profile N``: a time breakdown of N training steps by part (data, support
encoder, detector, fusion, head, loss, backward), like the seed's profiling script, and the support
cache's hit rate."""
from __future__ import annotations

import time
from collections import defaultdict
from contextlib import contextmanager

import torch

from src.losses.refdet import RefDetCriterion
from src.models.refdet import RefDetModel
from src.training.evaluate import to_device


@contextmanager
def _timed(totals: dict, key: str, device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    yield
    if device.type == "cuda":   # kernels are asynchronous: time them, not their launch
        torch.cuda.synchronize(device)
    totals[key] += time.perf_counter() - t0


def profile(model: RefDetModel, criterion: RefDetCriterion, loader, device: torch.device, steps: int,
            autocast) -> dict[str, float]:
    """Run ``steps`` training steps (forward + backward, no optimizer step) timing each part, like
    the seed's profiling script; print the table and the support-cache hit rate; return the totals."""
    model.to(device).train()
    criterion.to(device)
    totals: dict[str, float] = defaultdict(float)
    it, done = iter(loader), 0
    t_start = time.perf_counter()
    while done < steps:
        t0 = time.perf_counter()
        try:
            batch = next(it)
        except StopIteration:
            it = iter(loader)
            continue
        if "images" not in batch:
            continue
        batch = to_device(batch, device, non_blocking=True)
        totals["data"] += time.perf_counter() - t0
        with autocast():
            with _timed(totals, "support encoder", device):
                sup = model.encode_support(batch["support"], batch["support_keys"])
            with _timed(totals, "detector (backbone+neck)", device):
                feats = model.features(batch["images"])
            with _timed(totals, "fusion", device):
                fused = model.fuse(feats, sup, batch["query_video"])
            with _timed(totals, "head", device):
                out = model.predict(fused, sup, batch["query_video"])
            with _timed(totals, "loss (assigner + terms)", device):
                loss, _ = criterion(out, batch["boxes"], batch["box_mask"], batch["query_video"])
        with _timed(totals, "backward", device):
            loss.backward()
        model.zero_grad(set_to_none=True)
        done += 1
    wall = time.perf_counter() - t_start
    lines = [f"profile: {steps} steps on {device}, {wall:.2f} s wall ({1000 * wall / steps:.1f} ms/step)",
             f"{'part':<28}{'total s':>9}{'ms/step':>10}{'share':>8}"]
    for key, value in totals.items():
        lines.append(f"{key:<28}{value:>9.3f}{1000 * value / steps:>10.1f}{100 * value / wall:>7.1f}%")
    if model.support_cache is not None:
        c = model.support_cache
        rate = c.hits / max(1, c.hits + c.misses)
        lines.append(f"support cache: {c.hits} hits / {c.misses} misses = {100 * rate:.1f}% hit rate "
                     f"({len(c)} entries)")
    else:
        lines.append("support cache: off (no frozen support-encoder blocks or --support-cache-size-mb 0)")
    print("\n".join(lines))
    return dict(totals)
