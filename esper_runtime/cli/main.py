"""``esper``: the command users run. Each sub-command lives in its own module beside this one."""

from __future__ import annotations

import typer

from esper_runtime.cli import bench, infra, library, tail

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Esper: neural networks that grow while they train.")
app.add_typer(infra.app, name="infra")
app.add_typer(bench.app, name="bench")
app.command("tail")(tail.tail)
app.add_typer(library.blueprints_app, name="blueprints")
app.add_typer(library.kernels_app, name="kernels")
app.command("tezzeret")(library.tezzeret)
app.command("urabrask")(library.urabrask)


@app.command()
def demo(out: str = typer.Option("out/demo", help="Where summary.json and the report go.")) -> None:
    """The morphogenetic training run (issue #5): not built yet."""
    typer.echo(
        "esper demo: the morphogenetic training run is not built yet (it is issue #5).\n"
        "What runs today: `esper infra up`, `esper tail TOPIC`, `esper bench events --json`.",
        err=True,
    )
    raise typer.Exit(2)


if __name__ == "__main__":
    app()
