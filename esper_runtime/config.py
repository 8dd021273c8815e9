"""EsperConfig: one YAML file for a whole run (appendix F.2), validated by pydantic with clear errors.

    kasmina: {...}   # KasminaConfig: which layers get seeds, chunk size, lifecycle step counts
    tamiyo:  {...}   # TamiyoConfig: when and where to grow, which kernels to ask for
    tolaria: {...}   # TolariaConfig: epochs, optimizer, schedule, checkpoints, rollback triggers

Environment overrides: ``ESPER_<SECTION>__<FIELD>`` (e.g. ``ESPER_TOLARIA__EPOCHS=20``), read by pydantic-settings
(nested delimiter ``__``); they win over the file, which wins over the defaults.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, Field, ValidationError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from esper_runtime.kasmina.config import KasminaConfig
from streams.exceptions import ConfigError

__all__ = ["EsperConfig", "TamiyoConfig", "TolariaConfig", "HierarchicalConfig", "DomainConfig", "load_config",
           "env_overrides"]


class TamiyoConfig(BaseModel):
    model_config = {"extra": "forbid"}

    policy: str = Field(default="heuristic-v1", pattern="^(heuristic-v1|gnn-v1)$")
    warmup_epochs: int = Field(default=5, ge=0, description="No germination before this epoch.")
    patience: int = Field(default=3, ge=1, description="Epochs without val-loss improvement that count as a plateau.")
    min_delta: float = Field(default=1e-3, ge=0, description="Relative val-loss improvement that resets patience.")
    max_active_seeds: int = Field(default=1, ge=1, description="Adaptations in flight at once.")
    max_germinations: int = Field(default=8, ge=0, description="Germinations in the whole run.")
    preferred_tags: list[str] = Field(default=["numerically_stable"], description="Tags every candidate must have.")
    karn_designs: bool | Literal["prefer"] = Field(
        default=True, description="Offer designs Karn invented (BlueprintSubmitted.mutation set) besides those people "
        "wrote; false: the library people wrote only (a field comparison's control arm); prefer: Karn's first, among "
        "designs reading the same input (a field trial of Karn's designs).")
    field_evidence: bool = Field(default=True, description="Weigh each design by its field record on this home's "
                                 "log (FieldReports of earlier runs: FOSSILIZED / germinated) when ranking kernels; "
                                 "a design never grafted is ranked as before.")
    training_timeout_epochs: int = Field(
        default=10, ge=0, description="Cull an adaptation whose child has not passed its TRAINING test "
        "(is_ready_for_transition) this many epochs after germination: a design that cannot learn its way in must "
        "not hold its slot, and the run's growth, to the end. 0: wait forever.")
    fine_tune_epochs: int = Field(default=3, ge=1)
    accept_tolerance: float = Field(default=0.01, ge=0,
                                    description="EVALUATING passes if val accuracy is at most this below the pre-graft.")
    min_improvement: float = Field(default=0.0, description="FINE_TUNING fossilizes if val accuracy gained this much.")
    emergency_factor: float = Field(default=3.0, gt=1,
                                    description="With an adaptation in flight, a val loss this many times the best "
                                                "so far makes Tamiyo ask Tolaria for an emergency rollback.")
    one_graft_at_a_time: bool = Field(default=False,
                                      description="Germinate only while no adaptation is before STABILIZATION, so the "
                                                  "growth signal is measured with the last one's units blended in.")
    min_growth_ratio: float = Field(default=0.0, ge=0, le=1,
                                    description="A new location's growth signal must be at least this fraction of the "
                                                "one at the run's first germination: growth stops when it stops "
                                                "paying.")


class TolariaConfig(BaseModel):
    model_config = {"extra": "forbid"}

    epochs: int = Field(default=60, ge=1)
    batch_size: int = Field(default=64, ge=1)
    lr: float = Field(default=3e-3, gt=0)
    weight_decay: float = Field(default=0.0, ge=0)
    schedule: str = Field(default="cosine", pattern="^(cosine|constant)$")
    checkpoint_every: int = Field(default=1, ge=1)
    loss_spike_factor: float = Field(default=5.0, gt=1, description="Roll back when an epoch's train loss exceeds "
                                                                      "this multiple of the recent median.")
    max_rollbacks: int = Field(default=3, ge=0, description="Give up the run after this many rollbacks.")
    seed: int = 0


class TamiyoPrimeConfig(BaseModel):
    model_config = {"extra": "forbid"}

    attention_window: int = Field(default=64, ge=1, description="Health summary reports Tamiyo-Prime attends over.")
    atp_global_budget: int = Field(default=50, ge=0, description="Adaptive Training Points handed out per epoch.")
    germination_cost: int = Field(default=10, ge=1, description="ATP a sub-Tamiyo spends to start an adaptation.")


class DomainConfig(BaseModel):
    model_config = {"extra": "forbid"}

    module_paths: list[str] = Field(min_length=1, description="Modules (dotted paths) whose seeds this domain owns.")
    atp_initial_budget: int = Field(default=0, ge=0, description="The domain's ATP before the first allocation.")


class HierarchicalConfig(BaseModel):
    """Appendix I.2: Tamiyo-Prime over sub-Tamiyos, one per domain of the model."""

    model_config = {"extra": "forbid"}

    enabled: bool = True
    tamiyo_prime: TamiyoPrimeConfig = Field(default_factory=TamiyoPrimeConfig)
    domains: dict[str, DomainConfig] = Field(min_length=1)


class EsperConfig(BaseSettings):
    """Every section of a run's configuration. Constructed from a document (``EsperConfig(**doc)``), the
    ``ESPER_<SECTION>__<FIELD>`` environment variables override the document's values field by field."""

    model_config = SettingsConfigDict(env_prefix="ESPER_", env_nested_delimiter="__", extra="forbid",
                                      nested_model_default_partial_update=True)

    kasmina: KasminaConfig = Field(default_factory=KasminaConfig)
    tamiyo: TamiyoConfig = Field(default_factory=TamiyoConfig)
    tolaria: TolariaConfig = Field(default_factory=TolariaConfig)
    hierarchical_control: HierarchicalConfig | None = None

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings: PydanticBaseSettingsSource,
                                   env_settings: PydanticBaseSettingsSource, dotenv_settings, file_secret_settings):
        return env_settings, init_settings  # the environment over the file; no .env file, no secrets directory


