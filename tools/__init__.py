"""Developer tools of the repository (run from its root, e.g. ``python -m tools.gpu_run.first_run``)."""
from .source_tree import prefer_installed_kernels

prefer_installed_kernels()  # the root's kernels/ folder must not hide an installed ``kernels`` (source_tree)
