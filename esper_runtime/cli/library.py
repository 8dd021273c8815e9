"""``esper blueprints ...``, ``esper kernels query`` and ``esper tezzeret``: the innovation plane from the shell."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from streams import Backbone, EsperError
from streams.exceptions import ConfigError

blueprints_app = typer.Typer(no_args_is_help=True, help="The blueprint library (Urza), folded from the log.")
kernels_app = typer.Typer(no_args_is_help=True, help="Compiled kernel artifacts in Urza.")
console = Console(stderr=True)


def _view(bb: Backbone):
    from esper_runtime.urza.library import load_view

    return load_view(bb)


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise typer.BadParameter(f"expected comma-separated integers, got {text!r}") from None


@blueprints_app.command("submit")
def submit(
    files: list[Path] = typer.Argument(None, help="BlueprintIR JSON files."),
    starter: bool = typer.Option(False, "--starter", help="Submit the starter library."),
    widths: str = typer.Option("", help="Chunk widths to compile for, e.g. 8,16 (default: the compiler's)."),
    pipelines: str = typer.Option("", help="Pipelines, e.g. fast,standard (default: the compiler's)."),
) -> None:
    """Publish BlueprintSubmitted events; a Tezzeret worker validates and compiles them."""
    from esper_runtime.blueprints import Blueprint, BlueprintInvalid, starter_blueprints
    from esper_runtime.urza.library import submit_blueprint
    from streams.envelope import EnvelopeFactory

    bps = list(starter_blueprints()) if starter else []
    for path in files or []:
        try:
            bps.append(Blueprint.parse(path.read_text()))
        except (OSError, BlueprintInvalid) as exc:
            raise ConfigError(f"{path}: {exc}") from None
    if not bps:
        console.print("nothing to submit: give files or --starter")
        raise typer.Exit(1)
    bb = Backbone()
    envelopes = EnvelopeFactory(f"submit-{uuid.uuid4().hex[:8]}", "esper-cli")
    with bb.publisher() as pub:
        for bp in bps:
            submit_blueprint(pub, envelopes, bp, "esper-cli", _ints(widths),
                             tuple(p for p in pipelines.split(",") if p))
    bb.close()
    console.print(f"submitted {len(bps)} blueprint(s)")


@blueprints_app.command("list")
def list_blueprints(as_json: bool = typer.Option(False, "--json")) -> None:
    """Every blueprint on the log, with its status and artifacts."""
    bb = Backbone()
    view = _view(bb)
    bb.close()
    rows = sorted(view.blueprints.values(), key=lambda b: b.name)
    if as_json:
        print(json.dumps([b.to_dict() | {"ir": None} for b in rows]))
        return
    table = Table(title=f"{len(rows)} blueprints")
    for col in ("id", "name", "status", "artifacts", "validated", "tags"):
        table.add_column(col)
    for b in rows:
        validated = sum(1 for a in b.artifacts if view.kernels.get(a) and view.kernels[a].status == "VALIDATED")
        table.add_row(b.blueprint_id[:12], b.name, b.status if not b.rejection else f"REJECTED ({b.rejection[:40]})",
                      str(len(b.artifacts)), str(validated), ",".join(b.tags))
    Console().print(table)


@blueprints_app.command("show")
def show(blueprint_id: str = typer.Argument(..., help="Id, unambiguous id prefix, or name."),
         as_json: bool = typer.Option(False, "--json")) -> None:
    """One blueprint: its IR, status and every artifact compiled from it."""
    bb = Backbone()
    view = _view(bb)
    bb.close()
    bp = view.blueprint(blueprint_id)
    if bp is None:
        raise EsperError(f"no blueprint {blueprint_id!r}")
    record = bp.to_dict() | {"kernels": [view.kernels[a].to_dict() for a in bp.artifacts if a in view.kernels]}
    print(json.dumps(record, indent=None if as_json else 2, default=str))


@kernels_app.command("query")
def query(
    tags: str = typer.Option("", help="Comma-separated tags every result must carry."),
    width: int = typer.Option(None, help="Chunk width the kernel must be built for."),
    hardware: str = typer.Option(None),
    status: str = typer.Option("VALIDATED", help="VALIDATED (default), COMPILED, REJECTED..."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """KernelQuery -> KernelQueryResult: artifacts matching every tag, lowest risk first."""
    bb = Backbone()
    view = _view(bb)
    bb.close()
    found = view.query([t for t in tags.split(",") if t], hardware=hardware, features=width, status=status)
    if as_json:
        print(json.dumps({"kernels": [k.to_dict() for k in found]}, default=str))
        return
    table = Table(title=f"{len(found)} kernels")
    for col in ("artifact", "blueprint", "width", "pipeline", "status", "tags", "risk"):
        table.add_column(col)
    for k in found:
        bp = view.blueprints.get(k.blueprint_id)
        table.add_row(k.artifact_id, bp.name if bp else k.blueprint_id[:12], str(k.features), k.pipeline, k.status,
                      ",".join(k.tags), "" if k.risk_score is None else f"{k.risk_score:.2f}")
    Console().print(table)


def _serve(bb: Backbone, topic: str, group: str, name: str, work) -> None:
    """Run ``work(consumer)`` as a consumer-group worker on ``topic`` until it returns or Ctrl-C; always close.
    The worker's own log lines (each compilation, each measurement) go to stderr with a timestamp."""
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        consumer = bb.consumer([bb.resolve_topic(topic)], group_id=group, name=name)
    except EsperError:
        bb.close()
        raise
    console.print(f"{name}: consuming {bb.resolve_topic(topic)} as group {group!r}")
    try:
        work(consumer)
    except KeyboardInterrupt:
        pass
    finally:
        consumer.close()
        bb.close()


