"""How the ranks of a process group see each other's columns: ``exchange="gather"`` or ``"ring"``.

Every multi-process loss is *row terms of this rank's anchors against every rank's columns*
(symmetric losses run their reverse direction as a second set of rows). Two exchanges compute them
exactly:

* **gather** — all-gather the columns (with their gradients) and run the core once over all of them.
  One collective and one kernel over ``world · m`` columns; per-rank memory grows with the world.
* **ring** — pass the column blocks around the ranks: at step ``t`` this rank holds the block of rank
  ``rank - t``, sends it on to ``rank + 1`` and receives the next one from ``rank - 1`` while the
  core runs on the current one (non-blocking point-to-point operations). Each block's row terms are
  merged exactly (log-sum-exp of the log-sum-exps, sums of the positive sums and counts). The
  backward passes the blocks around again: this rank's row gradients accumulate locally, and each
  visiting block's gradient travels with it (accumulated in fp32, or fp64 for fp64 features, in
  the fixed order ``owner, owner+1, …``), returning to its owner after a full turn. No float atomics,
  no order that depends on timing: two runs are bitwise identical. Per-rank memory: a constant number
  of blocks (``O(m·D)``), whatever the world size. The backward forms each block's terms again to
  differentiate them, so the ring computes three passes over the tiles where gather computes two.

Uneven block sizes are fine for the ring (the sizes are exchanged first); gather needs every rank
to pass the same number of rows.

``exchange="auto"`` (the default) picks with :func:`choose`; the choice and its reason are kept in
:func:`last_choice` and logged at INFO on the ``contrastive_ops.exchange`` logger whenever it changes.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, NamedTuple

import torch
import torch.distributed as dist
from torch.autograd.function import once_differentiable

from .backends import compute_terms
from .core import EXCHANGES, ContrastiveTerms, RoleSpec, accumulation_dtype
from .distributed import world

__all__ = ["EXCHANGES", "Block", "View", "choose", "last_choice", "own_index", "ring_row_terms"]

#: ``"auto"`` chooses the ring from this many ranks on ...
RING_MIN_WORLD = 4
#: ... when the gathered columns and their gradients would take at least this many bytes per rank.
RING_MIN_GATHERED_BYTES = 2**30

_log = logging.getLogger("contrastive_ops.exchange")
_last: dict[str, object] = {}


class Block(NamedTuple):
    """One rank's columns as they travel: ``features [m, D]`` and, when the roles need them, their
    ``labels [m]`` (integer) and a guide model's unit rows ``guides [m, G]`` (no gradient flows to either)."""

    features: torch.Tensor
    labels: torch.Tensor | None = None
    guides: torch.Tensor | None = None


class View(NamedTuple):
    """What a spec builder knows of the columns of one core call: the columns' labels and guides (all
    ranks' with gather, one block's with the ring), the column of this rank's first own column
    (``None`` when this rank's own block is not among them) and whether the local extra columns
    follow the block's (they join exactly one call per turn: the one with the own block)."""

    labels: torch.Tensor | None
    guides: torch.Tensor | None
    start: int | None
    with_extra: bool


#: builds the :class:`~contrastive_ops.core.RoleSpec` of one call from its :class:`View`
SpecFn = Callable[[View], RoleSpec]


def own_index(view: View, local: torch.Tensor) -> torch.Tensor:
    """``local + view.start`` (columns of this rank's own block), or ``-1`` everywhere — no such column
    here — when the own block is not in the call (``pos_index``/``self_index`` of -1 match nothing)."""
    if view.start is None:
        return torch.full_like(local, -1)
    return local + view.start


def last_choice() -> dict[str, object]:
    """The last ``exchange="auto"`` decision of this process: ``{"exchange", "reason", "world", ...}``."""
    return dict(_last)


def choose(world_size: int, sizes: list[int], d: int, element_size: int, ring_possible: bool = True) -> tuple[str, str]:
    """``(exchange, reason)`` for ``exchange="auto"`` (every rank decides alike: the inputs are global).

    Gather when the world is small or the gathered columns are small: one collective and one kernel
    over every column beat ``world`` steps, and the ring's backward forms the tiles once more. The
    ring when the ranks' batch sizes differ (gather cannot), or from :data:`RING_MIN_WORLD` ranks on
    when the gathered columns and their gradients would take :data:`RING_MIN_GATHERED_BYTES` or
    more per rank.
    """
    gathered = 2 * sum(sizes) * d * element_size
    if not ring_possible:
        return "gather", "this loss has no ring exchange"
    if len(set(sizes)) > 1:
        return "ring", f"uneven batch sizes {sizes}"
    if world_size < RING_MIN_WORLD:
        return "gather", f"world size {world_size} < {RING_MIN_WORLD}"
    if gathered < RING_MIN_GATHERED_BYTES:
        return "gather", f"gathered columns take {gathered} bytes < {RING_MIN_GATHERED_BYTES}"
    return "ring", f"gathered columns would take {gathered} bytes per rank"


