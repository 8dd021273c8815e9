"""Errors raised by Esper's Kafka plumbing. Every Esper error derives from :class:`EsperError`."""

from __future__ import annotations

__all__ = [
    "EsperError",
    "ConfigError",
    "SchemaError",
    "SchemaNotFound",
    "EncodeError",
    "DecodeError",
    "TopicError",
    "PublishError",
    "StateLayoutError",
    "Unfit",
]


class EsperError(Exception):
    """Root of every error Esper raises on purpose. ``exit_code`` is what the CLI exits with when one reaches it
    (``esper_runtime.cli.main.main`` prints the message, never a stack): 1 for a failure, 2 for input the user can fix,
    4 for a run that grew nothing; a subclass sets its own."""

    exit_code = 1


class ConfigError(EsperError):
    """A setting is missing or invalid (the one configuration error: every package raises this)."""

    exit_code = 2


class SchemaError(EsperError):
    """An ``.avsc`` file is invalid, or two files disagree."""


class SchemaNotFound(SchemaError):
    """No schema is known under the given name or fingerprint."""


class EncodeError(EsperError):
    """A record does not conform to its schema, or is too large to send."""


class DecodeError(EsperError):
    """Bytes read from a topic could not be turned back into a record.

    ``reason`` is a short machine-readable code (it becomes the dead-letter header ``esper.dlq.reason``):
    ``bad-magic``, ``truncated``, ``too-large``, ``unknown-fingerprint``, ``schema-mismatch``, ``registry-error``,
    ``untyped`` (it decodes, but as nothing this version of Esper has a type for).
    """

    def __init__(self, reason: str, message: str):
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.detail = message


class TopicError(EsperError):
    """A topic is unknown to the registry, or exists on the broker with the wrong shape."""


class PublishError(EsperError):
    """The broker did not accept a record."""


class StateLayoutError(EsperError):
    """A state topic was written with another partition layout than the one its reader needs (``esper processors
    --rebuild`` folds it again)."""

    exit_code = 2


class Unfit(EsperError):
    """A value or record the direct Avro writer or reader (``streams.avro_write``, ``streams.avro_read``) leaves to
    fastavro. Internal: the serde catches it and goes through fastavro, so it never reaches a caller."""
