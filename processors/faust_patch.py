"""The one change Esper makes to faust's machinery, kept here and applied by ``Processors.run`` when the app starts.

faust's aiokafka driver builds its worker consumers with ``fetch_max_wait_ms=1500`` hard-coded
(``AIOKafkaConsumerThread._create_worker_consumer``); measured with ``esper bench materialize``, that held a steady
5k events/s at ~1.3 s median lag. ``limit_fetch_wait`` wraps that method so each consumer it makes waits at most
``wait_ms`` instead (aiokafka reads ``AIOKafkaConsumer._fetch_max_wait_ms`` when it starts its fetcher). One process
runs one app, so patching the driver class is safe; applying it twice keeps the original, not a wrapper of a
wrapper. ``tests/unit/processors/test_faust_patch.py`` fails if a faust or aiokafka upgrade moves either hook.
"""

from __future__ import annotations

__all__ = ["limit_fetch_wait"]


def limit_fetch_wait(wait_ms: int) -> None:
    from faust.transport.drivers import aiokafka as driver

    cls = driver.AIOKafkaConsumerThread
    original = getattr(cls, "_esper_original_create", cls._create_worker_consumer)

    def create(self, transport):
        consumer = original(self, transport)
        consumer._fetch_max_wait_ms = wait_ms  # read when the consumer starts its fetcher
        return consumer

    cls._esper_original_create = original
    cls._create_worker_consumer = create
