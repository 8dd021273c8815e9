"""``esper bench NAME --json``: measurements as ratios and rates taken in one run; the JSON object is the last line."""

from __future__ import annotations

import json

import typer
from rich.console import Console
from rich.table import Table

from streams import EsperError

app = typer.Typer(no_args_is_help=True, help="Benchmarks. Each prints one JSON object as its last line with --json.")
console = Console(stderr=True)


def _report(result: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(result))
        return
    table = Table(title=f"esper bench {result.get('bench')}")
    table.add_column("figure")
    table.add_column("value", justify="right")
    for k, v in result.items():
        table.add_row(k, f"{v:,}" if isinstance(v, int) else str(v))
    Console().print(table)


@app.command()
def events(
    as_json: bool = typer.Option(False, "--json"),
    n: int = typer.Option(300_000, "--events", help="Records to produce and consume."),
) -> None:
    """Avro encode rate, produce rate to the broker, consume+decode rate."""
    from esper_runtime.bench import events as bench_events

    try:
        console.print(f"[dim]bench events: encoding, producing and consuming {n:,} records...[/dim]")
        result = bench_events.run(events=n)
    except EsperError as exc:
        console.print(f"[red]error:[/red] {exc} (is the broker up? `esper infra up`)")
        raise typer.Exit(1)
    _report(result, as_json)


@app.command("dormant-overhead")
def dormant_overhead(
    as_json: bool = typer.Option(False, "--json"),
    rounds: int = typer.Option(30, help="Alternating rounds per model."),
    steps: int = typer.Option(32, help="Training steps per round (rounds alike: see stats_every)."),
) -> None:
    """Training-step time of a wrapped model with every seed DORMANT over the unwrapped model (MLP, small CNN)."""
    from esper_runtime.bench import dormant

    console.print("[dim]bench dormant-overhead: timing an MLP and a small CNN, wrapped and unwrapped...[/dim]")
    _report(dormant.run(rounds=rounds, steps=steps), as_json)


@app.command("kernel-load")
def kernel_load(as_json: bool = typer.Option(False, "--json"),
                width: int = typer.Option(16, help="Chunk width of the artifacts.")) -> None:
    """Cold load of a compiled kernel artifact (store to first compiled call) and an LRU cache hit."""
    from esper_runtime.bench import kernel_load as bench_kernel_load

    console.print("[dim]bench kernel-load: compiling any missing artifacts first (seconds each), then timing...[/dim]")
    _report(bench_kernel_load.run(width=width), as_json)


@app.command()
def disruption(as_json: bool = typer.Option(False, "--json"),
               nice: int = typer.Option(10, help="Niceness of the background compiler process.")) -> None:
    """Training-step max/median and p99/median while three blueprints compile in the background, against
    compiling them with torch.compile inside the loop."""
    from esper_runtime.bench import disruption as bench_disruption

    console.print("[dim]bench disruption: training while Tezzeret compiles three blueprints (tens of seconds)...[/dim]")
    _report(bench_disruption.run(nice=nice), as_json)
