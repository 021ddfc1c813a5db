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


@dataclass(frozen=True)
class Augment:
    """The training augmentation, timm's ``train.py`` flags by name. The defaults are this project's
    pipeline before the flags existed (flips 0.5 both ways, rotation up to 15 degrees, colour jitter
    0.2/0.2/0.2/0.02, no AutoAugment, no erasing), draw for draw.

    Args:
        hflip, vflip: probability of a horizontal / vertical flip.
        rotation: maximum rotation in degrees (uniform in ``[-rotation, rotation]``).
        color_jitter: brightness, contrast, saturation[, hue] factors; one value ``s`` means
            ``(s, s, s)`` without hue, as in timm's ``transforms_factory``.
        auto_augment: timm policy string: ``rand-m9-mstd0.5-inc1`` (RandAugment, Cubuk et al. 2020,
            https://arxiv.org/abs/1909.13719), ``original``/``v0``/``3a`` (AutoAugment, Cubuk et al. 2019),
            ``augmix-m5-w4-d2`` (AugMix, Hendrycks et al. 2020); ``None`` for none.
        reprob, remode, recount: random erasing (Zhong et al. 2020, https://arxiv.org/abs/1708.04896):
            probability per image, fill (``const`` zeros, ``rand`` per-channel, ``pixel`` per-pixel normal
            noise) and the maximum number of erased boxes.
    Raises :class:`~src.errors.DataError` naming the flag (``param``) of a bad value.
    """

    hflip: float = 0.5
    vflip: float = 0.5
    rotation: float = 15.0
    color_jitter: tuple[float, ...] = (0.2, 0.2, 0.2, 0.02)
    auto_augment: str | None = None
    reprob: float = 0.0
    remode: str = "pixel"
    recount: int = 1

    def __post_init__(self) -> None:
        for name in ("hflip", "vflip", "reprob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise DataError(f"a probability must be in [0, 1], got {getattr(self, name)}", param=name)
        if self.rotation < 0:
            raise DataError(f"degrees must be >= 0, got {self.rotation}", param="rotation")
        cj = tuple(self.color_jitter)
        if len(cj) not in (1, 3, 4) or min(cj) < 0 or (len(cj) == 4 and cj[3] > 0.5):
            raise DataError(f"give 1, 3 or 4 factors >= 0 (brightness contrast saturation [hue <= 0.5]), "
                            f"got {' '.join(map(str, cj))}", param="color_jitter")
        if self.remode not in ("const", "rand", "pixel"):
            raise DataError(f"one of const, rand, pixel, got {self.remode!r}", param="remode")
        if self.recount < 1:
            raise DataError(f"must be >= 1, got {self.recount}", param="recount")
        if self.auto_augment:
            auto_augment_op(self.auto_augment, 224)     # a bad policy string fails here, at parse time


def auto_augment_op(policy: str, image_size: int):
    """timm's AutoAugment / RandAugment / AugMix op for ``policy`` (a PIL image in, a PIL image out),
    with the hyper-parameters timm's ``create_transform`` gives it."""
    from timm.data.auto_augment import augment_and_mix_transform, auto_augment_transform, rand_augment_transform

    hparams = dict(translate_const=int(image_size * 0.45),
                   img_mean=tuple(min(255, round(255 * m)) for m in IMAGENET_MEAN))
    try:
        if policy.startswith("rand"):
            return rand_augment_transform(policy, hparams)
        if policy.startswith("augmix"):
            return augment_and_mix_transform(policy, {**hparams, "translate_pct": 0.3})
        return auto_augment_transform(policy, hparams)
    except (AssertionError, ValueError, KeyError, IndexError) as exc:   # timm asserts on unknown sections
        raise DataError(f"not a timm augmentation policy: {policy!r} ({exc}); e.g. rand-m9-mstd0.5-inc1, "
                        f"original, v0, augmix-m5-w4-d2", param="aa") from None


class OnPIL:
    """Run a PIL-image op (timm's AutoAugment family) on a ``(3, H, W)`` uint8 tensor."""

    def __init__(self, op) -> None:
        self.op = op

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        return TF.pil_to_tensor(self.op(TF.to_pil_image(img)))

    def __repr__(self) -> str:
        return f"OnPIL({self.op!r})"


def augment_transform(train: bool, augment: Augment | None = None, image_size: int = 224) -> v2.Compose:
    """Random part (train only) + float conversion and ImageNet normalisation; ``(3, S, S)`` uint8 in,
    float out.

    The default path stays torchvision v2 on uint8 tensors, in today's order, rather than timm's
    ``create_transform``: that one starts with a random-resized crop on PIL images, draws differently and
    would change every existing recipe's results. The options timm has and this pipeline lacked are
    timm's own pieces, in the places timm puts them: AutoAugment after the flips (on PIL), random
    erasing after normalisation. An op whose strength is 0 is left out (it would still draw).
    """
    ops: list = []
    a = augment or Augment()
    if train:
        ops += [v2.RandomHorizontalFlip(a.hflip)] if a.hflip > 0 else []
        ops += [v2.RandomVerticalFlip(a.vflip)] if a.vflip > 0 else []
        ops += [v2.RandomRotation(a.rotation)] if a.rotation > 0 else []
        ops += [OnPIL(auto_augment_op(a.auto_augment, image_size))] if a.auto_augment else []
        cj = tuple(a.color_jitter) * 3 if len(a.color_jitter) == 1 else tuple(a.color_jitter)
        if any(cj):
            ops += [v2.ColorJitter(*cj)]
    ops += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    if train and a.reprob > 0:
        from timm.data.random_erasing import RandomErasing
        ops += [RandomErasing(a.reprob, mode=a.remode, max_count=a.recount, device="cpu")]
    return v2.Compose(ops)


class ClassificationDataset(Dataset):
    """Items are ``{"image": (3, S, S) float, "label": int}`` or ``{"bad": (path, reason)}``.

    With ``cache_images`` the padded, resized uint8 images live in one shared-memory tensor that
    DataLoader workers fill during the first epoch; later epochs skip decoding.

    ``fast_decode``: a JPEG at least twice ``image_size`` on its longer side is decoded at 1/2, 1/4 or
    1/8 scale (libjpeg's DCT scaling), its longer side never below ``image_size``: the pad-to-square
    image is then resized in PIL to 224x168 (``load_rgb(fit=True)``) and only padded, the same pixels
    within JPEG tolerance (mean abs difference 0.45, max 13 on the uint8 scale: bench/data_pipeline.py).
    Images under twice ``image_size`` decode exactly as without it.
    """

    def __init__(self, paths: list[str], labels: list[int], image_size: int, train: bool,
                 cache_images: bool = False, augment: Augment | None = None, fast_decode: bool = True) -> None:
        self.paths, self.labels = list(paths), list(labels)
        self.decode_longer_side = image_size if fast_decode else None
        self.base = base_transform(image_size)
        self.augment = augment_transform(train, augment, image_size)
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
            img = self.base(load_rgb_tensor(self.paths[i], longer_side=self.decode_longer_side, fit=True))
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
                              cache_images: bool = False, augment: Augment | None = None,
                              fast_decode: bool = True) -> ClassificationData:
    """The splits of ``metadata``; the training split augments with ``augment`` (:class:`Augment`'s
    defaults when ``None``); ``fast_decode``: :class:`ClassificationDataset`'s reduced JPEG decoding."""
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
                                             image_size, train=name == "train", cache_images=cache_images,
                                             augment=augment, fast_decode=fast_decode)
    names = [name for name, _ in sorted(label2id.items(), key=lambda kv: kv[1])]
    return ClassificationData(splits["train"], splits["valid"], splits["test"], label2id, names)
