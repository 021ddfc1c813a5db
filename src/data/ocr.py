"""Text-line OCR data in VietOCR's format: vocabulary, annotation files, LMDB cache, width buckets.

- Annotation file: one ``relative/path<TAB>label`` per line (UTF-8), paths under ``data_root``
  (VietOCR, https://github.com/pbcquoc/vietocr).
- LMDB cache (keys ``image-%09d`` = encoded image bytes, ``label-%09d``, ``dim-%09d`` = ``"h w"``,
  ``path-%09d``, plus ``num-samples`` and ``skipped``) in a folder named after the SHA-256 of the
  annotation file's content and the data root, so an edited annotation file never reuses a stale
  cache (VietOCR's bug), and built into a temporary folder that is renamed only when complete.
  Every sample is kept (VietOCR drops the last one).
- Resize rule (VietOCR): height 32, width from the aspect ratio rounded up to a multiple of 10 and
  clamped to ``[min_width, max_width]``.
- :class:`WidthBucketBatchSampler` batches lines of equal resized width (no padding needed), keeps
  partial batches (VietOCR drops them, so a small validation set could be empty and its loss NaN),
  and its ``len`` is the true number of batches.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
import shutil
import string
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, Sampler
from torchvision.transforms import v2

from src.data.text import read_text
from src.errors import DataError
from src.data.images import BadImage, decode_rgb
from src.data.loading import DataWarnings

log = logging.getLogger(__name__)

# VietOCR's default vocabulary (config/base.yml): 186 Vietnamese letters, digits, ASCII punctuation, space
VIETNAMESE_LETTERS = ("aAàÀảẢãÃáÁạẠăĂằẰẳẲẵẴắẮặẶâÂầẦẩẨẫẪấẤậẬbBcCdDđĐeEèÈẻẺẽẼéÉẹẸêÊềỀểỂễỄếẾệỆfFgGhHiIìÌỉỈĩĨíÍịỊ"
                      "jJkKlLmMnNoOòÒỏỎõÕóÓọỌôÔồỒổỔỗỖốỐộỘơƠờỜởỞỡỠớỚợỢpPqQrRsStTuUùÙủỦũŨúÚụỤưƯừỪửỬữỮứỨựỰ"
                      "vVwWxXyYỳỲỷỶỹỸýÝỵỴzZ")
VIETOCR_VOCAB = VIETNAMESE_LETTERS + string.digits + string.punctuation + " "
PAD, SOS, EOS, MASK = 0, 1, 2, 3  # VietOCR's special token ids; characters start at 4
IMAGE_HEIGHT = 32


class Vocab:
    """Characters <-> token ids, with VietOCR's four specials in front (pad, sos, eos, mask)."""

    n_special = 4

    def __init__(self, chars: str) -> None:
        if len(set(chars)) != len(chars):
            dup = sorted({c for c in chars if chars.count(c) > 1})
            raise ValueError(f"vocabulary has repeated characters: {''.join(dup)!r}")
        if not chars:
            raise ValueError("vocabulary is empty")
        self.chars = chars
        self.c2i = {c: i + self.n_special for i, c in enumerate(chars)}

    @classmethod
    def from_file(cls, path: str) -> "Vocab":
        """A UTF-8 file holding the characters (line breaks are ignored; a space is a character)."""
        chars = read_text(path, "vocabulary file").replace("\r", "").replace("\n", "")
        try:
            return cls(chars)
        except ValueError as exc:
            raise DataError(f"{path}: {exc}") from None

    def __len__(self) -> int:
        return len(self.chars) + self.n_special

    def unknown(self, text: str) -> str:
        """The characters of ``text`` outside the vocabulary, in order of first appearance."""
        return "".join(dict.fromkeys(c for c in text if c not in self.c2i))

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` without sos/eos; every character must be in the vocabulary."""
        return [self.c2i[c] for c in text]

    def decode(self, ids: Sequence[int]) -> str:
        """Text up to the first eos; special tokens are dropped."""
        out = []
        for i in ids:
            i = int(i)
            if i == EOS:
                break
            if i >= self.n_special:
                out.append(self.chars[i - self.n_special])
        return "".join(out)


def resized_width(w: int, h: int, height: int = IMAGE_HEIGHT, min_width: int = 32, max_width: int = 512) -> int:
    """VietOCR's rule: keep the aspect at ``height``, round the width up to 10, clamp."""
    new_w = math.ceil(int(height * w / h) / 10) * 10
    return min(max(new_w, min_width), max_width)


def line_tensor(img: Image.Image, width: int) -> torch.Tensor:
    """A text-line image resized to ``width`` x 32 (VietOCR's rule gives ``width``), as a uint8 tensor
    (3, 32, width); training, :func:`src.tasks.ocr.recognize` and the benchmark all use it."""
    if img.mode != "RGB":
        img = img.convert("RGB")
    img = img.resize((width, IMAGE_HEIGHT), Image.BILINEAR)
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)


@dataclass
class AnnotationLine:
    path: str      # as written in the file (relative to the data root)
    label: str
    line: int      # 1-based line number in the annotation file


def resolve_annotation(path: str, data_root: str | None) -> str:
    """Where the annotation file ``path`` is. VietOCR's loader opens ``os.path.join(data_root, path)``, so
    its configs give names relative to the data root (``train_annotation.txt``); a path that exists as
    given (``data/ocr/train_annotation.txt``, the form this project's docs use) is taken as it is first."""
    if os.path.isfile(path) or not data_root:
        return path
    under_root = os.path.join(data_root, path)
    if os.path.isfile(under_root):
        return under_root
    raise DataError(f"{path}: annotation file not found (looked as given and under the data root: {under_root})")


def read_annotations(path: str) -> list[AnnotationLine]:
    """Parse ``relative/path<TAB>label`` lines; a malformed file fails with ``file:line``."""
    if not os.path.isfile(path):
        raise DataError(f"{path}: annotation file not found")
    out = []
    # newline="": lines split as the file reading did, labels keep every other character
    with io.StringIO(read_text(path, "annotation file", "utf-8-sig"), newline="") as f:
        for n, raw in enumerate(f, start=1):
            text = raw.rstrip("\r\n")
            if not text.strip():
                continue
            if "\t" not in text:
                raise DataError(f"{path}:{n}: expected 'relative/path<TAB>label', found no tab: {text[:60]!r}")
            rel, label = text.split("\t", 1)
            if not rel:
                raise DataError(f"{path}:{n}: empty image path")
            out.append(AnnotationLine(rel, label, n))
    if not out:
        raise DataError(f"{path}: no samples (empty annotation file)")
    return out


def cache_key(annotation_file: str, data_root: str, stats: list[tuple[int, int] | None]) -> str:
    """SHA-256 of the annotation file's bytes, the data root and every listed image's (size, mtime):
    names the LMDB folder, so an image added, replaced or deleted since a cache was built gives a new
    one (VietOCR reused stale caches)."""
    h = hashlib.sha256()
    with open(annotation_file, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    h.update(b"\0" + os.path.abspath(data_root).encode())
    h.update(json.dumps(stats).encode())
    return h.hexdigest()[:20]


def _stat(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


def build_lmdb(annotation_file: str, data_root: str, cache_dir: str) -> str:
    """The LMDB folder for ``annotation_file``, built on first use. Returns its path.

    Images that cannot be read are left out and listed under the ``skipped`` key (reason -> paths).
    """
    import lmdb

    if not os.path.isdir(data_root):
        raise DataError(f"{data_root}: folder not found (the annotation's image paths are relative to it)",
                        param="data_root")
    lines = read_annotations(annotation_file)
    stats = [_stat(os.path.join(data_root, ln.path)) for ln in lines]
    name = os.path.splitext(os.path.basename(annotation_file))[0]
    final = os.path.join(cache_dir, f"{name}-{cache_key(annotation_file, data_root, stats)}")
    if os.path.isfile(os.path.join(final, "data.mdb")):
        return final
    tmp = f"{final}.tmp-{os.getpid()}"
    try:
        os.makedirs(cache_dir, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        os.mkdir(tmp)
    except OSError as exc:      # a read-only data root: the cache must go elsewhere
        raise DataError(f"{cache_dir}: cannot write the LMDB cache there ({exc.strerror or exc}); give a "
                        f"writable folder", param="lmdb_dir") from None
    env = lmdb.open(tmp, map_size=2 * sum(st[0] for st in stats if st) + (64 << 20), subdir=True)
    skipped: dict[str, list[str]] = {}
    n = 0
    txn = env.begin(write=True)
    for ln in lines:
        full = os.path.join(data_root, ln.path)
        try:
            with open(full, "rb") as f:
                data = f.read()
            w, h = decode_rgb(data, full).size
        except FileNotFoundError:
            skipped.setdefault("missing_file", []).append(ln.path)
            continue
        except BadImage as exc:
            skipped.setdefault(exc.reason, []).append(ln.path)
            continue
        txn.put(b"image-%09d" % n, data)
        txn.put(b"label-%09d" % n, ln.label.encode("utf-8"))
        txn.put(b"dim-%09d" % n, f"{h} {w}".encode())
        txn.put(b"path-%09d" % n, f"{ln.path}\t{ln.line}".encode("utf-8"))
        n += 1
        if n % 1000 == 0:
            txn.commit()
            txn = env.begin(write=True)
    txn.put(b"num-samples", str(n).encode())
    txn.put(b"skipped", json.dumps(skipped).encode())
    txn.commit()
    env.close()
    try:
        os.rename(tmp, final)  # atomic: a reader sees a complete cache or none
    except OSError:  # another process finished the same cache first
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("LMDB cache %s: %d samples%s", final, n,
             f", skipped {sum(map(len, skipped.values()))} unreadable" if skipped else "")
    return final


def augmentation() -> v2.Transform:
    """Light photometric/geometric noise for text lines (uint8 tensor in, uint8 out)."""
    return v2.Compose([
        v2.RandomApply([v2.ColorJitter(0.3, 0.3, 0.3, 0.05)], p=0.5),
        v2.RandomApply([v2.GaussianBlur(3, sigma=(0.1, 1.0))], p=0.3),
        v2.RandomPerspective(distortion_scale=0.1, p=0.2, fill=255),
        v2.RandomInvert(p=0.1),
    ])


_ENVS: dict[str, tuple[int, object]] = {}  # folder -> (pid that opened it, environment)


def open_lmdb(path: str):
    """A read-only LMDB environment, one per process and folder: LMDB refuses a second handle on the
    same folder in one process (train and valid may share an annotation file), and a handle must not
    cross a fork: a DataLoader worker that inherited its parent's handle closes that copy (the only
    way py-lmdb lets it open the folder again) and opens its own."""
    import lmdb

    key, pid = os.path.abspath(path), os.getpid()
    entry = _ENVS.get(key)
    if entry is not None and entry[0] != pid:
        entry[1].close()
        entry = None
    if entry is None:
        entry = _ENVS[key] = (pid, lmdb.open(path, readonly=True, lock=False, readahead=False, meminit=False))
    return entry[1]


def close_lmdb(path: str) -> None:
    """Close this process's handle on ``path`` (if any), so forked workers do not inherit it."""
    entry = _ENVS.pop(os.path.abspath(path), None)
    if entry is not None:
        entry[1].close()


class OCRDataset(Dataset):
    """Lines from an LMDB cache as ``{"image": float (3, 32, W) in [0, 1], "target": ids, "text", "key"}``.

    Labels with characters outside ``vocab`` are skipped and counted (``unknown_char``) or, with
    ``unknown_char="error"``, fail with the annotation file and line. ``widths`` holds every kept
    line's resized width, for the bucketing sampler.
    """

    def __init__(self, lmdb_path: str, vocab: Vocab, annotation_file: str, warnings: DataWarnings,
                 min_width: int = 32, max_width: int = 512, augment: bool = False,
                 unknown_char: str = "skip") -> None:
        self.lmdb_path, self.vocab, self.augment = lmdb_path, vocab, augmentation() if augment else None
        self.min_width, self.max_width = min_width, max_width
        with open_lmdb(lmdb_path).begin() as txn:
            n = int(txn.get(b"num-samples"))
            for reason, paths in json.loads(txn.get(b"skipped")).items():
                for p in paths:
                    warnings.add(reason, p)
            self.index, self.texts, self.widths, self.keys = [], [], [], []
            for i in range(n):
                text = txn.get(b"label-%09d" % i).decode("utf-8")
                rel, line = txn.get(b"path-%09d" % i).decode("utf-8").rsplit("\t", 1)
                bad = vocab.unknown(text)
                if bad:
                    if unknown_char == "error":
                        raise DataError(f"{annotation_file}:{line}: label has characters outside the vocabulary "
                                        f"{bad!r} (skip such labels, or give a vocabulary that has them)",
                                        param="unknown_char")
                    warnings.add("unknown_char", rel, f"characters {bad!r}")
                    continue
                h, w = map(int, txn.get(b"dim-%09d" % i).split())
                self.index.append(i)
                self.texts.append(text)
                self.keys.append(rel)
                self.widths.append(resized_width(w, h, IMAGE_HEIGHT, min_width, max_width))
        close_lmdb(lmdb_path)  # read again lazily, by whichever process loads the items
        if not self.index:
            raise DataError(f"{annotation_file}: no usable samples (all unreadable or outside the vocabulary)")

    def __len__(self) -> int:
        return len(self.index)

    def _txn(self):
        return open_lmdb(self.lmdb_path).begin()

    def __getitem__(self, i: int) -> dict:
        with self._txn() as txn:
            data = txn.get(b"image-%09d" % self.index[i])
        try:
            img = decode_rgb(data, self.keys[i])
        except BadImage as exc:  # cannot happen for a cache we built, but a cache can be damaged
            return {"bad": (self.keys[i], exc.reason)}
        x = line_tensor(img, self.widths[i])
        if self.augment is not None:
            x = self.augment(x)
        return {"image": x.float().div_(255), "target": self.vocab.encode(self.texts[i]), "text": self.texts[i],
                "key": self.keys[i]}


def collate_lines(items: list[dict]) -> dict:
    """Pad images to the widest (equal within a bucket) and targets to the longest.

    ``tgt_input`` = sos + text, ``tgt_output`` = text + eos, both padded with ``PAD``;
    ``tgt_padding_mask`` is True at padding.
    """
    good = [it for it in items if "bad" not in it]
    batch: dict = {"bad": [it["bad"] for it in items if "bad" in it]}
    if not good:
        return batch
    width = max(it["image"].shape[-1] for it in good)
    images = torch.zeros(len(good), 3, IMAGE_HEIGHT, width)
    length = max(len(it["target"]) for it in good) + 1
    tgt_in = torch.full((len(good), length), PAD, dtype=torch.long)
    tgt_out = torch.full((len(good), length), PAD, dtype=torch.long)
    for j, it in enumerate(good):
        images[j, :, :, : it["image"].shape[-1]] = it["image"]
        ids = torch.tensor(it["target"], dtype=torch.long)
        tgt_in[j, 0] = SOS
        tgt_in[j, 1: len(ids) + 1] = ids
        tgt_out[j, : len(ids)] = ids
        tgt_out[j, len(ids)] = EOS
    batch.update(image=images, tgt_input=tgt_in, tgt_output=tgt_out, tgt_padding_mask=tgt_in == PAD,
                 text=[it["text"] for it in good], key=[it["key"] for it in good])
    return batch


class WidthBucketBatchSampler(Sampler[list[int]]):
    """Batches of lines with the same resized width; partial batches kept; epoch-seeded shuffle.

    ``max_tokens`` (optional) makes the batch size depend on the width: ``max(1, max_tokens // (W / 2))``
    lines of encoder length ``W / 2``, so narrow lines go in big batches and wide ones in small.
    With ``world_size > 1`` each rank takes every ``world_size``-th batch; for training the batch
    list is padded by repetition so every rank runs the same number of steps (DDP needs that).
    """

    def __init__(self, widths: Sequence[int], batch_size: int, shuffle: bool, seed: int = 0,
                 max_tokens: int | None = None, rank: int = 0, world_size: int = 1, pad: bool = True) -> None:
        self.widths, self.batch_size, self.shuffle, self.seed = list(widths), batch_size, shuffle, seed
        self.max_tokens, self.rank, self.world_size, self.pad = max_tokens, rank, world_size, pad
        self.epoch = 0
        self.buckets: dict[int, list[int]] = {}
        for i, w in enumerate(self.widths):
            self.buckets.setdefault(w, []).append(i)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def size_for(self, width: int) -> int:
        if self.max_tokens:
            return max(1, self.max_tokens // max(1, width // 2))
        return self.batch_size

    def _all_batches(self) -> list[list[int]]:
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        batches = []
        for w in sorted(self.buckets):
            idx = self.buckets[w]
            if self.shuffle:
                idx = [idx[j] for j in torch.randperm(len(idx), generator=g).tolist()]
            size = self.size_for(w)
            batches += [idx[k: k + size] for k in range(0, len(idx), size)]
        if self.shuffle:
            batches = [batches[j] for j in torch.randperm(len(batches), generator=g).tolist()]
        if self.world_size > 1:
            if self.pad and batches:
                total = math.ceil(len(batches) / self.world_size) * self.world_size
                batches += batches[: total - len(batches)]
            batches = batches[self.rank::self.world_size]
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self._all_batches())

    def __len__(self) -> int:
        n = sum(math.ceil(len(v) / self.size_for(w)) for w, v in self.buckets.items())
        if self.world_size == 1:
            return n
        if self.pad:
            return math.ceil(n / self.world_size)
        return len(range(self.rank, n, self.world_size))
