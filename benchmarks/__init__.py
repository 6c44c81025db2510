"""Benchmarks for rng_fork; run ``python -m benchmarks`` from the repository root (see README.md)."""
