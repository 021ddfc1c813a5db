"""Synthetic rice-leaf disease images, written in the real ``metadata.csv`` + ``label2id.json`` format.

Each image is one leaf (a long tapering blade with a midrib, random length, width, curvature, shade
of green and pose) over a random background (soil, mud, water or grass texture). The four classes
of the seed project differ the way the real symptoms do:

- ``healthy``: no lesions.
- ``brown_spot``: many small round brown spots with a dark rim.
- ``leaf_blast``: a few spindle-shaped lesions along the blade, grey centre, red-brown margin.
- ``bacterial_leaf_blight``: a straw-yellow band with a wavy edge running from the tip along a margin.

Generated once per (count, size, seed) and reused; ``--demo`` calls :func:`ensure_demo_classification`.
"""
from __future__ import annotations

import csv
import json
import math
import os

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

CLASSES = ["bacterial_leaf_blight", "brown_spot", "healthy", "leaf_blast"]
VERSION = 1


def _background(rng: np.random.Generator, size: int) -> Image.Image:
    palettes = [(110, 80, 50), (90, 90, 80), (70, 95, 110), (70, 110, 50), (140, 120, 90)]
    base = np.array(palettes[rng.integers(len(palettes))], dtype=np.float32) * rng.uniform(0.7, 1.2)
    # smooth low-frequency noise (upsampled) plus pixel noise: textured, not flat
    coarse = (rng.normal(0, 22, (8, 8, 1)) + rng.normal(0, 6, (8, 8, 3))).astype(np.float32)
    coarse = np.asarray(Image.fromarray(np.clip(coarse + 128, 0, 255).astype(np.uint8)).resize(
        (size, size), Image.BICUBIC), dtype=np.float32) - 128
    img = base + coarse + rng.normal(0, 8, (size, size, 3))
    canvas = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    for _ in range(rng.integers(0, 6)):  # stray grass blades: thin green distractors
        x0, y0 = rng.uniform(0, size, 2)
        ang = rng.uniform(0, math.pi)
        ln = rng.uniform(0.2, 0.6) * size
        draw.line([(x0, y0), (x0 + ln * math.cos(ang), y0 + ln * math.sin(ang))],
                  fill=tuple(int(c) for c in rng.uniform([40, 80, 20], [90, 140, 60])), width=int(rng.integers(1, 3)))
    return canvas


def _leaf(rng: np.random.Generator, label: str, size: int) -> Image.Image:
    """Horizontal leaf on a transparent ``2*size`` canvas, lesions drawn in leaf coordinates."""
    w = h = 2 * size
    length = rng.uniform(0.95, 1.3) * size
    half_width = rng.uniform(0.08, 0.13) * size
    bend = rng.uniform(-0.15, 0.15) * size
    x0 = (w - length) / 2

    def centre(t):  # t in [0, 1] from base to tip
        return x0 + t * length, h / 2 + bend * (t ** 2)

    def width(t):
        return half_width * (math.sin(math.pi * min(1.0, 0.15 + 0.85 * t)) ** 0.7) * (1 - 0.3 * t)

    ts = np.linspace(0, 1, 60)
    top = [(centre(t)[0], centre(t)[1] - width(t)) for t in ts]
    bottom = [(centre(t)[0], centre(t)[1] + width(t)) for t in ts[::-1]]
    green = np.array([60, 140, 40]) * rng.uniform(0.75, 1.2) + rng.normal(0, 12, 3)
    green = tuple(int(c) for c in np.clip(green, 0, 255))
    leaf = Image.new("RGBA", (w, h), (0, 0, 0, 0))
    draw = ImageDraw.Draw(leaf)
    draw.polygon(top + bottom, fill=green + (255,))
    rib = tuple(min(255, c + 35) for c in green) + (255,)
    draw.line([centre(t) for t in ts], fill=rib, width=max(1, int(half_width * 0.15)))

    lesions = Image.new("RGBA", (w, h), (0, 0, 0, 0))
    ld = ImageDraw.Draw(lesions)
    if label == "brown_spot":
        for _ in range(rng.integers(8, 22)):
            t = rng.uniform(0.05, 0.95)
            cx, cy = centre(t)
            cy += rng.uniform(-0.8, 0.8) * width(t)
            r = rng.uniform(0.18, 0.35) * half_width
            ld.ellipse([cx - r * 1.3, cy - r, cx + r * 1.3, cy + r], fill=(70, 35, 15, 255))
            ld.ellipse([cx - r * 0.8, cy - r * 0.6, cx + r * 0.8, cy + r * 0.6],
                       fill=tuple(int(c) for c in rng.uniform([130, 70, 20], [170, 100, 40])) + (255,))
    elif label == "leaf_blast":
        for _ in range(rng.integers(2, 5)):
            t = rng.uniform(0.1, 0.85)
            cx, cy = centre(t)
            cy += rng.uniform(-0.4, 0.4) * width(t)
            a, b = rng.uniform(0.12, 0.22) * length, rng.uniform(0.35, 0.6) * half_width
            outer = [(cx - a, cy), (cx, cy - b), (cx + a, cy), (cx, cy + b)]
            inner = [(cx - 0.7 * a, cy), (cx, cy - 0.55 * b), (cx + 0.7 * a, cy), (cx, cy + 0.55 * b)]
            ld.polygon(outer, fill=(140, 60, 35, 255))
            ld.polygon(inner, fill=tuple(int(c) for c in rng.uniform([180, 180, 160], [225, 220, 200])) + (255,))
    elif label == "bacterial_leaf_blight":
        start = rng.uniform(0.35, 0.7)
        side = rng.choice([-1, 1])
        pts_edge, pts_inner = [], []
        for t in np.linspace(start, 1, 30):
            cx, cy = centre(t)
            frac = 0.4 + 0.5 * (t - start) / (1 - start) + 0.15 * math.sin(t * rng.uniform(25, 45))
            pts_edge.append((cx, cy + side * width(t) * 1.05))
            pts_inner.append((cx, cy + side * width(t) * (1 - 2 * min(1.0, frac))))
        yellow = tuple(int(c) for c in rng.uniform([200, 180, 80], [235, 215, 130])) + (255,)
        ld.polygon(pts_edge + pts_inner[::-1], fill=yellow)
    # lesions only where the leaf is
    alpha = np.minimum(np.asarray(lesions)[..., 3], np.asarray(leaf)[..., 3])
    lesions.putalpha(Image.fromarray(alpha))
    leaf = Image.alpha_composite(leaf, lesions.filter(ImageFilter.GaussianBlur(0.6)))
    return leaf


