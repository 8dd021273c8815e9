"""The researcher-facing SDK (appendix F.2): load_config, wrap, TamiyoController, TolariaTrainer, save_model, and
load_model to bring a grown model back as a plain ``nn.Module``.

    config = esper.load_config("run.yaml")
    model = esper.wrap(MyModel(), config.kasmina)
    tamiyo = esper.TamiyoController(model, config.tamiyo)
    trainer = esper.TolariaTrainer(model, tamiyo, config.tolaria, train_data=train_ds, val_data=val_ds)
    final_model, history = trainer.train()
    esper.save_model(final_model, "out/model")
    grown = esper.load_model("out/model", host=MyModel())   # no broker, no Urza, no seeds: just the network
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from esper_runtime.config import load_config
from esper_runtime.kasmina import KasminaConfig, MorphableModel
from esper_runtime.kasmina import wrap as _wrap
from esper_runtime.kasmina.lifecycle import Code
from esper_runtime.tamiyo import TamiyoController
from esper_runtime.tolaria import TolariaTrainer
from esper_runtime.run.exceptions import ModelFileError

__all__ = ["load_config", "wrap", "TamiyoController", "TolariaTrainer", "save_model", "load_model", "GrownLayer",
           "ModelFileError"]

FORMAT = "esper.grown.v1"


class GrownLayer(nn.Module):
    """A host layer with its grown children, and nothing else: ``y = base(x)``; each child rewrites its chunk of
    output features, blended with weight ``alpha`` (1 once fossilized)."""

    def __init__(self, base_layer: nn.Module, channel_dim: int, chunks: list[dict], children: dict[str, nn.Module]):
        super().__init__()
        self.base_layer = base_layer
        self.channel_dim = channel_dim
        self.chunks = chunks  # [{"seed": i, "start": s, "end": e, "alpha": a}]
        self.children_ = nn.ModuleDict(children)
        self.model_input = None  # load_model shares the model's input with children that read it (``x0``)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base_layer(x)
        out = y.clone()
        for c in self.chunks:
            s, e, child = c["start"], c["end"], self.children_[str(c["seed"])]
            if getattr(child, "in_features", None) is not None:  # it reads a wide input beside its chunk
                chunk = y[..., s:e]
                model_reader = getattr(child, "input_source", None) == "model"
                new = child(chunk, self.model_input.value if model_reader else x)
            elif self.channel_dim == -1:
                chunk = y[..., s:e]
                new = child(chunk)
            else:  # (B, c, H, W) -> (B, H, W, c): the child maps channel vectors pixel by pixel
                chunk = y[:, s:e]
                new = child(chunk.movedim(1, -1)).movedim(-1, 1)
            blended = new if c["alpha"] >= 1.0 else chunk + c["alpha"] * (new - chunk)
            if self.channel_dim == -1:
                out[..., s:e] = blended
            else:
                out[:, s:e] = blended
        return out


def wrap(model: nn.Module, config: KasminaConfig | None = None, *, artifacts=None, publisher=None,
         run_id: str | None = None) -> MorphableModel:
    """Put seeds into ``model``'s Linear and Conv2d layers (in place) and return it wrapped (appendix F.2).

    What is not given comes from Esper's own setup: kernels from the artifact store under ``ESPER_HOME`` and events
    to the configured broker (the local one, started if it is not running), so ``wrap(model, config.kasmina)``
    is all a script needs. Pass ``publisher`` (e.g. an ``InMemoryPublisher``) to keep a run off the broker."""
    if artifacts is None or publisher is None:
        from esper_runtime.urza.store import ArtifactStore
        from streams import Backbone

        backbone = Backbone()
        if artifacts is None:
            artifacts = ArtifactStore(backbone.settings.artifacts)
        if publisher is None:
            from esper_runtime.infra import LocalKafka

            LocalKafka(backbone.settings).up(echo=print)
            backbone.ensure_topics()
            publisher = backbone.run_publisher()
    return _wrap(model, config, artifacts=artifacts, publisher=publisher, run_id=run_id)


class Standardize(nn.Module):
    """``(x - mean) / std`` with the training split's statistics, so a model saved by ``esper run`` takes the raw
    features its data files had."""

    def __init__(self, mean: list[float], std: list[float]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def _recipe_module(child: nn.Module) -> tuple[nn.Module, str]:
    """The module that owns a child's weights and knows its recipe, and its prefix inside the child."""
    if hasattr(child, "esper_recipe"):
        return child, ""
    inner = getattr(child, "module", None)
    if inner is not None and hasattr(inner, "esper_recipe"):
        return inner, "module."
    raise ModelFileError(f"a child of type {type(child).__name__} carries no recipe to rebuild it from")


