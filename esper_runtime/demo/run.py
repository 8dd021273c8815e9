"""``esper demo``: the run pipeline (``esper_runtime.run.pipeline``) on a preset — two spirals, an under-capacity
2-16-16-2 host with seeds on 8-wide chunks of its hidden layers, 3 random seeds, the frozen host and a static
2-64-64-2 as baselines. ``esper run`` is the same pipeline on a config of the user's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from esper_runtime.config import EsperConfig, HierarchicalConfig
from esper_runtime.run.defaults import growth_defaults
from esper_runtime.run.config import BaselinesConfig, DataConfig, ModelConfig, RunConfig

__all__ = ["DemoOptions", "run_demo", "default_config", "demo_config"]


@dataclass
class DemoOptions:
    out: Path
    epochs: int = 150
    seeds: int = 3
    host_width: int = 16
    large_width: int = 64
    chunk: int = 8
    controller: str = "heuristic"  # heuristic, gnn, hierarchical
    policy: Path | None = None  # gnn: a policy directory (default: $ESPER_HOME/simic/policies/LATEST)
    experience_runs: int = 4  # gnn without a policy: heuristic runs logged first, for Simic to learn from
    device: str = "cpu"  # cpu, cuda or auto: where the models train (and what the library is compiled for)


def default_config(opts: DemoOptions) -> EsperConfig:
    """The controller settings every task gets (``esper_runtime/run/defaults.py``); hierarchical control adds
    appendix I.2's domains over the deeper host."""
    cfg = growth_defaults(opts.epochs, opts.chunk)
    if opts.controller == "hierarchical":  # three domains over the deeper host's hidden layers, the last with the outputs
        cfg.hierarchical_control = HierarchicalConfig.model_validate({
            "enabled": True, "tamiyo_prime": {"attention_window": 64, "atp_global_budget": 12, "germination_cost": 10},
            "domains": {"input_layer": {"module_paths": ["0"], "atp_initial_budget": 10},
                        "hidden_layer": {"module_paths": ["2"], "atp_initial_budget": 10},
                        "output_side": {"module_paths": ["4", "6"], "atp_initial_budget": 10}}})
    return cfg


def demo_config(opts: DemoOptions) -> RunConfig:
    depth = 3 if opts.controller == "hierarchical" else 2
    return RunConfig(name="two_spirals", data=DataConfig(builtin="two_spirals"),
                     model=ModelConfig(mlp=[opts.host_width] * depth), task="classification", device=opts.device,
                     seeds=opts.seeds, controller=opts.controller, esper=default_config(opts),
                     baselines=BaselinesConfig(large=ModelConfig(mlp=[opts.large_width] * 2)))


def run_demo(opts: DemoOptions, echo=print, progress=None) -> dict:
    from esper_runtime.run.pipeline import RunOptions, prepare, run

    prep = prepare(demo_config(opts))
    return run(prep, RunOptions(out=opts.out, policy=opts.policy, experience_runs=opts.experience_runs),
               echo=echo, progress=progress)
