"""Tezzeret's compiled artifacts: real AOTInductor packages, hash-verified, signature-checked, identical results."""

import io
import zipfile

import pytest
import torch

from esper_runtime.blueprints import starter_blueprints
from esper_runtime.exceptions import DeviceUnavailable
from esper_runtime.kasmina.exceptions import KernelLoadError
from esper_runtime.kasmina.kernels import KernelCache
from esper_runtime.tezzeret.compiler import BUNDLE_KIND, compile_ir, read_manifest_bytes
from esper_runtime.tezzeret.worker import TezzeretWorker
from esper_runtime.urza import ArtifactStore
from esper_runtime.urza.library import submit_blueprint
from streams import InMemoryPublisher, SingleObjectSerde
from streams.envelope import EnvelopeFactory
from streams.replay import MemorySource, ReplayReader


@pytest.fixture(scope="module")
def compiled():
    """One trainable blueprint compiled for width 8 (a real compile: several seconds)."""
    bp = next(b for b in starter_blueprints() if b.name == "bottleneck_adapter")
    return compile_ir(bp.instantiate(8), "fast")


def test_artifact_ids_follow_j3(compiled):
    ir_hash, hardware, pipeline, toolchain = compiled.artifact_id.split("-")
    assert len(ir_hash) == 12 and pipeline == "fast" and len(toolchain) == 6 and hardware.startswith("cpu")
    manifest = read_manifest_bytes(compiled.data)
    assert manifest["ir_hash"].startswith(ir_hash) and manifest["signature"]["inputs"][0]["shape"] == [None, 8]
    assert manifest["device"] == "cpu" and manifest["hardware"] == hardware == compiled.hardware


