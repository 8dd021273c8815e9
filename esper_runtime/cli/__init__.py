"""The ``esper`` command."""

__all__ = ["analytics", "api", "bench", "infra", "library", "main", "processors", "replay", "simic", "tail"]  # submodules, imported on use
