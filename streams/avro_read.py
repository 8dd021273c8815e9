"""Avro binary decoding straight into the generated types (``streams.contracts``), the reverse of ``avro_write``.

Each generated record has ``_avro_read(b, p) -> (record, end)`` (``streams.codegen``), which reads its fields in
schema order from ``b`` at ``p`` with the functions here. It is used only for a record whose writer schema is the
very schema the class was generated from (``SingleObjectSerde.decode_typed``), and it reads only what it is sure
of: anything unusual — a varint of ten bytes, a negative length or block count, a boolean that is not 0 or 1, a
record cut short or followed by more bytes, text that is not UTF-8 — raises, and the serde decodes the record
through fastavro instead, which gives the same event or the same ``DecodeError`` as before.
``tests/unit/streams/test_avro_read.py`` holds it to fastavro on every record type, valid and damaged.
"""

from __future__ import annotations

import struct
from datetime import datetime, timedelta, timezone

from streams.exceptions import Unfit

__all__ = ["Unfit", "long_", "string", "bytes_", "double", "float_", "boolean", "timestamp_millis", "enum",
           "count"]

_unpack_double = struct.Struct("<d").unpack_from
_unpack_float = struct.Struct("<f").unpack_from
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def long_(b: bytes, p: int) -> tuple[int, int]:
    """A zigzag varint of a 64-bit integer (ten bytes at most, the tenth 0 or 1; anything longer or wider is left
    to fastavro)."""
    c = b[p]
    if c < 0x80:
        return (c >> 1) ^ -(c & 1), p + 1
    z, shift = c & 0x7F, 7
    while True:
        p += 1
        c = b[p]
        if shift == 63 and c > 1:
            raise Unfit
        z |= (c & 0x7F) << shift
        if c < 0x80:
            return (z >> 1) ^ -(z & 1), p + 1
        shift += 7


def _size(b: bytes, p: int) -> tuple[int, int]:
    n, p = long_(b, p)
    if n < 0 or p + n > len(b):
        raise Unfit
    return n, p


def string(b: bytes, p: int) -> tuple[str, int]:
    n, p = _size(b, p)
    return b[p:p + n].decode(), p + n  # not UTF-8 raises: fastavro then says so


def bytes_(b: bytes, p: int) -> tuple[bytes, int]:
    n, p = _size(b, p)
    return b[p:p + n], p + n


def double(b: bytes, p: int) -> tuple[float, int]:
    return _unpack_double(b, p)[0], p + 8


def float_(b: bytes, p: int) -> tuple[float, int]:
    return _unpack_float(b, p)[0], p + 4


def boolean(b: bytes, p: int) -> tuple[bool, int]:
    c = b[p]
    if c > 1:
        raise Unfit
    return c == 1, p + 1


def timestamp_millis(b: bytes, p: int) -> tuple[datetime, int]:
    n, p = long_(b, p)
    return _EPOCH + timedelta(0, 0, 0, n), p  # n milliseconds, exactly fastavro's epoch + timedelta(microseconds=n * 1000)


def enum(b: bytes, p: int, symbols: tuple) -> tuple[object, int]:
    i, p = long_(b, p)
    if i < 0:
        raise Unfit
    return symbols[i], p


def count(b: bytes, p: int) -> tuple[int, int]:
    """An array's or map's block count: a positive count, or 0 at the end. A negative count (a block that gives its
    byte size) is left to fastavro, as is a count larger than the bytes left (every item here takes a byte)."""
    n, p = long_(b, p)
    if n < 0 or n > len(b) - p:
        raise Unfit
    return n, p
