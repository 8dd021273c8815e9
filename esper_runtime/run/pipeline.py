"""The run pipeline behind ``esper run`` and ``esper demo``: check, build the library, grow, compare, report.

1. Everything that can be checked before the broker is touched is checked: the config, the data (file, line and
   column of a bad cell), the model (it imports, it has layers to seed, it accepts the data's features and has an
   output per class). Nothing is published before these pass.
2. Local infrastructure: the broker if none is configured, the processors' app if none runs (so the run is in SQL).
3. The library: Urza's kernels for every chunk width the wrapped model has, compiled now if missing.
4. For each random seed: the host grown under Tamiyo, the same host frozen, a statically larger model — the same
   epochs, optimizer, schedule, batches and split — every run on the broker.
5. The primary run folded back from the log and compared with the live model and the processors' state.
6. ``summary.json``, ``report.md`` with plots, ``lineage.json``, ``model/`` and ``checkpoints/`` in the output folder.
"""

from __future__ import annotations

import json
import statistics
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from esper_runtime.run.config import ModelConfig, RunConfig
from esper_runtime.rng import seeded
from esper_runtime.run.data import DataError, RunData, call_factory, import_factory, load_data, make_loader
from esper_runtime.run.exceptions import NoGrowth, RunBroke

__all__ = ["RunOptions", "Prepared", "prepare", "run", "build_host", "local_infrastructure", "NoGrowth", "RunBroke"]


@dataclass
class RunOptions:
    out: Path
    policy: Path | None = None  # gnn: a policy directory (default: the latest Simic trained)
    experience_runs: int = 4  # gnn without a policy: heuristic runs logged first, for Simic to learn from
    require_growth: bool = True  # finishing with no run grown past its host's parameters is an error (NoGrowth)
    resume: bool = False  # continue each seed's grown run from its checkpoint in out/checkpoints/s<seed>/


@dataclass
class Prepared:
    cfg: RunConfig
    data: RunData
    device: torch.device
    in_features: int
    n_outputs: int
    widths: set[int]
    large: ModelConfig | None
    shapes: set[tuple[int, int | None]] = field(default_factory=set)  # (chunk width, layer input width) per seed
    notes: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------- models
def build_host(model: ModelConfig, in_features: int, n_outputs: int, seed: int) -> nn.Module:
    """The host for one random seed: an MLP of ReLU layers, or what the factory returns (seeded the same way)."""
    with seeded(seed):
        return _build_host(model, in_features, n_outputs)


def _build_host(model: ModelConfig, in_features: int, n_outputs: int) -> nn.Module:
    if model.mlp is not None:
        layers: list[nn.Module] = []
        width = in_features
        for hidden in model.mlp:
            layers += [nn.Linear(width, hidden), nn.ReLU()]
            width = hidden
        return nn.Sequential(*layers, nn.Linear(width, n_outputs))
    fn = import_factory(model.factory, "model.factory")
    try:
        host = call_factory(fn, in_features=in_features, out_features=n_outputs)
    except Exception as exc:  # noqa: BLE001
        raise DataError(f"model.factory {model.factory!r} failed: {type(exc).__name__}: {exc}") from None
    if not isinstance(host, nn.Module):
        raise DataError(f"model.factory {model.factory!r} returned {type(host).__name__}, not a torch nn.Module")
    return host


def kasmina_config(cfg: RunConfig):
    """The run's Kasmina section. Every layer gets seeds, the output layer included: a branch writing the outputs
    from the model's input is the growth a host with a narrow layer needs most (issue #12)."""
    return cfg.esper.kasmina.model_copy()


def default_large(cfg: RunConfig) -> ModelConfig | None:
    if cfg.baselines.large is not None:
        return cfg.baselines.large
    if cfg.model.mlp is not None:
        return ModelConfig(mlp=[4 * w for w in cfg.model.mlp])
    return None


def _device(name: str) -> torch.device:
    from esper_runtime.devices import DeviceUnavailable, resolve

    try:
        return resolve(name)
    except DeviceUnavailable as exc:
        raise DataError(str(exc)) from None


