"""Issue #13, item 3 and the decoders: whatever bytes arrive, decoding and the envelope peek either succeed or
raise DecodeError with a reason (a dead-letter header), in time linear in the record; a record over the size limit
is refused at read as it is at publish."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams import ConfluentSerde, DecodeError, EncodeError, SingleObjectSerde
from streams.contracts import FieldReport
from streams.envelope import EnvelopeFactory
from streams.samples import sample_event
from streams.serde import HEADER_LEN


@pytest.fixture(scope="module")
def serde():
    from streams import SchemaCatalog

    return SingleObjectSerde(SchemaCatalog.load())


def _report(serde):
    return serde.encode(FieldReport(envelope=EnvelopeFactory("r", "t").next("blueprint/b"), blueprint_id="b",
                                    seed_id="0/1", pre_metric=0.5, post_metric=0.6, outcome="FOSSILIZED",
                                    eval_metrics={}))


def test_a_varint_longer_than_an_avro_long_is_refused(serde):
    good = _report(serde)
    header = good[:HEADER_LEN]
    # the event_id's length as a run of continuation bytes, a megabyte long: refused after 10 of them
    poison = header + b"\x80" * 1_000_000 + b"\x01"
    with pytest.raises(DecodeError) as info:
        serde.peek(poison[:serde.max_message_bytes])
    assert info.value.reason == "schema-mismatch" and "10 bytes" in str(info.value)
    with pytest.raises(DecodeError) as info:
        serde.peek_ids(poison[:serde.max_message_bytes])
    assert info.value.reason == "schema-mismatch" and "10 bytes" in str(info.value)
    name, env = serde.peek(good)
    assert name.endswith("FieldReport") and env["run_id"] == "r"


def test_a_record_over_the_size_limit_is_refused_at_read(serde, catalog):
    small = SingleObjectSerde(catalog, max_message_bytes=200)
    data = _report(serde) + b"\x00" * 300
    for call in (small.decode, small.peek):
        with pytest.raises(DecodeError) as info:
            call(data)
        assert info.value.reason == "too-large"
    with pytest.raises(EncodeError, match="limit"):
        SingleObjectSerde(catalog, max_message_bytes=50).encode(
            FieldReport(envelope=EnvelopeFactory("r", "t").next("blueprint/b"), blueprint_id="b" * 100,
                        seed_id="0/1", pre_metric=0.5, post_metric=0.6, outcome="FOSSILIZED", eval_metrics={}))


def test_a_record_with_no_type_here_is_a_decode_error_not_a_crash(serde, catalog):
    from streams.serde import Decoded

    schema = catalog.get("FieldReport")
    foreign = Decoded(type(schema)("esper.elsewhere.Unknown", schema.parsed, schema.fingerprint), {})
    with pytest.raises(DecodeError) as info:
        foreign.typed()
    assert info.value.reason == "untyped"
    broken = Decoded(schema, {"envelope": None})
    with pytest.raises(DecodeError) as info:
        broken.typed()
    assert info.value.reason == "untyped"


@settings(max_examples=300, deadline=None)
@given(body=st.binary(max_size=400), cut=st.integers(0, 400), flip=st.integers(0, 10_000))
def test_any_bytes_decode_or_raise_decode_error(serde, catalog, body, cut, flip):
    events = [sample_event(s, 0) for s in catalog.events[:8]]
    real = serde.encode(events[flip % len(events)])
    mutated = bytearray(real[:cut] + body)
    if mutated and flip % 3 == 0:
        mutated[flip % len(mutated)] ^= 0xFF
    for data in (bytes(mutated), real[:HEADER_LEN] + body, body):
        for call in (serde.decode, serde.peek):
            try:
                call(data)
            except DecodeError as exc:
                assert exc.reason in {"bad-magic", "truncated", "too-large", "unknown-fingerprint", "schema-mismatch"}


@settings(max_examples=100, deadline=None)
@given(body=st.binary(max_size=200))
def test_confluent_framing_too(catalog, body):
    class NoRegistry:
        def get_schema(self, schema_id):
            raise LookupError(f"no schema {schema_id}")

    serde = ConfluentSerde.__new__(ConfluentSerde)
    serde.catalog, serde.max_message_bytes, serde._writers, serde.client = catalog, 1000, {}, NoRegistry()
    for data in (body, b"\x00" + body, b"\x01" + body):
        for call in (serde.decode, serde.peek):
            try:
                call(data)
            except DecodeError as exc:
                assert exc.reason in {"bad-magic", "truncated", "too-large", "unknown-fingerprint"}
