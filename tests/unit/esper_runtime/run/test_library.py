"""When the library step may stop waiting, and when it must refuse to train."""

from __future__ import annotations

import json

import pytest

from esper_runtime.run.library import LibraryError, WidthStatus, _checked, library_status
from views.urza_view import UrzaView
from streams.contracts import BlueprintRejected, BlueprintSubmitted, KernelCompilationFailed, KernelCompiled, \
    KernelStatusChanged
from streams.envelope import EnvelopeFactory

envs = EnvelopeFactory("lib", "test")


def _submit(view, bp):
    view.apply(BlueprintSubmitted(envelope=envs.next(f"blueprint/{bp}"), blueprint_id=bp, name=bp, ir_version=1,
                                  ir_json="{}", submitted_by="test"))


def _kernel(view, bp, width, status=None, hardware="cpu"):
    aid = f"{bp}-{width}-{hardware}"
    view.apply(KernelCompiled(envelope=envs.next(f"kernel/{aid}"), artifact_id=aid, blueprint_id=bp, hardware=hardware,
                              pipeline="fast", toolchain_hash="t", sha256="s", size_bytes=1, uri="u", compile_ms=1.0,
                              signature_json=json.dumps({"inputs": [{"shape": [None, width]}]})))
    if status:
        view.apply(KernelStatusChanged(envelope=envs.next(f"kernel/{aid}"), artifact_id=aid, blueprint_id=bp,
                                       from_status="COMPILED", to_status=status))


def test_a_width_is_settled_only_when_every_blueprint_ended_there():
    view = UrzaView()
    for bp in ("a", "b", "c", "d", "e"):
        _submit(view, bp)
    _kernel(view, "a", 8, "VALIDATED")
    _kernel(view, "a", 4)  # compiled at 4, not measured yet
    _kernel(view, "b", 8, "REJECTED")
    view.apply(KernelCompilationFailed(envelope=envs.next("blueprint/c/compile"), blueprint_id="c", hardware="cpu",
                                       pipeline="fast", error="boom", chunk_width=8))
    view.apply(BlueprintRejected(envelope=envs.next("blueprint/d"), blueprint_id="d", stage="shapes", reason="no"))
    ids = ["a", "b", "c", "d", "e"]
    at8 = library_status(view, ids, 8)
    assert (at8.validated, at8.rejected, at8.failed, at8.pending) == (1, 2, 1, 1) and not at8.settled
    _kernel(view, "e", 8, "VALIDATED")
    assert library_status(view, ids, 8).settled
    at4 = library_status(view, ids, 4)
    assert at4.pending == 4 and at4.rejected == 1  # a compile failure at 8 says nothing about 4


def test_a_width_with_no_validated_kernel_is_refused_with_the_logs():
    with pytest.raises(LibraryError, match=r"no validated kernel for chunk width 4 \(3 rejected, 1 failed.*tez.log"):
        _checked({(4, None): WidthStatus(4, None, 0, 3, 1, 0), (8, None): WidthStatus(8, None, 2)},
                 {"tezzeret": "tez.log"})
    assert _checked({(8, None): WidthStatus(8, None, 2)}, None)[(8, None)].validated == 2


def test_the_materialized_library_comes_back_with_input_widths():
    view = UrzaView()
    _submit(view, "a")
    aid = "a-8-16"
    view.apply(KernelCompiled(envelope=envs.next(f"kernel/{aid}"), artifact_id=aid, blueprint_id="a", hardware="cpu",
                              pipeline="fast", toolchain_hash="t", sha256="s", size_bytes=1, uri="u", compile_ms=1.0,
                              signature_json=json.dumps({"inputs": [{"name": "x", "shape": [None, 8]},
                                                                    {"name": "u", "shape": [None, 16]}]})))
    entries = view.take_dirty(lambda event: b"")
    back = UrzaView.restore(entries.items(), lambda raw: None)
    assert back.kernels[aid].in_features == 16 and back.kernels[aid].features == 8
    assert back.state() == view.state()


def test_only_kernels_built_for_the_models_device_count(monkeypatch):
    """A home whose CPU library is complete is not ready for a model on an H100, and the reverse."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 80GB HBM3")
    view = UrzaView()
    for bp in ("on_cpu", "on_h100"):  # names of their own: the module's envelopes number each originator once
        _submit(view, bp)
    _kernel(view, "on_cpu", 8, "VALIDATED")
    _kernel(view, "on_h100", 8, "VALIDATED", hardware="h100")
    ids = ["on_cpu", "on_h100"]
    cpu, cuda = library_status(view, ids, 8), library_status(view, ids, 8, device="cuda")
    assert (cpu.validated, cpu.pending) == (1, 1) and (cuda.validated, cuda.pending) == (1, 1)
