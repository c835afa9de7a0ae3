"""The chunked backend: pure PyTorch, row blocks × column blocks, exact custom backward.

Forward walks the tiles once, keeping an online log-sum-exp per row and, for symmetric losses,
per key column in the same pass (with ``hard_beta`` two per row, of ``(1+β)·S`` and ``β·S``; with
``pairwise_sigmoid`` the per-row sum of the pairwise sigmoid losses, also in the same pass).
Backward recomputes each tile once and forms

    dS_ij = g_lse_i · softmax_ij·[den] + g_pos_i·[pos]/|P_i|  (+ the same per column),

(with ``hard_beta``: ``g_lse_i·(1+β)·softmax((1+β)S)_ij + g_lse_beta_i·β·softmax(βS)_ij`` for the
first term; with ``pairwise_sigmoid`` also ``g_pair_i·(-z_ij)·sigmoid(-z_ij·(S_ij + b))``, whose sum
is the bias gradient), then ``dQ̂ = s·dS·K̂``, ``dK̂ = s·dSᵀ·Q̂``, ``ds = Σ dS_ij·<q̂_i,k̂_j>`` and
the L2-normalization backward. Only the inputs and O(N+M) fp32 vectors are saved; no tensor larger than a tile of
``block_rows × block_cols`` logits is ever allocated. Tiles are visited in a fixed order, so the
backward is deterministic. Works on any device and on fp16/bf16/fp32/fp64 inputs (fp32
accumulation; fp64 stays fp64, for gradcheck).

The Ring band (see ``ring_info_nce``) is found without materializing a row: a radix select over the order-
preserving integer image of the logits' float bits, one 256-bin histogram pass per byte, each
pass recomputing the tiles, exact on the same tile values the loss uses.
"""
from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from typing import NamedTuple

import torch

from ..core import (
    ContrastiveTerms,
    RoleSpec,
    Scale,
    accumulation_dtype,
    as_scale_tensor,
    check_guide_shapes,
    denominator,
    normalize_rows,
    normalize_rows_backward,
    pair_roles,
    ring_ranks,
    sigmoid_pair_losses,
)

_BLOCK = {"rows": 1024, "cols": 1024}


@contextlib.contextmanager
def block_size(rows: int, cols: int):
    """Temporarily use ``rows × cols`` tiles (e.g. small tiles to exercise the tiling in tests)."""
    if rows < 1 or cols < 1:
        raise ValueError(f"block sizes must be >= 1, got rows={rows}, cols={cols}")
    saved = dict(_BLOCK)
    _BLOCK.update(rows=rows, cols=cols)
    try:
        yield
    finally:
        _BLOCK.update(saved)


class _Columns:
    """The column sources (keys, then extra negatives) cut into blocks that never straddle them."""

    def __init__(self, keys: torch.Tensor, extra: torch.Tensor | None, block: int):
        self.num_keys = keys.shape[0]
        self.blocks: list[tuple[int, int, torch.Tensor, int]] = []  # (global start, end, source, local start)
        for source, offset in ((keys, 0), (extra, self.num_keys)):
            if source is None:
                continue
            for c0 in range(0, source.shape[0], block):
                c1 = min(c0 + block, source.shape[0])
                self.blocks.append((offset + c0, offset + c1, source, c0))

    def __iter__(self) -> Iterator[tuple[int, int, torch.Tensor, bool]]:
        for g0, g1, source, c0 in self.blocks:
            yield g0, g1, source[c0 : c0 + (g1 - g0)], g0 < self.num_keys


def _row_blocks(n: int, block: int) -> Iterator[tuple[int, int]]:
    for r0 in range(0, n, block):
        yield r0, min(r0 + block, n)


