"""The Urza library view, folded from events: blueprints, artifacts, status, reports, tags, lineage.

It is a pure fold (no I/O): replay, the REST API and the stream processors all feed it the same events and get the
same state. Events of one originator are applied strictly in ``originator_version`` order: a repeated event
(same id or an old version) is skipped and counted, an event that arrives ahead of its predecessor (its
aggregate's events live on several topics) waits for it, and whatever still waits at the end is reported by
``gaps()`` — surfaced, never silently applied or dropped.

Kernel status: COMPILED on ``KernelCompiled``; ``KernelStatusChanged`` moves it on (VALIDATED, REJECTED, RETIRED).
``query`` only ever returns VALIDATED artifacts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Iterable

from streams.contracts import (
    BlueprintRejected,
    BlueprintSubmitted,
    KernelCompilationFailed,
    KernelCompiled,
    KernelStatusChanged,
    KernelTagsAssigned,
    KernelValidationReport,
)

__all__ = ["UrzaView", "BlueprintRecord", "KernelRecord"]

URZA_EVENTS = (BlueprintSubmitted, BlueprintRejected, KernelCompiled, KernelCompilationFailed, KernelStatusChanged,
               KernelValidationReport, KernelTagsAssigned)


@dataclass
class KernelRecord:
    artifact_id: str
    blueprint_id: str
    hardware: str
    pipeline: str
    sha256: str
    size_bytes: int
    compile_ms: float
    signature: dict
    status: str = "COMPILED"
    tags: list[str] = field(default_factory=list)
    risk_score: float | None = None
    conf_level: str | None = None
    report: dict | None = None
    history: list[str] = field(default_factory=list)

    @property
    def features(self) -> int | None:
        try:
            return int(self.signature["inputs"][0]["shape"][1])
        except (KeyError, IndexError, TypeError, ValueError):
            return None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items()} | {"features": self.features}


@dataclass
class BlueprintRecord:
    blueprint_id: str
    name: str
    ir: dict
    tags: list[str]
    parents: list[str]
    submitted_by: str
    status: str = "SUBMITTED"  # SUBMITTED, REJECTED
    rejection: str | None = None
    failures: list[str] = field(default_factory=list)
    artifacts: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class UrzaView:
    def __init__(self):
        self.blueprints: dict[str, BlueprintRecord] = {}
        self.kernels: dict[str, KernelRecord] = {}
        self._versions: dict[str, int] = {}
        self._seen_ids: set[str] = set()
        self._waiting: dict[str, dict[int, Any]] = {}
        self.duplicates = 0
        self.applied = 0

    # ------------------------------------------------------------------ folding
    def apply_all(self, events: Iterable[Any]) -> "UrzaView":
        for ev in events:
            self.apply(ev)
        return self

    def apply(self, event: Any) -> bool:
        """Apply one event (or park it until its predecessor arrives). Returns whether anything was applied."""
        if not isinstance(event, URZA_EVENTS):
            return False
        env = event.envelope
        if env.event_id in self._seen_ids or env.originator_version <= self._versions.get(env.originator_id, 0):
            self.duplicates += 1
            return False
        expected = self._versions.get(env.originator_id, 0) + 1
        if env.originator_version != expected:
            self._waiting.setdefault(env.originator_id, {})[env.originator_version] = event
            return False
        self._apply_in_order(event)
        waiting = self._waiting.get(env.originator_id, {})
        while (nxt := waiting.pop(self._versions[env.originator_id] + 1, None)) is not None:
            self._apply_in_order(nxt)
        if not waiting:
            self._waiting.pop(env.originator_id, None)
        return True

    def _apply_in_order(self, event: Any) -> None:
        env = event.envelope
        self._versions[env.originator_id] = env.originator_version
        self._seen_ids.add(env.event_id)
        self.applied += 1
        handler = getattr(self, f"_on_{type(event).__name__}")
        handler(event)

    def gaps(self) -> dict[str, list[int]]:
        """Originators with events waiting for a missing predecessor: {originator: [waiting versions]}."""
        return {o: sorted(w) for o, w in self._waiting.items() if w}

    def _on_BlueprintSubmitted(self, ev: BlueprintSubmitted) -> None:
        try:
            ir = json.loads(ev.ir_json)
        except ValueError:
            ir = {}
        self.blueprints[ev.blueprint_id] = BlueprintRecord(ev.blueprint_id, ev.name, ir, list(ev.tags),
                                                           list(ev.parent_ids), ev.submitted_by)

    def _on_BlueprintRejected(self, ev: BlueprintRejected) -> None:
        bp = self.blueprints.get(ev.blueprint_id)
        if bp is not None:
            bp.status, bp.rejection = "REJECTED", f"{ev.stage}: {ev.reason}"

    def _on_KernelCompilationFailed(self, ev: KernelCompilationFailed) -> None:
        bp = self.blueprints.get(ev.blueprint_id)
        if bp is not None:
            bp.failures.append(f"{ev.hardware}/{ev.pipeline}: {ev.error}")

    def _on_KernelCompiled(self, ev: KernelCompiled) -> None:
        try:
            signature = json.loads(ev.signature_json)
        except ValueError:
            signature = {}
        rec = KernelRecord(ev.artifact_id, ev.blueprint_id, ev.hardware, ev.pipeline, ev.sha256, ev.size_bytes,
                           ev.compile_ms, signature, history=["COMPILED"])
        self.kernels[ev.artifact_id] = rec
        bp = self.blueprints.get(ev.blueprint_id)
        if bp is not None and ev.artifact_id not in bp.artifacts:
            bp.artifacts.append(ev.artifact_id)

    def _on_KernelStatusChanged(self, ev: KernelStatusChanged) -> None:
        rec = self.kernels.get(ev.artifact_id)
        if rec is not None:
            rec.status = ev.to_status
            rec.history.append(ev.to_status)

    def _on_KernelValidationReport(self, ev: KernelValidationReport) -> None:
        rec = self.kernels.get(ev.artifact_id)
        if rec is not None:
            rec.report = ev.to_avro() | {"envelope": None}

    def _on_KernelTagsAssigned(self, ev: KernelTagsAssigned) -> None:
        rec = self.kernels.get(ev.artifact_id)
        if rec is not None:
            rec.tags, rec.risk_score, rec.conf_level = list(ev.tags), ev.risk_score, ev.conf_level

    # ------------------------------------------------------------------ queries
    def query(self, tags: Iterable[str] = (), hardware: str | None = None, features: int | None = None,
              blueprint_id: str | None = None, status: str = "VALIDATED", limit: int = 50) -> list[KernelRecord]:
        """Artifacts with every tag in ``tags`` (and the given hardware / chunk width / blueprint), lowest risk
        first. Only VALIDATED artifacts unless asked otherwise: a stale or unvalidated kernel is never offered."""
        wanted = set(tags)
        out = [
            k for k in self.kernels.values()
            if k.status == status and wanted <= set(k.tags) and (hardware is None or k.hardware == hardware)
            and (features is None or k.features == features) and (blueprint_id is None or k.blueprint_id == blueprint_id)
        ]
        out.sort(key=lambda k: (k.risk_score if k.risk_score is not None else 1.0, k.artifact_id))
        return out[:limit]

    def blueprint(self, blueprint_id: str) -> BlueprintRecord | None:
        found = self.blueprints.get(blueprint_id)
        if found is None:  # allow an unambiguous prefix or a name
            matches = [b for b in self.blueprints.values() if b.blueprint_id.startswith(blueprint_id)
                       or b.name == blueprint_id]
            found = matches[0] if len(matches) == 1 else None
        return found
