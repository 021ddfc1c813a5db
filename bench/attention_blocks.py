"""BoT block with linear attention vs softmax attention vs no block: step time, memory, FPS.

The seed documentation claims that linear attention makes MobileNetV3-Small + BoT train 20-30 %
faster, use 30-40 % less memory and infer 5-10 % faster than the softmax BoT, and that the softmax
BoT runs out of memory at 320 px with batch 48. Attention runs on the backbone's last feature map
(stride 32), so at 224-512 px it sees only 49-256 tokens; this script measures what the choice of
attention changes at those sizes, on both backbones of the seed project (timm
``mobilenetv3_small_100`` and ``resnet18``):

1. Whole models (``create_classifier``): one training step (forward, cross-entropy, backward, AdamW
   step, ``zero_grad``) timed as the fastest of several repetitions after warm-up (on a shared
   machine the fastest run is the least disturbed one; the spread between fastest and slowest is
   printed as the noise level); the peak memory of one such step; inference FPS (eval mode,
   ``no_grad``). The three variants of a backbone are built from the same seed and measured in
   round-robin (linear, softmax, none, linear, ...), so a change in machine load hits all three
   alike.
2. The attention block alone (``BoTBlock``, linear vs softmax) on a random feature map with the
   backbone's channel count and final spatial size (plus larger maps, ``--block-extra-sides``, to
   show where linear attention starts to pay off).
3. The seed's OOM case: MobileNetV3-Small BoT vs BoT-linear at ``--seed-check-size`` px and batch
   ``--seed-check-batch``.

Peak memory of a training step is the peak of memory allocated during the step *above* what was
allocated just before it (parameters, optimizer state and input batch are already there, gradients
are not: ``zero_grad(set_to_none=True)``):
- CUDA: ``torch.cuda.max_memory_allocated()`` after ``reset_peak_memory_stats()``, minus
  ``torch.cuda.memory_allocated()`` before the step.
- CPU: ``torch.profiler`` with ``profile_memory=True`` records every allocation and free of
  PyTorch's CPU allocator; the running sum of those events in time order peaks at the figure shown.
  Memory that libraries allocate behind PyTorch's back (oneDNN/MKL scratch space) is not included.

Every figure is measured in the run; nothing is hard-coded. A default CPU run takes a few minutes
on 2 cores; ``--quick`` does two sizes and shorter timings.

    python -m bench.attention_blocks                  # CPU: 224/320/384/512, batch 8, FPS batch 16
    python -m bench.attention_blocks --device cuda --batch-size 32
"""
from __future__ import annotations

import argparse
import gc
import os
import sys
import time
import warnings
from contextlib import contextmanager, nullcontext
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.profiler import ProfilerActivity, profile

from bench.timing import fastest, ratio, round_robin, spread
from src.models.classifiers import create_classifier
from src.models.layers.attention import BoTBlock
from src.training import distributed as D
from src.training.perf import sync

# backbone -> attention kind -> model name in src.models.classifiers.MODELS
VARIANTS = {
    "MobileNetV3_Small": {"linear": "MobileNetV3_Small_BoT_Linear", "softmax": "MobileNetV3_Small_BoT",
                          "none": "MobileNetV3_Small"},
    "ResNet18": {"linear": "ResNet18_BoTLinear", "softmax": "ResNet18_BoT", "none": "ResNet18"},
}
NUM_CLASSES = 10  # the seed's rice-leaf data set
MiB = 2 ** 20


# ----------------------------------------------------------------------------- measuring helpers

