"""The schema catalog: every ``.avsc`` under ``schemas/``, expanded, parsed and fingerprinted.

Each file holds one named type. A field may refer to a type of another file by its full name; the catalog
expands such references in place, so every event schema stands alone. That standalone form is what is
fingerprinted (CRC-64-AVRO of the Parsing Canonical Form), published to the schema-catalog topic and
registered with a schema registry: a consumer needs nothing but the fingerprint's schema to decode a record.

An *event* is a record whose first field is ``envelope`` (type ``esper.common.Envelope``).
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from fastavro import parse_schema
from fastavro.schema import to_parsing_canonical_form

from streams.config import schemas_dir
from streams.exceptions import SchemaError, SchemaNotFound

__all__ = ["NamedSchema", "SchemaCatalog", "crc64_avro", "ENVELOPE"]

ENVELOPE = "esper.common.Envelope"
_PRIMITIVES = {"null", "boolean", "int", "long", "float", "double", "bytes", "string"}


def _crc64_table() -> list[int]:
    empty = 0xC15D213AA4D7A795
    table = []
    for i in range(256):
        fp = i
        for _ in range(8):
            fp = (fp >> 1) ^ (empty & -(fp & 1))
        table.append(fp)
    return table


_TABLE = _crc64_table()


def crc64_avro(data: bytes) -> int:
    """The Rabin fingerprint the Avro specification names CRC-64-AVRO."""
    fp = 0xC15D213AA4D7A795
    for byte in data:
        fp = (fp >> 8) ^ _TABLE[(fp ^ byte) & 0xFF]
    return fp


@dataclass(frozen=True)
class NamedSchema:
    """One named Avro type, in its standalone (expanded) form."""

    name: str  # full name, e.g. esper.kasmina.SeedLifecycleTransition
    schema: dict[str, Any]  # expanded JSON form (docs and defaults kept)
    source: Path | None

    @cached_property
    def parsed(self) -> dict[str, Any]:
        """fastavro's parsed form, marked as parsed: fastavro's readers and writers take it as it is. Without the
        mark (``_write_hint``) they parse the schema again on every record — two thirds of an encode's time."""
        return parse_schema(copy.deepcopy(self.schema))

    @cached_property
    def canonical(self) -> str:
        return to_parsing_canonical_form(parse_schema(copy.deepcopy(self.schema), _write_hint=False))

    @cached_property
    def fingerprint(self) -> bytes:
        """8 bytes, little-endian, as single-object encoding puts them on the wire."""
        return crc64_avro(self.canonical.encode()).to_bytes(8, "little")

    @property
    def fingerprint_hex(self) -> str:
        return self.fingerprint.hex()

    @property
    def is_event(self) -> bool:
        fields = self.schema.get("fields") if self.schema.get("type") == "record" else None
        return bool(fields) and fields[0]["name"] == "envelope" and _type_name(fields[0]["type"]) == ENVELOPE

    @property
    def short_name(self) -> str:
        return self.name.rsplit(".", 1)[-1]

    def to_json(self) -> str:
        return json.dumps(self.schema, sort_keys=True)


