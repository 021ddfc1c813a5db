"""``train_vietocr.py --config FILE.yml``: a VietOCR config file read as this script's defaults.

VietOCR (https://github.com/pbcquoc/vietocr) configures a run with ``config/base.yml`` merged with a model
file such as ``config/vgg-transformer.yml``; users keep their own copy of the merged dict (``Cfg.save``) or
of one of the two files. Every key of that schema maps to one of this script's flags
(:data:`FLAT_KEYS`, :func:`_structural`); keys that mean nothing here are named in one warning line
(:data:`NOT_USED`), and unknown keys too, never dropped in silence. Flags typed on the command line win
over the file, as with the ``--demo`` defaults.
"""
from __future__ import annotations

import logging
import math
import os
from typing import Any

from src.data.ocr import IMAGE_HEIGHT, VIETOCR_VOCAB
from src.errors import DataError
from src.models.vietocr import MODEL_KWARGS, POOL_SIZES

# VietOCR key (dotted) -> (flag dest, conversion)
FLAT_KEYS = {
    "device": ("device", str),
    "optimizer.max_lr": ("lr", float),
    "optimizer.pct_start": ("pct_start", float),
    "trainer.batch_size": ("batch_size", int),
    "trainer.iters": ("iters", int),
    "trainer.valid_every": ("valid_every", int),
    "dataset.data_root": ("data_root", str),
    "dataset.train_annotation": ("train_annotation", str),
    "dataset.valid_annotation": ("valid_annotation", str),
    "dataset.image_min_width": ("image_min_width", int),
    "dataset.image_max_width": ("image_max_width", int),
    "dataloader.num_workers": ("num_workers", int),
    "dataloader.pin_memory": ("pin_memory", bool),
    "aug.image_aug": ("augment", bool),
    "aug.masked_language_model": ("masked_lm", lambda on: 0.05 if on else 0.0),   # VietOCR masks 5%
    "predictor.beamsearch": ("beam_size", lambda on: 4 if on else 1),             # translate_beam_search's 4
    "cnn.pretrained": ("pretrained", bool),
}
# keys that configure what this project does its own way, and why they are not needed
NOT_USED = {
    "trainer.print_every": "the progress bar and the per-epoch log replace it",
    "trainer.export": "best_model.pt is written in the run directory",
    "trainer.checkpoint": "last.pt is written in the run directory",
    "trainer.log": "train.log is written in the run directory",
    "dataset.name": "LMDB caches are named by their content",
    "quiet": "progress bars follow the terminal",
    "pretrain": "a download (nothing downloads here): fetch the file and pass --init-from FILE",
    "weights": "a download (nothing downloads here): fetch the file and pass --weights FILE",
}
VIETOCR_DEFAULTS = {"d_model": 256, "nhead": 8, "num_encoder_layers": 6, "num_decoder_layers": 6,
                    "dim_feedforward": 2048, "max_seq_length": 1024, "pos_dropout": 0.1, "trans_dropout": 0.1,
                    "encoder_hidden": 256, "decoder_hidden": 256, "img_channel": 256, "decoder_embedded": 256,
                    "dropout": 0.1}
log = logging.getLogger("src")
ARCHS = {"transformer": "vgg_transformer", "seq2seq": "vgg_seq2seq"}


