"""Shared command-line flags for the five training scripts.

Every flag is registered under its dash spelling (``--base-lr``) and its underscore spelling
(``--base_lr``) because the seed documents use both. Scripts compose the groups they need into one
parser; ``args`` then stop at the ``build_*`` functions.
"""
from __future__ import annotations

import argparse
from typing import Any, Callable, Sequence

from src.errors import DataError, TrainingError


def add_flag(parser: argparse._ActionsContainer, name: str, **kwargs: Any) -> argparse.Action:
    """Add ``--some-flag`` together with its ``--some_flag`` alias."""
    names = [name]
    alias = "--" + name[2:].replace("-", "_")
    if alias != name:
        names.append(alias)
    return parser.add_argument(*names, **kwargs)


def add_switch(parser: argparse._ActionsContainer, name: str, default: bool | None, help: str) -> None:
    """An on/off switch: ``--flag`` / ``--no-flag``, each also spelled with underscores
    (``--no_aux_loss``), as the seed recipes write them."""
    dest = name[2:].replace("-", "_")
    add_flag(parser, name, dest=dest, action="store_true", default=default, help=f"{help}; --no-{name[2:]} turns it off")
    offs = dict.fromkeys(["--no-" + name[2:], "--no_" + dest, "--no-" + dest])    # argparse's own --no-x_y too
    parser.add_argument(*offs, dest=dest, action="store_false", help=argparse.SUPPRESS)


def add_training_args(parser: argparse.ArgumentParser) -> None:
    """Flags that the shared loop (``src.training.fit``) understands."""
    g = parser.add_argument_group("training")
    add_flag(g, "--epochs", type=int, default=30, help="number of epochs")
    add_flag(g, "--batch-size", type=int, default=32, help="samples per step (per process under torchrun)")
    add_flag(g, "--base-lr", type=float, default=5e-5, help="learning rate of pretrained backbone weights")
    add_flag(g, "--head-lr", type=float, default=5e-4,
             help="learning rate of new parts (attention blocks, heads, fusion)")
    add_flag(g, "--weight-decay", type=float, default=1e-2, help="AdamW weight decay (never on norms/biases)")
    add_flag(g, "--scheduler", choices=["cosine", "onecycle", "none"], default="cosine")
    add_flag(g, "--scheduler-tmax", type=int, default=None,
             help="cosine period in epochs (default: --epochs)")
    add_flag(g, "--warmup-epochs", type=float, default=0.0, help="linear warm-up length in epochs")
    add_flag(g, "--patience", type=int, default=10, help="early-stopping patience in epochs; <= 0 disables")
    add_flag(g, "--grad-accum", type=int, default=1, help="accumulate gradients over N steps")
    add_flag(g, "--clip-grad", type=float, default=None, help="clip gradient norm to this value")
    add_flag(g, "--ema-decay", type=float, default=None,
             help="evaluate and save an exponential moving average of the weights with this decay "
                  "(e.g. 0.9999; warmed up from 0, so short runs average recent steps); default off")
    add_flag(g, "--val-every", type=_positive_int, default=1, metavar="N",
             help="validate every N epochs (and after the last one); patience still counts epochs")
    add_flag(g, "--limit-val-batches", type=batches_or_fraction, default=None, metavar="N|FRACTION",
             help="per-epoch validation on N batches or a fraction (0.3); final metrics use the whole split")
    add_flag(g, "--max-bad-steps", type=int, default=10,
             help="stop after this many non-finite losses in a row")
    add_switch(g, "--amp", None, "mixed precision (default: on for CUDA, off on CPU)")
    add_flag(g, "--amp-dtype", choices=["fp16", "bf16"], default="fp16")
    add_flag(g, "--compile", action="store_true", help="torch.compile the model")
    add_flag(g, "--channels-last", action="store_true", help="NHWC memory format")
    add_flag(g, "--sync-bn", action="store_true",
             help="under torchrun on GPUs, SyncBatchNorm (statistics over the global batch); without it every "
                  "rank validates rank 0's BatchNorm statistics")
    add_flag(g, "--seed", type=int, default=42)
    add_flag(g, "--deterministic", action="store_true",
             help="deterministic algorithms (slower; cuDNN benchmark off)")
    add_flag(g, "--resume", default=None, metavar="PATH",
             help="continue a run: its last.pt or its run directory")


def _positive_int(value: str) -> int:
    n = int(value)
    if n < 1:
        raise argparse.ArgumentTypeError("must be >= 1")
    return n


def batches_or_fraction(value: str) -> float | int:
    """``--limit-val-batches``: a count of batches (``20``) or a fraction of them (``0.3``)."""
    v = float(value)
    if v <= 0:
        raise argparse.ArgumentTypeError("must be > 0")
    return v if v <= 1 and "." in value else int(v)


