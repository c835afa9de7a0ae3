"""Argument validation shared by the functional API, the modules and the compat classes.

Every check runs before any computation and raises ``TypeError`` (wrong kind of object or dtype)
or ``ValueError`` (wrong shape or value) with a message naming the argument and showing the value.
No check reads tensor values (that would be a host sync), except where noted.
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import torch
import torch.distributed as dist

from contrastive_ops.kernels import config as _tile_config  # imports no Triton

from .core import EXCHANGES

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
REDUCTIONS = ("mean", "sum", "none")


def _describe(x) -> str:
    if isinstance(x, torch.Tensor):
        return f"Tensor(shape={tuple(x.shape)}, dtype={x.dtype}, device={x.device})"
    return repr(x)


def check_dense(name: str, x: torch.Tensor) -> torch.Tensor:
    """A strided (dense) tensor: sparse layouts and nested tensors raise a TypeError naming ``name``."""
    if x.layout != torch.strided or x.is_nested:
        kind = "a nested tensor" if x.is_nested else f"layout {x.layout}"
        raise TypeError(f"{name} must be a dense (strided) tensor, got {kind}: use .to_dense()")
    return x


def check_features(name: str, x, *, ndim: int = 2) -> torch.Tensor:
    """A dense floating tensor of ``ndim`` dims with at least one row and one feature."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}: {x!r}")
    check_dense(name, x)
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"{name} must have a floating dtype (float16, bfloat16, float32, float64), got {x.dtype}"
        )
    if x.dim() != ndim:
        raise ValueError(f"{name} must be {ndim}-D [rows, features], got shape {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError(f"{name} is an empty batch: shape {tuple(x.shape)}")
    if x.shape[-1] == 0:
        raise ValueError(f"{name} has no features: shape {tuple(x.shape)}")
    return x


def check_same_kind(names: Sequence[str], tensors: Sequence[torch.Tensor | None]) -> None:
    """Same feature dim, device and dtype for every given (non-None) tensor."""
    pairs = [(n, t) for n, t in zip(names, tensors) if t is not None]
    n0, t0 = pairs[0]
    for n, t in pairs[1:]:
        if t.shape[-1] != t0.shape[-1]:
            raise ValueError(
                f"feature dims differ: {n0} has {t0.shape[-1]} (shape {tuple(t0.shape)}), "
                f"{n} has {t.shape[-1]} (shape {tuple(t.shape)})"
            )
        if t.device != t0.device:
            raise ValueError(f"tensors on different devices: {n0} on {t0.device}, {n} on {t.device}")
        if t.dtype != t0.dtype:
            raise TypeError(f"dtypes differ: {n0} is {t0.dtype}, {n} is {t.dtype}")


def check_same_rows(name_a: str, a: torch.Tensor, name_b: str, b: torch.Tensor) -> None:
    if a.shape[0] != b.shape[0]:
        raise ValueError(
            f"batch sizes differ: {name_a} has {a.shape[0]} rows (shape {tuple(a.shape)}), "
            f"{name_b} has {b.shape[0]} rows (shape {tuple(b.shape)})"
        )


_FP32_MAX = torch.finfo(torch.float32).max


def check_temperature(temperature, name: str = "temperature", ref: torch.Tensor | None = None):
    """A finite positive real number (a Python or NumPy scalar), or a learnable temperature: a
    one-element floating tensor, returned 0-d (its value is not read: no host sync; it may require
    grad and then receives one), on ``ref``'s device when ``ref`` is given."""
    if isinstance(temperature, torch.Tensor):
        check_dense(name, temperature)
        if temperature.dtype not in FLOAT_DTYPES:
            raise TypeError(f"{name} must be a floating tensor, got dtype {temperature.dtype}")
        if temperature.numel() != 1:
            raise ValueError(f"{name} must hold one value, got shape {tuple(temperature.shape)}")
        if ref is not None and temperature.device != ref.device:
            raise ValueError(f"{name} is on {temperature.device} but the features are on {ref.device}")
        return temperature.reshape(())
    if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real):
        raise TypeError(f"{name} must be a positive real number or a one-element tensor, got "
                        f"{_describe(temperature)}")
    t = float(temperature)
    if not math.isfinite(t) or t <= 0:
        raise ValueError(f"{name} must be finite and > 0, got {temperature!r}")
    if 1.0 / t > _FP32_MAX:  # the kernels scale by 1/t in fp32: it must be a finite fp32 number
        raise ValueError(f"{name} must be at least {1.0 / _FP32_MAX:.3g} (1/{name} is computed in fp32), "
                         f"got {temperature!r}")
    return t


def check_scale(scale, ref: torch.Tensor, name: str = "logit_scale"):
    """A finite positive float, or a one-element floating tensor on ``ref``'s device.

    A tensor is returned as a 0-d tensor (its value is not read: no host sync); it may require grad.
    """
    if isinstance(scale, torch.Tensor):
        check_dense(name, scale)
        if scale.dtype not in FLOAT_DTYPES:
            raise TypeError(f"{name} must be a floating tensor, got dtype {scale.dtype}")
        if scale.numel() != 1:
            raise ValueError(f"{name} must hold one value, got shape {tuple(scale.shape)}")
        if scale.device != ref.device:
            raise ValueError(f"{name} is on {scale.device} but the features are on {ref.device}")
        return scale.reshape(())
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real):
        raise TypeError(f"{name} must be a float or a 0-d tensor, got {_describe(scale)}")
    s = float(scale)
    if not math.isfinite(s) or s <= 0:
        raise ValueError(f"{name} must be finite and > 0, got {scale!r}")
    if s > _FP32_MAX:  # the kernels scale in fp32
        raise ValueError(f"{name} must be a finite fp32 number (at most {_FP32_MAX:.4g}), got {scale!r}")
    return s


