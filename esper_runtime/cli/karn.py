"""``esper karn ...``: Karn, the architect — listening to field reports, and inventing designs (issue #17)."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from streams import Backbone

app = typer.Typer(no_args_is_help=True, help="Karn: the library's inventor and the field reports it learns from.")
console = Console(stderr=True)


@app.command("listen")
def listen(
    idle_timeout: float = typer.Option(0.0, help="Stop after this many idle seconds (0: run until Ctrl-C)."),
    dataset: Path = typer.Option(None, help="JSONL file (default: $ESPER_HOME/karn/field_reports.jsonl)."),
    group: str = typer.Option("karn"),
) -> None:
    """Run Karn's listener: log every FieldReport on innovation.field_reports to a dataset."""
    from esper_runtime.cli.library import _serve
    from esper_runtime.karn import KarnListener

    bb = Backbone()
    listener = KarnListener(dataset or bb.settings.home / "karn" / "field_reports.jsonl")
    _serve(bb, "innovation.field_reports", group, "karn",
           lambda consumer: listener.run(consumer, idle_timeout=idle_timeout or None))
    console.print(f"karn: logged {listener.logged} field reports to {listener.dataset}")


@app.command("evolve")
def evolve(
    generations: int = typer.Option(3, min=1, help="Generations to run."),
    per_generation: int = typer.Option(4, min=1, help="New designs per generation."),
    config: str = typer.Option(None, "--config", "-c", help="A run's YAML: designs are compiled and measured for its "
                               "seeds' shapes (default: the demo's)."),
    seed: int = typer.Option(0, help="Karn's random seed (operators, parents)."),
    field_seeds: int = typer.Option(0, min=0, help="Then the field stage: the run's grown host trained with Karn's "
                                    "designs offered and without, for this many random seeds each (0: skip)."),
    reward_model: bool = typer.Option(True, "--reward-model/--no-reward-model", help="Choose among candidates by "
                                      "the reward model's predicted Urabrask score (refitted from the log each "
                                      "generation, used only when it ranks held-out designs better than chance)."),
    generated: int = typer.Option(2, min=0, help="Designs per generation written by Karn's generator (a small "
                                  "Transformer trained on the human library, then by REINFORCE on the static checks "
                                  "and Urabrask's scores), beside the mutated ones (0: no generator)."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as one JSON object, last."),
) -> None:
    """Invent designs: mutate the best of Urza's library and write new ones with the generator, compile and
    measure them through Tezzeret and Urabrask, and report the curriculum's criteria (stage 0: the generator
    writes the library back; 1: children score above their parents; 2: the generator's new designs pass the
    static checks and are validated). Every design, compilation and measurement is on the log; Urza offers the
    validated ones to later runs."""
    from esper_runtime.cli.main import _progress
    from esper_runtime.karn.evolve import FIELD_ARMS, EvolveOptions, KarnError, evolve as run_evolve, field_trial
    from esper_runtime.run.pipeline import local_infrastructure

    prep = _prepared(config)
    echo = lambda m: console.print(f"[dim]{m}[/dim]", soft_wrap=True)  # noqa: E731
    with local_infrastructure(echo) as bb:
        report = run_evolve(bb, prep.shapes, EvolveOptions(generations=generations, per_generation=per_generation,
                                                           seed=seed, reward_model=reward_model,
                                                           generated=generated),
                            echo=echo, progress=_progress(console))
        if field_seeds and report["validated"]:
            report["field"] = field_trial(bb, prep, field_seeds, echo)
    s1 = report["stage1"]
    if report["submitted"]:
        mutated = "" if s1["children_mean_score"] is None else (
            f"; children's mean score {s1['children_mean_score']:.3f} vs parents' {s1['parents_mean_score']:.3f} "
            f"(stage 1 {'met' if s1['met'] else 'not met'})")
        console.print(f"karn: {report['validated']}/{report['submitted']} designs validated{mutated}; "
                      f"{report['seconds_per_design']} s a design")
    if report.get("stage0"):
        s0, s2 = report["stage0"], report["stage2"]
        console.print(f"generator: stage 0 writes back {s0['reconstruction_exact']:.0%} of the human library "
                      f"(held out: {s0['held_out']['exact']:.0%} exactly, {s0['held_out']['valid']:.0%} valid); "
                      f"stage 2: new designs passing the static checks {s2['checked_share_of_new']['first_rounds']} "
                      f"→ {s2['checked_share_of_new']['evaluations']} (evaluated), validated {s2['validated']}/{s2['submitted']} "
                      f"({'met' if s2['met'] else 'not met'})")
    if report["reward_model"].get("designs"):
        rm = report["reward_model"]
        console.print(f"reward model: predicted {rm['mean_predicted']:.3f} for the {rm['designs']} designs it chose, "
                      f"Urabrask gave {rm['mean_score']:.3f}; Kendall tau {rm['kendall_tau']}")
    if "field" in report:
        table = Table(f"field arm ({field_seeds} seeds)", "accuracy", "params", "vs people only (paired)",
                      "Karn's designs: fossilized / germinated", "people's designs: fossilized / germinated")
        for arm in FIELD_ARMS:
            a = report["field"][arm]
            table.add_row(arm, f"{a['accuracy_mean']:.3f} ± {a['accuracy_std']:.3f}",
                          f"{a['params_mean']:.0f} ± {a['params_std']:.0f}", f"{a['paired_difference_mean']:+.3f}",
                          f"{a['field']['karn']['fossilized']} / {a['field']['karn']['germinated']}",
                          f"{a['field']['people']['fossilized']} / {a['field']['people']['germinated']}")
        console.print(table)
    if as_json:
        print(json.dumps(report))
    if not report["validated"]:
        raise KarnError(f"no design Karn made in {generations} generations was validated by Urabrask "
                        f"({report['submitted']} submitted): nothing was added to the library")


@app.command("reward")
def reward(
    config: str = typer.Option(None, "--config", "-c", help="A run's YAML: designs are scored at its seeds' shapes "
                               "(default: the demo's)."),
    seed: int = typer.Option(0, help="Folds and model initialization."),
    save: bool = typer.Option(True, "--save/--no-save", help="Save the chosen models under $ESPER_HOME/karn/reward."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as one JSON object, last."),
) -> None:
    """Fit Karn's reward model on the log and judge it on designs held out: Urabrask's score from the IR, and the
    field reward from the IR and Urabrask's measurements; a random forest over graph features and a GNN over the
    IR graph, Kendall's tau of each. Exits 1 when neither target had enough designs for a model."""
    from esper_runtime.karn.reward import train_from_log

    bb = Backbone()
    try:
        directory = bb.settings.home / "karn" / "reward" if save else None
        report = train_from_log(bb, _prepared(config).shapes, directory, seed)
    finally:
        bb.close()
    table = Table("target", "designs (Karn's)", "forest: tau / MAE (5-fold)", "gnn: tau / MAE (5-fold)",
                  "forest / gnn: tau forward in time", "chosen")
    for target, r in report["targets"].items():
        models, forward = r.get("models", {}), r.get("forward_in_time", {})

        def cell(kind: str) -> str:
            m = models.get(kind)
            return "-" if m is None else f"{m['kendall_tau']} / {m['mae']}"

        table.add_row(target, f"{r['samples']} ({r['karn_samples']})", cell("forest"), cell("gnn"),
                      " / ".join(str(forward[k]["kendall_tau"]) for k in ("forest", "gnn")) if forward else "-",
                      r.get("chosen") or r.get("reason", "-"))
    console.print(table)
    console.print(f"log version {report['version']}")
    if as_json:
        print(json.dumps(report))
    if not any(r.get("models") for r in report["targets"].values()):
        raise typer.Exit(1)


def _prepared(config: str | None):
    """The run ``config`` names (default: the demo's), its data and model checked (``run.pipeline.prepare``)."""
    from esper_runtime.run.pipeline import prepare

    if config:
        from esper_runtime.run.config import load_run_config

        return prepare(load_run_config(config))
    from esper_runtime.demo.run import DemoOptions, demo_config

    return prepare(demo_config(DemoOptions(out=Path("out/demo"))))


@app.command("lineage")
def lineage(as_json: bool = typer.Option(False, "--json", help="Print the family tree as JSON.")) -> None:
    """Karn's designs with their parents, operators and Urabrask's verdict, folded from the log."""
    from esper_runtime.karn.lineage import family_tree, read_field_reports
    from esper_runtime.urza.library import load_view

    bb = Backbone()
    try:
        tree = family_tree(load_view(bb), read_field_reports(bb))
    finally:
        bb.close()
    if as_json:
        print(json.dumps(tree))
        return
    table = Table("design", "operator", "parents", "kernels validated", "risk (best)", "field: fossilized / germinated")
    for d in tree["designs"]:
        table.add_row(d["name"], d["mutation"], ", ".join(d["parent_names"]), f"{d['validated']}/{d['kernels']}",
                      "-" if d["best_risk"] is None else f"{d['best_risk']:.3f}",
                      f"{d['fossilized']}/{d['germinated']}")
    Console().print(table)
