"""``esper simic``: train Tamiyo's policy from the experience on the log."""

from __future__ import annotations

import json

import typer
from rich.console import Console

from streams import Backbone

console = Console(stderr=True)
app = typer.Typer(no_args_is_help=True, help="Simic: Tamiyo's policy trained from logged decisions and outcomes.")


@app.command()
def train(epochs: int = typer.Option(40, help="Passes over the training examples."),
          teacher: str = typer.Option("heuristic-v1", help="Whose germination decisions to imitate."),
          rl_epochs: int = typer.Option(0, help="Then fine-tune on the logged C.4.1 rewards (offline policy "
                                                "gradient with a trust region) for this many passes.")) -> None:
    """Imitation: read every germination the teacher decided (with that epoch's telemetry and the kernels it
    weighed) from the log, train the GNN policy, evaluate on held-out runs, save a versioned checkpoint and make it
    the LATEST one. Prints the metrics as JSON on the last line."""
    from esper_runtime.simic.train import train_from_log

    bb = Backbone()
    try:
        result = train_from_log(bb, epochs=epochs, teacher=teacher, rl_epochs=rl_epochs,
                                echo=lambda m: console.print(f"[dim]{m}[/dim]"))
    finally:
        bb.close()
    console.print(f"policy saved to {result.directory}")
    print(json.dumps(result.metrics))
