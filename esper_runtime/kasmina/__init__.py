"""Kasmina, the seed execution layer: seeds inside a host model's layers and their 11-state lifecycle."""

from esper_runtime.kasmina.config import KasminaConfig
from esper_runtime.kasmina.controller import BoundaryReport, Kasmina, seed_name
from esper_runtime.kasmina.exceptions import (
    IllegalTransition,
    KasminaError,
    KernelLoadError,
    StateChecksumError,
)
from esper_runtime.kasmina.kernels import KernelCache, LoadedKernel, reference_artifact, register_kernel_kind
from esper_runtime.kasmina.layer import KasminaLayer
from esper_runtime.kasmina.lifecycle import Code, Command
from esper_runtime.kasmina.wrap import MorphableModel, wrap

__all__ = [
    "KasminaConfig", "BoundaryReport", "Kasmina", "seed_name", "IllegalTransition", "KasminaError",
    "KernelLoadError", "StateChecksumError", "KernelCache", "LoadedKernel", "reference_artifact",
    "register_kernel_kind", "KasminaLayer", "Code", "Command", "MorphableModel", "wrap",
]
