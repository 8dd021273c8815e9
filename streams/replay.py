"""Read a set of topics from the start (or a time) up to an offset or a time, in log order.

Within a partition, records come in offset order: that is the log's order and the reader never breaks it. Across
partitions and topics there is no single order in Kafka; the reader merges partitions by record timestamp, ties
broken by (topic, partition, offset), so a replay of the same log is always the same sequence.

The end of a replay is fixed when it starts (the high watermarks then, or the given offsets/time), so a replay
of a live topic terminates. Sources: :class:`KafkaSource` (assign, no consumer group) and :class:`MemorySource`.
"""

from __future__ import annotations

import heapq
import time
import uuid
from collections import deque
from dataclasses import dataclass
from typing import Iterable, Iterator, Protocol

from streams.exceptions import DecodeError, TopicError
from streams.publisher import InMemoryLog, LogRecord
from streams.retry import retrying
from streams.serde import Decoded, Serde

__all__ = ["LogSource", "KafkaSource", "MemorySource", "ReplayReader", "ReplayedEvent", "Bounds"]


class LogSource(Protocol):
    def partitions(self, topic: str) -> int: ...

    def watermarks(self, topic: str, partition: int) -> tuple[int, int]: ...

    def offset_for_time(self, topic: str, partition: int, timestamp_ms: int) -> int:
        """First offset whose timestamp is >= ``timestamp_ms`` (the high watermark if none)."""

    def iter_partition(self, topic: str, partition: int, start: int, end: int) -> Iterator[LogRecord]: ...

    def values(self, spans: Iterable["Bounds"]) -> Iterator[list[bytes | None]]:
        """Every record value in the spans, in batches, each partition's in offset order but the partitions in no
        order between them: for a fold whose result does not depend on the order across partitions (a count)."""

    def close(self) -> None: ...


@dataclass(frozen=True)
class Bounds:
    topic: str
    partition: int
    start: int
    end: int  # exclusive


@dataclass(frozen=True)
class ReplayedEvent:
    record: LogRecord
    decoded: Decoded | None  # None when the record could not be decoded
    error: DecodeError | None = None


class ReplayReader:
    def __init__(self, source: LogSource, serde: Serde):
        self.source = source
        self.serde = serde

    def bounds(
        self,
        topics: Iterable[str],
        *,
        since_time_ms: int | None = None,
        until_offset: int | dict[tuple[str, int], int] | None = None,
        until_time_ms: int | None = None,
    ) -> list[Bounds]:
        """Per-partition [start, end). ``until_offset`` as an int is an exclusive end applied to every partition."""
        out = []
        for topic in topics:
            for p in range(self.source.partitions(topic)):
                low, high = self.source.watermarks(topic, p)
                start = low if since_time_ms is None else self.source.offset_for_time(topic, p, since_time_ms)
                end = high
                if isinstance(until_offset, int):
                    end = min(end, until_offset)
                elif isinstance(until_offset, dict) and (topic, p) in until_offset:
                    end = min(end, until_offset[(topic, p)])
                if until_time_ms is not None:
                    end = min(end, self.source.offset_for_time(topic, p, until_time_ms + 1))
                out.append(Bounds(topic, p, start, max(start, end)))
        return out

    def records(self, topics: Iterable[str], **bound_args) -> Iterator[LogRecord]:
        topics = list(topics)
        return self.merged(self.bounds(topics, **bound_args), topics)

    def merged(self, spans: Iterable[Bounds], topics: list[str]) -> Iterator[LogRecord]:
        """The records in ``spans`` (from ``bounds``) in log order; ``topics`` orders ties between topics."""
        order = {t: i for i, t in enumerate(topics)}
        iters = []
        for b in spans:
            if b.end > b.start:
                it = self.source.iter_partition(b.topic, b.partition, b.start, b.end)
                iters.append(((r.timestamp_ms, order[r.topic], r.partition, r.offset), r) for r in it)
        for _, rec in heapq.merge(*iters, key=lambda pair: pair[0]):
            yield rec

    def events(self, topics: Iterable[str], **bound_args) -> Iterator[ReplayedEvent]:
        """Decoded records in log order; undecodable ones come through with ``error`` set, never silently dropped."""
        for rec in self.records(topics, **bound_args):
            try:
                yield ReplayedEvent(rec, self.serde.decode(rec.value, rec.topic))
            except DecodeError as exc:
                yield ReplayedEvent(rec, None, exc)