def block_sizes(m: int, group, device: torch.device) -> list[int]:
    """Every rank's block size, in rank order (one small all-gather)."""
    _, size = world(group)
    if size == 1:
        return [m]
    mine = torch.tensor([m], dtype=torch.int64, device=device)
    parts = [torch.empty_like(mine) for _ in range(size)]
    dist.all_gather(parts, mine, group=group)
    return [int(p.item()) for p in parts]


def resolve(exchange: str, group, m: int, d: int, ref: torch.Tensor, ring_possible: bool = True) -> tuple[str, list[int] | None]:
    """``(concrete exchange, every rank's block size or None)`` for a loss call: ``"auto"`` and ``"ring"``
    exchange the sizes (``"auto"`` then decides); ``"gather"`` needs equal sizes and does not ask."""
    if exchange == "gather":
        return exchange, None
    _, size = world(group)
    sizes = block_sizes(m, group, ref.device)
    if exchange == "ring":
        return exchange, sizes
    name, reason = choose(size, sizes, d, ref.element_size(), ring_possible)
    if (_last.get("exchange"), _last.get("reason")) != (name, reason):  # logged when it changes, not every step
        _log.info("exchange=auto chose %s (%s)", name, reason)
    _last.clear()
    _last.update(exchange=name, reason=reason, world=size, sizes=sizes, d=d, dtype=str(ref.dtype))
    return name, sizes


# ---------------------------------------------------------------------------------------------
# The ring
# ---------------------------------------------------------------------------------------------


def _peer(group, group_rank: int) -> int:
    """The global rank of ``group_rank`` in ``group`` (point-to-point operations take global ranks)."""
    if group is None or group is dist.group.WORLD:
        return group_rank
    return dist.get_global_rank(group, group_rank)


def _send_recv(send: list[torch.Tensor], recv: list[torch.Tensor], group, to: int, frm: int, tag: int) -> list:
    """Start receiving ``recv`` from rank ``frm`` and sending ``send`` to rank ``to`` (group ranks), as one
    batch (so that two ranks sending to each other cannot wait on each other's receive)."""
    ops = [dist.P2POp(dist.irecv, t, _peer(group, frm), group, tag + i) for i, t in enumerate(recv)]
    ops += [dist.P2POp(dist.isend, t, _peer(group, to), group, tag + i) for i, t in enumerate(send)]
    return dist.batch_isend_irecv(ops) if ops else []


def _wait(works: list) -> None:
    for w in works:
        w.wait()


_FEATURE_TAG, _GRAD_TAG = 100, 200  # features, labels and guides use 100..102; a gradient 200


@dataclass
class _Ring:
    """The non-tensor part of a ring call."""

    labels: torch.Tensor | None
    guides: torch.Tensor | None
    spec_fn: SpecFn
    scale: object  # a float, or None when the scale is a tensor input
    backend: str
    group: object
    sizes: list[int]
    bias_given: bool
    has_extra: bool
    has: tuple[bool, bool] = (False, False)  # (row_lse_beta, row_pair_loss) were formed

    def blocks(self, features: torch.Tensor):
        """Yield ``(step, view, features)`` of every block of the turn in order, the next block's
        transfer in flight while the caller works on the current one. Every rank posts its transfers
        in the same order (this block's, then whatever the caller posts in the step)."""
        rank, size = world(self.group)
        current = [t for t in (features, self.labels, self.guides) if t is not None]
        for step in range(size):
            src = (rank - step) % size
            works, incoming = [], None
            if step < size - 1:
                rows = self.sizes[(src - 1) % size]
                incoming = [t.new_empty((rows,) + tuple(t.shape[1:])) for t in current]
                works = _send_recv([t.contiguous() for t in current], incoming, self.group, (rank + 1) % size,
                                   (rank - 1) % size, _FEATURE_TAG)
            labels = current[1] if self.labels is not None else None
            guides = current[-1] if self.guides is not None else None
            yield step, View(labels, guides, 0 if step == 0 else None, step == 0 and self.has_extra), current[0]
            _wait(works)
            if incoming is not None:
                current = incoming

    def terms(self, rows, features, extra, view: View, scale, bias) -> ContrastiveTerms:
        kwargs = {"bias": bias} if self.bias_given else {}
        return compute_terms(rows, features, extra if view.with_extra else None, scale, self.spec_fn(view),
                             self.backend, **kwargs)


