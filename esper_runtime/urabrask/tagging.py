"""Empirical tags by percentile against every kernel measured on the same hardware (appendix E.3).

Until ``BOOTSTRAP_POPULATION`` kernels have been measured on a hardware target, fixed thresholds tag them
(``rule-bootstrap``); after that, a kernel's metric is placed in the distribution of its peers (``percentile``):
the fastest third is ``high_speed``, the middle third ``medium_speed``, the slowest ``low_speed``; likewise
``low_memory`` / ``medium_memory`` / ``high_memory``. ``numerically_stable`` marks drift under 1e-5, and
``trainable`` / ``fixed_function`` say whether the kernel has parameters.

``risk_score`` (0..1) grows with numerical drift, measurement spread and tail latency relative to the mean;
``conf_level`` is High below 0.2, Moderate below 0.5, Speculative above.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field

__all__ = ["Distributions", "TagResult", "assign_tags", "distributions_from_view", "distributions_from_state",
           "BOOTSTRAP_POPULATION"]

BOOTSTRAP_POPULATION = 5
_RULES = {"latency_ms_mean": (0.05, 0.5), "memory_mb_peak": (0.05, 1.0)}  # (low, high) bootstrap thresholds


@dataclass
class Distributions:
    """Sorted samples of each metric per hardware target: the population tags are relative to."""

    samples: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    seen: set[str] = field(default_factory=set)

    def add(self, hardware: str, artifact_id: str, metrics: dict[str, float]) -> None:
        if artifact_id in self.seen:
            return
        self.seen.add(artifact_id)
        per_hw = self.samples.setdefault(hardware, {})
        for name, value in metrics.items():
            if value is not None and math.isfinite(value):
                bisect.insort(per_hw.setdefault(name, []), float(value))

    def population(self, hardware: str) -> int:
        return len(self.samples.get(hardware, {}).get("latency_ms_mean", []))

    def percentile(self, hardware: str, metric: str, value: float) -> float:
        """Fraction of peers with a value <= ``value`` (0..1)."""
        values = self.samples.get(hardware, {}).get(metric, [])
        if not values:
            return 0.5
        return bisect.bisect_right(values, value) / len(values)


@dataclass(frozen=True)
class TagResult:
    tags: list[str]
    risk_score: float
    conf_level: str
    method: str
    population: int


def _band(position: float, low: str, mid: str, high: str) -> str:
    return low if position <= 1 / 3 else (mid if position <= 2 / 3 else high)


def assign_tags(dist: Distributions, hardware: str, report: dict) -> TagResult:
    population = dist.population(hardware)
    tags = []
    if population < BOOTSTRAP_POPULATION:
        method = "rule-bootstrap"
        lo, hi = _RULES["latency_ms_mean"]
        lat = report["latency_ms_mean"]
        tags.append("high_speed" if lat < lo else ("medium_speed" if lat < hi else "low_speed"))
        lo, hi = _RULES["memory_mb_peak"]
        mem = report["memory_mb_peak"]
        tags.append("low_memory" if mem < lo else ("medium_memory" if mem < hi else "high_memory"))
    else:
        method = "percentile"
        tags.append(_band(dist.percentile(hardware, "latency_ms_mean", report["latency_ms_mean"]),
                          "high_speed", "medium_speed", "low_speed"))
        tags.append(_band(dist.percentile(hardware, "memory_mb_peak", report["memory_mb_peak"]),
                          "low_memory", "medium_memory", "high_memory"))
    if report["precision_drift_vs_fp32"] < 1e-5:
        tags.append("numerically_stable")
    tags.append("trainable" if report.get("params", 0) > 0 else "fixed_function")
    spread = max(report.get("spread", {}).values(), default=0.0)
    tail = report["latency_ms_p99"] / report["latency_ms_mean"] if report["latency_ms_mean"] > 0 else 1.0
    risk = min(1.0, 0.4 * min(1.0, report["precision_drift_vs_fp32"] / 1e-4) + 0.3 * min(1.0, spread)
               + 0.3 * min(1.0, max(0.0, tail - 1.0) / 4.0))
    conf = "High" if risk < 0.2 else ("Moderate" if risk < 0.5 else "Speculative")
    return TagResult(sorted(tags), round(risk, 4), conf, method, population)


def distributions_from_view(view) -> tuple[Distributions, set[str]]:
    """Peers and already-measured artifacts, from an Urza view folded from the log."""
    dist = Distributions()
    known = set()
    for k in view.kernels.values():
        if k.report is not None or k.status != "COMPILED":
            known.add(k.artifact_id)
        if k.status == "VALIDATED" and k.report:
            dist.add(k.hardware, k.artifact_id, {"latency_ms_mean": k.report["latency_ms_mean"],
                                                 "memory_mb_peak": k.report["memory_mb_peak"]})
    return dist, known


def distributions_from_state(entries: dict[str, dict]) -> Distributions:
    """Peers from the processors' distribution keeper (``state.urabrask.distributions``: ``hardware|artifact`` ->
    that validated kernel's measurements)."""
    dist = Distributions()
    for key, value in sorted(entries.items()):
        hardware, _, artifact = key.partition("|")
        dist.add(hardware, artifact, {"latency_ms_mean": value.get("latency_ms_mean"),
                                      "memory_mb_peak": value.get("memory_mb_peak")})
    return dist
