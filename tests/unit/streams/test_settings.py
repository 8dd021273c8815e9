"""Where settings put things on disk."""

from __future__ import annotations

from esper_runtime.urza import ArtifactStore
from streams import load_settings


def test_the_kernel_store_is_the_homes_unless_one_is_named(tmp_path, monkeypatch):
    monkeypatch.delenv("ESPER_ARTIFACTS_DIR", raising=False)
    assert load_settings(home=tmp_path / "a").artifacts == tmp_path / "a" / "artifacts"
    monkeypatch.setenv("ESPER_ARTIFACTS_DIR", str(tmp_path / "shared"))
    one, two = load_settings(home=tmp_path / "a"), load_settings(home=tmp_path / "b")
    assert one.artifacts == two.artifacts == tmp_path / "shared"
    # what one home's Tezzeret stored, another home's finds
    ArtifactStore(one.artifacts).put("k-1", "esper.kernel.v1", b"bytes", {"compile_ms": 1.0})
    assert ArtifactStore(two.artifacts).get_artifact("k-1").data == b"bytes"
