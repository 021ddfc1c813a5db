"""CER/WER and VietOCR's accuracies against hand-computed examples."""
import math

import pytest

from src.metrics.ocr import OCRMeter, ocr_metrics, per_char_accuracy


def test_hand_computed_example():
    # 'xin chào' -> 'xin chao': 1 substitution of 8 chars; words: 1 of 2
    # 'abc' -> 'abd x': substitute c->d, insert ' ', insert 'x' = 3 of 3 chars; words: 2 of 1
    m = ocr_metrics(["xin chào", "abc"], ["xin chao", "abd x"])
    assert m["cer"] == pytest.approx(4 / 11)
    assert m["wer"] == pytest.approx(3 / 3)
    assert m["acc_full_seq"] == 0.0
    assert m["acc_per_char"] == pytest.approx((7 / 8 + 2 / 3) / 2)


def test_cer_is_pooled_not_a_mean_of_line_rates():
    # line rates 1/1 and 0/9 would average 0.5; pooled it is 1/10
    assert ocr_metrics(["a", "bcdefghij"], ["b", "bcdefghij"])["cer"] == pytest.approx(0.1)


def test_perfect_and_vietocr_per_char_rules():
    m = ocr_metrics(["Hà Nội", "2024"], ["Hà Nội", "2024"])
    assert m == {"cer": 0.0, "wer": 0.0, "acc_full_seq": 1.0, "acc_per_char": 1.0}
    assert per_char_accuracy("abcd", "ab") == 0.5          # positions past the prediction count as wrong
    assert per_char_accuracy("abcd", "xbcdzzz") == 0.75    # extra predicted characters are not penalised
    assert per_char_accuracy("", "") == 1.0 and per_char_accuracy("", "a") == 0.0


def test_meter_sums_add_up_across_shards_and_empty_is_nan():
    a, b = OCRMeter(), OCRMeter()
    a.update(["xin chào"], ["xin chao"])
    b.update(["abc"], ["abd x"])
    merged = OCRMeter()
    merged.merge([a.state(), b.state()])
    assert {k: v for k, v in merged.compute().items() if k != "loss"} == ocr_metrics(["xin chào", "abc"],
                                                                                     ["xin chao", "abd x"])
    assert all(math.isnan(v) for v in OCRMeter().compute().values())
