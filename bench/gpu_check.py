"""One prepared check of the five scripts' models on a CUDA machine: training and inference speed,
peak memory and host syncs per training step, in fp32, AMP fp16, AMP bf16 and under ``torch.compile``.

Each cell of the table is one model in one mode, built afresh (random init, seed 0):

- Model and loss are the scripts' own: ``create_classifier`` (both classification scripts, 224 px,
  4 classes), ``build_vietocr("vgg_transformer", 233 tokens, "full")`` on 32x160 lines,
  ``build_grounding_model()`` (Swin-T, 224 px, hashed text encoder), ``build_refdet_model`` (the
  script's stage-2 defaults: DINOv3 ViT-S/16 references at 224 px, 6 blocks frozen, 200 MB support
  cache, 640 px frames). The loss is the task plugin's ``training_step`` (``src.tasks.*``) on a
  synthetic batch made by the data layer's own collate function.
- Training: ``--warmup`` untimed steps, then ``--steps`` timed steps, both through the engine's own
  epoch loop (``src.training.loop._train_one_epoch``: autocast, the non-finite-loss guard, backward
  with the GradScaler under fp16, the script's gradient clipping, AdamW on the loop's parameter
  groups, the scheduler, the weights EMA where the script has one). So "syncs/step" counts the host
  syncs a real training step makes: the timed steps run under ``torch.cuda.set_sync_debug_mode("warn")``
  and every "synchronizing CUDA operation" warning is counted, divided by the steps (the mode is
  restored to 0 afterwards). samples/s = samples of the timed steps / their wall time (CUDA
  synchronised at both ends; the sync debug mode is off around those two synchronisations).
- Inference: ``src.training.perf.measure_speed`` (what ``metrics.json``'s FPS uses) on the task's
  speed module (OCR: encoding + greedy decoding with the KV cache, up to 128 tokens, lines/s;
  refdet: per-frame detection with the support encoded once), FPS at ``--infer-batch`` (16) and
  latency at batch 1, in the mode's autocast dtype.
- Peak memory: ``torch.cuda.max_memory_allocated`` of the training steps and of the inference,
  each after ``reset_peak_memory_stats``.
- ``compile``: ``torch.compile(model)`` (default mode) for training, as ``fit`` does under
  ``--compile``, and ``torch.compile(speed module)`` for inference, both with AMP bf16; "compile s"
  is the wall time of the warm-up steps and of an untimed first inference measurement, where it compiles.
  ``compile-fp32`` is the same in float32 (not in the default modes).

A cell that fails (compile failing for one model, say) gets its one-line error in the table and the
others still run; the exit status is 1 only when an fp32 cell failed. Cells run mode by mode (every
model's fp32 first, compile last), and a cell is skipped when the longest earlier cell of its mode
(for a mode's first cell, of the mode before) would take the run past ``--budget-s`` (420 s): the
default run is meant to end within 8 minutes on one GPU, and what the budget cuts is compile cells.
The table prints the seeds' T4 FPS claims in its notes, next to what was measured.

    python -m bench.gpu_check --out gpu_check.md          # CUDA: every model and mode, 30 steps
    python -m bench.gpu_check --models vietocr ovd --modes bf16 compile --steps 50
    python -m bench.gpu_check --quick                     # CPU smoke test (tests/bench/test_gpu_check.py)
"""
from __future__ import annotations

import argparse
import gc
import platform
import sys
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable

import timm
import torch
from torch import nn

from bench.timing import command_line, device_name, emit
from src.data.grounding import collate_grounding, encode_words
from src.data.ocr import IMAGE_HEIGHT, VIETOCR_VOCAB, Vocab, collate_lines
from src.data.refdet import K_SUPPORT, collate_episode
from src.errors import DataError
from src.losses.refdet import RefDetCriterion
from src.models.classifiers import create_classifier
from src.models.ovd import build_grounding_model
from src.models.ovd_matching import GroundingCriterion, HungarianMatcher
from src.models.refdet import build_refdet_model
from src.models.text_encoders import DEFAULT_BUCKETS, HASHED
from src.models.vietocr import build_vietocr
from src.tasks import ocr as ocr_task, ovd as ovd_task, refdet_args
from src.tasks.classification import ClassificationTask
from src.tasks.ocr import OCRTask
from src.tasks.ovd import GroundingTask
from src.tasks.refdet import RefDetTask
from src.training import distributed as D
from src.training.evaluate import to_device
# the engine's own state set-up and epoch loop (private to it) are what the timed steps run: their host
# syncs and their overhead are what a script's training pays, and a change to the loop shows up here
from src.training.loop import TrainConfig, _new_state, _train_one_epoch, autocast_factory, set_determinism
from src.training.perf import measure_speed, sync
from src.training.task import Task

