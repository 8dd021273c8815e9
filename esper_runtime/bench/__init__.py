"""Benchmarks behind `esper bench NAME --json`."""
