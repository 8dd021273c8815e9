"""Errors of Tezzeret, the compiler."""

from __future__ import annotations

from streams.exceptions import EsperError

__all__ = ["CompilationError"]


class CompilationError(EsperError):
    pass