def key_value(text: str) -> tuple[str, int | float | str]:
    """``KEY=VALUE`` (as timm's ``--model-kwargs``); the value as an int, a float or else a string."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    for kind in (int, float):
        try:
            return key, kind(value)
        except ValueError:
            pass
    return key, value


def add_data_args(parser: argparse.ArgumentParser) -> None:
    """Loader flags common to every data format."""
    g = parser.add_argument_group("data loading")
    add_flag(g, "--num-workers", type=int, default=4,
             help="DataLoader worker processes (an untyped default is capped at the CPUs this process may use)")
    add_flag(g, "--threads", type=_positive_int, default=None,
             help="PyTorch's CPU threads (default: this machine's CPUs shared by its ranks; PyTorch's own "
                  "choice when OMP_NUM_THREADS is set)")
    add_switch(g, "--pin-memory", None, "page-locked host batches, copied to the GPU without blocking (default: on "
               "when the run uses CUDA)")
    add_flag(g, "--train-limit", type=int, default=None,
             help="use the first N training samples after a seeded (stratified) shuffle")
    add_flag(g, "--valid-limit", type=int, default=None, help="same for validation")
    add_flag(g, "--demo", action="store_true",
             help="generate a small synthetic dataset in the real format (once) and train on it")


def add_output_args(parser: argparse.ArgumentParser, model_name: str) -> None:
    g = parser.add_argument_group("output")
    add_flag(g, "--model-name", default=None,
             help=f"run name prefix (default: the model, e.g. {model_name})")
    add_flag(g, "--results-dir", default="results", help="folder that holds run directories")
    add_flag(g, "--plot", action="store_true",
             help="also show the training plot when a display exists (the PNG is always written)")
    add_switch(g, "--tensorboard", False, "also write TensorBoard event files into the run directory (epoch "
               "figures, the training loss every --tensorboard-every steps, sample predictions per epoch)")
    add_flag(g, "--tensorboard-every", type=_positive_int, default=50, metavar="STEPS",
             help="optimizer steps between the step scalars of --tensorboard")
    add_flag(g, "--save-history", action="store_true",
             help="accepted for the seed recipes: history.json and metrics.json are always written")
    add_flag(g, "--device", default="auto", help="auto, cpu, cuda or cuda:N")
    e = parser.add_argument_group("evaluate")
    add_flag(e, "--evaluate", action="store_true",
             help="score --weights on --split of the data the flags give (the checkpoint's saved arguments build "
                  "the model; typed flags win) and write metrics.json into a new run directory")
    add_flag(e, "--split", default="valid", help="which split --evaluate scores (valid, test, or a test split name)")


def parse_with_demo_defaults(parser: argparse.ArgumentParser, argv: Sequence[str] | None,
                             demo_defaults: dict[str, Any] | Callable[[argparse.Namespace], dict[str, Any]]
                             ) -> argparse.Namespace:
    """Parse ``argv``; under ``--demo`` the demo's defaults replace the normal ones.

    ``demo_defaults`` may be a function of the first parse (e.g. to depend on ``--model``). Flags
    the user typed still win, because argparse only uses defaults for flags that are absent.
    """
    args = parser.parse_args(argv)
    if args.demo:
        parser.set_defaults(**(demo_defaults(args) if callable(demo_defaults) else demo_defaults))
        args = parser.parse_args(argv)
    return args


def parse_script_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None,
                      demo_defaults) -> argparse.Namespace:
    """What every script parses: ``--demo`` defaults (:func:`parse_with_demo_defaults`), then under
    ``--resume`` the run's saved arguments (:func:`restore_resumed_args`); typed flags win throughout."""
    args = parse_with_demo_defaults(parser, argv, demo_defaults)
    if args.resume:
        args = restore_resumed_args(parser, argv, args)
    if getattr(args, "evaluate", False):
        args = restore_evaluated_args(parser, argv, args)
    if "num_workers" in vars(args) and args.num_workers > available_cpus() and "num_workers" not in \
            explicit_args(parser, argv):
        # more workers than cores only adds start-up and contention (PyTorch warns about it)
        args = with_values(args, num_workers=available_cpus())
    if "pin_memory" in vars(args) and args.pin_memory is None:     # on for CUDA runs unless switched off
        args = with_values(args, pin_memory=_uses_cuda(args.device))
    if getattr(args, "save_history", False):
        notice("--save-history is accepted for the seed's recipes and does nothing here: history.json and "
               "metrics.json are always written")
    if getattr(args, "sync_bn", False) and not _uses_cuda(args.device):
        parser.error("--sync-bn needs CUDA devices (SyncBatchNorm); on CPUs every rank validates rank 0's "
                     "BatchNorm statistics without it")
    return args


def available_cpus() -> int:
    """CPUs this process may run on (:func:`src.training.run.available_cpus`)."""
    from src.training.run import available_cpus as cpus
    return cpus()


def _uses_cuda(device: str) -> bool:
    import torch
    return device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())


def with_values(args: argparse.Namespace, **values: Any) -> argparse.Namespace:
    """A copy of ``args`` with ``values`` set: parsing resolves derived values (demo data paths, seed
    flags) into a new namespace, and nothing changes ``args`` after parsing."""
    return argparse.Namespace(**{**vars(args), **values})


