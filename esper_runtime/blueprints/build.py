"""Build a module from an instantiated, validated BlueprintIR (eager, trainable, exportable)."""

from __future__ import annotations

import torch
from torch import nn

from esper_runtime.blueprints.ir import ConcreteIR
from esper_runtime.blueprints.ops import OPS
from esper_runtime.blueprints.validate import topo_order, validate_concrete
from esper_runtime.rng import seeded

__all__ = ["IRModule", "build_module"]


class IRModule(nn.Module):
    """Runs the IR's nodes in topological order; one submodule per node (ops without state hold a function)."""

    def __init__(self, ir: ConcreteIR):
        super().__init__()
        validate_concrete(ir)
        self.ir_hash = ir.ir_hash
        self.esper_recipe = {"kind": "ir", "ir": ir.doc}  # how save_model / load_model rebuild it
        self.features = ir.features
        order = topo_order(ir.doc)
        widths = {"x": ir.features, **({"u": ir.in_features, "x0": ir.in_features} if ir.in_features is not None else {})}
        self.in_features = ir.in_features  # None: the module reads only the chunk
        self.input_source = ir.input_source  # "layer" (u), "model" (x0) or None
        self.steps: list[tuple[str, tuple[str, ...]]] = []
        self.nodes = nn.ModuleDict()
        for node in order:
            attrs = node.get("attrs", {})
            in_widths = [widths[s] for s in node["inputs"]]
            spec = OPS[node["op"]]
            widths[node["id"]] = spec.out_width(in_widths, attrs)
            self.nodes[node["id"]] = spec.build(in_widths, attrs)
            self.steps.append((node["id"], tuple(node["inputs"])))
        self.output = ir.doc["output"]

    def forward(self, x: torch.Tensor, u: torch.Tensor | None = None) -> torch.Tensor:
        """``x``: the chunk (batch, F); ``u``: the wide input (batch, D) — the layer's or the model's input,
        as ``input_source`` says — for a design that reads one."""
        if self.in_features is not None and u is None:
            raise ValueError(f"this module reads the {self.input_source}'s input: call it with (chunk, that input)")
        values = {"x": x, "u": u, "x0": u}
        for nid, inputs in self.steps:
            values[nid] = self.nodes[nid](*(values[s] for s in inputs))
        return values[self.output]


def build_module(ir: ConcreteIR, seed: int | None = None) -> IRModule:
    """The module for ``ir``; with ``seed``, initialized from that seed (the caller's RNG is left as it was)."""
    if seed is None:
        return IRModule(ir)
    with seeded(seed):
        return IRModule(ir)
