"""The CUDA path end to end on a GPU machine (skipped elsewhere; ``ops/gpu-check.sh`` runs these with the Triton
blend's cases): a kernel compiled for CUDA is labelled with the card, loads and runs its compiled program on CUDA
tensors and agrees with its eager module; Urabrask measures it there; the state packet names the card."""

from __future__ import annotations

import pytest
import torch

from esper_runtime.blueprints import starter_blueprints
from esper_runtime.devices import hardware_context, hardware_label
from esper_runtime.kasmina.kernels import KernelCache
from esper_runtime.tezzeret.compiler import BUNDLE_KIND, compile_ir, read_manifest_bytes
from esper_runtime.urabrask.worker import run_sandbox
from esper_runtime.urza import ArtifactStore

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(scope="module")
def bundle():
    bp = next(b for b in starter_blueprints() if b.name == "bottleneck_adapter")
    return compile_ir(bp.instantiate(16), "fast", device="cuda")


def test_a_cuda_build_is_labelled_with_the_card(bundle):
    manifest = read_manifest_bytes(bundle.data)
    assert manifest["device"] == "cuda" and bundle.hardware == manifest["hardware"] == hardware_label("cuda")
    assert not bundle.hardware.startswith("cpu") and f"-{bundle.hardware}-" in bundle.artifact_id


def test_the_compiled_program_runs_on_cuda_and_matches_eager(tmp_path, bundle):
    store = ArtifactStore(tmp_path / "artifacts")
    store.put(bundle.artifact_id, BUNDLE_KIND, bundle.data)
    child = KernelCache(store).get(bundle.artifact_id).instantiate().cuda()
    x = torch.randn(64, 16, device="cuda")
    with torch.no_grad():
        for p in child.parameters():
            p.add_(0.1 * torch.randn_like(p))
        compiled = child(x)
        eager = child.module(x)
    assert child.compiled_calls == 1 and compiled.device.type == "cuda"
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-5)
    with torch.no_grad():  # a CPU input is not what it was built for: the eager module runs, on the CPU copy
        cpu_child = KernelCache(store).get(bundle.artifact_id).instantiate()
        cpu_child(x.cpu())
    assert cpu_child.compiled_calls == 0


def test_urabrask_measures_a_cuda_kernel_on_the_card(bundle):
    verdict = run_sandbox(bundle.data, bundle.artifact_id, bundle.sha256)
    assert verdict["passed"], verdict
    assert verdict["device"] == "cuda" and verdict["latency_ms_mean"] > 0 and verdict["memory_mb_peak"] > 0
    assert verdict.get("power_watts_avg", 1.0) > 0  # present when NVML answers, and then a real draw


def test_the_state_packet_names_the_card():
    context = hardware_context(torch.device("cuda"))
    assert context["device"] == "cuda" and context["hardware"] == hardware_label("cuda")
    assert context["name"] == torch.cuda.get_device_name()