def set_default_lrs(parser: argparse.ArgumentParser, argv: Sequence[str] | None, args: argparse.Namespace,
                    base_lr: float, head_lr: float) -> argparse.Namespace:
    """Scripts with a single ``--lr``: ``--base-lr``/``--head-lr`` follow it unless typed explicitly
    (a new namespace; ``args`` is left as it is)."""
    typed = explicit_args(parser, argv)
    return with_values(args, **{k: v for k, v in (("base_lr", base_lr), ("head_lr", head_lr)) if k not in typed})


def explicit_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> dict[str, Any]:
    """Only the flags actually typed in ``argv`` (defaults suppressed)."""
    import copy
    quiet = copy.deepcopy(parser)
    for action in quiet._actions:
        action.default = argparse.SUPPRESS
    quiet._defaults.clear()  # set_defaults() values would otherwise look typed
    return vars(quiet.parse_args(argv))


# what a resumed run may change: how long and where it runs, and where its data now lives. Every other
# argument shapes the model, the data or the optimization, and must stay what the run started with.
RESUMABLE = frozenset({
    "resume", "epochs", "patience", "max_bad_steps", "device", "num_workers", "threads", "pin_memory", "compile", "plot",
    "save_history", "limit_val_batches", "val_every", "tensorboard", "tensorboard_every", "results_dir", "demo_dir", "data_root", "metadata", "label2id",
    "train_annotation", "valid_annotation", "test_annotation", "lmdb_dir", "annotations", "frame_cache",
    "test_data_root", "test_annotations", "frame_cache_size", "support_cache_size_mb"})


def restore_resumed_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None,
                         args: argparse.Namespace) -> argparse.Namespace:
    """Under ``--resume`` the run's saved arguments come back; flags typed now still win where a
    resumed run may change them (:data:`RESUMABLE`, e.g. ``--epochs 40`` to extend a finished run). A
    typed flag that would change the model, the data or the optimization stops with one line naming it
    (exit 2), before anything is written. ``args.resume`` becomes the ``last.pt`` path."""
    import os
    from src.training.checkpoint import load_checkpoint

    path = args.resume
    if os.path.isdir(path):
        path = os.path.join(path, "last.pt")
    saved = load_checkpoint(path).get("args") or {}
    typed = explicit_args(parser, argv)
    conflicts = [f"--{k.replace('_', '-')} {typed[k]!r} (the run has {saved[k]!r})" for k in sorted(typed)
                 if k in saved and k not in RESUMABLE and typed[k] != saved[k]]
    if conflicts:
        raise DataError(f"{path}: a resumed run keeps the arguments it started with; these differ: "
                        f"{', '.join(conflicts)}. Start a new run for them", param="resume")
    merged = {**vars(args), **saved, **typed}
    merged["resume"] = path
    return argparse.Namespace(**merged)


def notice(line: str, kind: str = "notice") -> None:
    """A ``notice:`` (or ``warning:``) line for the user before logging starts (a flag that does nothing
    here, config keys not used), written once: by rank 0 under torchrun."""
    import os
    if os.environ.get("RANK", "0") == "0":
        _say(f"{kind}: {line}")


# arguments that fetch starting weights: an evaluation takes every weight from its checkpoint
STARTING_WEIGHTS = {"pretrained": False, "pretrained_weights": None, "init_from": None, "detector_weights": None}


def restore_evaluated_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None,
                           args: argparse.Namespace) -> argparse.Namespace:
    """``--evaluate --weights CKPT``: the checkpoint's saved arguments come back, so the task, data and
    model are built as the training run built them; flags typed now win (another data root, split, beam
    size). Nothing downloads or loads starting weights (:data:`STARTING_WEIGHTS`)."""
    if not getattr(args, "weights", None):
        raise DataError("--evaluate needs --weights RUN/best_model.pt", param="weights")
    from src.training.checkpoint import torch_load_file
    ckpt = torch_load_file(args.weights)
    # another tool's weights file (VietOCR's state dict) has no saved arguments: the flags build the model
    saved = (ckpt.get("args") or {}) if isinstance(ckpt, dict) and "model" in ckpt else {}
    typed = explicit_args(parser, argv)
    merged = {**vars(args), **{k: v for k, v in saved.items() if k in vars(args)}, **typed}
    merged.update({k: v for k, v in STARTING_WEIGHTS.items() if k in merged})
    merged.update(resume=None, evaluate=True, weights=args.weights, demo=False)
    return argparse.Namespace(**merged)


def _say(line: str) -> None:
    """One line on stderr in one write: under torchrun the ranks share the stream, and print()'s
    separate newline lets their lines interleave."""
    import sys
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def run_main(main, argv: Sequence[str] | None = None) -> int:
    """Call ``main(argv)``; whole-input errors become one line on stderr and exit code 2."""
    try:
        return int(main(argv) or 0)
    except DataError as exc:
        flag = f"--{exc.param.replace('_', '-')}: " if exc.param else ""
        _say(f"error: {flag}{exc}")
        return 2
    except TrainingError as exc:
        _say(f"error: {exc}")
        return 1
    except KeyboardInterrupt:
        _say("interrupted: last.pt holds the last finished epoch; continue with --resume RUN_DIR")
        return 130
