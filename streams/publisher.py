"""The publisher interface the runtime writes events through, with two backends.

``KafkaPublisher`` is an idempotent confluent-kafka producer (acks=all, batched, lz4). ``InMemoryPublisher`` writes
the same bytes into an :class:`InMemoryLog` for unit tests. Both share everything above the wire (topic checks,
encoding, keys) through :class:`Publisher`, and ``tests/contract/test_publisher_contract.py`` runs one test suite
against both.
"""

from __future__ import annotations

import logging
import threading
import time
import zlib
from abc import ABC, abstractmethod
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable

from streams.exceptions import PublishError, TopicError
from streams.serde import Serde
from streams.topics import TOPICS, TopicRegistry

__all__ = ["LogRecord", "Publisher", "KafkaPublisher", "InMemoryLog", "InMemoryPublisher", "Headers"]

log = logging.getLogger("esper.publisher")

Headers = list[tuple[str, bytes]]

POLL_EVERY = 64


@dataclass(slots=True)
class LogRecord:
    """One record as it sits in a partition; treat it as read-only. Slotted and not frozen: a frozen dataclass
    sets each field through ``object.__setattr__`` and cost 1.7 µs to build against 0.4 µs, on every record a
    replay or a consumer reads."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int
    headers: Headers = field(default_factory=list)

    def header(self, name: str) -> bytes | None:
        for k, v in self.headers:
            if k == name:
                return v
        return None


def _key_bytes(key: str | bytes | None) -> bytes | None:
    if key is None or isinstance(key, bytes):
        return key
    return key.encode()


class Publisher(ABC):
    """Publishes Esper events. ``publish`` validates and encodes synchronously, so a bad record raises at once
    and nothing of it is sent; delivery is asynchronous and ``flush`` reports any failure."""

    def __init__(self, serde: Serde, registry: TopicRegistry = TOPICS):
        self.serde = serde
        self.registry = registry
        self.published = 0
        self.published_by_run: Counter[str] = Counter()  # events per run_id; acknowledged once flush() returns

    def publish(
        self,
        event: Any,
        *,
        topic: str | None = None,
        key: str | bytes | None = None,
        headers: Headers | None = None,
    ) -> None:
        """Publish a generated contract event. Topic defaults to the event's home topic in the registry; key
        defaults to the envelope's ``originator_id`` (so one originator's events stay in order)."""
        name = getattr(event, "AVRO_NAME", None)
        if name is None:
            raise TopicError(f"cannot publish {type(event).__name__}: not a generated contract type")
        topic = topic or self.registry.for_event(name)
        self.registry.check(topic, name)
        value = self.serde.encode(event, topic)
        if key is None:
            key = event.envelope.originator_id
        self._send(topic, _key_bytes(key), value, headers or [], None)
        self.published += 1
        self.published_by_run[event.envelope.run_id] += 1

    def publish_many(self, events: Iterable[Any], *, topic: str | None = None) -> int:
        n = 0
        for ev in events:
            self.publish(ev, topic=topic)
            n += 1
        return n

    def publish_raw(self, topic: str, value: bytes | None, key: str | bytes | None = None, headers: Headers | None = None,
                    partition: int | None = None) -> None:
        """Send bytes as they are (dead letters, schema catalog, state entries). The topic must still be a registry
        topic. ``partition``: this partition instead of the key's (a state topic laid out by source partition)."""
        spec = self.registry.spec(topic)
        if partition is not None and not 0 <= partition < spec.partitions:
            raise PublishError(f"{topic} has no partition {partition} (it has {spec.partitions})")
        self._send(topic, _key_bytes(key), value, headers or [], partition)
        self.published += 1

    @abstractmethod
    def _send(self, topic: str, key: bytes | None, value: bytes | None, headers: Headers,
              partition: int | None) -> None: ...

    @abstractmethod
    def flush(self, timeout: float | None = None) -> None:
        """Block until everything published so far is acknowledged; raise PublishError on any failure. Without a
        ``timeout`` it waits as long as the backend itself keeps trying to deliver."""

    def close(self) -> None:
        self.flush()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class KafkaPublisher(Publisher):
    def __init__(self, bootstrap: str, serde: Serde, registry: TopicRegistry = TOPICS, **overrides: Any):
        from confluent_kafka import Producer

        super().__init__(serde, registry)
        config = {
            "bootstrap.servers": bootstrap,
            "enable.idempotence": True,  # implies acks=all and in-order, exactly-once delivery per partition
            "acks": "all",
            "linger.ms": 5,
            "batch.size": 1_000_000,
            "compression.type": "lz4",
            "queue.buffering.max.messages": 1_000_000,
            "queue.buffering.max.kbytes": 1_048_576,
            "message.max.bytes": 4_000_000,
            "partitioner": "consistent_random",
            # how long librdkafka keeps retrying a record through a broker outage before it reports it failed;
            # ``flush()`` waits this long too, so an outage shorter than this costs a pause, not the run
            "message.timeout.ms": 300_000,
        }
        config.update(overrides)
        # with ``delivery.report.only.error`` librdkafka calls back for failures only: no Python call per record
        # (the processors' state writes), and no positions to report
        self._tracks_positions = not config.get("delivery.report.only.error", False)
        self._delivery_timeout_s = float(config["message.timeout.ms"]) / 1000
        self._producer = Producer(config)
        self._produce = self._producer.produce
        # the delivery reports' state lives apart from the publisher: a bound method of the publisher kept on it
        # would make a reference cycle, and a publisher nobody closed would keep its librdkafka handle (threads,
        # connections retried forever) until the garbage collector happened to look
        self._deliveries = _Deliveries()
        self._on_delivery_cb = self._deliveries.on_delivery  # one bound method, not one per record
        self._unpolled = 0
        self._closed = False

    def positions(self) -> dict[tuple[str, int], int]:
        """The last offset delivered to each (topic, partition) by this publisher."""
        if not self._tracks_positions:
            raise PublishError("this publisher reports failed deliveries only (delivery.report.only.error): "
                               "it knows no positions")
        if not self._closed:
            self._producer.poll(0)  # serve the delivery reports waiting since the last send
        d = self._deliveries
        with d.lock:
            return dict(d.positions)

    def _send(self, topic, key, value, headers, partition=None) -> None:
        from confluent_kafka import KafkaException

        while True:
            try:
                if partition is None:
                    self._produce(topic, value, key, headers=headers, on_delivery=self._on_delivery_cb)
                else:
                    self._produce(topic, value, key, partition, headers=headers, on_delivery=self._on_delivery_cb)
                break
            except BufferError:
                # The local queue is full: let librdkafka drain it, then try again.
                self._producer.poll(0.05)
            except KafkaException as exc:  # e.g. MSG_SIZE_TOO_LARGE, refused before anything is sent
                raise PublishError(f"{topic}: {exc.args[0].str()}") from exc
        # delivery reports are served every POLL_EVERY sends (and by positions() and flush()): a poll per record
        # was a third of the produce path's cost
        self._unpolled += 1
        if self._unpolled >= POLL_EVERY:
            self._unpolled = 0
            self._producer.poll(0)

    def flush(self, timeout: float | None = None) -> None:
        """Wait until every record is delivered or has failed: by default as long as librdkafka retries a record
        (``message.timeout.ms``), warning every 10 s while the broker does not answer."""
        if self._closed:  # close() flushed, and dropped what it could not deliver
            return
        limit = self._delivery_timeout_s + 5.0 if timeout is None else float(timeout)
        started = time.monotonic()
        remaining = self._producer.flush(min(limit, 10.0))
        while remaining and (waited := time.monotonic() - started) < limit:
            log.warning("waiting for the broker: %d records not acknowledged after %.0f s (waiting up to %.0f s)",
                        remaining, waited, limit)
            remaining = self._producer.flush(min(10.0, limit - waited))
        timeout = limit
        failed, failures = self._deliveries.take_failures()
        if remaining:
            raise PublishError(f"{remaining} records still undelivered after {timeout:.0f}s")
        if failed:
            raise PublishError(f"{failed} records were not delivered: {'; '.join(failures)}")

    def close(self) -> None:
        """Flush (raising as ``flush`` does), then release librdkafka's handle: its threads and its connections.
        What could not be delivered is dropped with it. Publishing afterwards raises PublishError; closing again
        does nothing."""
        if self._closed:
            return
        try:
            self.flush()
        finally:
            self._closed = True
            self._produce = _closed_produce
            self._producer.purge()  # what flush gave up on: dropped now, so closing does not wait for it again
            self._producer.poll(0)
            close = getattr(self._producer, "close", None)  # confluent-kafka >= 2.13; before it, dropping the
            if close is not None:  # last reference releases the handle (no reference cycle holds it)
                close()