def _tile_cosines(q_blk: torch.Tensor, c_blk: torch.Tensor) -> torch.Tensor:
    """``<q̂_i, k̂_j>`` of one tile, in the accumulation dtype. Every pass uses this one function,
    so the Ring selection, the forward and the backward see bit-identical logits."""
    acc = accumulation_dtype(q_blk.dtype)  # fp32 products of half rows: no overflow of the fp16 output
    return q_blk.to(acc) @ c_blk.to(acc).T


def _normalized(x: torch.Tensor | None, normalize: bool) -> torch.Tensor | None:
    """The unit rows (:func:`~contrastive_ops.core.normalize_rows`: fp32 arithmetic, a scaled norm) in
    ``x``'s dtype, or ``x`` itself."""
    if x is None or not normalize:
        return x
    return normalize_rows(x)


def _normalize_backward(x: torch.Tensor, grad_unit: torch.Tensor) -> torch.Tensor:
    """Gradient through the normalization: ``(g - x̂<x̂,g>)/‖x‖``, and ``g/eps`` where ``‖x‖ <= eps``."""
    return normalize_rows_backward(x, grad_unit)


# ---------------------------------------------------------------------------------------------
# Ring band: radix select over recomputed tiles
# ---------------------------------------------------------------------------------------------


def _int_dtype(float_dtype: torch.dtype) -> torch.dtype:
    return torch.int64 if float_dtype == torch.float64 else torch.int32


def _order_bits(values: torch.Tensor) -> torch.Tensor:
    """Integers of the floats' width whose *unsigned* bit patterns sort like the floats, with -0.0
    and +0.0 mapped alike (ties are selected by value). Self-inverse: see :func:`_bits_to_values`.

    Negative floats get their magnitude bits flipped (larger magnitude, smaller key); then the sign
    bit is flipped so that negatives come below positives in unsigned order.
    """
    int_dtype = _int_dtype(values.dtype)
    info = torch.iinfo(int_dtype)
    bits = (values + 0.0).view(int_dtype)  # + 0.0 turns -0.0 into +0.0
    return torch.where(bits >= 0, bits, bits ^ info.max) ^ info.min


def _bits_to_values(keys: torch.Tensor, float_dtype: torch.dtype) -> torch.Tensor:
    info = torch.iinfo(keys.dtype)
    signed = keys ^ info.min
    return torch.where(signed >= 0, signed, signed ^ info.max).view(float_dtype)


def _as_pattern(prefix: torch.Tensor, int_dtype: torch.dtype) -> torch.Tensor:
    """An int64 bit prefix (< 2**32 for 32-bit keys) as the same bit pattern in ``int_dtype``."""
    if int_dtype == torch.int64:
        return prefix
    return torch.where(prefix >= 2**31, prefix - 2**32, prefix).to(torch.int32)


