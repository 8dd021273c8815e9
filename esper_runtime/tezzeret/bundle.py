"""Reading kernel bundles (``esper.kernel.v1``) back: the Kasmina kernel kind for Tezzeret's artifacts.

Nothing in a bundle is trusted before the cache has checked its SHA-256: the manifest's IR is validated again, the
weights load with ``weights_only=True`` and must match the IR's parameters exactly, and the compiled package is
written to a content-addressed file before AOTInductor loads it. The compiled program runs only on inputs that
match its signature (2-D float32 on the device it was compiled for — the manifest's ``device``, ``cpu`` for bundles
that predate it — with the chunk's width and a batch in range); anything else, and every forward that needs
gradients, runs the eager module built from the IR, so the host's gradients keep flowing through a frozen child
while it trains, and a CPU kernel grafted into a CUDA model runs eagerly there rather than on the wrong device.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import zipfile
from pathlib import Path

import torch
from torch import nn

from esper_runtime.blueprints import BlueprintInvalid, ConcreteIR, build_module
from esper_runtime.kasmina.exceptions import KernelLoadError
from esper_runtime.kasmina.kernels import LoadedKernel
from esper_runtime.tezzeret.compiler import BUNDLE_KIND
from esper_runtime.urza.store import KernelArtifact

__all__ = ["CompiledChild", "load_bundle"]

# what each member of a bundle may declare, checked before it is read (a member cannot inflate past its declared
# size: zipfile stops there)
MAX_MEMBER_BYTES = {"manifest.json": 1 << 20, "weights.pt": 64 << 20, "kernel.pt2": 96 << 20}


class CompiledChild(nn.Module):
    """The eager module (which owns the weights) plus the compiled program that runs them without autograd."""

    def __init__(self, module: nn.Module, package_path: Path | None, features: int, batch_range: tuple[int, int],
                 in_features: int | None = None, input_source: str | None = None, device: str = "cpu"):
        super().__init__()
        self.device = device  # the device type the compiled program was built for
        self.module = module
        self.features = features
        self.in_features = in_features  # the width of the wide input for a design that reads one
        self.input_source = input_source  # "layer" or "model": which input that is
        self.batch_range = batch_range
        self._package_path = package_path
        self._runner = None
        self.compiled_calls = 0

    def _compiled(self):
        if self._runner is None and self._package_path is not None:
            # the package file is named by the SHA-256 of the bytes the verified bundle held: native code is loaded
            # only if the file still holds them
            if _sha256_file(self._package_path) != self._package_path.stem:
                raise KernelLoadError(f"{self._package_path.name}: the file no longer holds the verified kernel "
                                      f"(its bytes changed since the bundle was loaded): refused")
            self._runner = torch._inductor.aoti_load_package(str(self._package_path))
        return self._runner

    def _fits(self, x: torch.Tensor, width: int) -> bool:
        lo, hi = self.batch_range
        return (x.dim() == 2 and x.shape[1] == width and lo <= x.shape[0] <= hi
                and x.dtype == torch.float32 and x.device.type == self.device)

    def forward(self, x: torch.Tensor, u: torch.Tensor | None = None) -> torch.Tensor:
        inputs = (x,) if self.in_features is None else (x, u)
        needs_grad = torch.is_grad_enabled() and (any(t is not None and t.requires_grad for t in inputs)
                                                  or any(p.requires_grad for p in self.parameters()))
        fits = self._fits(x, self.features) and (u is None if self.in_features is None else
                                                 (u is not None and self._fits(u, self.in_features)
                                                  and u.shape[0] == x.shape[0]))
        if needs_grad or not fits or self._package_path is None:
            return self.module(*inputs)
        runner = self._compiled()
        self.compiled_calls += 1
        return runner(*(t.contiguous() for t in inputs), *[p.detach() for p in self.module.parameters()])

    def __deepcopy__(self, memo):
        import copy

        return CompiledChild(copy.deepcopy(self.module, memo), self._package_path, self.features, self.batch_range,
                             self.in_features, self.input_source, self.device)


def load_bundle(artifact: KernelArtifact, cache_dir: Path | None = None) -> LoadedKernel:
    try:
        with zipfile.ZipFile(io.BytesIO(artifact.data)) as zf:
            members = {i.filename: i for i in zf.infolist()}
            for name, limit in MAX_MEMBER_BYTES.items():
                if name not in members:
                    raise KernelLoadError(f"kernel {artifact.artifact_id}: bundle lacks {name}")
                if members[name].file_size > limit:
                    raise KernelLoadError(f"kernel {artifact.artifact_id}: {name} declares "
                                          f"{members[name].file_size >> 20} MiB, over its {limit >> 20} MiB limit: "
                                          "refused unread")
            manifest = json.loads(zf.read("manifest.json"))
            weights = zf.read("weights.pt")
            pt2 = zf.read("kernel.pt2")
    except zipfile.BadZipFile as exc:
        raise KernelLoadError(f"kernel {artifact.artifact_id}: not a kernel bundle: {exc}") from None
    if manifest.get("format") != BUNDLE_KIND or manifest.get("artifact_id") != artifact.artifact_id:
        raise KernelLoadError(f"kernel {artifact.artifact_id}: manifest names {manifest.get('artifact_id')!r}, "
                              f"format {manifest.get('format')!r}")
    try:
        ir = ConcreteIR.from_json(json.dumps(manifest["ir"]))
    except BlueprintInvalid as exc:
        raise KernelLoadError(f"kernel {artifact.artifact_id}: its IR is invalid: {exc}") from None
    module = build_module(ir)
    state = torch.load(io.BytesIO(weights), weights_only=True, map_location="cpu")
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    if {k: tuple(v.shape) for k, v in state.items()} != expected:
        raise KernelLoadError(f"kernel {artifact.artifact_id}: weights do not match the IR's parameters")
    module.load_state_dict(state)
    if cache_dir is None:
        from streams.config import load_settings

        cache_dir = load_settings().home / "kernel-cache"
    digest = hashlib.sha256(pt2).hexdigest()
    package = cache_dir / f"{digest}.pt2"
    # a file is trusted for what it holds, not for its name: one that does not hash to its name is replaced with
    # the bytes of the verified bundle (and checked again just before the native code is loaded)
    if not package.exists() or _sha256_file(package) != digest:
        package.parent.mkdir(parents=True, exist_ok=True)
        tmp = package.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_bytes(pt2)
        os.replace(tmp, package)
    dyn = manifest["signature"]["inputs"][0]["dynamic"]["0"]
    device = manifest.get("device", "cpu")
    if device not in ("cpu", "cuda"):
        raise KernelLoadError(f"kernel {artifact.artifact_id}: built for device {device!r}, not cpu or cuda")
    child = CompiledChild(module, package, ir.features, (int(dyn[0]), int(dyn[1])), ir.in_features,
                          ir.input_source, device)
    return LoadedKernel(artifact.artifact_id, artifact.kind, ir.features, ir.trainable, child,
                        {"blueprint_id": ir.blueprint_id, "name": ir.name, "pipeline": manifest.get("pipeline"),
                         "device": device, "hardware": manifest.get("hardware")})


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()

