"""How much does the shared loop (``src.training.loop.fit``) cost over a bare PyTorch loop?

Both loops train the same model (one ``create_classifier`` instance, deep-copied so each run starts
from identical weights) on the same in-memory random images, served by a ``DataLoader`` with
``num_workers=0`` and the project's ``collate_skip_bad``, in the same process. So data loading costs
almost nothing and the difference between the two is what ``fit`` adds per step: the task call, the
non-finite-loss guard (a host sync), loss bookkeeping, parameter groups, the LR scheduler, tqdm.

- bare loop: ``forward -> cross-entropy -> backward -> AdamW.step -> zero_grad``, nothing else;
  samples/s measured per epoch from the first ``next(loader)`` to the last step (CUDA synchronised).
- ``fit``: the ``samples_per_s`` it records in its history, which it measures over the training
  epoch only (validation runs on a 1-sample loader and is outside that timing; checkpoints and the
  final FPS measurement happen outside it too).

Each run trains ``--epochs`` epochs of ``--steps`` steps; the first epoch is warm-up and is left
out. The figure per loop is the median of the per-epoch samples/s over all measured epochs of all
rounds: the machine may be shared, and a median ignores the epochs that another process slowed
down. Runs alternate (bare, fit, fit, bare, ...) for ``--rounds`` rounds so that a slow drift of the
machine's speed hits both loops alike, after one untimed bare run that warms up the process
(allocator, oneDNN primitive caches). Target: fit/bare >= 0.95.

    python -m bench.loop_overhead                       # CPU, MobileNetV3_Small_BoT_Linear, 64 px
    python -m bench.loop_overhead --device cuda --image-size 224 --batch-size 64 --amp fp16
"""
from __future__ import annotations

import argparse
import copy
import json
import logging
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from bench.timing import alternating_rounds, median, ratio, verdict
from src.data.loading import collate_skip_bad, make_loader
from src.models.classifiers import MODELS, create_classifier
from src.tasks.classification import ClassificationTask  # noqa: E402
from src.training import distributed as D
from src.training.loop import TrainConfig, fit  # noqa: E402
from src.training.perf import sync

NUM_CLASSES = 10
LR, WEIGHT_DECAY = 1e-3, 1e-2


class RandomImages(Dataset):
    """``n`` random images held in memory, in the dict format the project's datasets return."""

    def __init__(self, n: int, image_size: int, num_classes: int, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.images = torch.randn(n, 3, image_size, image_size, generator=g)
        self.labels = torch.randint(0, num_classes, (n,), generator=g).tolist()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[i], "label": self.labels[i]}


def run_bare(model: nn.Module, dataset: Dataset, args, device: torch.device, amp_dtype,
             epochs: int) -> list[float]:
    """The minimal loop; returns samples/s of epochs 2..E."""
    torch.manual_seed(0)
    model.to(device).train()
    loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=True, num_workers=0,
                        collate_fn=collate_skip_bad)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None
    autocast = (lambda: torch.autocast(device.type, dtype=amp_dtype)) if amp_dtype else nullcontext
    rates = []
    for _ in range(epochs):
        sync(device)
        start = time.perf_counter()
        for batch in loader:
            x = batch["image"].to(device, non_blocking=True)
            y = batch["label"].to(device, non_blocking=True)
            with autocast():
                loss = F.cross_entropy(model(x), y)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        sync(device)
        rates.append(len(dataset) / (time.perf_counter() - start))
    return rates[1:]


