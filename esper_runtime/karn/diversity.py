"""How different designs are (appendix D.2.4): a structural distance between IR graphs, the library's diversity,
and a child's novelty against the library.

A design's *signature* is the multiset of its ops (each with its sizes: a linear's ``out``, an attention's
``tokens``, a convolution's ``kernel_size``) and of its edges, each edge named by the ops at its ends (an input by
its name: ``x``, ``u``, ``x0``), so renaming nodes or reordering them changes nothing, and two designs that wire the
same ops differently, or size them differently, differ. The distance between two designs is the Jaccard distance
of their signatures (0: the same multiset; 1: nothing in common)."""

from __future__ import annotations

import json
from collections import Counter
from itertools import combinations
from typing import Any, Iterable

__all__ = ["signature", "distance", "diversity", "novelty"]


SIZE_ATTRS = ("out", "tokens", "kernel_size")  # the attrs that size an op: a width change is a structural change


def _label(node: dict[str, Any]) -> str:
    """An op with its sizes, ``linear{"F":0.5}``: two designs that differ only in a hidden width are near, not
    equal (the one operator that makes a design smaller, ``scale_width``, would otherwise make no novelty)."""
    attrs = node.get("attrs") or {}
    sizes = [f"{k}={json.dumps(attrs[k], sort_keys=True, separators=(',', ':'))}" for k in SIZE_ATTRS if k in attrs]
    return node["op"] + (f"[{','.join(sizes)}]" if sizes else "")


def signature(doc: dict[str, Any]) -> Counter:
    labels = {n["id"]: _label(n) for n in doc.get("nodes") or []}
    out: Counter = Counter()
    for n in doc.get("nodes") or []:
        out[labels[n["id"]]] += 1
        for src in n.get("inputs") or []:
            out[f"{labels.get(src, src)}>{labels[n['id']]}"] += 1
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