def _closed_produce(*args, **kwargs) -> None:
    raise PublishError("this publisher is closed")


class _Deliveries:
    """A KafkaPublisher's delivery reports: the last offset delivered per (topic, partition), and the failures
    since the last flush. librdkafka calls ``on_delivery`` from ``poll``/``flush``, on the publishing thread."""

    __slots__ = ("lock", "positions", "failed", "failures")

    def __init__(self):
        self.lock = threading.Lock()
        self.positions: dict[tuple[str, int], int] = {}
        self.failed = 0
        self.failures: list[str] = []

    def on_delivery(self, err, msg) -> None:
        if err is None:
            key = (msg.topic(), msg.partition())
            offset = msg.offset()
            with self.lock:
                if offset > self.positions.get(key, -1):
                    self.positions[key] = offset
            return
        with self.lock:
            self.failed += 1
            if len(self.failures) < 10:
                self.failures.append(f"{msg.topic()}: {err.str()}")

    def take_failures(self) -> tuple[int, list[str]]:
        with self.lock:
            failed, failures = self.failed, self.failures
            self.failed, self.failures = 0, []
        return failed, failures


class InMemoryLog:
    """Partitions as lists, for unit tests: the twin of a Kafka cluster's topics."""

    def __init__(self, registry: TopicRegistry = TOPICS):
        self.registry = registry
        self._parts: dict[str, list[list[LogRecord]]] = {}
        self._lock = threading.Lock()
        self._rr = 0

    def _partitions(self, topic: str) -> list[list[LogRecord]]:
        parts = self._parts.get(topic)
        if parts is None:
            parts = self._parts[topic] = [[] for _ in range(self.registry.spec(topic).partitions)]
        return parts

    def append(self, topic: str, key: bytes | None, value: bytes | None, headers: Headers,
               partition: int | None = None) -> LogRecord:
        with self._lock:
            parts = self._partitions(topic)
            if partition is not None:
                p = partition
            elif key is None:
                self._rr += 1
                p = self._rr % len(parts)
            else:
                p = zlib.crc32(key) % len(parts)  # librdkafka's "consistent" hashing
            rec = LogRecord(topic, p, len(parts[p]), key, value, int(time.time() * 1000), list(headers))
            parts[p].append(rec)
            return rec

    def partitions(self, topic: str) -> int:
        return len(self._partitions(topic))

    def read(self, topic: str, partition: int, start: int = 0, end: int | None = None) -> list[LogRecord]:
        return self._partitions(topic)[partition][start:end]

    def records(self, topic: str) -> list[LogRecord]:
        return [r for part in self._partitions(topic) for r in part]


class InMemoryPublisher(Publisher):
    def __init__(self, serde: Serde, log: InMemoryLog | None = None, registry: TopicRegistry | None = None):
        registry = registry or (log.registry if log else TOPICS)
        super().__init__(serde, registry)
        self.log = log or InMemoryLog(registry)

    def _send(self, topic, key, value, headers, partition=None) -> None:
        self.log.append(topic, key, value, headers, partition)

    def flush(self, timeout: float | None = None) -> None:
        return None
