"""The cached step (GradCache, Gao et al. 2021): the exact gradient of a contrastive loss over a batch
whose encoder activations do not fit in memory, with the encoder's memory set by a micro-batch.

A contrastive loss couples every row of the batch, so plain gradient accumulation (a loss per
micro-batch) changes the objective. The cached step keeps it:

1. embed the whole batch in chunks of ``micro_batch`` rows without autograd, recording each chunk's
   random state (the CPU generator's, and the CUDA generators' of the current device and the chunk's
   devices) and the autocast state;
2. compute the loss once over all embeddings (leaves that require grad) and backpropagate it: this
   gives the loss's own parameters their gradients (a learnable scale) and the embeddings theirs;
3. re-run the encoder chunk by chunk with autograd, the random state replayed, and push each chunk's
   slice of the embeddings' gradient through it: ``torch.autograd.backward(chunk_emb, grad_chunk)``.

By the chain rule the parameters' gradients equal those of one autograd graph over the same chunked
forward: ``dL/dθ = Σ_chunks (∂emb_c/∂θ)ᵀ · dL/demb_c``. Peak memory is one chunk's activations plus
the ``[N, D]`` embeddings and their gradient, whatever ``N``; the price is one more forward pass of
the encoder. The loss itself is the fused op's, computed once (open_clip's ``--accum-freq`` instead
recomputes the whole loss once per micro-batch).

What "exact" means here: the step equals the *chunked* forward run with full autograd. An encoder
whose output for a row depends on the other rows of its forward call — BatchNorm in training mode,
which normalizes by the call's statistics — computes them per chunk; with a batch-independent
normalization (GroupNorm, LayerNorm) or in eval mode it equals the full-batch step. Dropout and
augmentations drawn inside the encoder from the global generators are replayed, so the re-run is the
same function. Buffers of the encoders given as ``nn.Module`` (BatchNorm's running statistics) are
restored after the re-run, so they are updated once per chunk, as by the chunked forward; an encoder
whose output depends on buffers its own forward changes is not supported.

    step = CachedStep(micro_batch=256)
    z1, z2 = step.embed(model, view1), step.embed(model, view2)   # [N, D] leaves, no activations kept
    loss = contrastive_ops.nt_xent(z1, z2)
    step.backward(loss)                                            # parameters' .grad, as loss.backward()
    optimizer.step()

or in one call: ``loss = cached_step(model, (view1, view2), contrastive_ops.nt_xent, micro_batch=256)``.

Across processes, pass the bare module (not a DistributedDataParallel wrapper, whose every re-run
would all-reduce) and average the gradients after :meth:`CachedStep.backward` with
:func:`average_gradients`, which is what DDP's backward does.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterable, Sequence
from typing import Callable, Union

import torch
from torch import nn

__all__ = ["CachedStep", "average_gradients", "cached_step", "chunked"]

Inputs = Union[torch.Tensor, Sequence[torch.Tensor]]


def _check_micro_batch(micro_batch) -> int:
    if isinstance(micro_batch, bool) or not isinstance(micro_batch, int) or micro_batch < 1:
        raise ValueError(f"micro_batch must be a positive integer, got {micro_batch!r}")
    return micro_batch


def _split(inputs: tuple, micro_batch: int) -> list[tuple]:
    """The inputs' chunks of ``micro_batch`` rows (the last one shorter when it does not divide)."""
    if not inputs or not all(isinstance(x, torch.Tensor) for x in inputs):
        raise TypeError(f"the encoder's inputs must be one or more tensors, got {[type(x).__name__ for x in inputs]}")
    n = inputs[0].shape[0] if inputs[0].dim() else None
    if n is None or n < 1 or any(x.dim() == 0 or x.shape[0] != n for x in inputs):
        raise ValueError(f"the encoder's inputs must share a first dimension of at least 1 row, got shapes "
                         f"{[tuple(x.shape) for x in inputs]}")
    return list(zip(*(x.split(micro_batch) for x in inputs)))


