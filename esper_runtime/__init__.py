"""Esper runtime: the ML side (Kasmina today; Tamiyo, Tolaria and the rest as they land) and the ``esper`` CLI.

The SDK names (appendix F.2) are imported lazily, so ``import esper_runtime`` (and every CLI command that does not train) does not
pay for importing torch.
"""

from __future__ import annotations

__all__ = ["wrap", "KasminaConfig", "MorphableModel", "load_config", "TamiyoController", "TolariaTrainer", "save_model",
           "load_model"]

_LAZY = {
    "wrap": "esper_runtime.sdk",
    "KasminaConfig": "esper_runtime.kasmina",
    "MorphableModel": "esper_runtime.kasmina",
    "load_config": "esper_runtime.config",
    "TamiyoController": "esper_runtime.tamiyo",
    "TolariaTrainer": "esper_runtime.tolaria",
    "save_model": "esper_runtime.sdk",
    "load_model": "esper_runtime.sdk",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'esper_runtime' has no attribute {name!r}")
