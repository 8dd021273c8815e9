"""Errors of the runtime as a whole (those of one part live in that part's ``exceptions`` module)."""

from __future__ import annotations

from streams.exceptions import EsperError

__all__ = ["DeviceUnavailable"]


class DeviceUnavailable(EsperError):
    """CUDA was asked for on a machine where torch sees none."""

    exit_code = 2
