"""The faust/aiokafka patches (``processors/faust_patch.py``) still reach what they patch: this fails if an upgrade
renames faust's consumer factory, stops passing ``fetch_max_wait_ms`` to aiokafka, or aiokafka stops reading the
attribute the patch sets; and the rewind seeks every partition, the ones aiokafka leaves alone included."""

from __future__ import annotations

import asyncio
import contextlib
import inspect

from aiokafka.consumer.consumer import AIOKafkaConsumer
from faust.transport.drivers import aiokafka as driver

from processors.faust_patch import limit_fetch_wait, rewind_to_committed, seek_all_to_committed


def test_the_hooks_the_patch_relies_on_are_still_there():
    factory = driver.AIOKafkaConsumerThread.__dict__.get("_esper_original_create",
                                                          driver.AIOKafkaConsumerThread._create_worker_consumer)
    assert "fetch_max_wait_ms" in inspect.getsource(factory)  # faust still sets the wait it hard-codes here
    source = inspect.getsource(AIOKafkaConsumer)
    assert "self._fetch_max_wait_ms = fetch_max_wait_ms" in source  # kept on the consumer...
    assert "fetch_max_wait_ms=self._fetch_max_wait_ms" in source  # ...and read when its fetcher starts


@contextlib.contextmanager
def _restored(cls, *names: str):
    """The class's own attributes ``names`` as they were before the block, whatever the block patched."""
    saved = {k: cls.__dict__[k] for k in names if k in cls.__dict__}
    try:
        yield
    finally:
        for k in names:
            if k in saved:
                setattr(cls, k, saved[k])
            elif k in cls.__dict__:
                delattr(cls, k)


def test_consumers_made_after_the_patch_wait_what_it_says():
    cls = driver.AIOKafkaConsumerThread
    with _restored(cls, "_create_worker_consumer", "_esper_original_create"):
        cls._create_worker_consumer = lambda self, transport: AIOKafkaConsumer.__new__(AIOKafkaConsumer)
        if "_esper_original_create" in cls.__dict__:
            del cls._esper_original_create
        limit_fetch_wait(20)
        limit_fetch_wait(30)  # twice: wraps the original, not its own wrapper
        assert cls._create_worker_consumer(object.__new__(cls), None)._fetch_max_wait_ms == 30


class _Consumer:
    """What ``seek_all_to_committed`` uses of aiokafka's consumer, with aiokafka's rule: only offsets above 0 sought."""

    def __init__(self, committed: dict):
        self.committed, self.position = committed, {tp: 99 for tp in committed}  # the fetcher is ahead

    async def seek_to_committed(self):
        for tp, offset in self.committed.items():
            if offset and offset > 0:
                self.position[tp] = offset
        return dict(self.committed)

    def seek(self, tp, offset):
        self.position[tp] = offset

    async def seek_to_beginning(self, *tps):
        for tp in tps:
            self.position[tp] = "beginning"


def test_every_partition_goes_back_to_its_committed_offset_or_the_beginning():
    consumer = _Consumer({"t/0": None, "t/1": 0, "t/2": 7})
    assert asyncio.run(seek_all_to_committed(consumer)) == {"t/0": None, "t/1": 0, "t/2": 7}
    assert consumer.position == {"t/0": "beginning", "t/1": 0, "t/2": 7}


def test_aiokafka_still_skips_offset_zero_and_faust_still_seeks_through_the_thread():
    from aiokafka.consumer.consumer import AIOKafkaConsumer as Real

    # the reason for the patch; if aiokafka seeks 0 and None itself one day, the patch is harmless but can go
    assert "if offset and offset > 0" in inspect.getsource(Real.seek_to_committed)
    cls = driver.AIOKafkaConsumerThread
    original = cls.__dict__.get("_esper_original_seek", cls.seek_to_committed)
    assert "seek_to_committed" in inspect.getsource(original) and "call_thread" in inspect.getsource(original)
    with _restored(cls, "seek_to_committed", "_esper_original_seek"):
        rewind_to_committed()
        rewind_to_committed()  # twice: the original kept
        assert cls._esper_original_seek is original and cls.seek_to_committed is not original
