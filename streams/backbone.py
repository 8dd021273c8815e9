"""One object that builds every client a process needs to talk to the log, from ``ESPER_*`` settings."""

from __future__ import annotations

from functools import cached_property
from typing import Iterable

from streams.catalog import CatalogResolver, publish_catalog
from streams.config import StreamSettings, load_settings
from streams.consumer import DeadLetterSink, EventConsumer
from streams.publisher import KafkaPublisher
from streams.replay import KafkaSource, ReplayReader
from streams.schemas import SchemaCatalog
from streams.serde import ConfluentSerde, Serde, SingleObjectSerde
from streams.topics import TOPICS, TopicRegistry, ensure_topics

__all__ = ["Backbone"]


class Backbone:
    def __init__(self, settings: StreamSettings | None = None, registry: TopicRegistry | None = None,
                 catalog: SchemaCatalog | None = None):
        self.settings = settings or load_settings()
        self.registry = registry or (TOPICS.with_prefix(self.settings.topic_prefix) if self.settings.topic_prefix else TOPICS)
        self.catalog = catalog or SchemaCatalog.load()
        self._sources: list[KafkaSource] = []

    @property
    def bootstrap(self) -> str:
        return self.settings.bootstrap_servers

    def admin(self):
        from confluent_kafka.admin import AdminClient

        return AdminClient({"bootstrap.servers": self.bootstrap})

    def ensure_topics(self) -> list[str]:
        """Create missing topics and (re)publish the schema catalog. Idempotent."""
        created = ensure_topics(self.admin(), self.registry, replication=self.settings.topic_replication,
                                min_insync=self.settings.topic_min_insync)
        with self.publisher() as pub:
            publish_catalog(pub, self.catalog)
        return created

    @cached_property
    def serde(self) -> Serde:
        if self.settings.schema_registry_url:
            return ConfluentSerde(self.catalog, self.settings.schema_registry_url)
        resolver = CatalogResolver(self.source(), self.registry.schema_catalog)
        return SingleObjectSerde(self.catalog, resolver=resolver)

    def resolve_topic(self, name: str) -> str:
        """A registry topic by its full name or by its name without this backbone's prefix."""
        if name not in self.registry and self.registry.prefix + name in self.registry:
            return self.registry.prefix + name
        return self.registry.spec(name).name

    def publisher(self, **overrides) -> KafkaPublisher:
        return KafkaPublisher(self.bootstrap, self.serde, self.registry, **overrides)

    def run_publisher(self, **overrides) -> KafkaPublisher:
        """The publisher of a training run (Tolaria, Kasmina): events gathered for ``run_linger_ms`` into one
        produce request instead of one request an epoch; everything else as ``publisher``."""
        return self.publisher(**{"linger.ms": self.settings.run_linger_ms, **overrides})

    def source(self, **overrides) -> KafkaSource:
        src = KafkaSource(self.bootstrap, **overrides)
        self._sources.append(src)
        return src

    def replay_reader(self) -> ReplayReader:
        return ReplayReader(self.source(), self.serde)

    def consumer(self, topics: Iterable[str], group_id: str, name: str | None = None, **overrides) -> EventConsumer:
        sink = DeadLetterSink(self.publisher(), name or group_id)  # the consumer's own: closed with it
        return EventConsumer(self.bootstrap, topics, group_id, self.serde, sink, self.registry,
                             close_deadletter=True, **overrides)

    def close(self) -> None:
        for src in self._sources:
            src.close()
        self._sources.clear()