def env_overrides(doc: dict) -> dict:
    """``doc`` (a config document) with the ``ESPER_<SECTION>__<FIELD>`` environment variables applied: the
    sections as pydantic-settings reads them, unvalidated (validation happens once, on the whole document)."""
    from pydantic_settings import EnvSettingsSource

    env = EnvSettingsSource(EsperConfig, env_prefix="ESPER_", env_nested_delimiter="__")()
    merged = dict(doc)
    for section, values in env.items():
        if isinstance(values, dict) and isinstance(merged.get(section, {}), dict):
            merged[section] = {**(merged.get(section) or {}), **values}
        else:
            merged[section] = values
    return merged


def env_names(loc) -> str:
    """`` (ESPER_X__Y)`` when an environment variable set the field at ``loc``, else ''."""
    name = "ESPER_" + "__".join(str(p).upper() for p in loc[:2])
    return f" (from {name})" if len(loc) >= 2 and name in os.environ else ""


def load_config(path: str | Path | None = None) -> EsperConfig:
    """Read a YAML run configuration (or the defaults when ``path`` is None); raise ConfigError naming every
    invalid field."""
    doc: dict = {}
    if path is not None:
        try:
            doc = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"{path}: {exc}") from None
        if not isinstance(doc, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of kasmina / tamiyo / tolaria")
    try:
        return EsperConfig(**doc)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}{env_names(e['loc'])}: {e['msg']}"
                             for e in exc.errors())
        raise ConfigError(f"{path or 'configuration'}: {problems}") from None
