"""Every event the sink keeps lands in its table: a sample of each (derived from its Avro schema) goes through
``insert_batch`` into real chdb, and the table the sink names for it has exactly that many rows after."""

from __future__ import annotations

import pytest

from processors.clickhouse import EmbeddedStore
from processors.clickhouse.sink import TABLE_OF_EVENT, insert_batch, rows_for
from streams.samples import sample_event
from streams.schemas import SchemaCatalog


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    with EmbeddedStore(tmp_path_factory.mktemp("ch")) as s:
        yield s


@pytest.mark.parametrize("name", sorted(TABLE_OF_EVENT))
def test_a_sample_of_every_kept_event_becomes_rows_of_its_table(store, name):
    catalog = SchemaCatalog.load()
    events = [sample_event(catalog.get(name), seed, storable=True) for seed in range(3)]
    table = TABLE_OF_EVENT[name]
    want = sum(len(rows_for(ev)) for ev in events)
    before = int(store.rows(f"SELECT count() AS n FROM esper.{table}")[0]["n"])
    inserted = insert_batch(store, [(ev.AVRO_NAME, ev.to_avro()) for ev in events])
    assert inserted == ({table: want} if want else {})
    assert int(store.rows(f"SELECT count() AS n FROM esper.{table}")[0]["n"]) == before + want
