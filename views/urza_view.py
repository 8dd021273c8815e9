"""The Urza library view, folded from events: blueprints, artifacts, status, reports, tags, lineage.

It is a pure fold (no I/O): replay, the REST API and the stream processors all feed it the same events and get the
same state. Events of one originator are applied strictly in ``originator_version`` order: a repeated event
(same id or an old version) is skipped and counted, an event that arrives ahead of its predecessor (its
aggregate's events live on several topics) waits for it, and whatever still waits at the end is reported by
``gaps()`` — surfaced, never silently applied or dropped.

A record the fold cannot apply (its JSON does not parse, nests deeper than ``MAX_JSON_DEPTH``, or anything else a
handler refuses) is skipped, its version counted so its successors are not held up, and its reason kept in
``rejected`` (and ``last_rejection``, for the live agent to dead-letter it): one poison record never stops a fold.

Kernel status: COMPILED on ``KernelCompiled``; ``KernelStatusChanged`` moves it on (VALIDATED, REJECTED, RETIRED).
``query`` only ever returns VALIDATED artifacts.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from streams.contracts import (
    BlueprintRejected,
    BlueprintSubmitted,
    KernelCompilationFailed,
    KernelCompiled,
    KernelStatusChanged,
    KernelTagsAssigned,
    KernelValidationReport,
)
from streams.topics import TOPICS
from views.exceptions import Unapplicable

__all__ = ["UrzaView", "BlueprintRecord", "KernelRecord", "URZA_TOPICS", "Unapplicable", "parse_json"]

MAX_JSON_DEPTH = 32  # IR and signatures nest a few levels; anything deeper is not something Esper wrote


def parse_json(text: str, what: str) -> Any:
    """``text`` as JSON nesting at most ``MAX_JSON_DEPTH`` levels, or Unapplicable saying why not."""
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise Unapplicable(f"{what} is not JSON: {type(exc).__name__}: {str(exc)[:200]}") from None
    stack = [(value, 1)]
    while stack:  # iterative: the depth check itself must not recurse
        node, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise Unapplicable(f"{what} nests deeper than {MAX_JSON_DEPTH} levels")
        if isinstance(node, dict):
            stack.extend((v, depth + 1) for v in node.values())
        elif isinstance(node, list):
            stack.extend((v, depth + 1) for v in node)
    return value

URZA_EVENTS = (BlueprintSubmitted, BlueprintRejected, KernelCompiled, KernelCompilationFailed, KernelStatusChanged,
               KernelValidationReport, KernelTagsAssigned)
URZA_TOPICS = TOPICS.carrying(*(e.AVRO_NAME for e in URZA_EVENTS))


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

    @property
    def in_features(self) -> int | None:
        """The width of the wide input a design reads beside its chunk (None: it reads only the chunk)."""
        try:
            second = self.signature["inputs"][1]
            return int(second["shape"][1]) if second.get("name") in ("u", "x0") else None
        except (KeyError, IndexError, TypeError, ValueError, AttributeError):
            return None

    @property
    def input_source(self) -> str | None:
        """What that wide input is: ``"layer"`` (the seed layer's input, ``u``), ``"model"`` (``x0``), or None."""
        if self.in_features is None:
            return None
        return "model" if self.signature["inputs"][1].get("name") == "x0" else "layer"

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items()} | {"features": self.features, "in_features": self.in_features,
                                                           "input_source": self.input_source}


_KERNEL_FIELDS = frozenset(KernelRecord.__dataclass_fields__)


@dataclass
class BlueprintRecord:
    blueprint_id: str
    name: str
    ir: dict
    tags: list[str]
    parents: list[str]
    submitted_by: str
    status: str = "SUBMITTED"  # SUBMITTED, REJECTED; PENDING until its submission is applied
    rejection: str | None = None
    failures: list[str] = field(default_factory=list)
    failed_widths: list[int] = field(default_factory=list)  # chunk widths a compilation failed at
    artifacts: list[str] = field(default_factory=list)
    mutation: str = ""  # the Karn operator that made it from ``parents``; "" for a design a person wrote

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _from_entry(kind: str, entry: dict) -> dict:
    """An ``esper.state.UrzaLibraryEntry`` dict as the plain shape ``restore`` builds records from."""
    if kind == "blueprint":
        rec = dict(entry["blueprint"])
        rec["ir"] = json.loads(rec.pop("ir_json"))
        return rec
    if kind == "kernel":
        rec = dict(entry["kernel"])
        rec["signature"] = json.loads(rec.pop("signature_json"))
        report = rec.pop("report_json")
        rec["report"] = None if report is None else json.loads(report)
        return rec
    if kind == "version":
        return {"version": entry["version"]}
    return {"raw": entry["waiting_event"]}


