"""Drop-in ``NTXentLoss``, ``DCLLoss`` and ``DCLWLoss`` of lightly (``lightly.loss``).

As lightly: any temperature it accepts (negative, infinite; ``DCLLoss`` checks none), a ``weight_fn``
whose output broadcasts against ``[N]`` (a scalar, ``[N, 1]``: its mean over the broadcast rows is
each row's weight, which is what lightly's mean over the broadcast loss matrix amounts to), ``DCLLoss``
of one pair giving ``-inf`` (no negatives: lightly's empty log-sum-exp), and the loss in the inputs'
dtype.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from functools import partial
from typing import Callable

import torch
import torch.distributed as dist
from torch import Tensor, nn

from .. import distributed as dist_
from .._checks import check_exchange
from ..core import normalize_rows
from ..functional import dcl_loss, info_nce, nt_xent

_EPS = 1e-8


def _check_temperature(temperature: float) -> None:
    if abs(temperature) < _EPS:
        raise ValueError(f"Illegal temperature: abs({temperature}) < 1e-8")


_FP32_MAX = torch.finfo(torch.float32).max


def _temperature_for(temperature, ref: Tensor):
    """What the functional losses take: the float itself when it is > 0 and its inverse a finite fp32
    number; any other number lightly accepts (negative, infinite, tiny, 0 or NaN for ``DCLLoss``)
    reaches the core as a 0-d tensor (whose value the functional API does not read), so the core
    computes what lightly's ``/ temperature`` does."""
    if isinstance(temperature, Tensor):
        return temperature
    t = float(temperature)
    if 0 < t < math.inf and 1.0 / t <= _FP32_MAX:
        return t
    return torch.tensor(t, dtype=torch.float64 if ref.dtype == torch.float64 else torch.float32, device=ref.device)


def _broadcast_weights(weight_fn, n: int, dtypes: list | None = None):
    """``weight_fn`` as the functional ``dcl_loss`` takes it (``[N]`` weights): lightly multiplies the
    ``[N]`` positive losses by its output and takes the mean of the broadcast result (plus the ``[N]``
    negative terms), so an output that broadcasts against ``[N]`` weighs row ``j`` by its mean over the
    broadcast's other dims; one that does not raises torch's own error, as lightly's product does.
    ``dtypes`` collects the dtype of lightly's product (its loss's dtype: an fp32 ``[N, 1]`` output
    promotes fp16 losses, a 0-d one does not)."""
    if weight_fn is None:
        return None

    def weights(a: Tensor, b: Tensor) -> Tensor:
        w = weight_fn(a, b)
        if not isinstance(w, Tensor):
            w = torch.as_tensor(w, device=a.device)
        shape = torch.broadcast_shapes(w.shape, (n,))
        if dtypes is not None:
            dtypes.append((a.new_empty(n) * w.new_empty(w.shape)).dtype)
        w = torch.broadcast_to(w, shape).reshape(-1, n).mean(dim=0) if len(shape) > 1 else w.expand(n)
        return w if w.dtype.is_floating_point else w.to(a.dtype)

    return weights


def _check_gather(gather_distributed: bool) -> None:
    if gather_distributed and not dist.is_available():
        raise ValueError("gather_distributed=True but torch.distributed is not available in this torch build")


def _world_group(gather_distributed: bool):
    """The default group when gathering is on and more than one process runs, else None (as lightly)."""
    if gather_distributed and dist.is_initialized() and dist.get_world_size() > 1:
        return dist.group.WORLD
    return None


def _bank_size(size: int | Sequence[int]) -> tuple[int, ...]:
    """lightly's rules: 0 disables the bank, otherwise a ``(num_features, dim)`` tuple."""
    size_tuple = (size,) if isinstance(size, int) else tuple(size)
    if any(x < 0 for x in size_tuple):
        raise ValueError(f"Illegal memory bank size {size}, all entries must be non-negative.")
    if isinstance(size, int) and size > 0:
        raise ValueError(
            f"memory_bank_size={size} does not give the feature dimension: pass (num_features, dim), or 0 to disable it"
        )
    if size_tuple != (0,) and len(size_tuple) != 2:
        raise ValueError(f"Illegal memory bank size {size}: expected a (num_features, dim) tuple, or 0")
    return size_tuple


