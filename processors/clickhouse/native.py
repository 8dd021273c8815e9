"""The sink's native path: a batch of records of one writer schema, their bodies undecoded, becomes one Avro object
container, and ClickHouse decodes and maps it itself.

An object container is a header (the writer schema's JSON, codec ``null``, a 16-byte sync marker) followed by
blocks of (record count, byte count, bodies, sync marker); a record on the log is a header (``Serde.frame``) and the
Avro body. So a batch needs no decode in Python: its bodies are joined behind one header, and the row mapping of
``sink.rows_for_record`` is written as SQL over ClickHouse's ``Avro`` input format (timestamp-millis becomes
DateTime64(3), enums Enum8, records Tuples, arrays Arrays, ``["null", T]`` Nullable(T)).

The SQL also holds the checks a decode in Python makes and ClickHouse's reader does not: every string is valid
UTF-8 (``throwIf`` before the rows are made, so a record that makes no rows is checked too). A body that is cut
short, too long, or holds an enum index out of range fails ClickHouse's own reading (the block's byte count and sync
marker must match). Any failure makes the caller fall back to decoding the batch record by record, so a bad record
ends on the dead-letter topic with the reason a decode gives, exactly as without this path
(``tests/contract/test_native_sink.py`` holds both paths to the same rows and the same dead letters).

Only event types with an entry in ``NATIVE`` and written with this version's schema go this way; the rest are
decoded in Python (schema resolution stays fastavro's).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from streams.schemas import NamedSchema

__all__ = ["NativeMapping", "NATIVE", "object_container", "native_insert_sql"]

MAGIC = b"Obj\x01"


def _long(n: int) -> bytes:
    """An Avro long: zig-zag, then a little-endian base-128 varint."""
    n = (n << 1) ^ (n >> 63)
    out = bytearray()
    while n & ~0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _bytes(b: bytes) -> bytes:
    return _long(len(b)) + b


def object_container(schema_json: bytes, bodies: list[bytes], sync: bytes | None = None) -> bytes:
    """One Avro object container (codec null, one block) of ``bodies``, each an Avro body written with the schema
    ``schema_json``."""
    sync = sync or os.urandom(16)
    meta = _long(2) + _bytes(b"avro.schema") + _bytes(schema_json) + _bytes(b"avro.codec") + _bytes(b"null") + _long(0)
    body = b"".join(bodies)
    return MAGIC + meta + sync + _long(len(bodies)) + _long(len(body)) + body + sync


@dataclass(frozen=True)
class NativeMapping:
    """``rows_for_record`` for one event type as SQL: the table, its columns in the INSERT's order, and a SELECT
    giving them from ``{source}`` (the container as a table: ``file(path, 'Avro')``; a record's fields are its
    columns)."""

    table: str
    columns: tuple[str, ...]
    select: str


NATIVE = {
    "esper.kasmina.SeedTelemetry": NativeMapping(
        "seed_telemetry",
        ("run_id", "epoch", "occurred_at", "event_id", "layer_id", "layer_name", "seed_id", "state", "alpha",
         "chunk_variance", "dead_node_ratio", "avg_correlation", "exec_latency_us", "is_ready", "kernel_artifact_id",
         "growth_signal", "growth_from_model"),
        "SELECT envelope.run_id, epoch, envelope.occurred_at, envelope.event_id, layer_id, layer_name, s.seed_id, "
        "toString(s.state), s.alpha, s.chunk_variance, s.dead_node_ratio, s.avg_correlation, s.exec_latency_us, "
        "toUInt8(s.is_ready_for_transition), ifNull(s.kernel_artifact_id, ''), s.growth_signal, "
        "toUInt8(s.growth_from_model) FROM {source} ARRAY JOIN seeds AS s"),
}


def _utf8_checks(t, expr: str, named: dict, depth: int = 0) -> list[str] | None:  # noqa: C901 - one case per type
    """ClickHouse conditions that hold when every string under ``expr`` (of Avro type ``t``) is valid UTF-8; None
    for a type this path does not take (maps, unions other than ``["null", T]``, a nullable record)."""
    if isinstance(t, str):
        if t == "string":
            return [f"isValidUTF8({expr})"]
        if t in named:
            return _utf8_checks(named[t], expr, named, depth)
        return [] if t in ("null", "boolean", "int", "long", "float", "double", "bytes") else None
    if isinstance(t, list):
        others = [x for x in t if x != "null"]
        if len(others) != 1 or len(t) != 2:
            return None
        inner = others[0]
        inner = named.get(inner, inner) if isinstance(inner, str) else inner
        if isinstance(inner, dict) and inner.get("type") not in ("enum", "fixed") and "logicalType" not in inner:
            return None  # a nullable record or array: no Nullable(Tuple) in ClickHouse
        return _utf8_checks(inner, f"assumeNotNull({expr})", named, depth)
    kind = t.get("type")
    if "name" in t and kind in ("record", "enum", "fixed"):
        named[t["name"] if "." in t["name"] else f"{t.get('namespace', '')}.{t['name']}".lstrip(".")] = t
        named[t["name"]] = t
    if kind == "record":
        out: list[str] = []
        for f in t["fields"]:
            sub = _utf8_checks(f["type"], f"tupleElement({expr}, '{f['name']}')", named, depth)
            if sub is None:
                return None
            out += sub
        return out
    if kind == "array":
        sub = _utf8_checks(t["items"], f"x{depth}", named, depth + 1)
        if sub is None:
            return None
        return [f"arrayAll(x{depth} -> {' AND '.join(sub)}, {expr})"] if sub else []
    if kind in ("enum", "fixed"):
        return []
    if kind in ("int", "long", "float", "double", "boolean", "bytes", "string"):
        return _utf8_checks(kind, expr, named, depth)
    return None


_PARTS: dict[bytes, tuple[bytes, str] | None] = {}


def _schema_parts(writer: NamedSchema) -> tuple[bytes, str] | None:
    """(the schema JSON a container's header carries, the UTF-8 condition over a record's columns), per writer."""
    if writer.fingerprint not in _PARTS:
        named: dict = {}
        checks: list[str] | None = []
        for f in writer.schema.get("fields", ()):
            sub = _utf8_checks(f["type"], f["name"], named)
            if sub is None:
                checks = None
                break
            checks += sub
        _PARTS[writer.fingerprint] = None if checks is None else \
            (json.dumps(writer.schema).encode(), " AND ".join(checks) or "1")
    return _PARTS[writer.fingerprint]


def native_insert_sql(writer: NamedSchema, path: str, table: str | None = None) -> tuple[str, bytes] | None:
    """(the INSERT for a container of ``writer``'s records at ``path``, the schema JSON its header carries), or None
    when this event type has no native mapping or a schema this path cannot check. ``table``: another table with
    the mapping's columns (a scratch copy) instead of the mapping's own."""
    mapping = NATIVE.get(writer.name)
    parts = _schema_parts(writer) if mapping is not None else None
    if parts is None:
        return None
    schema_json, valid = parts
    quoted = path.replace("\\", "\\\\").replace("'", "\\'")
    # the records checked whole (a subquery, so records that make no rows are checked too), then mapped
    source = (f"(SELECT * FROM file('{quoted}', 'Avro') "
              f"WHERE throwIf(NOT ({valid}), 'a string in a {writer.name} record is not valid UTF-8') = 0)")
    return (f"INSERT INTO esper.{table or mapping.table} ({', '.join(mapping.columns)}) "
            + mapping.select.format(source=source)), schema_json
