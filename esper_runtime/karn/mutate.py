"""Karn's mutation operators over BlueprintIR (appendix D.2.3's action space).

Each operator takes one parent (``crossover`` two) and returns a child document, or ``None`` when it does not
apply to that parent (a design with no activation cannot have one substituted). A child is published only when
``check_child`` passes: it validates statically at every chunk width it will be compiled for, it differs in
structure from its parents, and it starts as the identity exactly when its parents do — the library's designs
are zero-initialized residuals, so a graft blends in only what the child has learned, and Karn keeps that true.

A child's name is ``karn_`` and the first 12 hex digits of its structure's hash, so the same structure found twice
is the same blueprint (the same ``blueprint_id``) and Urza holds it once. What made it — the operator and its
parents — travels on ``BlueprintSubmitted`` (``mutation``, ``parent_ids``): the family tree is on the log.
"""

from __future__ import annotations

import copy
import hashlib
import random
from dataclasses import dataclass
from typing import Any, Callable

import torch

from esper_runtime.blueprints.build import build_module
from esper_runtime.blueprints.exceptions import BlueprintInvalid
from esper_runtime.blueprints.ir import Blueprint, canonical_json, wide_reads
from esper_runtime.blueprints.validate import validate

__all__ = ["OPERATORS", "ACTIVATIONS", "Child", "mutate", "crossover", "structure_key", "check_child",
           "starts_as_identity", "learns", "child_name"]

ACTIVATIONS = ("relu", "gelu", "silu", "tanh", "sigmoid")
GATES = ("sigmoid", "tanh")
WIDTH_RATIOS = (0.125, 0.25, 0.5, 1, 2, 4, 8)
CHECK_WIDTHS = (8, 16, 32)  # a child must be valid at each: every chunk width a run is likely to compile for
CHECK_INPUT = 24  # the wide input's width when checking a design that reads u or x0
MAX_TAGS = 16

Doc = dict[str, Any]


@dataclass(frozen=True)
class Child:
    blueprint: Blueprint
    operator: str
    parent_ids: tuple[str, ...]
    predicted: float | None = None  # the reward model's predicted Urabrask score, when Karn had one


# ---------------------------------------------------------------------------------------------- graph helpers
def _nodes(doc: Doc) -> dict[str, Doc]:
    return {n["id"]: n for n in doc["nodes"]}


def _fresh(doc: Doc, stem: str) -> str:
    """A node id not used in ``doc`` (ids are at most 32 characters)."""
    used = {n["id"] for n in doc["nodes"]}
    for i in range(1, 1000):
        nid = f"{stem[:26]}{i}"
        if nid not in used:
            return nid
    raise BlueprintInvalid("size", "no free node id")


def _consumers(doc: Doc, nid: str) -> list[Doc]:
    return [n for n in doc["nodes"] if nid in n["inputs"]]


def _rewire(doc: Doc, old: str, new: str, skip: set[str] = frozenset()) -> None:
    """Every reader of ``old`` (and the output) reads ``new`` instead, except the nodes in ``skip``."""
    for n in doc["nodes"]:
        if n["id"] not in skip:
            n["inputs"] = [new if s == old else s for s in n["inputs"]]
    if doc["output"] == old:
        doc["output"] = new


def _insert_after(doc: Doc, anchor: str, new_nodes: list[Doc]) -> None:
    """Insert ``new_nodes`` right after node ``anchor`` (nodes are kept in a readable order; validation sorts)."""
    ids = [n["id"] for n in doc["nodes"]]
    at = ids.index(anchor) + 1 if anchor in ids else 0
    doc["nodes"][at:at] = new_nodes


def _prune(doc: Doc) -> None:
    """Drop nodes the output does not depend on."""
    nodes, keep, stack = _nodes(doc), set(), [doc["output"]]
    while stack:
        nid = stack.pop()
        if nid in keep or nid not in nodes:
            continue
        keep.add(nid)
        stack.extend(nodes[nid]["inputs"])
    doc["nodes"] = [n for n in doc["nodes"] if n["id"] in keep]


def _residual_delta(doc: Doc) -> str | None:
    """For a design whose output is ``add(x, d)``: the node ``d`` (its delta from the chunk), else None."""
    out = _nodes(doc).get(doc["output"])
    if out is None or out["op"] != "add" or "x" not in out["inputs"]:
        return None
    other = [s for s in out["inputs"] if s != "x"]
    return other[0] if len(other) == 1 else None


