"""Karn: the generative architect; today the phase-1 listener."""

from esper_runtime.karn.listener import KarnListener

__all__ = ["KarnListener"]