def _select_band(q_blk, columns: _Columns, scale, spec: RoleSpec, rows: torch.Tensor):
    """``(v_lo, v_hi)`` of the Ring for the rows of one block, exact on the tile values.

    The order-preserving bit patterns of the logits are selected one byte at a time, from the most
    significant: each pass histograms, per row, the next byte of the candidates that still match
    the prefix chosen so far, and picks the byte holding the wanted rank. Two ranks are selected at
    once: ``lo`` (gives ``v_hi``) and ``hi - 1`` (gives ``v_lo``).
    """
    acc = accumulation_dtype(q_blk.dtype)
    int_dtype = _int_dtype(acc)
    nbits = 64 if int_dtype == torch.int64 else 32
    n = rows.shape[0]
    device = q_blk.device
    ranks = None  # [2, n] descending ranks still to skip within the current prefix
    prefix = torch.zeros(2, n, dtype=torch.int64, device=device)  # chosen bytes, as an unsigned pattern
    nonempty = None
    for shift in range(nbits - 8, -1, -8):
        hist = torch.zeros(2, n, 256, dtype=torch.int64, device=device)
        pattern = _as_pattern(prefix, int_dtype)
        for g0, g1, c_blk, _ in columns:
            cols = torch.arange(g0, g1, device=device)
            keys = _order_bits(_tile_cosines(q_blk, c_blk) * scale)
            _, candidate = pair_roles(rows, cols, columns.num_keys, spec)
            digit = ((keys >> shift) & 255).long()
            if shift == nbits - 8:  # no prefix yet: both ranks share one histogram
                hist[0].scatter_add_(1, digit, candidate.long())
                continue
            for t in range(2):  # only candidates whose bytes above `shift` match the prefix
                match = candidate & (((keys ^ pattern[t][:, None]) >> (shift + 8)) == 0)
                hist[t].scatter_add_(1, digit, match.long())
        if ranks is None:  # first pass: the histogram's total is the row's candidate count
            hist[1] = hist[0]
            lo, hi = ring_ranks(hist[0].sum(dim=1), *spec.ring)
            nonempty = hi > lo
            ranks = torch.stack([lo, (hi - 1).clamp(min=0)]) * nonempty
        from_top = hist.flip(-1).cumsum(-1)  # candidates at this byte value or above
        taken = (from_top <= ranks[..., None]).sum(-1).clamp(max=255)  # bytes wholly above the rank
        byte = 255 - taken
        above = torch.where(taken > 0, from_top.gather(-1, (taken - 1).clamp(min=0)[..., None])[..., 0], 0)
        ranks = ranks - above
        prefix = prefix | (byte << shift)
    v_hi, v_lo = _bits_to_values(_as_pattern(prefix, int_dtype), acc).unbind(0)
    inf = torch.full_like(v_hi, float("inf"))
    return torch.where(nonempty, v_lo, inf), torch.where(nonempty, v_hi, -inf)


def ring_band(query, keys, extra, scale: Scale, spec: RoleSpec, blocks: tuple[int, int]):
    """The Ring band ``(v_lo [N], v_hi [N])`` of every row, by radix select over the tiles.

    ``blocks`` must be the tiling of the forward and backward passes: a tile's logits can differ in
    the last bit with its shape, and the band is exact only on the values the loss itself uses."""
    with torch.no_grad():
        qh, kh, eh = (_normalized(t, spec.normalize) for t in (query, keys, extra))
        scale_t = as_scale_tensor(scale.detach() if isinstance(scale, torch.Tensor) else scale, qh)
        columns = _Columns(kh, eh, blocks[1])
        bands = []
        for r0, r1 in _row_blocks(qh.shape[0], blocks[0]):
            rows = torch.arange(r0, r1, device=qh.device)
            bands.append(_select_band(qh[r0:r1], columns, scale_t, spec, rows))
        return torch.cat([b[0] for b in bands]), torch.cat([b[1] for b in bands])


# ---------------------------------------------------------------------------------------------
# Forward and backward
# ---------------------------------------------------------------------------------------------


class _Tile(NamedTuple):
    r0: int
    r1: int
    g0: int  # global column range [g0, g1): keys first, then extra negatives
    g1: int
    q_blk: torch.Tensor
    c_blk: torch.Tensor
    is_key: bool
    cosines: torch.Tensor  # <q̂_i, k̂_j>, accumulation dtype
    logits: torch.Tensor  # scale · cosines
    positive: torch.Tensor  # bool roles
    candidate: torch.Tensor
    den: torch.Tensor


def _tiles(qh, kh, eh, scale_t, spec: RoleSpec, band, blocks: tuple[int, int]) -> Iterator[_Tile]:
    """Every tile in a fixed order (row blocks outer), with its logits and roles recomputed."""
    columns = _Columns(kh, eh, blocks[1])
    device = qh.device
    for r0, r1 in _row_blocks(qh.shape[0], blocks[0]):
        rows = torch.arange(r0, r1, device=device)
        q_blk = qh[r0:r1]
        row_band = None if band is None else (band[0][r0:r1], band[1][r0:r1])
        for g0, g1, c_blk, is_key in columns:
            cols = torch.arange(g0, g1, device=device)
            cosines = _tile_cosines(q_blk, c_blk)
            logits = cosines * scale_t
            positive, candidate = pair_roles(rows, cols, columns.num_keys, spec)
            den = denominator(positive, candidate, logits, spec, row_band)
            yield _Tile(r0, r1, g0, g1, q_blk, c_blk, is_key, cosines, logits, positive, candidate, den)