def run_fit(model: nn.Module, dataset: Dataset, args, device: torch.device) -> list[float]:
    """``fit`` for E epochs; returns samples/s of epochs 2..E from its own history."""
    train_loader = make_loader(dataset, batch_size=args.batch_size, train=True, seed=0, num_workers=0)
    valid_loader = make_loader(Subset(dataset, [0]), batch_size=1, train=False, seed=0, num_workers=0)
    task = ClassificationTask([f"c{i}" for i in range(NUM_CLASSES)], args.image_size,
                              {"model": args.model, "num_classes": NUM_CLASSES})
    cfg = TrainConfig(epochs=args.epochs, base_lr=LR, head_lr=LR, weight_decay=WEIGHT_DECAY, patience=0,
                      amp=args.amp != "off", amp_dtype=args.amp if args.amp != "off" else "fp16",
                      seed=0, fps_batch_size=1, fps_min_time_s=0.01)
    with tempfile.TemporaryDirectory() as run_dir:
        fit(model, task, train_loader, valid_loader, cfg, run_dir, device)
        with open(Path(run_dir) / "history.json") as f:
            history = json.load(f)
    return history["samples_per_s"][1:]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog=f"python -m {__spec__.name}", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", choices=list(MODELS), default="MobileNetV3_Small_BoT_Linear")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=10, help="training steps per epoch")
    p.add_argument("--epochs", type=int, default=6, help="epochs per run; the first one is warm-up")
    p.add_argument("--rounds", type=int, default=4, help="alternating (bare, fit) rounds")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--amp", choices=["off", "fp16", "bf16"], default="off",
                   help="autocast dtype, the same for both loops (fp16 uses a GradScaler in both)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    args = p.parse_args(argv)
    if args.epochs < 2:
        p.error("--epochs must be >= 2 (the first epoch is warm-up)")
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.getLogger("src").setLevel(logging.WARNING)
    device = D.resolve_device(args.device)
    amp_dtype = {"off": None, "fp16": torch.float16, "bf16": torch.bfloat16}[args.amp]
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fit turns it on; the bare loop gets the same
    dataset = RandomImages(args.steps * args.batch_size, args.image_size, NUM_CLASSES)
    torch.manual_seed(0)
    template = create_classifier(args.model, NUM_CLASSES)

    run_bare(copy.deepcopy(template), dataset, args, device, amp_dtype, epochs=2)  # process warm-up, discarded
    bare: list[list[float]] = []    # per round: samples/s of each measured epoch
    fitted: list[list[float]] = []
    for r, which in alternating_rounds(("bare", "fit"), args.rounds):
        model = copy.deepcopy(template)  # identical initial weights for every run
        if which == "bare":
            bare.append(run_bare(model, dataset, args, device, amp_dtype, args.epochs))
        else:
            fitted.append(run_fit(model, dataset, args, device))
        rates = (bare if which == "bare" else fitted)[-1]
        print(f"round {r + 1}/{args.rounds} {which:4s}: median {median(rates):.1f} samples/s "
              f"(epochs: {', '.join(f'{v:.0f}' for v in rates)})", file=sys.stderr, flush=True)

    bare_med = median([v for run in bare for v in run])
    fit_med = median([v for run in fitted for v in run])
    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    dtype = "float32" if amp_dtype is None else f"autocast {str(amp_dtype).replace('torch.', '')}"
    n_epochs = args.rounds * (args.epochs - 1)
    print(f"\n# loop_overhead: torch {torch.__version__}; {args.rounds} alternating rounds, each run "
          f"{args.epochs} epochs x {args.steps} steps (first epoch warm-up); samples/s = median over the "
          f"{n_epochs} measured epochs of each loop\n")
    print("| model | image size | batch | device | dtype | threads | bare samples/s | fit samples/s | fit/bare |")
    print("|---|---|---|---|---|---|---|---|---|")
    print(f"| {args.model} | {args.image_size} | {args.batch_size} | {dev_name} | {dtype} | "
          f"{torch.get_num_threads()} | {bare_med:.1f} | {fit_med:.1f} | {ratio(fit_med, bare_med, 3, '')} |")
    per_round = ", ".join(ratio(median(f), median(b), 3, "") for b, f in zip(bare, fitted))
    print(f"\nper-round fit/bare (medians of each run): {per_round}")
    print(f"target fit/bare >= 0.95: {verdict(fit_med / bare_med, 0.95)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
