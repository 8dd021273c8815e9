"""The topic registry: every topic Esper uses, its shape, and the events it may carry.

Topics are created here, idempotently, and nowhere else (the local broker runs with auto-creation off, so a
misspelled topic fails loudly). A topic that exists with fewer partitions or another cleanup policy than the
registry says is reported, never silently used.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from streams.exceptions import TopicError
from streams.retry import retrying

__all__ = ["TopicSpec", "TopicRegistry", "TOPICS", "ensure_topics", "DEADLETTER_TOPIC", "SCHEMA_CATALOG_TOPIC"]

DAY_MS = 24 * 3600 * 1000

DEADLETTER_TOPIC = "esper.deadletter"
SCHEMA_CATALOG_TOPIC = "esper.schemas"


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    key: str  # what the key is, in words: it decides ordering
    events: tuple[str, ...]  # full names of the Avro records allowed on it; empty = raw bytes (DLQ, catalog)
    cleanup_policy: str = "delete"  # or "compact"
    retention_ms: int = 7 * DAY_MS  # -1 = forever
    doc: str = ""
    extra_config: dict[str, str] = field(default_factory=dict)
    value_schema: str | None = None  # a state topic's values: this Avro record, single-object encoded

    def config(self) -> dict[str, str]:
        cfg = {"cleanup.policy": self.cleanup_policy, "retention.ms": str(self.retention_ms)}
        cfg.update(self.extra_config)
        return cfg


def _ev(*names: str) -> tuple[str, ...]:
    return tuple(f"esper.{n}" for n in names)


_SPECS = [
    TopicSpec("control.kasmina.commands", 3, "seed/<layer>/<seed>", _ev("kasmina.KasminaControlCommand"),
              doc="Tamiyo's commands to Kasmina seeds (F.4)."),
    TopicSpec("kasmina.lifecycle.transitions", 3, "seed/<layer>/<seed>", _ev("kasmina.SeedLifecycleTransition"),
              retention_ms=-1, doc="Every seed state change: the lifecycle's source of truth."),
    TopicSpec("kasmina.telemetry.seeds", 3, "layer/<layer>", _ev("kasmina.SeedTelemetry"), retention_ms=3 * DAY_MS,
              doc="Per-epoch batched seed health."),
    TopicSpec("tolaria.run.events", 3, "run/<run-id>",
              _ev("tolaria.RunStarted", "tolaria.RunCompleted", "tolaria.RunFailed", "tolaria.EpochCompleted",
                  "tolaria.CheckpointSaved",
                  "tolaria.RollbackPerformed"),
              retention_ms=-1, doc="The run's heartbeat: start, epochs, checkpoints, rollbacks, end."),
    TopicSpec("tolaria.system.state", 3, "run/<run-id>", _ev("tolaria.SystemStatePacket"),
              doc="Tolaria's epoch-boundary snapshot for Tamiyo."),
    TopicSpec("tamiyo.adaptation.signals", 3, "run/<run-id>", _ev("tolaria.AdaptationSignal"),
              doc="Tamiyo's answer to Tolaria: rebuild the optimizer, roll back."),
    TopicSpec("tamiyo.decisions", 3, "run/<run-id>", _ev("tamiyo.TamiyoDecision"), retention_ms=-1,
              doc="What Tamiyo saw, weighed and chose: Simic's training data."),
    TopicSpec("innovation.field_reports", 3, "blueprint/<blueprint-id>", _ev("innovation.FieldReport"),
              retention_ms=-1, doc="Outcomes of deployed blueprints, for Karn and Simic (F.4)."),
    TopicSpec("urza.blueprints.events", 3, "blueprint/<blueprint-id>",
              _ev("urza.BlueprintSubmitted", "urza.BlueprintRejected"), retention_ms=-1,
              doc="The blueprint library's history."),
    TopicSpec("urza.kernels.events", 3, "kernel/<artifact-id>", _ev("urza.KernelStatusChanged"), retention_ms=-1,
              doc="Artifact status changes in Urza."),
    TopicSpec("tezzeret.kernels.events", 3, "blueprint/<blueprint-id>",
              _ev("tezzeret.KernelCompiled", "tezzeret.KernelCompilationFailed"), retention_ms=-1,
              doc="Compilation results."),
    TopicSpec("urabrask.kernels.reports", 3, "kernel/<artifact-id>",
              _ev("urabrask.KernelValidationReport", "urabrask.KernelTagsAssigned"), retention_ms=-1,
              doc="Validation reports and empirical tags."),
    TopicSpec("state.kasmina.seeds", 3, "<run-id>|seed/<layer>/<seed>", (), cleanup_policy="compact", retention_ms=-1,
              doc="Every seed's current state per run (esper.state.SeedStateEntry), materialized by the processors.",
              value_schema="esper.state.SeedStateEntry"),
    TopicSpec("state.urza.library", 3, "blueprint/<id>, kernel/<id>, version/<originator>, waiting/<originator>/<v>",
              (), cleanup_policy="compact", retention_ms=-1, value_schema="esper.state.UrzaLibraryEntry",
              doc="The Urza library (esper.state.UrzaLibraryEntry: blueprints, kernels, status, tags), materialized "
                  "by the processors."),
    TopicSpec("state.urabrask.distributions", 3, "<hardware>|<artifact-id>", (), cleanup_policy="compact",
              retention_ms=-1, value_schema="esper.state.KernelDistributionEntry",
              doc="Each validated kernel's measurements per hardware (esper.state.KernelDistributionEntry): the "
                  "peers Urabrask tags against."),
    TopicSpec(SCHEMA_CATALOG_TOPIC, 1, "<fingerprint hex>", (), cleanup_policy="compact", retention_ms=-1,
              doc="Every schema ever written, keyed by fingerprint, as JSON: resolves any single-object record."),
    TopicSpec(DEADLETTER_TOPIC, 1, "the original key", (), retention_ms=30 * DAY_MS,
              doc="Anything that could not be decoded or applied, raw, with the reason in esper.dlq.* headers."),
]

class TopicRegistry:
    """A set of topic specs. ``with_prefix`` gives the same topics under other names (tests, side-by-side runs)."""

    def __init__(self, specs: list[TopicSpec], prefix: str = ""):
        self.prefix = prefix
        self._specs = {s.name: s for s in specs}
        self._by_event = {ev: s.name for s in specs for ev in s.events}

    def with_prefix(self, prefix: str) -> "TopicRegistry":
        return TopicRegistry([replace(s, name=prefix + s.name) for s in self._specs.values()], prefix=prefix)

    def __iter__(self):
        return iter(self._specs.values())

    def __contains__(self, name: str) -> bool:
        return name in self._specs

    def names(self) -> list[str]:
        return sorted(self._specs)

    def spec(self, name: str) -> TopicSpec:
        try:
            return self._specs[name]
        except KeyError:
            raise TopicError(f"unknown topic {name!r}; known topics: {', '.join(sorted(self._specs))}") from None

    def carrying(self, *event_names: str) -> tuple[str, ...]:
        """The topics (unprefixed names, in the registry's order) that carry any of these events (full Avro names):
        what a reader subscribes to, derived here instead of kept by hand."""
        unknown = set(event_names) - set(self._by_event)
        if unknown:
            raise TopicError(f"no topic carries {sorted(unknown)}")
        return tuple(s.name[len(self.prefix):] for s in self._specs.values() if set(s.events) & set(event_names))

    def for_event(self, event_name: str) -> str:
        try:
            return self._by_event[event_name]
        except KeyError:
            raise TopicError(f"no topic carries {event_name}") from None

    def check(self, topic_name: str, event_name: str) -> TopicSpec:
        """The spec of ``topic_name`` if it may carry ``event_name``; TopicError otherwise."""
        spec = self.spec(topic_name)
        if event_name not in spec.events:
            raise TopicError(f"{event_name} may not be published to {topic_name} (it carries: {', '.join(spec.events) or 'raw bytes'})")
        return spec

    @property
    def deadletter(self) -> str:
        return self.prefix + DEADLETTER_TOPIC

    @property
    def schema_catalog(self) -> str:
        return self.prefix + SCHEMA_CATALOG_TOPIC


TOPICS = TopicRegistry(_SPECS)


def ensure_topics(admin, registry: TopicRegistry = TOPICS, timeout: float = 30.0, replication: int = -1,
                  min_insync: int | None = None) -> list[str]:
    """Create the registry's missing topics (confluent-kafka AdminClient) with ``replication`` replicas (-1: the
    cluster's default) and ``min.insync.replicas`` (None: the cluster's default). Returns the names created.
    Idempotent: existing topics are left as they are."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import NewTopic

    specs = list(registry)
    meta = retrying(lambda: admin.list_topics(timeout=timeout), timeout=timeout)
    existing = meta.topics
    missing = [s for s in specs if s.name not in existing]
    for s in specs:
        if s.name in existing and len(existing[s.name].partitions) < s.partitions:
            raise TopicError(
                f"topic {s.name} exists with {len(existing[s.name].partitions)} partitions; the registry wants {s.partitions}"
            )
    if not missing:
        return []
    futures = admin.create_topics(
        [NewTopic(s.name, num_partitions=s.partitions, replication_factor=replication,
                  config={**s.config(), **({"min.insync.replicas": str(min_insync)} if min_insync else {})})
         for s in missing],
        operation_timeout=timeout,
        request_timeout=timeout,
    )
    created = []
    for name, fut in futures.items():
        try:
            fut.result()
            created.append(name)
        except KafkaException as exc:
            err = exc.args[0]
            if err.name() != "TOPIC_ALREADY_EXISTS":  # another process won the race: fine
                raise TopicError(f"could not create topic {name}: {err.str()}") from exc
    _wait_for_leaders(admin, [s.name for s in missing], timeout)
    return created


def _wait_for_leaders(admin, names: list[str], timeout: float) -> None:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        topics = admin.list_topics(timeout=timeout).topics
        if all(n in topics and topics[n].partitions and all(p.leader >= 0 for p in topics[n].partitions.values())
               for n in names):
            return
        time.sleep(0.1)
    raise TopicError(f"topics {names} have no leader after {timeout:.0f}s")