def _forward(qh, kh, eh, scale_t, bias_t, spec: RoleSpec, band, blocks: tuple[int, int]):
    """The ten outputs of :class:`_ChunkedContrastive` (absent terms as None)."""
    acc = scale_t.dtype
    n, m = qh.shape[0], kh.shape[0]
    device = qh.device
    neg_inf = float("-inf")
    beta = spec.hard_beta
    row_lse = torch.full((n,), neg_inf, dtype=acc, device=device)
    row_pos = torch.zeros(n, dtype=acc, device=device)
    row_den = torch.zeros(n, dtype=torch.int64, device=device)
    row_pos_n = torch.zeros(n, dtype=torch.int64, device=device)
    row_lse_beta = torch.full((n,), neg_inf, dtype=acc, device=device) if beta is not None else None
    row_pair = torch.zeros(n, dtype=acc, device=device) if spec.pairwise_sigmoid else None
    if spec.column_terms:
        col_lse = torch.full((m,), neg_inf, dtype=acc, device=device)
        col_pos = torch.zeros(m, dtype=acc, device=device)
        col_den = torch.zeros(m, dtype=torch.int64, device=device)
        col_pos_n = torch.zeros(m, dtype=torch.int64, device=device)
    for t in _tiles(qh, kh, eh, scale_t, spec, band, blocks):
        rs, cs = slice(t.r0, t.r1), slice(t.g0, t.g1)
        lse_logits = t.logits if beta is None else t.logits * (1.0 + beta)
        masked = lse_logits.masked_fill(~t.den, neg_inf)
        pos_logits = t.logits.masked_fill(~t.positive, 0.0)
        row_lse[rs] = torch.logaddexp(row_lse[rs], torch.logsumexp(masked, dim=1))
        row_pos[rs] += pos_logits.sum(dim=1)
        row_den[rs] += t.den.sum(dim=1)
        row_pos_n[rs] += t.positive.sum(dim=1)
        if beta is not None:  # scaled before masking: 0·(-inf) would be NaN
            masked_beta = (t.logits * beta).masked_fill(~t.den, neg_inf)
            row_lse_beta[rs] = torch.logaddexp(row_lse_beta[rs], torch.logsumexp(masked_beta, dim=1))
        if row_pair is not None:
            row_pair[rs] += sigmoid_pair_losses(t.logits, bias_t, t.positive, t.candidate).sum(dim=1)
        if spec.column_terms and t.is_key:
            col_lse[cs] = torch.logaddexp(col_lse[cs], torch.logsumexp(masked, dim=0))
            col_pos[cs] += pos_logits.sum(dim=0)
            col_den[cs] += t.den.sum(dim=0)
            col_pos_n[cs] += t.positive.sum(dim=0)

    def finish(lse, pos, den_n, pos_n):
        lse = torch.where(den_n > 0, lse, torch.zeros_like(lse))
        return lse, pos / pos_n.clamp(min=1).to(acc)

    row_lse, row_pos = finish(row_lse, row_pos, row_den, row_pos_n)
    if row_lse_beta is not None:
        row_lse_beta = torch.where(row_den > 0, row_lse_beta, torch.zeros_like(row_lse_beta))
    out = [row_lse, row_pos, row_den, row_pos_n]
    if spec.column_terms:
        col_lse, col_pos = finish(col_lse, col_pos, col_den, col_pos_n)
        out += [col_lse, col_pos, col_den, col_pos_n]
    else:
        out += [None] * 4
    return out + [row_lse_beta, row_pair]


