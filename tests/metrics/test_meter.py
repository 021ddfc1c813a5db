"""The meters' shared interface: ranks' states merge into the figures one process would compute."""
import pickle

import pytest

from src.metrics.meter import SumMeter, WithLoss
from src.metrics.ocr import OCRMeter


def test_sum_meter_merges_rank_states_into_one_process_figures():
    whole, ranks = SumMeter("n"), [SumMeter("n"), SumMeter("n")]
    for i, (loss, w) in enumerate([(1.0, 2), (3.0, 6), (0.5, 4)]):
        for m in (whole, ranks[min(i, 1)]):
            m.add_loss(loss, w)
            m.add(n=w)
    merged = SumMeter("n")
    merged.merge([pickle.loads(pickle.dumps(r.state())) for r in ranks])     # as all_gather_object moves them
    assert merged.sums == pytest.approx(whole.sums)
    assert merged.compute() == pytest.approx({"loss": (1.0 * 2 + 3.0 * 6 + 0.5 * 4) / 12})
    assert SumMeter().compute()["loss"] != SumMeter().compute()["loss"]       # no sample: NaN, not 0


def test_with_loss_carries_a_metric_meter_and_the_loss_through_a_merge():
    parts = []
    for truth, pred, loss in ((["abc"], ["abd"], 2.0), (["xin chào"], ["xin chào"], 1.0)):
        m = WithLoss(OCRMeter())
        m.inner.update(truth, pred)
        m.add_loss(loss, 3)
        parts.append(m.state())
    merged = WithLoss(OCRMeter())
    merged.merge(parts)
    out = merged.compute()
    assert out["loss"] == pytest.approx(1.5) and out["cer"] == pytest.approx(1 / 11)
    assert out["acc_full_seq"] == pytest.approx(0.5)
