"""``esper``: the command users run. Each sub-command lives in its own module beside this one.

Errors reach the user in one place, ``_Funnel``: an ``EsperError`` from any command is one line on stderr and the
exit code its class names (``EsperError.exit_code``: 1 a failure, 2 input to fix, 4 nothing grew), and so is a
broker that does not answer (exit 1); anything else is a bug and keeps its traceback. Commands raise; they do not
print errors and exit themselves.
"""

from __future__ import annotations

import typer
from typer.core import TyperGroup

from esper_runtime.cli import analytics, api, bench, chaos, infra, karn, library, processors, replay, simic, tail



class _Funnel(TyperGroup):
    """The top command group: every EsperError a command raises becomes its message and its exit code."""

    def invoke(self, ctx):
        from confluent_kafka import KafkaError, KafkaException
        from rich.markup import escape

        from esper_runtime.run.exceptions import Terminated
        from streams.exceptions import EsperError

        try:
            return super().invoke(ctx)
        except Terminated as exc:
            _console().print(f"[yellow]{exc}[/yellow]: what the run started was stopped (`esper run --resume` "
                             f"continues a run from its last checkpoint)", soft_wrap=True, highlight=False)
            raise
        except EsperError as exc:
            _console().print(f"[red]error:[/red] {escape(str(exc))}", soft_wrap=True, highlight=False)
            raise typer.Exit(exc.exit_code) from None
        except KafkaException as exc:
            code = exc.args[0].code() if exc.args and isinstance(exc.args[0], KafkaError) else None
            if code not in (KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN, KafkaError._TIMED_OUT):
                raise
            from streams.config import load_settings

            _console().print(f"[red]error:[/red] no Kafka broker answers at {load_settings().bootstrap_servers} "
                             f"({escape(exc.args[0].str())}): `esper infra up` starts this home's, with the same "
                             f"ESPER_KAFKA_* settings", soft_wrap=True, highlight=False)
            raise typer.Exit(1) from None


app = typer.Typer(cls=_Funnel, no_args_is_help=True, add_completion=False,
                  help="Esper: neural networks that grow while they train.")
app.add_typer(infra.app, name="infra")
app.add_typer(bench.app, name="bench")
app.command("tail")(tail.tail)
app.add_typer(library.blueprints_app, name="blueprints")
app.add_typer(library.kernels_app, name="kernels")
app.command("tezzeret")(library.tezzeret)
app.command("urabrask")(library.urabrask)
app.add_typer(karn.app, name="karn")
app.command("replay")(replay.replay)
app.command("sql")(analytics.sql)
app.command("sink")(analytics.sink)
app.command("processors")(processors.processors)
app.command("chaos")(chaos.chaos)
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
    """Prepare, run and print the headline. Bad input exits 2, a broken library or infrastructure 1, a run that
    failed on its data 2, nothing grown 4 (each error's ``exit_code``, printed by ``main``)."""
    from esper_runtime.run.pipeline import run

    prep = make_prepared()
    summary = run(prep, options, echo=lambda m: console.print(f"[dim]{m}[/dim]", soft_wrap=True),
                  progress=_progress(console))
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
        from rich.markup import escape

        diffs = summary["replay_differences"]
        console.print(f"[red]the replay of the log and the live state differ[/red] ({len(diffs)}, all in "
                      f"summary.json's replay_differences): {escape('; '.join(diffs[:5]))}", soft_wrap=True,
                      highlight=False)
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

    console = _console()
    try:
        widths = [tuple(int(w) for w in item.split("x")) for item in sweep.split(",") if item.strip()]
    except ValueError:
        raise typer.BadParameter(f"must look like 16x16,32x32, not {sweep!r}", param_hint="--sweep") from None
    result = run_study(StudyOptions(out=Path(out), tasks=[t for t in tasks.split(",") if t], seeds=seeds,
                                    epochs=epochs, sweep=widths or None),
                       echo=lambda m: console.print(f"[dim]{m}[/dim]", soft_wrap=True), progress=_progress(console))
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
    device: str = typer.Option("cpu", help="cpu, cuda or auto: where the models train; on cuda the library is "
                               "compiled for the card and grafted seeds blend in one Triton launch a layer."),
) -> None:
    """The main job: grow an under-capacity host on two spirals and compare it with the baselines."""
    from pathlib import Path

    from esper_runtime.demo.run import DemoOptions, demo_config
    from esper_runtime.run.pipeline import RunOptions, prepare

    if controller not in ("heuristic", "gnn", "hierarchical"):
        raise typer.BadParameter(f"must be heuristic, gnn or hierarchical, not {controller!r}", param_hint="--controller")
    if device not in ("cpu", "cuda", "auto"):
        raise typer.BadParameter(f"must be cpu, cuda or auto, not {device!r}", param_hint="--device")
    opts = DemoOptions(out=Path(out), epochs=epochs, seeds=seeds, controller=controller, device=device)
    _run_pipeline(_console(), lambda: prepare(demo_config(opts)),
                  RunOptions(out=Path(out), policy=Path(policy) if policy else None))


if __name__ == "__main__":
    app()