# the seed documents' FPS figures (T4 GPU), quoted in the table's notes; never compared as if measured here
SEED_CLAIMS = "MobileNetV3_Small_BoT_Linear 4,216 FPS; ResNet18_Hybrid 792 FPS (seed documents, T4 GPU)"
NUM_CLASSES = 4
SYNC_WARNING = "synchroniz"      # "called a synchronizing CUDA operation" (set_sync_debug_mode("warn"))

# mode -> (AMP dtype flag of src.training.loop, or None for float32; torch.compile)
MODES: dict[str, tuple[str | None, bool]] = {
    "fp32": (None, False), "fp16": ("fp16", False), "bf16": ("bf16", False),
    "compile": ("bf16", True), "compile-fp32": (None, True),
}
DEFAULT_MODES = ("fp32", "fp16", "bf16", "compile")


# ----------------------------------------------------------------------------- the five models

@dataclass
class Case:
    """One script's model: ``build(quick) -> (model, task, what the table says of its input)``,
    ``batch(task, n, generator) -> a collated training batch (CPU)`` of ``n`` samples (refdet: an
    episode, whose size is fixed), the script's default training batch and its loop settings."""
    script: str
    build: Callable[[bool], tuple[nn.Module, Task, str]]
    batch: Callable[[Task, int, torch.Generator], dict]
    train_batch: int = 32
    episode: bool = False        # the batch is an episode of fixed size: --batch-size does not apply
    loop: dict = field(default_factory=dict)      # TrainConfig overrides from the script's defaults


def _loop_defaults(script_defaults: dict) -> dict:
    """The script's defaults that change what a step costs (clipping, EMA)."""
    return {k: v for k, v in script_defaults.items() if k in ("clip_grad", "ema_decay")}


def classifier_case(name: str) -> Case:
    def build(quick: bool):
        size = 64 if quick else 224
        task = ClassificationTask([f"c{i}" for i in range(NUM_CLASSES)], size, {"model_name": name})
        return create_classifier(name, NUM_CLASSES), task, f"{size} px"

    def batch(task: Task, n: int, g: torch.Generator) -> dict:
        s = task.fps_image_size
        return {"image": torch.randn(n, 3, s, s, generator=g),
                "label": torch.randint(0, NUM_CLASSES, (n,), generator=g)}

    return Case(f"train_{name}.py", build, batch)


def build_ocr(quick: bool):
    vocab = Vocab(VIETOCR_VOCAB)
    size = "small" if quick else "full"
    model = build_vietocr("vgg_transformer", len(vocab), size)
    # the script's defaults (label smoothing 0.1, greedy decoding up to 128 tokens); --quick decodes 8
    task = OCRTask(vocab, {"model_name": f"vgg_transformer ({size})"}, max_decode_len=8 if quick else 128,
                   fps_width=160)
    return model, task, f"{IMAGE_HEIGHT}x160 lines, {size}"


