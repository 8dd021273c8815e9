"""Errors of the seed execution layer."""

from __future__ import annotations

from streams.exceptions import ConfigError, EsperError

__all__ = ["KasminaError", "IllegalTransition", "KernelLoadError", "StateChecksumError", "ConfigError"]


class KasminaError(EsperError):
    """Root of Kasmina's errors."""


class IllegalTransition(KasminaError):
    """A command asked for a transition appendix B does not allow (or the seed is not ready for it)."""

    def __init__(self, seed: str, state: str, command: str, why: str):
        super().__init__(f"seed {seed} in {state}: command {command!r} refused: {why}")
        self.seed, self.state, self.command = seed, state, command


class KernelLoadError(KasminaError):
    """A kernel artifact could not be fetched, verified or built."""


class StateChecksumError(KasminaError):
    """The seed state tensors changed outside a lifecycle transition: the signal Tolaria rolls back on."""
