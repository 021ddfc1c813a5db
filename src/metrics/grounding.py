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

from src.metrics.meter import SumMeter

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


class GroundingMeter(SumMeter):
    """One evaluation pass: recall counts and the validation loss as sums, and the detections and
    ground truth that mAP needs (kept per batch, in order, so merged ranks give the same mAP as one
    process would over the same batches)."""

    def __init__(self, ks=KS, with_map: bool = True) -> None:
        super().__init__(*(f"hits@{k}" for k in ks), "baseline", "phrases")
        self.ks, self.with_map = ks, with_map
        self.map_batches: list[tuple[list[dict], list[dict]]] = []   # (predictions, ground truth) per batch

    def update(self, logits: torch.Tensor, boxes: torch.Tensor, targets: list[dict], num_phrases: list[int],
               to_pixels: list[float] | None = None) -> None:
        """logits (B, Q, P), boxes (B, Q, 4) cxcywh in [0, 1]; ``to_pixels[b]`` multiplies
        normalized coordinates into image b's pixels (for mAP)."""
        logits, boxes = logits.detach().float().cpu(), boxes.detach().float().cpu()
        preds, gts = [], []
        for b, t in enumerate(targets):
            P = num_phrases[b]
            tb, tp = t["boxes"].cpu(), t["phrase"].cpu()
            hits = phrase_hits(logits[b], boxes[b], tb, tp, P, self.ks).sum(0)
            self.add(**{f"hits@{k}": float(h) for k, h in zip(self.ks, hits.tolist())})
            self.add(baseline=float(baseline_hits(logits[b], boxes[b], tb, tp, P).sum()), phrases=P)
            if self.with_map:
                k = to_pixels[b] if to_pixels else 1.0
                xyxy = box_convert(boxes[b], "cxcywh", "xyxy") * k
                Q = xyxy.shape[0]
                preds.append({"boxes": xyxy.repeat(P, 1), "scores": logits[b, :, :P].sigmoid().T.reshape(-1),
                              "labels": torch.arange(P).repeat_interleave(Q)})
                gts.append({"boxes": box_convert(tb, "cxcywh", "xyxy") * k, "labels": tp})
        if self.with_map and preds:
            self.map_batches.append((preds, gts))

    def state(self) -> dict:
        return {"sums": super().state(), "map_batches": self.map_batches}

    def merge(self, states) -> None:
        super().merge([s["sums"] for s in states])
        for s in states:
            self.map_batches += s["map_batches"]

    def compute(self) -> dict[str, float]:
        n = max(1.0, self.sums["phrases"])
        out = {"loss": self.loss(), **{f"recall@{k}": self.sums[f"hits@{k}"] / n for k in self.ks},
               "baseline_recall@1": self.sums["baseline"] / n}
        if self.with_map:
            from torchmetrics.detection import MeanAveragePrecision
            metric = MeanAveragePrecision(box_format="xyxy", iou_type="bbox", backend="pycocotools")
            for preds, gts in self.map_batches:
                metric.update(preds, gts)
            res = metric.compute()
            out["map"], out["map50"] = float(res["map"]), float(res["map_50"])
        return out
