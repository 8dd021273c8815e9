"""How different designs are (appendix D.2.4): a structural distance between IR graphs, the library's diversity,
and a child's novelty against the library.

A design's *signature* is the multiset of its ops and of its edges, each edge named by the ops at its ends (an input
by its name: ``x``, ``u``, ``x0``), so renaming nodes or reordering them changes nothing and two designs that wire
the same ops differently differ. The distance between two designs is the Jaccard distance of their signatures
(0: the same multiset; 1: nothing in common)."""

from __future__ import annotations

from collections import Counter
from itertools import combinations
from typing import Any, Iterable

__all__ = ["signature", "distance", "diversity", "novelty"]


def signature(doc: dict[str, Any]) -> Counter:
    ops = {n["id"]: n["op"] for n in doc.get("nodes") or []}
    out: Counter = Counter()
    for n in doc.get("nodes") or []:
        out[n["op"]] += 1
        for src in n.get("inputs") or []:
            out[f"{ops.get(src, src)}>{n['op']}"] += 1
    return out


def distance(a: dict[str, Any] | Counter, b: dict[str, Any] | Counter) -> float:
    sa = a if isinstance(a, Counter) else signature(a)
    sb = b if isinstance(b, Counter) else signature(b)
    union = sum((sa | sb).values())
    return 1.0 - sum((sa & sb).values()) / union if union else 0.0


def diversity(docs: Iterable[dict[str, Any]]) -> float:
    """Mean pairwise distance of the designs (0 for fewer than two)."""
    sigs = [signature(d) for d in docs]
    pairs = list(combinations(sigs, 2))
    return sum(distance(a, b) for a, b in pairs) / len(pairs) if pairs else 0.0


def novelty(doc: dict[str, Any], others: Iterable[dict[str, Any] | Counter]) -> float:
    """Distance to the nearest of ``others`` (1 when there are none)."""
    sig = signature(doc)
    return min((distance(sig, o) for o in others), default=1.0)
