"""``wrap(model, config)``: put seeds into a model's Linear and Conv2d layers, peft-style."""

from __future__ import annotations

from fnmatch import fnmatch

from torch import nn

from esper_runtime.kasmina.config import KasminaConfig
from esper_runtime.kasmina.controller import Kasmina
from esper_runtime.kasmina.exceptions import ConfigError
from esper_runtime.kasmina.kernels import ArtifactSource
from esper_runtime.kasmina.layer import KasminaLayer
from streams.publisher import Publisher

__all__ = ["MorphableModel", "wrap"]


class MorphableModel(nn.Module):
    """The host model with seeds in it. An ordinary ``nn.Module``: ``forward`` is the host's; ``kasmina`` drives
    the seeds (not a submodule, so it adds nothing to ``state_dict``)."""

    def __init__(self, host: nn.Module, kasmina: Kasmina):
        super().__init__()
        self.host = host
        self.kasmina = kasmina

    def forward(self, *args, **kwargs):
        return self.host(*args, **kwargs)

    def seed_layers(self) -> list[KasminaLayer]:
        return self.kasmina.layers


def _selected(path: str, module: nn.Module, config: KasminaConfig) -> bool:
    return (
        type(module).__name__ in config.target_types
        and any(fnmatch(path, pat) for pat in config.include)
        and not any(fnmatch(path, pat) for pat in config.exclude)
    )


def wrap(
    model: nn.Module,
    config: KasminaConfig | None = None,
    *,
    artifacts: ArtifactSource | None = None,
    publisher: Publisher | None = None,
    run_id: str | None = None,
) -> MorphableModel:
    """Replace each selected ``nn.Linear`` / ``nn.Conv2d`` of ``model`` (in place) by a KasminaLayer holding it as
    ``base_layer``, and return the model wrapped with its seed controller. Device and dtype are kept."""
    config = config or KasminaConfig()
    if isinstance(model, MorphableModel):
        raise ConfigError("this model is already wrapped")
    targets = [
        (path, module) for path, module in model.named_modules()
        if path and _selected(path, module, config) and not isinstance(module, KasminaLayer)
    ]
    if not targets:
        raise ConfigError(
            f"no module matches target_types={config.target_types}, include={config.include}, exclude={config.exclude}"
        )
    layers = []
    for layer_id, (path, module) in enumerate(targets):
        parent_path, _, attr = path.rpartition(".")
        parent = model.get_submodule(parent_path) if parent_path else model
        layer = KasminaLayer(module, layer_id, path, config)
        setattr(parent, attr, layer)
        layers.append(layer)
    kasmina = Kasmina(layers, config, artifacts=artifacts, publisher=publisher, run_id=run_id)
    model.register_forward_pre_hook(kasmina.model_input.capture)  # children that read the model's input get it
    return MorphableModel(model, kasmina)
