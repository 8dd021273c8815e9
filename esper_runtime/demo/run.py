"""``esper demo``: a morphogenetic training run on two spirals, with the baselines a reviewer asks for first.

1. Local infrastructure: the broker is started if none is configured; topics are created.
2. The blueprint library: if Urza (folded from the log) lacks validated kernels for the seeds' chunk width, the
   starter library is submitted and compiled and measured by a Tezzeret and an Urabrask worker, each in its own
   process (progress bars follow the log).
3. For each random seed: the under-capacity host grows under Tamiyo (every event on the broker); the same host
   trains frozen (no growth) and a statically larger model trains, both for the same epochs with the same
   optimizer and schedule, and both published as runs of their own.
4. The primary run (the first seed) is folded back from the broker and compared with the live state.
5. ``DIR/summary.json``, ``DIR/report.md`` with plots, ``DIR/lineage.json`` and the evolved model.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from esper_runtime.config import EsperConfig
from esper_runtime.kasmina import Code, wrap
from esper_runtime.tamiyo import TamiyoController
from esper_runtime.tolaria import TolariaTrainer
from esper_runtime.tolaria.trainer import count_params
from esper_runtime.urza.library import load_view, submit_blueprint
from esper_runtime.urza.store import ArtifactStore
from streams import Backbone
from streams.envelope import EnvelopeFactory

__all__ = ["DemoOptions", "run_demo", "default_config"]


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


def default_config(opts: DemoOptions) -> EsperConfig:
    deep = opts.controller == "hierarchical"
    doc = {
        "kasmina": {"chunk_size": opts.chunk, "exclude": ["6" if deep else "4"], "stats_every": 2,
                    "reconstruction_steps": 20, "graft_steps": 50, "stabilize_steps": 25, "evaluate_steps": 25},
        "tamiyo": {"warmup_epochs": 10, "patience": 4, "min_delta": 0.01, "max_germinations": 8,
                   "fine_tune_epochs": 3},
        "tolaria": {"epochs": opts.epochs, "lr": 3e-3, "batch_size": 64},
    }
    if deep:  # appendix I.2's shape: three domains, one per hidden layer of the deeper host
        doc["hierarchical_control"] = {
            "enabled": True, "tamiyo_prime": {"attention_window": 64, "atp_global_budget": 12, "germination_cost": 10},
            "domains": {"input_layer": {"module_paths": ["0"], "atp_initial_budget": 10},
                        "hidden_layer": {"module_paths": ["2"], "atp_initial_budget": 10},
                        "output_side": {"module_paths": ["4"], "atp_initial_budget": 10}}}
    return EsperConfig.model_validate(doc)


def host_for(opts: DemoOptions, seed: int) -> nn.Module:
    """The under-capacity host: 2-16-16-2, or 2-16-16-16-2 (three seed layers) for hierarchical control."""
    if opts.controller != "hierarchical":
        return mlp(opts.host_width, seed)
    torch.manual_seed(seed)
    w = opts.host_width
    return nn.Sequential(nn.Linear(2, w), nn.ReLU(), nn.Linear(w, w), nn.ReLU(), nn.Linear(w, w), nn.ReLU(),
                         nn.Linear(w, 2))


def _controller(opts: DemoOptions, cfg: EsperConfig, model, view, publisher, run_id: str, policy):
    if opts.controller == "gnn":
        from esper_runtime.tamiyo.learned import LearnedTamiyo

        return LearnedTamiyo(model, cfg.tamiyo, policy, view, publisher, run_id=run_id)
    if opts.controller == "hierarchical":
        from esper_runtime.tamiyo.hierarchical import HierarchicalTamiyo

        return HierarchicalTamiyo(model, cfg.tamiyo, cfg.hierarchical_control, view, publisher, run_id=run_id)
    return TamiyoController(model, cfg.tamiyo, view, publisher, run_id=run_id)


def _policy(opts: DemoOptions, bb: Backbone, view, store, cfg: EsperConfig, data, publisher, echo):
    """The GNN policy: the one given, else the latest Simic trained, else one trained now from heuristic runs
    logged first (the policy only ever learns from events on the log)."""
    from esper_runtime.simic.train import latest_policy, train_from_log
    from esper_runtime.tamiyo.policy import PolicyError, load_policy

    if opts.policy is not None:  # asked for by name: it must load
        loaded = load_policy(Path(opts.policy))
        echo(f"policy {loaded.card.get('version')} from {opts.policy}")
        return loaded
    latest = latest_policy(bb.settings.home)
    if latest is not None:
        try:
            loaded = load_policy(latest)
            echo(f"policy {loaded.card.get('version')} from {latest}")
            return loaded
        except PolicyError as exc:  # e.g. trained by an older version on other features
            echo(f"the latest policy cannot be used ({exc}); training a new one")
    echo(f"no trained policy yet: {opts.experience_runs} heuristic runs for Simic to learn from")
    for i in range(opts.experience_runs):
        seed = 1000 + i
        cfg.tolaria.seed = seed
        run_id = f"experience-{uuid.uuid4().hex[:8]}-s{seed}"
        model = wrap(mlp(opts.host_width, seed), cfg.kasmina, artifacts=store, publisher=publisher, run_id=run_id)
        tamiyo = TamiyoController(model, cfg.tamiyo, view, publisher, run_id=run_id)
        TolariaTrainer(model, tamiyo, cfg.tolaria, data[0], data[1], publisher=publisher, run_id=run_id,
                       task="two_spirals-experience").train()
    publisher.flush()
    result = train_from_log(bb, echo=echo)
    held = result.metrics["held_out"] or result.metrics["train"]
    echo(f"policy trained: agreement with the heuristic on held-out runs {held['agreement']:.2f} "
         f"({held['decisions']} decisions)")
    return load_policy(result.directory)


def mlp(width: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(2, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 2))


def ensure_library(bb: Backbone, width: int, echo, progress) -> None:
    from esper_runtime.blueprints import starter_blueprints

    view = load_view(bb)
    expected = len(starter_blueprints())
    if len(view.query([], features=width)) >= expected:
        echo(f"Urza has {len(view.query([], features=width))} validated kernels for width {width}")
        return
    echo(f"pre-loading the starter library: {expected} blueprints for chunk width {width}")
    envs = EnvelopeFactory(f"demo-library-{uuid.uuid4().hex[:6]}", "esper-demo")
    with bb.publisher() as pub:
        for bp in starter_blueprints():
            submit_blueprint(pub, envs, bp, "esper-demo", widths=(width,), pipelines=("fast",))
    cmd = [sys.executable, "-m", "esper_runtime.cli.main"]
    workers = [subprocess.Popen(cmd + ["tezzeret", "--idle-timeout", "10", "--widths", str(width)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
               subprocess.Popen(cmd + ["urabrask", "--idle-timeout", "20"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        with progress() as bar:
            compiled = bar.add_task("compiled (Tezzeret)", total=expected)
            validated = bar.add_task("validated (Urabrask)", total=expected)
            deadline = time.monotonic() + 1800
            while time.monotonic() < deadline:
                view = load_view(bb)
                mine = [k for k in view.kernels.values() if k.features == width]
                bar.update(compiled, completed=min(expected, len(mine)))
                bar.update(validated, completed=min(expected, sum(k.status != "COMPILED" for k in mine)))
                if sum(k.status != "COMPILED" for k in mine) >= expected or all(w.poll() is not None for w in workers):
                    break
                time.sleep(2)
    finally:
        for w in workers:  # ours, by PID: stop them if they have not finished by themselves
            if w.poll() is None:
                w.terminate()
                try:
                    w.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    w.kill()


def _baseline(model: nn.Module, cfg: EsperConfig, data, task: str, publisher):
    run_id = f"{task}-{uuid.uuid4().hex[:8]}"
    trainer = TolariaTrainer(model, None, cfg.tolaria, data[0], data[1], publisher=publisher, task=task, run_id=run_id)
    _, hist = trainer.train()
    return hist.epochs[-1]["val_accuracy"], count_params(model), [e["val_accuracy"] for e in hist.epochs], run_id


def run_demo(opts: DemoOptions, echo=print, progress=None) -> dict:
    """Local infrastructure (the broker, the processors' app) up, the demo's runs, everything we started stopped."""
    from esper_runtime.infra import LocalKafka, LocalProcessors

    opts.out.mkdir(parents=True, exist_ok=True)
    bb = Backbone()
    LocalKafka(bb.settings).up(echo=echo)
    bb.ensure_topics()
    processors = LocalProcessors(bb.settings)
    processors.up(echo=echo)
    try:
        return _run(opts, bb, echo, progress)
    finally:
        processors.down()
        bb.close()


def _run(opts: DemoOptions, bb: Backbone, echo, progress) -> dict:
    from esper_runtime.demo.report import write_report
    from esper_runtime.demo.tasks import two_spirals
    from esper_runtime.sdk import save_model
    from processors.verify import fold_run, verify

    ensure_library(bb, opts.chunk, echo, progress)
    view = load_view(bb)
    store = ArtifactStore(bb.settings.home / "artifacts")
    cfg = default_config(opts)
    data = two_spirals()
    runs = []
    publisher = bb.publisher()
    policy = _policy(opts, bb, view, store, cfg, data, publisher, echo) if opts.controller == "gnn" else None
    for seed in range(opts.seeds):
        cfg.tolaria.seed = seed
        run_id = f"demo-{uuid.uuid4().hex[:8]}-s{seed}"
        model = wrap(host_for(opts, seed), cfg.kasmina, artifacts=store, publisher=publisher, run_id=run_id)
        host_params = count_params(model)
        tamiyo = _controller(opts, cfg, model, view, publisher, run_id, policy)
        trainer = TolariaTrainer(model, tamiyo, cfg.tolaria, data[0], data[1], publisher=publisher, run_id=run_id,
                                 task="two_spirals", checkpoint_dir=opts.out / "checkpoints" if seed == 0 else None)
        t0 = time.perf_counter()
        model, history = trainer.train()
        grown_s = time.perf_counter() - t0
        frozen_acc, frozen_params, frozen_curve, frozen_run = _baseline(host_for(opts, seed), cfg, data,
                                                                        "two_spirals-baseline-frozen", publisher)
        large_acc, large_params, large_curve, large_run = _baseline(mlp(opts.large_width, seed), cfg, data,
                                                                    "two_spirals-baseline-large", publisher)
        runs.append({"seed": seed, "run_id": run_id, "model": model, "tamiyo": tamiyo, "history": history,
                     "host_params": host_params, "final_params": count_params(model),
                     "final_accuracy": history.epochs[-1]["val_accuracy"], "frozen_accuracy": frozen_acc,
                     "frozen_curve": frozen_curve, "large_accuracy": large_acc, "large_params": large_params,
                     "large_curve": large_curve, "seconds": grown_s, "frozen_run": frozen_run,
                     "large_run": large_run})
        echo(f"seed {seed}: grown {runs[-1]['final_accuracy']:.3f} ({runs[-1]['final_params']} params) | "
             f"frozen host {frozen_acc:.3f} ({frozen_params}) | large {large_acc:.3f} ({large_params})")
    publisher.flush()
    from esper_runtime.karn import KarnListener

    karn = KarnListener(bb.settings.home / "karn" / "field_reports.jsonl")
    consumer = bb.consumer([bb.resolve_topic("innovation.field_reports")], group_id="karn", name="karn")
    karn.run(consumer, idle_timeout=2)
    consumer.close()
    primary = runs[0]
    fold, _ = fold_run(bb, primary["run_id"])
    live = {f"seed/{l}/{s}": c.name for l, s, c in primary["model"].kasmina.seeds()}
    diffs = [f"{k}: log {fold.seeds.get(k, 'DORMANT')} != live {v}" for k, v in live.items()
             if fold.seeds.get(k, "DORMANT") != v]
    if fold.gaps:
        diffs += fold.gaps
    if fold.final_accuracy is None or abs(fold.final_accuracy - primary["final_accuracy"]) > 1e-9:
        diffs.append(f"final accuracy: log {fold.final_accuracy} != live {primary['final_accuracy']}")
    if fold.final_params != primary["final_params"]:
        diffs.append(f"final params: log {fold.final_params} != live {primary['final_params']}")
    diffs += verify(bb, fold, timeout=60)  # the processors' materialized state against the replay

    def stats(key):
        values = [r[key] for r in runs]
        return {"mean": statistics.fmean(values), "std": statistics.pstdev(values) if len(values) > 1 else 0.0,
                "values": values}

    kasmina = primary["model"].kasmina
    summary = {
        "run_id": primary["run_id"],
        "task": "two_spirals",
        "epochs": opts.epochs,
        "host_params": primary["host_params"],
        "final_params": primary["final_params"],
        "baseline_accuracy": primary["frozen_accuracy"],
        "large_baseline_accuracy": primary["large_accuracy"],
        "large_baseline_params": primary["large_params"],
        "final_accuracy": primary["final_accuracy"],
        "seeds_germinated": fold.germinated,
        "seeds_fossilized": sum(1 for _, _, c in kasmina.seeds() if c == Code.FOSSILIZED),
        "seeds_culled": fold.culled,
        "events_published": fold.events,
        "replay_matches": not diffs,
        "replay_differences": diffs,
        "random_seeds": opts.seeds,
        "over_seeds": {"final_accuracy": stats("final_accuracy"), "baseline_accuracy": stats("frozen_accuracy"),
                       "large_baseline_accuracy": stats("large_accuracy"), "final_params": stats("final_params")},
        "run_ids": [r["run_id"] for r in runs],
        "baseline_run_ids": {"frozen": [r["frozen_run"] for r in runs], "large": [r["large_run"] for r in runs]},
        "karn_logged_field_reports": karn.logged,
        "controller": opts.controller,
        **({"policy": {"version": policy.card.get("version"), "dataset_version": policy.card.get("dataset_version"),
                       "held_out": (policy.card.get("metrics") or {}).get("held_out"),
                       "vetoed": [r["tamiyo"].vetoed for r in runs]}} if policy is not None else {}),
        **({"atp": [{"allocated": sum(sum(a.values()) for a in r["tamiyo"].ledger.allocations),
                     "spent": sum(sum(s.values()) for s in r["tamiyo"].ledger.spends),
                     "domains": {d: len(ls) for d, ls in r["tamiyo"].domains.items()}} for r in runs]}
           if opts.controller == "hierarchical" else {}),
    }
    (opts.out / "summary.json").write_text(json.dumps(summary, indent=2))
    save_model(primary["model"], opts.out / "model", lineage=primary["tamiyo"].lineage,
               extra={"run_id": primary["run_id"], "task": "two_spirals"})
    (opts.out / "lineage.json").write_text((opts.out / "model" / "lineage.json").read_text())
    write_report(opts.out, summary, runs)
    return summary
