"""What every benchmark row records beside its numbers: device, versions, commit, time."""
from __future__ import annotations

import datetime as _dt
import importlib.util
import os
import platform
import subprocess

import torch


def commit() -> str:
    """The checkout's short hash (``-dirty`` with uncommitted changes); ``CONTRASTIVE_OPS_COMMIT``
    overrides it where the tree was copied without its ``.git`` (e.g. onto a GPU machine)."""
    if os.environ.get("CONTRASTIVE_OPS_COMMIT"):
        return os.environ["CONTRASTIVE_OPS_COMMIT"]
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True)
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, check=False
        ).stdout
        return out.stdout.strip() + ("-dirty" if dirty.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{name} ({torch.get_num_threads()} threads)"


def environment(device: torch.device) -> dict:
    triton = "not installed"
    if importlib.util.find_spec("triton") is not None:
        import triton

        triton = triton.__version__
    return {
        "device": device_name(device),
        "torch": torch.__version__,
        "triton": triton,
        "commit": commit(),
        "timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
