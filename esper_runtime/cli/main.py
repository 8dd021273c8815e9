"""``esper``: the command users run. Each sub-command lives in its own module beside this one."""

from __future__ import annotations

import typer

from esper_runtime.cli import analytics, api, bench, infra, library, processors, replay, simic, tail

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Esper: neural networks that grow while they train.")
app.add_typer(infra.app, name="infra")
app.add_typer(bench.app, name="bench")
app.command("tail")(tail.tail)
app.add_typer(library.blueprints_app, name="blueprints")
app.add_typer(library.kernels_app, name="kernels")
app.command("tezzeret")(library.tezzeret)
app.command("urabrask")(library.urabrask)
app.command("karn")(library.karn)
app.command("replay")(replay.replay)
app.command("sql")(analytics.sql)
app.command("sink")(analytics.sink)
app.command("processors")(processors.processors)
app.command("serve")(api.serve)
app.command("alerts")(api.alerts)
app.add_typer(api.token_app, name="token")
app.add_typer(simic.app, name="simic")


def _console():
    from rich.console import Console

    return Console(stderr=True)


def _progress(console):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return lambda: Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                            console=console)


def _run_pipeline(console, make_prepared, options) -> dict:
    """Prepare (exit 2 on bad input), run (exit 1 if the library or the infrastructure fails, 2 if the run failed on
    its data, 4 if nothing grew), and print the headline. Errors are one line, never a stack trace."""
    from esper_runtime.kasmina.exceptions import KernelLoadError
    from esper_runtime.run.data import DataError
    from esper_runtime.run.pipeline import NoGrowth, RunBroke, run
    from esper_runtime.tamiyo.hierarchical import DomainError
    from esper_runtime.tamiyo.policy import PolicyError
    from streams import EsperError
    from streams.exceptions import ConfigError

    def fail(code: int, exc: BaseException):
        console.print(f"[red]error:[/red] {exc}", soft_wrap=True)
        raise typer.Exit(code)

    try:
        prep = make_prepared()
    except (ConfigError, DataError, DomainError) as exc:
        fail(2, exc)
    try:
        summary = run(prep, options, echo=lambda m: console.print(f"[dim]{m}[/dim]", soft_wrap=True),
                      progress=_progress(console))
    except NoGrowth as exc:
        fail(4, exc)
    except RunBroke as exc:
        fail(2 if isinstance(exc.cause, (DataError, DomainError, KernelLoadError)) else 1, exc)
    except DataError as exc:  # e.g. --resume with a changed configuration
        fail(2, exc)
    except (EsperError, PolicyError) as exc:
        fail(1, exc)
    o = summary["over_seeds"]
    metric = "R^2" if summary["metric"] == "r2" else "accuracy"
    line = (f"grown host {metric} {o['final_accuracy']['mean']:.3f} ± {o['final_accuracy']['std']:.3f} "
            f"({summary['host_params']} -> {summary['final_params']} params)")
    if o["baseline_accuracy"]:
        line += f" | frozen host {o['baseline_accuracy']['mean']:.3f} ± {o['baseline_accuracy']['std']:.3f}"
    if o["large_baseline_accuracy"]:
        line += (f" | large {o['large_baseline_accuracy']['mean']:.3f} ± {o['large_baseline_accuracy']['std']:.3f} "
                 f"({summary['large_baseline_params']} params)")
    console.print(line, soft_wrap=True)
    console.print(f"germinated {summary['seeds_germinated']}, fossilized {summary['seeds_fossilized']}, culled "
                  f"{summary['seeds_culled']}, replay matches: {summary['replay_matches']}; wrote "
                  f"{options.out}/summary.json, report.md, lineage.json, model/", soft_wrap=True)
    for run_id, why in summary["no_growth"].items():
        console.print(f"[yellow]nothing grew in {run_id}:[/yellow] {why}", soft_wrap=True)
    if not summary["replay_matches"]:
        raise typer.Exit(3)
    return summary


