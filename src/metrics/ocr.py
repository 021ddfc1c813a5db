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

from src.metrics.meter import SumMeter

SUM_KEYS = ("char_edits", "chars", "word_edits", "words", "exact", "per_char", "lines")


def per_char_accuracy(truth: str, pred: str) -> float:
    if not truth:
        return 1.0 if not pred else 0.0
    return sum(t == p for t, p in zip(truth, pred)) / len(truth)


class OCRMeter(SumMeter):
    """Sums of edits, lengths and matches (and the validation loss over tokens): ranks add theirs
    before the ratios are taken."""

    def __init__(self) -> None:
        super().__init__(*SUM_KEYS)

    def update(self, truths: Sequence[str], preds: Sequence[str]) -> None:
        for t, p in zip(truths, preds, strict=True):
            tw, pw = t.split(), p.split()
            self.add(char_edits=Levenshtein.distance(t, p), chars=len(t), word_edits=Levenshtein.distance(tw, pw),
                     words=len(tw), exact=float(t == p), per_char=per_char_accuracy(t, p), lines=1)

    def compute(self) -> dict[str, float]:
        """``{"loss", "cer", "wer", "acc_full_seq", "acc_per_char"}``."""
        s = self.sums
        lines = s["lines"]
        if not lines:
            return {"loss": self.loss(), **dict.fromkeys(("cer", "wer", "acc_full_seq", "acc_per_char"), float("nan"))}

        def rate(edits: float, total: float) -> float:
            # references that are all empty: no error unless something was predicted
            return edits / total if total else float(edits > 0)

        return {"loss": self.loss(), "cer": rate(s["char_edits"], s["chars"]), "wer": rate(s["word_edits"], s["words"]),
                "acc_full_seq": s["exact"] / lines, "acc_per_char": s["per_char"] / lines}


def ocr_metrics(truths: Sequence[str], preds: Sequence[str]) -> dict[str, float]:
    meter = OCRMeter()
    meter.update(truths, preds)
    return {k: v for k, v in meter.compute().items() if k != "loss"}
