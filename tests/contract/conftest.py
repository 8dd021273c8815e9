"""One backend fixture, two backends: the in-memory twin and the real broker run the same contract tests."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from streams import InMemoryLog, InMemoryPublisher, KafkaPublisher, MemorySource, ReplayReader, SingleObjectSerde
from streams.publisher import Publisher
from streams.replay import KafkaSource
from streams.topics import TOPICS, TopicRegistry


@dataclass
class Backend:
    name: str
    publisher: Publisher
    registry: TopicRegistry
    make_reader: callable  # (**source options) -> ReplayReader over everything published so far

    def topic(self, base: str) -> str:
        return self.registry.prefix + base


@pytest.fixture(params=["memory", pytest.param("kafka", marks=pytest.mark.integration)])
def backend(request, catalog):
    serde = SingleObjectSerde(catalog)
    if request.param == "memory":
        log = InMemoryLog(TOPICS)
        yield Backend("memory", InMemoryPublisher(serde, log), TOPICS, lambda **_: ReplayReader(MemorySource(log), serde))
        return
    registry = request.getfixturevalue("topic_registry")()
    bootstrap = request.getfixturevalue("kafka_bootstrap")
    sources = []

    def reader(**options):
        src = KafkaSource(bootstrap, **options)
        sources.append(src)
        return ReplayReader(src, serde)

    pub = KafkaPublisher(bootstrap, serde, registry)
    yield Backend("kafka", pub, registry, reader)
    pub.flush()
    for src in sources:
        src.close()
