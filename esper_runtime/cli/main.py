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

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from esper_runtime.demo.run import DemoOptions, run_demo
    from esper_runtime.tamiyo.hierarchical import DomainError
    from esper_runtime.tamiyo.policy import PolicyError
    from streams import EsperError

    console = Console(stderr=True)

    def progress():
        return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        console=console)

    try:
        if controller not in ("heuristic", "gnn", "hierarchical"):
            raise typer.BadParameter(f"--controller must be heuristic, gnn or hierarchical, not {controller!r}")
        summary = run_demo(DemoOptions(out=Path(out), epochs=epochs, seeds=seeds, controller=controller,
                                       policy=Path(policy) if policy else None),
                           echo=lambda m: console.print(f"[dim]{m}[/dim]"), progress=progress)
    except (EsperError, PolicyError, DomainError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1)
    o = summary["over_seeds"]
    console.print(f"grown host {o['final_accuracy']['mean']:.3f} ± {o['final_accuracy']['std']:.3f} "
                  f"({summary['host_params']} -> {summary['final_params']} params) | frozen host "
                  f"{o['baseline_accuracy']['mean']:.3f} ± {o['baseline_accuracy']['std']:.3f} | large "
                  f"{o['large_baseline_accuracy']['mean']:.3f} ({summary['large_baseline_params']} params)")
    console.print(f"fossilized {summary['seeds_fossilized']}, culled {summary['seeds_culled']}, "
                  f"replay matches: {summary['replay_matches']}; wrote {out}/summary.json, report.md, lineage")
    if not summary["replay_matches"]:
        raise typer.Exit(3)


if __name__ == "__main__":
    app()
