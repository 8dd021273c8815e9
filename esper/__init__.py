"""``import esper``: the SDK of appendix F.2 under its short name (the code lives in ``esper_runtime``)."""

from __future__ import annotations

__all__ = ["load_config", "wrap", "TamiyoController", "TolariaTrainer", "save_model", "load_model", "KasminaConfig",
           "MorphableModel"]


def __getattr__(name: str):
    if name in __all__:
        import esper_runtime

        return getattr(esper_runtime, name)
    raise AttributeError(f"module 'esper' has no attribute {name!r}")
