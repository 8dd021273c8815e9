"""The faust/aiokafka fetch-wait patch (``processors/faust_patch.py``) still reaches what it patches: this fails if
an upgrade renames faust's consumer factory, stops passing ``fetch_max_wait_ms`` to aiokafka, or aiokafka stops
reading the attribute the patch sets."""

from __future__ import annotations

import inspect

from aiokafka.consumer.consumer import AIOKafkaConsumer
from faust.transport.drivers import aiokafka as driver

from processors.faust_patch import limit_fetch_wait


def test_the_hooks_the_patch_relies_on_are_still_there():
    factory = driver.AIOKafkaConsumerThread.__dict__.get("_esper_original_create",
                                                          driver.AIOKafkaConsumerThread._create_worker_consumer)
    assert "fetch_max_wait_ms" in inspect.getsource(factory)  # faust still sets the wait it hard-codes here
    source = inspect.getsource(AIOKafkaConsumer)
    assert "self._fetch_max_wait_ms = fetch_max_wait_ms" in source  # kept on the consumer...
    assert "fetch_max_wait_ms=self._fetch_max_wait_ms" in source  # ...and read when its fetcher starts


def test_consumers_made_after_the_patch_wait_what_it_says():
    cls = driver.AIOKafkaConsumerThread
    saved = {k: cls.__dict__[k] for k in ("_create_worker_consumer", "_esper_original_create") if k in cls.__dict__}
    try:
        cls._create_worker_consumer = lambda self, transport: AIOKafkaConsumer.__new__(AIOKafkaConsumer)
        if "_esper_original_create" in cls.__dict__:
            del cls._esper_original_create
        limit_fetch_wait(20)
        limit_fetch_wait(30)  # twice: wraps the original, not its own wrapper
        assert cls._create_worker_consumer(object.__new__(cls), None)._fetch_max_wait_ms == 30
    finally:
        for k in ("_create_worker_consumer", "_esper_original_create"):
            if k in saved:
                setattr(cls, k, saved[k])
            elif k in cls.__dict__:
                delattr(cls, k)
