"""Image-classification data: ``metadata.csv`` (``path,label,split``) + ``label2id.json``.

Paths in the CSV are relative to the CSV's folder (absolute paths also work); ``split`` is one of
train/valid/test (``val`` and ``validation`` are read as valid). Whole-file problems raise
:class:`~src.errors.DataError` naming the file and line; single bad images are skipped and counted.
"""
from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass, field

import pandas as pd
import torch
from sklearn.model_selection import train_test_split
from torch.utils.data import Dataset
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from src.data.text import read_text
from src.errors import DataError
from src.data.images import IMAGENET_MEAN, IMAGENET_STD, BadImage, load_rgb_tensor

SPLIT_ALIASES = {"train": "train", "valid": "valid", "val": "valid", "validation": "valid", "test": "test"}
REQUIRED_COLUMNS = ("path", "label", "split")


def read_label2id(path: str) -> dict[str, int]:
    if not os.path.isfile(path):
        raise DataError(f"{path}: label2id file not found")
    try:
        mapping = json.loads(read_text(path, "label2id file"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{exc.lineno}: invalid JSON ({exc.msg})") from None
    if not isinstance(mapping, dict) or not mapping:
        raise DataError(f"{path}: expected a non-empty JSON object {{\"label\": id}}")
    ids = sorted(mapping.values())
    if ids != list(range(len(ids))) or not all(isinstance(i, int) for i in ids):
        raise DataError(f"{path}: ids must be the integers 0..{len(ids) - 1}, each once; got {ids}")
    return {str(k): int(v) for k, v in mapping.items()}


def read_metadata(csv_path: str, label2id: dict[str, int], label2id_path: str = "label2id.json") -> pd.DataFrame:
    """Validated table with columns ``path`` (absolute), ``label`` (int), ``split``, ``line``."""
    if not os.path.isfile(csv_path):
        raise DataError(f"{csv_path}: metadata file not found (build it with python -m src.tools.prepare_metadata)")
    try:
        df = pd.read_csv(io.StringIO(read_text(csv_path, "metadata file", "utf-8-sig")), dtype=str,
                         keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
        raise DataError(f"{csv_path}: cannot parse CSV ({str(exc).splitlines()[0]})") from None
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise DataError(f"{csv_path}:1: missing column(s) {', '.join(missing)}; "
                        f"expected header path,label,split (found: {','.join(df.columns)})")
    df = df[list(REQUIRED_COLUMNS)].copy()
    df["line"] = range(2, len(df) + 2)  # header is line 1
    for row in df.itertuples():
        if row.label not in label2id:
            raise DataError(f"{csv_path}:{row.line}: label '{row.label}' is not in {label2id_path} "
                            f"(known: {', '.join(sorted(label2id))})")
        if row.split.strip().lower() not in SPLIT_ALIASES:
            raise DataError(f"{csv_path}:{row.line}: split '{row.split}' is not train/valid/test")
    root = os.path.dirname(os.path.abspath(csv_path))
    df["path"] = [p if os.path.isabs(p) else os.path.join(root, p) for p in df["path"]]
    df["label"] = df["label"].map(label2id).astype(int)
    df["split"] = df["split"].str.strip().str.lower().map(SPLIT_ALIASES)
    return df.reset_index(drop=True)


def limit_indices(labels: list[int], limit: int | None, seed: int) -> list[int]:
    """First ``limit`` items after a seeded shuffle, stratified by label when possible."""
    n = len(labels)
    if limit is None or limit >= n:
        return list(range(n))
    if limit <= 0:
        raise DataError(f"limit must be positive, got {limit}")
    idx = list(range(n))
    try:
        keep, _ = train_test_split(idx, train_size=limit, stratify=labels, random_state=seed)
    except ValueError:  # a class too small to stratify, or fewer samples than classes
        keep, _ = train_test_split(idx, train_size=limit, random_state=seed)
    return sorted(keep)


class PadToSquare(v2.Transform):
    """Pad the shorter side (centred, black) so resizing keeps the leaf's aspect ratio."""

    def make_params(self, flat_inputs):
        h, w = v2.query_size(flat_inputs)
        side = max(h, w)
        left, top = (side - w) // 2, (side - h) // 2
        return dict(padding=[left, top, side - w - left, side - h - top])

    def transform(self, inpt, params):
        return TF.pad(inpt, params["padding"], fill=0)


def base_transform(image_size: int) -> v2.Compose:
    """Deterministic part (what ``--cache-images`` stores): pad to square, resize. uint8 in/out."""
    return v2.Compose([PadToSquare(), v2.Resize((image_size, image_size), antialias=True)])


def augment_transform(train: bool) -> v2.Compose:
    """Random part (train only) + float conversion and ImageNet normalisation."""
    ops: list = []
    if train:
        ops += [v2.RandomHorizontalFlip(), v2.RandomVerticalFlip(), v2.RandomRotation(15),
                v2.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.02)]
    ops += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    return v2.Compose(ops)


class ClassificationDataset(Dataset):
    """Items are ``{"image": (3, S, S) float, "label": int}`` or ``{"bad": (path, reason)}``.

    With ``cache_images`` the padded, resized uint8 images live in one shared-memory tensor that
    DataLoader workers fill during the first epoch; later epochs skip decoding.
    """

    def __init__(self, paths: list[str], labels: list[int], image_size: int, train: bool,
                 cache_images: bool = False) -> None:
        self.paths, self.labels = list(paths), list(labels)
        self.base = base_transform(image_size)
        self.augment = augment_transform(train)
        self.cache = self.cached = None
        if cache_images:
            self.cache = torch.zeros(len(paths), 3, image_size, image_size, dtype=torch.uint8).share_memory_()
            self.cached = torch.zeros(len(paths), dtype=torch.uint8).share_memory_()  # 0 new, 1 ok, 2 bad

    def __len__(self) -> int:
        return len(self.paths)

    def _base_image(self, i: int) -> torch.Tensor:
        if self.cache is not None and self.cached[i] == 1:
            return self.cache[i]
        if self.cache is not None and self.cached[i] == 2:
            raise BadImage(self.paths[i], "unreadable_image")
        try:
            img = self.base(load_rgb_tensor(self.paths[i]))
        except BadImage:
            if self.cache is not None:
                self.cached[i] = 2
            raise
        if self.cache is not None:
            self.cache[i] = img
            self.cached[i] = 1
        return img

    def __getitem__(self, i: int) -> dict:
        try:
            img = self._base_image(i)
        except BadImage as exc:
            return {"bad": (self.paths[i], exc.reason)}
        return {"image": self.augment(img), "label": self.labels[i]}


@dataclass
class ClassificationData:
    train: ClassificationDataset
    valid: ClassificationDataset
    test: ClassificationDataset | None
    label2id: dict[str, int]
    class_names: list[str] = field(default_factory=list)


def build_classification_data(metadata: str, label2id_path: str, image_size: int, seed: int,
                              train_limit: int | None = None, valid_limit: int | None = None,
                              cache_images: bool = False) -> ClassificationData:
    label2id = read_label2id(label2id_path)
    df = read_metadata(metadata, label2id, label2id_path)
    splits = {}
    for name, limit in (("train", train_limit), ("valid", valid_limit), ("test", valid_limit)):
        part = df[df["split"] == name]
        if part.empty and name != "test":
            raise DataError(f"{metadata}: the '{name}' split is empty (column 'split' needs "
                            f"train and valid rows)")
        if part.empty:
            splits[name] = None
            continue
        labels = part["label"].tolist()
        keep = limit_indices(labels, limit, seed)
        splits[name] = ClassificationDataset([part["path"].iloc[i] for i in keep], [labels[i] for i in keep],
                                             image_size, train=name == "train", cache_images=cache_images)
    names = [name for name, _ in sorted(label2id.items(), key=lambda kv: kv[1])]
    return ClassificationData(splits["train"], splits["valid"], splits["test"], label2id, names)