def _softmax_part(t: _Tile, logits, lse, grad, zero):
    """``grad · exp(logits - lse)`` on the denominator; where() rather than a product, as exp() of a
    masked-out logit may overflow to inf."""
    return torch.where(t.den, torch.exp(logits - lse), zero) * grad


def _backward(qh, kh, eh, scale_t, bias_t, spec: RoleSpec, band, blocks: tuple[int, int], saved: dict, grads: dict):
    """Gradients of the unit rows ``(dQ̂, dK̂, dÊ)`` in fp32, of the scale and of the bias."""
    acc = scale_t.dtype
    m = kh.shape[0]
    device = qh.device
    beta = spec.hard_beta
    row_lse = saved["row_lse"]
    g_row_lse = grads["row_lse"]
    g_row_pos_w = grads["row_pos"] / saved["row_pos_n"].clamp(min=1).to(acc)
    if beta is not None:
        g_row_lse = g_row_lse * (1.0 + beta)
        g_row_lse_beta = grads["row_lse_beta"] * beta
    if spec.column_terms:
        col_lse = saved["col_lse"]
        g_col_lse = grads["col_lse"]
        g_col_pos_w = grads["col_pos"] / saved["col_pos_n"].clamp(min=1).to(acc)
    grad_q = torch.zeros(qh.shape, dtype=acc, device=device)
    grad_k = torch.zeros(kh.shape, dtype=acc, device=device)
    grad_e = None if eh is None else torch.zeros(eh.shape, dtype=acc, device=device)
    grad_scale = torch.zeros((), dtype=acc, device=device)
    grad_bias = torch.zeros((), dtype=acc, device=device)
    zero = torch.zeros((), dtype=acc, device=device)
    for t in _tiles(qh, kh, eh, scale_t, spec, band, blocks):
        rs, cs = slice(t.r0, t.r1), slice(t.g0, t.g1)
        if beta is None:
            d_logits = _softmax_part(t, t.logits, row_lse[rs, None], g_row_lse[rs, None], zero)
        else:
            d_logits = _softmax_part(t, t.logits * (1.0 + beta), row_lse[rs, None], g_row_lse[rs, None], zero)
            d_logits = d_logits + _softmax_part(t, t.logits * beta, saved["row_lse_beta"][rs, None],
                                                g_row_lse_beta[rs, None], zero)
        d_logits = d_logits + t.positive * g_row_pos_w[rs, None]
        if spec.pairwise_sigmoid:
            # d softplus(-z·x)/dx = -z·sigmoid(-z·x), z = +1 on positives and -1 elsewhere
            shifted = t.logits + bias_t
            minus_z = torch.where(t.positive, -torch.ones_like(shifted), torch.ones_like(shifted))
            d_pair = torch.where(t.positive | t.candidate, minus_z * torch.sigmoid(minus_z * shifted), zero)
            d_pair = d_pair * grads["row_pair_loss"][rs, None]
            grad_bias += d_pair.sum()
            d_logits = d_logits + d_pair
        if spec.column_terms and t.is_key:
            d_logits = d_logits + _softmax_part(t, t.logits, col_lse[None, cs], g_col_lse[None, cs], zero)
            d_logits = d_logits + t.positive * g_col_pos_w[None, cs]
        grad_scale += (d_logits * t.cosines).sum()
        grad_q[rs] += d_logits @ t.c_blk.to(acc)  # in the accumulation dtype, as the cosines
        d_cols = d_logits.T @ t.q_blk.to(acc)
        if t.is_key:
            grad_k[cs] += d_cols
        else:
            grad_e[t.g0 - m : t.g1 - m] += d_cols
    grad_e = None if grad_e is None else grad_e * scale_t
    return grad_q * scale_t, grad_k * scale_t, grad_e, grad_scale, grad_bias


DOUBLE_BACKWARD_ERROR = ("backend='chunked' computes first derivatives only: a double backward (a gradient of a "
                         "gradient, e.g. torch.autograd.grad(..., create_graph=True) differentiated again) is not "
                         "supported; use backend='naive' for higher derivatives")