def prepare(cfg: RunConfig) -> Prepared:
    """Check the data and the model against each other without touching the broker; raise DataError (or
    ConfigError) naming the problem."""
    from esper_runtime.kasmina import wrap
    from streams.exceptions import ConfigError as WrapConfigError

    data = load_data(cfg.data, cfg.task)
    device = _device(cfg.device)
    probe = next(iter(make_loader(data.train, min(cfg.esper.tolaria.batch_size, 256), False)), None)
    if probe is None:
        raise DataError(f"{data.description}: the training data is empty")
    x, y = probe
    in_features = data.in_features or int(x.shape[-1])
    if data.n_outputs is not None:
        n_outputs = data.n_outputs
    elif cfg.task == "regression":
        n_outputs = 1 if y.dim() == 1 else int(y.shape[-1])
    else:
        n_outputs = int(y.max()) + 1  # a factory's classes: at least the first batch's
    host = build_host(cfg.model, in_features, n_outputs, cfg.esper.tolaria.seed)
    host.to(device)
    try:
        model = wrap(host, kasmina_config(cfg))
    except WrapConfigError as exc:
        raise DataError(f"the model has no layer to put seeds in: {exc} (seeds go into nn.Linear and nn.Conv2d)") \
            from None
    model.eval()
    try:
        with torch.no_grad():
            out = model(x.to(device))
    except Exception as exc:  # noqa: BLE001 - a shape error from the user's model, said in terms of the data
        raise DataError(f"the model does not accept the data ({tuple(x.shape[1:])} features per example): "
                        f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}") from None
    if cfg.task == "classification":
        if out.dim() != 2:
            raise DataError(f"the model returns shape {tuple(out.shape)}: a classifier returns (batch, classes)")
        if data.n_outputs is not None and out.shape[1] < data.n_outputs:
            raise DataError(f"the labels go up to {data.n_outputs - 1} but the model has {out.shape[1]} outputs "
                            f"(labels 0..{out.shape[1] - 1})")
    elif out.reshape(out.shape[0], -1).shape[1] != n_outputs:
        raise DataError(f"the model returns {tuple(out.shape)} per batch but the target has {n_outputs} column(s)")
    shapes = model.kasmina.seed_shapes()
    widths = {f for f, _ in shapes}
    large = default_large(cfg)
    notes = [] if large is not None or not cfg.baselines.frozen else \
        ["no static larger baseline: the host comes from a factory; name one under baselines.large"]
    return Prepared(cfg, data, device, in_features, n_outputs, widths, large, notes=notes, shapes=shapes)


# ----------------------------------------------------------------------------- the run
@contextmanager
def local_infrastructure(echo=print):
    """The backbone with the broker up (started if none is configured) and the processors' app running (started if
    none runs, so runs reach SQL as they train); stops at the end what it started."""
    from esper_runtime.infra import LocalKafka, LocalProcessors
    from streams import Backbone

    bb = Backbone()
    LocalKafka(bb.settings).up(echo=echo)
    bb.ensure_topics()
    processors = LocalProcessors(bb.settings)
    with _terminate_as_exit():
        processors.up(echo=echo)
        try:
            yield bb
        finally:
            processors.down()
            bb.close()


