"""Kernels as Kasmina sees them: fetched by artifact id, hash-verified, built into a module, cached (LRU).

A kernel *kind* says how an artifact's bytes become a module; kinds register a builder here. Kasmina ships one
kind, ``esper.reference.v1`` (a JSON header line, then a weights-only ``torch.save`` state dict), with a few small
chunk-shaped modules; the innovation plane registers its compiled-artifact kinds the same way.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Protocol

import torch
from torch import nn

from esper_runtime.kasmina.exceptions import KernelLoadError
from esper_runtime.rng import seeded
from esper_runtime.urza.store import KernelArtifact

__all__ = [
    "ArtifactSource", "LoadedKernel", "KernelCache", "register_kernel_kind", "reference_artifact", "REFERENCE_KIND",
    "REFERENCE_OPS",
]

REFERENCE_KIND = "esper.reference.v1"


class ArtifactSource(Protocol):
    def get_artifact(self, artifact_id: str) -> KernelArtifact: ...


@dataclass
class LoadedKernel:
    artifact_id: str
    kind: str
    features: int  # the chunk width it was built for
    trainable: bool
    prototype: nn.Module
    meta: dict = field(default_factory=dict)

    def instantiate(self) -> nn.Module:
        """A module of the seed's own: trainable kernels must not share weights between seeds."""
        return copy.deepcopy(self.prototype) if self.trainable else self.prototype


Builder = Callable[[KernelArtifact], LoadedKernel]
# Kinds added with ``register_kernel_kind`` (the reference kind is in ``_builder`` below)
_BUILDERS: dict[str, Builder] = {}
# Kinds whose builder lives in a module imported on first use: kind -> (module, function)
_LAZY_KINDS = {"esper.kernel.v1": ("esper_runtime.tezzeret.bundle", "load_bundle")}


def register_kernel_kind(kind: str, builder: Builder) -> None:
    """Teach every kernel cache a kind of artifact (an explicit call: nothing registers itself on import)."""
    _BUILDERS[kind] = builder


def _builder(kind: str) -> Builder | None:
    if kind == REFERENCE_KIND:
        return _build_reference
    if kind in _LAZY_KINDS:
        import importlib

        module, function = _LAZY_KINDS[kind]
        return getattr(importlib.import_module(module), function)
    return _BUILDERS.get(kind)


class KernelCache:
    """Bounded LRU of built kernels, keyed by artifact id. Nothing is used before its hash is verified: against the
    digest the log recorded for it (``KernelCompiled.sha256``, through ``expected_digest``, which Tamiyo sets from
    her Urza view) when one is known — the store's own index is not trusted for that — and against the store's
    declared digest otherwise (a kernel given by hand, with no log behind it)."""

    def __init__(self, source: ArtifactSource, capacity: int = 32,
                 expected_digest: Callable[[str], str | None] | None = None):
        self.source = source
        self.capacity = capacity
        self.expected_digest = expected_digest  # artifact id -> the SHA-256 on the log (None: not on the log)
        self._entries: OrderedDict[str, LoadedKernel] = OrderedDict()
        self.hits = self.misses = 0
        self.last_load_ms = 0.0

    def warm_up(self) -> float:
        """Import what loading a compiled kernel needs (about a second, once per process), so the first germination
        during training does not pay for it. Returns the seconds spent."""
        import importlib

        t0 = time.perf_counter()
        for module, _ in _LAZY_KINDS.values():
            importlib.import_module(module)
        for module in ("torch._inductor.package", "torch.export.pt2_archive._package", "torch._inductor.codecache",
                       "torch._inductor.cpp_builder", "torch.utils.cpp_extension"):
            importlib.import_module(module)
        return time.perf_counter() - t0

    def __contains__(self, artifact_id: str) -> bool:
        return artifact_id in self._entries

    def get(self, artifact_id: str) -> LoadedKernel:
        kernel = self._entries.get(artifact_id)
        if kernel is not None:
            self._entries.move_to_end(artifact_id)
            self.hits += 1
            return kernel
        self.misses += 1
        t0 = time.perf_counter()
        kernel = self._load(artifact_id)
        self.last_load_ms = (time.perf_counter() - t0) * 1000
        self._entries[artifact_id] = kernel
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)
        return kernel

    def evict(self, artifact_id: str) -> None:
        self._entries.pop(artifact_id, None)

    def _load(self, artifact_id: str) -> LoadedKernel:
        try:
            artifact = self.source.get_artifact(artifact_id)
        except Exception as exc:
            raise KernelLoadError(f"kernel {artifact_id}: not available: {exc}") from exc
        actual = hashlib.sha256(artifact.data).hexdigest()
        if self.expected_digest is not None:
            logged = self.expected_digest(artifact_id)
            if logged is None:
                raise KernelLoadError(f"kernel {artifact_id}: no KernelCompiled on the log records its hash: refused")
            if actual != logged:
                raise KernelLoadError(f"kernel {artifact_id}: its bytes hash to {actual[:12]}…, the log recorded "
                                      f"{logged[:12]}…: a substituted or corrupt artifact refused")
        if actual != artifact.sha256:
            raise KernelLoadError(f"kernel {artifact_id}: hash mismatch (declared {artifact.sha256[:12]}…, "
                                  f"content {actual[:12]}…): corrupt or tampered artifact refused")
        builder = _builder(artifact.kind)
        if builder is None:
            raise KernelLoadError(f"kernel {artifact_id}: unknown kind {artifact.kind!r}")
        try:
            return builder(artifact)
        except KernelLoadError:
            raise
        except Exception as exc:
            raise KernelLoadError(f"kernel {artifact_id}: cannot be built: {exc}") from exc