class _NoSecondDerivative(torch.autograd.Function):
    """The identity on a gradient ``x``, on the graph of ``sources`` (the inputs it was computed from),
    whose own backward raises :data:`DOUBLE_BACKWARD_ERROR`."""

    @staticmethod
    def forward(ctx, x, *sources):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, *grads):
        raise RuntimeError(DOUBLE_BACKWARD_ERROR)


def _first_order_only(backward):
    """A custom backward run without recording a graph; where one is asked for (``create_graph=True``
    with inputs or incoming gradients that require grad) each gradient comes back through
    :class:`_NoSecondDerivative`, so differentiating it again raises :data:`DOUBLE_BACKWARD_ERROR`
    instead of treating it as a constant (silently wrong). ``torch.autograd.function.once_differentiable``
    does not suffice: its error node hangs off detached copies, off the path to the inputs, so
    ``torch.autograd.grad`` prunes it."""

    @functools.wraps(backward)
    def wrapper(ctx, *grads):
        with torch.no_grad():
            outputs = backward(ctx, *grads)
        if not torch.is_grad_enabled():
            return outputs
        sources = [t for t in (*ctx.saved_tensors, *grads) if isinstance(t, torch.Tensor) and t.requires_grad]
        if not sources:
            return outputs
        return tuple(x if x is None else _NoSecondDerivative.apply(x, *sources) for x in outputs)

    return wrapper


#: The autograd function's outputs, in order (absent terms are empty placeholder tensors).
_OUTPUTS = ("row_lse", "row_pos", "row_den", "row_pos_n", "col_lse", "col_pos", "col_den", "col_pos_n",
            "row_lse_beta", "row_pair_loss")
_COUNTS = ("row_den", "row_pos_n", "col_den", "col_pos_n")
_SAVED = ("row_lse", "row_pos_n", "col_lse", "col_pos_n", "row_lse_beta")


class _ChunkedContrastive(torch.autograd.Function):
    """Autograd of the tiled core. Saves inputs and O(N+M) vectors only. Differentiable once: a double
    backward (``create_graph=True`` and a second ``grad``) raises a RuntimeError saying so.

    ``keys=None`` means the keys are the queries themselves (NT-Xent, SupCon): the tensor is passed
    once, as ``torch.compile`` cannot trace one tensor given twice, and its two gradients are summed.
    The Ring band comes as two plain tensor arguments (or None); ``bias_t`` is a 0-d tensor or None.
    """

    @staticmethod
    def forward(ctx, query, keys, extra, scale_t, bias_t, band_lo, band_hi, spec: RoleSpec, blocks):
        band = None if band_lo is None else (band_lo, band_hi)
        qh, kh, eh = (_normalized(t, spec.normalize) for t in (query, keys, extra))
        kh = qh if keys is None else kh
        out = _forward(qh, kh, eh, scale_t, bias_t, spec, band, blocks)
        named = dict(zip(_OUTPUTS, out))
        ctx.spec = spec
        ctx.blocks = blocks  # backward must recompute the very same tiles
        ctx.save_for_backward(query, keys, extra, scale_t, bias_t, band_lo, band_hi, *(named[k] for k in _SAVED))
        ctx.mark_non_differentiable(*(named[k] for k in _COUNTS if named[k] is not None))
        # fixed arity; distinct tensors (torch.compile rejects aliased outputs)
        return tuple(
            x if x is not None else query.new_empty(0, dtype=torch.int64 if k in _COUNTS else scale_t.dtype)
            for k, x in zip(_OUTPUTS, out)
        )

    @staticmethod
    @_first_order_only
    def backward(ctx, *output_grads):
        spec: RoleSpec = ctx.spec
        query, keys, extra, scale_t, bias_t, band_lo, band_hi, *saved_list = ctx.saved_tensors
        saved = dict(zip(_SAVED, saved_list))
        band = None if band_lo is None else (band_lo, band_hi)
        acc = scale_t.dtype
        row_like = saved["row_lse"]

        def grad_or_zero(name, like):
            g = output_grads[_OUTPUTS.index(name)]
            return torch.zeros_like(like) if g is None else g.to(acc)

        grads = {k: grad_or_zero(k, row_like) for k in ("row_lse", "row_pos")}
        if spec.column_terms:
            grads.update({k: grad_or_zero(k, saved["col_lse"]) for k in ("col_lse", "col_pos")})
        if spec.hard_beta is not None:
            grads["row_lse_beta"] = grad_or_zero("row_lse_beta", row_like)
        if spec.pairwise_sigmoid:
            grads["row_pair_loss"] = grad_or_zero("row_pair_loss", row_like)
        shared = keys is None
        keys_in = query if shared else keys
        bias_in = torch.zeros((), dtype=acc, device=query.device) if bias_t is None else bias_t
        with torch.no_grad():
            qh, kh, eh = (_normalized(t, spec.normalize) for t in (query, keys_in, extra))
            dq, dk, de, dscale, dbias = _backward(qh, kh, eh, scale_t, bias_in, spec, band, ctx.blocks, saved, grads)
            if shared:
                dq, dk = dq + dk, None
            if spec.normalize:
                dq = _normalize_backward(query, dq)
                dk = None if dk is None else _normalize_backward(keys, dk)
                de = None if de is None else _normalize_backward(extra, de)
        need = ctx.needs_input_grad
        return (
            dq.to(query.dtype) if need[0] else None,
            dk.to(keys.dtype) if (need[1] and dk is not None) else None,
            de.to(extra.dtype) if (need[2] and de is not None) else None,
            dscale if need[3] else None,
            dbias if need[4] else None,
            None,
            None,
            None,
            None,
        )


