"""Errors of the REST API."""

from __future__ import annotations

from streams.exceptions import EsperError

__all__ = ["AuthError"]


class AuthError(EsperError):
    """A token was missing, malformed, expired, forged, or for another issuer or audience."""
