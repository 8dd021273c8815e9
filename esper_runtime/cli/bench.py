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

    console.print(f"[dim]bench events: encoding, producing and consuming {n:,} records...[/dim]")
    _streaming("events", lambda: bench_events.run(events=n), as_json)


@app.command("dormant-overhead")
def dormant_overhead(
    as_json: bool = typer.Option(False, "--json"),
    rounds: int = typer.Option(30, help="Alternating rounds per model, at least."),
    max_rounds: int = typer.Option(150, help="At most: rounds are added until the A/A spread is under 0.01."),
    steps: int = typer.Option(32, help="Training steps per round (rounds alike: see stats_every)."),
    epoch_steps: int = typer.Option(500, help="Epoch length the trainer announces to the esper-run configuration "
                                    "(its sampling interval: steps per epoch ÷ samples_per_epoch, at least stats_every)."),
    device: str = typer.Option("cpu", help="cpu, cuda or auto: where the models train."),
) -> None:
    """Training-step time of a wrapped model with every seed DORMANT over the unwrapped model (MLP, small CNN),
    with the A/A spread of the measurement beside each ratio."""
    from esper_runtime.bench import dormant

    console.print("[dim]bench dormant-overhead: timing an MLP and a small CNN, wrapped and unwrapped...[/dim]")
    _report(_on_device(lambda: dormant.run(rounds=rounds, steps=steps, max_rounds=max(rounds, max_rounds),
                                           epoch_steps=epoch_steps, device=device)), as_json)


@app.command("kernel-load")
def kernel_load(as_json: bool = typer.Option(False, "--json"),
                width: int = typer.Option(16, help="Chunk width of the artifacts."),
                device: str = typer.Option("cpu", help="cpu, cuda or auto: artifacts compiled for and loaded on it.")
                ) -> None:
    """Cold load of a compiled kernel artifact (store to first compiled call) and an LRU cache hit."""
    from esper_runtime.bench import kernel_load as bench_kernel_load

    console.print("[dim]bench kernel-load: compiling any missing artifacts first (seconds each), then timing...[/dim]")
    _report(_on_device(lambda: bench_kernel_load.run(width=width, device=device)), as_json)


@app.command()
def blend(as_json: bool = typer.Option(False, "--json"),
          device: str = typer.Option("cpu", help="cpu (the eager blend), cuda (the Triton kernel) or auto."),
          rows: int = typer.Option(0, help="Rows of the layer output (0: 16,384 on CUDA, 2,048 on CPU)."),
          features: int = typer.Option(4096, help="Features of the layer output."),
          chunk: int = typer.Option(64, help="Features per seed.")) -> None:
    """Achieved bandwidth of the seed blend (forward, and the backward on CUDA) against the device's copy bandwidth
    measured in the same run."""
    from esper_runtime.bench import blend as bench_blend

    console.print(f"[dim]bench blend: timing the blend and a copy on {device}...[/dim]")
    _report(_on_device(lambda: bench_blend.run(device=device, rows=rows or None, features=features, chunk=chunk)),
            as_json)


def _on_device(call) -> dict:
    """Run a bench that takes a device; a device this machine lacks is a clear error and exit status 2."""
    from esper_runtime.devices import DeviceUnavailable

    try:
        return call()
    except (DeviceUnavailable, ValueError) as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None


@app.command()
def disruption(as_json: bool = typer.Option(False, "--json"),
               nice: int = typer.Option(10, help="Niceness of the background compiler process.")) -> None:
    """Training-step max/median and p99/median while three blueprints compile in the background, against
    compiling them with torch.compile inside the loop."""
    from esper_runtime.bench import disruption as bench_disruption

    console.print("[dim]bench disruption: training while Tezzeret compiles three blueprints (tens of seconds)...[/dim]")
    _report(bench_disruption.run(nice=nice), as_json)


def _streaming(name: str, call, as_json: bool) -> None:
    try:
        result = call()
    except (EsperError, RuntimeError) as exc:  # the broker's absence, said with what to do about it
        raise EsperError(f"{exc} (is the broker up? `esper infra up`)") from exc
    _report(result, as_json)


