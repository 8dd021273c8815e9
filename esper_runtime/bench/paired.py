"""Paired timing for the overhead benches: a candidate against a reference, with an identical twin of the reference
as the A/A test that says how far the measurement itself can be trusted.

Each round times every contestant once, in an order that alternates between rounds; a ratio is the median over
rounds of candidate/reference (both see the machine's drift within a round). ``aa_spread`` is how far the A/A
test is from the truth it knows (twin and reference are the same model): the larger of the twin's distance from
1 and the half-width of a 95 % bootstrap interval of its median. Rounds are added in blocks until the spread is
under ``target_spread`` (after ``min_rounds``) or ``max_rounds`` is reached — the result says which.
"""

from __future__ import annotations

import random
import statistics
from typing import Callable

__all__ = ["aa_spread", "paired_rounds", "ratio"]


def aa_spread(twin_over_reference: list[float], resamples: int = 1000) -> float:
    """max(|median - 1|, half the 95 % bootstrap interval of the median) of the per-round twin/reference ratios."""
    median = statistics.median(twin_over_reference)
    rng = random.Random(0)  # the same answer for the same rounds
    n = len(twin_over_reference)
    medians = sorted(statistics.median(rng.choices(twin_over_reference, k=n)) for _ in range(resamples))
    half_width = (medians[int(0.975 * (resamples - 1))] - medians[int(0.025 * (resamples - 1))]) / 2
    return max(abs(median - 1.0), half_width)


def paired_rounds(contestants: dict[str, Callable[[], float]], reference: str, twin: str, min_rounds: int = 30,
                  max_rounds: int = 150, block: int = 10, target_spread: float = 0.01) -> dict:
    """Time ``contestants`` (name -> a call returning seconds per step) in alternating rounds until the A/A spread
    of ``twin`` against ``reference`` is under ``target_spread`` (or ``max_rounds``). Returns the per-round times,
    the rounds run, the spread and whether it reached the target."""
    names = list(contestants)
    times: dict[str, list[float]] = {name: [] for name in names}
    rounds = 0
    spread = float("inf")
    while rounds < max_rounds:
        for _ in range(min(block, max_rounds - rounds)):
            order = names if rounds % 2 == 0 else names[::-1]
            for name in order:
                times[name].append(contestants[name]())
            rounds += 1
        if rounds >= min_rounds:
            spread = aa_spread([t / r for t, r in zip(times[twin], times[reference])])
            if spread < target_spread:
                break
    return {"times": times, "rounds": rounds, "aa_spread": round(spread, 4),
            "aa_spread_met": spread < target_spread}


def ratio(times: dict[str, list[float]], candidate: str, reference: str) -> float:
    """Median over rounds of candidate/reference."""
    return statistics.median(c / r for c, r in zip(times[candidate], times[reference]))