class MemorySource:
    def __init__(self, log: InMemoryLog):
        self.log = log

    def partitions(self, topic: str) -> int:
        return self.log.partitions(topic)

    def watermarks(self, topic: str, partition: int) -> tuple[int, int]:
        return 0, len(self.log.read(topic, partition))

    def offset_for_time(self, topic: str, partition: int, timestamp_ms: int) -> int:
        for rec in self.log.read(topic, partition):
            if rec.timestamp_ms >= timestamp_ms:
                return rec.offset
        return self.watermarks(topic, partition)[1]

    def iter_partition(self, topic, partition, start, end):
        return iter(self.log.read(topic, partition, start, end))

    def values(self, spans: Iterable[Bounds]) -> Iterator[list[bytes | None]]:
        for b in spans:
            if b.end > b.start:
                yield [r.value for r in self.log.read(b.topic, b.partition, b.start, b.end)]

    def close(self) -> None:
        pass


class KafkaSource:
    """Reads partitions with one assigned consumer (no group, no commits), buffering per partition and pausing
    partitions whose buffer is full, so a merge over many partitions streams in bounded memory. A read that gets
    nothing for ``stall_seconds`` while records it was promised (offsets below the end it was given) have not come
    raises ``TopicError`` instead of waiting for ever: the broker went away, or the records did."""

    def __init__(self, bootstrap: str, buffer_records: int = 20_000, stall_seconds: float = 120.0, **overrides):
        from confluent_kafka import Consumer

        config = {
            "bootstrap.servers": bootstrap,
            "group.id": f"esper-replay-{uuid.uuid4().hex}",  # required by librdkafka; never joined or committed
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "fetch.wait.max.ms": 50,
            "queued.max.messages.kbytes": 65536,
        }
        config.update(overrides)
        self._consumer = Consumer(config)
        self._bootstrap = bootstrap
        self._buffer_records = buffer_records
        self._stall_seconds = stall_seconds
        self._progress_at = time.monotonic()  # when the consumer last delivered anything
        self._meta: dict[str, int] = {}
        self._buffers: dict[tuple[str, int], deque[LogRecord]] = {}
        self._ends: dict[tuple[str, int], int] = {}
        self._next: dict[tuple[str, int], int] = {}  # the next offset each assigned partition will deliver
        self._done: set[tuple[str, int]] = set()
        self._assigned: set[tuple[str, int]] = set()  # partitions the consumer has now
        self._paused: set[tuple[str, int]] = set()

    def partitions(self, topic: str) -> int:
        if topic not in self._meta:
            md = self._consumer.list_topics(topic, timeout=10)
            t = md.topics.get(topic)
            if t is None or t.error is not None or not t.partitions:
                raise TopicError(f"topic {topic!r} does not exist on the broker")
            self._meta[topic] = len(t.partitions)
        return self._meta[topic]

    def watermarks(self, topic: str, partition: int) -> tuple[int, int]:
        from confluent_kafka import TopicPartition

        return _retrying(lambda: self._consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10,
                                                                      cached=False))

    def offset_for_time(self, topic: str, partition: int, timestamp_ms: int) -> int:
        from confluent_kafka import TopicPartition

        [tp] = _retrying(lambda: self._consumer.offsets_for_times([TopicPartition(topic, partition, timestamp_ms)],
                                                                  timeout=10))
        return tp.offset if tp.offset >= 0 else self.watermarks(topic, partition)[1]

    def iter_partition(self, topic: str, partition: int, start: int, end: int) -> Iterator[LogRecord]:
        from confluent_kafka import TopicPartition

        tp = (topic, partition)
        if tp in self._assigned:  # an earlier read of it was left unfinished: start over
            self._consumer.incremental_unassign([TopicPartition(topic, partition)])
            self._assigned.discard(tp)
        self._done.discard(tp)  # read before: this is a new read of it
        self._paused.discard(tp)
        self._buffers[tp] = deque()
        self._ends[tp] = end
        self._next[tp] = start
        self._consumer.incremental_assign([TopicPartition(topic, partition, start)])
        self._assigned.add(tp)
        self._progress_at = time.monotonic()
        return self._drain(tp)

    def _drain(self, tp: tuple[str, int]) -> Iterator[LogRecord]:
        buf = self._buffers[tp]
        while True:
            while buf:
                rec = buf.popleft()
                yield rec
            if tp in self._done:
                return
            self._fetch(want=tp)

    def _fetch(self, want: tuple[str, int]) -> None:
        from confluent_kafka import KafkaError, TopicPartition

        if want in self._paused:
            self._consumer.resume([TopicPartition(*want)])
            self._paused.discard(want)
        # ask for no more than is left to read: consume() waits out its timeout for a batch it cannot fill, and
        # the last batch of every read would otherwise cost 0.5 s (a third of a 60k-record replay)
        left = sum(self._ends[tp] - self._next[tp] for tp in self._assigned if tp not in self._done | self._paused)
        msgs = self._consumer.consume(num_messages=max(1, min(5000, left)), timeout=0.5)
        self._check_stall(msgs, want, self._ends[want])
        for msg in msgs:
            tp = (msg.topic(), msg.partition())
            if tp not in self._buffers or tp in self._done:
                continue
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    if msg.offset() >= self._ends[tp]:
                        self._finish(tp)
                    continue
                raise TopicError(f"reading {tp[0]}[{tp[1]}]: {err.str()}")
            if msg.offset() >= self._ends[tp]:
                self._finish(tp)
                continue
            offset = msg.offset()
            self._next[tp] = offset + 1
            self._buffers[tp].append(
                LogRecord(tp[0], tp[1], offset, msg.key(), msg.value(), msg.timestamp()[1], list(msg.headers() or []))
            )
            if offset + 1 >= self._ends[tp]:
                self._finish(tp)
        for tp, buf in self._buffers.items():
            if tp != want and tp not in self._paused and tp not in self._done and len(buf) >= self._buffer_records:
                self._consumer.pause([TopicPartition(*tp)])
                self._paused.add(tp)

    def _check_stall(self, msgs: list, where: tuple[str, int], end: int) -> None:
        now = time.monotonic()
        if msgs:
            self._progress_at = now
        elif now - self._progress_at > self._stall_seconds:
            raise TopicError(f"reading {where[0]}[{where[1]}]: nothing from {self._bootstrap} for "
                             f"{self._stall_seconds:.0f} s while records below offset {end} "
                             "were still to come (is the broker up? were the records deleted?)")

    def _finish(self, tp: tuple[str, int]) -> None:
        from confluent_kafka import TopicPartition

        if tp not in self._done:
            self._done.add(tp)
            self._consumer.incremental_unassign([TopicPartition(*tp)])
            self._assigned.discard(tp)

    def values(self, spans: Iterable[Bounds]) -> Iterator[list[bytes | None]]:
        """See ``LogSource.values``: every partition assigned at once and read as it comes, no record built, no
        merge. Needs a source with no ``iter_partition`` read under way (it owns the consumer's assignment)."""
        from confluent_kafka import KafkaError, TopicPartition

        if self._assigned:
            raise TopicError("values() needs a source with no read under way")
        spans = [b for b in spans if b.end > b.start]
        if not spans:
            return
        ends = {(b.topic, b.partition): b.end for b in spans}
        left = sum(b.end - b.start for b in spans)
        reading = set(ends)
        self._consumer.incremental_assign([TopicPartition(b.topic, b.partition, b.start) for b in spans])
        self._progress_at = time.monotonic()
        try:
            while reading:
                # no more than is left: consume() waits out its timeout for a batch it cannot fill
                msgs = self._consumer.consume(num_messages=max(1, min(5000, left)), timeout=0.5)
                waiting = min(reading)
                self._check_stall(msgs, waiting, ends[waiting])
                batch = []
                for msg in msgs:
                    tp = (msg.topic(), msg.partition())
                    if tp not in reading:
                        continue
                    offset, end, err = msg.offset(), ends[tp], msg.error()
                    if err is not None:
                        if err.code() != KafkaError._PARTITION_EOF:
                            raise TopicError(f"reading {tp[0]}[{tp[1]}]: {err.str()}")
                        if offset >= end:
                            reading.discard(tp)
                        continue
                    if offset >= end:
                        reading.discard(tp)
                        continue
                    batch.append(msg.value())
                    left -= 1
                    if offset + 1 >= end:
                        reading.discard(tp)
                if batch:
                    yield batch
        finally:
            self._consumer.incremental_unassign([TopicPartition(*tp) for tp in ends])

    def close(self) -> None:
        self._consumer.close()


def _retrying(call, timeout: float = 30.0):
    """A metadata call retried through a fresh topic's leader election or a node's failover (``streams.retry``)."""
    from confluent_kafka import KafkaException

    try:
        return retrying(call, timeout=timeout)
    except KafkaException as exc:
        raise TopicError(f"Kafka metadata request failed: {exc.args[0].str()}") from exc
