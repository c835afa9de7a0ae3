"""``python -m contrastive_ops.info``: versions, devices and which backends can run here (and why not)."""
from __future__ import annotations

import importlib
import importlib.util
import platform

import torch

from . import __version__
from .backends import BACKENDS, backend_status


def _version(module: str) -> str:
    if importlib.util.find_spec(module) is None:
        return "not installed"
    try:
        return getattr(importlib.import_module(module), "__version__", "installed")
    except Exception as exc:  # noqa: BLE001  (a broken install is reported, not raised)
        return f"fails to import: {exc}"


def report() -> str:
    lines = [
        f"contrastive_ops {__version__}",
        f"python {platform.python_version()} ({platform.machine()})",
        f"torch {torch.__version__} (CUDA build: {torch.version.cuda or 'none'})",
        f"triton {_version('triton')}",
        f"numpy {_version('numpy')}",
    ]
    if torch.cuda.is_available():
        names = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
        lines.append(f"CUDA devices: {names}")
        device = torch.device("cuda")
    else:
        lines.append("CUDA devices: none")
        device = torch.device("cpu")
    from . import _ext

    ext = _ext.describe()
    if not torch.cuda.is_available():
        ext += "; it cannot run here: no CUDA GPU"
    lines.append(f"CUDA extension (backend 'cuda'): {ext}")
    lines.append(f"backends (for {device.type} tensors):")
    for name in BACKENDS:
        ok, why = backend_status(name, device)
        lines.append(f"  {name:8s} {'available' if ok else 'unavailable: ' + why}")
    return "\n".join(lines)


def main() -> None:
    print(report())


if __name__ == "__main__":
    main()
