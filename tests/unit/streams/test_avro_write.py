"""The generated types' direct Avro writing (``_avro_write``, ``streams.avro_write``) against fastavro: for every
record type, values of the declared Python types give fastavro's bytes exactly; a value of any other type is left to
fastavro, so what the serde writes or refuses never changed."""

from __future__ import annotations

import dataclasses
import io
from datetime import datetime, timedelta, timezone

import pytest
from fastavro import schemaless_writer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streams import avro_write
from streams.contracts import TYPES, SeedLifecycleTransition, SeedState, SeedTelemetry, TamiyoDecision
from streams.exceptions import EncodeError
from streams.schemas import SchemaCatalog
from streams.serde import MAGIC, SingleObjectSerde
from streams.synthetic import synthetic_run

CATALOG = SchemaCatalog.load()
RECORDS = sorted(n for n, cls in TYPES.items() if hasattr(cls, "_avro_write"))
_PRIMITIVES = {
    "null": st.none(),
    "boolean": st.booleans(),
    "int": st.integers(-(1 << 31), (1 << 31) - 1),
    "long": st.integers(-(1 << 63), (1 << 63) - 1),
    "float": st.floats(width=32),
    "double": st.floats(),
    "string": st.text(max_size=40),
    "bytes": st.binary(max_size=40),
}
_AWARE = st.datetimes(min_value=datetime(1900, 1, 1), max_value=datetime(2200, 1, 1),
                      timezones=st.builds(timezone, st.timedeltas(min_value=timedelta(hours=-23),
                                                                  max_value=timedelta(hours=23))))


def _values(t):
    """Python values of the type the generated classes declare for Avro type ``t``."""
    if isinstance(t, str):
        if t in _PRIMITIVES:
            return _PRIMITIVES[t]
        t = CATALOG.get(t).schema
    if isinstance(t, list):
        return st.one_of(*(_values(x) for x in t))
    kind = t["type"]
    if kind == "enum":
        return st.sampled_from(list(TYPES[t["name"]]))
    if kind == "record":
        cls = TYPES[t["name"]]
        return st.builds(cls, **{f["name"]: st.deferred(lambda f=f: _values(f["type"])) for f in t["fields"]})
    if kind == "array":
        return st.lists(_values(t["items"]), max_size=4)
    if kind == "map":
        return st.dictionaries(st.text(max_size=8), _values(t["values"]), max_size=3)
    if t.get("logicalType") == "timestamp-millis":
        return _AWARE
    return _PRIMITIVES[kind]


def _fastavro(event) -> bytes:
    schema = CATALOG.get(type(event).AVRO_NAME)
    buf = io.BytesIO()
    buf.write(MAGIC + schema.fingerprint)
    schemaless_writer(buf, schema.parsed, event.to_avro(), strict=False)
    return buf.getvalue()


def _direct(event) -> bytes:
    parts = [MAGIC + CATALOG.get(type(event).AVRO_NAME).fingerprint]
    event._avro_write(parts.append)
    return b"".join(parts)


@pytest.mark.parametrize("name", RECORDS)
def test_every_record_type_writes_fastavros_bytes(name):
    schema = CATALOG.get(name)
    assert TYPES[name].AVRO_FINGERPRINT == schema.fingerprint_hex

    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
    @given(_values(schema.schema))
    def check(event):
        assert _direct(event) == _fastavro(event)  # written directly: no value of a declared type is left over

    check()


def test_the_serde_writes_a_run_as_before():
    serde = SingleObjectSerde(CATALOG)
    events = [ev for _, _, ev in synthetic_run("r", layers=3, epochs=12)]
    assert len({type(ev) for ev in events}) >= 6
    for ev in events:
        assert serde.encode(ev, "t") == _fastavro(ev)
    assert all(serde._direct[type(ev)] for ev in events)  # and every one went the direct way


def _transition(**changes) -> SeedLifecycleTransition:
    ev = next(ev for _, _, ev in synthetic_run("r", layers=1, epochs=4) if isinstance(ev, SeedLifecycleTransition))
    return dataclasses.replace(ev, **changes)  # (replace runs no type checks: a careless caller's values)


