import copy
import dataclasses
import io
import uuid

import pytest
from fastavro import schemaless_writer

from streams import ConfluentSerde, DecodeError, EncodeError, NamedSchema, SingleObjectSerde
from streams.contracts import EpochCompleted, FieldReport
from streams.envelope import EnvelopeFactory
from streams.samples import sample_event
from streams.serde import MAGIC


@pytest.fixture
def serde(catalog):
    return SingleObjectSerde(catalog)


def test_every_event_round_trips_single_object(catalog, serde):
    for schema in catalog.events:
        for seed in range(3):
            event = sample_event(schema, seed)
            data = serde.encode(event)
            assert data[:2] == MAGIC and data[2:10] == schema.fingerprint
            decoded = serde.decode(data)
            assert decoded.name == schema.name
            assert decoded.typed() == event


def _field_report(**overrides):
    base = dict(envelope=EnvelopeFactory("r1", "test").next("blueprint/b1"), blueprint_id="b1", seed_id="0/1",
                pre_metric=0.5, post_metric=0.6, outcome="FOSSILIZED", eval_metrics={"acc": 0.6})
    base.update(overrides)
    return FieldReport(**base)


def test_a_record_that_breaks_its_schema_is_refused(serde):
    with pytest.raises(EncodeError, match="FieldReport"):
        serde.encode(_field_report(pre_metric="high"))
    with pytest.raises(EncodeError, match="FieldReport"):
        serde.encode({"blueprint_id": "b1"}, schema_name="esper.innovation.FieldReport")


def test_an_oversize_record_is_refused(catalog):
    small = SingleObjectSerde(catalog, max_message_bytes=10_000)
    with pytest.raises(EncodeError, match="over the 10000-byte limit"):
        small.encode(_field_report(seed_id="x" * 20_000))


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"", "truncated"),
        (MAGIC + b"\x00" * 3, "truncated"),
        (b"\x00\x01" + b"\x00" * 20, "bad-magic"),
        (b'{"json": "not avro"}', "bad-magic"),
        (MAGIC + b"\xff" * 8 + b"\x02", "unknown-fingerprint"),
    ],
)
def test_malformed_bytes_give_a_reason(serde, data, reason):
    with pytest.raises(DecodeError) as info:
        serde.decode(data)
    assert info.value.reason == reason


def test_a_body_that_does_not_match_its_fingerprint_is_refused(serde):
    good = serde.encode(_field_report())
    with pytest.raises(DecodeError) as info:
        serde.decode(good[:-3])  # truncated body
    assert info.value.reason == "schema-mismatch"
    with pytest.raises(DecodeError) as info:
        serde.decode(good + b"\x00\x01")  # trailing garbage
    assert info.value.reason == "schema-mismatch"


def _older_epoch_schema(catalog) -> NamedSchema:
    """EpochCompleted as a writer from before `duration_ms` existed would have had it."""
    doc = copy.deepcopy(catalog.get("EpochCompleted").schema)
    doc["fields"] = [f for f in doc["fields"] if f["name"] != "duration_ms"]
    return NamedSchema(doc["name"], doc, None)


def test_an_unknown_writer_is_resolved_and_a_missing_required_field_fails_loudly(catalog):
    old = _older_epoch_schema(catalog)
    env = EnvelopeFactory("r1", "test").next("run/r1")
    record = {"envelope": env.to_avro(), "epoch": 3, "train_loss": 0.1, "val_loss": 0.2, "val_accuracy": 0.9,
              "params": 100, "learning_rate": 1e-3}
    buf = io.BytesIO()
    buf.write(MAGIC + old.fingerprint)
    schemaless_writer(buf, old.parsed, record)
    data = buf.getvalue()

    with pytest.raises(DecodeError) as info:
        SingleObjectSerde(catalog).decode(data)  # without the catalog topic the writer is unknown
    assert info.value.reason == "unknown-fingerprint"

    # The field was added without a default, so upcasting must fail loudly rather than invent a value...
    resolving = SingleObjectSerde(catalog, resolver={old.fingerprint: old}.get)
    with pytest.raises(DecodeError, match="duration_ms"):
        resolving.decode(data)


def test_a_field_added_with_a_default_is_filled_when_reading_old_records(catalog, tmp_path):
    # Build a catalog where FieldReport gained a field with a default; decode a record written before it.
    new_doc = copy.deepcopy(catalog.get("FieldReport").schema)
    new_doc["fields"].append({"name": "note", "type": "string", "default": "none"})
    new = NamedSchema(new_doc["name"], new_doc, None)
    from streams.schemas import SchemaCatalog

    new_catalog = SchemaCatalog({**{s.name: s for s in catalog}, new.name: new})
    old_bytes = SingleObjectSerde(catalog).encode(_field_report())
    decoded = SingleObjectSerde(new_catalog, resolver=catalog.by_fingerprint).decode(old_bytes)
    assert decoded.record["note"] == "none"
    assert decoded.record["blueprint_id"] == "b1"


