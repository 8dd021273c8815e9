"""The ``esper`` command."""

__all__ = ["analytics", "api", "bench", "chaos", "infra", "library", "main", "processors", "replay", "simic", "tail"]  # submodules, imported on use
