"""A run's readable report: report.md with two plots (the metric per epoch with lifecycle events; parameters)."""

from __future__ import annotations

from pathlib import Path

__all__ = ["write_report"]


def _plots(out: Path, summary: dict, runs: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    primary = runs[0]
    metric = "validation R^2" if summary["metric"] == "r2" else "validation accuracy"
    epochs = [e["epoch"] for e in primary["history"].epochs]
    fig, ax = plt.subplots(figsize=(9, 4.5))
    ax.plot(epochs, [e["val_accuracy"] for e in primary["history"].epochs], label="grown host (Esper)", lw=2)
    for key, label, style in (("frozen", "frozen host (no growth)", {}), ("large", "static large model",
                                                                          {"alpha": 0.7})):
        if primary[key]:
            curve = primary[key]["curve"]
            ax.plot(range(1, len(curve) + 1), curve, label=label, **style)
    colors = {"FOSSILIZED": "green", "CULLED": "red", "ROLLED_BACK": "black"}
    for item in primary["tamiyo"].lineage:
        ax.axvline(item["germinated_epoch"], color="grey", ls=":", lw=0.8)
        ax.axvline(item["ended_epoch"], color=colors.get(item["outcome"], "grey"), ls="--", lw=0.8)
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric)
    ax.set_title(f"{summary['task']}: {metric} (dotted: germination; dashed: fossilized green / culled red)")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(out / "accuracy.png", dpi=110)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(9, 3.5))
    ax.step(epochs, [e["params"] for e in primary["history"].epochs], where="post", label="grown host")
    ax.axhline(primary["host_params"], color="grey", ls=":", label="frozen host")
    if primary["large"]:
        ax.axhline(primary["large"]["params"], color="orange", ls="--", label="static large model")
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("parameters")
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(out / "parameters.png", dpi=110)
    plt.close(fig)


def write_report(out: Path, summary: dict, runs: list[dict]) -> None:
    _plots(out, summary, runs)
    o = summary["over_seeds"]
    metric = "validation R^2" if summary["metric"] == "r2" else "validation accuracy"

    def ms(key):
        return "—" if o[key] is None else f"{o[key]['mean']:.3f} ± {o[key]['std']:.3f}"

    lines = [
        f"# Esper: {summary['task']}, {summary['epochs']} epochs, {summary['random_seeds']} random seed(s)",
        "",
        f"Data: {summary['data']}. Device: {summary['device']}. Kernels in Urza per chunk width: "
        + ", ".join(f"{w}: {n}" for w, n in summary["kernels_available"].items()) + ".",
        "",
        f"| model | parameters (end) | {metric}, last epoch (mean ± std over seeds) |",
        "|---|---|---|",
        f"| grown host (Esper) | {o['final_params']['mean']:.0f} | {ms('final_accuracy')} |",
    ]
    if o["baseline_accuracy"]:
        lines.append(f"| frozen host (no growth) | {summary['host_params']} | {ms('baseline_accuracy')} |")
    if o["large_baseline_accuracy"]:
        lines.append(f"| static large model | {summary['large_baseline_params']} | {ms('large_baseline_accuracy')} |")
    lines += [
        "",
        "Every model trains with the same optimizer (Adam), cosine schedule, batch size, epochs and split; a seed's",
        "child gets a cosine schedule of its own from the epoch it is grafted. The figure is the last epoch's on",
        "the validation split, not the best epoch.",
        *[f"\n{note}" for note in summary["notes"]],
        "",
        f"Primary run `{summary['run_id']}`: {summary['seeds_germinated']} germinations, "
        f"{summary['seeds_fossilized']} fossilized, {summary['seeds_culled']} culled; "
        f"{summary['events_published']} events on the broker; folding them back "
        f"{'matches' if summary['replay_matches'] else 'does NOT match'} the live state.",
    ]
    for run_id, why in summary["no_growth"].items():
        lines += ["", f"**Nothing grew in `{run_id}`**: {why}."]
    lines += [
        "",
        "![accuracy](accuracy.png)",
        "",
        "![parameters](parameters.png)",
        "",
        "## Lineage of the primary run",
        "",
        f"| layer | seed | blueprint | germinated | ended | outcome | {metric} before → after | reward |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for item in runs[0]["tamiyo"].lineage:
        lines.append(f"| {item['layer']} | {item['seed']} | {item['blueprint']} | {item['germinated_epoch']} | "
                     f"{item['ended_epoch']} | {item['outcome']} | {item['pre_val_accuracy']:.3f} → "
                     f"{item['post_val_accuracy']:.3f} | {item['reward']:.2f} |")
    lines += ["", "Every number here is on the log: `esper replay --run RUN_ID` tells the story, and",
              "`esper sql \"SELECT run_id, max(epoch), argMax(val_accuracy, epoch) FROM esper.epochs FINAL "
              "GROUP BY run_id\"` gives the last epoch of each run."]
    (out / "report.md").write_text("\n".join(lines) + "\n")
