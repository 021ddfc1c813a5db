"""bench.timing: the figures drawn from fixed lists of times, the 25% rule, and the order in which the
round-robin helpers call the compared functions (no timed assertions)."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from bench import timing
from bench.timing import (MAX_SPREAD, alternating_rounds, checked_ratio, command_line, counts, fastest, median, ms,
                          ratio, round_robin, round_robin_args, spread, spread_fraction, verdict)

CPU = torch.device("cpu")
TIMES = [0.012, 0.010, 0.015, 0.011]   # fastest 0.010, median 0.0115, spread (0.015 - 0.010) / 0.010 = 50%


def test_fastest_median_and_ms():
    assert fastest(TIMES) == 0.010
    assert median(TIMES) == pytest.approx(0.0115)
    assert median([3.0, 1.0, 2.0]) == 2.0
    assert ms(TIMES) == pytest.approx(10.0)
    assert ms(TIMES, median) == pytest.approx(11.5)


def test_spread():
    assert spread_fraction(TIMES) == pytest.approx(0.5)
    assert spread_fraction([2.0, 2.0, 2.0]) == 0.0
    assert spread(TIMES) == "50% of 4"
    assert spread(TIMES, with_count=False) == "50%"
    assert spread([1.0, 1.234]) == "23% of 2"


def test_ratio():
    assert ratio(3.0, 2.0) == "1.50x"
    assert ratio(1.0, 3.0) == "0.33x"
    assert ratio(2.0, 3.0, suffix="") == "0.67"
    assert ratio(1.0, 3.0, 3, "") == "0.333"
    assert ratio(1.0, 0.0) == "n/a"
    assert ratio(1.0, -1.0) == "n/a"


def test_25_percent_rule():
    assert MAX_SPREAD == 0.25
    quiet = [1.0, 1.1, 1.2]       # 20%
    edge = [1.0, 1.25]            # exactly 25%: not under the limit
    noisy = [2.0, 3.0]            # 50%
    assert counts(quiet)
    assert counts(quiet, [4.0, 4.0])
    assert not counts(edge)
    assert not counts(quiet, noisy)
    assert counts(noisy, limit=0.6)
    assert checked_ratio([3.0, 3.3], quiet) == "3.00x"
    assert checked_ratio(noisy, quiet) == "2.00x (not counted: spread >= 25%)"
    assert checked_ratio(quiet, edge) == "1.00x (not counted: spread >= 25%)"
    assert checked_ratio([3.0, 3.3], quiet, stat=median) == ratio(median([3.0, 3.3]), median(quiet))
    assert checked_ratio(noisy, quiet, suffix="", limit=0.6) == "2.00"


def test_verdict():
    assert verdict(2.0, 2) == "met"
    assert verdict(1.99, 2) == "NOT met"
    assert verdict(0.96, 0.95, "the target is for --model-size full") == "met, but the target is for --model-size full"
    assert verdict(0.5, 0.95, "x") == "NOT met, but x"


def _recorder():
    calls: list[str] = []
    return calls, {k: (lambda k=k: calls.append(k)) for k in ("a", "b", "c")}


def test_round_robin_alternates_and_counts():
    calls, fns = _recorder()
    times = round_robin(fns, CPU, reps=3, min_time=0.0, max_reps=10)
    assert calls == ["a", "b", "c"] * 3
    assert set(times) == {"a", "b", "c"}
    assert all(len(ts) == 3 for ts in times.values())
    assert all(t >= 0 for ts in times.values() for t in ts)


def test_round_robin_warmup_then_before_then_timed():
    calls, fns = _recorder()
    fns = {k: fns[k] for k in ("a", "b")}
    times = round_robin(fns, CPU, 2, 0.0, 10, warmup=2, before=lambda: calls.append("before"))
    assert calls == ["a", "a", "b", "b", "before", "a", "b", "a", "b"]
    assert [len(times["a"]), len(times["b"])] == [2, 2]


def test_round_robin_max_reps_caps_min_time():
    calls, fns = _recorder()
    times = round_robin(fns, CPU, reps=1, min_time=3600.0, max_reps=4)
    assert calls == ["a", "b", "c"] * 4
    assert all(len(ts) == 4 for ts in times.values())


def test_round_robin_args_reads_the_flags():
    calls, fns = _recorder()
    args = SimpleNamespace(reps=2, min_time=0.0, max_reps=5, warmup=1)
    times = round_robin_args({"b": fns["b"], "a": fns["a"]}, CPU, args)
    assert calls == ["b", "a"] + ["b", "a"] * 2
    assert list(times) == ["b", "a"]
    assert all(len(ts) == 2 for ts in times.values())


def test_alternating_rounds():
    assert list(alternating_rounds(("bare", "fit"), 3)) == [
        (0, "bare"), (0, "fit"), (1, "fit"), (1, "bare"), (2, "bare"), (2, "fit")]
    assert [s for _, s in alternating_rounds(("a", "b", "c"), 2, reverse_first=True)] == list("cbaabc")
    assert list(alternating_rounds(("a", "b"), 0)) == []
    # min_time keeps it going past min_rounds, max_rounds stops it
    assert [s for _, s in alternating_rounds(("a", "b"), 1, min_time=3600.0, max_rounds=3)] == list("abbaab")
    assert [s for _, s in alternating_rounds(("a", "b"), 5, max_rounds=2)] == list("abba")


def test_command_line(monkeypatch):
    monkeypatch.setattr(timing.sys, "argv", ["/repo/bench/ovd.py", "--threads", "2", "--skip", "a b"])
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert command_line("bench.ovd") == "`python -m bench.ovd --threads 2 --skip 'a b'`"
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert command_line("bench.ovd") == "`python -m bench.ovd --threads 2 --skip 'a b'` (OMP_NUM_THREADS=1)"
