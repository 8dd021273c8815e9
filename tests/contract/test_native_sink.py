"""The sink's two paths, one contract: a batch of raw records goes into ClickHouse natively (the Avro bodies read
by chdb itself, ``processors.clickhouse.native``) or decoded in Python (``rows_for_record``), and both give the same
rows and set aside the same records for the same reasons — good telemetry, and telemetry that is cut short, too
long, not UTF-8, out of its enum's range, on the wrong topic or not Esper's at all. On real chdb."""

from __future__ import annotations

import copy
import io

import pytest
from fastavro import parse_schema, schemaless_writer

import processors.clickhouse.sink as sink
from processors.clickhouse import EmbeddedStore
from processors.clickhouse.native import NATIVE, object_container
from streams import SingleObjectSerde
from streams.contracts import SeedHealth, SeedState, SeedTelemetry
from streams.envelope import EnvelopeFactory
from streams.samples import sample_event
from streams.schemas import SchemaCatalog
from streams.topics import TOPICS

NAME = "esper.kasmina.SeedTelemetry"
TOPIC = "kasmina.telemetry.seeds"
STATES = list(SeedState)


@pytest.fixture(scope="module")
def catalog():
    return SchemaCatalog.load()


@pytest.fixture(scope="module")
def serde(catalog):
    return SingleObjectSerde(catalog)


def _telemetry(i: int, seeds: int = 4, layer_name: str | None = None) -> SeedTelemetry:
    envs = EnvelopeFactory(f"run-{i % 3}", "contract")
    return SeedTelemetry(envelope=envs.next(f"layer/{i}"), epoch=i, layer_id=i % 5,
                         layer_name=layer_name or f"layer-{i}",
                         seeds=[SeedHealth(seed_id=j, state=STATES[(i + j) % len(STATES)], alpha=0.25 * j,
                                           chunk_variance=0.1 * j, dead_node_ratio=0.01 * i, avg_correlation=0.5,
                                           exec_latency_us=float(i * j), is_ready_for_transition=bool(j % 2),
                                           kernel_artifact_id=None if j % 2 else f"k-{i}-{j}",
                                           growth_signal=0.5 * i, growth_from_model=bool(i % 2))
                                for j in range(seeds)])


def _not_utf8(serde, ev, placeholder: str) -> bytes:
    """``ev`` encoded, with the string ``placeholder`` in it replaced by as many bytes that are not UTF-8."""
    data = serde.encode(ev)
    assert data.count(placeholder.encode()) == 1
    return data.replace(placeholder.encode(), b"\xff\xfe" + placeholder.encode()[2:])


def _state_out_of_range(catalog, ev) -> bytes:
    """``ev`` under today's fingerprint, its first seed's state an enum index today's schema does not have (written
    with a copy of the schema whose enum has one symbol more)."""
    wider = copy.deepcopy(catalog.get(NAME).schema)
    health = wider["fields"][-1]["type"]["items"]
    state = next(f for f in health["fields"] if f["name"] == "state")["type"]
    state["symbols"] = state["symbols"] + ["FROM_THE_FUTURE"]
    record = ev.to_avro()
    record["seeds"][0]["state"] = "FROM_THE_FUTURE"
    buf = io.BytesIO()
    schemaless_writer(buf, parse_schema(wider), record)
    return b"\xc3\x01" + catalog.get(NAME).fingerprint + buf.getvalue()


HOSTILE = {
    "cut short": lambda catalog, serde: (TOPIC, serde.encode(_telemetry(50))[:-5]),
    "trailing bytes": lambda catalog, serde: (TOPIC, serde.encode(_telemetry(51)) + b"\x00\x02"),
    "not UTF-8, no seeds": lambda catalog, serde: (
        TOPIC, _not_utf8(serde, _telemetry(52, seeds=0, layer_name="NAMEHERE"), "NAMEHERE")),
    "not UTF-8 in a seed's nullable string": lambda catalog, serde: (TOPIC, _not_utf8(serde, _telemetry(53), "k-53-0")),
    "enum index out of range": lambda catalog, serde: (TOPIC, _state_out_of_range(catalog, _telemetry(54))),
    "wrong topic": lambda catalog, serde: ("tolaria.run.events", serde.encode(_telemetry(55))),
    "not Esper's": lambda catalog, serde: (TOPIC, b"\x00\x00\x00\x00\x07not esper"),
    "wrong topic, bad body": lambda catalog, serde: (  # the body's fault is named first, as every reader names it
        "tolaria.run.events", serde.encode(_telemetry(56))[:10] + b"\xff" * 12),
}


REASON = {"wrong topic": "wrong-topic", "not Esper's": "bad-magic"}


def _batch(catalog, serde, hostile: list[str]) -> list[tuple[str, bytes]]:
    """12 good telemetry records, an epoch (the Python path) at 3, then the ``hostile`` ones from index 5."""
    epochs = catalog.get("esper.tolaria.EpochCompleted")
    items = [(TOPIC, serde.encode(_telemetry(i))) for i in range(12)]
    items.insert(3, ("tolaria.run.events", serde.encode(sample_event(epochs, 1, storable=True))))
    for k, kind in enumerate(hostile):
        items.insert(5 + 2 * k, HOSTILE[kind](catalog, serde))
    return [(TOPICS.prefix + topic, value) for topic, value in items]


def _rows(store) -> dict[str, list]:
    out = {}
    for table in ("seed_telemetry", "epochs"):
        cols = [r["name"] for r in store.rows(f"SELECT name FROM system.columns WHERE database = 'esper' AND "
                                              f"table = '{table}' ORDER BY position")]
        out[table] = store.rows(f"SELECT {', '.join(cols)} FROM esper.{table} ORDER BY {', '.join(cols)}")
    return out


