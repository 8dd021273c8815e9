"""Avro serde for Esper events, in two framings.

* Single-object encoding (the default): ``C3 01`` + 8-byte little-endian CRC-64-AVRO fingerprint of the schema's
  canonical form + the Avro body. Any reader resolves the fingerprint from ``schemas/`` or from the compacted
  schema-catalog topic (``streams.catalog``).
* Confluent wire format (``ESPER_SCHEMA_REGISTRY_URL`` set): ``00`` + 4-byte schema id + body, through
  confluent-kafka's schema-registry serdes. Subjects are ``<topic>-<record full name>`` because one topic carries
  several event types.

Readers decode with their own version of a schema as the reader schema, so an old log is upcast to today's
types (fields added since then take their defaults).
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from typing import Any, Callable, Protocol

from fastavro import schemaless_reader, schemaless_writer

from streams.exceptions import DecodeError, EncodeError
from streams.schemas import NamedSchema, SchemaCatalog

__all__ = ["Decoded", "Serde", "SingleObjectSerde", "ConfluentSerde", "MAGIC", "DEFAULT_MAX_MESSAGE_BYTES", "make_serde"]

MAGIC = b"\xc3\x01"
HEADER_LEN = 10
DEFAULT_MAX_MESSAGE_BYTES = 1_000_000  # below the local broker's message.max.bytes and Kafka's default


@dataclass(frozen=True)
class Decoded:
    """A record read back: its schema and its Avro data (plain dicts, enums as strings)."""

    schema: NamedSchema
    record: dict[str, Any]

    @property
    def name(self) -> str:
        return self.schema.name

    def typed(self):
        """The generated dataclass for this record (``streams.contracts``)."""
        from streams.contracts import TYPES

        cls = TYPES.get(self.schema.name)
        if cls is None:
            raise DecodeError("untyped", f"no Python type for {self.schema.name} (a schema only known from the log)")
        try:
            return cls.from_avro(self.record)
        except Exception as exc:  # noqa: BLE001 - a record that decodes but is not what its type allows
            raise DecodeError("untyped", f"a {self.schema.name} record does not make a {cls.__name__}: "
                                         f"{type(exc).__name__}: {exc}") from None


class Serde(Protocol):
    framing: str
    catalog: SchemaCatalog

    def encode(self, event: Any, topic: str) -> bytes: ...

    def decode(self, data: bytes, topic: str) -> Decoded: ...

    def peek(self, data: bytes, topic: str) -> tuple[str, dict]: ...

    def peek_ids(self, data: bytes, topic: str) -> tuple[str, str, str]: ...

    def decode_typed(self, data: bytes, topic: str) -> Any: ...

    def frame(self, data: bytes) -> tuple[NamedSchema, int, bool]: ...


def _as_record(catalog: SchemaCatalog, event: Any, schema_name: str | None) -> tuple[NamedSchema, dict]:
    if schema_name is not None:
        return catalog.get(schema_name), event
    name = getattr(event, "AVRO_NAME", None)
    if name is None:
        raise EncodeError(f"cannot encode {type(event).__name__}: pass a generated contract type or a schema name")
    return catalog.get(name), event.to_avro()


_UNSEEN = object()


def _direct_type(writer: NamedSchema) -> type | None:
    """The generated type a record of ``writer`` is read into directly: the one generated from that very schema."""
    from streams.contracts import TYPES

    cls = TYPES.get(writer.name)
    return cls if getattr(cls, "AVRO_FINGERPRINT", None) == writer.fingerprint_hex else None


class SingleObjectSerde:
    framing = "single-object"

    def __init__(
        self,
        catalog: SchemaCatalog,
        resolver: Callable[[bytes], NamedSchema | None] | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ):
        self.catalog = catalog
        self.resolver = resolver
        self.max_message_bytes = max_message_bytes
        self._direct: dict[type, bytes] = {}  # generated type -> its header (b"": written through fastavro)
        self._typed: dict[bytes, type | None] = {}  # writer fingerprint -> the type read directly (None: fastavro)

    def encode(self, event: Any, topic: str = "", schema_name: str | None = None) -> bytes:
        if schema_name is None:
            header = self._direct.get(type(event))
            if header is None:
                header = self._direct_header(type(event))
            if header:  # a generated type whose schema is the catalog's: its body written from its attributes
                parts = [header]
                try:
                    event._avro_write(parts.append)
                except Exception:  # noqa: BLE001 - avro_write.Unfit, or a value it cannot write: fastavro decides
                    pass
                else:
                    data = b"".join(parts)
                    if len(data) > self.max_message_bytes:
                        raise EncodeError(f"{type(event).AVRO_NAME} encodes to {len(data)} bytes, over the "
                                          f"{self.max_message_bytes}-byte limit")
                    return data
        schema, record = _as_record(self.catalog, event, schema_name)
        buf = io.BytesIO()
        buf.write(MAGIC + schema.fingerprint)
        try:
            # a generated type's to_avro() has exactly its schema's fields; a plain dict is checked for them
            schemaless_writer(buf, schema.parsed, record, strict=schema_name is not None)
        except Exception as exc:  # fastavro raises ValueError, TypeError, KeyError, AttributeError...
            raise EncodeError(f"record does not conform to {schema.name}: {exc}") from exc
        data = buf.getvalue()
        if len(data) > self.max_message_bytes:
            raise EncodeError(f"{schema.name} encodes to {len(data)} bytes, over the {self.max_message_bytes}-byte limit")
        return data

    def _direct_header(self, cls: type) -> bytes:
        """The single-object header of a generated type written directly, or b"" when it is not (not generated,
        or the catalog's schema of that name is not the one the type was generated from: fastavro writes it)."""
        fingerprint = getattr(cls, "AVRO_FINGERPRINT", None)
        schema = self.catalog.find(getattr(cls, "AVRO_NAME", None) or "") if fingerprint else None
        header = MAGIC + schema.fingerprint if schema is not None and schema.fingerprint_hex == fingerprint else b""
        self._direct[cls] = header
        return header

    def decode(self, data: bytes, topic: str = "") -> Decoded:
        writer = self._writer(data)
        reader = self._reader_for(writer)
        return Decoded(reader or writer, _read_body(data, HEADER_LEN, writer, reader))

    def decode_typed(self, data: bytes, topic: str = "") -> Any:
        """``decode(data, topic).typed()``: the generated event, read straight into its type when the record was
        written with the schema that type was generated from (``streams.avro_read``); otherwise, or for anything
        that reader leaves to fastavro, through ``decode`` (the same event, or the same DecodeError)."""
        writer = self._writer(data)
        cls = self._typed.get(writer.fingerprint, _UNSEEN)
        if cls is _UNSEEN:
            cls = self._typed[writer.fingerprint] = _direct_type(writer) if self._reader_for(writer) is None else None
        if cls is not None:
            try:
                event, end = cls._avro_read(data, HEADER_LEN)
            except Exception:  # noqa: BLE001 - avro_read.Unfit, or bytes it cannot read: fastavro decides
                pass
            else:
                if end == len(data):
                    return event
        return self.decode(data, topic).typed()

    def peek(self, data: bytes, topic: str = "") -> tuple[str, dict]:
        """(schema name, envelope) without decoding the rest of the record: what a fold needs to skip it."""
        return _peek(self, data, topic, self._writer(data), HEADER_LEN)

    def peek_ids(self, data: bytes, topic: str = "") -> tuple[str, str, str]:
        """(schema name, event id, run id): the least of the envelope a fold reads of a record it only counts."""
        return _peek_ids(self, data, topic, self._writer(data), HEADER_LEN)

    def frame(self, data: bytes) -> tuple[NamedSchema, int, bool]:
        """The record's header checked, its body not read: (writer schema, where the body starts, whether the writer
        is this version's own schema, so a reader needs no schema resolution). What the sink's native path needs
        to hand bodies to ClickHouse undecoded. Raises DecodeError as ``decode`` does for a bad header."""
        writer = self._writer(data)
        return writer, HEADER_LEN, self._reader_for(writer) is None

    def _writer(self, data: bytes) -> NamedSchema:
        if data is None or len(data) < HEADER_LEN:
            raise DecodeError("truncated", f"{0 if data is None else len(data)} bytes is shorter than the 10-byte header")
        _check_size(data, self.max_message_bytes)
        if data[:2] != MAGIC:
            raise DecodeError("bad-magic", f"expected single-object marker c301, got {data[:2].hex()}")
        fp = bytes(data[2:HEADER_LEN])
        writer = self.catalog.by_fingerprint(fp)
        if writer is None and self.resolver is not None:
            writer = self.resolver(fp)
        if writer is None:
            raise DecodeError("unknown-fingerprint", f"no schema with fingerprint {fp.hex()} in schemas/ or the catalog")
        return writer

    def _reader_for(self, writer: NamedSchema) -> NamedSchema | None:
        local = self.catalog.find(writer.name)
        return None if local is None or local.fingerprint == writer.fingerprint else local


def _check_size(data: bytes, limit: int) -> None:
    """The limit a publisher enforces, enforced again at read: a record over it was not written by Esper."""
    if len(data) > limit:
        raise DecodeError("too-large", f"a record of {len(data)} bytes, over the {limit}-byte limit")


def _read_body(data: bytes, offset: int, writer: NamedSchema, reader: NamedSchema | None) -> dict:
    buf = io.BytesIO(data)
    buf.seek(offset)
    try:
        record = schemaless_reader(buf, writer.parsed, reader.parsed if reader else None)
    except Exception as exc:
        raise DecodeError("schema-mismatch", f"body does not decode as {writer.name}: {exc}") from exc
    if buf.tell() != len(data):
        raise DecodeError("schema-mismatch", f"{len(data) - buf.tell()} trailing bytes after a {writer.name} record")
    return record


class ConfluentSerde:
    """Confluent wire format through confluent-kafka's schema-registry client and Avro serializer."""

    framing = "confluent"

    def __init__(self, catalog: SchemaCatalog, registry_url: str, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES):
        from confluent_kafka.schema_registry import SchemaRegistryClient

        self.catalog = catalog
        # new_client gives the in-process mock for mock:// URLs (tests) and a REST client otherwise.
        self.client = SchemaRegistryClient.new_client({"url": registry_url})
        self.max_message_bytes = max_message_bytes
        self._serializers: dict[str, Any] = {}
        self._writers: dict[int, NamedSchema] = {}

    def _serializer(self, schema: NamedSchema):
        ser = self._serializers.get(schema.name)
        if ser is None:
            from confluent_kafka.schema_registry import topic_record_subject_name_strategy
            from confluent_kafka.schema_registry.avro import AvroSerializer

            ser = AvroSerializer(
                self.client,
                schema.to_json(),
                conf={"subject.name.strategy": topic_record_subject_name_strategy, "auto.register.schemas": True},
            )
            self._serializers[schema.name] = ser
        return ser

    def encode(self, event: Any, topic: str, schema_name: str | None = None) -> bytes:
        from confluent_kafka.serialization import MessageField, SerializationContext

        schema, record = _as_record(self.catalog, event, schema_name)
        try:
            # Validate against our parsed schema first: the registry serializer's errors are less specific.
            schemaless_writer(io.BytesIO(), schema.parsed, record, strict=True)
            data = self._serializer(schema)(record, SerializationContext(topic, MessageField.VALUE))
        except EncodeError:
            raise
        except Exception as exc:
            raise EncodeError(f"record does not conform to {schema.name}: {exc}") from exc
        if len(data) > self.max_message_bytes:
            raise EncodeError(f"{schema.name} encodes to {len(data)} bytes, over the {self.max_message_bytes}-byte limit")
        return data

    def decode_typed(self, data: bytes, topic: str = "") -> Any:
        """``decode(data, topic).typed()``."""
        return self.decode(data, topic).typed()

    def decode(self, data: bytes, topic: str = "") -> Decoded:
        writer = self._writer(data)
        local = self.catalog.find(writer.name)
        reader = None if local is None or local.fingerprint == writer.fingerprint else local
        return Decoded(reader or writer, _read_body(data, 5, writer, reader))

    def peek(self, data: bytes, topic: str = "") -> tuple[str, dict]:
        """(schema name, envelope) without decoding the rest of the record: what a fold needs to skip it."""
        return _peek(self, data, topic, self._writer(data), 5)

    def peek_ids(self, data: bytes, topic: str = "") -> tuple[str, str, str]:
        """See ``SingleObjectSerde.peek_ids``."""
        return _peek_ids(self, data, topic, self._writer(data), 5)

    def frame(self, data: bytes) -> tuple[NamedSchema, int, bool]:
        """See ``SingleObjectSerde.frame``."""
        writer = self._writer(data)
        local = self.catalog.find(writer.name)
        return writer, 5, local is not None and local.fingerprint == writer.fingerprint

    def _writer(self, data: bytes) -> NamedSchema:
        if data is None or len(data) < 5:
            raise DecodeError("truncated", "shorter than the 5-byte Confluent header")
        _check_size(data, self.max_message_bytes)
        if data[0] != 0:
            raise DecodeError("bad-magic", f"expected Confluent magic byte 00, got {data[:1].hex()}")
        schema_id = int.from_bytes(data[1:5], "big")
        writer = self._writers.get(schema_id)
        if writer is None:
            try:
                registered = self.client.get_schema(schema_id)
            except Exception as exc:
                raise DecodeError("unknown-fingerprint", f"schema id {schema_id} not in the registry: {exc}") from exc
            doc = json.loads(registered.schema_str)
            writer = NamedSchema(doc["name"] if "." in doc["name"] else f"{doc.get('namespace')}.{doc['name']}", doc, None)
            self._writers[schema_id] = writer
        return writer


_ENVELOPE_FIELDS = ("event_id", "occurred_at", "run_id", "originator_id", "originator_version", "producer")


# id(parsed writer schema) -> (the schema, whether it starts with Esper's envelope); holding the schema keeps its id
# from being reused by another object
_STANDARD_ENVELOPE: dict[int, tuple[dict, bool]] = {}


def _has_envelope(writer: NamedSchema) -> bool:
    known = _STANDARD_ENVELOPE.get(id(writer.parsed))
    if known is None:
        fields = writer.parsed.get("fields") or [{}]
        envelope = fields[0].get("type") if fields[0].get("name") == "envelope" else None
        names = tuple(f["name"] for f in envelope.get("fields", ())) if isinstance(envelope, dict) else ()
        known = _STANDARD_ENVELOPE[id(writer.parsed)] = (writer.parsed, names == _ENVELOPE_FIELDS)
    return known[1]


def _peek(serde, data: bytes, topic: str, writer: NamedSchema, offset: int) -> tuple[str, dict]:
    """Read only the envelope, when the writer's schema starts with Esper's envelope (every event does); otherwise
    decode the whole record. Runs for every record a fold skips: a one-byte varint (every id and name under 64
    characters) is read inline, a longer one by ``_varint``."""
    if not _has_envelope(writer):
        return writer.name, serde.decode(data, topic).record["envelope"]
    try:
        event_id, pos = _string(data, offset)
        occurred_at, pos = _long(data, pos)
        run_id, pos = _string(data, pos)
        originator_id, pos = _string(data, pos)
        version, pos = _long(data, pos)
        producer, pos = _string(data, pos)
    except (IndexError, UnicodeDecodeError) as exc:
        raise DecodeError("schema-mismatch", f"the envelope of a {writer.name} does not decode: {exc}") from None
    return writer.name, {"event_id": event_id, "occurred_at_ms": occurred_at, "run_id": run_id,
                         "originator_id": originator_id, "originator_version": version, "producer": producer}


def _peek_ids(serde, data: bytes, topic: str, writer: NamedSchema, offset: int) -> tuple[str, str, str]:
    """``_peek``'s first three fields only (event id, the time skipped, run id), as a tuple: a third of its
    work, for the three records in four a run's fold only counts."""
    if not _has_envelope(writer):
        envelope = serde.decode(data, topic).record["envelope"]
        return writer.name, envelope["event_id"], envelope["run_id"]
    try:
        event_id, pos = _string(data, offset)
        _, pos = _long(data, pos)
        run_id, _ = _string(data, pos)
    except (IndexError, UnicodeDecodeError) as exc:
        raise DecodeError("schema-mismatch", f"the envelope of a {writer.name} does not decode: {exc}") from None
    return writer.name, event_id, run_id


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    """A zig-zag varint at ``pos``: (value, position after it). An Avro long is at most 10 bytes: a longer run is
    garbage, refused in O(1)."""
    b = data[pos]
    n, shift = b & 0x7F, 7
    pos += 1
    while b & 0x80:
        if shift >= 70:
            raise IndexError("a varint longer than 10 bytes")
        b = data[pos]
        n |= (b & 0x7F) << shift
        shift += 7
        pos += 1
    return (n >> 1) ^ -(n & 1), pos


def _long(data: bytes, pos: int) -> tuple[int, int]:
    b = data[pos]
    if b < 0x80:
        return (b >> 1) ^ -(b & 1), pos + 1
    return _varint(data, pos)


def _string(data: bytes, pos: int) -> tuple[str, int]:
    b = data[pos]
    if b < 0x80:
        n, pos = (b >> 1) ^ -(b & 1), pos + 1
    else:
        n, pos = _varint(data, pos)
    if n < 0 or pos + n > len(data):
        raise IndexError("string runs past the record")
    return data[pos:pos + n].decode(), pos + n


def make_serde(catalog: SchemaCatalog, registry_url: str | None = None, resolver=None) -> Serde:
    if registry_url:
        return ConfluentSerde(catalog, registry_url)
    return SingleObjectSerde(catalog, resolver=resolver)