@contextmanager
def _terminate_as_exit():
    """SIGTERM (a scheduler's stop, ``kill``) and Ctrl-C raise ``Terminated`` in the main thread while the run is
    inside, so what the run started is stopped on the way out; a training loop takes it at its next safe point
    (``esper_runtime.stops``), so no event is left half published."""
    import signal
    import threading

    from esper_runtime.stops import stop

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(signum, frame):
        stop(signum)

    previous = {sig: signal.signal(sig, terminate) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run(prep: Prepared, opts: RunOptions, echo=print, progress=None) -> dict:
    """Local infrastructure up (stopping at the end what it started), the library, the runs, the outputs."""
    opts.out.mkdir(parents=True, exist_ok=True)
    with local_infrastructure(echo) as bb:
        return _execute(prep, opts, bb, echo, progress)


def _controller(cfg: RunConfig, model, view, publisher, run_id: str, policy):
    from esper_runtime.tamiyo import TamiyoController

    if cfg.controller == "gnn":
        from esper_runtime.tamiyo.learned import LearnedTamiyo

        return LearnedTamiyo(model, cfg.esper.tamiyo, policy, view, publisher, run_id=run_id)
    if cfg.controller == "hierarchical":
        from esper_runtime.tamiyo.hierarchical import HierarchicalTamiyo

        return HierarchicalTamiyo(model, cfg.esper.tamiyo, cfg.esper.hierarchical_control, view, publisher,
                                  run_id=run_id)
    return TamiyoController(model, cfg.esper.tamiyo, view, publisher, run_id=run_id)


def _trainer(prep: Prepared, model, controller, publisher, run_id: str, task: str, seed: int, checkpoint_dir=None):
    from esper_runtime.tolaria import TolariaTrainer

    cfg = prep.cfg
    tolaria = cfg.esper.tolaria.model_copy(update={"seed": seed})
    return TolariaTrainer(model, controller, tolaria, prep.data.train, prep.data.val, publisher=publisher,
                          run_id=run_id, task=task, checkpoint_dir=checkpoint_dir, objective=cfg.task,
                          run_config=cfg.model_dump(mode="json") | {"random_seed": seed},
                          num_workers=cfg.data.num_workers)


def _grown(prep: Prepared, seed: int, run_id: str, store, view, publisher, policy, checkpoint_dir=None,
           field_record: dict[str, dict[str, int]] | None = None):
    """The run's wrapped host, its Tamiyo (with ``field_record``: earlier runs' outcomes per design, read from the
    log once before the run's seeds start) and its trainer."""
    from esper_runtime.kasmina import wrap

    host = build_host(prep.cfg.model, prep.in_features, prep.n_outputs, seed).to(prep.device)
    model = wrap(host, kasmina_config(prep.cfg), artifacts=store, publisher=publisher, run_id=run_id)
    tamiyo = _controller(prep.cfg, model, view, publisher, run_id, policy)
    tamiyo.field_record = field_record or {}
    return model, tamiyo, _trainer(prep, model, tamiyo, publisher, run_id, prep.cfg.name, seed, checkpoint_dir)


def _baseline(prep: Prepared, model_cfg: ModelConfig, seed: int, kind: str, publisher) -> dict:
    from esper_runtime.tolaria.trainer import count_params

    model = build_host(model_cfg, prep.in_features, prep.n_outputs, seed).to(prep.device)
    run_id = f"{prep.cfg.name}-baseline-{kind}-{uuid.uuid4().hex[:8]}-s{seed}"
    trainer = _trainer(prep, model, None, publisher, run_id, f"{prep.cfg.name}-baseline-{kind}", seed)
    _, hist = _train(trainer)
    return {"accuracy": hist.epochs[-1]["val_accuracy"], "params": count_params(model), "run_id": run_id,
            "curve": [e["val_accuracy"] for e in hist.epochs], "flops": trainer.flops_total}


def _train(trainer):
    try:
        return trainer.train()
    except Exception as exc:  # noqa: BLE001 - Tolaria published RunFailed; say which run it was
        raise RunBroke(trainer.run_id, exc) from exc


def _previous(checkpoints: Path, cfg: RunConfig, seed: int) -> str | None:
    """The run id of a seed's checkpointed run, if its configuration is this one (None: no checkpoint)."""
    try:
        meta = json.loads((checkpoints / "last.json").read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise DataError(f"--resume: {checkpoints / 'last.json'} is unreadable: {exc}") from None
    wanted = cfg.model_dump(mode="json") | {"random_seed": seed}
    if meta.get("config") != wanted:
        changed = sorted(k for k in set(wanted) | set(meta.get("config") or {})
                         if wanted.get(k) != (meta.get("config") or {}).get(k))
        raise DataError(f"--resume: the configuration changed since {checkpoints} was written "
                        f"(sections: {', '.join(changed)}); resume with the same config, or start a new --out")
    return meta["run_id"]


def _resume(bb, trainer, checkpoints: Path, echo):
    """Continue a seed's grown run from its checkpoint, numbering its events on from what the log already holds;
    a run the log shows completed is only restored."""
    from views.folds import fold_run, last_versions

    fold, _ = fold_run(bb, trainer.run_id)
    epoch = trainer.resume(checkpoints, last_versions(bb, trainer.run_id), max(fold.epochs, default=0), fold.seeds)
    if fold.status == "completed" and epoch >= trainer.config.epochs:
        echo(f"{trainer.run_id}: completed on the log; restored from its last checkpoint")
        return trainer.model, trainer.history
    echo(f"{trainer.run_id}: resuming after epoch {epoch} (the log had {max(fold.epochs, default=0)})")
    return _train(trainer)


def _policy(prep: Prepared, opts: RunOptions, bb, view, store, publisher, echo):
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
    heuristic = prep.cfg.model_copy(update={"controller": "heuristic"})
    experience = Prepared(heuristic, prep.data, prep.device, prep.in_features, prep.n_outputs, prep.widths, None,
                          shapes=prep.shapes)
    for i in range(opts.experience_runs):
        seed = 1000 + i
        run_id = f"experience-{uuid.uuid4().hex[:8]}-s{seed}"
        _, _, trainer = _grown(experience, seed, run_id, store, view, publisher, None)
        trainer.task = f"{prep.cfg.name}-experience"
        _train(trainer)
    publisher.flush()
    result = train_from_log(bb, echo=echo)
    held = result.metrics["held_out"] or result.metrics["train"]
    echo(f"policy trained: agreement with the heuristic on held-out runs {held['agreement']:.2f} "
         f"({held['decisions']} decisions)")
    return load_policy(result.directory)


def _execute(prep: Prepared, opts: RunOptions, bb, echo, progress) -> dict:
    from esper_runtime.karn import KarnListener
    from esper_runtime.karn.lineage import field_outcomes, read_field_reports
    from esper_runtime.kasmina import Code
    from esper_runtime.run.library import ensure_library
    from esper_runtime.run.report import write_report
    from esper_runtime.sdk import save_model
    from esper_runtime.tolaria.trainer import count_params
    from esper_runtime.urza.library import load_view
    from esper_runtime.urza.store import ArtifactStore
    from views.folds import fold_runs
    from views.live import verify

    cfg = prep.cfg
    echo(f"data: {prep.data.description}; device {prep.device.type}")
    for note in prep.notes:
        echo(note)
    library = ensure_library(bb, prep.shapes, echo, progress, device=prep.device.type)
    view = load_view(bb)
    reports = read_field_reports(bb)  # earlier runs' outcomes, read once: every seed of this run sees the same
    store = ArtifactStore(bb.settings.artifacts)
    publisher = bb.run_publisher()
    policy = _policy(prep, opts, bb, view, store, publisher, echo) if cfg.controller == "gnn" else None
    runs = []
    for seed in range(cfg.seeds):
        checkpoints = opts.out / "checkpoints" / f"s{seed}"
        previous = _previous(checkpoints, cfg, seed) if opts.resume else None
        run_id = previous or f"{cfg.name}-{uuid.uuid4().hex[:8]}-s{seed}"
        # a resumed run does not take its own adaptations for earlier runs' evidence
        field_record = field_outcomes(r for r in reports if r["envelope"]["run_id"] != run_id)
        model, tamiyo, trainer = _grown(prep, seed, run_id, store, view, publisher, policy, checkpoints,
                                        field_record)
        host_params = count_params(model)
        t0 = time.perf_counter()
        if previous:
            model, history = _resume(bb, trainer, checkpoints, echo)
        else:
            echo(f"seed {seed}: run {run_id}")
            model, history = _train(trainer)
        grown_s = time.perf_counter() - t0
        frozen = _baseline(prep, cfg.model, seed, "frozen", publisher) if cfg.baselines.frozen else None
        large = _baseline(prep, prep.large, seed, "large", publisher) if prep.large is not None else None
        runs.append({"seed": seed, "run_id": run_id, "model": model, "tamiyo": tamiyo, "history": history,
                     "host_params": host_params, "final_params": count_params(model),
                     "final_accuracy": history.epochs[-1]["val_accuracy"], "frozen": frozen, "large": large,
                     "seconds": grown_s})
        echo(f"seed {seed}: grown {runs[-1]['final_accuracy']:.3f} ({runs[-1]['final_params']} params)"
             + (f" | frozen host {frozen['accuracy']:.3f} ({frozen['params']})" if frozen else "")
             + (f" | large {large['accuracy']:.3f} ({large['params']})" if large else ""))
    publisher.flush()
    karn = KarnListener(bb.settings.home / "karn" / "field_reports.jsonl")
    consumer = bb.consumer([bb.resolve_topic("innovation.field_reports")], group_id="karn", name="karn")
    karn.run(consumer, idle_timeout=2)
    consumer.close()

    primary = runs[0]
    folds = fold_runs(bb, [r["run_id"] for r in runs])[0]  # one pass over the log for every run
    fold = folds[primary["run_id"]]
    live = {f"seed/{l}/{s}": c.name for l, s, c in primary["model"].kasmina.seeds()}
    diffs = [f"{k}: log {fold.seeds.get(k, 'DORMANT')} != live {v}" for k, v in live.items()
             if fold.seeds.get(k, "DORMANT") != v]
    diffs += fold.gaps
    if fold.final_accuracy is None or abs(fold.final_accuracy - primary["final_accuracy"]) > 1e-9:
        diffs.append(f"final accuracy: log {fold.final_accuracy} != live {primary['final_accuracy']}")
    if fold.final_params != primary["final_params"]:
        diffs.append(f"final params: log {fold.final_params} != live {primary['final_params']}")
    diffs += verify(bb, fold, timeout=60)  # the processors' materialized state against the replay

    def stats(values):
        values = [v for v in values if v is not None]
        if not values:
            return None
        return {"mean": statistics.fmean(values), "std": statistics.pstdev(values) if len(values) > 1 else 0.0,
                "values": values}

    germinated = [folds[r["run_id"]].germinated for r in runs]
    # a run grew when it ended with more parameters than its host: germinating alone is not growth
    no_growth = {r["run_id"]: folds[r["run_id"]].no_growth_reason() for r in runs
                 if r["final_params"] <= r["host_params"]}
    kasmina = primary["model"].kasmina
    summary = {
        "run_id": primary["run_id"],
        "task": cfg.name,
        "objective": cfg.task,
        "metric": "accuracy" if cfg.task == "classification" else "r2",
        "epochs": cfg.esper.tolaria.epochs,
        "host_params": primary["host_params"],
        "final_params": primary["final_params"],
        "baseline_accuracy": primary["frozen"]["accuracy"] if primary["frozen"] else None,
        "large_baseline_accuracy": primary["large"]["accuracy"] if primary["large"] else None,
        "large_baseline_params": primary["large"]["params"] if primary["large"] else None,
        "final_accuracy": primary["final_accuracy"],
        "seeds_germinated": fold.germinated,
        "seeds_fossilized": sum(1 for _, _, c in kasmina.seeds() if c == Code.FOSSILIZED),
        "seeds_culled": fold.culled,
        "events_published": fold.events,  # the run's distinct events folded back from the log
        "events_acknowledged": publisher.published_by_run[primary["run_id"]],  # what the broker acknowledged
        "replay_matches": not diffs,
        "replay_differences": diffs,
        "random_seeds": cfg.seeds,
        "device": prep.device.type,
        "data": prep.data.description,
        "chunk_widths": sorted(prep.widths),
        # per chunk width, the validated kernels its least served seed can choose from
        "kernels_available": {str(w): min(s.validated for (f, _), s in library.items() if f == w)
                              for w in sorted(prep.widths)},
        "library": [s.as_dict() for s in library.values()],
        "germinated_per_seed": germinated,
        "no_growth_reason": no_growth.get(primary["run_id"]),
        "no_growth": no_growth,
        "notes": prep.notes,
        "over_seeds": {
            "final_accuracy": stats([r["final_accuracy"] for r in runs]),
            "baseline_accuracy": stats([r["frozen"]["accuracy"] if r["frozen"] else None for r in runs]),
            "large_baseline_accuracy": stats([r["large"]["accuracy"] if r["large"] else None for r in runs]),
            "final_params": stats([r["final_params"] for r in runs]),
        },
        "run_ids": [r["run_id"] for r in runs],
        "baseline_run_ids": {"frozen": [r["frozen"]["run_id"] for r in runs if r["frozen"]],
                             "large": [r["large"]["run_id"] for r in runs if r["large"]]},
        "karn_logged_field_reports": karn.logged,
        "controller": cfg.controller,
        "config": cfg.model_dump(mode="json"),
        **({"policy": {"version": policy.card.get("version"), "dataset_version": policy.card.get("dataset_version"),
                       "held_out": (policy.card.get("metrics") or {}).get("held_out"),
                       "vetoed": [r["tamiyo"].vetoed for r in runs]}} if policy is not None else {}),
        **({"atp": [{"allocated": sum(sum(a.values()) for a in r["tamiyo"].ledger.allocations),
                     "spent": sum(sum(s.values()) for s in r["tamiyo"].ledger.spends),
                     "domains": {d: len(ls) for d, ls in r["tamiyo"].domains.items()}} for r in runs]}
           if cfg.controller == "hierarchical" else {}),
    }
    (opts.out / "summary.json").write_text(json.dumps(summary, indent=2))
    save_model(primary["model"], opts.out / "model", lineage=primary["tamiyo"].lineage,
               extra={"run_id": primary["run_id"], "task": cfg.name},
               host={"model": cfg.model.model_dump(mode="json"), "in_features": prep.in_features,
                     "out_features": prep.n_outputs, "scaling": prep.data.scaling, "classes": prep.data.classes})
    (opts.out / "lineage.json").write_text((opts.out / "model" / "lineage.json").read_text())
    write_report(opts.out, summary, runs)
    if opts.require_growth and len(no_growth) == len(runs):
        raise NoGrowth(f"nothing grew in any of the {cfg.seeds} run(s): {no_growth.get(primary['run_id'])} "
                       f"(the summary and report are in {opts.out})")
    return summary
