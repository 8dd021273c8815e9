"""Hypothesis strategies for any Avro schema of the catalog: every value the schema admits, extremes included
(NaN and infinities, the widest ints, empty and odd strings), so the folds are tried on records that are valid on the
wire yet hostile in content. ``fields`` pins chosen fields (by name, at any depth) to narrower strategies, so a test
can make records collide (same run, same seed, same event id) often enough to matter."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from hypothesis import strategies as st

from streams.schemas import NamedSchema

_TEXT = st.text(max_size=12) | st.sampled_from(["", "{", "[" * 40, "nan", "\x00", "seed/1/2", "é" * 3])
_PRIMITIVES = {
    "null": st.none(),
    "boolean": st.booleans(),
    "int": st.integers(-2**31, 2**31 - 1),
    "long": st.integers(-2**63, 2**63 - 1),
    "float": st.floats(width=32),
    "double": st.floats(),
    "bytes": st.binary(max_size=16),
    "string": _TEXT,
}
_TIMESTAMPS = st.datetimes(min_value=datetime(1970, 1, 2), max_value=datetime(2200, 1, 1),
                           timezones=st.just(timezone.utc))


def record_strategy(schema: NamedSchema, fields: dict[str, st.SearchStrategy] | None = None) -> st.SearchStrategy:
    return _strategy(schema.schema, {}, fields or {})


def event_strategy(schema: NamedSchema, fields: dict[str, st.SearchStrategy] | None = None) -> st.SearchStrategy:
    """The generated contract object for records of ``schema``."""
    from streams.contracts import TYPES

    return record_strategy(schema, fields).map(TYPES[schema.name].from_avro)


def _strategy(t: Any, named: dict[str, Any], fields: dict[str, st.SearchStrategy]) -> st.SearchStrategy:
    if isinstance(t, str):
        if t in _PRIMITIVES:
            return _PRIMITIVES[t]
        return st.deferred(lambda: _strategy(named[t], named, fields))
    if isinstance(t, list):
        return st.one_of([_strategy(branch, named, fields) for branch in t])
    kind = t["type"]
    if kind == "record":
        named[t["name"]] = t
        return st.fixed_dictionaries({f["name"]: fields[f["name"]] if f["name"] in fields else _strategy(f["type"], named, fields)
                                      for f in t["fields"]})
    if kind == "enum":
        named[t["name"]] = t
        return st.sampled_from(t["symbols"])
    if kind == "array":
        return st.lists(_strategy(t["items"], named, fields), max_size=3)
    if kind == "map":
        return st.dictionaries(_TEXT, _strategy(t["values"], named, fields), max_size=3)
    if kind == "long" and t.get("logicalType") == "timestamp-millis":
        return _TIMESTAMPS
    if kind == "fixed":
        named[t["name"]] = t
        return st.binary(min_size=t["size"], max_size=t["size"])
    return _strategy(kind, named, fields)
