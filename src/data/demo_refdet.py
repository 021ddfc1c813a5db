"""Synthetic drone videos in the exact Zalo AI 2025 AeroEyes layout, for ``train_yolov8n_refdet.py --demo``.

Each video is a camera drifting smoothly (with a sideways sway and an optional slow zoom) over a
large procedurally textured ground: grass and soil noise, sandy paths, darker patches, bushes. On the
ground lie one TARGET and 2-4 look-alike DISTRACTORS, drawn top-down like small vehicles or bags. An
object's identity is a combination of attributes:

- body shape: rectangle, ellipse, rounded rectangle, triangle (nose forward);
- body colour: red, blue, yellow, white, magenta, cyan (none of them a ground colour);
- marking: a longitudinal stripe, a cross band or a centre dot, black or white.

Each distractor copies the target in another colour, and sometimes also with another shape or
another marking (never both): shape or marking alone does not identify the target, and every
colour is some video's target, so the reference photos must be used. The camera path is drawn so that the target
is annotated in 40-70% of the frames, in 1-3 visible segments; a frame is annotated when at least 60%
of the target's box is inside it (the box is clipped to the frame). Distractors are placed where the
camera passes, some in frames without the target, so background frames hold hard negatives.

``object_images/img_{1,2,3}.jpg`` show the target alone, like photos taken separately: close-ups
(the object spans 45-85% of the photo's shorter side), another rotation, another brightness, on a
blurred ground patch or a plain surface.

Every video has its own target. Validation videos have new grounds and paths, and targets that no
training video has; at least one is a shape-colour pair that no training target has. Validation
targets are drawn first and every video has its own random generator (seed, video id), so a set with
more training videos has the same validation videos: runs on sets of different sizes compare. ``README.txt``
and ``demo.json`` record every video's attributes, ``splits.txt`` the split (``video_id train|valid``,
the format ``split_videos`` reads).

Written once per parameter set into a temporary folder renamed at the end, so an interrupted run
never leaves half a dataset; ``demo.json`` (spec + per-video facts) marks a complete one.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import zlib
from dataclasses import asdict, dataclass

import av
import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFilter

VERSION = 6
SHAPES = ("rectangle", "ellipse", "rounded", "triangle")
COLOURS = {"red": (220, 45, 40), "blue": (45, 90, 225), "yellow": (240, 210, 40), "white": (238, 238, 232),
           "magenta": (205, 60, 205), "cyan": (40, 200, 215)}
MARKINGS = ("stripe", "cross", "dot")
MARK_COLOURS = {"black": (25, 25, 25), "white": (248, 248, 248)}
# white marks on light bodies would be barely visible: those bodies only get black marks
_LIGHT = ("white", "yellow", "cyan")
FPS = 25
SUPERSAMPLE = 3          # objects are drawn 3x larger and downsampled: anti-aliased edges
VISIBLE_AREA = 0.6       # annotate a frame when this much of the target's box is inside it


@dataclass(frozen=True)
class Attrs:
    shape: str
    colour: str
    marking: str
    mark_colour: str

    def valid(self) -> bool:
        return not (self.colour in _LIGHT and self.mark_colour == "white")

    def name(self) -> str:
        return f"{self.colour} {self.shape}, {self.mark_colour} {self.marking}"


ALL_ATTRS = [a for a in (Attrs(s, c, m, mc) for s in SHAPES for c in COLOURS for m in MARKINGS
                         for mc in MARK_COLOURS) if a.valid()]


# ----------------------------------------------------------------------------------------------- ground

def _noise(rng: np.random.Generator, w: int, h: int, cells: int) -> np.ndarray:
    """Smooth value noise in [0, 1]: a coarse random grid upsampled bicubically."""
    cw, ch = max(2, round(w / cells)), max(2, round(h / cells))
    grid = Image.fromarray(rng.random((ch, cw)).astype(np.float32), mode="F")
    return np.asarray(grid.resize((w, h), Image.BICUBIC), dtype=np.float32)


def _blend(base: np.ndarray, mask: Image.Image, colour, strength: float = 1.0) -> None:
    m = np.asarray(mask, dtype=np.float32)[..., None] / 255.0 * strength
    base *= 1 - m
    base += m * np.asarray(colour, dtype=np.float32)


def _ground(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """(h, w, 3) float32 RGB: grass/soil mix, sandy paths, patches and bushes."""
    grass = np.array([78, 112, 52], np.float32) * rng.uniform(0.85, 1.1)
    dry = np.array([130, 126, 74], np.float32) * rng.uniform(0.9, 1.1)
    soil = np.array([118, 92, 64], np.float32) * rng.uniform(0.85, 1.1)
    a = _noise(rng, w, h, 180)[..., None]
    b = _noise(rng, w, h, 90)[..., None]
    img = grass * (1 - a) + dry * a
    soil_w = np.clip((b - 0.55) * 4, 0, 1)
    img = img * (1 - soil_w) + soil * soil_w
    img *= 0.85 + 0.3 * _noise(rng, w, h, 14)[..., None]          # clumps of grass
    img += rng.normal(0, 5, (h, w, 1)).astype(np.float32)          # grain

    patches = Image.new("L", (w, h), 0)
    d = ImageDraw.Draw(patches)
    for _ in range(int(rng.integers(4, 10))):
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        rx, ry = rng.uniform(30, 110), rng.uniform(20, 80)
        d.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=int(rng.integers(120, 220)))
    _blend(img, patches.filter(ImageFilter.GaussianBlur(12)), np.array([52, 80, 38]) * rng.uniform(0.8, 1.2))

    paths = Image.new("L", (w, h), 0)
    d = ImageDraw.Draw(paths)
    for _ in range(int(rng.integers(1, 4))):
        # a gently curving track across the ground: a random walk of the heading
        x, y = rng.uniform(0, w), rng.uniform(0, h)
        heading, pts = rng.uniform(0, 2 * math.pi), []
        for _ in range(60):
            pts.append((x, y))
            heading += rng.normal(0, 0.12)
            x, y = x + 25 * math.cos(heading), y + 25 * math.sin(heading)
        d.line(pts, fill=255, width=int(rng.integers(8, 20)), joint="curve")
    _blend(img, paths.filter(ImageFilter.GaussianBlur(2)), np.array([178, 160, 126]) * rng.uniform(0.9, 1.05), 0.9)

    bushes = Image.new("L", (w, h), 0)
    d = ImageDraw.Draw(bushes)
    for _ in range(int(w * h / 9000)):
        cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(2.5, 8)
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=230)
    _blend(img, bushes.filter(ImageFilter.GaussianBlur(1.2)), (38, 62, 30))
    return img


# ---------------------------------------------------------------------------------------------- objects

def _sprite(attrs: Attrs, length: float, angle: float) -> Image.Image:
    """The object seen from above, long axis rotated by ``angle`` degrees, on a transparent canvas."""
    s = SUPERSAMPLE
    L = length * s
    W = L * (0.85 if attrs.shape == "triangle" else 0.58)
    size = int(L * 1.1) + 4 * s
    cx, cy = size / 2, size / 2
    box = [cx - L / 2, cy - W / 2, cx + L / 2, cy + W / 2]
    body = Image.new("L", (size, size), 0)
    d = ImageDraw.Draw(body)
    if attrs.shape == "rectangle":
        d.rectangle(box, fill=255)
    elif attrs.shape == "rounded":
        d.rounded_rectangle(box, radius=W * 0.35, fill=255)
    elif attrs.shape == "ellipse":
        d.ellipse(box, fill=255)
    else:
        d.polygon([(cx + L / 2, cy), (cx - L / 2, cy - W / 2), (cx - L / 2, cy + W / 2)], fill=255)
    mark = Image.new("L", (size, size), 0)
    d = ImageDraw.Draw(mark)
    if attrs.marking == "stripe":
        # on a triangle the stripe stops short of the nose, which it would otherwise fill
        nose = cx + (L * 0.1 if attrs.shape == "triangle" else L / 2)
        d.rectangle([cx - L / 2, cy - W * 0.1, nose, cy + W * 0.1], fill=255)
    elif attrs.marking == "cross":
        off = -L * 0.12 if attrs.shape == "triangle" else 0.0   # a triangle is wider at its back
        d.rectangle([cx + off - L * 0.09, cy - W / 2, cx + off + L * 0.09, cy + W / 2], fill=255)
    else:
        r = W * 0.2
        off = -L * 0.1 if attrs.shape == "triangle" else 0.0
        d.ellipse([cx + off - r, cy - r, cx + off + r, cy + r], fill=255)
    mark = ImageChops.multiply(mark, body.filter(ImageFilter.MinFilter(2 * s + 1)))   # inside a rim
    rgb = Image.new("RGB", (size, size), tuple(int(c * 0.45) for c in COLOURS[attrs.colour]))  # dark rim
    rgb.paste(COLOURS[attrs.colour], mask=body.filter(ImageFilter.MinFilter(s if s % 2 else s + 1)))
    rgb.paste(MARK_COLOURS[attrs.mark_colour], mask=mark)
    sprite = rgb.convert("RGBA")
    sprite.putalpha(body)
    small = sprite.resize((max(1, round(size / s)),) * 2, Image.LANCZOS)
    return small.rotate(angle, resample=Image.BICUBIC, expand=True)


def _alpha_box(sprite: Image.Image) -> tuple[int, int, int, int]:
    """Tight box of the visibly opaque pixels (alpha > 96) of a sprite."""
    return sprite.getchannel("A").point(lambda v: 255 if v > 96 else 0).getbbox()


def _distractor_attrs(rng: np.random.Generator, target: Attrs, taken: set[Attrs]) -> Attrs:
    """A valid combination sharing attributes with ``target``: its colour changed, and possibly its
    shape or its marking (never both). Distractors that differ only by shape or marking (a stripe
    instead of a band on a rotating 20-px object) are too hard for a model trained in CPU minutes
    from random weights; the same shape (and often the same marking) in another colour is the
    look-alike the demo keeps."""
    for _ in range(200):
        changed = {"colour"} | set(rng.choice(["shape", "marking", "none"], size=1))
        shape = str(rng.choice([s for s in SHAPES if s != target.shape])) if "shape" in changed else target.shape
        colour = str(rng.choice([c for c in COLOURS if c != target.colour])) if "colour" in changed else target.colour
        marking, mark_colour = target.marking, target.mark_colour
        if "marking" in changed:
            options = [(m, mc) for m in MARKINGS for mc in MARK_COLOURS if (m, mc) != (target.marking, target.mark_colour)]
            marking, mark_colour = options[int(rng.integers(len(options)))]
        cand = Attrs(shape, colour, marking, mark_colour)
        if cand.valid() and cand != target and cand not in taken:
            return cand
    raise RuntimeError("no distractor combination found")  # cannot happen with the vocabularies above


# ----------------------------------------------------------------------------------------------- camera

def _camera(rng: np.random.Generator, n: int, w: int, h: int, zoom: bool) -> tuple[np.ndarray, np.ndarray]:
    """Per frame: camera centre (n, 2) relative to the path's middle, and zoom factor (n,)."""
    t = np.arange(n, dtype=np.float64)
    speed = rng.uniform(0.9, 1.5) * w / n        # the camera crosses about 1-1.5 frame widths
    heading = rng.uniform(0, 2 * math.pi)
    sway = rng.uniform(0.1, 0.4) * h * np.sin(2 * math.pi * t / (n / rng.uniform(0.6, 1.6)) + rng.uniform(0, 2 * math.pi))
    along = speed * (t - n / 2)
    c, s = math.cos(heading), math.sin(heading)
    centre = np.stack([along * c - sway * s, along * s + sway * c], axis=1)
    z = np.ones(n)
    if zoom:
        z = 1 + rng.uniform(0.0, 0.12) * np.sin(2 * math.pi * t / (n * rng.uniform(0.8, 2.0)) + rng.uniform(0, 6.3))
    return centre, z