def _width_spec(doc: Doc, nid: str) -> Any:
    """The size spec of node ``nid``'s output, following same-width ops back to a linear or an input."""
    nodes = _nodes(doc)
    while nid in nodes:
        node = nodes[nid]
        if node["op"] == "linear":
            return node["attrs"]["out"]
        nid = node["inputs"][0]
    return {"x": "F", "u": "D", "x0": "D"}.get(nid)


def _add_tags(doc: Doc, *tags: str) -> None:
    merged = sorted(set(doc.get("tags") or []) | set(tags) | {"karn"})
    doc["tags"] = merged[:MAX_TAGS]


# ---------------------------------------------------------------------------------------------- operators
def substitute_activation(doc: Doc, rng: random.Random) -> Doc | None:
    sites = [n for n in doc["nodes"] if n["op"] in ACTIVATIONS]
    if not sites:
        return None
    node = rng.choice(sites)
    node["op"] = rng.choice([a for a in ACTIVATIONS if a != node["op"]])
    node.pop("attrs", None)
    return doc


def scale_width(doc: Doc, rng: random.Random) -> Doc | None:
    """Halve or double a hidden layer's width (a linear not writing the chunk's width F)."""
    sites = [n for n in doc["nodes"] if n["op"] == "linear" and isinstance(n["attrs"].get("out"), dict)]
    if not sites:
        return None
    node = rng.choice(sites)
    (dim, ratio), = node["attrs"]["out"].items()
    steps = [r for r in WIDTH_RATIOS if r in (ratio / 2, ratio * 2)]
    if not steps:
        return None
    new = rng.choice(steps)
    node["attrs"]["out"] = dim if new == 1 else {dim: new}
    return doc


def add_gate(doc: Doc, rng: random.Random) -> Doc | None:
    """``x + d`` becomes ``x + d * sigmoid(W x)``: a learned gate on the delta (still zero at initialization)."""
    d = _residual_delta(doc)
    if d is None:
        return None
    lin, gate, mul = _fresh(doc, "gate_w"), _fresh(doc, "gate"), _fresh(doc, "gated")
    _insert_after(doc, d, [{"id": lin, "op": "linear", "inputs": ["x"], "attrs": {"out": "F"}},
                           {"id": gate, "op": rng.choice(GATES), "inputs": [lin]},
                           {"id": mul, "op": "mul", "inputs": [d, gate]}])
    _rewire(doc, d, mul, skip={mul})
    return doc


def remove_gate(doc: Doc, rng: random.Random) -> Doc | None:
    """A ``mul(a, gate(b))`` loses its gate and passes ``a`` on (the gate's unused nodes are dropped)."""
    nodes = _nodes(doc)
    sites = []
    for n in doc["nodes"]:
        if n["op"] != "mul":
            continue
        for i, src in enumerate(n["inputs"]):
            if src in nodes and nodes[src]["op"] in GATES:
                sites.append((n, n["inputs"][1 - i]))
    if not sites:
        return None
    node, kept = rng.choice(sites)
    if kept == "x":  # a gate on the chunk itself (squeeze-excitation): removing it would add x twice
        return None
    _rewire(doc, node["id"], kept)
    _prune(doc)
    return doc


def add_residual(doc: Doc, rng: random.Random) -> Doc | None:
    """A hidden activation ``a`` becomes ``a + W a`` (W zero-initialized): an inner residual block."""
    sites = [n for n in doc["nodes"] if n["op"] in ACTIVATIONS and _consumers(doc, n["id"])]
    if not sites:
        return None
    node = rng.choice(sites)
    spec = _width_spec(doc, node["id"])
    if spec is None:
        return None
    lin, res = _fresh(doc, "res_w"), _fresh(doc, "res")
    _insert_after(doc, node["id"], [{"id": lin, "op": "linear", "inputs": [node["id"]],
                                     "attrs": {"out": copy.deepcopy(spec), "init": "zeros"}},
                                    {"id": res, "op": "add", "inputs": [node["id"], lin]}])
    _rewire(doc, node["id"], res, skip={lin, res})
    return doc


