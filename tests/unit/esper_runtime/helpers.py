"""Helpers the runtime's tests share: a small task, a small host, a library of reference kernels."""

from __future__ import annotations

import json

import torch
from torch import nn

from esper_runtime.kasmina import reference_artifact
from esper_runtime.kasmina.kernels import REFERENCE_KIND
from esper_runtime.urza import ArtifactStore
from streams.contracts import BlueprintSubmitted, KernelCompiled, KernelStatusChanged, KernelTagsAssigned
from streams.envelope import EnvelopeFactory
from views.urza_view import UrzaView


def make_library(tmp_path):
    store = ArtifactStore(tmp_path / "artifacts")
    envs = EnvelopeFactory("lib", "test")
    view = UrzaView()
    for i, (op, risk) in enumerate([("residual_mlp", 0.1), ("low_rank", 0.2), ("fixed_swish", 0.3)]):
        aid, data = reference_artifact(op, 8)
        digest = store.put(aid, REFERENCE_KIND, data)  # what Tezzeret announces: Kasmina checks the bytes against it
        bp = f"bp-{op}"
        view.apply(BlueprintSubmitted(envelope=envs.next(f"blueprint/{bp}"), blueprint_id=bp, name=op, ir_version=1,
                                      ir_json="{}", submitted_by="test"))
        view.apply(KernelCompiled(envelope=envs.next(f"kernel/{aid}"), artifact_id=aid, blueprint_id=bp,
                                  hardware="cpu", pipeline="fast", toolchain_hash="t", sha256=digest, size_bytes=1,
                                  uri="u", compile_ms=1.0,
                                  signature_json=json.dumps({"inputs": [{"shape": [None, 8]}]})))
        tags = ["numerically_stable", "trainable" if op != "fixed_swish" else "fixed_function"]
        view.apply(KernelTagsAssigned(envelope=envs.next(f"kernel/{aid}"), artifact_id=aid, hardware="cpu", tags=tags,
                                      risk_score=risk, conf_level="High", method="rule-bootstrap", population=i))
        view.apply(KernelStatusChanged(envelope=envs.next(f"kernel/{aid}"), artifact_id=aid, blueprint_id=bp,
                                       from_status="COMPILED", to_status="VALIDATED"))
    return store, view


def spirals_small():
    from esper_runtime.demo.tasks import two_spirals

    return two_spirals(n=600)


def host(width=16, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(2, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 2))