def compute_terms(
    query: torch.Tensor,
    keys: torch.Tensor,
    extra: torch.Tensor | None,
    scale: Scale,
    spec: RoleSpec,
    bias: Scale | None = None,
) -> ContrastiveTerms:
    """The core's terms (see :mod:`contrastive_ops.core`) in tiles of the current :func:`block_size`.

    ``query [N, D]``, ``keys [M, D]``, ``extra [R, D]`` or None, same dtype and device; ``scale`` a
    float or a 0-d tensor (which receives a gradient); ``bias`` likewise, used only with
    ``spec.pairwise_sigmoid``. The Ring band, when asked for, is selected first (no gradient) on the
    same tiling as the forward and backward.
    """
    blocks = (_BLOCK["rows"], _BLOCK["cols"])
    band_lo = band_hi = None
    check_guide_shapes(spec, query.shape[0], keys.shape[0] + (0 if extra is None else extra.shape[0]))
    if spec.ring is not None:
        band_lo, band_hi = ring_band(query, keys, extra, scale, spec, blocks)
    scale_t = as_scale_tensor(scale, query)
    bias_t = as_scale_tensor(0.0 if bias is None else bias, query) if spec.pairwise_sigmoid else None
    shared_keys = None if keys is query else keys
    out = _ChunkedContrastive.apply(query, shared_keys, extra, scale_t, bias_t, band_lo, band_hi, spec, blocks)
    named = dict(zip(_OUTPUTS, out))
    present = {k: (v if k in ("row_lse", "row_pos", "row_den", "row_pos_n") else None) for k, v in named.items()}
    if spec.column_terms:
        present.update({k: named[k] for k in ("col_lse", "col_pos", "col_den", "col_pos_n")})
    if spec.hard_beta is not None:
        present["row_lse_beta"] = named["row_lse_beta"]
    if spec.pairwise_sigmoid:
        present["row_pair_loss"] = named["row_pair_loss"]
    return ContrastiveTerms(*(present[k] for k in _OUTPUTS))  # the same order as the fields