def render_leaf_image(rng: np.random.Generator, label: str, size: int) -> Image.Image:
    canvas = _background(rng, size).convert("RGBA")
    leaf = _leaf(rng, label, size).rotate(rng.uniform(0, 360), resample=Image.BICUBIC)
    scale = rng.uniform(0.8, 1.05)
    leaf = leaf.resize((int(leaf.width * scale), int(leaf.height * scale)), Image.BICUBIC)
    dx, dy = rng.uniform(-0.15, 0.15, 2) * size
    canvas.paste(leaf, (int((size - leaf.width) / 2 + dx), int((size - leaf.height) / 2 + dy)), leaf)
    img = canvas.convert("RGB")
    # lighting and sensor noise
    arr = np.asarray(img, dtype=np.float32) * rng.uniform(0.8, 1.15) + rng.normal(0, 4, (size, size, 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def ensure_demo_classification(root: str, per_class: tuple[int, int, int] = (160, 40, 40), size: int = 128,
                               seed: int = 0) -> tuple[str, str]:
    """Write (once) ``root/images/<class>/*.jpg``, ``metadata.csv`` and ``label2id.json``.

    ``per_class`` = (train, valid, test) images per class. Returns (metadata path, label2id path).
    """
    metadata, label2id = os.path.join(root, "metadata.csv"), os.path.join(root, "label2id.json")
    stamp = os.path.join(root, ".complete")
    key = json.dumps({"version": VERSION, "per_class": list(per_class), "size": size, "seed": seed})
    if os.path.isfile(stamp) and open(stamp).read() == key:
        return metadata, label2id
    rng = np.random.default_rng(seed)
    rows = []
    for cls in CLASSES:
        os.makedirs(os.path.join(root, "images", cls), exist_ok=True)
        for split, count in zip(("train", "valid", "test"), per_class):
            for i in range(count):
                rel = f"images/{cls}/{split}_{i:04d}.jpg"
                render_leaf_image(rng, cls, size).save(os.path.join(root, rel), quality=90)
                rows.append((rel, cls, split))
    tmp = metadata + ".tmp"
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label", "split"])
        writer.writerows(rows)
    os.replace(tmp, metadata)
    with open(label2id, "w", encoding="utf-8") as f:
        json.dump({c: i for i, c in enumerate(CLASSES)}, f, indent=2)
    with open(stamp, "w") as f:  # written last: an interrupted generation is redone
        f.write(key)
    return metadata, label2id
