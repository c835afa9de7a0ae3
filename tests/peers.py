"""The peers' own loss code, loaded from their installed packages.

lightly and open_clip import torchvision at package level, which has no CPU build to install
here; their loss modules themselves need only torch. So the loss files are loaded from the
installed packages directly: parent packages are registered without running their ``__init__``,
and the one torchvision-importing helper module lightly's memory bank pulls in (used there only
for multi-GPU gathering) is replaced by an empty module.
"""
from __future__ import annotations

import functools
import importlib
import importlib.machinery
import importlib.util
import os
import sys
import types

import pytest

REQUIRE = os.environ.get("CONTRASTIVE_OPS_REQUIRE_PEERS") == "1"


def _missing(name: str):
    message = f"peer package {name} is not installed (pip install --no-deps {name})"
    if REQUIRE:
        pytest.fail(message)
    pytest.skip(message)


def _package_dir(name: str):
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return next(iter(spec.submodule_search_locations))


def _bare_package(qualname: str, path: str) -> None:
    if qualname in sys.modules:
        return
    module = types.ModuleType(qualname)
    module.__path__ = [path]
    module.__spec__ = importlib.machinery.ModuleSpec(qualname, None, is_package=True)
    module.__spec__.submodule_search_locations = [path]
    sys.modules[qualname] = module


def pytorch_metric_learning():
    try:
        return importlib.import_module("pytorch_metric_learning.losses")
    except ImportError:
        _missing("pytorch-metric-learning")


def _module_file(package: str, pip_name: str, filename: str):
    """One file of an installed package, executed as a module of its own (the package's
    ``__init__`` is not run)."""
    root = _package_dir(package)
    if root is None:
        _missing(pip_name)
    spec = importlib.util.spec_from_file_location(f"_peer_{package}_{filename[:-3]}", os.path.join(root, filename))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@functools.cache
def open_clip_loss():
    return _module_file("open_clip", "open_clip_torch", "loss.py")


@functools.cache
def lightly_losses():
    """``(ntx_ent_loss module, dcl_loss module)`` of the installed lightly."""
    root = _package_dir("lightly")
    if root is None:
        _missing("lightly")
    for sub in ("", "models", "models/modules", "loss", "utils"):
        _bare_package("lightly" + ("." + sub.replace("/", ".") if sub else ""), os.path.join(root, sub))
    sys.modules.setdefault("lightly.models.utils", types.ModuleType("lightly.models.utils"))
    return importlib.import_module("lightly.loss.ntx_ent_loss"), importlib.import_module("lightly.loss.dcl_loss")


@functools.cache
def siglip_kernel_reference():
    """siglip-kernel's own PyTorch reference module (its package ``__init__`` queries the CUDA
    device at import, so on a CPU machine the reference file is loaded alone)."""
    return _module_file("siglip_kernel", "siglip-kernel", "reference.py")


def require(name: str, package: str):
    """Import ``name`` (a CUDA-only peer used as a whole), failing or skipping like the others."""
    if importlib.util.find_spec(name) is None:
        _missing(package)
    return importlib.import_module(name)