def tezzeret(
    idle_timeout: float = typer.Option(0.0, help="Stop after this many idle seconds (0: run until Ctrl-C)."),
    widths: str = typer.Option("8,16,32", help="Default chunk widths."),
    pipelines: str = typer.Option("fast", help="Default pipelines."),
    group: str = typer.Option("tezzeret", help="Consumer group: run more workers with the same group to scale."),
    nice: int = typer.Option(10, help="Lower this worker's CPU priority so training on the same machine comes first."),
    device: str = typer.Option("cpu", help="Compile for cpu, cuda or auto (cuda when present); artifacts are "
                               "labelled with the hardware they were built for."),
) -> None:
    """Run a Tezzeret worker: compile submitted blueprints into kernel artifacts (outside any training process)."""
    import os

    from esper_runtime.tezzeret.worker import TezzeretWorker
    from esper_runtime.urza.store import ArtifactStore

    if nice:
        os.nice(nice)
    bb = Backbone()
    from esper_runtime.devices import DeviceUnavailable

    try:
        worker = TezzeretWorker(bb.publisher(), ArtifactStore(bb.settings.artifacts), widths=_ints(widths),
                                pipelines=tuple(p for p in pipelines.split(",") if p), device=device)
    except (DeviceUnavailable, ValueError) as exc:
        console.print(f"[red]tezzeret: {exc}[/red]")
        raise typer.Exit(2) from None
    _serve(bb, "urza.blueprints.events", group, "tezzeret",
           lambda consumer: worker.run(consumer, idle_timeout=idle_timeout or None))
    stats = worker.stats
    console.print(f"tezzeret ({worker.hardware}): compiled {stats.compiled}, cached {stats.cached}, failed {stats.failed}, "
                  f"rejected {stats.rejected}")


def urabrask(
    idle_timeout: float = typer.Option(0.0, help="Stop after this many idle seconds (0: run until Ctrl-C)."),
    group: str = typer.Option("urabrask", help="Consumer group: more workers with the same group share the work."),
) -> None:
    """Run an Urabrask worker: measure each compiled kernel in a sandbox process, tag it, validate or reject it."""
    from esper_runtime.urabrask.tagging import distributions_from_state, distributions_from_view
    from esper_runtime.urabrask.worker import UrabraskWorker
    from esper_runtime.urza.store import ArtifactStore
    from streams.state import read_state_topic
    from views.live import processors_running

    bb = Backbone()
    dist, known = distributions_from_view(_view(bb))
    if processors_running(bb.settings):  # the distribution keeper's peers (the same kernels, kept live)
        dist = distributions_from_state(read_state_topic(bb, "state.urabrask.distributions"))
    worker = UrabraskWorker(bb.publisher(), ArtifactStore(bb.settings.artifacts), dist, known)
    console.print(f"urabrask: {len(known)} kernels already measured")
    _serve(bb, "tezzeret.kernels.events", group, "urabrask",
           lambda consumer: worker.run(consumer, idle_timeout=idle_timeout or None))
    stats = worker.stats
    console.print(f"urabrask: validated {stats.validated}, rejected {stats.rejected}, skipped {stats.skipped}")
