"""Tezzeret's pipelines: an instantiated BlueprintIR -> a real compiled artifact (a kernel bundle).

The compiled program takes the weights as *inputs* (``forward(x, *params)``, exported with ``torch.export`` and
packaged by AOTInductor), so one artifact runs any trained weights of its design: a seed's child keeps learning
eagerly and the artifact runs its current weights. (Packaging the weights as swappable constants instead was
tried: AOTInductor folded a bias into a kernel, and ``load_constants`` then silently left it stale.)

A bundle is a zip holding ``manifest.json`` (ids, IR, signature, pipeline, toolchain), ``weights.pt`` (initial
weights, a plain state dict read back with ``weights_only=True``) and ``kernel.pt2`` (the AOTInductor package).
Artifact ids follow appendix J.3: ``[ir-hash:12]-[hardware]-[pipeline]-[toolchain-hash:6]``.
"""

from __future__ import annotations

import hashlib
import io
import json
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch

from esper_runtime.tezzeret.exceptions import CompilationError
from torch import nn

from esper_runtime.blueprints import ConcreteIR, build_module
from esper_runtime.devices import hardware_label, resolve

__all__ = ["PIPELINES", "BUNDLE_KIND", "CompiledBundle", "CompilationError", "compile_ir",
           "toolchain_hash", "artifact_id", "BATCH_MIN", "BATCH_MAX", "read_manifest_bytes"]

BUNDLE_KIND = "esper.kernel.v1"
BATCH_MIN, BATCH_MAX = 2, 1 << 22

# Inductor settings per pipeline (appendix J.2): fast = fewest passes, aggressive = autotuning.
PIPELINES: dict[str, dict] = {
    "fast": {"epilogue_fusion": False, "pattern_matcher": False},
    "standard": {},
    "aggressive": {"max_autotune": True, "coordinate_descent_tuning": True},
}


@dataclass(frozen=True)
class CompiledBundle:
    artifact_id: str
    data: bytes
    sha256: str
    signature: dict
    compile_ms: float
    hardware: str
    pipeline: str
    toolchain: str


def read_manifest_bytes(data: bytes) -> dict:
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        return json.loads(zf.read("manifest.json"))


def toolchain_hash(pipeline: str) -> str:
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:  # pragma: no cover - triton ships with torch on Linux
        triton_version = "none"
    facts = {"torch": torch.__version__, "triton": triton_version, "python": sys.version.split()[0],
             "cuda": torch.version.cuda, "configs": PIPELINES[pipeline], "bundle": BUNDLE_KIND}
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:6]


def artifact_id(ir: ConcreteIR, hardware: str, pipeline: str) -> str:
    return f"{ir.ir_hash[:12]}-{hardware}-{pipeline}-{toolchain_hash(pipeline)}"


class _Functional(nn.Module):
    """forward(x, *params) — or forward(x, u, *params) for a design that reads the layer's input: the blueprint's
    module with its weights passed in."""

    def __init__(self, module: nn.Module, reads_input: bool):
        super().__init__()
        self.module = module
        self.inputs = 2 if reads_input else 1
        self.names = [n for n, _ in module.named_parameters()]

    def forward(self, x, *rest):
        inputs, params = (x, *rest[:self.inputs - 1]), rest[self.inputs - 1:]
        return torch.func.functional_call(self.module, dict(zip(self.names, params)), inputs)


def signature_of(ir: ConcreteIR, module: nn.Module) -> dict:
    dynamic = {"0": [BATCH_MIN, BATCH_MAX]}
    inputs = [{"name": "x", "shape": [None, ir.features], "dtype": "float32", "dynamic": dynamic}]
    if ir.in_features is not None:
        name = "x0" if ir.input_source == "model" else "u"  # what the second input is, for whoever loads it
        inputs.append({"name": name, "shape": [None, ir.in_features], "dtype": "float32", "dynamic": dynamic})
    return {
        "inputs": inputs,
        "params": [{"name": n, "shape": list(p.shape), "dtype": "float32"} for n, p in module.named_parameters()],
        "outputs": [{"shape": [None, ir.features], "dtype": "float32"}],
    }


def compile_ir(ir: ConcreteIR, pipeline: str = "fast", seed: int = 0,
               device: str | torch.device = "cpu") -> CompiledBundle:
    """Compile for ``device`` (``cpu``, ``cuda`` or ``auto``): the program is exported with example inputs and weights
    on that device, AOTInductor builds C++ for a CPU program and Triton kernels for a CUDA one, and the artifact is
    labelled with that device's hardware."""
    if pipeline not in PIPELINES:
        raise CompilationError(f"unknown pipeline {pipeline!r} (known: {', '.join(PIPELINES)})")
    target = resolve(device)
    hardware = hardware_label(target)
    aid = artifact_id(ir, hardware, pipeline)
    module = build_module(ir, seed=seed).eval()
    params = [p.detach().to(target) for p in module.parameters()]
    t0 = time.perf_counter()
    try:
        batch = torch.export.Dim("batch", min=BATCH_MIN, max=BATCH_MAX)
        extra = [torch.randn(8, ir.in_features, device=target)] if ir.in_features is not None else []
        rest = tuple({0: batch} for _ in extra) + tuple(None for _ in params)
        dynamic = ({0: batch}, rest) if rest else ({0: batch},)
        program = torch.export.export(_Functional(module.to(target), bool(extra)),
                                      (torch.randn(8, ir.features, device=target), *extra, *params),
                                      dynamic_shapes=dynamic)
        with tempfile.TemporaryDirectory(prefix="tezzeret-") as tmp:
            package = Path(tmp) / "kernel.pt2"
            torch._inductor.aoti_compile_and_package(program, package_path=str(package),
                                                     inductor_configs=dict(PIPELINES[pipeline]))
            pt2 = package.read_bytes()
    except Exception as exc:  # export and inductor raise many types; each is a failed compilation
        raise CompilationError(f"{type(exc).__name__}: {exc}"[:2000]) from exc
    compile_ms = (time.perf_counter() - t0) * 1000
    weights = io.BytesIO()
    torch.save(module.cpu().state_dict(), weights)  # weights travel as CPU tensors; the loader moves them
    signature = signature_of(ir, module)
    manifest = {
        "format": BUNDLE_KIND, "artifact_id": aid, "blueprint_id": ir.blueprint_id, "ir": ir.doc,
        "ir_hash": ir.ir_hash, "pipeline": pipeline, "hardware": hardware, "device": target.type,
        "toolchain": toolchain_hash(pipeline),
        "torch": torch.__version__, "signature": signature, "trainable": ir.trainable,
    }
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        # fixed timestamps: the same inputs give the same bytes, hence the same hash
        for name, payload in (("manifest.json", json.dumps(manifest, sort_keys=True).encode()),
                              ("weights.pt", weights.getvalue()), ("kernel.pt2", pt2)):
            info = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
            zf.writestr(info, payload)
    data = buf.getvalue()
    return CompiledBundle(aid, data, hashlib.sha256(data).hexdigest(), signature, compile_ms, hardware, pipeline,
                          manifest["toolchain"])