@contextmanager
def _quiet_stderr():
    """Silence file descriptor 2: the profiler's C++ side prints start/stop lines on every use."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def step_peak_bytes(fn: Callable[[], None], device: torch.device) -> float:
    """Peak bytes allocated while ``fn`` runs, above what was allocated when it started."""
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        sync(device)
        return torch.cuda.max_memory_allocated(device) - before
    with _quiet_stderr(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            fn()
    # the public event list folds allocations into the op that made them and loses their order;
    # the raw kineto events keep every alloc (+bytes) and free (-bytes) with its timestamp
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                    if e.name() == "[memory]")
    current = peak = 0
    for _, nbytes in events:
        current += nbytes
        peak = max(peak, current)
    return float(peak)


class Trainer:
    """One training step of ``module`` on a fixed batch: forward, loss, backward, AdamW, zero_grad."""

    def __init__(self, module: nn.Module, x: torch.Tensor, loss_fn: Callable[[torch.Tensor], torch.Tensor],
                 amp_dtype: torch.dtype | None) -> None:
        self.module, self.x, self.loss_fn = module.train(), x, loss_fn
        self.optimizer = torch.optim.AdamW(module.parameters(), lr=1e-4, weight_decay=1e-2)
        self.amp_dtype = amp_dtype
        use_scaler = amp_dtype == torch.float16 and x.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda") if use_scaler else None

    def _autocast(self):
        return torch.autocast(self.x.device.type, dtype=self.amp_dtype) if self.amp_dtype else nullcontext()

    def step(self) -> None:
        with self._autocast():
            loss = self.loss_fn(self.module(self.x))
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    @torch.no_grad()
    def infer(self, x: torch.Tensor) -> None:
        with self._autocast():
            self.module(x)


def measure(trainers: dict[str, Trainer], infer_x: torch.Tensor | None, args, device: torch.device) -> dict:
    """Step time, step peak memory and (unless ``infer_x`` is None) inference time of each trainer."""
    for t in trainers.values():
        for _ in range(args.warmup):
            t.step()
    peak = {k: step_peak_bytes(t.step, device) for k, t in trainers.items()}
    step_s = round_robin({k: t.step for k, t in trainers.items()}, device, args.min_reps, args.min_time,
                         args.max_reps)
    # the fastest run is the one other processes disturbed least (as timeit advises); the spread,
    # (slowest - fastest) / fastest, shows how much the machine's speed wandered while timing
    results = {k: {"step_ms": fastest(step_s[k]) * 1e3, "peak_mib": peak[k] / MiB,
                   "step_spread": spread(step_s[k])} for k in trainers}
    if infer_x is None:
        return results
    for t in trainers.values():
        t.module.eval()
        for _ in range(args.warmup):
            t.infer(infer_x)
    infer_s = round_robin({k: (lambda t=t: t.infer(infer_x)) for k, t in trainers.items()}, device,
                          args.min_reps, args.min_time, args.max_reps)
    for k in trainers:
        results[k]["infer_s"] = fastest(infer_s[k])
    return results


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def lin_soft(lin: dict, sm: dict, key: str) -> str:
    """Linear / softmax of figure ``key``, a plain number with 2 decimals (no ``x``), as the tables show it."""
    return ratio(lin[key], sm[key], suffix="")


# ----------------------------------------------------------------------------- the three experiments

def bench_models(backbone: str, size: int, args, device, amp_dtype,
                 with_fps: bool = True) -> tuple[int, tuple[int, int], dict]:
    """All three variants of ``backbone`` at ``size`` px; also returns the final feature map's
    channels and (h, w)."""
    trainers = {}
    x = torch.randn(args.batch_size, 3, size, size, device=device)
    y = torch.randint(0, NUM_CLASSES, (args.batch_size,), device=device)
    infer_x = torch.randn(args.fps_batch_size, 3, size, size, device=device) if with_fps else None
    for kind, name in VARIANTS[backbone].items():
        torch.manual_seed(0)  # the same backbone weights in all three variants
        model = create_classifier(name, NUM_CLASSES, heads=args.heads).to(device)
        trainers[kind] = Trainer(model, x, lambda logits: F.cross_entropy(logits.float(), y), amp_dtype)
    with torch.no_grad():
        channels, h, w = trainers["none"].module.backbone(x[:1])[-1].shape[-3:]
    results = measure(trainers, infer_x, args, device)
    if with_fps:
        for r in results.values():
            r["fps"] = args.fps_batch_size / r.pop("infer_s")
    del trainers
    _free(device)
    return channels, (h, w), results


def bench_block(channels: int, hw: tuple[int, int], args, device, amp_dtype) -> dict:
    """``BoTBlock`` linear vs softmax on a random (B, C, h, w) map that needs an input gradient, as
    inside the model (the backbone below it is being trained)."""
    x = torch.randn(args.batch_size, channels, *hw, device=device, requires_grad=True)
    infer_x = torch.randn(args.fps_batch_size, channels, *hw, device=device)
    trainers = {}
    for kind in ("linear", "softmax"):
        torch.manual_seed(0)
        block = BoTBlock(channels, args.heads, attention=kind).to(device)
        trainers[kind] = Trainer(block, x, lambda out: out.float().square().mean(), amp_dtype)
    results = measure(trainers, infer_x, args, device)
    for r in results.values():
        r["fwd_ms"] = r.pop("infer_s") * 1e3
    x.grad = None
    del trainers
    _free(device)
    return results


# ----------------------------------------------------------------------------- main

def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog=f"python -m {__spec__.name}", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[224, 320, 384, 512], help="input image sizes")
    p.add_argument("--backbones", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    p.add_argument("--batch-size", type=int, default=8, help="training batch size")
    p.add_argument("--fps-batch-size", type=int, default=16, help="inference batch size for FPS")
    p.add_argument("--heads", type=int, default=4, help="attention heads of the BoT blocks")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--amp", choices=["off", "fp16", "bf16"], default="off", help="autocast dtype (off = fp32)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--warmup", type=int, default=1, help="untimed calls per variant before measuring")
    p.add_argument("--min-reps", type=int, default=5, help="timed calls per variant, at least")
    p.add_argument("--max-reps", type=int, default=20, help="timed calls per variant, at most")
    p.add_argument("--min-time", type=float, default=3.0, help="seconds each round-robin timing runs, at least")
    p.add_argument("--block-extra-sides", type=int, nargs="*", default=[32],
                   help="extra square feature-map sides for the block-only table (32 -> 1024 tokens)")
    p.add_argument("--seed-check-size", type=int, default=320)
    p.add_argument("--seed-check-batch", type=int, default=48, help="0 skips the seed's OOM-case table")
    p.add_argument("--quick", action="store_true",
                   help="sizes 224 320, --min-time 1, --min-reps 3, no extra block sizes, no seed-check table")
    args = p.parse_args(argv)
    if args.quick:
        args.sizes, args.min_time, args.min_reps = [224, 320], 1.0, 3
        args.block_extra_sides, args.seed_check_batch = [], 0
    if args.threads:
        torch.set_num_threads(args.threads)
    device = D.resolve_device(args.device)
    amp_dtype = {"off": None, "fp16": torch.float16, "bf16": torch.bfloat16}[args.amp]
    dtype_name = "float32" if amp_dtype is None else f"autocast {str(amp_dtype).replace('torch.', '')}"
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        dev_name = torch.cuda.get_device_name(device)
        mem_method = ("CUDA: max_memory_allocated after reset_peak_memory_stats, minus memory_allocated "
                      "before the step")
    else:
        dev_name = f"CPU, {torch.get_num_threads()} threads"
        mem_method = ("CPU: torch.profiler(profile_memory=True) alloc/free events of PyTorch's CPU allocator, "
                      "running sum in time order, its maximum")
    print(f"# attention_blocks: torch {torch.__version__}, device {dev_name}, {dtype_name}, "
          f"train batch {args.batch_size}, FPS batch {args.fps_batch_size}, heads {args.heads}")
    print(f"step = forward + cross-entropy + backward + AdamW.step + zero_grad; fastest of >= {args.min_reps} "
          f"timed steps (>= {args.min_time:g} s per round-robin) after {args.warmup} warm-up")
    print(f"step peak = peak memory allocated during one step above what was allocated before it "
          f"(params, optimizer state, input); {mem_method}")
    print("step spread = (slowest - fastest timed step) / fastest, of N timed steps: the timing noise")
    print("FPS = inference images/s, eval mode, no_grad, fastest of the timed batches\n", flush=True)

    # 1. whole models
    rows, ratio_rows, block_shapes = [], [], []
    for backbone in args.backbones:
        for size in args.sizes:
            t0 = time.perf_counter()
            channels, hw, res = bench_models(backbone, size, args, device, amp_dtype)
            print(f"  measured {backbone} @ {size} in {time.perf_counter() - t0:.0f} s", file=sys.stderr,
                  flush=True)
            tokens = hw[0] * hw[1]
            for kind in ("linear", "softmax", "none"):
                r = res[kind]
                rows.append(f"| {VARIANTS[backbone][kind]} | {size} | {hw[0]}x{hw[1]} = {tokens} | "
                            f"{r['step_ms']:.1f} | {r['step_spread']} | "
                            f"{r['peak_mib']:.1f} | {r['fps']:.1f} |")
            lin, sm = res["linear"], res["softmax"]
            ratio_rows.append(f"| {backbone} | {size} | {tokens} | {lin_soft(lin, sm, 'step_ms')} | "
                              f"{lin_soft(lin, sm, 'peak_mib')} | {lin_soft(lin, sm, 'fps')} |")
            block_shapes.append((backbone, channels, hw, f"{size} px"))
        for side in args.block_extra_sides:
            block_shapes.append((backbone, channels, (side, side), f"{side * 32} px, extra"))

    print(f"## Whole models (train batch {args.batch_size}, FPS batch {args.fps_batch_size}, {dev_name}, "
          f"{dtype_name})\n")
    print("| model | image | tokens (h x w of final map) | train step ms | step spread | step peak MiB | FPS |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    print("\n### Ratios linear / softmax (< 1 means linear uses less time or memory; > 1 FPS means linear is faster)\n")
    print("| backbone | image | tokens | step time | step peak memory | FPS |")
    print("|---|---|---|---|---|---|")
    print("\n".join(ratio_rows), flush=True)

    # 2. the block alone
    print(f"\n## BoTBlock alone (batch {args.batch_size} train, {args.fps_batch_size} forward; {dev_name}, "
          f"{dtype_name})\n")
    print("train step = block forward + loss + backward (incl. input gradient) + AdamW on the block's parameters; "
          "fwd = eval, no_grad\n")
    print("| backbone (C) | feature map | tokens | step ms lin | step ms soft | lin/soft | "
          "peak MiB lin | peak MiB soft | lin/soft | fwd ms lin | fwd ms soft | lin/soft |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for backbone, channels, hw, where in block_shapes:
        res = bench_block(channels, hw, args, device, amp_dtype)
        lin, sm = res["linear"], res["softmax"]
        print(f"| {backbone} ({channels}) | {hw[0]}x{hw[1]} ({where}) | {hw[0] * hw[1]} | "
              f"{lin['step_ms']:.2f} | {sm['step_ms']:.2f} | {lin_soft(lin, sm, 'step_ms')} | "
              f"{lin['peak_mib']:.2f} | {sm['peak_mib']:.2f} | {lin_soft(lin, sm, 'peak_mib')} | "
              f"{lin['fwd_ms']:.2f} | {sm['fwd_ms']:.2f} | {lin_soft(lin, sm, 'fwd_ms')} |", flush=True)

    # 3. the seed's OOM case
    if args.seed_check_batch > 0:
        size, batch = args.seed_check_size, args.seed_check_batch
        # memory is the point here; 3 timed steps are enough for the time column
        check = argparse.Namespace(**{**vars(args), "batch_size": batch, "min_reps": min(args.min_reps, 3)})
        check_backbone = "MobileNetV3_Small"
        _, hw, res = bench_models(check_backbone, size, check, device, amp_dtype, with_fps=False)
        print(f"\n## Seed's OOM case: {check_backbone} at {size} px, train batch {batch} ({dev_name}, {dtype_name})\n")
        print("| model | tokens | train step ms | step peak MiB |")
        print("|---|---|---|---|")
        for kind in ("softmax", "linear", "none"):
            r = res[kind]
            print(f"| {VARIANTS[check_backbone][kind]} | {hw[0] * hw[1]} | {r['step_ms']:.1f} | {r['peak_mib']:.1f} |")
        lin, sm = res["linear"], res["softmax"]
        print(f"\nlinear/softmax: step time {lin_soft(lin, sm, 'step_ms')}, "
              f"step peak memory {lin_soft(lin, sm, 'peak_mib')}; "
              f"softmax - linear step peak = {sm['peak_mib'] - lin['peak_mib']:.1f} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
