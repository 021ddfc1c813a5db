"""Optimizer parameter groups and learning-rate schedules."""
from __future__ import annotations

import math

import torch
from torch import nn


def param_groups(model: nn.Module, base_lr: float, head_lr: float, weight_decay: float) -> list[dict]:
    """Four AdamW groups: {pretrained, new} x {decay, no decay}.

    Parameters under ``model.pretrained_prefixes`` (e.g. ``"backbone."``) are pretrained and get
    ``base_lr``; everything else (attention blocks, heads, fusion) gets ``head_lr``. Biases and norm
    weights (every parameter with fewer than 2 dimensions) get no weight decay: decaying a BN scale
    towards 0 only fights the normalisation.
    """
    prefixes = tuple(getattr(model, "pretrained_prefixes", ()))
    groups = {(pre, dec): [] for pre in (True, False) for dec in (True, False)}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        groups[(name.startswith(prefixes) if prefixes else False, p.ndim >= 2)].append(p)
    out = []
    for (pretrained, decay), params in groups.items():
        if params:
            out.append({"params": params, "lr": base_lr if pretrained else head_lr,
                        "weight_decay": weight_decay if decay else 0.0,
                        "name": f"{'pretrained' if pretrained else 'new'}_{'decay' if decay else 'no_decay'}"})
    return out


def build_scheduler(optimizer: torch.optim.Optimizer, kind: str, total_steps: int, steps_per_epoch: int,
                    tmax_epochs: int | None = None, warmup_epochs: float = 0.0, pct_start: float = 0.3):
    """Per-optimizer-step schedule.

    - ``cosine``: linear warm-up, then cosine from each group's lr to 0 over ``tmax_epochs``
      (default: the whole run); past T_max the lr stays at 0 like ``CosineAnnealingLR``'s first half-period.
    - ``onecycle``: ``torch.optim.lr_scheduler.OneCycleLR`` with each group's lr as its peak.
    - ``none``: constant.
    """
    if kind == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=[g["lr"] for g in optimizer.param_groups], total_steps=max(1, total_steps),
            pct_start=pct_start)
    if kind == "none":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    warmup = int(round(warmup_epochs * steps_per_epoch))
    period = max(1, (tmax_epochs * steps_per_epoch if tmax_epochs else total_steps) - warmup)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        t = min(step - warmup, period) / period
        return 0.5 * (1.0 + math.cos(math.pi * t))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