def _output(out, where: str) -> torch.Tensor:
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"{where}: the encoder must return one tensor [rows, ...], got {type(out).__name__}")
    return out


def chunked(encoder: Callable, *inputs: torch.Tensor, micro_batch: int) -> torch.Tensor:
    """``encoder`` applied to ``micro_batch`` rows at a time, the outputs concatenated along dim 0.

    Under ``torch.no_grad()`` it bounds the activations to one chunk's; with autograd it keeps every
    chunk's graph (the reference the cached step equals). ``inputs``: tensors sharing dim 0.
    """
    chunks = _split(inputs, _check_micro_batch(micro_batch))
    outs = [_output(encoder(*c), "chunked") for c in chunks]
    return outs[0] if len(outs) == 1 else torch.cat(outs)


class _RandomState:
    """The CPU generator's state and, once CUDA is in use, that of the current CUDA device and of the
    devices the chunk's tensors are on: what dropout and in-model augmentations draw from. (Other
    devices are left alone: no context is created on a GPU the step does not use.)"""

    __slots__ = ("cpu", "cuda", "devices")

    def __init__(self, tensors):
        self.cpu = torch.get_rng_state()
        self.devices, self.cuda = [], []
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            devices = {torch.cuda.current_device()} | {t.device.index for t in tensors if t.is_cuda}
            self.devices = sorted(devices)
            self.cuda = [torch.cuda.get_rng_state(d) for d in self.devices]

    @contextlib.contextmanager
    def replay(self):
        """Run the block from this state; the generators are put back as they were afterwards."""
        with torch.random.fork_rng(devices=self.devices, device_type="cuda"):
            torch.set_rng_state(self.cpu)
            for device, state in zip(self.devices, self.cuda):
                torch.cuda.set_rng_state(state, device)
            yield


def _autocast_state() -> list:
    """``[(device_type, dtype)]`` of the autocast regions now active (CPU and CUDA)."""
    return [(d, torch.get_autocast_dtype(d)) for d in ("cpu", "cuda") if torch.is_autocast_enabled(d)]


@contextlib.contextmanager
def _autocast(state: list):
    with contextlib.ExitStack() as stack:
        for device_type, dtype in state:
            stack.enter_context(torch.autocast(device_type, dtype=dtype))
        yield


class _Record:
    __slots__ = ("autocast", "chunks", "embedding", "encoder", "states")

    def __init__(self, encoder, chunks, states, autocast, embedding):
        self.encoder, self.chunks, self.states = encoder, chunks, states
        self.autocast, self.embedding = autocast, embedding


