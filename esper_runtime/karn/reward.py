"""Karn's reward model (appendix D.2.2): how well a design will do, predicted from its IR graph.

Two targets, both read from the log:

- ``urabrask``: Urabrask's score of a design over the run's shapes (``evolve.design_score``: the mean of
  ``1 - risk_score`` of its best VALIDATED kernel, 0 where it has none), predicted from the IR alone — before a
  design is compiled, so Karn can spend its compilations on the candidates most likely to pass;
- ``field``: the mean ``FieldReport.reward`` of a design over every adaptation that grafted it, predicted from the
  IR and Urabrask's measurements of its kernels (latency, memory, risk, parameters).

Two models are fitted on the same samples and judged the same way, on designs held out, by Kendall's tau between
prediction and truth: k-fold (each design predicted by a model that never saw it; this chooses the model), and
forward in time (fitted on the first two thirds of the designs in log order, judged on the last third: Karn's own
situation, predicting a new generation from the ones before):

- ``forest``: a random forest over hand-made graph features (op counts, inputs read, depth, fan-in, parameters) —
  the "graph features" baseline that often beats graph networks on little data (Kadlecová et al. 2024);
- ``gnn``: a graph isomorphism network (torch-geometric ``GINConv``) over the IR graph (a node per input and op,
  an edge per data flow), its pooled embedding joined with the same features (Lukasik et al. 2020 ask for
  hundreds of designs; the report says how many there were).

A model is versioned by the log positions it read (the end offset of every partition of the topics it folded);
the GNN's checkpoint is a state dict saved with ``torch.save`` beside a JSON card, loaded with
``weights_only=True``. Nothing else persists: ``esper karn evolve`` refits from the log each generation.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import random
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from esper_runtime.blueprints.ir import WIDE_INPUTS, Blueprint
from esper_runtime.blueprints.ops import OPS
from esper_runtime.karn.exceptions import KarnError
from esper_runtime.simic.dataset import log_version

__all__ = ["TARGETS", "Sample", "graph_features", "design_graph", "urabrask_samples", "field_samples",
           "ForestModel", "GraphModel", "Fitted", "cross_validate", "forward_in_time", "kendall_tau", "fit_best",
           "save_model", "load_model", "read_samples", "train_from_log"]

TARGETS = ("urabrask", "field")
OP_VOCAB = tuple(sorted(OPS))
INPUTS = ("x", *sorted(WIDE_INPUTS))  # x: the chunk; u, x0: the wide inputs
NODE_VOCAB = INPUTS + OP_VOCAB
PROBE_F, PROBE_D = 16, 64  # the widths a design's parameters are counted at
METRICS = ("log_latency_ms", "log_memory_mb", "risk", "log_params")
MIN_SAMPLES = 8  # fewer designs than this and no model is fitted: the report says so


@dataclass
class Sample:
    blueprint_id: str
    name: str
    doc: dict[str, Any]
    target: float
    metrics: list[float] = field(default_factory=list)
    karn: bool = False


# ---------------------------------------------------------------------------------------------- features
def _depth(doc: dict[str, Any]) -> int:
    """Longest path, in ops, from an input to the output."""
    depth: dict[str, int] = {name: 0 for name in INPUTS}
    for node in doc["nodes"]:  # validated IR is in topological order
        depth[node["id"]] = 1 + max((depth.get(s, 0) for s in node.get("inputs") or []), default=0)
    return depth.get(doc.get("output"), 0)


def _node_params(doc: dict[str, Any]) -> dict[str, int]:
    """Parameters of each op at the probe widths (0 where the design does not instantiate there)."""
    from esper_runtime.blueprints.validate import _widths

    try:
        bp = Blueprint.parse(doc)
        ir = bp.instantiate(PROBE_F, PROBE_D if bp.reads_input else None)
        widths = _widths(ir)
        return {n["id"]: OPS[n["op"]].params([widths[s] for s in n["inputs"]], n.get("attrs", {}))
                for n in ir.doc["nodes"]}
    except Exception:  # noqa: BLE001 - a design that does not instantiate has no parameter counts to give
        return {}


def graph_features(doc: dict[str, Any]) -> list[float]:
    """A fixed-length description of a design: per op its count, which inputs it reads, nodes, edges, depth,
    two-input ops, zero-initialized ops, and log parameters at F=16 (D=64)."""
    nodes = doc["nodes"]
    ops = [n["op"] for n in nodes]
    sources = [s for n in nodes for s in n.get("inputs") or []]
    params = sum(_node_params(doc).values())
    return ([float(ops.count(op)) for op in OP_VOCAB]
            + [float(name in sources) for name in INPUTS[1:]]
            + [float(len(nodes)), float(len(sources)), float(_depth(doc)),
               float(sum(1 for n in nodes if len(n.get("inputs") or []) > 1)),
               float(sum(1 for n in nodes if (n.get("attrs") or {}).get("init") == "zeros")),
               math.log1p(params)])


def design_graph(doc: dict[str, Any]):
    """The IR as a ``torch_geometric.data.Data``: one node per input read and per op (one-hot kind, log
    parameters, whether it is the output, whether it starts at zero), one edge per data flow."""
    from torch_geometric.data import Data

    params = _node_params(doc)
    used = [name for name in INPUTS if any(name in (n.get("inputs") or []) for n in doc["nodes"])]
    index = {name: i for i, name in enumerate(used)}
    rows = []
    for name in used:
        rows.append(_node_row(name, 0, False, False))
    for node in doc["nodes"]:
        index[node["id"]] = len(rows)
        rows.append(_node_row(node["op"], params.get(node["id"], 0), node["id"] == doc.get("output"),
                              (node.get("attrs") or {}).get("init") == "zeros"))
    edges = [(index[s], index[n["id"]]) for n in doc["nodes"] for s in n.get("inputs") or [] if s in index]
    edge_index = (torch.tensor(edges, dtype=torch.long).t().contiguous() if edges
                  else torch.zeros(2, 0, dtype=torch.long))
    return Data(x=torch.tensor(rows, dtype=torch.float32), edge_index=edge_index)


def _node_row(kind: str, params: int, output: bool, zeros: bool) -> list[float]:
    return [float(kind == k) for k in NODE_VOCAB] + [math.log1p(params) / 10.0, float(output), float(zeros)]


# ---------------------------------------------------------------------------------------------- datasets
def urabrask_samples(view, shapes) -> list[Sample]:
    """Every design with an IR that Urabrask has settled at the shapes, in log order: its score is the target."""
    from esper_runtime.blueprints.ir import reads_input
    from esper_runtime.karn.evolve import design_score

    out = []
    for rec in view.blueprints.values():  # in log order (the order of their first event)
        if not rec.ir or "nodes" not in rec.ir:
            continue
        if rec.status == "REJECTED":
            score = 0.0  # refused before compiling: the static checks of today would refuse it too
        else:
            score = design_score(view, rec.blueprint_id, shapes, reads_input(rec.ir))
        if score is not None:
            out.append(Sample(rec.blueprint_id, rec.name, rec.ir, float(score), karn=bool(rec.mutation)))
    return out


def _metrics(view, bid: str) -> list[float] | None:
    """Urabrask's measurements of a design's validated kernels, averaged (None when it has none)."""
    reports = [(k.report or {}, k.risk_score) for k in view.kernels.values()
               if k.blueprint_id == bid and k.status == "VALIDATED" and k.report]
    if not reports:
        return None

    def mean(values) -> float:
        values = [v for v in values if v is not None]
        return statistics.fmean(values) if values else 0.0

    return [mean(math.log(max(r.get("latency_ms_mean", 0.0), 1e-6)) for r, _ in reports),
            mean(math.log(max(r.get("memory_mb_peak", 0.0), 1e-6)) for r, _ in reports),
            mean(risk for _, risk in reports),
            mean(math.log1p(r.get("params", 0)) for r, _ in reports)]


def field_samples(view, reports: Sequence[dict[str, Any]]) -> list[Sample]:
    """Every design some run grafted: the mean reward of its field reports is the target; Urabrask's
    measurements of its kernels join the IR's features."""
    rewards: dict[str, list[float]] = {}
    for r in reports:
        if r.get("reward") is not None:
            rewards.setdefault(r["blueprint_id"], []).append(float(r["reward"]))
    out = []
    for bid in rewards:  # in the order of their first report on the log
        rec = view.blueprints.get(bid)
        metrics = _metrics(view, bid)
        if rec is None or not rec.ir or "nodes" not in rec.ir or metrics is None:
            continue
        out.append(Sample(bid, rec.name, rec.ir, statistics.fmean(rewards[bid]), metrics, bool(rec.mutation)))
    return out