def remove_residual(doc: Doc, rng: random.Random) -> Doc | None:
    """Undo an inner residual block: ``a + W a`` with W zero-initialized becomes ``a`` (never the output's own
    ``x + d``, which is what makes the design start as the identity)."""
    nodes = _nodes(doc)
    sites = []
    for n in doc["nodes"]:
        if n["op"] != "add" or n["id"] == doc["output"] or len(n["inputs"]) != 2:
            continue
        a, w = n["inputs"]
        wn = nodes.get(w)
        if wn is not None and wn["op"] == "linear" and wn["attrs"].get("init") == "zeros" and wn["inputs"] == [a]:
            sites.append((n, a))
    if not sites:
        return None
    node, kept = rng.choice(sites)
    _rewire(doc, node["id"], kept)
    _prune(doc)
    return doc


def add_attention_head(doc: Doc, rng: random.Random) -> Doc | None:
    """``x + d`` becomes ``x + d + attention(x)`` (the head's output projection zero-initialized)."""
    d = _residual_delta(doc)
    if d is None:
        return None
    att, total = _fresh(doc, "head"), _fresh(doc, "heads")
    _insert_after(doc, d, [{"id": att, "op": "attention", "inputs": ["x"],
                            "attrs": {"tokens": rng.choice((2, 4)), "init": "zeros"}},
                           {"id": total, "op": "add", "inputs": [d, att]}])
    _rewire(doc, d, total, skip={total})
    doc["trainable"] = True
    _add_tags(doc, "attention")
    return doc


def insert_norm(doc: Doc, rng: random.Random) -> Doc | None:
    """A layernorm in front of a linear that reads the chunk or a wide input directly."""
    sites = [n for n in doc["nodes"] if n["op"] == "linear" and n["inputs"][0] in ("x", "u", "x0")]
    if not sites:
        return None
    node = rng.choice(sites)
    src = node["inputs"][0]
    norm = _fresh(doc, f"norm_{src}")
    doc["nodes"].insert(0, {"id": norm, "op": "layernorm", "inputs": [src]})
    node["inputs"] = [norm]
    _add_tags(doc, "norm")
    return doc


def deepen(doc: Doc, rng: random.Random) -> Doc | None:
    """After a hidden activation ``a = act(h)``, another layer of the same width and activation."""
    sites = [n for n in doc["nodes"] if n["op"] in ACTIVATIONS and _consumers(doc, n["id"])
             and _width_spec(doc, n["id"]) is not None]
    if not sites:
        return None
    node = rng.choice(sites)
    lin, act = _fresh(doc, "deep_w"), _fresh(doc, "deep")
    _insert_after(doc, node["id"], [{"id": lin, "op": "linear", "inputs": [node["id"]],
                                     "attrs": {"out": copy.deepcopy(_width_spec(doc, node["id"]))}},
                                    {"id": act, "op": node["op"], "inputs": [lin]}])
    _rewire(doc, node["id"], act, skip={lin, act})
    _add_tags(doc, "deep")
    return doc


def crossover(a: Doc, b: Doc, rng: random.Random) -> Doc | None:
    """Two residual designs ``x + dA`` and ``x + dB`` become ``x + dA + dB``: both deltas, side by side (they may
    not read different wide inputs: a design reads u or x0, not both)."""
    da, db = _residual_delta(a), _residual_delta(b)
    if da is None or db is None or len(wide_reads(a) | wide_reads(b)) > 1:
        return None
    child: Doc = {"ir_version": a["ir_version"], "name": "", "description": "", "nodes": [], "output": "",
                  "trainable": bool(a["trainable"] or b["trainable"]), "tags": []}
    for prefix, parent in (("a_", a), ("b_", b)):
        inner = copy.deepcopy(parent)
        inner["nodes"] = [n for n in inner["nodes"] if n["id"] != inner["output"]]
        renamed = {n["id"]: (prefix + n["id"])[:32] for n in inner["nodes"]}
        for n in inner["nodes"]:
            n["id"] = renamed[n["id"]]
            n["inputs"] = [renamed.get(s, s) for s in n["inputs"]]
        child["nodes"].extend(inner["nodes"])
    both, out = _fresh(child, "both"), _fresh(child, "y")
    child["nodes"] += [{"id": both, "op": "add", "inputs": [("a_" + da)[:32], ("b_" + db)[:32]]},
                       {"id": out, "op": "add", "inputs": ["x", both]}]
    child["output"] = out
    child["tags"] = sorted(set(a.get("tags") or []) | set(b.get("tags") or []))
    _prune(child)
    return child