def ocr_batch(task: OCRTask, n: int, g: torch.Generator) -> dict:
    """Lines of 32x160 with 12-24 characters (the first one 24: every batch has the same padded length,
    so a compiled step does not recompile for a new length)."""
    chars = task.vocab.chars
    longest = 24
    items = []
    for j in range(n):
        length = longest if j == 0 else int(torch.randint(longest // 2, longest + 1, (1,), generator=g))
        text = "".join(chars[int(i)] for i in torch.randint(0, len(chars), (length,), generator=g))
        items.append({"image": torch.rand(3, IMAGE_HEIGHT, 160, generator=g), "target": task.vocab.encode(text),
                      "text": text, "key": f"line{j}"})
    return collate_lines(items)


OVD_QUICK = dict(image_encoder="resnet18", feature_index=3, image_size=64, dim=32, text_layers=1, fusion_layers=1,
                 decoder_layers=1, num_queries=5)
CAPTION = "a man in a red shirt rides a brown horse".split()
PHRASES = ((0, 2), (7, 3))   # (start, count): "a man", "a brown horse"


def build_ovd(quick: bool):
    kwargs = OVD_QUICK if quick else {}
    model = build_grounding_model(**kwargs)       # the script's defaults: Swin-T, dim 256, 224 px, 20 queries
    size = kwargs.get("image_size", 224)
    encoder = kwargs.get("image_encoder", "swin_tiny_patch4_window7_224")
    config = {"image_size": size, "text_encoder": HASHED, "buckets": DEFAULT_BUCKETS, "model_name": f"ovd_{encoder}"}
    # the script's loss: focal 2, L1 5, GIoU 2 on every decoder layer (its flags' defaults)
    task = GroundingTask(config, GroundingCriterion(HungarianMatcher()), with_map=False)
    return model, task, f"{size} px, {encoder}"


def ovd_batch(task: GroundingTask, n: int, g: torch.Generator) -> dict:
    """Captions of 10 words with 2 phrases, 1-2 boxes per phrase, as GroundingDataset's items."""
    size = task.model_config["image_size"]
    items = []
    for j in range(n):
        per_phrase = torch.randint(1, 3, (len(PHRASES),), generator=g)
        phrase = torch.repeat_interleave(torch.arange(len(PHRASES)), per_phrase)
        centre = 0.25 + 0.5 * torch.rand(len(phrase), 2, generator=g)
        extent = 0.1 + 0.3 * torch.rand(len(phrase), 2, generator=g)
        items.append({"image": torch.randn(3, size, size, generator=g), "boxes": torch.cat([centre, extent], 1),
                      "box_phrase": phrase, "words": encode_words(CAPTION, task.model_config["buckets"]),
                      "spans": torch.tensor(PHRASES), "caption": " ".join(CAPTION),
                      "phrases": [" ".join(CAPTION[s:s + c]) for s, c in PHRASES], "image_id": str(j), "scale": 1.0,
                      "orig_size": (size, size)})
    return collate_grounding(items)


def build_refdet(quick: bool):
    if quick:
        image, support, kwargs = 64, 32, dict(freeze_dino_layers=12, embed_dim=16)
    else:    # the script's stage-2 defaults (refdet_args.STAGES[2], --support-cache-size-mb 200)
        image, support = 640, 224
        kwargs = dict(freeze_dino_layers=refdet_args.STAGES[2]["freeze_dino_layers"], support_cache_mb=200.0)
    model = build_refdet_model(support_size=support, **kwargs)
    task = RefDetTask({"image_size": image, "support_size": support, "model_name": "yolov8n_refdet"},
                      RefDetCriterion(), swap_negatives=True)
    return model, task, f"{image} px frames, {support} px references"


def refdet_batch(task: RefDetTask, n: int, g: torch.Generator) -> dict:
    """One episode as ``collate_episode`` makes it: 2 videos, each ``n // 2 - 1`` annotated frames and a
    background frame (``n`` = 10: the script's --n-way 2 --n-query 4 --n-background 1), 3 references
    per video; ``n`` = 2 gives one annotated frame per video."""
    size, support = task.model_config["image_size"], task.model_config["support_size"]
    per_video = max(1, n // 2)
    items = []
    for v in range(2):
        for f in range(per_video):
            annotated = per_video == 1 or f < per_video - 1
            xy = size * (0.2 + 0.5 * torch.rand(2, generator=g))
            wh = size * (0.05 + 0.15 * torch.rand(2, generator=g))
            boxes = torch.cat([xy, xy + wh])[None] if annotated else torch.zeros(0, 4)
            item = {"image": torch.randn(3, size, size, generator=g), "boxes": boxes, "slot": v, "key": f"v{v}/{f}"}
            if f == 0:
                item.update(support=torch.randn(K_SUPPORT, 3, support, support, generator=g), support_key=f"v{v}@0")
            items.append(item)
    return collate_episode(items)


CASES: dict[str, Case] = {
    "MobileNetV3_Small_BoT_Linear": classifier_case("MobileNetV3_Small_BoT_Linear"),
    "ResNet18_Hybrid": classifier_case("ResNet18_Hybrid"),
    "vietocr": Case("train_vietocr.py", build_ocr, ocr_batch, loop=_loop_defaults(ocr_task.SCRIPT_DEFAULTS)),
    "ovd": Case("train_ovd.py", build_ovd, ovd_batch, loop=_loop_defaults(ovd_task.SCRIPT_DEFAULTS)),
    "yolov8n_refdet": Case("train_yolov8n_refdet.py", build_refdet, refdet_batch, train_batch=10,
                           episode=True, loop=_loop_defaults(refdet_args.SCRIPT_DEFAULTS)),
}


# ----------------------------------------------------------------------------- one cell

@dataclass
class Cell:
    model: str
    mode: str
    batch: int = 0
    input: str = ""
    samples_per_s: float | None = None
    syncs_per_step: float | str | None = None
    compile_s: float | None = None
    fps: float | None = None
    latency_ms: float | None = None
    train_peak_mib: float | None = None
    infer_peak_mib: float | None = None
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:200]


def _peak_reset(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak_mib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2 ** 20 if device.type == "cuda" else None


def train_steps(cell: Cell, model: nn.Module, task: Task, case: Case, amp: str | None, compiled: bool,
                args, device: torch.device) -> None:
    """Warm-up, then the timed steps through the engine's epoch loop (sync-counted on CUDA)."""
    g = torch.Generator().manual_seed(0)
    batch_size = 2 if args.quick else case.train_batch if args.batch_size is None or case.episode else args.batch_size
    distinct = [to_device(case.batch(task, batch_size, g), device) for _ in range(2)]
    cell.batch = int(next(v for k, v in distinct[0].items() if k in ("image", "images")).shape[0])
    cfg = TrainConfig(epochs=1, patience=0, amp=amp is not None, amp_dtype=amp or "fp16", **case.loop)
    autocast, _, scaler = autocast_factory(device, cfg.amp, cfg.amp_dtype)
    state = _new_state(model, task, args.warmup + args.steps, cfg, scaler)
    train_model = torch.compile(model) if compiled else model
    _peak_reset(device)
    t0 = time.perf_counter()
    _train_one_epoch(train_model, task, [distinct[i % 2] for i in range(args.warmup)], state, autocast, cfg, device,
                     D.DistInfo(), 1)
    sync(device)
    if compiled:
        cell.compile_s = time.perf_counter() - t0
    timed = [distinct[i % 2] for i in range(args.steps)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t0 = time.perf_counter()
        if device.type == "cuda":
            torch.cuda.set_sync_debug_mode("warn")
        try:
            stats = _train_one_epoch(train_model, task, timed, state, autocast, cfg, device, D.DistInfo(), 2)
        finally:
            if device.type == "cuda":
                torch.cuda.set_sync_debug_mode(0)
        sync(device)
        elapsed = time.perf_counter() - t0
    cell.samples_per_s = stats["samples"] / elapsed
    cell.train_peak_mib = _peak_mib(device)
    if device.type == "cuda":
        cell.syncs_per_step = sum(SYNC_WARNING in str(w.message) for w in caught) / args.steps
    else:
        cell.syncs_per_step = "n/a (CPU)"


def inference(cell: Cell, model: nn.Module, task: Task, amp: str | None, compiled: bool, args,
              device: torch.device) -> None:
    """FPS at ``--infer-batch`` and latency at batch 1 (``measure_speed``), after compiling under compile."""
    _, dtype, _ = autocast_factory(device, amp is not None, amp or "fp16")
    module = task.speed_module(model)
    gc.collect()     # the training's optimizer state and batches are gone: the peak is the inference's
    make_input = lambda b: task.example_input(b, device)    # noqa: E731
    _peak_reset(device)
    if compiled:
        # one untimed measurement compiles every graph the timed one runs: both batch sizes and, for
        # OCR's decoding, the lengths that make Dynamo mark the KV cache's length dynamic
        module = torch.compile(module)
        t0 = time.perf_counter()
        measure_speed(module, make_input, device, dtype, args.infer_batch, min(args.min_time, 0.2))
        cell.compile_s = (cell.compile_s or 0.0) + time.perf_counter() - t0
    speed = measure_speed(module, make_input, device, dtype, args.infer_batch, args.min_time)
    cell.fps, cell.latency_ms = speed["fps"], speed["latency_ms"]
    cell.infer_peak_mib = _peak_mib(device)


def run_cell(name: str, mode: str, args, device: torch.device) -> Cell:
    cell = Cell(name, mode)
    amp, compiled = MODES[mode]
    case = CASES[name]
    t0 = time.perf_counter()
    model = task = None
    try:
        if amp == "fp16" and device.type != "cuda":
            raise DataError("AMP fp16 (with a GradScaler) needs CUDA; on a CPU autocast is bf16")
        torch.manual_seed(0)
        model, task, cell.input = case.build(args.quick)
        model.to(device)
    except Exception as exc:      # noqa: BLE001 - a failing cell is reported, the others still run
        cell.errors.append(one_line(exc))
    if not cell.errors:
        for part, fn in (("train", train_steps), ("inference", inference)):
            try:
                if part == "train":
                    fn(cell, model, task, case, amp, compiled, args, device)
                else:
                    fn(cell, model, task, amp, compiled, args, device)
            except Exception as exc:  # noqa: BLE001
                if device.type == "cuda":
                    torch.cuda.set_sync_debug_mode(0)
                cell.errors.append(f"{part}: {one_line(exc)}")
    del model, task
    gc.collect()
    if compiled:
        torch._dynamo.reset()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    cell.seconds = time.perf_counter() - t0
    return cell


# ----------------------------------------------------------------------------- the table

def _num(value, fmt: str) -> str:
    if value is None:
        return "-"
    return value if isinstance(value, str) else format(value, fmt)


def table(cells: list[Cell], args, device: torch.device, per_model: dict[str, float], total_s: float) -> str:
    cuda = device.type == "cuda"
    versions = f"torch {torch.__version__}, timm {timm.__version__}, Python {platform.python_version()}"
    if cuda:
        versions += f", CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}"
    lines = [f"# gpu_check: {device_name(device)}; {versions}" + (" (QUICK smoke-test sizes, not for the docs)"
                                                                  if args.quick else ""),
             "", f"command: {command_line('bench.gpu_check')}", "",
             f"{args.warmup} warm-up + {args.steps} timed training steps per cell; inference FPS at batch "
             f"{args.infer_batch}, latency at batch 1; float32 matmul precision "
             f"`{torch.get_float32_matmul_precision()}`, cuDNN TF32 {torch.backends.cudnn.allow_tf32}; "
             f"{torch.get_num_threads()} CPU threads", "",
             f"| model | mode | input | train batch | train samples/s | syncs/step | compile s | "
             f"FPS (batch {args.infer_batch}) | latency ms (batch 1) | train peak MiB | inference peak MiB | cell s | "
             f"error |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in cells:
        err = "; ".join(c.errors).replace("|", "/") or ""
        lines.append(f"| {c.model} | {c.mode} | {c.input or '-'} | {c.batch or '-'} | {_num(c.samples_per_s, '.1f')} | "
                     f"{_num(c.syncs_per_step, '.1f')} | {_num(c.compile_s, '.1f')} | {_num(c.fps, '.1f')} | "
                     f"{_num(c.latency_ms, '.2f')} | {_num(c.train_peak_mib, '.0f')} | "
                     f"{_num(c.infer_peak_mib, '.0f')} | "
                     f"{c.seconds:.1f} | {err} |")
    lines += ["", "notes:",
              "- modes: fp32 = float32; fp16 = autocast float16 with a GradScaler; bf16 = autocast bfloat16; "
              "compile = torch.compile (default mode) of the model (training) and of the speed module (inference) "
              "with autocast bfloat16; compile-fp32 = the same in float32",
              "- training: the engine's epoch loop (src.training.loop) on synthetic batches of the data layer's "
              "collate functions, loss = the task's training_step; the scripts' clipping and EMA; refdet's batch "
              "is an episode (2 videos x (4 annotated + 1 background) frames, each frame also meets the other "
              "video's references: swapped negatives)",
              "- syncs/step: 'synchronizing CUDA operation' warnings of torch.cuda.set_sync_debug_mode('warn') "
              "during the timed steps / steps (the loop's non-finite guard and loss logging are 2 of them)",
              "- FPS: src.training.perf.measure_speed on the task's speed module (OCR: lines/s of encoding + greedy "
              "decoding up to the max decode length; refdet: frames/s with one video's support encoded once)",
              f"- seed claims, not measured here: {SEED_CLAIMS}",
              "- time per model: " + ", ".join(f"{k} {v:.0f} s" for k, v in per_model.items()) +
              f"; whole run {total_s:.0f} s"]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- main

def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.gpu_check", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--models", nargs="+", choices=list(CASES), default=None, help="default: all five")
    p.add_argument("--modes", nargs="+", choices=list(MODES), default=None,
                   help=f"default: {' '.join(DEFAULT_MODES)} (--quick: fp32)")
    p.add_argument("--steps", type=int, default=None, help="timed training steps per cell (default 30; --quick 2)")
    p.add_argument("--warmup", type=int, default=None, help="untimed training steps first (default 3; --quick 1)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="training batch (default: the script's, 32; refdet: its episode of 10 frames)")
    p.add_argument("--infer-batch", type=int, default=None, help="FPS batch (default 16; --quick 2)")
    p.add_argument("--min-time", type=float, default=None,
                   help="seconds of each FPS measurement, half for latency (default 1.0; --quick 0.02)")
    p.add_argument("--budget-s", type=float, default=420.0,
                   help="skip a cell when one as long as the longest earlier cell of its mode (a mode's first "
                        "cell: of the mode before) would end past this many seconds")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--quick", action="store_true",
                   help="smoke test (CPU): small model variants, 64 px, batch 2, 2 steps, fp32")
    p.add_argument("--out", default=None, metavar="FILE.md", help="also write the table here")
    args = p.parse_args(argv)
    quick = dict(steps=2, warmup=1, infer_batch=2, min_time=0.02) if args.quick else \
        dict(steps=30, warmup=3, infer_batch=16, min_time=1.0)
    for k, v in quick.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if min(args.steps, args.warmup, args.infer_batch) < 1 or (args.batch_size is not None and args.batch_size < 2):
        p.error("--steps, --warmup and --infer-batch must be >= 1, --batch-size >= 2")
    models = args.models or list(CASES)
    modes = args.modes or (["fp32"] if args.quick else list(DEFAULT_MODES))
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        device = D.resolve_device(args.device)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    set_determinism(False)     # what fit does: cuDNN autotuning on
    start = time.perf_counter()
    cells: list[Cell] = []
    per_model = {m: 0.0 for m in models}
    longest = 0.0              # the longest cell of the mode running (at a mode's first cell: of the mode before)
    for mode in modes:         # every model's fp32 first: the budget cuts the later modes, not the baseline
        started = False
        for name in models:
            elapsed = time.perf_counter() - start
            if elapsed + longest > args.budget_s:
                cell = Cell(name, mode, errors=[f"skipped: --budget-s {args.budget_s:g} (at {elapsed:.0f} s)"])
            else:
                cell = run_cell(name, mode, args, device)
                longest = cell.seconds if not started else max(longest, cell.seconds)
                started = True
            cells.append(cell)
            per_model[name] += cell.seconds
            print(f"{name} {mode}: {cell.seconds:.1f} s" + (f" ({'; '.join(cell.errors)})" if cell.errors else ""),
                  file=sys.stderr, flush=True)
    text = table(cells, args, device, per_model, time.perf_counter() - start)
    emit(text, args.out)
    failed = [c for c in cells if c.mode == "fp32" and c.errors and not c.errors[0].startswith("skipped")]
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
