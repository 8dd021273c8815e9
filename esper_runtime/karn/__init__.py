"""Karn: the generative architect (appendix D) — the listener that keeps field reports, and the inventor that
mutates the library's best designs and sends them through Tezzeret and Urabrask (``esper karn evolve``)."""

from esper_runtime.karn.exceptions import KarnError
from esper_runtime.karn.listener import KarnListener

__all__ = ["KarnError", "KarnListener"]
