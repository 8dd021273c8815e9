"""The sink when the store says no: a record the store refuses is set aside (for the dead-letter topic) and the rest
of its batch still goes in — on real chdb; while the store is unavailable the processors' sink waits, backing off,
and retries the same batch until it is in, dropping nothing."""

from __future__ import annotations

import pytest

from processors.clickhouse import EmbeddedStore
from processors.clickhouse.sink import insert_or_set_aside
from processors.exceptions import StoreUnavailable
from streams import SingleObjectSerde
from streams.samples import sample_event
from streams.schemas import SchemaCatalog


def _epochs(n: int, seed: int = 0) -> list[tuple[str, dict]]:
    schema = SchemaCatalog.load().get("esper.tolaria.EpochCompleted")
    return [(ev.AVRO_NAME, ev.to_avro()) for ev in (sample_event(schema, seed + i, storable=True) for i in range(n))]


@pytest.fixture
def store(tmp_path):
    with EmbeddedStore(tmp_path / "ch") as s:
        yield s


def _raw(records: list[tuple[str, dict]]) -> list:
    """The records as the processors' sink reads them off the log (librdkafka's messages): encoded, on their
    topic."""
    serde = SingleObjectSerde(SchemaCatalog.load())
    return [_message(i, serde.encode(record, schema_name=name)) for i, (name, record) in enumerate(records)]


def _message(offset: int, value: bytes):
    from confluent_kafka import Message

    return Message(topic="tolaria.run.events", partition=0, offset=offset, key=f"key-{offset}".encode(),
                   value=value, headers=None, error=None, timestamp=(1, 0))


class DeadLetters:
    """The sink's reader as far as dead letters go: what it was asked to set aside, and whether it flushed."""

    def __init__(self):
        self.sent, self.flushed = [], 0
        self.publisher = self

    def send(self, record, reason, detail):
        self.sent.append((record.offset, reason))

    def flush(self):
        self.flushed += 1


class Reader:
    def __init__(self):
        self.deadletter = DeadLetters()

    @staticmethod
    def record_of(msg):
        from streams.consumer import EventConsumer

        return EventConsumer.record_of(msg)


def _count(store) -> int:
    return int(store.rows("SELECT count() AS n FROM esper.epochs")[0]["n"])


def test_a_record_the_store_refuses_is_set_aside_and_the_rest_go_in(store):
    records = _epochs(5)
    name, bad = records[2]
    records[2] = (name, {**bad, "epoch": "not a number"})  # ClickHouse refuses the row (on its own: see below)
    name, broken = records[4]
    records[4] = (name, {k: v for k, v in broken.items() if k != "val_loss"})  # the row mapping cannot read it
    inserted, refused = insert_or_set_aside(store, records)
    assert inserted == {"epochs": 3} and _count(store) == 3
    assert [i for i, _ in refused] == [2, 4]
    assert "not a number" in refused[0][1] or "epoch" in refused[0][1]
    assert "val_loss" in refused[1][1]


def test_values_that_do_not_fit_their_column_are_refused_not_wrapped(store):
    """Rows go in as Arrow typed by the table's columns: what ClickHouse would coerce (a string read as 0, -1 in an
    unsigned column read as 4294967295, a long cut to 32 bits) is refused, in a batch as much as alone."""
    for field, value in (("epoch", "not a number"), ("epoch", -1), ("epoch", 2**40), ("params", -5)):
        records = _epochs(3, seed=10)
        name, good = records[1]
        records[1] = (name, {**good, field: value})
        inserted, refused = insert_or_set_aside(store, records)
        assert inserted == {"epochs": 2} and [i for i, _ in refused] == [1], (field, value, refused)
    final = store.rows("SELECT count() AS n, max(epoch) AS m, min(params) AS p FROM esper.epochs FINAL")[0]
    assert int(final["n"]) == 2 and int(final["m"]) < 2**31 and int(final["p"]) >= 0  # the same two, stored once


def test_a_good_batch_is_one_insert(store):
    inserted, refused = insert_or_set_aside(store, _epochs(4))
    assert inserted == {"epochs": 4} and refused == [] and _count(store) == 4


class Unavailable:
    """The real store behind a server that is away for the first ``outages`` inserts."""

    def __init__(self, store, outages: int):
        self.store, self.outages, self.calls = store, outages, 0

    def insert(self, table, rows):
        self.calls += 1
        if self.calls <= self.outages:
            raise StoreUnavailable("connection refused (test)")
        return self.store.insert(table, rows)


def test_an_unavailable_store_is_waited_for_and_nothing_is_dropped(store, tmp_path):
    from processors.app import Processors
    from streams import Backbone, load_settings

    procs = Processors(Backbone(load_settings(home=tmp_path)), agents=("telemetry-sink",))
    procs.bb.serde = SingleObjectSerde(SchemaCatalog.load())  # no broker here for the log's schema catalog
    procs.store = Unavailable(store, outages=2)
    reader = Reader()
    assert procs._sink(reader, _raw(_epochs(6)))
    procs._store_exec.shutdown()
    assert _count(store) == 6 and reader.deadletter.sent == []
    assert procs.stats["telemetry-sink"]["insert_retries"] == 2  # waited 0.5 s, then 1 s
    assert procs.stats["telemetry-sink"]["rows:epochs"] == 6


def test_a_stop_while_the_store_is_away_leaves_the_batch_unstored(store, tmp_path):
    import threading

    from processors.app import Processors
    from streams import Backbone, load_settings

    procs = Processors(Backbone(load_settings(home=tmp_path)), agents=("telemetry-sink",))
    procs.bb.serde = SingleObjectSerde(SchemaCatalog.load())
    procs.store = Unavailable(store, outages=100)
    stop = threading.Event()
    threading.Timer(0.7, stop.set).start()
    assert procs._sink(Reader(), _raw(_epochs(3)), stop) is False  # the caller leaves its offsets unstored
    procs._store_exec.shutdown()
    assert _count(store) == 0


def test_refused_records_reach_the_dead_letter_path(store, tmp_path):
    from processors.app import Processors
    from streams import Backbone, load_settings

    procs = Processors(Backbone(load_settings(home=tmp_path)), agents=("telemetry-sink",))
    procs.bb.serde = SingleObjectSerde(SchemaCatalog.load())  # no broker here for the log's schema catalog
    procs.store = store
    records = _epochs(4)
    records[1] = (records[1][0], {**records[1][1], "params": -5})  # encodes (an Avro long); the store refuses it
    batch = _raw(records)
    batch[3] = _message(3, batch[3].value()[:-3])  # cut short: does not decode
    reader = Reader()
    assert procs._sink(reader, batch)
    procs._store_exec.shutdown()
    assert _count(store) == 2
    assert reader.deadletter.sent == [(1, "unstorable"), (3, "schema-mismatch")] and reader.deadletter.flushed == 1
    assert procs.stats["telemetry-sink"]["dead_lettered"] == 2
