"""Synthetic phrase-grounding data in the exact Flickr30k Entities layout, for ``train_ovd.py --demo``.

Each image shows 3-5 filled shapes (circle, square, triangle, star, diamond) in six colours, of
varying size and position on a tinted background, sometimes overlapping a little. Each image has two
captions that name 2-3 of its shapes with entity markup, e.g.::

    [/EN#1/other a small red circle] left of [/EN#2/other the blue square] on [/EN#9/scene a plain background]

Scene phrases have no box (``<scene>1</scene>``), as in the real data. Five colour-shape pairs
(:data:`NOVEL`) never appear in ``train``/``val``/``test``; they appear only in ``test_novel``, whose
captions name only those pairs, each among shapes that share its colour or its shape. Recall there
measures grounding of unseen combinations of seen words: open-vocabulary generalization.

Written once under ``root``: ``flickr30k_images/<id>.jpg``, ``Annotations/<id>.xml``,
``Sentences/<id>.txt``, ``train.txt``, ``val.txt``, ``test.txt``, ``test_novel.txt``, and reused
while its parameters match (``demo.json``).
"""
from __future__ import annotations

import json
import math
import os
import random

from PIL import Image, ImageDraw

VERSION = 1
COLOURS = {"red": (215, 40, 40), "green": (40, 160, 60), "blue": (45, 85, 215), "yellow": (235, 205, 30),
           "purple": (135, 55, 185), "orange": (245, 135, 25)}
SHAPES = ("circle", "square", "triangle", "star", "diamond")
# held out of training: every colour and every shape is still seen in training, only these pairs are not
NOVEL = {("red", "triangle"), ("green", "star"), ("blue", "circle"), ("yellow", "diamond"), ("purple", "square")}
SPLITS = {"train": 1600, "val": 150, "test": 150, "test_novel": 150}   # images; two captions each
IMAGE_SIZES = ((160, 120), (144, 144), (120, 160), (176, 128))


