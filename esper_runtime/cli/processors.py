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
    app_id: str = typer.Option(None, "--app-id", help="The consumer group (default <prefix>esper-processors). "
                               "Workers started with the same id and agents share the partitions: run "
                               "seed-state,distributions in as many as you like; urza and telemetry-sink in one."),
    rebuild: bool = typer.Option(False, "--rebuild", help="First fold the state again from the log: delete the "
                                 "state topics of these agents and the group's committed offsets (no worker of "
                                 "the group may be running), then run."),
    rebuild_stale: bool = typer.Option(False, "--rebuild-stale", help="--rebuild only if a state topic was laid out "
                                       "by an older Esper (what `esper demo` and `esper run` start them with)."),
) -> None:
    """Run the processors' app until SIGTERM or Ctrl-C: seed state -> state.kasmina.seeds, Urza ->
    state.urza.library, Urabrask's peers -> state.urabrask.distributions, telemetry -> ClickHouse (this process
    owns the embedded store and serves `esper sql` while it runs)."""
    from processors.app import AGENTS, Processors

    chosen = tuple(a.strip() for a in agents.split(",") if a.strip())
    unknown = set(chosen) - set(AGENTS)
    if unknown:
        raise typer.BadParameter(f"unknown agents {sorted(unknown)}; choose from {', '.join(AGENTS)}")
    procs = Processors(agents=chosen, web_port=port, app_id=app_id)
    if rebuild_stale and not rebuild:
        rebuild = procs.stale()
    if rebuild:
        console.print(f"rebuilding: {', '.join(procs.rebuild())} deleted; the state is folded again from the log")
    console.print(f"processors {procs.app_id}: {', '.join(chosen)}; status at "
                  f"http://127.0.0.1:{procs.web_port}/esper/status/")
    procs.run(loglevel=loglevel)