def _run(path, catalog, serde, items, native: bool):
    with EmbeddedStore(path) as store:
        inserted, rejected = sink.sink_records(store, serde, TOPICS, items, native=native)
        inbox = path / "incoming"
        assert not inbox.exists() or not list(inbox.iterdir())  # no container left behind, inserted or refused
        return inserted, [(i, reason) for i, reason, _ in rejected], _rows(store)


@pytest.mark.parametrize("kind", list(HOSTILE))
def test_both_paths_give_the_same_rows_and_the_same_dead_letters(tmp_path, catalog, serde, kind):
    """One hostile record among good ones: the native path must not take it (ClickHouse refuses the batch, or the
    header check keeps it out), and the batch ends as the Python path ends it."""
    items = _batch(catalog, serde, [kind])
    python = _run(tmp_path / "python", catalog, serde, items, native=False)
    native = _run(tmp_path / "native", catalog, serde, items, native=True)
    assert native == python
    inserted, rejected, rows = native
    assert inserted == {"seed_telemetry": 12 * 4, "epochs": 1}
    assert rejected == [(5, REASON.get(kind, "schema-mismatch"))]  # what decode_for_topic says, as every reader


def test_a_batch_of_every_kind_ends_as_the_python_path_ends_it(tmp_path, catalog, serde, containers):
    items = _batch(catalog, serde, list(HOSTILE))
    python = _run(tmp_path / "python", catalog, serde, items, native=False)
    native = _run(tmp_path / "native", catalog, serde, items, native=True)
    assert native == python
    assert [i for i, _ in native[1]] == [5 + 2 * k for k in range(len(HOSTILE))]
    assert len(native[2]["seed_telemetry"]) == 48


@pytest.fixture(params=[1, 4], ids=["one container", "four containers"])
def containers(request, monkeypatch):
    """How many containers a batch is split into (one per core, for large batches): forced, for a small batch."""
    import processors.clickhouse.store as store

    monkeypatch.setattr(store, "CONTAINER_MIN_RECORDS", 5 if request.param > 1 else 10**9)
    monkeypatch.setattr(store.os, "cpu_count", lambda: request.param)
    return request.param


def test_good_telemetry_goes_in_undecoded_and_as_the_python_path_puts_it(tmp_path, catalog, serde, monkeypatch,
                                                                          containers):
    items = [(TOPICS.prefix + TOPIC, serde.encode(_telemetry(i, seeds=32))) for i in range(40)]
    python = _run(tmp_path / "python", catalog, serde, items, native=False)

    def no_decode(*args, **kwargs):
        raise AssertionError("decoded in Python")

    monkeypatch.setattr(sink, "decode_for_topic", no_decode)
    native = _run(tmp_path / "native", catalog, serde, items, native=True)
    assert native == python
    assert native[0] == {"seed_telemetry": 40 * 32} and native[1] == []
    assert not list((tmp_path / "native" / "incoming").iterdir())  # the container is gone after the insert


def test_each_native_mapping_names_its_tables_columns(tmp_path, catalog):
    with EmbeddedStore(tmp_path / "ch") as store:
        for name, mapping in NATIVE.items():
            assert catalog.find(name) is not None
            assert set(mapping.columns) <= set(store.arrow_types(mapping.table))


def test_a_container_holds_the_bodies_it_was_given(catalog, serde):
    import json

    from fastavro import reader

    raw = [serde.encode(_telemetry(i)) for i in range(5)]
    data = object_container(json.dumps(catalog.get(NAME).schema).encode(), [r[10:] for r in raw])
    assert list(reader(io.BytesIO(data))) == [serde.decode(r).record for r in raw]


def test_a_batch_planned_on_one_thread_is_inserted_on_another_and_a_plan_never_inserted_leaves_nothing(
        tmp_path, catalog, serde, containers):
    """The processors' sink frames and stages the next batch on its reader thread while the store's thread inserts
    the last one (``plan_records`` / ``sink_plan``): the same rows as ``sink_records`` in one go."""
    from concurrent.futures import ThreadPoolExecutor

    items = _batch(catalog, serde, ["cut short"])
    whole = _run(tmp_path / "whole", catalog, serde, items, native=True)
    with EmbeddedStore(tmp_path / "split") as store, ThreadPoolExecutor(1) as store_thread:
        plan = sink.plan_records(store, serde, TOPICS, items)
        assert plan.staged and list((tmp_path / "split" / "incoming").iterdir())  # staged: on disk, not inserted
        assert store.rows("SELECT count() AS n FROM esper.seed_telemetry")[0]["n"] == 0
        inserted, rejected = store_thread.submit(sink.sink_plan, store, serde, TOPICS, plan).result()
        assert (inserted, [(i, r) for i, r, _ in rejected], _rows(store)) == whole
        dropped = sink.plan_records(store, serde, TOPICS, items)
        dropped.discard()
        assert not list((tmp_path / "split" / "incoming").iterdir())


def test_a_batch_that_cannot_be_staged_is_decoded_instead(tmp_path, catalog, serde):
    """The containers cannot be written (here the inbox is a file; on a machine, a full disk): the batch goes the
    decode path, with the same rows and dead letters, instead of stopping the sink."""
    items = _batch(catalog, serde, ["cut short"])
    python = _run(tmp_path / "python", catalog, serde, items, native=False)
    with EmbeddedStore(tmp_path / "blocked") as store:
        (tmp_path / "blocked" / "incoming").write_bytes(b"not a folder")
        plan = sink.plan_records(store, serde, TOPICS, items)
        assert not plan.staged
        inserted, rejected = sink.sink_plan(store, serde, TOPICS, plan)
        assert (inserted, [(i, r) for i, r, _ in rejected], _rows(store)) == python
