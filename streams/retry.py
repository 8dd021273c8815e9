"""Kafka requests retried through a broker's failover: a node that dies (or a partition whose leader is being
elected) makes a metadata or offsets request fail for a few seconds while the rest of the cluster still answers.
Those errors are retried until ``timeout``; any other error is raised at once."""

from __future__ import annotations

import time
from typing import Callable, TypeVar

__all__ = ["TRANSIENT", "retrying", "transient"]

T = TypeVar("T")

# not marked retriable by librdkafka, but what a request sees while a node dies or a leader is elected; a topic
# created a moment ago is UNKNOWN_TOPIC_OR_PART until its metadata has reached every node
TRANSIENT = frozenset({"NOT_LEADER_FOR_PARTITION", "LEADER_NOT_AVAILABLE", "UNKNOWN_TOPIC_OR_PART",
                       "_DESTROY_BROKER", "_TRANSPORT", "_ALL_BROKERS_DOWN", "_TIMED_OUT",
                       "COORDINATOR_LOAD_IN_PROGRESS", "COORDINATOR_NOT_AVAILABLE", "NOT_COORDINATOR"})


def transient(err) -> bool:
    """Whether a ``KafkaError`` is worth asking again."""
    return err.retriable() or err.name() in TRANSIENT


def retrying(call: Callable[[], T], timeout: float = 30.0, delay: float = 0.1) -> T:
    """``call()``, asked again (backing off to one second between tries) while it raises a transient
    ``KafkaException``, for up to ``timeout`` seconds; the last error is raised."""
    from confluent_kafka import KafkaException

    deadline = time.monotonic() + timeout
    while True:
        try:
            return call()
        except KafkaException as exc:
            if not transient(exc.args[0]) or time.monotonic() + delay > deadline:
                raise
            time.sleep(delay)
            delay = min(2 * delay, 1.0)
