"""Static validation of BlueprintIR: structure, ops, attributes, cycles, shapes and sizes.

Stages (``BlueprintInvalid.stage``): ``parse``, ``structure``, ``ops``, ``cycle``, ``shapes``, ``size``.
Nothing here builds a module or runs anything the document says.
"""

from __future__ import annotations

import re
from typing import Any

from esper_runtime.blueprints.exceptions import BlueprintInvalid
from esper_runtime.blueprints.ir import (IR_VERSION, WIDE_INPUTS, Blueprint, ConcreteIR, wide_reads, reads_input,
                                        resolve_dim)
from esper_runtime.blueprints.ops import INITS, OPS

__all__ = ["validate", "validate_concrete", "topo_order", "param_count", "MAX_NODES", "MAX_PARAMS"]

MAX_NODES = 64
MAX_PARAMS = 4_000_000
MAX_WIDTH = 65536
_ID = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
_SIZE_ATTRS = ("out", "hidden")


def _structure(doc: dict[str, Any]) -> None:
    if doc.get("ir_version") != IR_VERSION:
        raise BlueprintInvalid("structure", f"ir_version must be {IR_VERSION}, got {doc.get('ir_version')!r}")
    name = doc.get("name")
    if not isinstance(name, str) or not _ID.match(name):
        raise BlueprintInvalid("structure", f"name must match {_ID.pattern}, got {name!r}")
    if not isinstance(doc.get("trainable"), bool):
        raise BlueprintInvalid("structure", "trainable must be true or false")
    if not isinstance(doc.get("description", ""), str):
        raise BlueprintInvalid("structure", "description must be a string")
    tags = doc.get("tags", [])
    if not isinstance(tags, list) or not all(isinstance(t, str) and len(t) <= 40 for t in tags) or len(tags) > 16:
        raise BlueprintInvalid("structure", "tags must be at most 16 strings of at most 40 characters")
    nodes = doc.get("nodes")
    if not isinstance(nodes, list) or not nodes:
        raise BlueprintInvalid("structure", "nodes must be a non-empty list")
    if len(nodes) > MAX_NODES:
        raise BlueprintInvalid("size", f"{len(nodes)} nodes exceeds the limit of {MAX_NODES}")
    if len(wide_reads(doc)) > 1:
        raise BlueprintInvalid("structure", "a design reads the layer's input 'u' or the model's input 'x0', not both")
    seen = {"x", *WIDE_INPUTS}
    for i, node in enumerate(nodes):
        if not isinstance(node, dict):
            raise BlueprintInvalid("structure", f"node {i} is not an object")
        extra = set(node) - {"id", "op", "inputs", "attrs"}
        if extra:
            raise BlueprintInvalid("structure", f"node {i}: unknown keys {sorted(extra)}")
        nid = node.get("id")
        if not isinstance(nid, str) or not _ID.match(nid) or nid in ("x", *WIDE_INPUTS):
            raise BlueprintInvalid("structure", f"node {i}: id must match {_ID.pattern} and not be 'x', 'u' or 'x0', "
                                                f"got {nid!r}")
        if nid in seen:
            raise BlueprintInvalid("structure", f"node id {nid!r} is defined twice")
        seen.add(nid)
        inputs = node.get("inputs")
        if not isinstance(inputs, list) or not all(isinstance(s, str) for s in inputs):
            raise BlueprintInvalid("structure", f"node {nid!r}: inputs must be a list of node ids")
        if not isinstance(node.get("attrs", {}), dict):
            raise BlueprintInvalid("structure", f"node {nid!r}: attrs must be an object")
    for node in nodes:
        for src in node["inputs"]:
            if src not in seen:
                raise BlueprintInvalid("structure", f"node {node['id']!r} reads {src!r}, which is not defined")
    if not isinstance(doc.get("output"), str) or doc["output"] not in seen - {"x", *WIDE_INPUTS}:
        raise BlueprintInvalid("structure", f"output must name a node, got {doc.get('output')!r}")