def _inside_fraction(boxes: np.ndarray, crops: np.ndarray) -> np.ndarray:
    """(P, T): fraction of each box (P, 4) inside each crop (T, 4), all xyxy."""
    ix = np.clip(np.minimum(boxes[:, None, 2], crops[None, :, 2]) - np.maximum(boxes[:, None, 0], crops[None, :, 0]), 0, None)
    iy = np.clip(np.minimum(boxes[:, None, 3], crops[None, :, 3]) - np.maximum(boxes[:, None, 1], crops[None, :, 1]), 0, None)
    area = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))[:, None]
    return ix * iy / area


def _segments(visible: np.ndarray) -> list[tuple[int, int]]:
    """Runs of True as (first, last) frame pairs."""
    runs, start = [], None
    for i, v in enumerate(visible):
        if v and start is None:
            start = i
        elif not v and start is not None:
            runs.append((start, i - 1))
            start = None
    if start is not None:
        runs.append((start, len(visible) - 1))
    return runs


# ------------------------------------------------------------------------------------------------ video

def _encode(path: str, frames: list[Image.Image]) -> str:
    """Write an H.264 mp4 (MPEG-4 Part 2 if this PyAV build lacks libx264); returns the codec used."""
    for codec in ("libx264", "mpeg4"):
        try:
            container = av.open(path, "w")
            stream = container.add_stream(codec, rate=FPS)
        except (av.error.FFmpegError, ValueError):
            container.close()
            continue
        stream.width, stream.height, stream.pix_fmt = frames[0].width, frames[0].height, "yuv420p"
        if codec == "libx264":
            stream.options = {"crf": "18", "preset": "veryfast", "g": str(2 * FPS)}
        else:
            stream.bit_rate = 4_000_000
            stream.codec_context.gop_size = 2 * FPS
        with container:
            for img in frames:
                for packet in stream.encode(av.VideoFrame.from_image(img)):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
        return codec
    raise RuntimeError("this PyAV build has neither the libx264 nor the mpeg4 encoder")


