"""Benchmarks behind `esper bench NAME --json`."""

__all__ = ["disruption", "dormant", "events", "kernel_load", "policy", "streaming", "telemetry_overhead"]  # submodules, imported on use
