"""Robust image reading shared by every data format.

Applies the EXIF orientation and converts whatever PIL opens (grayscale, RGBA, palette, CMYK,
16-bit and float images) to 8-bit RGB. Failures raise :class:`BadImage` with a short reason so
datasets can skip and count the sample instead of crashing a DataLoader worker.
"""
from __future__ import annotations

import io
import math
import os
from typing import Any

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from torchvision import tv_tensors
from PIL import Image, ImageOps

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PAD_VALUE = 114          # letterbox border (grey), as YOLO-style detectors use


class BadImage(Exception):
    """A single image could not be used; ``reason`` is a short category for ``data_warnings``."""

    def __init__(self, path: str, reason: str, detail: str = "") -> None:
        super().__init__(f"{path}: {reason}{': ' + detail if detail else ''}")
        self.path, self.reason = path, reason


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float32)
        # 16-bit data (also stored as 32-bit "I") is scaled to 8 bits; 8-bit-range data is kept
        if arr.max(initial=0) > 255:
            arr = arr / 257.0
        img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), mode="L")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        # transparent pixels become white rather than whatever colour PIL stored under alpha 0
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    return img.convert("RGB")


def load_rgb(path: str, reduce_to: int | None = None, longer_side: int | None = None,
             fit: bool = False) -> Image.Image:
    """Open ``path`` fully decoded, EXIF-rotated, as an RGB PIL image; raise :class:`BadImage`.

    ``reduce_to``: a JPEG at least twice that size on both sides is decoded at 1/2, 1/4 or 1/8 scale
    (libjpeg's DCT scaling, PIL's ``draft``), never below ``reduce_to``: an 8000x8000 photo meant for a
    224 px input costs a fraction of a full decode. Smaller images decode exactly as without it.

    ``longer_side``: the same reduced decoding for a consumer that resizes the LONGER side to this
    (a letterbox, or pad-to-square then resize): the decoded longer side is never below it, so a
    1920x1080 frame for a 640 px letterbox decodes at 960x540 (1/2), a 640x480 photo for 224 at 320x240.

    ``fit`` (with ``longer_side``): such an image (at least twice ``longer_side``) is also resized in PIL
    until its longer side is exactly ``longer_side`` (:func:`fit_longer_side`), so the consumer's own
    resize has nothing left to do: PIL's resize of the small decoded image is several times cheaper
    than a tensor resize of a padded one. Smaller images come back as decoded, untouched."""
    try:
        size = os.path.getsize(path)
    except OSError:
        raise BadImage(path, "missing_file") from None
    if size == 0:
        raise BadImage(path, "empty_file")
    return _open_rgb(path, path, reduce_to, longer_side, fit)


def fit_longer_side(img: Image.Image, side: int) -> Image.Image:
    """``img`` resized (PIL's bilinear, antialiased: a triangle filter as wide as the scale, as
    torchvision's ``antialias=True``) so that its longer side is ``side``; sides rounded as
    :func:`letterbox` rounds them."""
    w, h = img.size
    f = side / max(w, h)
    size = (max(1, round(w * f)), max(1, round(h * f)))
    return img if size == img.size else img.resize(size, Image.BILINEAR)


def decode_rgb(data: bytes, key: str) -> Image.Image:
    """Like :func:`load_rgb` for encoded bytes (e.g. from an LMDB); ``key`` names it in errors."""
    if not data:
        raise BadImage(key, "empty_file")
    return _open_rgb(io.BytesIO(data), key)


def _open_rgb(source, key: str, reduce_to: int | None = None, longer_side: int | None = None,
              fit: bool = False) -> Image.Image:
    reduced = False
    try:
        with Image.open(source) as img:
            if reduce_to and min(img.size) >= 2 * reduce_to:
                img.draft("RGB", (reduce_to, reduce_to))
            elif longer_side and max(img.size) >= 2 * longer_side:
                # draft keeps both sides >= the request (ceil), so the longer one stays >= longer_side;
                # the EXIF rotation applied below swaps the sides, never the longer one's length
                w, h = img.size
                f = longer_side / max(w, h)
                img.draft("RGB", (math.ceil(w * f), math.ceil(h * f)))
                reduced = fit
            img.load()  # decode now: a truncated file fails here, not later in a transform
            img = _to_rgb(ImageOps.exif_transpose(img))
            return fit_longer_side(img, longer_side) if reduced else img
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise BadImage(key, "unreadable_image", str(exc).splitlines()[0] if str(exc) else "") from None


def load_rgb_tensor(path: str, longer_side: int | None = None, fit: bool = False) -> torch.Tensor:
    """Like :func:`load_rgb` but returns a uint8 tensor (3, H, W)."""
    img = load_rgb(path, longer_side=longer_side, fit=fit)
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)


def letterbox(image: Any, boxes: tv_tensors.BoundingBoxes | None, image_size: int):
    """Resize the longer side to ``image_size`` and pad right/bottom to a square; boxes follow.
    Returns (image, boxes, scale)."""
    h, w = TF.get_size(image)
    scale = image_size / max(h, w)
    new_h, new_w = max(1, round(h * scale)), max(1, round(w * scale))
    image = TF.resize(image, [new_h, new_w], antialias=True)
    image = TF.pad(image, [0, 0, image_size - new_w, image_size - new_h], fill=PAD_VALUE)
    if boxes is not None:
        boxes = TF.resize(boxes, [new_h, new_w])
        boxes = TF.pad(boxes, [0, 0, image_size - new_w, image_size - new_h])
    return image, boxes, scale


def image_to_tensor(image) -> torch.Tensor:
    """Letterboxed uint8 image (PIL or tensor) -> float (3, S, S) normalized with ImageNet statistics."""
    x = TF.to_dtype(TF.to_image(image), torch.float32, scale=True)
    return TF.normalize(x, IMAGENET_MEAN, IMAGENET_STD)
