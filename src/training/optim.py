"""Optimizer parameter groups and learning-rate schedules."""
from __future__ import annotations

import math

import torch
from torch import nn


def param_groups(model: nn.Module, base_lr: float, head_lr: float, weight_decay: float,
                 prefix_lrs: dict[str, float] | None = None) -> list[dict]:
    """AdamW groups: {pretrained, new, each of ``prefix_lrs``} x {decay, no decay}.

    Parameters under ``model.pretrained_prefixes`` (e.g. ``"backbone."``) are pretrained and get
    ``base_lr``; everything else (attention blocks, heads, fusion) gets ``head_lr``; a parameter under a
    key of ``prefix_lrs`` gets that key's lr instead (a part with its own rate: OVD's pretrained text
    model at ``--text-lr``). Biases and norm weights (every parameter with fewer than 2 dimensions) get
    no weight decay: decaying a BN scale towards 0 only fights the normalisation.
    """
    prefixes = tuple(getattr(model, "pretrained_prefixes", ()))
    own = dict(prefix_lrs or {})
    lrs = {"pretrained": base_lr, "new": head_lr, **own}
    groups: dict[tuple[str, bool], list] = {(part, dec): [] for part in lrs for dec in (True, False)}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        part = next((k for k in own if name.startswith(k)), None)
        if part is None:
            part = "pretrained" if prefixes and name.startswith(prefixes) else "new"
        groups[(part, p.ndim >= 2)].append(p)
    out = []
    for (part, decay), params in groups.items():
        if params:
            out.append({"params": params, "lr": lrs[part], "weight_decay": weight_decay if decay else 0.0,
                        "name": f"{part.rstrip('.')}_{'decay' if decay else 'no_decay'}"})
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
