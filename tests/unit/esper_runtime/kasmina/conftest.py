from __future__ import annotations

import pytest
import torch
from torch import nn

from esper_runtime.blueprints import Blueprint, ConcreteIR, build_module
from esper_runtime.kasmina import KasminaConfig, reference_artifact, register_kernel_kind, wrap
from esper_runtime.kasmina.kernels import REFERENCE_KIND, LoadedKernel
from esper_runtime.urza import ArtifactStore
from streams import InMemoryPublisher, SingleObjectSerde

FAST = dict(reconstruction_steps=4, graft_steps=4, stabilize_steps=2, evaluate_steps=2, stats_every=1,
            seeds_per_layer=4, embargo_epochs=2)


IR_KIND = "test.ir.v1"  # an IR built eagerly, no compilation: what a compiled bundle runs for training anyway


def _build_ir(artifact):
    ir = ConcreteIR.from_json(artifact.data.decode())
    return LoadedKernel(artifact.artifact_id, artifact.kind, ir.features, True, build_module(ir, seed=0))


register_kernel_kind(IR_KIND, _build_ir)


def store_ir(store, doc: dict, aid: str, width: int, in_features: int | None = None) -> str:
    """Put the blueprint ``doc`` instantiated for (width, in_features) in ``store`` as ``aid``; returns ``aid``."""
    ir = Blueprint.parse(doc).instantiate(width, in_features)
    store.put(aid, IR_KIND, ir.canonical.encode())
    return aid


@pytest.fixture
def store(tmp_path):
    return ArtifactStore(tmp_path / "artifacts")


@pytest.fixture
def kernels(store):
    """Artifact ids of reference kernels for 8-wide chunks, stored in ``store``."""
    out = {}
    for op in ("residual_mlp", "low_rank", "fixed_swish"):
        aid, data = reference_artifact(op, 8)
        store.put(aid, REFERENCE_KIND, data)
        out[op] = aid
    return out


@pytest.fixture
def publisher(catalog):
    return InMemoryPublisher(SingleObjectSerde(catalog))


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 3))


@pytest.fixture
def make_model(store, publisher):
    def make(host=None, **overrides):
        cfg = KasminaConfig(**{**FAST, **overrides})
        return wrap(host or mlp(), cfg, artifacts=store, publisher=publisher, run_id="test-run")

    return make


class Trainer:
    """A real training loop over random regression data, rebuilding the optimizer when seeds change parameters."""

    def __init__(self, model, in_features=6, out_features=3):
        self.model = model
        self.gen = torch.Generator().manual_seed(1)
        self.x = torch.randn(256, in_features, generator=self.gen)
        self.y = torch.randn(256, out_features, generator=self.gen)
        self.opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        self.epoch = 0

    def steps(self, n=6):
        self.model.train()
        loss = torch.zeros(())
        for k in range(n):
            idx = torch.randint(0, 256, (32,), generator=self.gen)
            loss = nn.functional.mse_loss(self.model(self.x[idx]), self.y[idx])
            self.opt.zero_grad()
            loss.backward()
            self.opt.step()
        return loss.item()

    def boundary(self):
        self.epoch += 1
        report = self.model.kasmina.end_epoch(self.epoch)
        if report.params_changed:
            self.opt = torch.optim.Adam([p for p in self.model.parameters() if p.requires_grad], lr=1e-3)
        return report

    def do(self, layer, seed, command, kernel="", train=6):
        """Issue a command, cross an epoch boundary, train an epoch; return the boundary's report."""
        self.model.kasmina.command(layer, seed, command, kernel)
        report = self.boundary()
        self.steps(train)
        return report
