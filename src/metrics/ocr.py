"""Text-recognition metrics: CER, WER and VietOCR's two accuracies.

- CER = sum of character edit distances / sum of reference lengths (over the whole set, not a mean
  of per-line rates); WER the same over whitespace-separated words. Edit distance is Levenshtein
  (insert, delete, substitute cost 1), computed by rapidfuzz.
- ``acc_full_seq``: fraction of lines predicted exactly (VietOCR ``compute_accuracy(mode="full_sequence")``).
- ``acc_per_char``: mean over lines of (characters equal at the same position, up to the shorter
  string) / (reference length); an empty reference scores 1 when the prediction is empty, else 0
  (VietOCR ``compute_accuracy(mode="per_char")``).

:class:`OCRMeter` accumulates sums so ranks can add theirs before the ratios are taken.
"""
from __future__ import annotations

from typing import Sequence

from rapidfuzz.distance import Levenshtein

SUM_KEYS = ("char_edits", "chars", "word_edits", "words", "exact", "per_char", "lines")


def per_char_accuracy(truth: str, pred: str) -> float:
    if not truth:
        return 1.0 if not pred else 0.0
    return sum(t == p for t, p in zip(truth, pred)) / len(truth)


class OCRMeter:
    def __init__(self) -> None:
        self.sums = dict.fromkeys(SUM_KEYS, 0.0)

    def update(self, truths: Sequence[str], preds: Sequence[str]) -> None:
        for t, p in zip(truths, preds, strict=True):
            tw, pw = t.split(), p.split()
            self.sums["char_edits"] += Levenshtein.distance(t, p)
            self.sums["chars"] += len(t)
            self.sums["word_edits"] += Levenshtein.distance(tw, pw)
            self.sums["words"] += len(tw)
            self.sums["exact"] += float(t == p)
            self.sums["per_char"] += per_char_accuracy(t, p)
            self.sums["lines"] += 1

    def values(self) -> list[float]:
        return [self.sums[k] for k in SUM_KEYS]

    @staticmethod
    def compute(values: Sequence[float]) -> dict[str, float]:
        """``{"cer", "wer", "acc_full_seq", "acc_per_char"}`` from (possibly rank-summed) ``values``."""
        s = dict(zip(SUM_KEYS, values))
        lines = s["lines"]
        if not lines:
            return dict.fromkeys(("cer", "wer", "acc_full_seq", "acc_per_char"), float("nan"))

        def rate(edits: float, total: float) -> float:
            # references that are all empty: no error unless something was predicted
            return edits / total if total else float(edits > 0)

        return {"cer": rate(s["char_edits"], s["chars"]), "wer": rate(s["word_edits"], s["words"]),
                "acc_full_seq": s["exact"] / lines, "acc_per_char": s["per_char"] / lines}


def ocr_metrics(truths: Sequence[str], preds: Sequence[str]) -> dict[str, float]:
    meter = OCRMeter()
    meter.update(truths, preds)
    return OCRMeter.compute(meter.values())
