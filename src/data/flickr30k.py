"""Flickr30k Entities reader (Plummer et al., ICCV 2015) for phrase grounding.

Layout (DESIGN section 4)::

    ROOT/flickr30k_images/<id>.jpg
    ROOT/Annotations/<id>.xml        VOC-style: <size>, <object> with one or more <name>ENTITY_ID</name>
                                     and a <bndbox>, or <nobndbox>1</nobndbox>, or <scene>1</scene>
    ROOT/Sentences/<id>.txt          one caption per line, phrases marked [/EN#<id>/<type>[/<type>] words]
    ROOT/train.txt, val.txt, test.txt  image ids, one per line (any other split: ROOT/<split>.txt)

One sample is one (image, caption): the caption's plain text, its phrases, and for each phrase every
box of its entity (an entity may have several boxes; one box may belong to several entities). Boxes
are ``[x1, y1, x2, y2]`` in the XML's pixel coordinates.

Bad input is counted, not fatal (``DataWarnings`` reasons): ``bad_markup`` (a caption whose markup
does not parse: the caption is skipped), ``no_box`` (a phrase whose entity has no box: ``nobndbox``,
scene, the non-visual entity 0, or absent from the XML), ``box_outside`` (a box clipped to the image),
``zero_area_box`` (a box with no area after clipping: dropped), ``bad_box`` (a coordinate that is not a
finite number, e.g. ``nan``: the box is dropped), ``size_mismatch`` (the image's real size differs from
the XML's ``<size>``, e.g. a resized copy: its boxes are rescaled to the real size), ``no_boxed_phrase``
(a caption with no phrase left: skipped), ``bad_annotation`` (an XML that does not parse: the image is
skipped), ``not_utf8`` (a caption file that is not UTF-8: the image is skipped).
A missing split file or image folder is a :class:`DataError`.
"""
from __future__ import annotations

import math
import os
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

from PIL import Image

from src.data.loading import DataWarnings
from src.data.text import NotUTF8, read_text
from src.errors import DataError

ORIENTATION_TAG = 0x0112      # EXIF orientation; 5-8 swap width and height

SPLIT_FILES = {"train": "train.txt", "valid": "val.txt", "test": "test.txt"}
_HEADER = re.compile(r"/EN#(\d+)((?:/[^\s/\]]+)*)")


@dataclass
class Phrase:
    text: str           # the phrase's words, whitespace-normalised
    entity_id: str
    types: list[str]    # e.g. ["people"] or ["clothing", "bodyparts"]
    first_word: int     # index of its first word in the caption's plain text (split on spaces)


@dataclass
class ImageBoxes:
    width: int
    height: int
    boxes: dict[str, list[list[float]]] = field(default_factory=dict)  # entity id -> boxes
    no_box: set[str] = field(default_factory=set)                      # nobndbox or scene entities


@dataclass
class GroundingSample:
    image_id: str
    caption: str                    # plain text, markup removed
    phrases: list[Phrase]           # only phrases with at least one box
    boxes: list[list[list[float]]]  # per phrase: its boxes [x1, y1, x2, y2]


def parse_caption(line: str) -> tuple[str, list[Phrase]]:
    """Markup caption -> (plain text, phrases in order). Brackets inside a phrase are kept as text
    as long as they balance; runs of spaces collapse. ``ValueError`` (with the column) on markup
    that does not parse: an unclosed phrase, a header without an entity id, a stray ``]``."""
    words: list[str] = []
    phrases: list[Phrase] = []
    i, n = 0, len(line)
    plain_start = 0
    while i < n:
        if line.startswith("[/EN#", i):
            words += line[plain_start:i].split()
            m = _HEADER.match(line, i + 1)
            if not m:
                raise ValueError(f"column {i + 1}: phrase header without an entity id")
            j, depth = m.end(), 1
            while j < n and depth:
                depth += {"[": 1, "]": -1}.get(line[j], 0)
                j += 1
            if depth:
                raise ValueError(f"column {i + 1}: phrase not closed with ']'")
            text_words = line[m.end():j - 1].split()
            if not text_words:
                raise ValueError(f"column {i + 1}: empty phrase")
            types = [t for t in m.group(2).split("/") if t]
            phrases.append(Phrase(" ".join(text_words), m.group(1), types, len(words)))
            words += text_words
            i = plain_start = j
        elif line[i] == "]":
            raise ValueError(f"column {i + 1}: ']' without an opening phrase")
        else:
            i += 1
    words += line[plain_start:].split()
    return " ".join(words), phrases


