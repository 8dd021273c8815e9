"""``esper infra up|down|status``: the local Kafka broker, and the topics and schema catalog on it."""

from __future__ import annotations

import typer
from rich.console import Console

from streams import Backbone, load_settings
from esper_runtime.infra import LocalKafka, stop_recorded

app = typer.Typer(no_args_is_help=True, help="Local infrastructure: the Kafka broker and Esper's topics.")
console = Console(stderr=True)


@app.command()
def up(timeout: float = typer.Option(90.0, help="Seconds to wait for the broker to answer."),
       brokers: int = typer.Option(None, "--brokers", min=1, max=9,
                                   help="Nodes of the local cluster (3: topics replicated 3 times, "
                                        "min.insync.replicas 2). Remembered in ESPER_HOME for later commands.")) -> None:
    """Start the local broker if needed (or check ESPER_KAFKA_BOOTSTRAP), then create topics. Idempotent."""
    settings = load_settings(**({"kafka_brokers": brokers} if brokers else {}))
    status = LocalKafka(settings).up(timeout=timeout, echo=lambda m: console.print(f"[dim]{m}[/dim]"))
    bb = Backbone(settings)
    created = bb.ensure_topics()
    bb.close()
    where = ("external cluster" if not status.managed else
             "local broker" if len(status.nodes) == 1 else f"local cluster of {len(status.nodes)} nodes")
    console.print(f"[green]Kafka is up[/green] at {status.bootstrap} ({where}"
                  + (f", pid {status.pid})" if status.pid and len(status.nodes) == 1 else ")"))
    replicas = settings.topic_replication
    if replicas > 0:
        console.print(f"topics: {replicas} replica{'s' if replicas > 1 else ''}, min.insync.replicas "
                      f"{settings.topic_min_insync}")
    console.print(f"topics: {len(created)} created, {len(bb.registry.names()) - len(created)} already there")


@app.command()
def down() -> None:
    """Stop the processors' apps that `esper run` / `esper demo` started and left running (a run killed with
    SIGKILL), then the local broker (every node of the cluster) this checkout started, all by their PID files.
    Data stays under .esper/."""
    settings = load_settings()
    stop_recorded(settings, echo=console.print)
    stopped = LocalKafka(settings).down(echo=console.print)
    console.print("stopped the local broker" if stopped else "no local broker was running")


@app.command()
def status(as_json: bool = typer.Option(False, "--json", help="One JSON object on stdout.")) -> None:
    """Say whether the broker runs and answers: each node, the controller, under-replicated partitions. Exit 0
    when the cluster answers."""
    st = LocalKafka(load_settings()).status()
    if as_json:
        import dataclasses
        import json

        print(json.dumps(dataclasses.asdict(st)))
        raise typer.Exit(0 if st.reachable else 1)
    state = "[green]up[/green]" if st.reachable else ("[yellow]starting or stuck[/yellow]" if st.running else "[red]down[/red]")
    console.print(f"Kafka {state} at {st.bootstrap}" + (f" (pid {st.pid})" if st.pid and len(st.nodes) == 1 else "")
                  + f" — {st.detail}")
    if len(st.nodes) > 1 or st.under_replicated:
        from rich.table import Table

        table = Table("node", "address", "pid", "in the cluster", "controller")
        for n in st.nodes:
            table.add_row(str(n.node_id), n.address, str(n.pid or "-"), "yes" if n.in_cluster else "[red]no[/red]",
                          "yes" if st.controller == n.node_id else "")
        console.print(table)
    if st.under_replicated is not None:
        console.print(f"under-replicated partitions: {st.under_replicated}")
    raise typer.Exit(0 if st.reachable else 1)