class UrzaView:
    def __init__(self):
        self.blueprints: dict[str, BlueprintRecord] = {}
        self.kernels: dict[str, KernelRecord] = {}
        self._versions: dict[str, int] = {}
        self._seen_ids: set[str] = set()
        self._waiting: dict[str, dict[int, Any]] = {}
        self.duplicates = 0
        self.applied = 0
        self.rejected: list[tuple[str, str]] = []  # (event id, why it was skipped)
        self.last_rejection: str | None = None  # set by apply() when the event it was given was skipped
        self._dirty: set[str] = set()  # entry keys changed since take_dirty()

    # ------------------------------------------------------------------ folding
    def apply_all(self, events: Iterable[Any]) -> "UrzaView":
        for ev in events:
            self.apply(ev)
        return self

    def apply(self, event: Any) -> bool:
        """Apply one event (or park it until its predecessor arrives). Returns whether anything was applied. Never
        raises for a record of its own types: what it cannot apply is skipped (``last_rejection`` says why)."""
        self.last_rejection = None
        if not isinstance(event, URZA_EVENTS):
            return False
        env = event.envelope
        if env.event_id in self._seen_ids or env.originator_version <= self._versions.get(env.originator_id, 0):
            self.duplicates += 1
            return False
        expected = self._versions.get(env.originator_id, 0) + 1
        if env.originator_version != expected:
            self._waiting.setdefault(env.originator_id, {})[env.originator_version] = event
            self._dirty.add(f"waiting/{env.originator_id}/{env.originator_version}")
            return False
        applied = self._apply_in_order(event)
        rejection = self.last_rejection  # about this event; parked successors' rejections are in ``rejected``
        waiting = self._waiting.get(env.originator_id, {})
        while (nxt := waiting.pop(self._versions[env.originator_id] + 1, None)) is not None:
            self._dirty.add(f"waiting/{env.originator_id}/{nxt.envelope.originator_version}")
            applied = self._apply_in_order(nxt) or applied
        if not waiting:
            self._waiting.pop(env.originator_id, None)
        self.last_rejection = rejection
        return applied

    def _apply_in_order(self, event: Any) -> bool:
        env = event.envelope
        self._versions[env.originator_id] = env.originator_version
        self._seen_ids.add(env.event_id)
        self._dirty.add(f"version/{env.originator_id}")
        handler = getattr(self, f"_on_{type(event).__name__}")
        try:
            handler(event)  # handlers check everything before they change anything
        except Exception as exc:  # noqa: BLE001 - one poison record must not stop the fold
            reason = f"{type(event).__name__} {env.event_id} skipped: {exc}" if isinstance(exc, Unapplicable) else \
                f"{type(event).__name__} {env.event_id} skipped: {type(exc).__name__}: {str(exc)[:300]}"
            self.rejected.append((env.event_id, reason))
            self.last_rejection = reason
            return False
        self.applied += 1
        artifact, blueprint = getattr(event, "artifact_id", None), getattr(event, "blueprint_id", None)
        if artifact in self.kernels:
            self._dirty.add(f"kernel/{artifact}")
            blueprint = blueprint or self.kernels[artifact].blueprint_id
        if blueprint in self.blueprints:
            self._dirty.add(f"blueprint/{blueprint}")
        return True

    def gaps(self) -> dict[str, list[int]]:
        """Originators with events waiting for a missing predecessor: {originator: [waiting versions]}."""
        return {o: sorted(w) for o, w in self._waiting.items() if w}

    # ------------------------------------------------------------------ snapshots (the materializer's table)
    def take_dirty(self, encode: Callable[[Any], bytes]) -> dict[str, dict | None]:
        """The entries changed since the last call, each an ``esper.state.UrzaLibraryEntry`` dict (None: the entry
        is gone).

        Keys: ``blueprint/<id>``, ``kernel/<id>``, ``version/<originator>`` and ``waiting/<originator>/<version>``
        (an event parked until its predecessor arrives, kept as its encoded bytes so a restart loses nothing).
        ``restore`` rebuilds an equal view from all entries.
        """
        out: dict[str, dict | None] = {}
        for key in self._dirty:
            kind, _, rest = key.partition("/")
            entry = {"blueprint": None, "kernel": None, "version": None, "waiting_event": None}
            if kind == "blueprint":
                rec = self.blueprints[rest].to_dict()
                rec["ir_json"] = json.dumps(rec.pop("ir"), sort_keys=True)
                entry["blueprint"] = rec
            elif kind == "kernel":
                rec = {k: v for k, v in self.kernels[rest].to_dict().items() if k in _KERNEL_FIELDS}
                rec["signature_json"] = json.dumps(rec.pop("signature"), sort_keys=True)
                report = rec.pop("report")
                rec["report_json"] = None if report is None else json.dumps(report, sort_keys=True)
                entry["kernel"] = rec
            elif kind == "version":
                entry["version"] = self._versions[rest]
            else:
                originator, _, version = rest.rpartition("/")
                event = self._waiting.get(originator, {}).get(int(version))
                entry = None if event is None else entry | {"waiting_event": encode(event)}
            out[key] = entry
        self._dirty.clear()
        return out

    @classmethod
    def restore(cls, entries: Iterable[tuple[str, dict]], decode: Callable[[bytes], Any]) -> "UrzaView":
        """A view from ``take_dirty`` entries (the latest value of each key). Entries written as JSON before the
        state topic was Avro (``{"version": n}``, a blueprint or kernel dict, ``{"raw": base64}``) restore too."""
        view = cls()
        for key, value in entries:
            kind, _, rest = key.partition("/")
            if "blueprint" in value or "kernel" in value or "waiting_event" in value:  # esper.state.UrzaLibraryEntry
                value = _from_entry(kind, value)
            if kind == "blueprint":
                view.blueprints[rest] = BlueprintRecord(**value)
            elif kind == "kernel":
                # derived fields (features, in_features, input_source) are recomputed from the signature, whoever wrote them
                view.kernels[rest] = KernelRecord(**{k: v for k, v in value.items() if k in _KERNEL_FIELDS})
            elif kind == "version":
                view._versions[rest] = value["version"]
            elif kind == "waiting":
                originator, _, version = rest.rpartition("/")
                raw = value["raw"]  # bytes; base64 text in a JSON entry
                view._waiting.setdefault(originator, {})[int(version)] = decode(
                    base64.b64decode(raw) if isinstance(raw, str) else raw)
        return view

    def state(self) -> dict[str, Any]:
        """Everything the view holds, comparable between a replay and a restored materialization."""
        return {"blueprints": {k: v.to_dict() for k, v in sorted(self.blueprints.items())},
                "kernels": {k: v.to_dict() for k, v in sorted(self.kernels.items())},
                "versions": dict(sorted(self._versions.items())), "gaps": self.gaps()}

    # A blueprint's events come from several originators (its submission, each compile run, each validation run)
    # on several topics, so they may be applied in any order: each handler gives the same record whatever came
    # first (a record seen before its submission is a placeholder with status PENDING; lists are kept sorted).
    def _blueprint(self, blueprint_id: str) -> BlueprintRecord:
        rec = self.blueprints.get(blueprint_id)
        if rec is None:
            rec = self.blueprints[blueprint_id] = BlueprintRecord(blueprint_id, "", {}, [], [], "", status="PENDING")
            rec.artifacts = sorted(k.artifact_id for k in self.kernels.values() if k.blueprint_id == blueprint_id)
        return rec

    def _on_BlueprintSubmitted(self, ev: BlueprintSubmitted) -> None:
        ir = parse_json(ev.ir_json, "ir_json")
        if not isinstance(ir, dict):
            raise Unapplicable("ir_json is not a JSON object")
        rec = self._blueprint(ev.blueprint_id)
        rec.name, rec.ir, rec.tags, rec.parents, rec.submitted_by = (ev.name, ir, list(ev.tags), list(ev.parent_ids),
                                                                     ev.submitted_by)
        rec.mutation = ev.mutation
        if rec.status == "PENDING":
            rec.status = "SUBMITTED"

    def _on_BlueprintRejected(self, ev: BlueprintRejected) -> None:
        rec = self._blueprint(ev.blueprint_id)
        rec.status, rec.rejection = "REJECTED", f"{ev.stage}: {ev.reason}"

    def _on_KernelCompilationFailed(self, ev: KernelCompilationFailed) -> None:
        rec = self._blueprint(ev.blueprint_id)
        rec.failures = sorted(rec.failures + [f"{ev.hardware}/{ev.pipeline}: {ev.error}"])
        if ev.chunk_width is not None and ev.chunk_width not in rec.failed_widths:
            rec.failed_widths = sorted(rec.failed_widths + [ev.chunk_width])

    def _on_KernelCompiled(self, ev: KernelCompiled) -> None:
        signature = parse_json(ev.signature_json, "signature_json")
        if not isinstance(signature, dict):
            raise Unapplicable("signature_json is not a JSON object")
        rec = KernelRecord(ev.artifact_id, ev.blueprint_id, ev.hardware, ev.pipeline, ev.sha256, ev.size_bytes,
                           ev.compile_ms, signature, history=["COMPILED"])
        self.kernels[ev.artifact_id] = rec
        bp = self.blueprints.get(ev.blueprint_id)
        if bp is not None and ev.artifact_id not in bp.artifacts:
            bp.artifacts = sorted(bp.artifacts + [ev.artifact_id])

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
              blueprint_id: str | None = None, status: str = "VALIDATED", limit: int = 50,
              in_features: int | None = None, model_features: int | None = None) -> list[KernelRecord]:
        """Artifacts with every tag in ``tags`` (and the given hardware / chunk width / blueprint), lowest risk
        first. Only VALIDATED artifacts unless asked otherwise: a stale or unvalidated kernel is never offered.
        With ``in_features`` (the seed layer's input width), designs that read the layer's input are offered too,
        but only those built for that width; with ``model_features`` (the model's input width), so are designs that
        read the model's input, built for that width; without them, only designs that read the chunk alone."""
        wanted = set(tags)
        out = [
            k for k in self.kernels.values()
            if k.status == status and wanted <= set(k.tags) and (hardware is None or k.hardware == hardware)
            and (features is None or k.features == features) and (blueprint_id is None or k.blueprint_id == blueprint_id)
            and (k.in_features is None or k.in_features == (model_features if k.input_source == "model" else in_features))
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
