"""Issue #13, item 5: a broker outage longer than 30 s costs a pause, not the run. ``flush()`` waits as long as
librdkafka keeps retrying a record (``message.timeout.ms``), and fails with a clear error only when librdkafka itself
gives a record up. No broker is needed: nothing listens on the port these publishers use."""

from __future__ import annotations

import socket
import time

import pytest

from streams import KafkaPublisher, SingleObjectSerde
from streams.contracts import EpochCompleted
from streams.envelope import EnvelopeFactory
from streams.exceptions import PublishError


def _closed_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def _epoch(envs) -> EpochCompleted:
    return EpochCompleted(envelope=envs.next("run/r"), epoch=1, train_loss=1.0, val_loss=1.0, val_accuracy=0.5,
                          params=10, learning_rate=0.1, duration_ms=1.0)


class _RetryingProducer:
    """librdkafka through an outage of ``outage_s``: records stay queued (flush returns how many) until it ends."""

    def __init__(self, outage_s: float):
        self.until = time.monotonic() + outage_s
        self.waits: list[float] = []

    def flush(self, timeout: float) -> int:
        self.waits.append(timeout)
        left = self.until - time.monotonic()
        time.sleep(max(0.0, min(timeout, left)))
        return 1 if left > timeout else 0


def test_flush_waits_out_an_outage_longer_than_one_wait(catalog, monkeypatch):
    pub = KafkaPublisher(_closed_port(), SingleObjectSerde(catalog), **{"message.timeout.ms": 60_000})
    slices = []
    real_sleep = time.sleep
    # 35 s of outage in simulated time: each flush slice "waits" its full length instantly
    clock = [time.monotonic()]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(time, "sleep", lambda s: (slices.append(s), clock.__setitem__(0, clock[0] + s)))
    pub._producer = _RetryingProducer(outage_s=35.0)
    pub.flush()  # the old flush gave up after 30 s and failed the run
    monkeypatch.setattr(time, "sleep", real_sleep)
    assert sum(slices) >= 35.0 and max(pub._producer.waits) <= 10.0


def test_a_record_librdkafka_gives_up_on_is_a_clear_error(catalog):
    pub = KafkaPublisher(_closed_port(), SingleObjectSerde(catalog), **{"message.timeout.ms": 1500})
    pub.publish(_epoch(EnvelopeFactory("r", "test")))
    started = time.monotonic()
    with pytest.raises(PublishError, match="not delivered.*timed out"):
        pub.flush()
    assert 1.0 <= time.monotonic() - started < 30.0
