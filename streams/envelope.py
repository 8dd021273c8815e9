"""Envelopes: who said it, when, and where it stands in that originator's sequence."""

from __future__ import annotations

import uuid
from collections import defaultdict
from datetime import datetime, timezone

from streams.contracts import Envelope

__all__ = ["EnvelopeFactory", "now_utc"]


def now_utc() -> datetime:
    # Avro timestamp-millis keeps milliseconds; truncating here makes an event equal to itself after a round trip.
    now = datetime.now(timezone.utc)
    return now.replace(microsecond=now.microsecond - now.microsecond % 1000)


class EnvelopeFactory:
    """Stamps envelopes for one producer in one run, numbering each originator's events 1, 2, 3, ... with no gaps.

    Resume a sequence after a restart by passing the last versions seen (e.g. folded from the log) as ``start``.
    """

    def __init__(self, run_id: str, producer: str, start: dict[str, int] | None = None):
        self.run_id = run_id
        self.producer = producer
        self._versions: defaultdict[str, int] = defaultdict(int, start or {})

    def next(self, originator_id: str, occurred_at: datetime | None = None) -> Envelope:
        self._versions[originator_id] += 1
        return Envelope(
            event_id=uuid.uuid4().hex,
            occurred_at=occurred_at or now_utc(),
            run_id=self.run_id,
            originator_id=originator_id,
            originator_version=self._versions[originator_id],
            producer=self.producer,
        )

    def continue_from(self, versions: dict[str, int]) -> None:
        """Number on from ``versions`` (each originator's last version, e.g. folded from the log), never back."""
        for originator, version in versions.items():
            if version > self._versions.get(originator, 0):
                self._versions[originator] = version

    def version(self, originator_id: str) -> int:
        return self._versions.get(originator_id, 0)
