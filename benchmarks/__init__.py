"""Benchmarks of contrastive_ops (run from the repository root, e.g. ``python -m benchmarks.cpu_memory``)."""
import tools  # noqa: F401  (an installed ``kernels`` before the root's folder: tools.source_tree)