def parse_annotation(path: str) -> ImageBoxes:
    """A Flickr30k Entities XML -> image size, boxes per entity, entities without a box.
    ``ValueError`` when the file does not parse or lacks a size."""
    try:
        root = ET.parse(path).getroot()
        width, height = int(root.findtext("size/width")), int(root.findtext("size/height"))
    except (ET.ParseError, TypeError, ValueError) as exc:
        raise ValueError(f"not a Flickr30k Entities annotation ({exc})") from None
    out = ImageBoxes(width, height)
    for obj in root.iter("object"):
        names = [n.text.strip() for n in obj.findall("name") if n.text and n.text.strip()]
        box = obj.find("bndbox")
        if box is None:
            out.no_box.update(names)  # <nobndbox>1</nobndbox> or <scene>1</scene>
            continue
        try:
            xyxy = [float(box.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")]
        except (TypeError, ValueError):
            raise ValueError(f"a bndbox of entity {names} lacks a coordinate") from None
        for name in names:
            out.boxes.setdefault(name, []).append(xyxy)
    return out


def clean_boxes(boxes: list[list[float]], width: int, height: int, key: str,
                warnings: DataWarnings) -> list[list[float]]:
    """Clip boxes to the image (counted as ``box_outside``); drop those with no area left."""
    kept = []
    for x1, y1, x2, y2 in boxes:
        if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
            warnings.add("bad_box", key, f"{[x1, y1, x2, y2]}")
            continue
        c = [min(max(x1, 0.0), width), min(max(y1, 0.0), height), min(max(x2, 0.0), width), min(max(y2, 0.0), height)]
        if c != [x1, y1, x2, y2]:
            warnings.add("box_outside", key, f"{[x1, y1, x2, y2]} in a {width}x{height} image")
        if c[2] <= c[0] or c[3] <= c[1]:
            warnings.add("zero_area_box", key, f"{[x1, y1, x2, y2]}")
            continue
        kept.append(c)
    return kept


def image_size(path: str) -> tuple[int, int] | None:
    """(width, height) of an image as :func:`src.data.images.load_rgb` will see it (EXIF orientation
    applied), from its header alone; None when it cannot be opened (the dataset reports it then)."""
    try:
        with Image.open(path) as img:
            w, h = img.size
            rotated = img.getexif().get(ORIENTATION_TAG, 1) in (5, 6, 7, 8)
    except (OSError, ValueError, Image.DecompressionBombError):
        return None
    return (h, w) if rotated else (w, h)


def match_image_size(ann: ImageBoxes, real: tuple[int, int] | None, key: str, warnings: DataWarnings) -> None:
    """Rescale ``ann``'s boxes (in place) to the image's real size when the XML's ``<size>`` differs,
    counted as ``size_mismatch``: a resized copy of the dataset keeps its boxes on the objects."""
    if real is None or real == (ann.width, ann.height):
        return
    warnings.add("size_mismatch", key, f"<size> {ann.width}x{ann.height}, image {real[0]}x{real[1]}: boxes rescaled")
    sx, sy = real[0] / ann.width, real[1] / ann.height
    ann.boxes = {e: [[x1 * sx, y1 * sy, x2 * sx, y2 * sy] for x1, y1, x2, y2 in boxes] for e, boxes in ann.boxes.items()}
    ann.width, ann.height = real


def read_split_ids(root: str, split: str) -> list[str]:
    path = os.path.join(root, SPLIT_FILES.get(split, f"{split}.txt"))
    if not os.path.isfile(path):
        raise DataError(f"{path}: split file not found (Flickr30k Entities layout: {', '.join(SPLIT_FILES.values())} "
                        f"of image ids under the dataset root)")
    return [ln.strip() for ln in read_text(path, "split file").splitlines() if ln.strip()]


def read_grounding_split(root: str, split: str, warnings: DataWarnings) -> list[GroundingSample]:
    """Every usable (image, caption) sample of ``split`` under ``root``, bad input counted in ``warnings``."""
    for folder in ("flickr30k_images", "Annotations", "Sentences"):
        if not os.path.isdir(os.path.join(root, folder)):
            raise DataError(f"{os.path.join(root, folder)}: folder not found (Flickr30k Entities layout)")
    samples = []
    for image_id in read_split_ids(root, split):
        xml = os.path.join(root, "Annotations", f"{image_id}.xml")
        try:
            ann = parse_annotation(xml)
        except (OSError, ValueError) as exc:
            warnings.add("bad_annotation", xml, str(exc))
            continue
        match_image_size(ann, image_size(os.path.join(root, "flickr30k_images", f"{image_id}.jpg")), xml, warnings)
        sentences = os.path.join(root, "Sentences", f"{image_id}.txt")
        try:
            lines = read_text(sentences, "caption file").splitlines()
        except NotUTF8 as exc:
            warnings.add(exc.reason, sentences, str(exc))
            continue
        except DataError as exc:
            warnings.add("bad_annotation", sentences, str(exc))
            continue
        for lineno, line in enumerate(lines, 1):
            if not line.strip():
                continue
            key = f"{sentences}:{lineno}"
            try:
                caption, phrases = parse_caption(line)
            except ValueError as exc:
                warnings.add("bad_markup", key, str(exc))
                continue
            kept, kept_boxes = [], []
            for ph in phrases:
                boxes = clean_boxes(ann.boxes.get(ph.entity_id, []), ann.width, ann.height, key, warnings)
                if not boxes:
                    warnings.add("no_box", f"{key}:{ph.entity_id}", quiet=True)  # ~30% of real phrases
                    continue
                kept.append(ph)
                kept_boxes.append(boxes)
            if not kept:
                warnings.add("no_boxed_phrase", key)
                continue
            samples.append(GroundingSample(image_id, caption, kept, kept_boxes))
    return samples