class NTXentLoss(nn.Module):
    """lightly's ``NTXentLoss`` (SimCLR; MoCo-style with a memory bank).

    Without a bank: NT-Xent over the 2N views (:func:`contrastive_ops.nt_xent`). With
    ``memory_bank_size=(num_features, dim)``: ``out0`` rows are the anchors, ``out1`` rows their
    positives, and the bank (initialized with random unit rows, filled FIFO with the normalized
    ``out1`` after each forward whose ``out0`` requires grad) holds the only negatives.
    """

    def __init__(self, temperature: float = 0.5, memory_bank_size: int | Sequence[int] = 0,
                 gather_distributed: bool = False, *, backend: str = "auto",
                 exchange: str = "auto"):
        super().__init__()
        _check_temperature(temperature)
        _check_gather(gather_distributed)
        self.temperature = temperature
        self.gather_distributed = gather_distributed
        self.eps = _EPS
        self.backend = backend
        self.exchange = check_exchange(exchange)  # not in lightly: how the ranks exchange their rows
        self.memory_bank_size = _bank_size(memory_bank_size)
        self.register_buffer("bank", torch.empty(self.memory_bank_size, dtype=torch.float), persistent=False)
        self.register_buffer("bank_ptr", torch.zeros(1, dtype=torch.long), persistent=False)
        if len(self.memory_bank_size) == 2:
            with torch.no_grad():
                self.bank = nn.functional.normalize(torch.randn(self.memory_bank_size), dim=-1)

    @torch.no_grad()
    def _enqueue(self, batch: Tensor) -> None:
        """lightly's FIFO: write at the pointer; a batch that reaches the end is cut and the pointer wraps."""
        size = self.memory_bank_size[0]
        ptr = int(self.bank_ptr)
        n = batch.shape[0]
        if ptr + n >= size:
            self.bank[ptr:] = batch[: size - ptr].to(self.bank.dtype)
            self.bank_ptr.zero_()
        else:
            self.bank[ptr : ptr + n] = batch.to(self.bank.dtype)
            self.bank_ptr[0] = ptr + n

    def forward(self, out0: Tensor, out1: Tensor) -> Tensor:
        group = _world_group(self.gather_distributed)
        if self.memory_bank_size == (0,):
            return nt_xent(out0, out1, temperature=_temperature_for(self.temperature, out0), backend=self.backend,
                           process_group=group, exchange=self.exchange).to(out0.dtype)
        if self.bank.shape[1] != out1.shape[1]:
            raise ValueError(f"memory bank rows have dim {self.bank.shape[1]}, out1 has {out1.shape[1]}")
        negatives = self.bank.detach().clone().to(device=out0.device, dtype=out0.dtype)
        loss = info_nce(out0, out1, negatives, temperature=_temperature_for(self.temperature, out0),
                        in_batch_negatives=False, backend=self.backend)
        if out0.requires_grad:
            keys = nn.functional.normalize(out1.detach(), dim=1)  # bit for bit the peer's bank rows
            if group is not None:  # every rank enqueues the keys of all ranks
                keys = dist_.gather_rows(keys, group, with_grad=False)
            self._enqueue(keys)
        return loss.to(out0.dtype)


class DCLLoss(nn.Module):
    """lightly's ``DCLLoss`` (decoupled contrastive loss, optional ``weight_fn(out0, out1)``)."""

    def __init__(self, temperature: float = 0.1, weight_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
                 gather_distributed: bool = False, *, backend: str = "auto",
                 exchange: str = "auto"):
        super().__init__()
        _check_gather(gather_distributed)
        self.temperature = temperature
        self.weight_fn = weight_fn
        self.gather_distributed = gather_distributed
        self.backend = backend
        self.exchange = check_exchange(exchange)  # not in lightly: how the ranks exchange their rows

    def forward(self, out0: Tensor, out1: Tensor) -> Tensor:
        group = _world_group(self.gather_distributed)
        temperature = _temperature_for(self.temperature, out0)
        n = out0.shape[0] if isinstance(out0, Tensor) and out0.dim() > 0 else 0
        if n == 1 and group is None and isinstance(out1, Tensor) and out1.shape[:1] == (1,):
            return self._single_pair(out0, out1, temperature)
        dtypes: list = []
        loss = dcl_loss(out0, out1, temperature=temperature, weight_fn=_broadcast_weights(self.weight_fn, n, dtypes),
                        backend=self.backend, process_group=group, exchange=self.exchange)
        return loss.to(dtypes[0] if dtypes else out0.dtype)

    def _single_pair(self, out0: Tensor, out1: Tensor, temperature) -> Tensor:
        """One pair has no negative: lightly's log-sum-exp over none is ``-inf``, so its loss is ``-inf``,
        and the gradient is the positive term's (O(D); the functional ``dcl_loss`` gives such a row 0)."""
        a, b = normalize_rows(out0), normalize_rows(out1)
        positive = -(a * b).sum(dim=1) / temperature
        dtypes: list = []
        weights = _broadcast_weights(self.weight_fn, 1, dtypes)
        w0, w1 = (1.0, 1.0) if weights is None else (weights(a, b), weights(b, a))
        loss = 0.5 * ((positive * w0).mean() + (positive * w1).mean()) + float("-inf")
        return loss.to(dtypes[0] if dtypes else out0.dtype)


def negative_mises_fisher_weights(out0: Tensor, out1: Tensor, sigma: float = 0.5) -> Tensor:
    """DCL-W weights ``2 - N·softmax(<out0_i, out1_i>/σ)`` over the batch, without gradient."""
    similarity = (out0.detach() * out1.detach()).sum(dim=1) / sigma
    return 2 - out0.shape[0] * nn.functional.softmax(similarity, dim=0)


class DCLWLoss(DCLLoss):
    """lightly's ``DCLWLoss``: :class:`DCLLoss` with the von Mises–Fisher weighting of width ``sigma``."""

    def __init__(self, temperature: float = 0.1, sigma: float = 0.5, gather_distributed: bool = False, *,
                 backend: str = "auto", exchange: str = "auto"):
        super().__init__(temperature=temperature, gather_distributed=gather_distributed, backend=backend,
                         exchange=exchange, weight_fn=partial(negative_mises_fisher_weights, sigma=sigma))
        self.sigma = sigma
