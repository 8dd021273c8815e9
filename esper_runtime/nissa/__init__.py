"""Nissa: the run page (``static/``, served by the API) and the alert rules over the analytics tables."""

__all__ = ["alerts"]  # submodules, imported on use
