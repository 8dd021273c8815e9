"""An agent's batch is acknowledged only when the agent comes back for the next one (``Processors._taken``): a batch
the agent was stopped inside is never acknowledged, so the consumer's commit on the way out cannot take it past the
committed offset. faust's ``take_events`` acknowledges in a ``finally`` (cancelled or not); ``noack_take`` leaves
acks to the caller: this fails if an upgrade changes either."""

from __future__ import annotations

import asyncio
import inspect
import re
from types import SimpleNamespace

from faust.streams import Stream

from processors.app import Processors


class _Stream:
    """What ``_taken`` uses of a faust stream: ``noack_take`` yielding batches of events, and ``ack``."""

    def __init__(self, batches):
        self.batches, self.acked = batches, []

    async def noack_take(self, max_, within):
        for batch in self.batches:
            yield list(batch)

    async def ack(self, event):
        self.acked.append(event)


def _taken(stream):
    return Processors._taken(SimpleNamespace(batch=2, batch_within=0.01), stream)


def test_a_batch_is_acknowledged_once_the_agent_asks_for_the_next():
    async def agent(stream, seen):
        async for events in _taken(stream):
            seen.append((list(events), list(stream.acked)))

    stream, seen = _Stream([["a", "b"], ["c"]]), []
    asyncio.run(agent(stream, seen))
    assert seen == [(["a", "b"], []), (["c"], ["a", "b"])]  # each batch acked after it was applied
    assert stream.acked == ["a", "b", "c"]


def test_a_batch_the_agent_was_stopped_inside_is_not_acknowledged():
    async def agent(stream):
        batches = _taken(stream)
        async for events in batches:
            if events == ["c", "d"]:
                task = asyncio.current_task()
                task.cancel()  # a stop, part way through the batch
                await asyncio.sleep(1)
        await batches.aclose()

    async def main(stream):
        try:
            await agent(stream)
        except asyncio.CancelledError:
            pass
        await asyncio.sleep(0)  # the generator's finalizer, had it acknowledged anything, has run

    stream = _Stream([["a", "b"], ["c", "d"], ["e"]])
    asyncio.run(main(stream))
    assert stream.acked == ["a", "b"]


def _code(fun) -> str:
    return "\n".join(line.split("#", 1)[0] for line in inspect.getsource(fun).splitlines())


def test_faust_still_acknowledges_in_take_events_finally_and_not_in_noack_take():
    take_events = _code(Stream.take_events)
    assert re.search(r"finally:\s*\n(.*\n){0,3}\s*for event in events:\s*\n\s*await self\.ack\(event\)", take_events)
    assert "self.ack(" not in _code(Stream.noack_take)
    assert "yield list(buffer)" in _code(Stream.noack_take) and "buffer_add(cast(T_co, event))" in _code(
        Stream.noack_take)  # the buffer holds the events themselves (what _taken acknowledges)
