"""The changes Esper makes to faust's machinery, kept here and applied by ``Processors.run`` when the app starts.
One process runs one app, so patching the driver class is safe; applying a patch twice keeps the original, not a
wrapper of a wrapper. ``tests/unit/processors/test_faust_patch.py`` fails if a faust or aiokafka upgrade moves a hook.

- ``limit_fetch_wait``: faust's aiokafka driver builds its worker consumers with ``fetch_max_wait_ms=1500``
  hard-coded (``AIOKafkaConsumerThread._create_worker_consumer``); measured with ``esper bench materialize``, that
  held a steady 5k events/s at ~1.3 s median lag. The wrapper makes each consumer wait at most ``wait_ms`` instead
  (aiokafka reads ``AIOKafkaConsumer._fetch_max_wait_ms`` when it starts its fetcher).
- ``rewind_to_committed``: after a rebalance faust seeks every assigned partition back to its committed offset, so
  that records fetched while it was recovering (and dropped) are read again. aiokafka's ``seek_to_committed`` only
  seeks where the committed offset is above 0: a partition with nothing committed yet (or offset 0) keeps the
  fetcher's position, past the dropped records, which are then never processed. It happens to a partition whose
  previous owner died before its first commit — ``esper chaos``'s worker_kill lost a run's transitions for good
  that way. The wrapper seeks those partitions too: to offset 0, or to the beginning (the processors'
  ``auto_offset_reset`` is "earliest") where nothing is committed.
"""

from __future__ import annotations

__all__ = ["limit_fetch_wait", "rewind_to_committed", "seek_all_to_committed"]


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


async def seek_all_to_committed(consumer) -> dict:
    """aiokafka's ``seek_to_committed`` for every assigned partition, and the partitions it leaves alone (nothing
    committed, or 0) sought too. Returns the committed offsets, as aiokafka's does."""
    committed = await consumer.seek_to_committed()
    uncommitted = [tp for tp, offset in committed.items() if offset is None]
    for tp, offset in committed.items():
        if offset == 0:
            consumer.seek(tp, 0)
    if uncommitted:
        await consumer.seek_to_beginning(*uncommitted)
    return committed


def rewind_to_committed() -> None:
    from faust.transport.drivers import aiokafka as driver

    cls = driver.AIOKafkaConsumerThread
    cls._esper_original_seek = getattr(cls, "_esper_original_seek", cls.seek_to_committed)

    async def seek_to_committed(self):
        return await self.call_thread(seek_all_to_committed, self._ensure_consumer())

    cls.seek_to_committed = seek_to_committed