@app.command("run")
def run_command(
    config: str = typer.Option(..., "--config", "-c", help="The run's YAML: data, model, task, device, esper, "
                               "baselines (see the guide's config reference)."),
    out: str = typer.Option("out/run", help="Where summary.json, report.md, lineage.json, model/ and checkpoints/ go."),
    policy: str = typer.Option(None, help="With controller: gnn, a policy directory."),
    resume: bool = typer.Option(False, "--resume", help="Continue each seed's grown run from its checkpoint under "
                                "OUT/checkpoints/ (same config) instead of starting new runs."),
) -> None:
    """Grow your own model on your own data, with the same outputs and baselines as the demo."""
    from pathlib import Path

    from esper_runtime.run.config import load_run_config
    from esper_runtime.run.pipeline import RunOptions, prepare

    _run_pipeline(_console(), lambda: prepare(load_run_config(config)),
                  RunOptions(out=Path(out), policy=Path(policy) if policy else None, resume=resume))


@app.command()
def study(
    tasks: str = typer.Option("two_spirals,digits", help="Comma-separated: two_spirals, digits."),
    seeds: int = typer.Option(5, help="Random seeds per task (each trains every model)."),
    epochs: int = typer.Option(150, help="Training epochs for every model."),
    sweep: str = typer.Option("", help="Static models to sweep, e.g. 16x16,32x32,24x24x24 (default: each task's)."),
    out: str = typer.Option("out/study", help="Where study.md, study.json and the Pareto plots go."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as one JSON object, last."),
) -> None:
    """Does growth pay? Grown hosts against the frozen host, a parameter-matched static model and a width sweep,
    mean ± std over seeds, training FLOPs counted, every run on the log and read back from SQL."""
    import json
    from pathlib import Path

    from esper_runtime.study.study import StudyOptions, run_study
    from streams import EsperError

    console = _console()
    try:
        widths = [tuple(int(w) for w in item.split("x")) for item in sweep.split(",") if item.strip()]
    except ValueError:
        console.print(f"[red]error:[/red] --sweep must look like 16x16,32x32, not {sweep!r}")
        raise typer.Exit(2)
    try:
        result = run_study(StudyOptions(out=Path(out), tasks=[t for t in tasks.split(",") if t], seeds=seeds,
                                        epochs=epochs, sweep=widths or None),
                           echo=lambda m: console.print(f"[dim]{m}[/dim]", soft_wrap=True), progress=_progress(console))
    except ValueError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2)
    except EsperError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1)
    for name, t in result["tasks"].items():
        g, m = t["grown"], t["param_matched"]
        console.print(f"{name}: grown {g['accuracy_mean']:.3f} ± {g['accuracy_std']:.3f} ({g['params_mean']:.0f} "
                      f"params) | frozen {t['frozen']['accuracy_mean']:.3f} | parameter-matched "
                      f"{m['accuracy_mean']:.3f} ± {m['accuracy_std']:.3f} ({m['params']:.0f} params)", soft_wrap=True)
    console.print(f"wrote {out}/study.md, study.json and the Pareto plots; SQL read-back matches: "
                  f"{result['sql']['matches']}", soft_wrap=True)
    if as_json:
        print(json.dumps(result))
    if not result["sql"]["matches"]:
        raise typer.Exit(3)


@app.command()
def demo(
    out: str = typer.Option("out/demo", help="Where summary.json, report.md, lineage.json and the model go."),
    epochs: int = typer.Option(150, help="Training epochs for every model."),
    seeds: int = typer.Option(3, help="Random seeds (each trains the grown host and both baselines)."),
    controller: str = typer.Option("heuristic", help="heuristic, gnn (the learned policy under the heuristic's "
                                   "veto) or hierarchical (Tamiyo-Prime over three domains)."),
    policy: str = typer.Option(None, help="With --controller gnn: a policy directory (default: the latest Simic "
                               "trained; none yet: trained now from heuristic runs logged first)."),
) -> None:
    """The main job: grow an under-capacity host on two spirals and compare it with the baselines."""
    from pathlib import Path

    from esper_runtime.demo.run import DemoOptions, demo_config
    from esper_runtime.run.pipeline import RunOptions, prepare

    if controller not in ("heuristic", "gnn", "hierarchical"):
        _console().print(f"[red]error:[/red] --controller must be heuristic, gnn or hierarchical, not {controller!r}")
        raise typer.Exit(2)
    opts = DemoOptions(out=Path(out), epochs=epochs, seeds=seeds, controller=controller)
    _run_pipeline(_console(), lambda: prepare(demo_config(opts)),
                  RunOptions(out=Path(out), policy=Path(policy) if policy else None))


if __name__ == "__main__":
    app()
