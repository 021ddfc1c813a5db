"""Classification training images/s: ``train_ResNet18_Hybrid.py --model ResNet18`` vs timm's ``train.py``.

timm's ``train.py`` is not installable offline: it ships in neither timm's wheel nor its sdist (1.0.31)
and lives only in timm's GitHub repository, which the machines this bench was written on cannot reach.
The timm side here is therefore a **reconstruction** of ``train.py``'s training loop built from timm's
own library API, written after reading ``train.py`` at commit
``2aabaef039d918d453b58714ab84562609981112`` of huggingface/pytorch-image-models (the newest version
in the index that was read; it has ``create_scheduler_v2``, ``--grad-accum-steps`` and ``--lr-base``).
It is not train.py's text, and it is not train.py itself; what it keeps is train.py's behaviour on its
default path, with train.py's defaults for every flag it has (``python -m bench.peers_timm timm-train
--help``):

- ``timm.models.create_model`` (``--drop`` ...), ``resolve_data_config(vars(args), model=model)``;
- ``timm.data.create_dataset`` (ImageFolder layout, ``train``/``validation`` split folders) and
  ``create_loader`` with its training transform (``RandomResizedCropAndInterpolation`` scale 0.08-1,
  ratio 3/4-4/3, random bilinear/bicubic; hflip 0.5; colour jitter 0.4; uint8 ``ToNumpy``), the fast
  collate and the ``PrefetchLoader`` (normalisation in the main process), ``drop_last`` and persistent
  workers;
- the learning rate from ``--lr-base 0.1`` scaled linearly by batch / 256 (SGD), ``create_optimizer_v2``
  with ``optimizer_kwargs`` (SGD, Nesterov momentum 0.9, weight decay 2e-5), ``create_scheduler_v2`` with
  ``scheduler_kwargs`` (cosine, 5 warm-up epochs from 1e-5, stepped per epoch and ``step_update`` after
  every update), ``LabelSmoothingCrossEntropy(0.1)``;
- ``train_one_epoch``: gradient accumulation, ``loss.item()`` into an ``AverageMeter`` every step (a host
  sync per step), the update-time and data-time meters, a log line every ``--log-interval`` updates;
  then ``validate`` (top-1/top-5) after every epoch.

Left out (none inside the timed window): checkpoint saving and ``summary.csv``, mixup/CutMix, AugMix,
AMP, EMA, distributed training, torchscript/compile. ``--threads N`` is this bench's, the stand-in
for ``OMP_NUM_THREADS=N python train.py``.

The comparison. Both sides train the same generated 640x480 JPEG leaf photos (the demo generator's
leaves, ``bench.data_pipeline.make_photos``; a few unique photos copied to the asked count, so the
generation stays short: decoding cost is the same), written once as an ImageFolder tree
(``train/<class>/``, ``validation/<class>/``) plus ``metadata.csv`` + ``label2id.json`` over the same
files; the same architecture (timm ``resnet18`` + dropout 0.1 + a linear head: our ``--model ResNet18``
is timm's ``resnet18`` features + mean pool + dropout + Linear; parameter counts asserted equal), image
size, batch size, DataLoader workers and threads. Augmentation is as close as the two pipelines allow:
ours runs with ``--hflip 0.5 --vflip 0 --rotation 0 --color-jitter 0.4 --label-smoothing 0.1``
(timm's flip, jitter and smoothing values); what still differs is the geometry: timm decodes the full
JPEG and random-resized-crops it, ours decodes at reduced size (``fast_decode``), pads to square and
resizes; and the optimizer: ours AdamW, timm SGD.

Each side runs as its own subprocess, whole runs alternating (a, b, b, a, ...:
:func:`bench.timing.alternating_rounds`). Every training step's time when its batch is in hand and when
its optimizer step is done is recorded (ours: by wrapping ``ClassificationTask.training_step`` and the
engine's ``_optimizer_step`` in the child process, which changes nothing they do). Images/s of a run =
images of all steps but the last / time from the first step's batch to the last step's, per epoch
(start-up, the first batch, validation and saving excluded). The table gives each side's median run and
the spread (max - min) / min of its runs; the ratio ours / timm counts only when both spreads are under
25% (:func:`bench.timing.checked_ratio`). The profile columns split a step: "step" = batch in hand to
optimizer step done (forward, loss, backward, step), "between" = the rest (waiting for the next batch,
bookkeeping).

    python -m bench.peers_timm            # 512 images, batch 32, 2 workers, 1 thread, 3 runs per side
    python -m bench.peers_timm --quick    # 16 images, batch 8, 1 run per side: checks that it runs
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import OrderedDict
from contextlib import suppress

import torch

from bench.timing import alternating_rounds, checked_ratio, command_line, emit, spread, spread_fraction

TRAIN_PY_COMMIT = "2aabaef039d918d453b58714ab84562609981112"
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUR_SCRIPT = "train_ResNet18_Hybrid.py"
# ours with timm train.py's flip, jitter and smoothing values (its defaults: vflip 0.5, rotation 15, jitter 0.2)
OUR_AUG = ["--hflip", "0.5", "--vflip", "0", "--rotation", "0", "--color-jitter", "0.4", "--label-smoothing", "0.1"]
DROPOUT = 0.1   # our classifiers' default dropout before the head; timm gets the same as --drop
log = logging.getLogger("train")


# ============================================================================= the timm side

def timm_parser() -> argparse.ArgumentParser:
    """train.py's flags that its default path reads, with train.py's defaults, plus this bench's two."""
    p = argparse.ArgumentParser(prog="python -m bench.peers_timm timm-train",
                                description="timm train.py's training loop, rebuilt from timm's library "
                                            f"(train.py read at {TRAIN_PY_COMMIT[:12]})",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("data_dir")
    p.add_argument("--dataset", default="")
    p.add_argument("--train-split", default="train")
    p.add_argument("--val-split", default="validation")
    p.add_argument("--class-map", default="")
    p.add_argument("--model", default="resnet50")
    p.add_argument("--pretrained", action="store_true")
    p.add_argument("--num-classes", type=int, default=None)
    p.add_argument("--gp", default=None)
    p.add_argument("--img-size", type=int, default=None)
    p.add_argument("--in-chans", type=int, default=None)
    p.add_argument("--input-size", type=int, nargs=3, default=None)
    p.add_argument("--crop-pct", type=float, default=None)
    p.add_argument("--mean", type=float, nargs="+", default=None)
    p.add_argument("--std", type=float, nargs="+", default=None)
    p.add_argument("--interpolation", default="")
    p.add_argument("-b", "--batch-size", type=int, default=128)
    p.add_argument("-vb", "--validation-batch-size", type=int, default=None)
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--grad-accum-steps", type=int, default=1)
    p.add_argument("--opt", default="sgd")
    p.add_argument("--opt-eps", type=float, default=None)
    p.add_argument("--opt-betas", type=float, nargs="+", default=None)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight-decay", type=float, default=2e-5)
    p.add_argument("--clip-grad", type=float, default=None)
    p.add_argument("--clip-mode", default="norm")
    p.add_argument("--layer-decay", type=float, default=None)
    p.add_argument("--sched", default="cosine")
    p.add_argument("--sched-on-updates", action="store_true")
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--lr-base", type=float, default=0.1)
    p.add_argument("--lr-base-size", type=int, default=256)
    p.add_argument("--lr-base-scale", default="")
    p.add_argument("--lr-noise", type=float, nargs="+", default=None)
    p.add_argument("--lr-noise-pct", type=float, default=0.67)
    p.add_argument("--lr-noise-std", type=float, default=1.0)
    p.add_argument("--lr-cycle-mul", type=float, default=1.0)
    p.add_argument("--lr-cycle-decay", type=float, default=0.5)
    p.add_argument("--lr-cycle-limit", type=int, default=1)
    p.add_argument("--lr-k-decay", type=float, default=1.0)
    p.add_argument("--warmup-lr", type=float, default=1e-5)
    p.add_argument("--min-lr", type=float, default=0.0)
    p.add_argument("--epochs", type=int, default=300)
    p.add_argument("--decay-milestones", type=int, nargs="+", default=[90, 180, 270])
    p.add_argument("--decay-epochs", type=float, default=90)
    p.add_argument("--warmup-epochs", type=int, default=5)
    p.add_argument("--warmup-prefix", action="store_true")
    p.add_argument("--cooldown-epochs", type=int, default=0)
    p.add_argument("--patience-epochs", type=int, default=10)
    p.add_argument("--decay-rate", type=float, default=0.1)
    p.add_argument("--no-aug", action="store_true")
    p.add_argument("--scale", type=float, nargs="+", default=[0.08, 1.0])
    p.add_argument("--ratio", type=float, nargs="+", default=[3. / 4., 4. / 3.])
    p.add_argument("--hflip", type=float, default=0.5)
    p.add_argument("--vflip", type=float, default=0.0)
    p.add_argument("--color-jitter", type=float, default=0.4)
    p.add_argument("--aa", default=None)
    p.add_argument("--reprob", type=float, default=0.0)
    p.add_argument("--remode", default="pixel")
    p.add_argument("--recount", type=int, default=1)
    p.add_argument("--smoothing", type=float, default=0.1)
    p.add_argument("--train-interpolation", default="random")
    p.add_argument("--drop", type=float, default=0.0)
    p.add_argument("--drop-path", type=float, default=None)
    p.add_argument("--drop-block", type=float, default=None)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--worker-seeding", default="all")
    p.add_argument("--log-interval", type=int, default=50)
    p.add_argument("-j", "--workers", type=int, default=4)
    p.add_argument("--pin-mem", action="store_true")
    p.add_argument("--no-prefetcher", action="store_true")
    p.add_argument("--eval-metric", default="top1")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    # this bench's, not train.py's
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (as OMP_NUM_THREADS)")
    p.add_argument("--steps-json", default=None, help="write the step timestamps and figures here")
    return p


def timm_train(argv: list[str]) -> int:
    """train.py's ``main`` on its default path: set-up, then per epoch train, validate, step the schedule."""
    from timm import utils
    from timm.data import create_dataset, create_loader, resolve_data_config
    from timm.loss import LabelSmoothingCrossEntropy
    from timm.models import create_model
    from timm.optim import create_optimizer_v2, optimizer_kwargs
    from timm.scheduler import create_scheduler_v2, scheduler_kwargs

    args = timm_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    args.prefetcher = not args.no_prefetcher
    args.grad_accum_steps = max(1, args.grad_accum_steps)
    args.distributed, args.world_size = False, 1
    utils.random_seed(args.seed, 0)

    in_chans = args.in_chans or (args.input_size[0] if args.input_size else 3)
    model = create_model(args.model, pretrained=args.pretrained, in_chans=in_chans, num_classes=args.num_classes,
                         drop_rate=args.drop, drop_path_rate=args.drop_path, drop_block_rate=args.drop_block,
                         global_pool=args.gp)
    if args.num_classes is None:
        args.num_classes = model.num_classes
    param_count = sum(p.numel() for p in model.parameters())
    log.info("Model %s created, param count: %d", args.model, param_count)
    data_config = resolve_data_config(vars(args), model=model)
    model.to(device=device)
    if args.channels_last:
        model.to(memory_format=torch.channels_last)

    if not args.lr:   # lr = lr_base * global batch / lr_base_size, sqrt scaling for ada*/lamb optimizers
        batch_ratio = args.batch_size * args.world_size * args.grad_accum_steps / args.lr_base_size
        if not args.lr_base_scale:
            args.lr_base_scale = "sqrt" if any(o in args.opt.lower() for o in ("ada", "lamb")) else "linear"
        args.lr = args.lr_base * (batch_ratio ** 0.5 if args.lr_base_scale == "sqrt" else batch_ratio)
    optimizer = create_optimizer_v2(model, **optimizer_kwargs(cfg=args))

    dataset_train = create_dataset(args.dataset, root=args.data_dir, split=args.train_split, is_training=True,
                                   class_map=args.class_map, batch_size=args.batch_size, seed=args.seed)
    dataset_eval = create_dataset(args.dataset, root=args.data_dir, split=args.val_split, is_training=False,
                                  class_map=args.class_map, batch_size=args.batch_size)
    train_interpolation = args.train_interpolation
    if args.no_aug or not train_interpolation:
        train_interpolation = data_config["interpolation"]
    loader_train = create_loader(
        dataset_train, input_size=data_config["input_size"], batch_size=args.batch_size, is_training=True,
        use_prefetcher=args.prefetcher, no_aug=args.no_aug, re_prob=args.reprob, re_mode=args.remode,
        re_count=args.recount, scale=args.scale, ratio=args.ratio, hflip=args.hflip, vflip=args.vflip,
        color_jitter=args.color_jitter, auto_augment=args.aa, interpolation=train_interpolation,
        mean=data_config["mean"], std=data_config["std"], num_workers=args.workers, pin_memory=args.pin_mem,
        device=device, worker_seeding=args.worker_seeding)
    loader_eval = create_loader(
        dataset_eval, input_size=data_config["input_size"], batch_size=args.validation_batch_size or args.batch_size,
        is_training=False, use_prefetcher=args.prefetcher, interpolation=data_config["interpolation"],
        mean=data_config["mean"], std=data_config["std"], num_workers=args.workers,
        crop_pct=data_config["crop_pct"], pin_memory=args.pin_mem, device=device)

    train_loss_fn = (LabelSmoothingCrossEntropy(smoothing=args.smoothing) if args.smoothing
                     else torch.nn.CrossEntropyLoss()).to(device=device)
    validate_loss_fn = torch.nn.CrossEntropyLoss().to(device=device)

    updates_per_epoch = (len(loader_train) + args.grad_accum_steps - 1) // args.grad_accum_steps
    lr_scheduler, num_epochs = create_scheduler_v2(optimizer, **scheduler_kwargs(args),
                                                   updates_per_epoch=updates_per_epoch)
    record = {"side": "timm", "param_count": param_count, "epochs": [], "train_images": 0,
              "train_py_commit": TRAIN_PY_COMMIT, "data_config": {k: list(v) if isinstance(v, tuple) else v
                                                                  for k, v in data_config.items()}}
    for epoch in range(num_epochs):
        steps: list[list[float]] = []
        train_metrics = train_one_epoch(epoch, model, loader_train, optimizer, train_loss_fn, args, device,
                                        lr_scheduler=lr_scheduler, steps=steps)
        eval_metrics = validate(model, loader_eval, validate_loss_fn, args, device)
        lr_scheduler.step(epoch + 1, eval_metrics[args.eval_metric])
        record["epochs"].append({"steps": steps, **train_metrics, **{f"valid_{k}": v for k, v in eval_metrics.items()}})
        record["train_images"] += int(sum(s[2] for s in steps))
    if args.steps_json:
        with open(args.steps_json, "w", encoding="utf-8") as f:
            json.dump(record, f)
    return 0


def train_one_epoch(epoch, model, loader, optimizer, loss_fn, args, device, lr_scheduler=None,
                    amp_autocast=suppress, steps: list | None = None) -> OrderedDict:
    """train.py's ``train_one_epoch`` (no loss scaler, EMA, mixup or DDP: its float32 single-process path).
    ``steps`` gets ``[batch in hand, update done, batch size]`` (perf_counter seconds) per step."""
    from timm import utils
    from timm.models import model_parameters

    update_time_m, data_time_m, losses_m = utils.AverageMeter(), utils.AverageMeter(), utils.AverageMeter()
    model.train()
    accum_steps = args.grad_accum_steps
    last_accum_steps = len(loader) % accum_steps
    updates_per_epoch = (len(loader) + accum_steps - 1) // accum_steps
    num_updates = epoch * updates_per_epoch
    last_batch_idx = len(loader) - 1
    last_batch_idx_to_accum = len(loader) - last_accum_steps

    data_start_time = update_start_time = time.time()
    optimizer.zero_grad()
    update_sample_count = 0
    for batch_idx, (input, target) in enumerate(loader):
        t_in = time.perf_counter()
        last_batch = batch_idx == last_batch_idx
        need_update = last_batch or (batch_idx + 1) % accum_steps == 0
        update_idx = batch_idx // accum_steps
        if batch_idx >= last_batch_idx_to_accum:
            accum_steps = last_accum_steps
        if not args.prefetcher:
            input, target = input.to(device), target.to(device)
        if args.channels_last:
            input = input.contiguous(memory_format=torch.channels_last)
        data_time_m.update(accum_steps * (time.time() - data_start_time))

        with amp_autocast():
            output = model(input)
            loss = loss_fn(output, target)
        if accum_steps > 1:
            loss /= accum_steps
        loss.backward()
        if need_update:
            if args.clip_grad is not None:
                utils.dispatch_clip_grad(model_parameters(model, exclude_head="agc" in args.clip_mode),
                                         value=args.clip_grad, mode=args.clip_mode)
            optimizer.step()
        losses_m.update(loss.item() * accum_steps, input.size(0))   # a host sync every step, as train.py
        update_sample_count += input.size(0)
        if not need_update:
            if steps is not None:
                steps.append([t_in, time.perf_counter(), input.size(0)])
            data_start_time = time.time()
            continue

        num_updates += 1
        optimizer.zero_grad()
        time_now = time.time()
        update_time_m.update(time.time() - update_start_time)
        update_start_time = time_now
        if steps is not None:
            steps.append([t_in, time.perf_counter(), input.size(0)])
        if update_idx % args.log_interval == 0:
            lrl = [g["lr"] for g in optimizer.param_groups]
            log.info(f"Train: {epoch} [{update_idx:>4d}/{updates_per_epoch}]  Loss: {losses_m.val:#.3g} "
                     f"({losses_m.avg:#.3g})  Time: {update_time_m.val:.3f}s, "
                     f"{update_sample_count / update_time_m.val:>7.2f}/s  LR: {sum(lrl) / len(lrl):.3e}  "
                     f"Data: {data_time_m.val:.3f} ({data_time_m.avg:.3f})")
        if lr_scheduler is not None:
            lr_scheduler.step_update(num_updates=num_updates, metric=losses_m.avg)
        update_sample_count = 0
        data_start_time = time.time()
    return OrderedDict([("loss", losses_m.avg), ("data_time_s", data_time_m.sum)])


def validate(model, loader, loss_fn, args, device) -> OrderedDict:
    """train.py's ``validate``: loss, top-1 and top-5 (%) over the validation loader."""
    from timm import utils

    losses_m, top1_m, top5_m = utils.AverageMeter(), utils.AverageMeter(), utils.AverageMeter()
    model.eval()
    with torch.no_grad():
        for input, target in loader:
            if not args.prefetcher:
                input, target = input.to(device), target.to(device)
            if args.channels_last:
                input = input.contiguous(memory_format=torch.channels_last)
            output = model(input)
            loss = loss_fn(output, target)
            acc1, acc5 = utils.accuracy(output, target, topk=(1, 5))
            if device.type == "cuda":
                torch.cuda.synchronize()
            losses_m.update(loss.item(), input.size(0))
            top1_m.update(acc1.item(), output.size(0))
            top5_m.update(acc5.item(), output.size(0))
    return OrderedDict([("loss", losses_m.avg), ("top1", top1_m.avg), ("top5", top5_m.avg)])


# ============================================================================= our side (child process)

def ours_train(argv: list[str]) -> int:
    """``train_ResNet18_Hybrid.py`` with ``argv`` after ``--steps-json FILE``, the step times recorded by
    wrapping the task's training step (batch in hand) and the engine's optimizer step (step done)."""
    if argv[:1] != ["--steps-json"] or len(argv) < 2:
        raise SystemExit("usage: python -m bench.peers_timm ours-train --steps-json FILE <train_ResNet18_Hybrid.py flags>")
    steps_json, argv = argv[1], argv[2:]
    sys.path.insert(0, REPO_ROOT)
    import train_ResNet18_Hybrid as script
    from src import cli
    from src.tasks.classification import ClassificationTask
    from src.training import loop

    epochs: list[list[list[float]]] = []
    train_epoch, training_step, optimizer_step = loop._train_one_epoch, ClassificationTask.training_step, loop._optimizer_step

    def timed_epoch(*a, **k):
        epochs.append([])
        return train_epoch(*a, **k)

    def timed_step(self, model, batch):
        epochs[-1].append([time.perf_counter(), None, len(batch["label"])])
        return training_step(self, model, batch)

    def timed_optimizer_step(*a, **k):
        out = optimizer_step(*a, **k)
        epochs[-1][-1][1] = time.perf_counter()
        return out

    loop._train_one_epoch, ClassificationTask.training_step, loop._optimizer_step = (
        timed_epoch, timed_step, timed_optimizer_step)
    rc = cli.run_main(script.main, argv)
    if rc:
        return rc
    results = argv[argv.index("--results-dir") + 1]
    (run_dir,) = [os.path.join(results, d) for d in os.listdir(results)]
    with open(os.path.join(run_dir, "metrics.json"), encoding="utf-8") as f:
        metrics = json.load(f)
    with open(os.path.join(run_dir, "history.json"), encoding="utf-8") as f:
        history = json.load(f)
    record = {"side": "ours", "param_count": metrics["num_params"], "run_dir": run_dir,
              "epochs": [{"steps": s, "samples_per_s": history["samples_per_s"][i],
                          "data_time_s": history["data_time_s"][i], "loss": history["train_loss"][i]}
                         for i, s in enumerate(epochs)],
              "train_images": int(sum(n for s in epochs for _, _, n in s))}
    with open(steps_json, "w", encoding="utf-8") as f:
        json.dump(record, f)
    return 0


# ============================================================================= the comparison

def make_image_folders(root: str, n_train: int, n_valid: int, unique: int = 32) -> dict:
    """``n_train`` + ``n_valid`` 640x480 q90 leaf photos under ``root/{train,validation}/<class>/`` (timm's
    ImageFolder layout) and ``root/metadata.csv`` + ``root/label2id.json`` over the same files (ours).
    ``unique`` photos are rendered (about 0.3 s each) and copied to the counts asked."""
    from bench.data_pipeline import PHOTO, make_photos
    from src.data.demo_classification import CLASSES

    staging = os.path.join(root, "_rendered")
    os.makedirs(staging)
    rendered = make_photos(staging, min(unique, n_train + n_valid))
    rows = []
    for split, n, csv_split in (("train", n_train, "train"), ("validation", n_valid, "valid")):
        for i in range(n):
            j = i % len(rendered)
            cls = CLASSES[j % len(CLASSES)]             # make_photos draws class j % 4
            rel = os.path.join(split, cls, f"leaf_{i:04d}.jpg")
            os.makedirs(os.path.join(root, split, cls), exist_ok=True)
            shutil.copyfile(rendered[j], os.path.join(root, rel))
            rows.append(f"{rel},{cls},{csv_split}")
    shutil.rmtree(staging)
    with open(os.path.join(root, "metadata.csv"), "w", encoding="utf-8") as f:
        f.write("path,label,split\n" + "\n".join(rows) + "\n")
    with open(os.path.join(root, "label2id.json"), "w", encoding="utf-8") as f:
        json.dump({c: i for i, c in enumerate(sorted(CLASSES))}, f)
    return {"root": root, "metadata": os.path.join(root, "metadata.csv"),
            "label2id": os.path.join(root, "label2id.json"), "classes": len(CLASSES), "photo": PHOTO,
            "n_train": n_train, "n_valid": n_valid, "unique": len(rendered)}


def side_commands(side: str, data: dict, s: argparse.Namespace, run_folder: str, steps_json: str) -> list[str]:
    common = [sys.executable, "-m", "bench.peers_timm"]
    if side == "ours":
        return [*common, "ours-train", "--steps-json", steps_json, "--metadata", data["metadata"],
                "--label2id", data["label2id"], "--model", "ResNet18", "--image-size", str(s.image_size),
                "--batch-size", str(s.batch_size), "--num-workers", str(s.workers), "--threads", str(s.threads),
                "--epochs", str(s.epochs), "--dropout", str(DROPOUT), "--device", s.device, *OUR_AUG,
                "--results-dir", run_folder, "--model-name", "ResNet18_bench", "--seed", "42"]
    return [*common, "timm-train", data["root"], "--model", "resnet18", "--num-classes", str(data["classes"]),
            "--img-size", str(s.image_size), "--batch-size", str(s.batch_size), "--workers", str(s.workers),
            "--threads", str(s.threads), "--epochs", str(s.epochs), "--drop", str(DROPOUT), "--device", s.device,
            "--steps-json", steps_json]


def run_figures(record: dict) -> dict:
    """Images/s from the first step's batch to the last step's, summed over epochs; step/between profile."""
    images, seconds, step_s, between_s = 0, 0.0, [], []
    for epoch in record["epochs"]:
        st = epoch["steps"]
        if len(st) < 2:
            raise ValueError(f"{record['side']}: an epoch of {len(st)} step(s) has no first-to-last interval")
        images += sum(n for _, _, n in st[:-1])
        seconds += st[-1][0] - st[0][0]
        step_s += [t_out - t_in for t_in, t_out, _ in st]
        between_s += [st[i + 1][0] - st[i][1] for i in range(len(st) - 1)]
    return {"images_per_s": images / seconds, "step_ms": 1e3 * statistics.mean(step_s),
            "between_ms": 1e3 * statistics.mean(between_s), "timed_images": images}


def compare(folder: str, s: argparse.Namespace) -> dict:
    """Generate the images, run the sides in alternating rounds, and return the runs and table rows."""
    data = make_image_folders(os.path.join(folder, "images"), s.images, s.valid_images)
    runs: dict[str, list[dict]] = {"ours": [], "timm": []}
    for r, side in alternating_rounds(["ours", "timm"], s.rounds, reverse_first=False):
        k = len(runs[side])
        run_folder, steps_json = os.path.join(folder, f"{side}_runs_{k}"), os.path.join(folder, f"{side}_{k}.json")
        cmd = side_commands(side, data, s, run_folder, steps_json)
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if proc.returncode:
            raise RuntimeError(f"{side} run failed ({proc.returncode}): {shlex.join(cmd)}\n{proc.stderr[-3000:]}")
        with open(steps_json, encoding="utf-8") as f:
            record = json.load(f)
        record.update(run_figures(record), wall_s=wall, round=r)
        runs[side].append(record)
        print(f"  round {r} {side}: {record['images_per_s']:.2f} images/s, step {record['step_ms']:.0f} ms, "
              f"between {record['between_ms']:.0f} ms, run {wall:.0f} s", file=sys.stderr, flush=True)
    params = {side: {rec["param_count"] for rec in rs} for side, rs in runs.items()}
    assert len(params["ours"]) == 1 and params["ours"] == params["timm"], f"parameter counts differ: {params}"
    expected = s.images * s.epochs
    for side, rs in runs.items():
        for rec in rs:
            assert rec["train_images"] == expected, f"{side} trained {rec['train_images']} images, not {expected}"
    out = {"data": data, "runs": runs, "param_count": params["ours"].pop(), "settings": vars(s)}
    out["rows"] = table_rows(out)
    return out


def _spi(recs: list[dict]) -> list[float]:
    """Seconds per image of each run: a time, as :mod:`bench.timing`'s ratio and spread take."""
    return [1.0 / r["images_per_s"] for r in recs]


def table_rows(result: dict) -> list[str]:
    """One row in ``bench.peers``'s table format: | row | input | ours | peer | speed-up (peer / ours) | outputs |
    (speed-up = timm's time per image / ours = our images/s / timm's)."""
    s, d, ours, theirs = result["settings"], result["data"], result["runs"]["ours"], result["runs"]["timm"]

    def side(recs):
        ips = statistics.median(r["images_per_s"] for r in recs)
        return f"{ips:.2f} images/s ({spread(_spi(recs))})"

    inputs = (f"{d['n_train']} {d['photo'][0]}x{d['photo'][1]} JPEGs -> {s['image_size']}, batch {s['batch_size']}, "
              f"{s['workers']} workers, {s['threads']} thread(s), {s['epochs']} epoch(s) per run")
    return [f"| ResNet18 training, `{OUR_SCRIPT} --model ResNet18` vs timm `train.py`'s loop (rebuilt from timm "
            f"{_timm_version()}) | {inputs} | ours {side(ours)} | timm {side(theirs)} | "
            f"{checked_ratio(_spi(theirs), _spi(ours), stat=statistics.median)} | "
            f"{result['param_count']:,} parameters both; {s['images'] * s['epochs']} images trained per run each |"]


def _timm_version() -> str:
    try:
        import timm
        return timm.__version__
    except ImportError:
        return "?"


def classification_rows(tmp: str, quick: bool = False, threads: int = 1, **settings) -> list[str]:
    """The comparison's row(s) in ``bench.peers``'s table format, run in ``tmp``: the full settings,
    or :func:`parse_args`'s ``--quick`` ones; ``settings`` override single values (``batch_size=16``)."""
    s = parse_args(["--quick"] if quick else [])
    s.threads = threads
    for k, v in settings.items():
        setattr(s, k, v)
    folder = tempfile.mkdtemp(prefix="peers_timm_", dir=tmp)
    return compare(folder, s)["rows"]


def report(result: dict, command: str, seconds: float) -> str:
    s, runs = result["settings"], result["runs"]
    lines = [f"## Classification training: ours vs timm train.py's loop (CPU, {s['threads']} thread(s) per side, "
             f"{os.cpu_count()} logical CPUs)\n",
             f"Command: {command}; every figure measured in this run ({seconds:.0f} s); torch {torch.__version__}, "
             f"timm {_timm_version()} (train.py's loop rebuilt from its library, train.py read at "
             f"{TRAIN_PY_COMMIT[:12]}). Images/s from the first training step's batch to the last's (start-up, "
             f"validation, saving excluded); median of {len(runs['ours'])} runs per side alternating "
             f"(ours, timm, timm, ours, ...); spread = (max - min) / min of the runs; the ratio counts only when "
             f"both spreads are under 25%. step = batch in hand to optimizer step done; between = the rest "
             f"(data wait, bookkeeping), per step.\n",
             "| side | images/s (median) | spread | runs (images/s) | whole epoch images/s (ours' history) | "
             "step ms | between ms | run wall s |", "|---|---|---|---|---|---|---|---|"]
    for name, recs in runs.items():
        ips = [r["images_per_s"] for r in recs]
        whole = [e["samples_per_s"] for r in recs for e in r["epochs"] if "samples_per_s" in e]
        lines.append(f"| {name} | {statistics.median(ips):.2f} | {spread(_spi(recs))} | "
                     f"{', '.join(f'{v:.2f}' for v in ips)} | "
                     f"{f'{statistics.median(whole):.2f}' if whole else ''} | "
                     f"{statistics.median(r['step_ms'] for r in recs):.0f} | "
                     f"{statistics.median(r['between_ms'] for r in recs):.0f} | "
                     f"{statistics.median(r['wall_s'] for r in recs):.0f} |")
    counted = all(spread_fraction(_spi(r)) < 0.25 for r in runs.values())
    lines += ["", f"ours / timm: {checked_ratio(_spi(runs['timm']), _spi(runs['ours']), stat=statistics.median)}"
                  f"{'' if counted else ' (rerun when the machine is quieter)'}", "",
              "| row | input | ours | peer | speed-up (peer / ours) | outputs |", "|---|---|---|---|---|---|",
              *result["rows"]]
    return "\n".join(lines) + "\n"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.peers_timm", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--quick", action="store_true", help="16 images, batch 8, 1 worker, 1 run per side: a check")
    p.add_argument("--images", type=int, default=512, help="training images (640x480 JPEG)")
    p.add_argument("--valid-images", type=int, default=32, help="validation images (each side validates per epoch)")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers of each side")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads of each side")
    p.add_argument("--epochs", type=int, default=1, help="epochs per run")
    p.add_argument("--rounds", type=int, default=3, help="runs per side (alternating)")
    p.add_argument("--device", default="cpu", help="cpu or cuda, both sides")
    p.add_argument("--out", help="also write the table to this file")
    p.add_argument("--json", help="also write every run's figures to this file")
    args = p.parse_args(argv)
    if args.quick:
        args.images, args.valid_images, args.batch_size, args.workers, args.rounds = 16, 4, 8, 1, 1
    if args.images % args.batch_size:
        p.error("--images must be a multiple of --batch-size (timm's training loader drops the last partial batch)")
    return args


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["timm-train"]:
        return timm_train(argv[1:])
    if argv[:1] == ["ours-train"]:
        return ours_train(argv[1:])
    s = parse_args(argv)
    module = __spec__.name if __spec__ else "bench.peers_timm"
    command = command_line(module, argv)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="peers_timm_") as folder:
        result = compare(folder, s)
    text = report(result, command, time.perf_counter() - t0)
    emit(text, s.out)
    if s.json:
        with open(s.json, "w", encoding="utf-8") as f:
            json.dump({k: v for k, v in result.items() if k != "rows"} | {"rows": result["rows"]}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