def test_confluent_wire_format_round_trips_every_event(catalog):
    serde = ConfluentSerde(catalog, f"mock://{uuid.uuid4().hex}")
    for schema in catalog.events:
        event = sample_event(schema, 7)
        data = serde.encode(event, "some.topic")
        assert data[0] == 0  # Confluent magic byte, then a 4-byte schema id
        assert serde.decode(data, "some.topic").typed() == event


def test_confluent_bytes_decode_with_confluents_own_deserializer(catalog):
    from confluent_kafka.schema_registry.avro import AvroDeserializer
    from confluent_kafka.serialization import MessageField, SerializationContext

    serde = ConfluentSerde(catalog, f"mock://{uuid.uuid4().hex}")
    event = _field_report()
    data = serde.encode(event, "innovation.field_reports")
    theirs = AvroDeserializer(serde.client)(data, SerializationContext("innovation.field_reports", MessageField.VALUE))
    assert theirs["blueprint_id"] == "b1" and theirs["eval_metrics"] == {"acc": 0.6}


def test_confluent_serde_refuses_single_object_bytes(catalog):
    serde = ConfluentSerde(catalog, f"mock://{uuid.uuid4().hex}")
    with pytest.raises(DecodeError) as info:
        serde.decode(SingleObjectSerde(catalog).encode(_field_report()))
    assert info.value.reason == "bad-magic"


def test_epoch_completed_is_decoded_as_its_type(catalog, serde):
    env = EnvelopeFactory("r1", "test").next("run/r1")
    ev = EpochCompleted(envelope=env, epoch=1, train_loss=0.5, val_loss=0.4, val_accuracy=0.8, params=10,
                        learning_rate=0.01, duration_ms=12.5)
    assert serde.decode(serde.encode(ev)).typed() == ev


@pytest.mark.parametrize("framing", ["single-object", "confluent"])
def test_peek_reads_the_envelope_of_every_event_without_the_rest(catalog, framing):
    serde = SingleObjectSerde(catalog) if framing == "single-object" else ConfluentSerde(catalog, f"mock://{uuid.uuid4().hex}")
    for schema in catalog.events:
        for seed in range(3):
            event = sample_event(schema, seed)
            data = serde.encode(event, "some.topic")
            name, env = serde.peek(data, "some.topic")
            full = serde.decode(data, "some.topic").record["envelope"]
            assert name == schema.name
            assert env == {"event_id": full["event_id"], "run_id": full["run_id"],
                           "occurred_at_ms": int(full["occurred_at"].timestamp() * 1000),
                           "originator_id": full["originator_id"], "originator_version": full["originator_version"],
                           "producer": full["producer"]}
            assert serde.peek_ids(data, "some.topic") == (name, full["event_id"], full["run_id"])


@pytest.mark.parametrize("peek", ["peek", "peek_ids"])
def test_peek_refuses_a_truncated_envelope(serde, peek):
    data = serde.encode(_field_report())
    for cut in (14, 10 + 1 + 36 + 2):  # inside the event id (36 characters); inside the time that follows it
        with pytest.raises(DecodeError) as err:
            getattr(serde, peek)(data[:cut])
        assert err.value.reason == "schema-mismatch"
    with pytest.raises(DecodeError):
        getattr(serde, peek)(b"\x00\x01 not a record")


@pytest.mark.parametrize("run_id, origin, version", [
    ("r" * 63, "seed/1/2", 1),              # the longest string with a one-byte length
    ("r" * 64, "o" * 300, 2**40),           # two- and three-byte lengths, a long version
    ("ü" * 40, "seed/0/0", 63),             # a non-ASCII id: 80 bytes, a two-byte length
])
def test_peek_reads_multi_byte_lengths_and_longs_as_decode_does(serde, run_id, origin, version):
    envelope = EnvelopeFactory(run_id, "test").next(origin)
    envelope = dataclasses.replace(envelope, originator_version=version)
    ev = EpochCompleted(envelope=envelope, epoch=1, train_loss=0.5, val_loss=0.4, val_accuracy=0.8, params=10,
                        learning_rate=0.01, duration_ms=12.5)
    data = serde.encode(ev)
    _, env = serde.peek(data)
    assert (env["run_id"], env["originator_id"], env["originator_version"]) == (run_id, origin, version)
    assert env["event_id"] == serde.decode(data).record["envelope"]["event_id"]
    assert serde.peek_ids(data)[1:] == (env["event_id"], run_id)