def check_bias(bias, ref: torch.Tensor, name: str = "logit_bias"):
    """A finite real number (any sign), or a one-element floating tensor on ``ref``'s device (returned
    as a 0-d tensor, value not read; it may require grad)."""
    if isinstance(bias, torch.Tensor):
        check_dense(name, bias)
        if bias.dtype not in FLOAT_DTYPES:
            raise TypeError(f"{name} must be a floating tensor, got dtype {bias.dtype}")
        if bias.numel() != 1:
            raise ValueError(f"{name} must hold one value, got shape {tuple(bias.shape)}")
        if bias.device != ref.device:
            raise ValueError(f"{name} is on {bias.device} but the features are on {ref.device}")
        return bias.reshape(())
    if isinstance(bias, bool) or not isinstance(bias, numbers.Real):
        raise TypeError(f"{name} must be a float, a 0-d tensor or None, got {_describe(bias)}")
    b = float(bias)
    if not math.isfinite(b):
        raise ValueError(f"{name} must be finite, got {bias!r}")
    return b


def check_labels(name: str, labels, n: int, ref: torch.Tensor) -> torch.Tensor:
    """An integer (or bool) 1-D tensor of length ``n`` on ``ref``'s device."""
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of integer class ids, got {type(labels).__name__}")
    check_dense(name, labels)
    if labels.dtype.is_floating_point or labels.dtype.is_complex:
        raise TypeError(f"{name} must have an integer dtype, got {labels.dtype}")
    if labels.dim() != 1 or labels.shape[0] != n:
        raise ValueError(f"{name} must have shape ({n},) to match the features, got {tuple(labels.shape)}")
    if labels.device != ref.device:
        raise ValueError(f"{name} is on {labels.device} but the features are on {ref.device}")
    return labels


def check_fraction(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number in [0, 1], got {_describe(value)}")
    v = float(value)
    if not (0.0 <= v <= 1.0):
        raise ValueError(f"{name} must be in [0, 1], got {value!r}")
    return v


def check_beta(value, name: str = "beta") -> float:
    """A finite real number >= 0 (hard-negative concentration)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number >= 0, got {_describe(value)}")
    v = float(value)
    if not (math.isfinite(v) and v >= 0):
        raise ValueError(f"{name} must be finite and >= 0, got {value!r}")
    return v


def check_tau_plus(value, name: str = "tau_plus") -> float:
    """A real number in ``[0, 1)`` (the class prior of a false negative)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number in [0, 1), got {_describe(value)}")
    v = float(value)
    if not 0.0 <= v < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value!r}")
    return v


def check_reduction(reduction) -> str:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    return reduction


def check_bool(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {_describe(value)}")
    return value


def check_backend(backend) -> str:
    """``"auto"`` or one of the backends' names (whether it can run here is decided at dispatch)."""
    from .backends import BACKENDS

    if not isinstance(backend, str):
        raise TypeError(f"backend must be a string, got {_describe(backend)}")
    if backend != "auto" and backend not in BACKENDS:
        raise ValueError(f"backend must be one of {('auto',) + BACKENDS}, got {backend!r}")
    return backend


def check_exchange(exchange) -> str:
    """``"auto"``, ``"gather"`` or ``"ring"`` (how the ranks of a process group exchange their rows)."""
    if not isinstance(exchange, str):
        raise TypeError(f"exchange must be a string, got {_describe(exchange)}")
    if exchange not in EXCHANGES:
        raise ValueError(f"exchange must be one of {EXCHANGES}, got {exchange!r}")
    return exchange


def check_process_group(group):
    """None, or a ``torch.distributed.ProcessGroup`` (``torch.distributed.group.WORLD``, ``new_group(...)``).

    Only the type is checked here (a module may be built before ``init_process_group``); that
    ``torch.distributed`` is initialized is checked when a loss uses the group."""
    if group is None:
        return None
    process_group_type = getattr(dist, "ProcessGroup", None) if dist.is_available() else None
    if process_group_type is None or not isinstance(group, process_group_type):
        raise TypeError("process_group must be None or a torch.distributed.ProcessGroup (e.g. "
                        f"torch.distributed.group.WORLD or torch.distributed.new_group(...)), got {_describe(group)}")
    return group


def check_environment() -> None:
    """The package's environment settings, read at the start of every loss call whatever the backend (a
    bad value fails on the CPU machine too, not first on the GPU whose backends use it):
    ``CONTRASTIVE_OPS_DS_CHUNK_BYTES`` (a positive integer) and ``CONTRASTIVE_OPS_TRITON_CONFIG``."""
    _tile_config.ds_chunk_bytes()
    _tile_config.pinned_config()


def check_call(reduction, backend, process_group, exchange="auto") -> None:
    """The arguments every loss call shares (and the environment settings), before any work."""
    check_reduction(reduction)
    check_backend(backend)
    check_process_group(process_group)
    check_exchange(exchange)
    check_environment()
