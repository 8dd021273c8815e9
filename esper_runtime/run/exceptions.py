"""Errors of a run: its data, its library, its model files, and how it ended."""

from __future__ import annotations

from esper_runtime.exceptions import Terminated  # how a run ends on a signal; its home is the runtime's
from streams.exceptions import EsperError

__all__ = ["DataError", "LibraryError", "ModelFileError", "RunBroke", "NoGrowth", "Terminated"]


class DataError(EsperError):
    """The data cannot be used: a missing file or column, a bad cell, a label out of range."""

    exit_code = 2


class LibraryError(EsperError):
    """No validated kernel for a width a run needs, or a worker that stopped before the library was ready."""


class ModelFileError(EsperError):
    """A saved model folder is missing a file, was written by something else, or does not fit the host."""

    exit_code = 2


class RunBroke(EsperError):
    """A run failed after it started; its RunFailed event is on the log. ``cause`` is the original error."""

    def __init__(self, run_id: str, cause: BaseException):
        super().__init__(f"run {run_id} failed (a RunFailed event is on the log): {cause}")
        self.run_id, self.cause = run_id, cause
        # a run that broke on its input (its data, its domains, a kernel that would not load) is the user's to fix
        self.exit_code = 2 if getattr(cause, "exit_code", 1) == 2 or type(cause).__name__ == "KernelLoadError" else 1


class NoGrowth(EsperError):
    """The run finished but no seed's run grew (ended with more parameters than its host): the summary says why."""

    exit_code = 4
