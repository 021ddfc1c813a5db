"""Phrase-grounding samples as tensors: letterboxed images, normalized boxes, hashed word n-grams.

One item is one (image, caption) of :mod:`src.data.flickr30k`. Geometry, end to end:

* the image is resized so its longer side is ``image_size`` (aspect kept) and padded right and
  bottom to a square (letterbox), so one scale ``s = image_size / max(w, h)`` maps pixels to the
  network input both ways and IoU is the same in either space;
* boxes leave the dataset as ``cxcywh`` normalized by ``image_size`` (in ``[0, 1]``), which is what
  the model predicts; :func:`to_pixels` maps them back to the original image's pixels.

Text: words are lower-cased whitespace tokens; each word becomes the ids of its hashed character
n-grams (fastText, Bojanowski et al., TACL 2017), so the text encoder needs no vocabulary file,
embeds unseen words from their pieces, and works offline.

Augmentation (training only, ``transforms.v2`` on ``tv_tensors.BoundingBoxes``): horizontal flip,
which also swaps "left" and "right" in the caption so that relations stay true, and brightness /
contrast / saturation jitter. No hue jitter: captions name colours.
"""
from __future__ import annotations

import zlib
from functools import lru_cache
from typing import Any

import torch
import torchvision.transforms.v2 as v2
import torchvision.transforms.v2.functional as TF
from torchvision import tv_tensors
from torchvision.ops import box_convert

from src.data.flickr30k import GroundingSample
from src.data.images import BadImage, image_to_tensor, letterbox, load_rgb

MAX_NGRAMS = 24          # per word; a 20-letter word has 3 + 3 x 18 n-grams of length 3-5, most kept
_SWAP = {"left": "right", "right": "left", "leftmost": "rightmost", "rightmost": "leftmost"}


@lru_cache(maxsize=200_000)
def word_ngrams(word: str, buckets: int, n_min: int = 3, n_max: int = 5) -> tuple[int, ...]:
    """Hashed ids (1..buckets-1; 0 is padding) of the word itself and its character n-grams with
    boundary marks ``<`` ``>``. crc32, not ``hash()``: ids must agree across processes and runs."""
    marked = f"<{word}>"
    grams = [marked] + [marked[i:i + n] for n in range(n_min, n_max + 1) for i in range(len(marked) - n + 1)]
    grams = list(dict.fromkeys(grams))[:MAX_NGRAMS]
    return tuple(1 + zlib.crc32(g.encode("utf-8")) % (buckets - 1) for g in grams)


def encode_words(words: list[str], buckets: int) -> torch.Tensor:
    """(L, G) n-gram ids of each word, 0-padded."""
    ids = [word_ngrams(w, buckets) for w in words]
    out = torch.zeros(len(ids), max((len(i) for i in ids), default=1), dtype=torch.long)
    for row, i in enumerate(ids):
        out[row, :len(i)] = torch.tensor(i)
    return out


def swap_left_right(words: list[str]) -> list[str]:
    return [_SWAP.get(w, w) for w in words]


def to_pixels(boxes_cxcywh: torch.Tensor, image_size: int, scale: float) -> torch.Tensor:
    """Normalized cxcywh (model space) -> xyxy pixels of the original image."""
    return box_convert(boxes_cxcywh.float(), "cxcywh", "xyxy") * (image_size / scale)