def _grown_layers(model: MorphableModel) -> list[dict]:
    out = []
    for layer in model.kasmina.layers:
        chunks, children = [], {}
        for i in layer._active:
            if layer._codes[i] == Code.TRAINING:  # learning beside the host path, not on it
                continue
            module, prefix = _recipe_module(layer.seeds[str(i)])
            s, e = layer.bounds[i]
            chunks.append({"seed": i, "start": s, "end": e, "alpha": float(layer._alpha(i, training=False)),
                           "state": layer._codes[i].name})
            children[str(i)] = {"recipe": module.esper_recipe, "prefix": f"seeds.{i}.{prefix}"}
        out.append({"path": layer.path, "channel_dim": layer.channel_dim, "chunks": chunks, "children": children})
    return out


def save_model(model: MorphableModel, path: str | Path, lineage: list[dict] | None = None,
               extra: dict | None = None, host: dict | None = None, config: dict | None = None) -> Path:
    """Write the grown model to the folder ``path``:

    - ``model.pt``: the state_dict (host, seeds and their children), loadable with ``weights_only=True``;
    - ``structure.json``: which seed holds which kernel (what a checkpoint restores Kasmina from);
    - ``grown.json``: what ``load_model`` rebuilds the network from: each seeded layer's children (their blueprint
      IR) and blend, and ``host`` (how ``esper run`` built the host; None for a model of your own);
    - ``lineage.json``: which blueprint grew where, when, why, and how it ended (the controller's, unless given);
    - ``config.json``: the resolved configuration it was trained with (``config``, else what its trainer recorded
      in ``RunStarted``), when one is known.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path / "model.pt")
    (path / "structure.json").write_text(json.dumps(model.kasmina.structure(), indent=2))
    (path / "grown.json").write_text(json.dumps({"format": FORMAT, "host": host, "layers": _grown_layers(model)},
                                                indent=1))
    adaptations = lineage if lineage is not None else model.kasmina.lineage
    (path / "lineage.json").write_text(json.dumps({**(extra or {}), "adaptations": adaptations}, indent=2))
    config = config if config is not None else model.kasmina.run_config
    if config is not None:
        (path / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True, default=str))
    return path


def load_model(path: str | Path, host: nn.Module | None = None) -> nn.Module:
    """The grown network saved by ``save_model`` as a plain ``nn.Module`` (in eval mode): the host with each seeded
    layer replaced by a ``GrownLayer`` holding its children. ``host`` is a fresh instance of the model you wrapped;
    a model saved by ``esper run`` rebuilds its own host when ``host`` is None, and takes raw features: when the
    run standardized them, the result is ``Sequential(Standardize, grown host)`` (``.classes`` names string
    labels, in the order of the outputs)."""
    from esper_runtime.kasmina.kernels import module_from_recipe
    from esper_runtime.kasmina.layer import ModelInput

    path = Path(path)
    try:
        doc = json.loads((path / "grown.json").read_text())
        state = torch.load(path / "model.pt", weights_only=True, map_location="cpu")
    except FileNotFoundError as exc:
        raise ModelFileError(f"{path}: no {Path(exc.filename).name}: not a folder written by save_model") from None
    except (ValueError, RuntimeError) as exc:
        raise ModelFileError(f"{path}: unreadable model files: {exc}") from None
    if doc.get("format") != FORMAT:
        raise ModelFileError(f"{path}/grown.json: format {doc.get('format')!r}, expected {FORMAT}")
    if host is None:
        if not doc.get("host"):
            raise ModelFileError(f"{path}: the host was your own model: pass host=YourModel()")
        from esper_runtime.run.config import ModelConfig
        from esper_runtime.run.pipeline import build_host

        spec = doc["host"]
        host = build_host(ModelConfig.model_validate(spec["model"]), spec["in_features"], spec["out_features"], 0)
    seeded = {}
    model_input = ModelInput()
    host.register_forward_pre_hook(model_input.capture)
    for layer in doc["layers"]:
        try:
            base = host.get_submodule(layer["path"])
        except AttributeError:
            raise ModelFileError(f"{path}: the host has no module {layer['path']!r}: not the model that was saved") \
                from None
        children = {i: module_from_recipe(c["recipe"]) for i, c in layer["children"].items()}
        grown = GrownLayer(base, layer["channel_dim"], layer["chunks"], children)
        grown.model_input = model_input
        parent_path, _, attr = layer["path"].rpartition(".")
        setattr(host.get_submodule(parent_path) if parent_path else host, attr, grown)
        seeded[layer["path"]] = layer
    new_state = {}
    for key in host.state_dict():
        saved = f"host.{key}"
        for lpath, layer in seeded.items():
            if key.startswith(f"{lpath}.children_."):
                seed, _, rest = key[len(lpath) + len(".children_."):].partition(".")
                saved = f"host.{lpath}.{layer['children'][seed]['prefix']}{rest}"
        if saved not in state:
            raise ModelFileError(f"{path}/model.pt has no {saved!r}: the host is not the model that was saved")
        new_state[key] = state[saved]
    host.load_state_dict(new_state)
    spec = doc.get("host") or {}
    if spec.get("scaling"):
        host = nn.Sequential(Standardize(spec["scaling"]["mean"], spec["scaling"]["std"]), host)
    host.classes = list(spec.get("classes") or [])
    return host.eval()
