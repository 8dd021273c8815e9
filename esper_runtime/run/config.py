"""RunConfig: one YAML file for ``esper run`` — whose data, which model, which task, and Esper's own sections.

    data:   {train: train.csv, val: val.csv, target: label}   # CSV with a header, .npz or .parquet
    model:  {mlp: [16, 16]}            # or {factory: "package.module:function"} returning an nn.Module
    task:   classification             # or regression
    device: auto                       # cpu, cuda, auto
    esper:  {kasmina: {...}, tamiyo: {...}, tolaria: {...}}
    baselines: {large: {mlp: [64, 64]}}

Every section refuses unknown keys, so a typo is an error rather than a silently ignored setting. Environment
overrides ``ESPER_<SECTION>__<FIELD>`` apply to the ``esper`` section as they do to ``load_config``. A field the
``esper`` sections do not set takes the growth defaults of ``esper_runtime/run/defaults.py`` (what ``esper demo``
and ``esper study`` run), not the section's own default.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, model_validator

from esper_runtime.config import EsperConfig, env_overrides
from streams.exceptions import ConfigError

__all__ = ["RunConfig", "DataConfig", "ModelConfig", "BaselinesConfig", "load_run_config", "BUILTIN_DATASETS"]

BUILTIN_DATASETS = ("two_spirals", "two_spirals_distractor", "digits")
_FACTORY = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


class DataConfig(BaseModel):
    """Where the examples come from: files with a header (or arrays), a dataset factory, or a built-in task."""

    model_config = {"extra": "forbid"}

    train: Path | None = Field(default=None, description="Training file: .csv (with a header), .npz or .parquet.")
    val: Path | None = Field(default=None, description="Validation file, same format. Without it, `val_fraction` of "
                                                       "the training file is held out by a seeded split.")
    target: str = Field(default="label", description="The target column (CSV, parquet) or array name (npz). "
                                                     "Every other column is a feature.")
    features: list[str] | None = Field(default=None, description="Feature columns to use (default: every column "
                                                                 "but the target). For npz: the array name, default x.")
    val_fraction: float = Field(default=0.2, gt=0, lt=1, description="Held out for validation when `val` is not given.")
    standardize: bool = Field(default=True, description="Scale features to zero mean and unit variance, with the "
                                                        "training split's statistics (applied to both splits).")
    factory: str | None = Field(default=None, description="`package.module:function` returning (train, val) torch "
                                                          "Datasets of (features, target) pairs; for data larger than "
                                                          "memory.")
    builtin: str | None = Field(default=None, description=f"A task shipped with Esper: {', '.join(BUILTIN_DATASETS)}.")
    split_seed: int = Field(default=0, description="Seed of the train/validation split when `val` is not given.")
    num_workers: int = Field(default=0, ge=0, description="DataLoader worker processes.")

    @model_validator(mode="after")
    def _one_source(self):
        sources = [name for name, value in (("train", self.train), ("factory", self.factory),
                                            ("builtin", self.builtin)) if value is not None]
        if len(sources) != 1:
            raise ValueError("give exactly one of data.train (a file), data.factory or data.builtin"
                             + (f", not {' and '.join(sources)}" if sources else ""))
        if self.val is not None and self.train is None:
            raise ValueError("data.val needs data.train")
        if self.factory is not None and not _FACTORY.match(self.factory):
            raise ValueError(f"data.factory must look like package.module:function, not {self.factory!r}")
        if self.builtin is not None and self.builtin not in BUILTIN_DATASETS:
            raise ValueError(f"data.builtin must be one of {', '.join(BUILTIN_DATASETS)}, not {self.builtin!r}")
        return self


class ModelConfig(BaseModel):
    """The host: an MLP by its hidden widths (inputs and outputs follow the data), or a factory of your own."""

    model_config = {"extra": "forbid"}

    mlp: list[int] | None = Field(default=None, description="Hidden layer widths of a ReLU MLP, e.g. [16, 16]. "
                                                            "Seeds go on the hidden layers (not the output layer).")
    factory: str | None = Field(default=None, description="`package.module:function` returning an nn.Module; called "
                                                          "with in_features= and out_features= if it accepts them.")

    @model_validator(mode="after")
    def _one_kind(self):
        if (self.mlp is None) == (self.factory is None):
            raise ValueError("give exactly one of model.mlp (hidden widths) or model.factory")
        if self.mlp is not None and (not self.mlp or any(w < 1 for w in self.mlp)):
            raise ValueError("model.mlp must list at least one hidden width, each >= 1")
        if self.factory is not None and not _FACTORY.match(self.factory):
            raise ValueError(f"model.factory must look like package.module:function, not {self.factory!r}")
        return self


class BaselinesConfig(BaseModel):
    """What the grown model is compared with, trained for the same epochs with the same recipe."""

    model_config = {"extra": "forbid"}

    frozen: bool = Field(default=True, description="Train the host without growth.")
    large: ModelConfig | None = Field(default=None, description="A statically larger model. Default for an MLP host: "
                                                                "the same depth, 4x the width. A factory host has no "
                                                                "default: name one here or go without.")


class RunConfig(BaseModel):
    model_config = {"extra": "forbid"}

    name: str = Field(default="run", pattern=r"^[A-Za-z0-9_.-]{1,64}$",
                      description="The task's name on the log: run ids are `<name>-<id>-s<seed>`.")
    data: DataConfig
    model: ModelConfig
    task: Literal["classification", "regression"] = Field(
        default="classification", description="classification: cross-entropy, accuracy. regression: MSE loss; R^2 "
                                              "(in the accuracy fields, so Tamiyo's gates follow the validation loss) "
                                              "and RMSE reported.")
    device: Literal["auto", "cpu", "cuda"] = Field(default="auto", description="auto: cuda when available.")
    seeds: int = Field(default=1, ge=1, description="Random seeds; each trains the grown host and every baseline.")
    controller: Literal["heuristic", "gnn", "hierarchical"] = Field(
        default="heuristic", description="Tamiyo's policy; hierarchical needs esper.hierarchical_control.")
    esper: EsperConfig = Field(default_factory=EsperConfig,
                               description="Kasmina / Tamiyo / Tolaria; in a run file, unset fields take the growth "
                                           "defaults (esper_runtime/run/defaults.py).")
    baselines: BaselinesConfig = Field(default_factory=BaselinesConfig)

    @model_validator(mode="after")
    def _controller_needs(self):
        if self.controller == "hierarchical" and self.esper.hierarchical_control is None:
            raise ValueError("controller: hierarchical needs an esper.hierarchical_control section with domains")
        return self


def load_run_config(path: str | Path) -> RunConfig:
    """Read a run's YAML; relative data paths are resolved against the file's folder. Raises ConfigError naming
    every invalid field."""
    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: the top level must be a mapping (data, model, task, esper ...)")
    doc["esper"] = with_growth_defaults(env_overrides(dict(doc.get("esper") or {})))
    try:
        cfg = RunConfig.model_validate(doc)
    except ValidationError as exc:
        raise ConfigError(f"{path}: {describe(exc)}") from None
    base = path.parent
    for name in ("train", "val"):
        value = getattr(cfg.data, name)
        if value is not None and not value.is_absolute():
            setattr(cfg.data, name, base / value)
    return cfg


def with_growth_defaults(esper: dict) -> dict:
    """The run's esper sections over the growth defaults (``run/defaults.py``, what the demo and the study run):
    a field the file does not set takes the growth default, not the section's own."""
    from esper_runtime.run.defaults import growth_defaults

    sections = {k: v for k, v in esper.items() if isinstance(v, dict)}
    epochs = (sections.get("tolaria") or {}).get("epochs", 60)
    if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 1:
        return esper  # let validation say what is wrong with it
    base = growth_defaults(epochs).model_dump(mode="json", exclude_unset=True)
    merged = dict(esper)
    for name in ("kasmina", "tamiyo", "tolaria"):
        if name in esper and not isinstance(esper[name], dict):
            continue  # validation names it
        merged[name] = {**base.get(name, {}), **(esper.get(name) or {})}
    return merged


def describe(exc: ValidationError) -> str:
    """pydantic's errors as one line: ``where: what; where: what``."""
    out = []
    for e in exc.errors():
        where = ".".join(str(p) for p in e["loc"])
        msg = e["msg"].removeprefix("Value error, ")
        out.append(f"{where}: {msg}" if where else msg)
    return "; ".join(out)
