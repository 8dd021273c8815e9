"""Issue #13, item 2: native code runs only when its bytes hash to the digest the log recorded. The store's own
index is not trusted for that, a cached package is trusted for its bytes and not for its name, and an index entry
naming a path instead of a digest is refused before anything is read."""

from __future__ import annotations

import json

import pytest
import torch

from esper_runtime.blueprints import starter_blueprints
from esper_runtime.kasmina.exceptions import KernelLoadError
from esper_runtime.kasmina.kernels import KernelCache
from esper_runtime.tezzeret.bundle import load_bundle
from esper_runtime.tezzeret.compiler import BUNDLE_KIND, compile_ir
from esper_runtime.urza import ArtifactStore
from esper_runtime.urza.store import ArtifactNotFound, KernelArtifact


@pytest.fixture(scope="module")
def bundles():
    by_name = {b.name: b for b in starter_blueprints()}
    return compile_ir(by_name["fixed_tanh"].instantiate(4), "fast"), compile_ir(by_name["fixed_swish"].instantiate(4),
                                                                                  "fast")


def test_a_kernel_rewritten_in_the_store_with_its_index_is_refused_against_the_log(tmp_path, bundles):
    a, b = bundles
    store = ArtifactStore(tmp_path / "artifacts")
    store.put(a.artifact_id, BUNDLE_KIND, a.data)
    logged = {a.artifact_id: a.sha256}  # what KernelCompiled recorded
    cache = KernelCache(store, expected_digest=logged.get)
    assert cache.get(a.artifact_id).artifact_id == a.artifact_id
    # an attacker rewrites A's blob and index together: the store's declared hash now agrees with B's bytes
    tampered = ArtifactStore(tmp_path / "tampered")
    digest = tampered.put(b.artifact_id, BUNDLE_KIND, b.data)
    (tampered.root / "index").mkdir(exist_ok=True)
    (tampered.root / "index" / f"{a.artifact_id}.json").write_text(
        json.dumps({"artifact_id": a.artifact_id, "sha256": digest, "kind": BUNDLE_KIND, "meta": {}}))
    cache = KernelCache(tampered, expected_digest=logged.get)
    with pytest.raises(KernelLoadError, match="the log recorded"):
        cache.get(a.artifact_id)
    with pytest.raises(KernelLoadError, match="no KernelCompiled on the log"):
        KernelCache(tampered, expected_digest={}.get).get(b.artifact_id)


def test_a_cached_package_swapped_for_another_kernels_is_never_run(tmp_path, bundles):
    a, b = bundles
    cache_dir = tmp_path / "kernel-cache"
    kernel_a = load_bundle(KernelArtifact(a.artifact_id, a.sha256, BUNDLE_KIND, a.data), cache_dir=cache_dir)
    kernel_b = load_bundle(KernelArtifact(b.artifact_id, b.sha256, BUNDLE_KIND, b.data), cache_dir=cache_dir)
    path_a, path_b = kernel_a.prototype._package_path, kernel_b.prototype._package_path
    x = torch.randn(8, 4)
    with torch.no_grad():
        want = torch.tanh(x) * 0.1 + x
        path_a.write_bytes(path_b.read_bytes())  # A's package now holds B's native program
        with pytest.raises(KernelLoadError, match="no longer holds"):
            kernel_a.prototype(x)
        # loading the bundle again puts the verified bytes back, and A runs A
        again = load_bundle(KernelArtifact(a.artifact_id, a.sha256, BUNDLE_KIND, a.data), cache_dir=cache_dir)
        out = again.prototype(x)
    assert again.prototype.compiled_calls == 1 and torch.allclose(out, want, atol=1e-5)


@pytest.mark.parametrize("declared", ["../../etc/hostname", "0" * 63, "G" * 64, 7, None])
def test_an_index_entry_that_names_no_digest_is_refused(tmp_path, declared):
    store = ArtifactStore(tmp_path / "artifacts")
    (store.root / "index").mkdir(parents=True)
    (store.root / "index" / "k1.json").write_text(json.dumps({"artifact_id": "k1", "sha256": declared, "kind": "x"}))
    with pytest.raises(ArtifactNotFound, match="refused"):
        store.get_artifact("k1")
    with pytest.raises(ArtifactNotFound, match="refused"):
        store.blob_path("k1")


def test_an_oversized_blob_is_refused_by_its_size_before_it_is_read(tmp_path, monkeypatch):
    from esper_runtime.urza.store import MAX_ARTIFACT_BYTES

    store = ArtifactStore(tmp_path / "artifacts")
    digest = store.put("k1", "x", b"small")
    blob = store.blob_path("k1")
    with blob.open("r+b") as fh:  # sparse: no disk or memory spent making it
        fh.truncate(MAX_ARTIFACT_BYTES + 1)
    read = []
    real = type(blob).read_bytes
    monkeypatch.setattr(type(blob), "read_bytes", lambda self: read.append(self) or real(self))
    with pytest.raises(ArtifactNotFound, match="refused unread"):
        store.get_artifact("k1")
    assert blob not in read and digest


def test_a_bundle_member_declaring_a_huge_size_is_refused_unread(tmp_path):
    import io
    import tracemalloc
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("manifest.json", json.dumps({"format": BUNDLE_KIND, "artifact_id": "bomb"}))
        zf.writestr("weights.pt", b"")
        with zf.open("kernel.pt2", "w", force_zip64=True) as member:  # 200 MiB of zeros, ~200 KiB deflated
            chunk = bytes(1 << 20)
            for _ in range(200):
                member.write(chunk)
    tracemalloc.start()
    try:
        with pytest.raises(KernelLoadError, match="refused unread"):
            load_bundle(KernelArtifact("bomb", "0" * 64, BUNDLE_KIND, buf.getvalue()), cache_dir=tmp_path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20