# ---------------------------------------------------------------------------------------------- models
class ForestModel:
    """A random forest over ``graph_features`` (and the metrics, where the samples have them)."""

    kind = "forest"

    def __init__(self, seed: int = 0):
        self.seed = seed
        self._model = None

    def fit(self, samples: Sequence[Sample]) -> "ForestModel":
        from sklearn.ensemble import RandomForestRegressor

        self._model = RandomForestRegressor(n_estimators=200, min_samples_leaf=2, random_state=self.seed)
        self._model.fit([graph_features(s.doc) + s.metrics for s in samples], [s.target for s in samples])
        return self

    def predict(self, docs: Sequence[dict], metrics: Sequence[list[float]] | None = None) -> list[float]:
        metrics = metrics or [[] for _ in docs]
        return [float(v) for v in self._model.predict([graph_features(d) + m for d, m in zip(docs, metrics)])]


class _GIN(nn.Module):
    def __init__(self, node_dim: int, extra_dim: int, hidden: int = 32):
        super().__init__()
        from torch_geometric.nn import GINConv

        def mlp(i: int) -> nn.Module:
            return nn.Sequential(nn.Linear(i, hidden), nn.ReLU(), nn.Linear(hidden, hidden))

        self.conv1, self.conv2 = GINConv(mlp(node_dim)), GINConv(mlp(hidden))
        self.head = nn.Sequential(nn.Linear(2 * hidden + extra_dim, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, batch, extra: torch.Tensor) -> torch.Tensor:
        from torch_geometric.nn import global_add_pool, global_mean_pool

        h = torch.relu(self.conv1(batch.x, batch.edge_index))
        h = torch.relu(self.conv2(h, batch.edge_index))
        pooled = torch.cat([global_add_pool(h, batch.batch), global_mean_pool(h, batch.batch)], dim=1)
        return self.head(torch.cat([pooled, extra], dim=1)).squeeze(1)


class GraphModel:
    """A two-layer GIN over ``design_graph``, its pooled embedding joined with the standardized
    ``graph_features`` (and metrics); mean squared error on the standardized target, full batch, Adam."""

    kind = "gnn"

    def __init__(self, seed: int = 0, epochs: int = 300, lr: float = 0.01):
        self.seed, self.epochs, self.lr = seed, epochs, lr
        self.net: _GIN | None = None
        self.stats: dict[str, list[float]] = {}

    def _extra(self, docs, metrics) -> torch.Tensor:
        return self._standardized(torch.tensor([graph_features(d) + m for d, m in zip(docs, metrics)],
                                               dtype=torch.float32))

    def _standardized(self, rows: torch.Tensor) -> torch.Tensor:
        return (rows - torch.tensor(self.stats["mean"])) / torch.tensor(self.stats["std"])

    def fit(self, samples: Sequence[Sample]) -> "GraphModel":
        from torch_geometric.data import Batch

        gen = torch.Generator().manual_seed(self.seed)
        docs, metrics = [s.doc for s in samples], [s.metrics for s in samples]
        rows = torch.tensor([graph_features(d) + m for d, m in zip(docs, metrics)], dtype=torch.float32)
        y = torch.tensor([s.target for s in samples], dtype=torch.float32)
        self.stats = {"mean": rows.mean(0).tolist(), "std": rows.std(0, unbiased=False).clamp_min(1e-6).tolist(),
                      "y_mean": [float(y.mean())], "y_std": [float(y.std(unbiased=False).clamp_min(1e-6))]}
        with torch.random.fork_rng():
            torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
            self.net = _GIN(len(NODE_VOCAB) + 3, rows.shape[1])
            batch = Batch.from_data_list([design_graph(d) for d in docs])
            extra = self._standardized(rows)
            target = (y - self.stats["y_mean"][0]) / self.stats["y_std"][0]
            opt = torch.optim.Adam(self.net.parameters(), lr=self.lr, weight_decay=1e-4)
            self.net.train()
            for _ in range(self.epochs):
                opt.zero_grad()
                loss = torch.mean((self.net(batch, extra) - target) ** 2)
                loss.backward()
                opt.step()
        self.net.eval()
        return self

    def predict(self, docs: Sequence[dict], metrics: Sequence[list[float]] | None = None) -> list[float]:
        from torch_geometric.data import Batch

        metrics = metrics or [[] for _ in docs]
        with torch.no_grad():
            out = self.net(Batch.from_data_list([design_graph(d) for d in docs]), self._extra(docs, metrics))
        return [float(v) * self.stats["y_std"][0] + self.stats["y_mean"][0] for v in out]


MODELS = {"forest": ForestModel, "gnn": GraphModel}


# ---------------------------------------------------------------------------------------------- evaluation
def kendall_tau(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Kendall's tau-b (None when either side is constant or there are fewer than 3 pairs)."""
    from scipy.stats import kendalltau

    if len(a) < 3 or len(set(a)) < 2 or len(set(b)) < 2:
        return None
    tau = kendalltau(a, b).statistic
    return None if tau is None or math.isnan(tau) else float(tau)


def cross_validate(samples: Sequence[Sample], kind: str, folds: int = 5, seed: int = 0) -> dict[str, Any]:
    """Each design predicted by a model fitted on the other folds; Kendall's tau and the mean absolute error of
    those held-out predictions against the truth (chance is tau 0)."""
    order = list(range(len(samples)))
    random.Random(seed).shuffle(order)
    folds = max(2, min(folds, len(samples)))
    predicted = [0.0] * len(samples)
    for f in range(folds):
        held = order[f::folds]
        train = [samples[i] for i in order if i not in held]
        model = MODELS[kind](seed=seed).fit(train)
        for i, p in zip(held, model.predict([samples[i].doc for i in held], [samples[i].metrics for i in held])):
            predicted[i] = p
    truth = [s.target for s in samples]
    return {"model": kind, "samples": len(samples), "folds": folds,
            "kendall_tau": _round(kendall_tau(predicted, truth)),
            "mae": round(statistics.fmean(abs(p - t) for p, t in zip(predicted, truth)), 4)}


def forward_in_time(samples: Sequence[Sample], kind: str, train_share: float = 2 / 3, seed: int = 0) -> dict[str, Any]:
    """The harder test, the one Karn faces: fitted on the designs that came first on the log (``samples`` in log
    order), judged on those that came after — later generations, bred from what came first."""
    cut = max(2, int(len(samples) * train_share))
    train, test = list(samples[:cut]), list(samples[cut:])
    if len(test) < 3:
        return {"model": kind, "train": len(train), "test": len(test), "kendall_tau": None}
    predicted = MODELS[kind](seed=seed).fit(train).predict([s.doc for s in test], [s.metrics for s in test])
    return {"model": kind, "train": len(train), "test": len(test),
            "kendall_tau": _round(kendall_tau(predicted, [s.target for s in test])),
            "mae": round(statistics.fmean(abs(p - s.target) for p, s in zip(predicted, test)), 4)}


def _round(v: float | None) -> float | None:
    return None if v is None else round(v, 4)


@dataclass
class Fitted:
    """The model a target's held-out evaluation chose, fitted on every sample, with the evaluation."""

    target: str
    model: Any
    evaluation: dict[str, Any]

    def predict(self, docs, metrics=None) -> list[float]:
        return self.model.predict(docs, metrics)


def fit_best(samples: Sequence[Sample], target: str, seed: int = 0, folds: int = 5) -> tuple[Fitted | None, dict]:
    """Cross-validate both models on ``samples``; fit the one with the higher held-out tau on all of them.
    Returns (None, report) when there are fewer than ``MIN_SAMPLES`` designs, or the chosen model ranks no better
    than chance (tau ≤ 0) either k-fold or forward in time: Karn then does without."""
    report: dict[str, Any] = {"target": target, "samples": len(samples),
                              "karn_samples": sum(1 for s in samples if s.karn)}
    if len(samples) < MIN_SAMPLES:
        report["reason"] = f"{len(samples)} designs with a {target} target; a model needs {MIN_SAMPLES}"
        return None, report
    report["models"] = {kind: cross_validate(samples, kind, folds, seed) for kind in MODELS}
    report["forward_in_time"] = {kind: forward_in_time(samples, kind, seed=seed) for kind in MODELS}
    best = max(MODELS, key=lambda k: report["models"][k]["kendall_tau"] if report["models"][k]["kendall_tau"]
               is not None else -2.0)
    tau, forward = report["models"][best]["kendall_tau"], report["forward_in_time"][best]["kendall_tau"]
    if tau is None or tau <= 0:
        report["reason"] = f"no model ranks held-out designs better than chance (best tau {tau})"
        return None, report
    if forward is not None and forward <= 0:
        report["reason"] = (f"the {best} model ranks held-out designs (tau {tau}) but not the designs that came "
                            f"later on the log (tau {forward})")
        return None, report
    report["chosen"] = best
    return Fitted(target, MODELS[best](seed=seed).fit(samples), report["models"][best]), report


# ---------------------------------------------------------------------------------------------- checkpoints
def save_model(fitted: Fitted, directory: Path, offsets: dict[str, dict[int, int]], report: dict) -> Path:
    """The GNN's state dict (``model.pt``) beside its card (``card.json``: target, log offsets and version, the
    held-out evaluation, the feature statistics); a forest is described by its card alone (it is refitted from
    the log, never unpickled)."""
    version = log_version(offsets)
    out = Path(directory) / f"{fitted.target}-{version}"
    out.mkdir(parents=True, exist_ok=True)
    card = {"target": fitted.target, "model": fitted.model.kind, "version": version, "offsets": offsets,
            "report": report}
    if isinstance(fitted.model, GraphModel):
        buf = io.BytesIO()
        torch.save(fitted.model.net.state_dict(), buf)
        (out / "model.pt").write_bytes(buf.getvalue())
        card["stats"] = fitted.model.stats
        card["sha256"] = hashlib.sha256(buf.getvalue()).hexdigest()
    (out / "card.json").write_text(json.dumps(card, indent=2, sort_keys=True))
    return out


def load_model(directory: Path) -> Fitted:
    """A saved GNN (weights only, its hash checked against the card)."""
    directory = Path(directory)
    card = json.loads((directory / "card.json").read_text())
    if card.get("model") != "gnn":
        raise KarnError(f"{directory}: a {card.get('model')} model is refitted from the log, not loaded")
    data = (directory / "model.pt").read_bytes()
    if hashlib.sha256(data).hexdigest() != card.get("sha256"):
        raise KarnError(f"{directory}: model.pt does not match the hash on its card")
    model = GraphModel()
    model.stats = card["stats"]
    model.net = _GIN(len(NODE_VOCAB) + 3, len(model.stats["mean"]))
    model.net.load_state_dict(torch.load(io.BytesIO(data), weights_only=True, map_location="cpu"))
    model.net.eval()
    return Fitted(card["target"], model, card["report"].get("models", {}).get("gnn", {}))


# ---------------------------------------------------------------------------------------------- from the log
def read_samples(bb, shapes) -> tuple[dict[str, dict[int, int]], list[Sample], list[Sample]]:
    """The log's end offsets of Urza's topics and the field reports, then both targets' samples folded from the
    log up to exactly those offsets (the version the model is trained on)."""
    from esper_runtime.karn.lineage import read_field_reports
    from esper_runtime.simic.dataset import end_offsets
    from esper_runtime.urza.library import load_view
    from views.urza_view import URZA_TOPICS

    topics = sorted({bb.resolve_topic(t) for t in (*URZA_TOPICS, "innovation.field_reports")})
    offsets = end_offsets(bb, topics)
    bound = {(t, p): end for t, parts in offsets.items() for p, end in parts.items()}
    view = load_view(bb, until_offset=bound)
    return offsets, urabrask_samples(view, shapes), field_samples(view, read_field_reports(bb, until_offset=bound))


def train_from_log(bb, shapes, directory: Path | None = None, seed: int = 0) -> dict[str, Any]:
    """Both targets fitted and evaluated on designs held out; the chosen models saved under ``directory``."""
    offsets, urabrask, fieldwise = read_samples(bb, shapes)
    out: dict[str, Any] = {"version": log_version(offsets), "offsets": offsets, "targets": {}}
    for target, samples in (("urabrask", urabrask), ("field", fieldwise)):
        fitted, report = fit_best(samples, target, seed)
        if fitted is not None and directory is not None:
            report["checkpoint"] = str(save_model(fitted, directory, offsets, report))
        out["targets"][target] = report
    return out