class GroundingDataset(torch.utils.data.Dataset):
    """Items: ``image`` (3, S, S), ``boxes`` (N, 4) cxcywh in [0, 1], ``box_phrase`` (N,) phrase index
    of each box, ``words`` (L, G) n-gram ids, ``spans`` (P, 2) first word and word count of each
    phrase, plus ``caption``, ``phrases``, ``image_id``, ``scale``, ``orig_size``. An unreadable
    image gives ``{"bad": (path, reason)}`` (skipped and counted by the task)."""

    def __init__(self, samples: list[GroundingSample], image_dir: str, image_size: int, buckets: int,
                 max_words: int, augment: bool = False) -> None:
        self.samples, self.image_dir = samples, image_dir
        self.image_size, self.buckets, self.max_words, self.augment = image_size, buckets, max_words, augment
        self.jitter = v2.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.2)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict[str, Any]:
        s = self.samples[i]
        path = f"{self.image_dir}/{s.image_id}.jpg"
        try:
            img = load_rgb(path)
        except BadImage as exc:
            return {"bad": (path, exc.reason)}
        flat = [b for boxes in s.boxes for b in boxes]
        box_phrase = torch.tensor([p for p, boxes in enumerate(s.boxes) for _ in boxes])
        boxes = tv_tensors.BoundingBoxes(torch.tensor(flat, dtype=torch.float32), format="XYXY",
                                         canvas_size=(img.height, img.width))
        words = s.caption.lower().split()
        image: Any = img
        if self.augment:
            if torch.rand(()) < 0.5:
                image, boxes = TF.horizontal_flip(image), TF.horizontal_flip(boxes)
                words = swap_left_right(words)
            image = self.jitter(image)
        image, boxes, scale = letterbox(image, boxes, self.image_size)
        words = words[:self.max_words]
        # phrases cut off by --max-words lose their words but keep their boxes: the model still sees
        # the phrase's (empty) span only if it starts inside; drop those that start past the cut
        keep = [p for p, ph in enumerate(s.phrases) if ph.first_word < len(words)]
        spans = torch.tensor([[s.phrases[p].first_word, min(len(s.phrases[p].text.split()),
                                                             len(words) - s.phrases[p].first_word)] for p in keep])
        remap = torch.full((len(s.phrases),), -1, dtype=torch.long)
        remap[keep] = torch.arange(len(keep))
        kept_boxes = remap[box_phrase] >= 0
        xyxy = boxes.as_subclass(torch.Tensor)[kept_boxes] / self.image_size
        return {"image": image_to_tensor(image),
                "boxes": box_convert(xyxy.clamp(0, 1), "xyxy", "cxcywh"),
                "box_phrase": remap[box_phrase][kept_boxes], "words": encode_words(words, self.buckets),
                "spans": spans.reshape(-1, 2), "caption": " ".join(words),
                "phrases": [s.phrases[p].text for p in keep], "image_id": s.image_id, "scale": scale,
                "orig_size": (img.height, img.width)}


def collate_grounding(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Pad text to (B, L, G) with ``text_mask`` (B, L) True on words, phrases to ``phrase_mask``
    (B, P, L) with ``phrase_valid`` (B, P); boxes stay per sample in ``targets``."""
    good = [it for it in items if "bad" not in it]
    batch: dict[str, Any] = {"bad": [it["bad"] for it in items if "bad" in it]}
    if not good:
        return batch
    B = len(good)
    L = max(it["words"].shape[0] for it in good)
    G = max(it["words"].shape[1] for it in good)
    P = max(1, max(it["spans"].shape[0] for it in good))
    words = torch.zeros(B, L, G, dtype=torch.long)
    text_mask = torch.zeros(B, L, dtype=torch.bool)
    phrase_mask = torch.zeros(B, P, L, dtype=torch.bool)
    phrase_valid = torch.zeros(B, P, dtype=torch.bool)
    for b, it in enumerate(good):
        n, g = it["words"].shape
        words[b, :n, :g] = it["words"]
        text_mask[b, :n] = True
        for p, (start, count) in enumerate(it["spans"].tolist()):
            phrase_mask[b, p, start:start + count] = True
            phrase_valid[b, p] = True
    batch.update(image=torch.stack([it["image"] for it in good]), words=words, text_mask=text_mask,
                 phrase_mask=phrase_mask, phrase_valid=phrase_valid,
                 targets=[{"boxes": it["boxes"], "phrase": it["box_phrase"]} for it in good],
                 **{k: [it[k] for it in good] for k in ("caption", "phrases", "image_id", "scale", "orig_size")})
    return batch
