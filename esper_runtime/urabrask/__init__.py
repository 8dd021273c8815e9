"""Urabrask: the characterization engine that measures and tags kernel artifacts."""
