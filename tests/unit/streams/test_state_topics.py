"""The state topics' values are Avro records of ``schemas/state/`` (single-object encoded, strict): every kind of
entry the processors write encodes under its topic's ``value_schema``, decodes with nothing but the schemas, and
restores the same state; values written as JSON by an older Esper still restore."""

from __future__ import annotations

import base64
import io
import json

import pytest
from fastavro import schemaless_reader

from streams import SingleObjectSerde
from streams.schemas import SchemaCatalog
from streams.serde import HEADER_LEN
from streams.state import decode_state_value, encode_state_value
from streams.synthetic import synthetic_library, synthetic_run
from streams.topics import TOPICS
from views.seed_state import APPLIED, fold_seed, seed_key
from views.urza_view import UrzaView


@pytest.fixture(scope="module")
def serde():
    return SingleObjectSerde(SchemaCatalog.load())


def _roundtrip(serde, topic: str, value: dict) -> dict:
    raw = encode_state_value(serde, TOPICS.spec(topic), value)
    return decode_state_value(serde, raw)


def _library():
    """A library with every kind of entry, a parked event included (an originator's version 2 whose version 1 never
    arrived)."""
    events = [ev for _, _, ev in synthetic_library(6, seed=3)]
    second = next(ev for ev in events if ev.envelope.originator_version == 2)
    first = next(ev for ev in events if ev.envelope.originator_id == second.envelope.originator_id
                 and ev.envelope.originator_version == 1)
    view = UrzaView()
    for ev in events:
        if ev is not first:
            view.apply(ev)
    return view, events


def test_seed_states_are_avro_and_come_back_equal(serde):
    states = {}
    for _, _, ev in synthetic_run("r1", seed=1):
        if type(ev).__name__ == "SeedLifecycleTransition":
            key = seed_key(ev.envelope.run_id, ev.envelope.originator_id)
            outcome, state = fold_seed(states.get(key), ev)
            if outcome == APPLIED:
                states[key] = state
    assert states
    for state in states.values():
        assert _roundtrip(serde, "state.kasmina.seeds", state) == state


def test_distributions_are_avro(serde):
    value = {"latency_ms_mean": 0.5, "memory_mb_peak": 3.0, "latency_ms_p99": 0.9, "throughput_ops_per_sec": 1e5}
    assert _roundtrip(serde, "state.urabrask.distributions", value) == value


def test_every_kind_of_urza_entry_is_avro_and_restores_the_view(serde):
    view, _ = _library()
    entries = view.take_dirty(serde.encode)
    kinds = {key.split("/")[0] for key, value in entries.items() if value is not None}
    assert kinds == {"blueprint", "kernel", "version", "waiting"}
    back = {key: _roundtrip(serde, "state.urza.library", value) for key, value in entries.items() if value}
    restored = UrzaView.restore(back.items(), lambda raw: serde.decode(raw).typed())
    assert restored.state() == view.state()
    assert restored._waiting.keys() == view._waiting.keys()


def test_a_consumer_with_only_the_schemas_reads_a_state_value(serde):
    """What a third party subscribing to a state topic does: the 10-byte header names the schema by fingerprint
    (CRC-64-AVRO of its canonical form, as fastavro and every Avro library compute it); the body is plain Avro."""
    view, _ = _library()
    key, value = next((k, v) for k, v in view.take_dirty(serde.encode).items() if k.startswith("blueprint/"))
    raw = encode_state_value(serde, TOPICS.spec("state.urza.library"), value)
    schema = SchemaCatalog.load().get("esper.state.UrzaLibraryEntry")
    assert raw[:2] == b"\xc3\x01" and raw[2:HEADER_LEN] == schema.fingerprint
    record = schemaless_reader(io.BytesIO(raw[HEADER_LEN:]), schema.parsed)
    assert record["blueprint"]["blueprint_id"] == key.split("/", 1)[1] and record["kernel"] is None


def test_json_entries_of_an_older_esper_still_restore(serde):
    view, _ = _library()
    entries = view.take_dirty(serde.encode)
    legacy = {}
    for key, value in entries.items():  # the shapes the state topic held as JSON
        kind = key.split("/")[0]
        if value is None:
            continue
        if kind == "blueprint":
            rec = dict(value["blueprint"])
            rec["ir"] = json.loads(rec.pop("ir_json"))
        elif kind == "kernel":
            rec = dict(value["kernel"])
            rec["signature"] = json.loads(rec.pop("signature_json"))
            report = rec.pop("report_json")
            rec["report"] = None if report is None else json.loads(report)
        elif kind == "version":
            rec = {"version": value["version"]}
        else:
            rec = {"raw": base64.b64encode(value["waiting_event"]).decode()}
        legacy[key] = decode_state_value(serde, json.dumps(rec).encode())
    restored = UrzaView.restore(legacy.items(), lambda raw: serde.decode(raw).typed())
    assert restored.state() == view.state()


def test_every_state_topic_names_its_schema():
    catalog = SchemaCatalog.load()
    state_topics = [s for s in TOPICS if s.cleanup_policy == "compact" and s.name.startswith("state.")]
    assert len(state_topics) == 3
    for spec in state_topics:
        assert spec.value_schema in catalog, spec.name


def test_a_late_older_seed_state_never_replaces_a_newer_one():
    """A worker that lost a partition may finish its batch after the new owner wrote: reading the topic keeps the
    highest version of each seed whatever order the writes landed in; a tombstone still removes it."""
    from streams.state import keep

    schema = "esper.state.SeedStateEntry"
    state: dict = {}
    for version in (1, 3, 2):  # version 2 landed last
        keep(state, "r|seed/0/0", {"version": version}, schema)
    assert state["r|seed/0/0"]["version"] == 3
    keep(state, "r|seed/0/0", {"version": 3, "reason": "again"}, schema)  # a repeat of the same version: taken
    assert state["r|seed/0/0"]["reason"] == "again"
    keep(state, "r|seed/0/0", None, schema)
    assert state == {}
    keep(state, "k", {"a": 1}, "esper.state.KernelDistributionEntry")
    keep(state, "k", {"a": 0}, "esper.state.KernelDistributionEntry")  # no rule: the latest wins
    assert state["k"] == {"a": 0}
