"""``esper infra up|down|status``: the local Kafka broker, and the topics and schema catalog on it."""

from __future__ import annotations

import typer
from rich.console import Console

from streams import Backbone, load_settings
from esper_runtime.infra import LocalKafka

app = typer.Typer(no_args_is_help=True, help="Local infrastructure: the Kafka broker and Esper's topics.")
console = Console(stderr=True)


@app.command()
def up(timeout: float = typer.Option(90.0, help="Seconds to wait for the broker to answer.")) -> None:
    """Start the local broker if needed (or check ESPER_KAFKA_BOOTSTRAP), then create topics. Idempotent."""
    settings = load_settings()
    status = LocalKafka(settings).up(timeout=timeout, echo=lambda m: console.print(f"[dim]{m}[/dim]"))
    bb = Backbone(settings)
    created = bb.ensure_topics()
    bb.close()
    where = "local broker" if status.managed else "external cluster"
    console.print(f"[green]Kafka is up[/green] at {status.bootstrap} ({where}"
                  + (f", pid {status.pid})" if status.pid else ")"))
    console.print(f"topics: {len(created)} created, {len(bb.registry.names()) - len(created)} already there")


@app.command()
def down() -> None:
    """Stop the local broker this checkout started (by its PID file). Data stays under .esper/."""
    stopped = LocalKafka(load_settings()).down(echo=console.print)
    console.print("stopped the local broker" if stopped else "no local broker was running")


@app.command()
def status() -> None:
    """Say whether the broker runs and answers."""
    st = LocalKafka(load_settings()).status()
    state = "[green]up[/green]" if st.reachable else ("[yellow]starting or stuck[/yellow]" if st.running else "[red]down[/red]")
    console.print(f"Kafka {state} at {st.bootstrap}" + (f" (pid {st.pid})" if st.pid else "") + f" — {st.detail}")
    raise typer.Exit(0 if st.reachable else 1)
