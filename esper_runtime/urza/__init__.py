"""Urza: the library of blueprints and kernel artifacts. Today: the content-addressed artifact store."""

from esper_runtime.urza.store import ArtifactNotFound, ArtifactStore, KernelArtifact

__all__ = ["ArtifactNotFound", "ArtifactStore", "KernelArtifact"]
