"""Reading records straight into the generated types (``_avro_read``, ``SingleObjectSerde.decode_typed``) against
fastavro: every record type, valid records read to the event fastavro's decode gives; damaged records (cut short,
bytes changed, followed by more, hostile varints) give what ``decode(...).typed()`` gives — the same event or the
same DecodeError."""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings

from streams.contracts import TYPES, SeedLifecycleTransition
from streams.exceptions import DecodeError
from streams.serde import HEADER_LEN, SingleObjectSerde
from streams.synthetic import synthetic_run
from tests.unit.streams.test_avro_write import CATALOG, RECORDS, _fastavro, _values

SERDE = SingleObjectSerde(CATALOG)


def _outcome(call, data):
    """An event as the bytes fastavro writes for it (NaN-safe equality), or the DecodeError's reason."""
    try:
        return "event", _fastavro(call(data))
    except DecodeError as exc:
        return "error", exc.reason


def _before(data):  # fastavro's way only: what decode_typed must agree with
    return SERDE.decode(data).typed()


@pytest.mark.parametrize("name", RECORDS)
def test_every_record_type_reads_back_what_fastavro_wrote(name):
    schema = CATALOG.get(name)
    cls = TYPES[name]

    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
    @given(_values(schema.schema))
    def check(event):
        data = _fastavro(event)
        read, end = cls._avro_read(data, HEADER_LEN)  # directly: no valid record is left to fastavro
        assert end == len(data)
        assert _fastavro(read) == data == _fastavro(_before(data))
        assert type(read) is cls

    check()


def _run_records() -> list[bytes]:
    return [SERDE.encode(ev, "t") for _, _, ev in synthetic_run("r", layers=2, epochs=10)]


def test_decode_typed_is_decode_then_typed_on_a_whole_run():
    records = _run_records()
    assert len({SERDE.peek_ids(r, "t")[0] for r in records}) >= 6
    for data in records:
        assert _outcome(SERDE.decode_typed, data) == _outcome(_before, data)
    assert all(cls is not None for cls in SERDE._typed.values())  # every one read directly


def test_damaged_records_give_what_fastavro_gives():
    rng = random.Random(7)
    records = _run_records()
    cases = []
    for data in rng.sample(records, 40):
        cases += [data[:cut] for cut in range(HEADER_LEN, len(data))]  # cut short anywhere
        cases += [data + b"\x00", data + b"\x02x"]  # more after the record
        for _ in range(30):  # a byte of the body changed
            i = rng.randrange(HEADER_LEN, len(data))
            cases.append(data[:i] + bytes([rng.randrange(256)]) + data[i + 1:])
    outcomes = {"event": 0, "error": 0}
    for data in cases:
        got = _outcome(SERDE.decode_typed, data)
        assert got == _outcome(_before, data), data.hex()
        outcomes[got[0]] += 1
    assert outcomes["event"] > 100 and outcomes["error"] > 100  # both kinds were met


def test_varints_and_lengths_it_leaves_to_fastavro():
    ev = next(ev for _, _, ev in synthetic_run("r", layers=1, epochs=3) if isinstance(ev, SeedLifecycleTransition))
    data = SERDE.encode(ev, "t")
    body = data[HEADER_LEN:]
    # the event id's length written long (ten bytes, the same value): read directly, as fastavro reads it
    n = body[0]
    padded = data[:HEADER_LEN] + bytes([n | 0x80] + [0x80] * 8 + [0x00]) + body[1:]
    assert SeedLifecycleTransition._avro_read(padded, HEADER_LEN)[1] == len(padded)
    assert _outcome(SERDE.decode_typed, padded) == _outcome(_before, padded)
    for wide in (bytes([n | 0x80] + [0x80] * 8 + [0x02]),  # past 64 bits
                 bytes([n | 0x80] + [0x80] * 9 + [0x00])):  # eleven bytes
        damaged = data[:HEADER_LEN] + wide + body[1:]
        with pytest.raises(Exception):  # noqa: B017 - left to fastavro
            SeedLifecycleTransition._avro_read(damaged, HEADER_LEN)
        assert _outcome(SERDE.decode_typed, damaged) == _outcome(_before, damaged)
    hostile = data[:HEADER_LEN] + b"\xff" * 1_000 + b"\x01"  # the hostile suite's endless varint, smaller
    assert _outcome(SERDE.decode_typed, hostile) == _outcome(_before, hostile) == ("error", "schema-mismatch")


def test_another_version_of_the_schema_is_read_by_fastavro(monkeypatch):
    monkeypatch.setattr(SeedLifecycleTransition, "AVRO_FINGERPRINT", "00" * 8)
    serde = SingleObjectSerde(CATALOG)
    data = next(r for r in _run_records() if SERDE.peek_ids(r, "t")[0] == SeedLifecycleTransition.AVRO_NAME)
    assert _outcome(serde.decode_typed, data) == _outcome(_before, data)
    assert set(serde._typed.values()) == {None}
