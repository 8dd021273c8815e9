"""Avro binary encoding for the generated types (``streams.contracts``), written straight from their attributes.

Each generated record has an ``_avro_write(w)`` method (``streams.codegen``) that hands ``w`` the bytes of its
fields in schema order, built with the functions here. It writes what fastavro's ``schemaless_writer`` writes for
the same record, bit for bit, but only for values of exactly the Python types the class declares (an ``int`` that
is not a ``bool``, a ``str``, a ``float``, an aware ``datetime``, a ``list``, a ``dict``, the declared enum or record
class); anything else raises ``Unfit`` and the serde writes the record through fastavro instead, which encodes it or
says what is wrong with it, as it always has. ``tests/contract/test_fast_write.py`` holds every event schema to
fastavro's bytes.

Why: the generic writer walks the schema for every record, and the typed event first becomes a dict; for Esper's
small events that was most of publishing's cost (``esper bench events``: ``encode_over_fastavro``).
"""

from __future__ import annotations

import struct
from datetime import datetime, timezone

from streams.exceptions import Unfit

__all__ = ["Unfit", "long_", "int_", "string", "bytes_", "double", "float_", "boolean", "timestamp_millis",
           "zigzag"]


def zigzag(n: int) -> bytes:
    """A 64-bit signed integer as Avro writes it: zigzag, then a little-endian base-128 varint."""
    z = (n << 1) ^ (n >> 63)
    out = bytearray()
    while z >= 0x80:
        out.append((z & 0x7F) | 0x80)
        z >>= 7
    out.append(z)
    return bytes(out)


_SMALL = 8192
_SMALL_CODES = tuple(zigzag(n) for n in range(-_SMALL, _SMALL))  # one or two bytes: most of Esper's integers
_INT64 = (-(1 << 63), 1 << 63)
_INT32 = (-(1 << 31), 1 << 31)
_pack_double = struct.Struct("<d").pack
_pack_float = struct.Struct("<f").pack
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def long_(n) -> bytes:
    if type(n) is not int:
        raise Unfit
    if -_SMALL <= n < _SMALL:
        return _SMALL_CODES[n + _SMALL]
    if not _INT64[0] <= n < _INT64[1]:
        raise Unfit
    return zigzag(n)


def int_(n) -> bytes:
    if type(n) is not int:
        raise Unfit
    if -_SMALL <= n < _SMALL:
        return _SMALL_CODES[n + _SMALL]
    if not _INT32[0] <= n < _INT32[1]:
        raise Unfit
    return zigzag(n)


def string(s) -> bytes:
    if type(s) is not str:
        raise Unfit
    b = s.encode()  # a lone surrogate raises UnicodeEncodeError: fastavro then says so
    n = len(b)
    return (_SMALL_CODES[n + _SMALL] if n < _SMALL else zigzag(n)) + b


def bytes_(b) -> bytes:
    if type(b) is not bytes:
        raise Unfit
    n = len(b)
    return (_SMALL_CODES[n + _SMALL] if n < _SMALL else zigzag(n)) + b


def double(x) -> bytes:
    if type(x) is not float:
        raise Unfit
    return _pack_double(x)


def float_(x) -> bytes:
    if type(x) is not float:
        raise Unfit
    return _pack_float(x)  # out of float32's range raises OverflowError: fastavro then writes it


def boolean(b) -> bytes:
    if b is True:
        return b"\x01"
    if b is False:
        return b"\x00"
    raise Unfit


def timestamp_millis(dt) -> bytes:
    """An aware datetime as fastavro writes ``timestamp-millis`` (a naive one depends on the local zone there)."""
    if type(dt) is not datetime or dt.tzinfo is None:
        raise Unfit
    delta = dt - _EPOCH
    return long_((delta.days * 86400 + delta.seconds) * 1000 + delta.microseconds // 1000)