# ----------------------------------------------------------------------------- the reference kind
class ResidualMLP(nn.Module):
    """y + W2·relu(W1·y); W2 starts at zero, so the kernel starts as the identity."""

    def __init__(self, features: int, hidden: int):
        super().__init__()
        self.up = nn.Linear(features, hidden)
        self.down = nn.Linear(hidden, features)
        nn.init.zeros_(self.down.weight)
        nn.init.zeros_(self.down.bias)

    def forward(self, y):
        return y + self.down(torch.relu(self.up(y)))


class LowRank(nn.Module):
    """y + B·A·y with rank r; B starts at zero (LoRA-style)."""

    def __init__(self, features: int, rank: int):
        super().__init__()
        self.a = nn.Linear(features, rank, bias=False)
        self.b = nn.Linear(rank, features, bias=False)
        nn.init.zeros_(self.b.weight)

    def forward(self, y):
        return y + self.b(self.a(y))


class FixedSwishResidual(nn.Module):
    """y + 0.1·swish(y): fixed-function, no parameters."""

    def forward(self, y):
        return y + 0.1 * y * torch.sigmoid(y)


REFERENCE_OPS: dict[str, tuple[Callable[..., nn.Module], bool]] = {
    "residual_mlp": (lambda f, hidden=16, **_: ResidualMLP(f, hidden), True),
    "low_rank": (lambda f, rank=4, **_: LowRank(f, rank), True),
    "fixed_swish": (lambda f, **_: FixedSwishResidual(), False),
}


def reference_artifact(op: str, features: int, seed: int = 0, **params) -> tuple[str, bytes]:
    """Bytes of an ``esper.reference.v1`` artifact and a content-derived id."""
    factory, _ = REFERENCE_OPS[op]
    with seeded(seed):
        module = factory(features, **params)
    header = json.dumps({"op": op, "features": features, "params": params}, sort_keys=True).encode()
    buf = io.BytesIO()
    torch.save(module.state_dict(), buf)
    data = header + b"\n" + buf.getvalue()
    return f"{hashlib.sha256(data).hexdigest()[:12]}-cpu-reference-{op}", data


def _build_reference(artifact: KernelArtifact) -> LoadedKernel:
    header, _, weights = artifact.data.partition(b"\n")
    spec = json.loads(header)
    op, features, params = spec["op"], int(spec["features"]), dict(spec.get("params", {}))
    if op not in REFERENCE_OPS:
        raise KernelLoadError(f"kernel {artifact.artifact_id}: unknown op {op!r}")
    if not 1 <= features <= 1 << 16 or any(not isinstance(v, int) or not 1 <= v <= 1 << 14 for v in params.values()):
        raise KernelLoadError(f"kernel {artifact.artifact_id}: absurd shape {spec}")
    factory, trainable = REFERENCE_OPS[op]
    module = factory(features, **params)
    module.esper_recipe = {"kind": "reference", "op": op, "features": features, "params": params}
    # Never unpickle: weights_only refuses anything but tensors and plain containers.
    state = torch.load(io.BytesIO(weights), weights_only=True, map_location="cpu")
    module.load_state_dict(state)
    return LoadedKernel(artifact.artifact_id, artifact.kind, features, trainable, module, {"op": op, **params})



def module_from_recipe(recipe: dict) -> nn.Module:
    """Rebuild a child module (untrained weights) from the ``esper_recipe`` its builder left on it: what
    ``load_model`` needs to bring a grown model back without Urza or the artifact store."""
    kind = recipe.get("kind") if isinstance(recipe, dict) else None
    if kind == "ir":
        from esper_runtime.blueprints import BlueprintInvalid, ConcreteIR, build_module

        try:
            return build_module(ConcreteIR.from_json(json.dumps(recipe["ir"])))
        except (BlueprintInvalid, KeyError, TypeError) as exc:
            raise KernelLoadError(f"a saved child's IR is invalid: {exc}") from None
    if kind == "reference" and recipe.get("op") in REFERENCE_OPS:
        features, params = int(recipe["features"]), dict(recipe.get("params") or {})
        if not 1 <= features <= 1 << 16 or any(not isinstance(v, int) or not 1 <= v <= 1 << 14
                                               for v in params.values()):
            raise KernelLoadError(f"a saved child has an absurd shape: {recipe}")
        return REFERENCE_OPS[recipe["op"]][0](features, **params)
    raise KernelLoadError(f"a saved child has an unknown recipe: {str(recipe)[:200]}")
