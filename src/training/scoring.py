"""``--evaluate``: score a checkpoint on one split of a dataset in the script's format, with the metric code
of the training run's final evaluation, and write the figures into a new run directory (never into the
training run's). The script builds task, data and model exactly as for training, from the checkpoint's
saved arguments (:func:`src.cli.restore_evaluated_args`), then calls :func:`evaluate_checkpoint`."""
from __future__ import annotations

import json
import logging
import os
import sys
from typing import Any, Callable, Mapping

from torch import nn

from src.errors import DataError
from src.training.checkpoint import atomic_json_dump, load_checkpoint
from src.training.evaluate import evaluate, gathered_warnings
from src.training.loop import autocast_factory
from src.training.run import Run
from src.training.task import Task

log = logging.getLogger("src")


def load_weights(model: nn.Module, task: Task, weights: str) -> int | None:
    """This project's checkpoint into ``model``; its epoch."""
    ckpt = load_checkpoint(weights)
    if ckpt.get("task") not in (None, task.name):
        raise DataError(f"{weights}: a {ckpt.get('task')} checkpoint, not a {task.name} one", param="weights")
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as exc:
        raise DataError(f"{weights}: does not fit the model its arguments build ({str(exc).splitlines()[0]})",
                        param="weights") from None
    return ckpt.get("epoch")


def evaluate_checkpoint(model: nn.Module, task: Task, loaders: Mapping[str, Any], split: str, weights: str,
                        run: Run, results_dir: str, name: str, args_record: dict,
                        amp: bool | None = None, amp_dtype: str = "fp16",
                        loader: Callable[[nn.Module, Task, str], int | None] = load_weights) -> dict[str, Any]:
    """Load ``weights`` into ``model`` (``loader``: :func:`load_weights`, or a task's own for another
    tool's files), evaluate ``loaders[split]``, write ``metrics.json`` (figures as ``<split>_<metric>``,
    the checkpoint, its epoch, the data warnings) in a new run directory named
    ``<name>_eval_<split>_<date>``, print it as JSON on stdout (rank 0) and return it."""
    splits = [s for s in loaders if s != "train"]
    if split == "train":
        raise DataError("the training split is read with augmentation (and, for refdet, as episodes); score "
                        f"{' or '.join(splits)}, or give the training data as a test split", param="split")
    if split not in loaders:
        raise DataError(f"no split {split!r} here; the data flags give: {', '.join(splits)}", param="split")
    epoch = loader(model, task, weights)
    model.to(run.device)
    run.open_dir(results_dir, f"{name}_eval_{split}", None, args_record)
    autocast = autocast_factory(run.device, amp, amp_dtype)[0]
    figures = evaluate(model, task, loaders[split], run.device, split, autocast)
    warnings = gathered_warnings(task)
    metrics = {"model_name": task.model_config.get("model_name", task.name), "task": task.name, "split": split,
               "weights": os.path.abspath(weights), "weights_epoch": epoch,
               **{f"{split}_{k}": v for k, v in figures.items()}, **task.summary(),
               "data_warnings": warnings.counts()}
    if run.is_main:
        atomic_json_dump(metrics, os.path.join(run.dir, "metrics.json"))
        task.final_artifacts(model, run.dir, run.device)
        log.info("evaluated %s on %s: %s; run dir %s", weights, split,
                 " ".join(f"{k}={v:.4f}" for k, v in metrics.items() if k.startswith(f"{split}_")
                          and isinstance(v, float)), run.dir)
        sys.stdout.write(json.dumps(metrics, indent=1, ensure_ascii=False) + "\n")
    return metrics
