"""Tezzeret: the background compiler that turns blueprints into kernel artifacts."""

__all__ = ["bundle", "compiler", "exceptions", "worker"]  # submodules, imported on use
