"""The schema-catalog topic: every schema Esper writes, keyed by fingerprint, so any consumer can decode any record.

Values are UTF-8 JSON ``{"name", "fingerprint", "schema"}`` (the schema in its standalone JSON form); the topic is
compacted, so it keeps exactly one entry per fingerprint forever. A reader that meets a fingerprint missing from
its own ``schemas/`` (an older or newer writer) refreshes its view of this topic once and resolves it there.
"""

from __future__ import annotations

import json
import threading
import time

from streams.publisher import Publisher
from streams.replay import LogSource, ReplayReader
from streams.schemas import NamedSchema, SchemaCatalog

__all__ = ["publish_catalog", "CatalogResolver", "catalog_entry"]


def catalog_entry(schema: NamedSchema) -> bytes:
    return json.dumps({"name": schema.name, "fingerprint": schema.fingerprint_hex, "schema": schema.schema},
                      sort_keys=True).encode()


def publish_catalog(publisher: Publisher, catalog: SchemaCatalog) -> int:
    """Publish every event schema of ``catalog``, and the schema of every state topic's values, to the
    schema-catalog topic (idempotent thanks to compaction)."""
    n = 0
    states = [catalog.get(spec.value_schema) for spec in publisher.registry if spec.value_schema]
    for schema in [*catalog.events, *states]:
        publisher.publish_raw(publisher.registry.schema_catalog, catalog_entry(schema), schema.fingerprint_hex,
                              [("content-type", b"application/json")])
        n += 1
    publisher.flush()
    return n


class CatalogResolver:
    """Resolves fingerprints from the schema-catalog topic. Use as ``SingleObjectSerde(resolver=...)``."""

    def __init__(self, source: LogSource, topic: str, min_refresh_s: float = 1.0):
        self.source = source
        self.topic = topic
        self.min_refresh_s = min_refresh_s
        self._known: dict[bytes, NamedSchema] = {}
        self._last_refresh = float("-inf")
        self._lock = threading.Lock()  # one refresh at a time: the processors decode on two threads

    def refresh(self) -> int:
        reader = ReplayReader(self.source, serde=None)  # raw records only
        for rec in reader.records([self.topic]):
            try:
                doc = json.loads(rec.value)
                schema = NamedSchema(doc["name"], doc["schema"], None)
                if schema.fingerprint_hex != doc["fingerprint"]:
                    continue  # a forged or corrupt entry: its schema does not hash to its key
                self._known[schema.fingerprint] = schema
            except Exception:  # noqa: BLE001 - bad JSON or a schema fastavro refuses: either way not usable
                continue  # not a catalog entry; the catalog never trusts what it cannot verify
        self._last_refresh = time.monotonic()
        return len(self._known)

    def __call__(self, fp: bytes) -> NamedSchema | None:
        if fp not in self._known:
            with self._lock:
                if fp not in self._known and time.monotonic() - self._last_refresh >= self.min_refresh_s:
                    self.refresh()
        return self._known.get(fp)
