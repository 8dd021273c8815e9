"""Sample records for every schema, derived from the schema itself: used by the contract tests and benches, so a
new event type is exercised the moment its ``.avsc`` file exists."""

from __future__ import annotations

import random
from datetime import datetime, timezone
from typing import Any

from streams.schemas import NamedSchema

__all__ = ["sample_record", "sample_event"]


def sample_record(schema: NamedSchema, seed: int = 0, storable: bool = False) -> dict[str, Any]:
    """A valid Avro record (plain data) for ``schema``; different seeds give different values. ``storable``: the
    integers as an event from a run has them (counts, ids, epochs: 0 .. 2**31-1), so every value fits the analytics
    tables' columns; otherwise ints range over negatives too and longs up to 2**40."""
    rng = random.Random(seed)
    return _value(schema.schema, rng, {}, storable)


def sample_event(schema: NamedSchema, seed: int = 0, storable: bool = False):
    """The generated contract object for ``schema`` filled with sample data (``sample_record``)."""
    from streams.contracts import TYPES

    return TYPES[schema.name].from_avro(sample_record(schema, seed, storable))


def _value(t: Any, rng: random.Random, named: dict[str, Any], storable: bool = False) -> Any:
    if isinstance(t, str):
        if t in named:
            return _value(named[t], rng, named, storable)
        return {
            "null": lambda: None,
            "boolean": lambda: rng.random() < 0.5,
            "int": lambda: rng.randint(0 if storable else -1000, 1000),
            "long": lambda: rng.randint(0, 2**31 - 1 if storable else 2**40),
            "float": lambda: float(rng.randint(-100, 100)) / 4,  # exactly representable in float32
            "double": lambda: rng.uniform(-1e6, 1e6),
            "bytes": lambda: rng.randbytes(8),
            "string": lambda: "s-" + rng.randbytes(6).hex(),
        }[t]()
    if isinstance(t, list):
        return _value(rng.choice(t), rng, named, storable)
    kind = t["type"]
    if kind == "record":
        named[t["name"]] = t
        return {f["name"]: _value(f["type"], rng, named, storable) for f in t["fields"]}
    if kind == "enum":
        named[t["name"]] = t
        return rng.choice(t["symbols"])
    if kind == "array":
        return [_value(t["items"], rng, named, storable) for _ in range(rng.randint(0, 3))]
    if kind == "map":
        return {f"k{i}": _value(t["values"], rng, named, storable) for i in range(rng.randint(0, 3))}
    if kind == "long" and t.get("logicalType") == "timestamp-millis":
        return datetime.fromtimestamp(rng.randint(1_700_000_000_000, 1_900_000_000_000) / 1000, timezone.utc)
    if kind == "fixed":
        named[t["name"]] = t
        return rng.randbytes(t["size"])
    return _value(kind, rng, named, storable)