def read_vietocr_config(path: str) -> tuple[dict[str, Any], list[str]]:
    """(flag defaults, lines about the keys not used) from a VietOCR yml file."""
    import yaml

    if not os.path.isfile(path):
        raise DataError(f"{path}: config file not found", param="config")
    try:
        with open(path, encoding="utf-8") as f:
            raw = yaml.safe_load(f) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else path
        raise DataError(f"{where}: not a valid YAML file ({getattr(exc, 'problem', None) or exc})",
                        param="config") from None
    except UnicodeDecodeError:
        raise DataError(f"{path}: not UTF-8 text", param="config") from None
    if not isinstance(raw, dict):
        raise DataError(f"{path}: expected a mapping of VietOCR settings, found {type(raw).__name__}",
                        param="config")
    flat = _flatten(raw)
    out: dict[str, Any] = {}
    for key, (dest, convert) in FLAT_KEYS.items():
        if key in flat and flat[key] is not None:
            out[dest] = convert(flat.pop(key))
    out.update(_structural(path, flat, out.get("batch_size", 32)))
    unused = [f"{k} ({NOT_USED[k]})" for k in NOT_USED if k in flat]
    unknown = sorted(k for k in flat if k not in NOT_USED)
    notes = []
    if unused or unknown:
        notes.append(f"{path}: settings not used here: " + "; ".join(unused + [f"{k} (unknown key)" for k in unknown]))
    return out, notes


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        # the model sections and pretrain (a dict of download details) are read whole
        if isinstance(v, dict) and key not in ("transformer", "pretrain"):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _structural(path: str, flat: dict[str, Any], batch_size: int) -> dict[str, Any]:
    """The keys that choose the architecture, vocabulary and starting weights (popped from ``flat``)."""
    out: dict[str, Any] = {}
    seq = flat.pop("seq_modeling", "transformer")
    if seq not in ARCHS:
        raise DataError(f"{path}: seq_modeling {seq!r} is not built here; choose from: {', '.join(ARCHS)}",
                        param="config")
    out["arch"] = arch = ARCHS[seq]
    backbone = flat.pop("backbone", "vgg19_bn")
    if backbone != "vgg19_bn":
        raise DataError(f"{path}: backbone {backbone!r} is not built here (only vgg19_bn)", param="config")
    vocab = flat.pop("vocab", None)
    if vocab is not None and vocab != VIETOCR_VOCAB:
        out["vocab_chars"] = str(vocab)
    height = flat.pop("dataset.image_height", IMAGE_HEIGHT)
    if height != IMAGE_HEIGHT:
        raise DataError(f"{path}: dataset.image_height {height}: the VGG CNN here reads {IMAGE_HEIGHT}-pixel lines "
                        f"(VietOCR's default)", param="config")
    kwargs = _model_kwargs(path, arch, flat.pop("transformer", None) or {})
    if kwargs:
        out["model_kwargs"] = kwargs
    _check_cnn(path, arch, flat, {**VIETOCR_DEFAULTS, **kwargs})
    for key, dest in (("pretrain", "init_from"), ("weights", "weights")):
        local = _local_file(flat.get(key))
        if local:
            out[dest] = local
            flat.pop(key)
    metrics = flat.pop("trainer.metrics", None)
    if metrics:   # lines VietOCR decodes per validation -> batches
        out["limit_val_batches"] = max(1, math.ceil(int(metrics) / batch_size))
    return out


def _model_kwargs(path: str, arch: str, section: dict) -> dict[str, Any]:
    """The ``transformer:`` section's values that differ from VietOCR's own (so a stock config builds
    the stock model, and ``--model-size`` keeps its meaning)."""
    unknown = sorted(set(section) - set(MODEL_KWARGS[arch]))
    if unknown:
        raise DataError(f"{path}: transformer.{unknown[0]} is not a setting of {arch} (it has: "
                        f"{', '.join(MODEL_KWARGS[arch])})", param="config")
    return {k: v for k, v in section.items() if v != VIETOCR_DEFAULTS[k]}


def _check_cnn(path: str, arch: str, flat: dict[str, Any], settings: dict[str, Any]) -> None:
    """The CNN's pooling and width are fixed here (VietOCR's); a config that changes them is refused."""
    pools = [list(p) for p in POOL_SIZES]
    for key in ("cnn.ss", "cnn.ks"):
        if key in flat and [list(p) for p in flat[key]] != pools:
            raise DataError(f"{path}: {key} {flat[key]}: the VGG CNN here pools as VietOCR's configs do "
                            f"({pools})", param="config")
        flat.pop(key, None)
    width = settings["d_model"] if arch == "vgg_transformer" else settings["img_channel"]
    hidden = flat.pop("cnn.hidden", width)
    if hidden != width:
        raise DataError(f"{path}: cnn.hidden {hidden} must equal the sequence model's input width {width}",
                        param="config")


def _local_file(value: Any) -> str | None:
    """A local weights file named by a config value (a path, or VietOCR's pretrain dict whose ``cached``
    download is already on disk); URLs are left for the warning (nothing downloads at run time)."""
    if isinstance(value, dict):
        value = value.get("cached")
    if isinstance(value, str) and "://" not in value and os.path.isfile(value):
        return value
    return None


def schedule(args, batches: int) -> dict:
    """``--epochs``/``--val-every`` from VietOCR's step counts (``--iters``, ``--valid-every``) and the
    training loader's ``batches`` per epoch, for ``build_train_config``."""
    steps = max(1, batches // max(1, args.grad_accum))
    out = {}
    if args.iters:
        out["epochs"] = max(1, -(-args.iters // steps))
    if args.valid_every:
        out["val_every"] = max(1, round(args.valid_every / steps))
    if out:
        log.info("VietOCR's schedule in epochs of %d steps: %s", steps, ", ".join(f"{k} {v}" for k, v in out.items()))
    return out
