"""Phrase-grounding metrics.

* Recall@k, the Flickr30k Entities protocol (Plummer et al., ICCV 2015): a phrase counts as found
  when one of its k highest-scoring boxes has IoU >= 0.5 with any of its ground-truth boxes.
* A phrase-agnostic baseline, Recall@1 of answering every phrase of a caption with the same box: the
  query whose best logit over the caption's phrases is highest. A model that reads the phrase beats it.
* COCO mAP (IoU 0.50:0.95) and mAP50 through ``torchmetrics`` (pycocotools backend), with each
  phrase as a class of its own image: every query is a detection of every phrase, scored by the
  sigmoid of its logit. Boxes are in original-image pixels (COCO's area ranges are in pixels).
"""
from __future__ import annotations

import torch
from torchvision.ops import box_convert, box_iou

KS = (1, 5, 10)


def phrase_hits(logits: torch.Tensor, boxes: torch.Tensor, true_boxes: torch.Tensor, true_phrase: torch.Tensor,
                num_phrases: int, ks=KS, iou: float = 0.5) -> torch.Tensor:
    """One caption: logits (Q, P), boxes (Q, 4) cxcywh, ground truth (N, 4) cxcywh with (N,) phrase
    index. Returns (num_phrases, len(ks)) bool: phrase p found within the top k."""
    ious = box_iou(box_convert(boxes.float(), "cxcywh", "xyxy"), box_convert(true_boxes.float(), "cxcywh", "xyxy"))
    out = torch.zeros(num_phrases, len(ks), dtype=torch.bool)
    order = logits[:, :num_phrases].float().argsort(0, descending=True)  # (Q, P) query ranks per phrase
    for p in range(num_phrases):
        good = (ious[:, true_phrase == p] >= iou).any(1)                 # (Q,) query overlaps a true box
        ranked = good[order[:, p]]
        for j, k in enumerate(ks):
            out[p, j] = bool(ranked[:k].any())
    return out


def baseline_hits(logits: torch.Tensor, boxes: torch.Tensor, true_boxes: torch.Tensor, true_phrase: torch.Tensor,
                  num_phrases: int, iou: float = 0.5) -> torch.Tensor:
    """(num_phrases,) bool: the phrase-agnostic answer (the caption's single highest-scoring query)
    overlaps the phrase's truth."""
    best = logits[:, :num_phrases].float().max(1).values.argmax()
    ious = box_iou(box_convert(boxes[best:best + 1].float(), "cxcywh", "xyxy"),
                   box_convert(true_boxes.float(), "cxcywh", "xyxy"))[0]
    return torch.stack([(ious[true_phrase == p] >= iou).any() for p in range(num_phrases)])


class GroundingMeter:
    """Accumulates recall counts and the mAP state over batches; ``values()`` are sums that can be
    all-reduced across ranks, ``compute`` turns them into metrics."""

    def __init__(self, ks=KS, with_map: bool = True) -> None:
        self.ks = ks
        self.hits = torch.zeros(len(ks))
        self.baseline = 0.0
        self.phrases = 0
        self.map = None
        if with_map:
            from torchmetrics.detection import MeanAveragePrecision
            self.map = MeanAveragePrecision(box_format="xyxy", iou_type="bbox", backend="pycocotools")

    def update(self, logits: torch.Tensor, boxes: torch.Tensor, targets: list[dict], num_phrases: list[int],
               to_pixels: list[float] | None = None) -> None:
        """logits (B, Q, P), boxes (B, Q, 4) cxcywh in [0, 1]; ``to_pixels[b]`` multiplies
        normalized coordinates into image b's pixels (for mAP)."""
        logits, boxes = logits.detach().float().cpu(), boxes.detach().float().cpu()
        preds, gts = [], []
        for b, t in enumerate(targets):
            P = num_phrases[b]
            tb, tp = t["boxes"].cpu(), t["phrase"].cpu()
            self.hits += phrase_hits(logits[b], boxes[b], tb, tp, P, self.ks).sum(0)
            self.baseline += float(baseline_hits(logits[b], boxes[b], tb, tp, P).sum())
            self.phrases += P
            if self.map is not None:
                k = to_pixels[b] if to_pixels else 1.0
                xyxy = box_convert(boxes[b], "cxcywh", "xyxy") * k
                Q = xyxy.shape[0]
                preds.append({"boxes": xyxy.repeat(P, 1), "scores": logits[b, :, :P].sigmoid().T.reshape(-1),
                              "labels": torch.arange(P).repeat_interleave(Q)})
                gts.append({"boxes": box_convert(tb, "cxcywh", "xyxy") * k, "labels": tp})
        if self.map is not None and preds:
            self.map.update(preds, gts)

    def values(self) -> list[float]:
        return [*self.hits.tolist(), self.baseline, float(self.phrases)]

    def compute(self, totals: list[float] | None = None) -> dict[str, float]:
        totals = totals if totals is not None else self.values()
        n = max(1.0, totals[-1])
        out = {f"recall@{k}": totals[j] / n for j, k in enumerate(self.ks)}
        out["baseline_recall@1"] = totals[len(self.ks)] / n
        if self.map is not None:
            res = self.map.compute()
            out["map"], out["map50"] = float(res["map"]), float(res["map_50"])
        return out
