"""One optimizer step of the trainer, plain or cached.

* ``micro_batch=0`` — the plain step: the encoders see the whole (per-rank) batch in one autograd
  graph; under torchrun the objective runs inside DistributedDataParallel.
* ``micro_batch=K`` — the cached step (:class:`contrastive_ops.cached.CachedStep`): every encoder call
  of the objective runs ``K`` images at a time without autograd, the loss is computed once over all
  embeddings, and each chunk is re-run with autograd and its slice of the embeddings' gradient. Under
  torchrun the objective runs bare and this class does what DDP would: the parameters and buffers
  broadcast from rank 0 at the start and the buffers before every forward, the gradients averaged
  over the ranks after the backward.

The loop calls :meth:`TrainStep.forward` (the loss), checks it, then :meth:`TrainStep.backward` and
:meth:`TrainStep.step`; the memory benchmark (``benchmarks/train_memory.py``) runs the same calls.
"""
from __future__ import annotations

import contextlib

import torch

from ..cached import CachedStep, average_gradients


class TrainStep:
    """The step of ``objective`` (an :class:`.objectives.Objective`) with ``optimizer``.

    ``micro_batch``: 0 for the plain step, else the cached step's chunk size (images per encoder call,
    per rank). ``group``: the process group under torchrun, else None. ``autocast``: a factory of the
    forward's autocast context.
    """

    def __init__(self, objective, optimizer, *, micro_batch: int = 0, group=None, device=None,
                 autocast=contextlib.nullcontext):
        self.objective, self.optimizer, self.group, self.autocast = objective, optimizer, group, autocast
        self.trainable = [p for p in objective.parameters() if p.requires_grad]
        self.cache = CachedStep(micro_batch) if micro_batch else None
        objective.cache = self.cache
        self.runner = objective
        if group is not None:
            if self.cache is None:
                device_ids = [device] if device is not None and device.type == "cuda" else None
                self.runner = torch.nn.parallel.DistributedDataParallel(objective, device_ids=device_ids)
            else:
                self._broadcast(list(objective.parameters()) + list(objective.buffers()))

    def _broadcast(self, tensors) -> None:
        import torch.distributed as dist

        src = dist.get_global_rank(self.group, 0)
        with torch.no_grad():
            for t in tensors:
                dist.broadcast(t, src, group=self.group)

    def forward(self, v1: torch.Tensor, v2: torch.Tensor, labels) -> torch.Tensor:
        """The objective's loss on the two views (under the cached step, over embeddings computed
        without autograd; nothing of the encoders' activations is kept)."""
        if self.cache is not None and self.group is not None:
            self._broadcast(self.objective.buffers())  # DDP's broadcast_buffers, before every forward
        with self.autocast():
            return self.runner(v1, v2, labels)

    def backward(self, loss: torch.Tensor) -> None:
        """Fresh gradients of ``loss`` in every trainable parameter (averaged over the ranks)."""
        self.optimizer.zero_grad(set_to_none=True)
        if self.cache is None:
            loss.backward()
            return
        self.cache.backward(loss)
        if self.group is not None:
            average_gradients(self.trainable, self.group)

    def step(self) -> None:
        """The optimizer's update, then the objective's (momentum encoders)."""
        self.optimizer.step()
        self.objective.after_step()

    def discard(self) -> None:
        """Forget a forward whose loss will not be backpropagated."""
        if self.cache is not None:
            self.cache.clear()