OPERATORS: dict[str, Callable[[Doc, random.Random], Doc | None]] = {
    "substitute_activation": substitute_activation,
    "scale_width": scale_width,
    "add_gate": add_gate,
    "remove_gate": remove_gate,
    "add_residual": add_residual,
    "remove_residual": remove_residual,
    "add_attention_head": add_attention_head,
    "insert_norm": insert_norm,
    "deepen": deepen,
    "crossover": None,  # two parents: ``crossover``
}


# ---------------------------------------------------------------------------------------------- checks
def structure_key(doc: Doc) -> str:
    """SHA-256 of what a design computes: its nodes, output and trainability (not its name, text or tags)."""
    return hashlib.sha256(canonical_json({"nodes": doc["nodes"], "output": doc["output"],
                                          "trainable": doc["trainable"]}).encode()).hexdigest()


def child_name(doc: Doc) -> str:
    return "karn_" + structure_key(doc)[:12]


def starts_as_identity(bp: Blueprint, features: int = 8) -> bool:
    """Whether the built module returns its chunk unchanged at initialization (on random inputs)."""
    ir = bp.instantiate(features, CHECK_INPUT if bp.reads_input else None)
    module = build_module(ir, seed=0)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4, features, generator=gen)
    u = torch.randn(4, CHECK_INPUT, generator=gen) if bp.reads_input else None
    with torch.no_grad():
        out = module(x, u) if u is not None else module(x)
    return bool(torch.equal(out, x))


def learns(bp: Blueprint, features: int = 8) -> bool:
    """Whether, at initialization, a loss on the module's output sends a gradient to its parameters (a design whose
    zero-initialized output layer is followed by a ReLU gets none: it starts as the identity and stays it)."""
    ir = bp.instantiate(features, CHECK_INPUT if bp.reads_input else None)
    module = build_module(ir, seed=0)
    params = [p for p in module.parameters() if p.requires_grad]
    if not params:
        return False
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(16, features, generator=gen)
    u = torch.randn(16, CHECK_INPUT, generator=gen) if bp.reads_input else None
    with torch.enable_grad():
        out = module(x, u) if u is not None else module(x)
        if not out.requires_grad:  # the output does not depend on any parameter
            return False
        (out * torch.randn(out.shape, generator=gen)).sum().backward()
    return any(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in params)


def check_child(doc: Doc, parents: list[Blueprint]) -> Blueprint:
    """The child as a validated Blueprint, or BlueprintInvalid saying why it may not be published."""
    bp = Blueprint.parse(doc)
    validate(bp)
    for width in CHECK_WIDTHS:
        bp.instantiate(width, CHECK_INPUT if bp.reads_input else None)
    key = structure_key(bp.doc)
    if any(structure_key(p.doc) == key for p in parents):
        raise BlueprintInvalid("structure", "the child computes what a parent computes")
    if starts_as_identity(bp) != all(starts_as_identity(p) for p in parents):
        raise BlueprintInvalid("structure", "the child does not start as the identity as its parents do")
    if bp.doc["trainable"] and not learns(bp):
        raise BlueprintInvalid("structure", "no gradient reaches the child's parameters at initialization: it "
                                            "would never learn its way in")
    return bp


def mutate(operator: str, parents: list[Blueprint], rng: random.Random) -> Child | None:
    """Apply ``operator`` to ``parents`` (one; two for crossover). The checked child, or None when the operator
    does not apply or its child fails ``check_child``."""
    docs = [copy.deepcopy(p.doc) for p in parents]
    if operator == "crossover":
        if len(docs) != 2:
            raise ValueError("crossover takes two parents")
        doc = crossover(docs[0], docs[1], rng)
    else:
        if len(docs) != 1:
            raise ValueError(f"{operator} takes one parent")
        doc = OPERATORS[operator](docs[0], rng)
    if doc is None:
        return None
    if operator != "crossover":
        _add_tags(doc)
    else:
        _add_tags(doc, "crossover")
    doc["name"] = child_name(doc)
    names = " × ".join(p.name for p in parents)
    doc["description"] = f"{operator.replace('_', ' ')} of {names}"[:200]
    try:
        bp = check_child(doc, parents)
    except BlueprintInvalid:
        return None
    return Child(bp, operator, tuple(p.blueprint_id for p in parents))