def _reference(rng: np.random.Generator, attrs: Attrs, length: float, video_angle: float,
               ground: np.ndarray) -> Image.Image:
    """The target alone, as a separately taken photo."""
    w, h = (int(v) for v in rng.integers(96, 161, size=2))
    if rng.random() < 0.6:
        gy, gx = int(rng.integers(0, ground.shape[0] - h)), int(rng.integers(0, ground.shape[1] - w))
        bg = Image.fromarray(np.clip(ground[gy:gy + h, gx:gx + w], 0, 255).astype(np.uint8))
        bg = bg.filter(ImageFilter.GaussianBlur(float(rng.uniform(1.0, 3.0))))
    else:
        bg = Image.new("RGB", (w, h), tuple(int(v) for v in rng.integers(150, 225, size=3)))
    angle = video_angle + rng.uniform(40, 320)
    # a close-up, as the challenge's photos are: the object spans 45-85% of the photo's shorter side
    # (a global descriptor of a photo that is mostly ground would describe the ground)
    x1, y1, x2, y2 = _alpha_box(_sprite(attrs, length, angle))
    fit = rng.uniform(0.45, 0.85) * min(w, h) / max(x2 - x1, y2 - y1)
    sprite = _sprite(attrs, length * fit, angle)            # drawn at its size: crisp edges, not upscaled
    x = (w - sprite.width) // 2 + int(rng.integers(-6, 7))
    y = (h - sprite.height) // 2 + int(rng.integers(-6, 7))
    bg.paste(sprite, (min(max(x, 0), w - sprite.width), min(max(y, 0), h - sprite.height)), sprite)
    arr = np.asarray(bg, dtype=np.float32) * rng.uniform(0.85, 1.15)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def _paint(rng: np.random.Generator, ground: np.ndarray, objects: list[dict]) -> tuple[Image.Image, np.ndarray]:
    """The whole scene: the objects (with soft shadows) on the ground, in the day's light; and the
    target's box (x1, y1, x2, y2) in scene pixels."""
    canvas = Image.fromarray(np.clip(ground, 0, 255).astype(np.uint8))
    target_box = None
    for o in objects:
        sp = o["sprite"]
        ab = _alpha_box(sp)
        # place the sprite so that its opaque box is centred on the chosen point
        x0 = int(round(o["centre"][0] - (ab[0] + ab[2]) / 2))
        y0 = int(round(o["centre"][1] - (ab[1] + ab[3]) / 2))
        shadow = Image.new("RGBA", sp.size, (0, 0, 0, 0))
        shadow.putalpha(sp.getchannel("A").point(lambda v: v * 35 // 100))
        canvas.paste(shadow, (x0 + 2, y0 + 2), shadow)
        canvas.paste(sp, (x0, y0), sp)
        if o["role"] == "target":
            target_box = np.array([x0 + ab[0], y0 + ab[1], x0 + ab[2], y0 + ab[3]], dtype=np.float64)
    light = rng.uniform(0.92, 1.08)   # the day's light: the video's colours differ a little from the photos
    canvas = Image.fromarray(np.clip(np.asarray(canvas, dtype=np.float32) * light, 0, 255).astype(np.uint8))

    return canvas, target_box


def _film(canvas: Image.Image, crops: np.ndarray, target_box: np.ndarray, size: tuple[int, int]) -> tuple[list, list]:
    """The camera's frames (one crop of the scene per frame, resized to ``size``) and the target's box in
    each frame where enough of it is in view (AeroEyes ``bboxes`` entries)."""
    W, H = size
    n_frames = len(crops)
    frames, bboxes = [], []
    for t in range(n_frames):
        x0, y0, x1, y1 = crops[t]
        frames.append(canvas.transform((W, H), Image.Transform.EXTENT, (x0, y0, x1, y1), resample=Image.BILINEAR))
        scale = W / (x1 - x0)
        fb = (target_box - [x0, y0, x0, y0]) * scale
        full = (fb[2] - fb[0]) * (fb[3] - fb[1])
        cb = [math.floor(max(fb[0], 0)), math.floor(max(fb[1], 0)), math.ceil(min(fb[2], W)), math.ceil(min(fb[3], H))]
        inside = max(0, cb[2] - cb[0]) * max(0, cb[3] - cb[1])
        if inside >= VISIBLE_AREA * full:
            bboxes.append({"frame": t, "x1": cb[0], "y1": cb[1], "x2": cb[2], "y2": cb[3]})
    return frames, bboxes


def _make_video(rng: np.random.Generator, folder: str, target: Attrs, n_frames: int, size: tuple[int, int],
                object_size: tuple[float, float], zoom: bool) -> dict:
    """Render one sample folder; return its facts (boxes per frame, objects, segments)."""
    W, H = size
    length = rng.uniform(*object_size)
    angle = rng.uniform(0, 360)
    t_sprite = _sprite(target, length, angle)
    tb = _alpha_box(t_sprite)
    margin = int(object_size[1] * 1.2) + 8
    for _ in range(100):
        centre, z = _camera(rng, n_frames, W, H, zoom)
        half = np.stack([W / 2 * z, H / 2 * z], axis=1)
        lo = (centre - half).min(0) - margin
        gw, gh = (np.ceil((centre + half).max(0) + margin - lo)).astype(int)
        centre = centre - lo
        crops = np.concatenate([centre - half, centre + half], axis=1)
        # candidate target positions (box centres), scored by how the camera sees them
        cand = np.stack([rng.uniform(margin, gw - margin, 1500), rng.uniform(margin, gh - margin, 1500)], axis=1)
        bw, bh = tb[2] - tb[0], tb[3] - tb[1]
        boxes = np.concatenate([cand - [bw / 2, bh / 2], cand + [bw / 2, bh / 2]], axis=1)
        visible = _inside_fraction(boxes, crops) >= VISIBLE_AREA
        frac = visible.mean(1)
        n_segs = {int(i): len(segs) for i in np.flatnonzero((frac >= 0.4) & (frac <= 0.7))
                  if 1 <= len(segs := _segments(visible[i])) <= 3 and min(e - a for a, e in segs) >= 3}
        if n_segs:
            break
    else:
        raise RuntimeError("no camera path shows the target in 40-70% of the frames")  # ~never after 100 tries
    # most positions give one long visit; favour re-entries when the path allows them
    multi = [i for i, n in n_segs.items() if n > 1]
    ti = int(rng.choice(multi if multi and rng.random() < 0.5 else list(n_segs)))
    ground = _ground(rng, int(gw), int(gh))
    objects = [{"attrs": target, "sprite": t_sprite, "centre": cand[ti], "role": "target"}]
    target_vis = visible[ti]

    # distractors where the camera passes; the first one preferably while the target is out of view
    taken = {target}
    for k in range(int(rng.integers(2, 5))):
        attrs = _distractor_attrs(rng, target, taken)
        taken.add(attrs)
        sprite = _sprite(attrs, rng.uniform(*object_size), rng.uniform(0, 360))
        score = (visible & ~target_vis).mean(1) if k == 0 and (~target_vis).any() else visible.mean(1)
        far = np.ones(len(cand), bool)
        for o in objects:
            far &= np.hypot(*(cand - o["centre"]).T) > (max(o["sprite"].size) + max(sprite.size)) / 2 + 6
        good = np.flatnonzero(far & (score >= 0.25))
        pool = good if len(good) else np.flatnonzero(far)
        if not len(pool):
            continue
        objects.append({"attrs": attrs, "sprite": sprite, "centre": cand[int(rng.choice(pool))], "role": "distractor"})

    canvas, target_box = _paint(rng, ground, objects)
    frames, bboxes = _film(canvas, crops, target_box, size)
    os.makedirs(os.path.join(folder, "object_images"))
    codec = _encode(os.path.join(folder, "drone_video.mp4"), frames)
    for k in range(3):
        _reference(rng, target, length, angle, ground).save(
            os.path.join(folder, "object_images", f"img_{k + 1}.jpg"), quality=92)
    visible_frames = [b["frame"] for b in bboxes]
    mask = np.zeros(n_frames, bool)
    mask[visible_frames] = True
    groups = [[b for b in bboxes if a <= b["frame"] <= e] for a, e in _segments(mask)]
    return {"codec": codec, "num_frames": n_frames, "groups": groups,
            "target": target, "distractors": [o["attrs"] for o in objects[1:]]}


def _pick_targets(rng: np.random.Generator, n_train: int, n_valid: int) -> tuple[list[Attrs], list[Attrs]]:
    """Validation targets first (so they do not depend on ``n_train``), the first one with a
    shape-colour pair reserved for it; then training targets spread over every shape and colour,
    none of them a validation target or of the reserved shape-colour pair."""
    shapes = [SHAPES[i] for i in rng.permutation(len(SHAPES))]
    colours = [list(COLOURS)[i] for i in rng.permutation(len(COLOURS))]
    reserved = (shapes[-1], colours[-1])
    valid: list[Attrs] = []
    for i in range(n_valid):
        pool = [a for a in ALL_ATTRS if a not in valid and ((a.shape, a.colour) == reserved) == (i == 0)]
        valid.append(pool[int(rng.integers(len(pool)))])
    train_rng = np.random.default_rng(rng.integers(2 ** 63))
    train: list[Attrs] = []
    i = 0
    while len(train) < n_train:
        shape, colour = shapes[i % len(shapes)], colours[(i + i // 12) % len(colours)]
        i += 1
        options = [a for a in ALL_ATTRS if a.shape == shape and a.colour == colour and a not in train
                   and a not in valid and (shape, colour) != reserved]
        if options:
            train.append(options[int(train_rng.integers(len(options)))])
        elif i > 4 * len(ALL_ATTRS):
            raise ValueError(f"at most {len(train)} distinct training targets, asked for {n_train}")
    return train, valid


def ensure_demo_refdet(root: str = "data/demo/refdet", seed: int = 0, train_videos: int = 48, valid_videos: int = 8,
                       frames: tuple[int, int] = (100, 120), size: tuple[int, int] = (384, 224),
                       zoom: bool = True) -> str:
    """Generate the demo set under ``root`` unless an identical one is there; returns ``root``.

    ``frames``: (min, max) frames per video; ``size``: (width, height), even numbers (yuv420p).
    Objects are 1/8 to 1/4 of the frame height long (28-56 px at the default 224).
    """
    spec = {"version": VERSION, "seed": seed, "train_videos": train_videos, "valid_videos": valid_videos,
            "frames": list(frames), "size": list(size), "zoom": zoom}
    marker = os.path.join(root, "demo.json")
    if _complete(marker, spec):
        return root
    W, H = size
    if W % 2 or H % 2:
        raise ValueError(f"frame size must be even (yuv420p), got {W}x{H}")
    tmp = f"{os.path.normpath(root)}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        rng = np.random.default_rng(seed)
        train_t, valid_t = _pick_targets(rng, train_videos, valid_videos)
        ids = [f"train_{i:02d}" for i in range(train_videos)] + [f"valid_{i:02d}" for i in range(valid_videos)]
        object_size = (H / 8, H / 4)
        entries, facts = [], []
        for vid, target in zip(ids, train_t + valid_t):
            # one generator per video: adding training videos leaves every other video as it was
            video_rng = np.random.default_rng([seed, zlib.crc32(vid.encode())])
            n = int(video_rng.integers(frames[0], frames[1] + 1))
            info = _make_video(video_rng, os.path.join(tmp, "samples", vid), target, n, (W, H), object_size, zoom)
            entries.append({"video_id": vid, "annotations": [{"bboxes": g} for g in info["groups"]]})
            split = "train" if vid.startswith("train") else "valid"
            facts.append({"video_id": vid, "split": split, "num_frames": n, "codec": info["codec"],
                          "target": asdict(info["target"]), "target_rgb": COLOURS[target.colour],
                          "distractors": [asdict(d) for d in info["distractors"]],
                          "annotated_frames": sum(len(g) for g in info["groups"]),
                          "segments": len(info["groups"]),
                          "novel_combination": split == "valid" and target not in train_t,
                          "novel_shape_colour": split == "valid" and (target.shape, target.colour) not in
                          {(a.shape, a.colour) for a in train_t}})
        os.makedirs(os.path.join(tmp, "annotations"))
        with open(os.path.join(tmp, "annotations", "annotations.json"), "w", encoding="utf-8") as f:
            json.dump(entries, f)
        with open(os.path.join(tmp, "splits.txt"), "w", encoding="utf-8") as f:
            f.write("".join(f"{x['video_id']}\t{x['split']}\n" for x in facts))
        with open(os.path.join(tmp, "README.txt"), "w", encoding="utf-8") as f:
            f.write(_readme(spec, facts))
        with open(os.path.join(tmp, "demo.json"), "w", encoding="utf-8") as f:
            json.dump({"spec": spec, "videos": facts}, f, indent=1)
        if os.path.isdir(root):
            if _complete(marker, spec):        # another process finished first
                shutil.rmtree(tmp, ignore_errors=True)
                return root
            shutil.rmtree(root)                # a set made with other parameters, or a stray folder
        os.makedirs(os.path.dirname(os.path.abspath(root)), exist_ok=True)
        os.replace(tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root


def _complete(marker: str, spec: dict) -> bool:
    try:
        with open(marker, encoding="utf-8") as f:
            return json.load(f).get("spec") == spec
    except (OSError, ValueError, AttributeError):
        return False


def _readme(spec: dict, facts: list[dict]) -> str:
    lines = [
        "Synthetic AeroEyes-format demo data (src/data/demo_refdet.py); regenerated when its parameters change.",
        f"Parameters: {json.dumps(spec)}",
        "",
        "Layout: samples/<video_id>/drone_video.mp4, samples/<video_id>/object_images/img_{1,2,3}.jpg,",
        "annotations/annotations.json (challenge schema), splits.txt ('video_id train|valid').",
        "Object = body shape + body colour + marking (pattern, colour). Distractors change 1-2 of the target's",
        "(shape, colour, marking). Validation targets are combinations no training video has as its target;",
        "'novel shape-colour' marks a validation target whose shape-colour pair no training target has.",
        "",
    ]
    for x in facts:
        t = x["target"]
        flag = " [novel shape-colour]" if x["novel_shape_colour"] else " [novel combination]" if x["novel_combination"] else ""
        lines.append(f"{x['video_id']} ({x['split']}, {x['num_frames']} frames, target in {x['annotated_frames']} frames, "
                     f"{x['segments']} segment(s)): target {Attrs(**t).name()}{flag}")
        lines += [f"    distractor {Attrs(**d).name()}" for d in x["distractors"]]
    return "\n".join(lines) + "\n"
