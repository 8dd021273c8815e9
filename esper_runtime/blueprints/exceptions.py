"""Errors of the blueprint IR."""

from __future__ import annotations

from streams.exceptions import EsperError

__all__ = ["BlueprintInvalid"]


class BlueprintInvalid(EsperError):
    """A blueprint failed static validation. ``stage`` names the check (it becomes BlueprintRejected.stage)."""

    exit_code = 2

    def __init__(self, stage: str, reason: str):
        super().__init__(f"{stage}: {reason}")
        self.stage = stage
        self.reason = reason
