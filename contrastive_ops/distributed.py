"""Multi-process losses: gather every rank's rows so each local anchor sees the global negatives.

With ``process_group=G`` a loss on rank ``r`` computes the rows of *its own* anchors against the
candidates of *all* ranks (gathered with their gradients). The ranks' losses then average to the
single-process loss on the concatenated batch, and each rank's gradients divided by the world size
(DDP's averaging) equal the single-process gradients of its slice. Every rank must pass the same
batch size and feature dim.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from ._checks import check_process_group


def world(group) -> tuple[int, int]:
    """``(rank, world_size)`` in ``group``; raises a clear error if the group cannot be used (a
    ``TypeError`` for anything but a ``ProcessGroup``, a ``ValueError`` before ``init_process_group``)."""
    check_process_group(group)
    if not dist.is_available() or not dist.is_initialized():
        raise ValueError(
            f"process_group={group!r} was given but torch.distributed is not initialized "
            "(call torch.distributed.init_process_group first, or pass process_group=None)"
        )
    return dist.get_rank(group), dist.get_world_size(group)


def gather_rows(x: torch.Tensor, group, *, with_grad: bool = True, keep_local_grad: bool = True) -> torch.Tensor:
    """Concatenate ``x [n, ...]`` of every rank in rank order: ``[world·n, ...]``.

    ``with_grad=True``: gradients flow back to every rank's rows (all_gather's backward sums the
    ranks' contributions). ``with_grad=False``: only this rank's own slice keeps its gradient, or
    none at all with ``keep_local_grad=False``.
    """
    rank, size = world(group)
    if size == 1:
        return x
    if with_grad:
        return _GatherWithGrad.apply(x, group, rank, size)
    parts = [torch.empty_like(x) for _ in range(size)]
    dist.all_gather(parts, x.detach().contiguous(), group=group)
    if keep_local_grad:
        parts[rank] = x
    return torch.cat(parts, dim=0)


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sums every rank's gradient of this rank's slice (an all_reduce,
    which gloo supports, unlike reduce_scatter)."""

    @staticmethod
    def forward(ctx, x, group, rank, size):
        ctx.group, ctx.rank, ctx.n = group, rank, x.shape[0]
        parts = [torch.empty_like(x) for _ in range(size)]
        dist.all_gather(parts, x.contiguous(), group=group)
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        return grad[ctx.rank * ctx.n : (ctx.rank + 1) * ctx.n], None, None, None


def all_reduce_sum(x: torch.Tensor, group) -> torch.Tensor:
    """Sum over ranks without gradient (for counts)."""
    x = x.clone()
    dist.all_reduce(x, op=dist.ReduceOp.SUM, group=group)
    return x


def offset(n: int, group: object | None) -> int:
    """Global index of this rank's first row."""
    if group is None:
        return 0
    rank, _ = world(group)
    return rank * n
