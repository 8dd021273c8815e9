"""Simic: the experience dataset read from the log and the policy training on it."""

__all__ = ["dataset", "train"]  # submodules, imported on use
