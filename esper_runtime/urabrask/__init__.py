"""Urabrask: the characterization engine that measures and tags kernel artifacts."""

__all__ = ["sandbox", "tagging", "worker"]  # submodules, imported on use
