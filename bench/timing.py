"""The timing helpers every ``bench/`` script shares: round-robin timing, the figures drawn from it
(fastest call, median, spread) and how two figures are compared (ratio, target verdict, the 25% rule).

On a shared machine the load changes while a benchmark runs. The compared functions therefore run in
turn (a, b, a, b, ...: :func:`round_robin`), or whole runs alternate (a, b, b, a, ...:
:func:`alternating_rounds`), so a change in load hits every side alike. A figure is the fastest call
(the least disturbed, as ``timeit`` advises) or the median; the spread, (slowest - fastest) / fastest
of the N timed calls, says how much the machine's speed wandered meanwhile. A ratio of two timings
counts (:func:`counts`, :func:`checked_ratio`) only when the spread of each side is under
:data:`MAX_SPREAD` (25%).

Times are in seconds unless a name says ms.
"""
from __future__ import annotations

import os
import shlex
import statistics
import sys
import time
from typing import Callable, Hashable, Iterator, Sequence, TypeVar

import torch

from src.training.perf import round_robin as _perf_round_robin

K = TypeVar("K", bound=Hashable)

MAX_SPREAD = 0.25  # a ratio counts only when each side's spread is under this (a fraction: 25%)


# ----------------------------------------------------------------------------- timing

def round_robin(fns: dict[str, Callable[[], object]], device: torch.device, reps: int, min_time: float,
                max_reps: int, warmup: int = 0,
                before: Callable[[], None] | None = None) -> dict[str, list[float]]:
    """Seconds of each timed call of each function, by name.

    Each function first runs ``warmup`` untimed calls (all of one function's, then the next's); then
    ``before`` runs once, untimed (e.g. to reset counters the warm-up moved); then the functions are
    called in turn (a, b, a, b, ...) until each ran ``reps`` times and ``min_time`` seconds passed, or
    each ran ``max_reps`` times (:func:`src.training.perf.round_robin`; on CUDA it synchronizes around
    every call). Every list has the same length.
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    if before is not None:
        before()
    return _perf_round_robin(fns, device, reps, min_time, max_reps)


def round_robin_args(fns: dict[str, Callable[[], object]], device: torch.device, args,
                     before: Callable[[], None] | None = None) -> dict[str, list[float]]:
    """:func:`round_robin` with the settings of a bench script's parsed flags: ``args.reps``,
    ``args.min_time``, ``args.max_reps`` and ``args.warmup`` (``--reps --min-time --max-reps --warmup``)."""
    return round_robin(fns, device, args.reps, args.min_time, args.max_reps, args.warmup, before)


def alternating_rounds(sides: Sequence[K], min_rounds: int, min_time: float = 0.0, max_rounds: int | None = None,
                       reverse_first: bool = False) -> Iterator[tuple[int, K]]:
    """``(round, side)`` pairs, every side once a round, the order reversed every other round
    (a, b, c, c, b, a, a, b, c, ...; ``reverse_first`` starts with the reversed order), for benchmarks
    whose sides are whole runs, or calls that time only part of themselves, rather than calls that
    :func:`round_robin` can time: a slow drift of the machine's speed hits every side alike, and no
    side always runs first. Rounds go on until ``min_rounds`` ran and ``min_time`` seconds passed since
    the first pair was asked for (checked between rounds), or ``max_rounds`` ran (None: no cap)."""
    start, r = time.perf_counter(), 0
    while (max_rounds is None or r < max_rounds) and (r < min_rounds or time.perf_counter() - start < min_time):
        for side in (sides[::-1] if (r % 2 == 1) != reverse_first else sides):
            yield r, side
        r += 1


# ----------------------------------------------------------------------------- figures

def fastest(ts: Sequence[float]) -> float:
    """The fastest (smallest) time: the call other processes disturbed least."""
    return min(ts)


def median(ts: Sequence[float]) -> float:
    """The median time: ignores the calls (or epochs) that another process slowed down."""
    return statistics.median(ts)


def ms(ts: Sequence[float], stat: Callable[[Sequence[float]], float] = fastest) -> float:
    """``stat`` of the times (seconds) in milliseconds: the fastest call by default, or ``stat=median``."""
    return 1e3 * stat(ts)


def spread_fraction(ts: Sequence[float]) -> float:
    """(slowest - fastest) / fastest of the times: 0.25 means the slowest call took 25% longer."""
    return (max(ts) - min(ts)) / min(ts)


def spread(ts: Sequence[float], with_count: bool = True) -> str:
    """The spread as a whole percentage with the number of timed calls, ``"12% of 5"``, or without
    it (``with_count=False``), ``"12%"``."""
    text = f"{100 * spread_fraction(ts):.0f}%"
    return f"{text} of {len(ts)}" if with_count else text


# ----------------------------------------------------------------------------- comparisons

def ratio(a: float, b: float, digits: int = 2, suffix: str = "x") -> str:
    """``a / b`` with ``digits`` decimals and ``suffix``, ``"1.53x"``; ``"n/a"`` when ``b`` is not positive."""
    return f"{a / b:.{digits}f}{suffix}" if b > 0 else "n/a"


def counts(*timings: Sequence[float], limit: float = MAX_SPREAD) -> bool:
    """Whether a comparison of these timings counts: the spread of every one is under ``limit``
    (:data:`MAX_SPREAD`, 25%); a wider spread means the machine's load changed too much meanwhile."""
    return all(spread_fraction(ts) < limit for ts in timings)


def checked_ratio(a: Sequence[float], b: Sequence[float], stat: Callable[[Sequence[float]], float] = fastest,
                  digits: int = 2, suffix: str = "x", limit: float = MAX_SPREAD) -> str:
    """:func:`ratio` of ``stat(a) / stat(b)``, followed by ``" (not counted: spread >= 25%)"`` when
    the two timings fail :func:`counts`."""
    text = ratio(stat(a), stat(b), digits, suffix)
    return text if counts(a, b, limit=limit) else f"{text} (not counted: spread >= {100 * limit:.0f}%)"


def verdict(value: float, target: float, caveat: str | None = None) -> str:
    """``"met"`` when ``value >= target``, else ``"NOT met"``; with ``caveat``, ``"met, but <caveat>"``
    (e.g. the target is for another configuration than the one measured)."""
    met = "met" if value >= target else "NOT met"
    return met if caveat is None else f"{met}, but {caveat}"


# ----------------------------------------------------------------------------- provenance

def command_line(module: str, argv: list[str] | None = None) -> str:
    """The command that ran this benchmark, to print next to its figures: ``python -m <module>`` and
    the arguments (``argv``, by default ``sys.argv[1:]``: a test calling ``main(argv)`` passes its own,
    sys.argv being pytest's), plus ``(OMP_NUM_THREADS=N)`` when that variable is set. ``module`` is the
    script's ``__spec__.name`` (``sys.argv[0]`` under ``python -m`` is the file's full path)."""
    text = f"`{shlex.join(['python', '-m', module, *(sys.argv[1:] if argv is None else argv)])}`"
    if "OMP_NUM_THREADS" in os.environ:
        text += f" (OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']})"
    return text


def emit(text: str, out: str | None) -> None:
    """Print a benchmark's report and, with ``out`` (its ``--out``), also write it to that file."""
    print(text, flush=True)
    if out:
        with open(out, "w", encoding="utf-8") as f:
            f.write(text)


def device_name(device: torch.device) -> str:
    """What a table's header says of the device: the GPU's name, or the CPU with its thread count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({torch.get_num_threads()} threads)"
