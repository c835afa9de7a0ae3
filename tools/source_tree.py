"""Running from the source tree next to an installed ``kernels`` distribution.

This repository's top-level ``kernels/`` folder is installed as ``contrastive_ops.kernels``; nothing
imports it as ``kernels``. But while the repository root is on ``sys.path`` (pytest's ``pythonpath``,
``python -m`` from the root) the folder shadows an installed ``kernels`` distribution — Hugging Face's
hub kernels, which transformers (≥ 5.25) imports whenever it is installed, so that importing
sentence-transformers from the root fails with ``cannot import name ... from 'kernels'``.
:func:`prefer_installed_kernels` puts a finder first on ``sys.meta_path`` that resolves ``kernels`` to
the installed distribution (lazily: nothing is imported until someone asks for it).
"""
from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.metadata
import sys
from pathlib import Path


class _InstalledKernelsFirst(importlib.abc.MetaPathFinder):
    """Finds the top-level ``kernels`` package in ``site`` only (its submodules follow its ``__path__``)."""

    def __init__(self, site: Path):
        self.site = str(site)

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "kernels":
            return None
        return importlib.machinery.PathFinder.find_spec(fullname, [self.site])


def prefer_installed_kernels() -> bool:
    """Resolve ``import kernels`` to an installed ``kernels`` distribution rather than this repository's
    folder; True when one is installed (and the finder is in place), False otherwise (nothing changes)."""
    if any(isinstance(f, _InstalledKernelsFirst) for f in sys.meta_path):
        return True
    try:
        dist = importlib.metadata.distribution("kernels")
    except importlib.metadata.PackageNotFoundError:
        return False
    init = Path(dist.locate_file("kernels/__init__.py"))
    if not init.is_file():
        return False
    sys.meta_path.insert(0, _InstalledKernelsFirst(init.parent.parent))
    return True