def _ops(doc: dict[str, Any], concrete: bool) -> None:
    for node in doc["nodes"]:
        nid, op = node["id"], node.get("op")
        spec = OPS.get(op) if isinstance(op, str) else None
        if spec is None:
            raise BlueprintInvalid("ops", f"node {nid!r}: unknown op {op!r} (known: {', '.join(sorted(OPS))})")
        if len(node["inputs"]) != spec.arity:
            raise BlueprintInvalid("ops", f"node {nid!r}: {op} takes {spec.arity} input(s), got {len(node['inputs'])}")
        attrs = node.get("attrs", {})
        unknown = set(attrs) - set(spec.attrs)
        if unknown:
            raise BlueprintInvalid("ops", f"node {nid!r}: {op} has no attrs {sorted(unknown)}")
        for req in spec.required:
            if req not in attrs:
                raise BlueprintInvalid("ops", f"node {nid!r}: {op} needs attr {req!r}")
        for key, value in attrs.items():
            kind, lo, hi = spec.attrs[key]
            if key == "init":
                if not isinstance(value, str) or value not in INITS:
                    raise BlueprintInvalid("ops", f"node {nid!r}: init must be one of {sorted(INITS)}")
                continue
            if key in _SIZE_ATTRS and not concrete:
                if isinstance(value, int) and not isinstance(value, bool):
                    if not lo <= value <= hi:
                        raise BlueprintInvalid("size", f"node {nid!r}: attr {key}={value} outside [{lo}, {hi}]")
                else:
                    # the form only (the size is checked per width); D only in a design that reads u
                    resolve_dim(value, 1, f"node {nid!r}.{key}", 1 if reads_input(doc) else None)
                continue
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and (kind is float or isinstance(value, int))
            if not ok:
                raise BlueprintInvalid("ops", f"node {nid!r}: attr {key} must be {kind.__name__}, got {value!r}")
            if not lo <= value <= hi:
                raise BlueprintInvalid("size", f"node {nid!r}: attr {key}={value} outside [{lo}, {hi}]")
            if op == "depthwise_conv" and key == "kernel_size" and value % 2 == 0:
                raise BlueprintInvalid("ops", f"node {nid!r}: kernel_size {value} must be odd (an even kernel with "
                                              f"'same' padding changes the chunk's width)")


def topo_order(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Nodes in an order where every input comes first; BlueprintInvalid('cycle') if there is none."""
    nodes = {n["id"]: n for n in doc["nodes"]}
    order, state = [], {}

    def visit(nid: str, depth: int = 0) -> None:
        if nid == "x" or nid in WIDE_INPUTS or state.get(nid) == 2:
            return
        if state.get(nid) == 1:
            raise BlueprintInvalid("cycle", f"node {nid!r} depends on itself")
        state[nid] = 1
        for src in nodes[nid]["inputs"]:
            visit(src, depth + 1)
        state[nid] = 2
        order.append(nodes[nid])

    for nid in nodes:
        visit(nid)
    return order


def validate(blueprint: Blueprint) -> None:
    """Checks that need no chunk width: structure, ops and attrs, cycles."""
    _structure(blueprint.doc)
    _ops(blueprint.doc, concrete=False)
    topo_order(blueprint.doc)


def _widths(ir: ConcreteIR) -> dict[str, int]:
    widths = {"x": ir.features}
    if ir.in_features is not None:
        widths.update(dict.fromkeys(WIDE_INPUTS, ir.in_features))
    for node in topo_order(ir.doc):
        spec = OPS[node["op"]]
        try:
            out = spec.out_width([widths[s] for s in node["inputs"]], node.get("attrs", {}))
        except ValueError as exc:
            raise BlueprintInvalid("shapes", f"node {node['id']!r} ({node['op']}): {exc}") from None
        if not 1 <= out <= MAX_WIDTH:
            raise BlueprintInvalid("size", f"node {node['id']!r}: width {out} outside 1..{MAX_WIDTH}")
        widths[node["id"]] = out
    return widths


def param_count(ir: ConcreteIR) -> int:
    widths = _widths(ir)
    return sum(OPS[n["op"]].params([widths[s] for s in n["inputs"]], n.get("attrs", {})) for n in ir.doc["nodes"])


def validate_concrete(ir: ConcreteIR) -> None:
    """Everything, for one chunk width: the output must have the chunk's width, sizes must be sane, and
    ``trainable`` must say whether the module has parameters."""
    doc = ir.doc
    if isinstance(doc.get("features"), bool) or not isinstance(doc.get("features"), int) or not 1 <= doc["features"] <= MAX_WIDTH:
        raise BlueprintInvalid("size", f"chunk width {doc.get('features')!r} outside 1..{MAX_WIDTH}")
    _structure(doc)
    _ops(doc, concrete=True)
    if reads_input(doc) != ("in_features" in doc) or ("in_features" in doc and (
            isinstance(doc["in_features"], bool) or not isinstance(doc["in_features"], int)
            or not 1 <= doc["in_features"] <= MAX_WIDTH)):
        raise BlueprintInvalid("shapes", "in_features must be given (1..65536) exactly when a node reads 'u' or 'x0'")
    widths = _widths(ir)
    if widths[doc["output"]] != ir.features:
        raise BlueprintInvalid("shapes", f"output {doc['output']!r} has width {widths[doc['output']]}, "
                                         f"the chunk has {ir.features}")
    params = param_count(ir)
    if params > MAX_PARAMS:
        raise BlueprintInvalid("size", f"{params:,} parameters exceeds the limit of {MAX_PARAMS:,}")
    if (params > 0) != doc["trainable"]:
        raise BlueprintInvalid("structure", f"trainable is {doc['trainable']} but the module has {params} parameters")