class SchemaCatalog:
    """All schemas known to this process, by full name and by fingerprint."""

    def __init__(self, schemas: dict[str, NamedSchema]):
        self._by_name = dict(schemas)
        self._by_fp = {s.fingerprint: s for s in schemas.values()}
        self._by_short: dict[str, NamedSchema | None] = {}
        for s in schemas.values():
            self._by_short[s.short_name] = None if s.short_name in self._by_short else s

    @classmethod
    def load(cls, root: Path | None = None) -> "SchemaCatalog":
        """Read every ``.avsc`` under ``root`` (default: the project's ``schemas/``)."""
        root = root or schemas_dir()
        raw: dict[str, tuple[dict, Path]] = {}
        for path in sorted(root.rglob("*.avsc")):
            try:
                doc = json.loads(path.read_text())
            except json.JSONDecodeError as exc:
                raise SchemaError(f"{path}: not valid JSON: {exc}") from exc
            if not isinstance(doc, dict) or "name" not in doc:
                raise SchemaError(f"{path}: must hold exactly one named type (record, enum or fixed)")
            full = _full_name(doc["name"], doc.get("namespace"))
            if full in raw:
                raise SchemaError(f"{path}: {full} is already defined in {raw[full][1]}")
            if path.stem != full.rsplit(".", 1)[-1]:
                raise SchemaError(f"{path}: file name must be the type's name ({full.rsplit('.', 1)[-1]}.avsc)")
            raw[full] = (doc, path)
        if not raw:
            raise SchemaError(f"no .avsc files under {root}")
        out = {}
        for full, (doc, path) in raw.items():
            expanded = _expand(doc, raw, namespace=None, defined=set(), trail=(full,))
            named = NamedSchema(full, expanded, path)
            try:
                named.parsed  # noqa: B018 - parse now so a broken file fails at load, naming the file
            except Exception as exc:  # fastavro raises several types
                raise SchemaError(f"{path}: {exc}") from exc
            out[full] = named
        return cls(out)

    # ---------------------------------------------------------------- lookups
    def __iter__(self):
        return iter(self._by_name.values())

    def __len__(self) -> int:
        return len(self._by_name)

    def __contains__(self, name: str) -> bool:
        return name in self._by_name

    def get(self, name: str) -> NamedSchema:
        """By full name (``esper.kasmina.SeedTelemetry``) or unambiguous short name (``SeedTelemetry``)."""
        found = self._by_name.get(name) or self._by_short.get(name)
        if found is None:
            raise SchemaNotFound(f"no schema named {name!r}")
        return found

    def find(self, name: str) -> NamedSchema | None:
        """By full name, or None."""
        return self._by_name.get(name)

    def by_fingerprint(self, fp: bytes) -> NamedSchema | None:
        return self._by_fp.get(fp)

    def add(self, schema: NamedSchema) -> None:
        """Learn a schema seen elsewhere (e.g. read from the schema-catalog topic)."""
        self._by_fp.setdefault(schema.fingerprint, schema)
        self._by_name.setdefault(schema.name, schema)

    @property
    def events(self) -> list[NamedSchema]:
        return [s for s in self._by_name.values() if s.is_event]


def _full_name(name: str, namespace: str | None) -> str:
    if "." in name or not namespace:
        return name
    return f"{namespace}.{name}"


def _type_name(t: Any) -> str | None:
    return t if isinstance(t, str) else (t.get("name") if isinstance(t, dict) else None)


def _expand(node: Any, raw: dict, namespace: str | None, defined: set[str], trail: tuple[str, ...]) -> Any:
    """Inline references to other files' types. The first use of a name is inlined; later uses stay names."""
    if isinstance(node, str):
        if node in _PRIMITIVES:
            return node
        full = _full_name(node, namespace) if _full_name(node, namespace) in raw else node
        if full in defined:
            return full
        if full not in raw:
            raise SchemaError(f"{trail[0]}: unknown type {node!r}")
        if full in trail[1:]:
            raise SchemaError(f"{trail[0]}: recursive reference to {full}")
        return _expand(raw[full][0], raw, namespace, defined, trail + (full,))
    if isinstance(node, list):
        return [_expand(t, raw, namespace, defined, trail) for t in node]
    if not isinstance(node, dict):
        raise SchemaError(f"{trail[0]}: unexpected schema node {node!r}")
    kind = node.get("type")
    if kind in ("record", "error", "enum", "fixed"):
        full = _full_name(node["name"], node.get("namespace", namespace))
        defined.add(full)
        out = dict(node)
        out["name"] = full
        out.pop("namespace", None)
        if kind in ("record", "error"):
            ns = full.rsplit(".", 1)[0] if "." in full else None
            out["fields"] = [
                {**fld, "type": _expand(fld["type"], raw, ns, defined, trail)} for fld in node.get("fields", [])
            ]
        return out
    if kind == "array":
        return {**node, "items": _expand(node["items"], raw, namespace, defined, trail)}
    if kind == "map":
        return {**node, "values": _expand(node["values"], raw, namespace, defined, trail)}
    if isinstance(kind, (dict, list)) or kind in _PRIMITIVES:
        return {**node, "type": _expand(kind, raw, namespace, defined, trail)} if not isinstance(kind, str) else node
    return _expand(kind, raw, namespace, defined, trail)