class CachedStep:
    """One training step's gradients by the cached method (see the module's docstring).

    ``micro_batch``: the rows each encoder call sees (a positive int; a batch that does not divide
    into it ends with a shorter chunk). Use one object per step, or reuse it: :meth:`backward`
    forgets what :meth:`embed` recorded.
    """

    def __init__(self, micro_batch: int):
        self.micro_batch = _check_micro_batch(micro_batch)
        self._records: list[_Record] = []

    def embed(self, encoder: Callable, *inputs: torch.Tensor) -> torch.Tensor:
        """``encoder(*inputs)`` computed ``micro_batch`` rows at a time without keeping activations.

        ``encoder``: an ``nn.Module`` (its buffers are restored after the re-run) or any callable of
        tensors that returns one tensor ``[rows, ...]``. ``inputs``: tensors sharing dim 0 (``N`` rows).
        Returns the ``[N, ...]`` outputs as a leaf that requires grad; use it in the loss, then call
        :meth:`backward`. Under ``torch.no_grad()`` (e.g. a momentum key encoder) it returns the
        chunked outputs and records nothing.
        """
        chunks = _split(inputs, self.micro_batch)
        if not torch.is_grad_enabled():
            outs = [_output(encoder(*c), "CachedStep.embed") for c in chunks]
            return outs[0] if len(outs) == 1 else torch.cat(outs)
        autocast = _autocast_state()
        states, outs = [], []
        with torch.no_grad():
            for c in chunks:
                states.append(_RandomState(c))
                outs.append(_output(encoder(*c), "CachedStep.embed"))
        embedding = (outs[0] if len(outs) == 1 else torch.cat(outs)).detach().requires_grad_()
        self._records.append(_Record(encoder, chunks, states, autocast, embedding))
        return embedding

    def backward(self, loss: torch.Tensor) -> None:
        """Backpropagate the scalar ``loss`` into every parameter, accumulating into ``.grad`` as
        ``loss.backward()`` does: the loss's own graph first (the embeddings' gradients and those of
        parameters the loss uses directly), then each recorded chunk re-run with autograd from its
        random state and autocast state, with its slice of the embeddings' gradient. An embedding the
        loss does not use is not re-run."""
        records, self._records = self._records, []
        loss.backward()
        modules = {id(r.encoder): r.encoder for r in records if isinstance(r.encoder, nn.Module)}
        buffers = {id(b): b for m in modules.values() for b in m.buffers()}
        saved = [(b, b.detach().clone()) for b in buffers.values()]
        try:
            for r in records:
                grad = r.embedding.grad
                if grad is None:
                    continue
                for chunk, state, g in zip(r.chunks, r.states, grad.split(self.micro_batch)):
                    with state.replay(), _autocast(r.autocast):
                        out = r.encoder(*chunk)
                    torch.autograd.backward(out, g)
        finally:
            with torch.no_grad():
                for b, value in saved:
                    b.copy_(value)

    def clear(self) -> None:
        """Forget what :meth:`embed` recorded without a backward (e.g. after a non-finite loss)."""
        self._records = []


def cached_step(encoder: Callable | Sequence[Callable], inputs: Sequence[Inputs], loss_fn: Callable, *,
                micro_batch: int) -> torch.Tensor:
    """One cached step: embed each of ``inputs`` in chunks, ``loss = loss_fn(*embeddings)``, then
    :meth:`CachedStep.backward`. Returns the loss, detached; the parameters' ``.grad`` hold its
    gradient (accumulated, as ``loss.backward()`` would).

    ``encoder``: one encoder for every input, or a sequence of one per input (e.g. CLIP's two towers).
    ``inputs``: a sequence; each item a tensor ``[N_i, ...]`` or a tuple of tensors passed together.
    ``loss_fn``: any function of the embeddings returning a scalar, e.g.
    ``lambda img, txt: clip_loss(img, txt, scale)``.
    """
    if isinstance(inputs, torch.Tensor):
        raise TypeError("inputs must be a sequence of the encoder's inputs, e.g. (view1, view2)")
    encoders = list(encoder) if isinstance(encoder, (list, tuple)) else [encoder] * len(inputs)
    if len(encoders) != len(inputs):
        raise ValueError(f"got {len(encoders)} encoders for {len(inputs)} inputs")
    step = CachedStep(micro_batch)
    embeddings = [step.embed(e, *(x if isinstance(x, (tuple, list)) else (x,))) for e, x in zip(encoders, inputs)]
    loss = loss_fn(*embeddings)
    step.backward(loss)
    return loss.detach()


def average_gradients(parameters: Iterable[torch.Tensor], group=None) -> None:
    """Average the ``.grad`` of ``parameters`` over the ranks of ``group`` (all ranks for None) in one
    all-reduce, as DDP's backward does; parameters without a gradient are skipped (every rank must
    have the same ones)."""
    import torch.distributed as dist

    world = dist.get_world_size(group)
    buckets: dict = {}
    for p in parameters:
        if p.grad is not None:
            buckets.setdefault((p.grad.dtype, p.grad.device), []).append(p.grad)
    for grads in buckets.values():
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat, group=group)
        flat.div_(world)
        offset = 0
        for g in grads:
            g.copy_(flat[offset: offset + g.numel()].view_as(g))
            offset += g.numel()
