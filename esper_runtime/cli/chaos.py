"""``esper chaos``: fault scenarios on a three-node KRaft cluster of its own, at a length the tests cannot afford."""

from __future__ import annotations

import json

import typer
from rich.console import Console
from rich.table import Table

from streams import Backbone, load_settings

console = Console(stderr=True)


def chaos(events: int = typer.Option(100_000, help="Events published through the node kill."),
          kills: int = typer.Option(20, help="Processors' worker kills (0: skip the scenario)."),
          port: int = typer.Option(19600, help="The cluster's first broker port (nodes use port .. port+5)."),
          as_json: bool = typer.Option(False, "--json", help="One JSON object on the last line of stdout.")) -> None:
    """Start a 3-node cluster under $ESPER_HOME/chaos, SIGKILL its partition leader while events flow (nothing may be
    lost or doubled), kill one of two processors' workers at random points (the state must equal a replay each
    time), then two of its three nodes (a publish must fail loudly, then recover); stop it. Exit 1 when a scenario
    failed its check."""
    from esper_runtime.infra import LocalKafka
    from esper_runtime.infra.chaos import run_cluster_scenarios

    base = load_settings()
    settings = load_settings(home=base.home / "chaos", kafka_port=port, kafka_controller_port=port + 1,
                             kafka_brokers=3, kafka_bootstrap=None)
    kafka = LocalKafka(settings)
    echo = (lambda m: console.print(f"[dim]{m}[/dim]"))
    kafka.up(timeout=180, echo=echo)
    bb = Backbone(settings)
    try:
        bb.ensure_topics()
        results = run_cluster_scenarios(kafka, bb, events, kills=kills, echo=echo)
    finally:
        bb.close()
        kafka.down()
    table = Table("scenario", "ok", "figures")
    for r in results:
        figures = ", ".join(f"{k}={v}" for k, v in r.items() if k not in ("scenario", "ok", "error"))
        table.add_row(r["scenario"], "[green]yes[/green]" if r["ok"] else "[red]no[/red]", figures)
    console.print(table)
    if as_json:
        print(json.dumps({"scenarios": results, "ok": all(r["ok"] for r in results)}))
    raise typer.Exit(0 if all(r["ok"] for r in results) else 1)
