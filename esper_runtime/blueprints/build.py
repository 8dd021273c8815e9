"""Build a module from an instantiated, validated BlueprintIR (eager, trainable, exportable)."""

from __future__ import annotations

import torch
from torch import nn

from esper_runtime.blueprints.ir import ConcreteIR
from esper_runtime.blueprints.ops import OPS
from esper_runtime.blueprints.validate import topo_order, validate_concrete

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
        widths = {"x": ir.features}
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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        values = {"x": x}
        for nid, inputs in self.steps:
            values[nid] = self.nodes[nid](*(values[s] for s in inputs))
        return values[self.output]


def build_module(ir: ConcreteIR, seed: int | None = None) -> IRModule:
    if seed is not None:
        torch.manual_seed(seed)
    return IRModule(ir)
