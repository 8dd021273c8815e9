"""Urza for the runtime: the library view folded from the log, and blueprint submission."""

from __future__ import annotations

from processors.urza_view import UrzaView
from streams.backbone import Backbone
from streams.contracts import BlueprintSubmitted
from streams.envelope import EnvelopeFactory

__all__ = ["URZA_TOPICS", "load_view", "submit_blueprint"]

URZA_TOPICS = ("urza.blueprints.events", "tezzeret.kernels.events", "urabrask.kernels.reports", "urza.kernels.events")


def load_view(backbone: Backbone) -> UrzaView:
    """Fold every Urza-related event on the log, from offset 0 to now."""
    topics = [backbone.resolve_topic(t) for t in URZA_TOPICS]
    view = UrzaView()
    for ev in backbone.replay_reader().events(topics):
        if ev.error is None:
            view.apply(ev.decoded.typed())
    return view


def submit_blueprint(publisher, envelopes: EnvelopeFactory, blueprint, submitted_by: str,
                     widths: tuple[int, ...] = (), pipelines: tuple[str, ...] = ()) -> BlueprintSubmitted:
    event = BlueprintSubmitted(
        envelope=envelopes.next(f"blueprint/{blueprint.blueprint_id}/submission/{envelopes.run_id}"),
        blueprint_id=blueprint.blueprint_id, name=str(blueprint.doc.get("name")), ir_version=1,
        ir_json=blueprint.canonical, submitted_by=submitted_by, tags=[t for t in blueprint.doc.get("tags") or []
                                                                      if isinstance(t, str)],
        parent_ids=[], chunk_widths=list(widths), pipelines=list(pipelines),
    )
    publisher.publish(event, key=f"blueprint/{blueprint.blueprint_id}")
    return event
