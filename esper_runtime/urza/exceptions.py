"""Errors of Urza's artifact store."""

from __future__ import annotations

from streams.exceptions import EsperError

__all__ = ["ArtifactNotFound"]


class ArtifactNotFound(EsperError):
    pass
