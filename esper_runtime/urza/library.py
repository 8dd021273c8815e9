"""Urza for the runtime: the library view folded from the log, and blueprint submission."""

from __future__ import annotations

from views.urza_view import URZA_TOPICS
from views.folds import fold_library as load_view
from streams.contracts import BlueprintSubmitted
from streams.envelope import EnvelopeFactory

__all__ = ["URZA_TOPICS", "load_view", "submit_blueprint"]


def submit_blueprint(publisher, envelopes: EnvelopeFactory, blueprint, submitted_by: str,
                     widths: tuple[int, ...] = (), pipelines: tuple[str, ...] = (),
                     input_widths: tuple[int, ...] = (), parent_ids: tuple[str, ...] = (),
                     mutation: str = "") -> BlueprintSubmitted:
    """Submit ``blueprint`` to Urza (Tezzeret compiles it from the log). ``parent_ids`` and ``mutation``: Karn's
    lineage, the designs it was made from and the operator that made it."""
    event = BlueprintSubmitted(
        envelope=envelopes.next(f"blueprint/{blueprint.blueprint_id}/submission/{envelopes.run_id}"),
        blueprint_id=blueprint.blueprint_id, name=str(blueprint.doc.get("name")), ir_version=1,
        ir_json=blueprint.canonical, submitted_by=submitted_by, tags=[t for t in blueprint.doc.get("tags") or []
                                                                      if isinstance(t, str)],
        parent_ids=list(parent_ids), mutation=mutation, chunk_widths=list(widths), pipelines=list(pipelines), input_widths=list(input_widths),
    )
    publisher.publish(event, key=f"blueprint/{blueprint.blueprint_id}")
    return event
