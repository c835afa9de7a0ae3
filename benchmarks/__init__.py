"""Benchmarks of contrastive_ops (run from the repository root, e.g. ``python -m benchmarks.cpu_memory``)."""