def _polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    if shape == "square":
        return [(cx - r, cy - r), (cx + r, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    if shape == "diamond":
        return [(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)]
    if shape == "triangle":
        return [(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    # star: five points, inner radius 0.45 r
    pts = []
    for k in range(10):
        rad = r if k % 2 == 0 else 0.45 * r
        a = -math.pi / 2 + k * math.pi / 5
        pts.append((cx + rad * math.cos(a), cy + rad * math.sin(a)))
    return pts


def _bbox(pts: list[tuple[float, float]]) -> list[int]:
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    return [math.floor(min(xs)), math.floor(min(ys)), math.ceil(max(xs)), math.ceil(max(ys))]


def _iou(a: list[int], b: list[int]) -> float:
    iw = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union else 0.0


def _pick_objects(rng: random.Random, novel_split: bool) -> tuple[list[tuple[str, str]], list[int]]:
    """(colour, shape) of each object (no pair twice in one image) and which ones the captions name."""
    seen = [(c, s) for c in COLOURS for s in SHAPES if (c, s) not in NOVEL]
    n = rng.randint(3, 5)
    if not novel_split:
        objs = rng.sample(seen, n)
        return objs, list(range(n))
    targets = rng.sample(sorted(NOVEL), 2)
    # distractors share a colour or a shape with a target, so one word alone does not find it
    near = [p for p in seen if any(p[0] == t[0] or p[1] == t[1] for t in targets)]
    objs = targets + rng.sample(near, n - 2)
    return objs, [0, 1]


def _render(rng: random.Random, objs: list[tuple[str, str]]):
    w, h = rng.choice(IMAGE_SIZES)
    tint = tuple(rng.randint(190, 235) for _ in range(3))
    img = Image.new("RGB", (w, h), tint)
    draw = ImageDraw.Draw(img)
    # a few faint stripes so the background is not perfectly flat
    for _ in range(rng.randint(0, 4)):
        y = rng.randint(0, h)
        draw.line([(0, y), (w, y + rng.randint(-20, 20))], fill=tuple(max(0, c - 25) for c in tint), width=2)
    placed: list[tuple[str, str, float, list[int]]] = []
    for colour, shape in objs:
        for _ in range(200):
            r = rng.uniform(7, 22)
            cx, cy = rng.uniform(r, w - r), rng.uniform(r, h - r)
            box = _bbox(_polygon(shape, cx, cy, r))
            if all(_iou(box, p[3]) < 0.15 for p in placed):
                break
        pts = _polygon(shape, cx, cy, r)
        if shape == "circle":
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=COLOURS[colour])
        else:
            draw.polygon(pts, fill=COLOURS[colour])
        placed.append((colour, shape, r, [max(0, box[0]), max(0, box[1]), min(w, box[2]), min(h, box[3])]))
    return img, placed


def _phrase(rng: random.Random, colour: str, shape: str, r: float) -> str:
    size = "small " if r < 11 else "large " if r > 18 else ""
    if rng.random() < 0.3:
        size = ""   # the size word is optional, so colour + shape alone must be enough
    return f"{rng.choice(['a', 'the'])} {size}{colour} {shape}"


def _relation(a: list[int], b: list[int]) -> str:
    dx = (a[0] + a[2]) / 2 - (b[0] + b[2]) / 2
    dy = (a[1] + a[3]) / 2 - (b[1] + b[3]) / 2
    if abs(dx) >= abs(dy):
        return "left of" if dx < 0 else "right of"
    return "above" if dy < 0 else "below"


def _caption(rng: random.Random, placed, named: list[int]) -> str:
    named = rng.sample(named, min(len(named), rng.choice([2, 2, 3])))
    parts = [f"[/EN#{i + 1}/other {_phrase(rng, *placed[i][:3])}]" for i in named]
    if len(named) == 2 and rng.random() < 0.8:
        text = f"{parts[0]} {_relation(placed[named[0]][3], placed[named[1]][3])} {parts[1]}"
    else:
        text = ", ".join(parts[:-1]) + f" and {parts[-1]}"
    if rng.random() < 0.15:
        text += " on [/EN#9/scene a plain background]"
    return text


def _xml(image_id: str, w: int, h: int, placed) -> str:
    objs = "".join(
        f"  <object><name>{i + 1}</name><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin><xmax>{b[2]}</xmax>"
        f"<ymax>{b[3]}</ymax></bndbox></object>\n" for i, (_, _, _, b) in enumerate(placed))
    return (f"<annotation>\n  <filename>{image_id}.jpg</filename>\n  <size><width>{w}</width><height>{h}</height>"
            f"<depth>3</depth></size>\n{objs}  <object><name>9</name><scene>1</scene></object>\n</annotation>\n")


def ensure_demo_ovd(root: str, splits: dict[str, int] | None = None, seed: int = 0) -> str:
    """Generate the demo set under ``root`` unless an identical one is there; returns ``root``."""
    splits = splits or SPLITS
    spec = {"version": VERSION, "splits": splits, "seed": seed}
    marker = os.path.join(root, "demo.json")
    if os.path.isfile(marker):
        with open(marker, encoding="utf-8") as f:
            if json.load(f) == spec:
                return root
    for sub in ("flickr30k_images", "Annotations", "Sentences"):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    rng = random.Random(seed)
    next_id = 1_000_000
    for split, count in splits.items():
        ids = []
        for _ in range(count):
            image_id = str(next_id)
            next_id += 1
            objs, named = _pick_objects(rng, split == "test_novel")
            img, placed = _render(rng, objs)
            img.save(os.path.join(root, "flickr30k_images", f"{image_id}.jpg"), quality=92)
            with open(os.path.join(root, "Annotations", f"{image_id}.xml"), "w", encoding="utf-8") as f:
                f.write(_xml(image_id, img.width, img.height, placed))
            with open(os.path.join(root, "Sentences", f"{image_id}.txt"), "w", encoding="utf-8") as f:
                f.write("\n".join(_caption(rng, placed, named) for _ in range(2)) + "\n")
            ids.append(image_id)
        with open(os.path.join(root, f"{split}.txt"), "w", encoding="utf-8") as f:
            f.write("\n".join(ids) + "\n")
    with open(marker + ".tmp", "w", encoding="utf-8") as f:
        json.dump(spec, f)
    os.replace(marker + ".tmp", marker)
    return root
