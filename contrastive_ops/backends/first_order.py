"""First derivatives only, said out loud: the custom backwards of the ``chunked`` and ``cuda`` backends run
without recording a graph, so a second derivative through them must raise rather than treat their
gradients as constants (silently wrong)."""
from __future__ import annotations

import functools

import torch


def double_backward_error(backend: str) -> str:
    return (f"backend={backend!r} computes first derivatives only: a double backward (a gradient of a gradient, "
            "e.g. torch.autograd.grad(..., create_graph=True) differentiated again) is not supported; use "
            "backend='naive' for higher derivatives")


class _NoSecondDerivative(torch.autograd.Function):
    """The identity on a gradient ``x``, on the graph of ``sources`` (the inputs it was computed from),
    whose own backward raises ``message``."""

    @staticmethod
    def forward(ctx, message, x, *sources):
        ctx.message = message
        return x.view_as(x)

    @staticmethod
    def backward(ctx, *grads):
        raise RuntimeError(ctx.message)


def first_order_only(backend: str):
    """Decorate a custom backward ``backward(ctx, *grads)``: run it without recording a graph; where one is
    asked for (``create_graph=True`` with saved inputs or incoming gradients that require grad) each
    gradient comes back through :class:`_NoSecondDerivative`, so differentiating it again raises
    :func:`double_backward_error`. ``torch.autograd.function.once_differentiable`` does not suffice: its
    error node hangs off detached copies, off the path to the inputs, so ``torch.autograd.grad`` prunes it."""
    message = double_backward_error(backend)

    def decorate(backward):
        @functools.wraps(backward)
        def wrapper(ctx, *grads):
            with torch.no_grad():
                outputs = backward(ctx, *grads)
            if not torch.is_grad_enabled():
                return outputs
            sources = [t for t in (*ctx.saved_tensors, *grads) if isinstance(t, torch.Tensor) and t.requires_grad]
            if not sources:
                return outputs
            return tuple(x if not isinstance(x, torch.Tensor) else _NoSecondDerivative.apply(message, x, *sources)
                         for x in outputs)

        return wrapper

    return decorate
