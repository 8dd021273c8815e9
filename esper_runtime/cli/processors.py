"""``esper processors``: the stream processors (faust-streaming) that materialize state and sink telemetry."""

from __future__ import annotations

import typer
from rich.console import Console


console = Console(stderr=True)


def processors(
    agents: str = typer.Option("seed-state,urza,distributions,telemetry-sink",
                               help="Which agents to run (comma-separated)."),
    port: int = typer.Option(None, help="Web port on 127.0.0.1 for /esper/status/ and SQL (default "
                                        "ESPER_PROCESSORS_PORT or 6066)."),
    loglevel: str = typer.Option("warning", help="faust's log level."),
) -> None:
    """Run the processors' app until SIGTERM or Ctrl-C: seed state -> state.kasmina.seeds, Urza ->
    state.urza.library, Urabrask's peers -> state.urabrask.distributions, telemetry -> ClickHouse (this process
    owns the embedded store and serves `esper sql` while it runs)."""
    from processors.app import AGENTS, Processors

    chosen = tuple(a.strip() for a in agents.split(",") if a.strip())
    unknown = set(chosen) - set(AGENTS)
    if unknown:
        raise typer.BadParameter(f"unknown agents {sorted(unknown)}; choose from {', '.join(AGENTS)}")
    procs = Processors(agents=chosen, web_port=port)
    console.print(f"processors {procs.app_id}: {', '.join(chosen)}; status at "
                  f"http://127.0.0.1:{procs.web_port}/esper/status/")
    procs.run(loglevel=loglevel)
