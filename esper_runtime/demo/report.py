"""The demo's readable report: report.md with two plots (accuracy per epoch with lifecycle events; parameters)."""

from __future__ import annotations

from pathlib import Path

__all__ = ["write_report"]


def _plots(out: Path, runs: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    primary = runs[0]
    epochs = [e["epoch"] for e in primary["history"].epochs]
    fig, ax = plt.subplots(figsize=(9, 4.5))
    ax.plot(epochs, [e["val_accuracy"] for e in primary["history"].epochs], label="grown host (Esper)", lw=2)
    ax.plot(range(1, len(primary["frozen_curve"]) + 1), primary["frozen_curve"], label="frozen host (no growth)")
    ax.plot(range(1, len(primary["large_curve"]) + 1), primary["large_curve"], label="static large model", alpha=0.7)
    colors = {"FOSSILIZED": "green", "CULLED": "red", "ROLLED_BACK": "black"}
    for item in primary["tamiyo"].lineage:
        ax.axvline(item["germinated_epoch"], color="grey", ls=":", lw=0.8)
        ax.axvline(item["ended_epoch"], color=colors.get(item["outcome"], "grey"), ls="--", lw=0.8)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation accuracy")
    ax.set_title("two spirals: validation accuracy (dotted: germination; dashed: fossilized green / culled red)")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(out / "accuracy.png", dpi=110)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(9, 3.5))
    ax.step(epochs, [e["params"] for e in primary["history"].epochs], where="post", label="grown host")
    ax.axhline(primary["host_params"], color="grey", ls=":", label="frozen host")
    ax.axhline(primary["large_params"], color="orange", ls="--", label="static large model")
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("parameters")
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(out / "parameters.png", dpi=110)
    plt.close(fig)


def write_report(out: Path, summary: dict, runs: list[dict]) -> None:
    _plots(out, runs)
    o = summary["over_seeds"]

    def ms(key):
        return f"{o[key]['mean']:.3f} ± {o[key]['std']:.3f}"

    lines = [
        f"# Esper demo: two spirals, {summary['epochs']} epochs, {summary['random_seeds']} random seeds",
        "",
        "| model | parameters (end) | validation accuracy, last epoch (mean ± std over seeds) |",
        "|---|---|---|",
        f"| grown host (Esper) | {o['final_params']['mean']:.0f} | {ms('final_accuracy')} |",
        f"| frozen host (no growth) | {summary['host_params']} | {ms('baseline_accuracy')} |",
        f"| static large model | {summary['large_baseline_params']} | {ms('large_baseline_accuracy')} |",
        "",
        "All three train with the same optimizer (Adam), cosine schedule, batch size, epochs and split; a seed's",
        "child gets a cosine schedule of its own from the epoch it is grafted. Accuracy is the last epoch's on",
        "the held-out 20%, not the best epoch.",
        "",
        f"Primary run `{summary['run_id']}`: {summary['seeds_germinated']} germinations, "
        f"{summary['seeds_fossilized']} fossilized, {summary['seeds_culled']} culled; "
        f"{summary['events_published']} events on the broker; folding them back "
        f"{'matches' if summary['replay_matches'] else 'does NOT match'} the live state.",
        "",
        "![accuracy](accuracy.png)",
        "",
        "![parameters](parameters.png)",
        "",
        "## Lineage of the primary run",
        "",
        "| layer | seed | blueprint | germinated | ended | outcome | val acc before → after | reward |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for item in runs[0]["tamiyo"].lineage:
        lines.append(f"| {item['layer']} | {item['seed']} | {item['blueprint']} | {item['germinated_epoch']} | "
                     f"{item['ended_epoch']} | {item['outcome']} | {item['pre_val_accuracy']:.3f} → "
                     f"{item['post_val_accuracy']:.3f} | {item['reward']:.2f} |")
    (out / "report.md").write_text("\n".join(lines) + "\n")