@app.command()
def replay(as_json: bool = typer.Option(False, "--json"),
           runs: int = typer.Option(20, help="Synthetic runs on the log."),
           epochs: int = typer.Option(300, help="Epochs per run."),
           split: bool | None = typer.Option(None, "--split/--no-split",
                                             help="Count the counted topics in a forked process, or not (default: "
                                                  "as `esper replay` decides, by the log's size).")) -> None:
    """Fold runs back from the log (decode + RunView) against the processors' live state: events/s, state_matches."""
    from esper_runtime.bench import streaming

    console.print(f"[dim]bench replay: {runs} runs of {epochs} epochs on the log, materialized, folded back...[/dim]")
    _streaming("replay", lambda: streaming.replay(runs=runs, epochs=epochs, split=split), as_json)


@app.command()
def materialize(as_json: bool = typer.Option(False, "--json"),
                backlog: int = typer.Option(100_000, help="Transitions on the log before the app starts."),
                rate: int = typer.Option(5_000, help="Events/s offered live for the lag figure."),
                seconds: float = typer.Option(10.0, help="How long to offer them."),
                workers: int = typer.Option(1, min=1, max=8, help="Workers of one consumer group sharing the "
                                                                  "partitions.")) -> None:
    """The seed-state agent draining a backlog (events/s) and its end-to-end lag at a steady rate (p99 ms)."""
    from esper_runtime.bench import streaming

    console.print(f"[dim]bench materialize: {backlog:,} backlog, then {rate:,}/s for {seconds:.0f} s...[/dim]")
    _streaming("materialize", lambda: streaming.materialize(backlog=backlog, rate=rate, seconds=seconds,
                                                            workers=workers), as_json)


@app.command()
def telemetry(as_json: bool = typer.Option(False, "--json"),
              batches: int = typer.Option(40_000, help="SeedTelemetry events (32 rows each) on the log."),
              rows: int = typer.Option(10_000_000, help="Rows generated in chdb for the quantile queries."),
              sink_rounds: int = typer.Option(3, min=1, help="Times the sink drains the log (best round reported, as "
                                                             "its limit is the best of 3).")) -> None:
    """Rows/s from Kafka through decode into ClickHouse (the processors' sink), and quantiles over many rows."""
    from esper_runtime.bench import streaming

    console.print(f"[dim]bench telemetry: {batches:,} batches through the sink ({sink_rounds} rounds), quantiles over "
                  f"{rows:,} rows...[/dim]")
    _streaming("telemetry", lambda: streaming.telemetry(batches=batches, rows=rows, sink_rounds=sink_rounds), as_json)


@app.command("telemetry-overhead")
def telemetry_overhead(as_json: bool = typer.Option(False, "--json"),
                       rounds: int = typer.Option(30, help="Alternating rounds, at least."),
                       max_rounds: int = typer.Option(150, help="At most: rounds are added until the A/A spread is "
                                                                "under 0.01."),
                       steps: int = typer.Option(10, help="Training steps per epoch (fewer: the worst case)."),
                       linger_ms: int = typer.Option(None, help="The publisher's linger.ms (default: a run's, "
                                                                "ESPER_RUN_LINGER_MS).")) -> None:
    """Training-step time with per-epoch telemetry published to Kafka over the same model publishing nothing, with
    the A/A spread of the measurement beside the ratio."""
    from esper_runtime.bench import telemetry_overhead as bench_telemetry_overhead

    console.print("[dim]bench telemetry-overhead: two wrapped MLPs, one publishing its telemetry...[/dim]")
    _streaming("telemetry-overhead", lambda: bench_telemetry_overhead.run(rounds=rounds, steps=steps,
                                                                         max_rounds=max_rounds, linger_ms=linger_ms),
               as_json)


@app.command()
def policy(as_json: bool = typer.Option(False, "--json"),
           repeats: int = typer.Option(50, help="Decisions timed.")) -> None:
    """One learned-policy decision (observe, graph, HeteroGNN, both heads) on a model with 1,000 seeds."""
    from esper_runtime.bench import policy as bench_policy

    console.print("[dim]bench policy: a 10-layer MLP with 1,000 seeds...[/dim]")
    _report(bench_policy.run(repeats=repeats), as_json)