def _masked_lse(lse: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """``lse`` where the block's set is nonempty, ``-inf`` where the core reported an empty set as 0."""
    return torch.where(count > 0, lse, torch.full_like(lse, float("-inf")))


class _RingRows(torch.autograd.Function):
    """Row terms of ``rows`` against every rank's block, by the ring. Inputs: ``rows [n, D]``, this
    rank's ``features [m, D]``, local ``extra [R, D]`` or None, ``scale`` and ``bias`` 0-d tensors
    or None; outputs: ``row_lse, row_pos, row_den_count, row_pos_count, row_lse_beta, row_pair_loss``
    (empty tensors for terms the spec does not ask for)."""

    @staticmethod
    def forward(ctx, rows, features, extra, scale_t, bias_t, ring: _Ring):
        scale = ring.scale if scale_t is None else scale_t
        acc = accumulation_dtype(rows.dtype)
        n = rows.shape[0]
        lse = torch.full((n,), float("-inf"), dtype=acc, device=rows.device)
        lse_beta = lse.clone()
        pos_sum = torch.zeros(n, dtype=acc, device=rows.device)
        pair = torch.zeros_like(pos_sum)
        den = torch.zeros(n, dtype=torch.int64, device=rows.device)
        pos_n = torch.zeros_like(den)
        has_beta = has_pair = False
        for _, view, block in ring.blocks(features):
            t = ring.terms(rows, block, extra, view, scale, bias_t)
            lse = torch.logaddexp(lse, _masked_lse(t.row_lse, t.row_den_count))
            pos_sum += t.row_pos.to(acc) * t.row_pos_count
            den += t.row_den_count
            pos_n += t.row_pos_count
            if t.row_lse_beta is not None:
                has_beta = True
                lse_beta = torch.logaddexp(lse_beta, _masked_lse(t.row_lse_beta, t.row_den_count))
            if t.row_pair_loss is not None:
                has_pair = True
                pair += t.row_pair_loss
        zero = torch.zeros_like(pos_sum)
        lse = torch.where(den > 0, lse, zero)
        lse_beta = torch.where(den > 0, lse_beta, zero) if has_beta else zero.new_empty(0)
        pos = torch.where(pos_n > 0, pos_sum / pos_n.clamp(min=1), zero)
        ctx.ring = ring
        ring.has = ctx.has = (has_beta, has_pair)
        ctx.set_materialize_grads(False)  # an unused term's gradient stays None: its products are not formed
        ctx.save_for_backward(rows, features, extra, scale_t, bias_t, lse, lse_beta, pos_n)
        ctx.mark_non_differentiable(den, pos_n)
        return lse, pos, den, pos_n, lse_beta, pair if has_pair else zero.new_empty(0)

    @staticmethod
    @once_differentiable
    def backward(ctx, g_lse, g_pos, _g_den, _g_pos_n, g_lse_beta, g_pair):
        rows, features, extra, scale_t, bias_t, lse, lse_beta, pos_n = ctx.saved_tensors
        ring: _Ring = ctx.ring
        has_beta, has_pair = ctx.has
        rank, size = world(ring.group)
        acc = lse.dtype
        want = [rows, extra, scale_t, bias_t]
        need = [x is not None and ctx.needs_input_grad[i] for i, x in zip((0, 2, 3, 4), want)]
        grads = [None] * 4  # rows, extra, scale, bias: summed over the blocks in turn order
        block_grad_needed = ctx.needs_input_grad[1]
        incoming, pending = None, []  # the next block's gradient so far, and its transfer in flight
        travelling = None
        for step, view, block in ring.blocks(features):
            with torch.enable_grad():
                inputs = [None if x is None else x.detach().requires_grad_(k) for x, k in zip(want, need)]
                blk = block.detach().requires_grad_(block_grad_needed)
                scale = ring.scale if inputs[2] is None else inputs[2]
                t = ring.terms(inputs[0], blk, inputs[1], view, scale, inputs[3])
                outs, outs_grad = [], []
                if g_lse is not None:
                    outs.append(t.row_lse)
                    share = torch.exp(_masked_lse(t.row_lse, t.row_den_count) - lse)
                    outs_grad.append((g_lse * share).to(t.row_lse.dtype))
                if g_pos is not None:
                    outs.append(t.row_pos)
                    share = t.row_pos_count.to(acc) / pos_n.clamp(min=1).to(acc)  # (counts divide in fp32)
                    outs_grad.append((g_pos * share).to(t.row_pos.dtype))
                if has_beta and g_lse_beta is not None:
                    outs.append(t.row_lse_beta)
                    share = torch.exp(_masked_lse(t.row_lse_beta, t.row_den_count) - lse_beta)
                    outs_grad.append((g_lse_beta * share).to(t.row_lse_beta.dtype))
                if has_pair and g_pair is not None:
                    outs.append(t.row_pair_loss)
                    outs_grad.append(g_pair.to(t.row_pair_loss.dtype))
                targets = [x for x, k in zip(inputs, need) if k] + ([blk] if block_grad_needed else [])
                found = torch.autograd.grad(outs, targets, outs_grad, allow_unused=True) if targets and outs else \
                    [None] * len(targets)
            found = list(found)
            for i, k in enumerate(need):
                if k:
                    g = found.pop(0)
                    if g is not None:
                        grads[i] = g.to(acc) if grads[i] is None else grads[i] + g.to(acc)
            if block_grad_needed:
                g_blk = found.pop(0)
                g_blk = torch.zeros(block.shape, dtype=acc, device=block.device) if g_blk is None else g_blk.to(acc)
                if step > 0:  # the ranks before this one in the block's turn have added theirs
                    _wait(pending)
                    g_blk = incoming + g_blk
                travelling = g_blk
                if size > 1:  # pass it on; receive the next block's (after the last step: the own block's)
                    rows_in = ring.sizes[(rank - step - 1) % size]
                    incoming = torch.empty((rows_in,) + tuple(features.shape[1:]), dtype=acc, device=features.device)
                    pending = _send_recv([travelling], [incoming], ring.group, (rank + 1) % size, (rank - 1) % size,
                                         _GRAD_TAG)
        grad_features = None
        if block_grad_needed:
            if size > 1:  # the own block's gradient comes back from the last rank of its turn
                _wait(pending)
                travelling = incoming
            grad_features = travelling.to(features.dtype)

        def cast(g, x):
            if g is None or x is None:
                return None
            return g.reshape(x.shape).to(x.dtype)

        return (cast(grads[0], rows), grad_features, cast(grads[1], extra), cast(grads[2], scale_t),
                cast(grads[3], bias_t), None)


def ring_row_terms(rows: torch.Tensor, block: Block, extra: torch.Tensor | None, scale, spec_fn: SpecFn,
                   backend: str, group, *, bias=None, sizes: list[int] | None = None) -> ContrastiveTerms:
    """The core's row terms of ``rows [n, D]`` against every rank's ``block`` (this rank's given) plus
    the local ``extra [R, D]`` columns, by the ring exchange; ``spec_fn`` builds each call's roles
    from its :class:`View`. ``scale`` and ``bias`` are floats or 0-d tensors (which get gradients);
    ``bias`` is passed to the core only when given. ``sizes``: every rank's block size, if known.
    Column terms are not formed (the symmetric losses run their second direction as rows)."""
    if sizes is None:
        sizes = block_sizes(block.features.shape[0], group, rows.device)
    scale_t = scale if isinstance(scale, torch.Tensor) else None
    bias_t = bias
    if bias is not None and not isinstance(bias, torch.Tensor):  # a float bias: a constant, no gradient
        bias_t = torch.tensor(float(bias), dtype=accumulation_dtype(rows.dtype), device=rows.device)
    ring = _Ring(block.labels, block.guides, spec_fn, None if scale_t is not None else scale, backend, group, sizes,
                 bias is not None, extra is not None)
    lse, pos, den, pos_n, lse_beta, pair = _RingRows.apply(rows, block.features, extra, scale_t, bias_t, ring)
    has_beta, has_pair = ring.has
    return ContrastiveTerms(lse, pos, den, pos_n, None, None, None, None, lse_beta if has_beta else None,
                            pair if has_pair else None)
