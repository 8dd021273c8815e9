"""Esper's Kafka plumbing: schemas, serde, topics, publishers, consumers, replay. No torch here."""

from streams.backbone import Backbone
from streams.config import StreamSettings, load_settings
from streams.consumer import ConsumedEvent, DeadLetterSink, EventConsumer
from streams.envelope import EnvelopeFactory
from streams.exceptions import (
    ConfigError,
    DecodeError,
    EncodeError,
    EsperError,
    PublishError,
    SchemaError,
    SchemaNotFound,
    TopicError,
)
from streams.publisher import InMemoryLog, InMemoryPublisher, KafkaPublisher, LogRecord, Publisher
from streams.replay import KafkaSource, MemorySource, ReplayReader
from streams.schemas import NamedSchema, SchemaCatalog
from streams.serde import ConfluentSerde, Decoded, SingleObjectSerde
from streams.topics import TOPICS, TopicRegistry, TopicSpec

__all__ = [
    "Backbone", "StreamSettings", "load_settings", "ConsumedEvent", "DeadLetterSink", "EventConsumer",
    "EnvelopeFactory", "ConfigError", "DecodeError", "EncodeError", "EsperError", "PublishError", "SchemaError",
    "SchemaNotFound", "TopicError", "InMemoryLog", "InMemoryPublisher", "KafkaPublisher", "LogRecord", "Publisher",
    "KafkaSource", "MemorySource", "ReplayReader", "NamedSchema", "SchemaCatalog", "ConfluentSerde", "Decoded",
    "SingleObjectSerde", "TOPICS", "TopicRegistry", "TopicSpec",
]
