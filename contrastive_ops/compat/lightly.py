"""Drop-in ``NTXentLoss``, ``DCLLoss`` and ``DCLWLoss`` of lightly (``lightly.loss``)."""
from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Callable

import torch
import torch.distributed as dist
from torch import Tensor, nn

from .. import distributed as dist_
from ..functional import dcl_loss, info_nce, nt_xent

_EPS = 1e-8


def _check_temperature(temperature: float) -> None:
    if abs(temperature) < _EPS:
        raise ValueError(f"Illegal temperature: abs({temperature}) < 1e-8")


def _temperature_for(temperature, ref: Tensor):
    """What the functional losses take: the float itself when > 0; lightly also accepts a negative
    temperature (it only rejects |T| < 1e-8), which reaches the core as a 0-d tensor (whose value
    the functional API does not check)."""
    if isinstance(temperature, Tensor) or temperature > 0:
        return temperature
    return torch.tensor(float(temperature), dtype=torch.float32, device=ref.device)


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
                 gather_distributed: bool = False, *, backend: str = "auto"):
        super().__init__()
        _check_temperature(temperature)
        _check_gather(gather_distributed)
        self.temperature = temperature
        self.gather_distributed = gather_distributed
        self.eps = _EPS
        self.backend = backend
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
                           process_group=group)
        if self.bank.shape[1] != out1.shape[1]:
            raise ValueError(f"memory bank rows have dim {self.bank.shape[1]}, out1 has {out1.shape[1]}")
        negatives = self.bank.detach().clone().to(device=out0.device, dtype=out0.dtype)
        loss = info_nce(out0, out1, negatives, temperature=_temperature_for(self.temperature, out0),
                        in_batch_negatives=False, backend=self.backend)
        if out0.requires_grad:
            keys = nn.functional.normalize(out1.detach(), dim=1)
            if group is not None:  # every rank enqueues the keys of all ranks
                keys = dist_.gather_rows(keys, group, with_grad=False)
            self._enqueue(keys)
        return loss


class DCLLoss(nn.Module):
    """lightly's ``DCLLoss`` (decoupled contrastive loss, optional ``weight_fn(out0, out1)``)."""

    def __init__(self, temperature: float = 0.1, weight_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
                 gather_distributed: bool = False, *, backend: str = "auto"):
        super().__init__()
        _check_gather(gather_distributed)
        self.temperature = temperature
        self.weight_fn = weight_fn
        self.gather_distributed = gather_distributed
        self.backend = backend

    def forward(self, out0: Tensor, out1: Tensor) -> Tensor:
        return dcl_loss(out0, out1, temperature=_temperature_for(self.temperature, out0), weight_fn=self.weight_fn,
                        backend=self.backend,
                        process_group=_world_group(self.gather_distributed))


def negative_mises_fisher_weights(out0: Tensor, out1: Tensor, sigma: float = 0.5) -> Tensor:
    """DCL-W weights ``2 - N·softmax(<out0_i, out1_i>/σ)`` over the batch, without gradient."""
    similarity = (out0.detach() * out1.detach()).sum(dim=1) / sigma
    return 2 - out0.shape[0] * nn.functional.softmax(similarity, dim=0)


class DCLWLoss(DCLLoss):
    """lightly's ``DCLWLoss``: :class:`DCLLoss` with the von Mises–Fisher weighting of width ``sigma``."""

    def __init__(self, temperature: float = 0.1, sigma: float = 0.5, gather_distributed: bool = False, *,
                 backend: str = "auto"):
        super().__init__(temperature=temperature, gather_distributed=gather_distributed, backend=backend,
                         weight_fn=partial(negative_mises_fisher_weights, sigma=sigma))
        self.sigma = sigma
