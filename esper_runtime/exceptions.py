"""Errors of the runtime as a whole (those of one part live in that part's ``exceptions`` module)."""

from __future__ import annotations

import signal

from streams.exceptions import EsperError

__all__ = ["DeviceUnavailable", "Terminated"]


class DeviceUnavailable(EsperError):
    """CUDA was asked for on a machine where torch sees none."""

    exit_code = 2


class Terminated(SystemExit):
    """The run was stopped by a signal (SIGTERM: a scheduler, ``kill``; SIGINT: Ctrl-C): raised in the main thread,
    at a safe point of the training loop (``esper_runtime.stops``), so what the run started is stopped on the way
    out and its RunFailed says so. The process exits 128 + the signal's number."""

    def __init__(self, signum: int):
        super().__init__(128 + signum)
        self.signum = signum

    def __str__(self) -> str:
        return f"stopped by {signal.Signals(self.signum).name}"
