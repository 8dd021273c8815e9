"""The researcher-facing SDK (appendix F.2): load_config, wrap, TamiyoController, TolariaTrainer, save_model."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from esper_runtime.config import load_config
from esper_runtime.kasmina import MorphableModel, wrap
from esper_runtime.tamiyo import TamiyoController
from esper_runtime.tolaria import TolariaTrainer

__all__ = ["load_config", "wrap", "TamiyoController", "TolariaTrainer", "save_model"]


def save_model(model: MorphableModel, path: str | Path, lineage: list[dict] | None = None,
               extra: dict | None = None) -> Path:
    """Write ``model.pt`` (the state_dict: host, seeds and their children; loadable with weights_only=True),
    ``structure.json`` (which seed holds which kernel, to rebuild it) and ``lineage.json`` (which blueprint grew
    where, when, why, and how it ended)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path / "model.pt")
    (path / "structure.json").write_text(json.dumps(model.kasmina.structure(), indent=2))
    (path / "lineage.json").write_text(json.dumps({**(extra or {}), "adaptations": lineage or []}, indent=2))
    return path