def test_a_worker_labels_what_it_compiles_for_not_what_the_host_has(monkeypatch, catalog):
    """On a GPU host a CPU worker's artifacts are CPU kernels (the label the old code took from the host)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H200")
    publisher = InMemoryPublisher(SingleObjectSerde(catalog))
    assert TezzeretWorker(publisher, None).hardware.startswith("cpu_")
    assert TezzeretWorker(publisher, None, device="cuda").hardware == "h200"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DeviceUnavailable, match="no CUDA device"):
        TezzeretWorker(publisher, None, device="cuda")


def test_the_compiled_program_runs_any_weights_and_matches_eager(tmp_path, compiled):
    store = ArtifactStore(tmp_path)
    store.put(compiled.artifact_id, BUNDLE_KIND, compiled.data)
    kernel = KernelCache(store).get(compiled.artifact_id)
    child = kernel.instantiate()
    with torch.no_grad():
        for p in child.parameters():
            p.add_(torch.randn_like(p))  # "trained" weights the artifact never saw
        x = torch.randn(64, 8)
        out = child(x)
        assert child.compiled_calls == 1
        torch.testing.assert_close(out, child.module(x), rtol=1e-5, atol=1e-6)
        child(torch.randn(1, 8))  # batch below the signature's range: eager, never the compiled program
        child(torch.randn(2, 3, 8))  # not the signature's 2-D shape: eager
    assert child.compiled_calls == 1
    x = torch.randn(16, 8, requires_grad=True)
    child(x).sum().backward()  # a forward that needs gradients runs eagerly, so they flow to the host
    assert x.grad is not None and child.compiled_calls == 1


def test_a_tampered_bundle_is_refused(tmp_path, compiled):
    store = ArtifactStore(tmp_path)
    store.put(compiled.artifact_id, BUNDLE_KIND, compiled.data)
    blob = store.blob_path(compiled.artifact_id)
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.write_bytes(bytes(data))
    with pytest.raises(KernelLoadError, match="hash mismatch"):
        KernelCache(store).get(compiled.artifact_id)


def test_a_bundle_whose_manifest_lies_is_refused(tmp_path, compiled):
    src = zipfile.ZipFile(io.BytesIO(compiled.data))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as out:
        for item in src.infolist():
            payload = src.read(item.filename)
            if item.filename == "manifest.json":
                payload = payload.replace(b'"trainable": true', b'"trainable": false')
            out.writestr(item, payload)
    store = ArtifactStore(tmp_path)
    store.put(compiled.artifact_id, BUNDLE_KIND, buf.getvalue())  # hash matches: the content itself is bad
    with pytest.raises(KernelLoadError, match="IR is invalid"):
        KernelCache(store).get(compiled.artifact_id)


def test_worker_rejects_hostile_blueprints_and_compiles_good_ones(tmp_path, catalog):
    from esper_runtime.blueprints import Blueprint

    pub = InMemoryPublisher(SingleObjectSerde(catalog))
    envs = EnvelopeFactory("sub", "test")
    good = next(b for b in starter_blueprints() if b.name == "fixed_tanh")
    evil = Blueprint.parse({"name": "evil", "trainable": True, "output": "a",
                            "nodes": [{"id": "a", "op": "system", "inputs": ["x"]}]})
    worker = TezzeretWorker(pub, ArtifactStore(tmp_path), widths=(8,), pipelines=("fast",))
    for bp in (evil, good):
        worker.handle(submit_blueprint(pub, envs, bp, "test"))
    events = [e.decoded.typed() for e in ReplayReader(MemorySource(pub.log), pub.serde)
              .events(["urza.blueprints.events", "tezzeret.kernels.events"])]
    names = [type(e).__name__ for e in events]
    assert names.count("BlueprintRejected") == 1 and names.count("KernelCompiled") == 1
    rejected = next(e for e in events if type(e).__name__ == "BlueprintRejected")
    assert rejected.blueprint_id == evil.blueprint_id and rejected.stage == "ops" and "system" in rejected.reason
    # a second submission reuses the stored artifact instead of compiling again
    worker.handle(submit_blueprint(pub, envs, good, "test"))
    assert (worker.stats.compiled, worker.stats.cached) == (1, 1)


def test_a_seed_grows_with_a_compiled_artifact_and_runs_it_when_frozen(tmp_path, compiled, catalog):
    from torch import nn

    from esper_runtime.kasmina import KasminaConfig, wrap

    store = ArtifactStore(tmp_path)
    store.put(compiled.artifact_id, BUNDLE_KIND, compiled.data)
    torch.manual_seed(0)
    host = nn.Sequential(nn.Linear(4, 32), nn.ReLU(), nn.Linear(32, 2))
    cfg = KasminaConfig(seeds_per_layer=4, reconstruction_steps=3, graft_steps=3, stabilize_steps=2,
                        evaluate_steps=2, stats_every=1)
    model = wrap(host, cfg, artifacts=store, publisher=InMemoryPublisher(SingleObjectSerde(catalog)))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(64, 4), torch.randn(64, 2)
    for epoch, cmd in enumerate(["request_germination", "promote", "advance", "advance", "advance", "advance",
                                 "fossilize"], start=1):
        model.kasmina.command(0, 1, cmd, compiled.artifact_id)
        report = model.kasmina.end_epoch(epoch)
        assert not report.refused, report.refused
        if report.params_changed:
            opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01)
        model.train()
        for _ in range(4):
            opt.zero_grad()
            nn.functional.mse_loss(model(x), y).backward()
            opt.step()
    assert model.kasmina.state(0, 1).name == "FOSSILIZED"
    child = model.seed_layers()[0].seeds["1"]
    before = child.compiled_calls
    model.eval()
    with torch.no_grad():
        out = model(x)
        chunk = model.seed_layers()[0].base_layer(x)[:, 8:16]
        torch.testing.assert_close(child(chunk), child.module(chunk), rtol=1e-5, atol=1e-6)
    assert child.compiled_calls > before  # inference ran the compiled program with the learned weights
    assert out.shape == (64, 2)
