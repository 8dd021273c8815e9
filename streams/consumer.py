"""A consumer-group reader that decodes as it reads and sends anything undecodable to the dead-letter topic.

Delivery is at-least-once: offsets of a batch are stored (and then auto-committed) when the *next* batch is asked
for, i.e. after the caller has handled it. A record that cannot be decoded never stops the consumer: it goes to the
dead-letter topic unchanged, with the reason in ``esper.dlq.*`` headers, and reading goes on.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Iterable, Iterator

from streams.deadletter import DLQ_HEADERS, dead_letter_headers, decode_for_topic
from streams.exceptions import DecodeError, EsperError
from streams.publisher import LogRecord, Publisher
from streams.serde import Decoded, Serde
from streams.topics import TOPICS, TopicRegistry

__all__ = ["ConsumedEvent", "DeadLetterSink", "EventConsumer", "DLQ_HEADERS"]


@dataclass(frozen=True)
class ConsumedEvent:
    record: LogRecord
    decoded: Decoded

    @property
    def name(self) -> str:
        return self.decoded.name


class DeadLetterSink:
    """Writes a record that could not be decoded or applied to the dead-letter topic, raw, with the reason."""

    def __init__(self, publisher: Publisher, consumer_name: str):
        self.publisher = publisher
        self.consumer_name = consumer_name
        self.sent = 0

    def send(self, record: LogRecord, reason: str, detail: str) -> None:
        headers = dead_letter_headers(record.headers, reason, detail,
                                      f"{record.topic}/{record.partition}/{record.offset}", self.consumer_name)
        self.publisher.publish_raw(self.publisher.registry.deadletter, record.value, record.key, headers)
        self.sent += 1


class EventConsumer:
    def __init__(
        self,
        bootstrap: str,
        topics: Iterable[str],
        group_id: str,
        serde: Serde,
        deadletter: DeadLetterSink,
        registry: TopicRegistry = TOPICS,
        from_beginning: bool = True,
        close_deadletter: bool = False,
        **overrides,
    ):
        """``close_deadletter``: the dead-letter sink's publisher is this consumer's own, closed with it (its
        librdkafka handle, threads and connections released); otherwise the caller's, left open."""
        from confluent_kafka import Consumer

        self.topics = list(topics)
        for t in self.topics:
            registry.spec(t)
        self.serde = serde
        self.registry = registry
        self.deadletter = deadletter
        self._close_deadletter = close_deadletter
        config = {
            "bootstrap.servers": bootstrap,
            "group.id": group_id,
            "auto.offset.reset": "earliest" if from_beginning else "latest",
            "enable.auto.commit": True,
            "enable.auto.offset.store": False,
            "auto.commit.interval.ms": 1000,
            "session.timeout.ms": 6000,
            "heartbeat.interval.ms": 1000,
            "max.poll.interval.ms": 300000,
        }
        config.update(overrides)
        self._consumer = Consumer(config)
        self._consumer.subscribe(self.topics)
        self._pending: list = []  # messages of the last batch, stored when the next batch is asked for
        self.dead_lettered = 0

    def poll_raw(self, timeout: float = 1.0, max_records: int = 1000) -> list:
        """The next batch as librdkafka's messages, undecoded (``msg.topic()``, ``msg.value()``; ``record_of`` makes a
        ``LogRecord`` of one, e.g. to dead-letter it): the caller decodes, and dead-letters what does not decode.
        Offsets as ``poll``'s. No per-record Python object: at sink rates that was most of a batch's read time."""
        self._store_pending()
        msgs = self._consumer.consume(num_messages=max_records, timeout=timeout)
        for msg in msgs:
            err = msg.error()
            if err is not None:
                if err.fatal():
                    raise EsperError(f"consumer failed: {err.str()}")
                msgs = [m for m in msgs if m.error() is None]  # transient (e.g. partition EOF): librdkafka retries
                break
        self._pending.extend(msgs)
        return msgs

    @staticmethod
    def record_of(msg) -> LogRecord:
        return LogRecord(msg.topic(), msg.partition(), msg.offset(), msg.key(), msg.value(), msg.timestamp()[1],
                         list(msg.headers() or []))

    def poll(self, timeout: float = 1.0, max_records: int = 1000) -> list[ConsumedEvent]:
        out = []
        dead = 0
        for rec in map(self.record_of, self.poll_raw(timeout, max_records)):
            try:
                out.append(ConsumedEvent(rec, decode_for_topic(self.serde, self.registry, rec.value, rec.topic)))
            except DecodeError as exc:
                self.deadletter.send(rec, exc.reason, exc.detail)
                dead += 1
        self.dead_lettered += dead
        if dead:
            self.deadletter.publisher.flush()
        return out

    def run(self, handler, idle_timeout: float | None = None, max_events: int | None = None,
            batch: int = 1) -> int:
        """Call ``handler(event)`` for each event until ``idle_timeout`` seconds pass with none (None: forever) or
        ``max_events`` were handled; commit and return the count. What a worker's main loop is."""
        handled = 0
        last = time.monotonic()
        while max_events is None or handled < max_events:
            events = self.poll(timeout=0.5, max_records=batch)
            for event in events:
                handler(event)
                handled += 1
            if events:
                last = time.monotonic()
            elif idle_timeout is not None and time.monotonic() - last > idle_timeout:
                break
        self.commit()
        return handled

    def __iter__(self) -> Iterator[ConsumedEvent]:
        while True:
            yield from self.poll()

    def _store_pending(self) -> None:
        self.store(self.take_pending())

    def take_pending(self) -> list:
        """The last batch's messages, now the caller's to ``store`` once it has handled them (so that it can read
        the next batch while it handles this one); the next ``poll`` stores nothing of them."""
        pending, self._pending = self._pending, []
        return pending

    def store(self, messages: list) -> None:
        """Mark ``messages`` handled: their offsets are committed with the next (auto) commit."""
        for msg in messages:
            self._consumer.store_offsets(msg)

    def unread_last(self) -> None:
        """Leave the last batch's offsets unstored: it is read again after a restart (a caller that could not
        handle it)."""
        self._pending = []

    def commit(self) -> None:
        self._store_pending()
        try:
            self._consumer.commit(asynchronous=False)
        except Exception as exc:  # nothing to commit is reported as an error by librdkafka
            if "NO_OFFSET" not in str(exc):
                raise

    def close(self) -> None:
        try:
            self.commit()
        finally:
            try:
                self._consumer.close()
            finally:
                if self._close_deadletter:
                    self.deadletter.publisher.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
