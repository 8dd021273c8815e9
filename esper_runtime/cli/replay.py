"""``esper replay --run RUN_ID``: rebuild a run from the log and tell its story."""

from __future__ import annotations

import json
from datetime import datetime

import typer
from rich.console import Console

from streams import Backbone, EsperError

console = Console(stderr=True)


def replay(
    run: str = typer.Option(..., "--run", help="The run id (see summary.json, or `esper tail tolaria.run.events`)."),
    until_offset: int = typer.Option(None, help="Fold only records below this offset in every partition."),
    until_time: str = typer.Option(None, help="Fold only records up to this time (ISO 8601, e.g. 2026-11-26T01:00:00Z)."),
    verify: bool = typer.Option(False, "--verify", help="Compare with the live state the processors materialized "
                                "(state.kasmina.seeds, state.urza.library); exit 3 on any difference."),
    timeout: float = typer.Option(30.0, help="With --verify: seconds to wait for the processors to catch up."),
    as_json: bool = typer.Option(False, "--json", help="The folded state and the story as one JSON object."),
) -> None:
    """Fold the run's events from offset 0: every seed's state, epochs, outcomes, and who germinated what, when,
    why, with which kernel, and how it ended."""
    from views.folds import fold_run
    from views.live import verify as verify_live

    bounds = {}
    if until_offset is not None:
        bounds["until_offset"] = until_offset
    if until_time is not None:
        try:
            bounds["until_time_ms"] = int(datetime.fromisoformat(until_time.replace("Z", "+00:00")).timestamp() * 1000)
        except ValueError:
            raise typer.BadParameter(f"not an ISO 8601 time: {until_time!r}") from None
    if verify and bounds:
        raise typer.BadParameter("--verify compares the whole run with the live state: drop --until-offset/--until-time")
    bb = Backbone()
    try:
        view, undecodable = fold_run(bb, run, **bounds)
        if view.events == 0:
            raise EsperError(f"no events of run {run!r} on the log")
        differences = verify_live(bb, view, timeout=timeout) if verify else None
    finally:
        bb.close()
    if as_json:
        print(json.dumps({"state": view.summary(), "undecodable_records": undecodable, "story": view.story,
                          **({"verify": {"matches": not differences, "differences": differences}}
                             if verify else {})}))
    else:
        out = Console()
        for line in view.story:
            out.print(f"[dim]{line['at'][11:19]}[/dim] {line['text']}")
        s = view.summary()
        out.print(f"\n{s['events']} events: {s['seeds_germinated']} germinated, {s['seeds_fossilized']} fossilized, "
                  f"{s['seeds_culled']} culled; final val acc {s['final_accuracy']}, {s['final_params']} parameters")
        if undecodable:
            out.print(f"[yellow]{undecodable} records on these topics could not be decoded (see esper.deadletter)[/yellow]")
    if view.gaps:
        console.print(f"[red]gaps in the log:[/red] {'; '.join(view.gaps)}")
        raise typer.Exit(2)
    if verify:
        if differences:
            console.print(f"[red]replay and live state differ[/red] ({len(differences)}):")
            for line in differences[:50]:
                console.print(f"  {line}")
            if all("!= live absent" in d for d in differences):
                console.print("the live state holds none of it: is `esper processors` running on this log?")
            raise typer.Exit(3)
        console.print("[green]verify: the replay equals the live materialized state[/green]")
