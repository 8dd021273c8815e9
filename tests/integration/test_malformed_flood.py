"""1,000 malformed records of varied kinds on every topic the processors read, then good events: every bad record
is on the dead-letter topic once for each agent that reads its topic, with its reason; the processors never stop
(no agent crashes); the good events after the flood still materialize exactly what a replay of them gives."""

from __future__ import annotations

import os
import random
import time
import uuid
from collections import Counter

import pytest

from processors.app import SEED_STATE_TOPIC
from processors.clickhouse.sink import SINK_TOPICS
from streams import Backbone, load_settings
from streams.serde import MAGIC
from streams.state import read_state_topic
from streams.synthetic import synthetic_library, synthetic_run
from views.run_view import RunView
from views.urza_view import URZA_TOPICS, UrzaView

from .test_processors import ProcessorsProcess, _free_port, _publish

pytestmark = [pytest.mark.integration, pytest.mark.timeout(420)]

# what each agent reads (processors/app.py)
READS = {"seed-state": ("kasmina.lifecycle.transitions",), "urza": URZA_TOPICS,
         "distributions": ("urabrask.kernels.reports",), "telemetry-sink": SINK_TOPICS}


def _malformed(rng: random.Random, bb: Backbone, topic: str, good: list) -> tuple[bytes | None, str]:
    """(value, the reason the processors must give) for one bad record of a random kind."""
    kind = rng.randrange(7)
    if kind == 0:
        return b"\x00" + rng.randbytes(rng.randrange(10, 200)), "bad-magic"
    if kind == 1:
        return MAGIC + rng.randbytes(rng.randrange(0, 8)), "truncated"  # a header cut short
    if kind == 2:
        return MAGIC + rng.randbytes(8) + rng.randbytes(40), "unknown-fingerprint"
    if kind == 3:  # a real header, a body that is not that schema's Avro
        real = bb.serde.encode(rng.choice(good))
        return real[:10] + b"\xff" * rng.randrange(1, 30), "schema-mismatch"
    if kind == 4:  # valid Avro of an event that does not belong on this topic
        wrong = [ev for ev in good if bb.registry.for_event(ev.AVRO_NAME) != bb.resolve_topic(topic)]
        return bb.serde.encode(rng.choice(wrong)), "wrong-topic"
    if kind == 5:
        return b"", "truncated"
    return b"{\"json\": \"not avro\"}", "bad-magic"


def test_a_flood_of_malformed_records_is_dead_lettered_and_good_events_still_apply(topic_registry, tmp_path):
    registry = topic_registry()
    env = dict(os.environ, ESPER_TOPIC_PREFIX=registry.prefix, ESPER_HOME=str(tmp_path),
               ESPER_PROCESSORS_PORT=str(_free_port()))
    bb = Backbone(load_settings(topic_prefix=registry.prefix, home=tmp_path), registry)
    run = f"run-{uuid.uuid4().hex[:6]}"
    library = list(synthetic_library(6, seed=4))
    events = list(synthetic_run(run, seed=4))
    good_events = [ev for _, _, ev in library + events]
    procs = ProcessorsProcess(env, tmp_path / "processors.log")
    rng = random.Random(7)
    topics = sorted({t for reads in READS.values() for t in reads})
    bad = []  # (topic, key, value, reason)
    for i in range(1000):
        topic = topics[i % len(topics)]
        value, reason = _malformed(rng, bb, topic, good_events)
        bad.append((topic, f"bad/{i}".encode(), value, reason))
    pub = bb.publisher()
    for topic, key, value, _ in bad:
        pub.publish_raw(bb.resolve_topic(topic), value, key)
    pub.flush()
    try:
        procs.start()
        published = _publish(bb, library) + _publish(bb, events)  # good events after the flood

        view = RunView(run)
        for ev in published:
            view.apply(ev)
        want_seeds = view.seed_states
        want_urza = UrzaView().apply_all(published).state()

        # every bad record, once per agent reading its topic, with the reason its kind must give
        want_dead = Counter()
        for topic, key, _, reason in bad:
            for agent, reads in READS.items():
                if topic in reads:
                    want_dead[(agent, key, reason)] += 1
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            got_dead = Counter()
            for rec in bb.replay_reader().records([registry.deadletter]):
                consumer = (rec.header("esper.dlq.consumer") or b"").decode().removeprefix("processors/")
                got_dead[(consumer, rec.key, (rec.header("esper.dlq.reason") or b"").decode())] += 1
            seeds = read_state_topic(bb, SEED_STATE_TOPIC)
            got_seeds = {v["seed"]: v for v in seeds.values() if v["run_id"] == run}
            urza = read_state_topic(bb, "state.urza.library")
            got_urza = UrzaView.restore(urza.items(), lambda raw: bb.serde.decode(raw).typed()).state()
            if got_dead == want_dead and got_seeds == want_seeds and got_urza == want_urza:
                break
            time.sleep(2)
        missing = want_dead - got_dead
        assert not missing, f"{sum(missing.values())} dead letters missing, e.g. {list(missing)[:5]}"
        assert got_dead == want_dead
        assert got_seeds == want_seeds
        assert got_urza == want_urza
        st = procs.status()
        assert procs.proc.poll() is None and st is not None  # still running, still answering
        assert not any(counts.get("crashes") for counts in st["stats"].values()), st
        dead = {agent: counts.get("dead_lettered", 0) for agent, counts in st["stats"].items()}
        assert sum(dead.values()) == sum(want_dead.values()), dead
    finally:
        if procs.proc is not None and procs.proc.poll() is None:
            procs.stop()
        bb.close()
