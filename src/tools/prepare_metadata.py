"""Build ``metadata.csv`` + ``label2id.json`` from a folder-per-class image tree.

    python -m src.tools.prepare_metadata --images-dir paddy-disease-classification/train_images --out-dir data

``DIR/<label>/<image>`` (Kaggle Paddy Doctor's ``train_images/<label>/*.jpg`` layout) becomes one CSV
row per image: ``path`` relative to the CSV's folder (forward slashes), ``label`` the folder name,
``split`` train/valid/test. ``--valid`` and ``--test`` are fractions of the whole set; the split is
seeded and stratified by label (scikit-learn ``train_test_split``). Label ids are 0..K-1 in sorted
label order. Hidden files and folders (``.name``) are ignored. Existing files are kept unless
``--overwrite``; both are written atomically.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import math
import os
import sys
from collections import Counter
from typing import Sequence

from sklearn.model_selection import train_test_split

from src import cli
from src.errors import DataError
from src.training.checkpoint import atomic_write_text

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
SPLITS = ("train", "valid", "test")


def scan_image_tree(images_dir: str) -> list[tuple[str, str]]:
    """``(absolute image path, label)`` for every image in ``images_dir/<label>/``, sorted."""
    if not os.path.isdir(images_dir):
        what = "is not a folder" if os.path.exists(images_dir) else "folder not found"
        raise DataError(f"{images_dir}: {what} (expected {images_dir}/<label>/<image files>)")
    entries = sorted(e for e in os.listdir(images_dir) if not e.startswith("."))
    class_dirs = [e for e in entries if os.path.isdir(os.path.join(images_dir, e))]
    if not class_dirs:
        loose = sum(e.lower().endswith(IMAGE_EXTENSIONS) for e in entries)
        hint = f"; it holds {loose} image file(s) directly" if loose else ""
        raise DataError(f"{images_dir}: no class subfolders (expected {images_dir}/<label>/<image files>{hint})")
    items: list[tuple[str, str]] = []
    for label in class_dirs:
        folder = os.path.join(images_dir, label)
        files = sorted(f for f in os.listdir(folder) if not f.startswith(".")
                       and f.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(os.path.join(folder, f)))
        if not files:
            log.warning("%s: no image files (%s); class '%s' left out", folder, "/".join(
                e.lstrip(".") for e in IMAGE_EXTENSIONS), label)
            continue
        items += [(os.path.abspath(os.path.join(folder, f)), label) for f in files]
    if not items:
        raise DataError(f"{images_dir}: no images in its {len(class_dirs)} class subfolder(s) "
                        f"(extensions {', '.join(IMAGE_EXTENSIONS)}, any case)")
    return items


def _split_off(indices: list[int], labels: list[str], n_out: int, seed: int, name: str) -> tuple[list[int], list[int]]:
    """Seeded split of ``indices`` into (kept, ``n_out`` taken out), stratified when possible."""
    if n_out == 0:
        return list(indices), []
    strat = [labels[i] for i in indices]
    try:
        kept, out = train_test_split(indices, test_size=n_out, stratify=strat, random_state=seed)
    except ValueError as exc:  # a class with < 2 images, or fewer split rows than classes
        small = sorted((n, c) for c, n in Counter(strat).items())[:3]
        log.warning("cannot stratify the %s split (%s); smallest classes: %s; using a plain seeded split",
                    name, exc, ", ".join(f"{c}={n}" for n, c in small))
        kept, out = train_test_split(indices, test_size=n_out, random_state=seed)
    return kept, out


def assign_splits(labels: list[str], valid: float, test: float, seed: int) -> list[str]:
    """Split name per item. ``valid``/``test`` are fractions of the whole; a non-zero fraction gets
    at least one item and the train split keeps at least one."""
    if not 0 < valid < 1:
        raise DataError(f"--valid must be a fraction in (0, 1), got {valid}")
    if not 0 <= test < 1:
        raise DataError(f"--test must be a fraction in [0, 1), got {test}")
    if valid + test >= 1:
        raise DataError(f"--valid + --test must leave images for training, got {valid} + {test}")
    n = len(labels)
    # integer counts (rounded half up) up front: chained float fractions (valid / (1 - test)) round
    # inconsistently
    n_test = max(1, math.floor(test * n + 0.5)) if test > 0 else 0
    n_valid = max(1, math.floor(valid * n + 0.5))
    if n_test + n_valid >= n:
        raise DataError(f"{n} image(s) are too few for --valid {valid} --test {test} "
                        f"({n_valid} valid + {n_test} test would leave no training image)")
    rest, test_idx = _split_off(list(range(n)), labels, n_test, seed, "test")
    _, valid_idx = _split_off(rest, labels, n_valid, seed, "valid")
    split = ["train"] * n
    for i in valid_idx:
        split[i] = "valid"
    for i in test_idx:
        split[i] = "test"
    return split


def _relative(path: str, root: str) -> str:
    try:
        rel = os.path.relpath(path, root)
    except ValueError:  # another drive on Windows: absolute paths are accepted by the reader
        rel = path
    return rel.replace(os.sep, "/")


def count_table(labels: list[str], splits: list[str]) -> str:
    """Plain-text table of images per class and split, with totals."""
    counts = Counter(zip(labels, splits))
    names = sorted(set(labels))
    cols = [s for s in SPLITS if any(sp == s for sp in splits)]
    width = max(len("class"), len("total"), *(len(n) for n in names))
    lines = [f"{'class':<{width}}" + "".join(f"{c:>8}" for c in cols) + f"{'total':>8}"]
    for name in names + ["total"]:
        row = [sum(counts[(n, c)] for n in names) if name == "total" else counts[(name, c)] for c in cols]
        lines.append(f"{name:<{width}}" + "".join(f"{v:>8}" for v in row) + f"{sum(row):>8}")
    return "\n".join(lines)


def prepare_metadata(images_dir: str, out_dir: str, valid: float = 0.1, test: float = 0.1, seed: int = 42,
                     overwrite: bool = False) -> tuple[str, str]:
    """Write ``out_dir/metadata.csv`` and ``out_dir/label2id.json``; return their paths."""
    csv_path = os.path.join(out_dir, "metadata.csv")
    json_path = os.path.join(out_dir, "label2id.json")
    if not overwrite:
        for path in (csv_path, json_path):
            if os.path.exists(path):
                raise DataError(f"{path}: already exists (pass --overwrite to replace it)")
    items = scan_image_tree(images_dir)
    labels = [label for _, label in items]
    splits = assign_splits(labels, valid, test, seed)
    os.makedirs(out_dir, exist_ok=True)
    root = os.path.abspath(out_dir)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["path", "label", "split"])
    writer.writerows((_relative(path, root), label, split) for (path, label), split in zip(items, splits))
    label2id = {name: i for i, name in enumerate(sorted(set(labels)))}
    # both files are checked before either is written, so a refusal never leaves a mixed pair
    atomic_write_text(csv_path, buf.getvalue())
    atomic_write_text(json_path, json.dumps(label2id, indent=2, ensure_ascii=False) + "\n")
    log.info("wrote %s (%d images) and %s (%d classes)", csv_path, len(items), json_path, len(label2id))
    print(count_table(labels, splits))
    return csv_path, json_path


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m src.tools.prepare_metadata",
                                description=__doc__.splitlines()[0].replace("``", ""),
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    cli.add_flag(p, "--images-dir", required=True, help="folder with one subfolder of images per class")
    cli.add_flag(p, "--out-dir", default="data", help="where metadata.csv and label2id.json go")
    cli.add_flag(p, "--valid", type=float, default=0.1, help="fraction of all images for validation")
    cli.add_flag(p, "--test", type=float, default=0.1, help="fraction of all images for test (0: no test split)")
    cli.add_flag(p, "--seed", type=int, default=42, help="seed of the split")
    cli.add_flag(p, "--overwrite", action="store_true", help="replace existing metadata.csv/label2id.json")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    prepare_metadata(args.images_dir, args.out_dir, args.valid, args.test, args.seed, args.overwrite)
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s", stream=sys.stderr)
    sys.exit(cli.run_main(main))
