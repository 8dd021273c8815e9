"""Errors of Urabrask, the benchmarker."""

from __future__ import annotations

from streams.exceptions import EsperError

__all__ = ["SandboxServerError"]


class SandboxServerError(EsperError):
    """The sandbox server could not fork a sandbox or answer for it; the kernel's verdict says so."""