def _same_as_fastavro(event):
    """What the serde does with ``event`` is what it did before it wrote directly (through fastavro): the same
    bytes, or the same error."""
    serde, before = SingleObjectSerde(CATALOG), SingleObjectSerde(CATALOG)
    before._direct[type(event)] = b""  # fastavro's way only
    try:
        expected = before.encode(event, "t")
    except Exception as exc:  # noqa: BLE001 - refused before: refused the same way now
        with pytest.raises(type(exc)):
            serde.encode(event, "t")
        return
    assert serde.encode(event, "t") == expected


@pytest.mark.parametrize("changes", [
    {"layer_id": True},  # a bool where an int is declared
    {"layer_id": 1 << 40},  # past int32: fastavro writes it anyway
    {"epoch": 1 << 70},  # past int64: fastavro refuses
    {"epoch": 3.0},
    {"layer_id": "3"},
    {"from_state": "DORMANT"},  # the symbol's string, not the enum
    {"to_state": 4},
    {"reason": b"bytes"},
    {"reason": "\ud800"},  # a lone surrogate: not UTF-8
    {"command_id": 7},
    {"reason": type("Sub", (str,), {})("a str subclass")},
])
def test_values_of_other_types_are_left_to_fastavro(changes):
    event = _transition(**changes)
    with pytest.raises(Exception):  # noqa: B017 - Unfit or what the value raises: never a silent write
        _direct(event)
    _same_as_fastavro(event)


def test_envelope_and_nested_records_of_other_types_are_left_to_fastavro():
    ev = _transition()
    naive = dataclasses.replace(ev.envelope, occurred_at=ev.envelope.occurred_at.replace(tzinfo=None))
    with pytest.raises(avro_write.Unfit):
        _direct(dataclasses.replace(ev, envelope=naive))  # fastavro reads a naive time in the local zone
    _same_as_fastavro(dataclasses.replace(ev, envelope=naive))
    _same_as_fastavro(dataclasses.replace(ev, envelope=ev.envelope.to_avro()))  # a dict where a record goes

    telemetry = next(e for _, _, e in synthetic_run("r", layers=1, epochs=2) if isinstance(e, SeedTelemetry))
    for seeds in (tuple(telemetry.seeds), [telemetry.seeds[0].to_avro()], [None]):
        _same_as_fastavro(dataclasses.replace(telemetry, seeds=seeds))
    health = dataclasses.replace(telemetry.seeds[0], **{_a_float_field(telemetry.seeds[0]): 1e300})
    _same_as_fastavro(dataclasses.replace(telemetry, seeds=[health]))  # float32 overflow


def _a_float_field(record) -> str:
    schema = CATALOG.get(type(record).AVRO_NAME).schema
    return next(f["name"] for f in schema["fields"] if f["type"] in ("float", "double"))


def test_a_catalog_with_another_version_of_the_schema_is_written_by_fastavro(monkeypatch):
    monkeypatch.setattr(SeedLifecycleTransition, "AVRO_FINGERPRINT", "00" * 8)
    serde = SingleObjectSerde(CATALOG)
    ev = _transition()
    assert serde.encode(ev, "t") == _fastavro(ev)
    assert serde._direct[SeedLifecycleTransition] == b""


def test_the_size_limit_holds_on_the_direct_path():
    serde = SingleObjectSerde(CATALOG, max_message_bytes=200)
    with pytest.raises(EncodeError, match="over the 200-byte limit"):
        serde.encode(_transition(reason="x" * 300), "t")


def test_integers_and_times_at_their_edges():
    for n in (0, 1, -1, 63, 64, -64, -65, 8191, 8192, -8192, -8193, (1 << 31) - 1, -(1 << 31), (1 << 63) - 1,
              -(1 << 63)):
        buf = io.BytesIO()
        schemaless_writer(buf, "long", n)
        assert avro_write.long_(n) == avro_write.zigzag(n) == buf.getvalue()
    with pytest.raises(avro_write.Unfit):
        avro_write.int_(1 << 31)
    for dt in (datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=timezone.utc),
               datetime(2026, 11, 28, 1, 2, 3, 456789, tzinfo=timezone(timedelta(hours=-5)))):
        buf = io.BytesIO()
        schemaless_writer(buf, {"type": "long", "logicalType": "timestamp-millis"}, dt)
        assert avro_write.timestamp_millis(dt) == buf.getvalue()
    assert SeedState.DORMANT.value == "DORMANT" and TamiyoDecision.AVRO_FINGERPRINT
