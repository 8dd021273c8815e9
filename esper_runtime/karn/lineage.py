"""Karn's family tree, folded from the log: each design Karn made, its parents and operator (from
``BlueprintSubmitted``), Urabrask's verdict on its kernels (Urza's view) and how it did in the field (the
``FieldReport`` events on ``innovation.field_reports``)."""

from __future__ import annotations

from typing import Any, Iterable

__all__ = ["family_tree", "field_factor", "field_outcomes", "read_field_reports"]


def read_field_reports(bb, **bounds) -> list[dict[str, Any]]:
    """Every FieldReport on the log (decoded Avro dicts), within ``bounds`` (``ReplayReader.bounds``'s); an
    undecodable record is skipped here (the dead-letter rule has recorded it where it was consumed)."""
    from streams.contracts import FieldReport
    from streams.replay import ReplayReader

    source = bb.source()
    try:
        return [ev.decoded.record for ev in ReplayReader(source, bb.serde).events(
                    [bb.resolve_topic("innovation.field_reports")], **bounds)
                if ev.decoded is not None and ev.decoded.schema.name == FieldReport.AVRO_NAME]
    finally:
        source.close()


def field_outcomes(reports: Iterable[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """Per blueprint id: germinated (every adaptation that ended), fossilized, culled (everything else)."""
    out: dict[str, dict[str, int]] = {}
    for r in reports:
        row = out.setdefault(r["blueprint_id"], {"germinated": 0, "fossilized": 0, "culled": 0})
        row["germinated"] += 1
        row["fossilized" if r["outcome"] == "FOSSILIZED" else "culled"] += 1
    return out


def field_factor(outcome: dict[str, int] | None) -> float:
    """What the field says of a design, as a factor on its score: twice its success rate with a uniform prior,
    ``2·(fossilized + 1) / (germinated + 2)`` — 1 for a design never grafted, toward 2 for one that always
    fossilized, toward 0 for one always culled or rolled back."""
    if not outcome:
        return 1.0
    return 2.0 * (outcome["fossilized"] + 1) / (outcome["germinated"] + 2)


def family_tree(view, reports: Iterable[dict[str, Any]] = ()) -> dict[str, Any]:
    """Karn's designs (``mutation`` set), generation by generation of the family tree, with their verdicts."""
    outcomes = field_outcomes(reports)
    designs = []
    for rec in sorted(view.blueprints.values(), key=lambda r: r.name):
        if not rec.mutation:
            continue
        kernels = [k for k in view.kernels.values() if k.blueprint_id == rec.blueprint_id]
        validated = [k for k in kernels if k.status == "VALIDATED"]
        risks = [k.risk_score for k in validated if k.risk_score is not None]
        field = outcomes.get(rec.blueprint_id, {"germinated": 0, "fossilized": 0, "culled": 0})
        designs.append({
            "blueprint_id": rec.blueprint_id, "name": rec.name, "mutation": rec.mutation, "parents": rec.parents,
            "parent_names": [view.blueprints[p].name if p in view.blueprints else p[:12] for p in rec.parents],
            "status": rec.status, "kernels": len(kernels), "validated": len(validated),
            "best_risk": min(risks) if risks else None, "tags": rec.tags, **field,
        })
    depth: dict[str, int] = {}

    def generation(bid: str, seen: frozenset = frozenset()) -> int:
        rec = view.blueprints.get(bid)
        if rec is None or not rec.mutation or bid in seen:
            return 0
        if bid not in depth:
            depth[bid] = 1 + max((generation(p, seen | {bid}) for p in rec.parents), default=0)
        return depth[bid]

    for d in designs:
        d["depth"] = generation(d["blueprint_id"])
    starter = {rec.blueprint_id for rec in view.blueprints.values() if not rec.mutation}
    return {"designs": designs, "karn_designs": len(designs),
            "karn_validated": sum(1 for d in designs if d["validated"]),
            "other_designs": len(starter),
            "field": {"karn": _rate(designs), "others": _rate(
                [{**outcomes.get(b, {"germinated": 0, "fossilized": 0})} for b in starter])}}


def _rate(rows) -> dict[str, Any]:
    germinated = sum(r.get("germinated", 0) for r in rows)
    fossilized = sum(r.get("fossilized", 0) for r in rows)
    return {"germinated": germinated, "fossilized": fossilized,
            "success_rate": round(fossilized / germinated, 4) if germinated else None}
