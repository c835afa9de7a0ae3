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
from .first_order import double_backward_error, first_order_only

_BLOCK = {"rows": 2048, "cols": 2048}


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


class _Workspace:
    """Tile-sized scratch tensors reused by every tile of a pass (no allocation, and no page faults of
    fresh memory, per tile). ``get(name, r, c)`` is a contiguous ``[r, c]`` view of the named buffer."""

    def __init__(self, rows: int, cols: int, dtype: torch.dtype, device: torch.device):
        self.size, self.dtype, self.device = max(rows * cols, 1), dtype, device
        self.flat: dict[str, torch.Tensor] = {}

    def get(self, name: str, r: int, c: int, dtype: torch.dtype | None = None) -> torch.Tensor:
        dtype = dtype or self.dtype
        if torch.compiler.is_compiling():  # traced: plain fresh tensors
            return torch.empty(r, c, dtype=dtype, device=self.device)
        flat = self.flat.get(name)
        if flat is None or flat.numel() < r * c or flat.dtype != dtype:
            flat = self.flat[name] = torch.empty(max(self.size, r * c), dtype=dtype, device=self.device)
        return flat[: r * c].view(r, c)


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
    # negatives: magnitude bits flipped; an arithmetic shift of the sign gives the mask (no where())
    flip = (bits >> (info.bits - 1)).bitwise_and_(info.max)
    return bits.bitwise_xor_(flip).bitwise_xor_(info.min)


def _bits_to_values(keys: torch.Tensor, float_dtype: torch.dtype) -> torch.Tensor:
    info = torch.iinfo(keys.dtype)
    signed = keys ^ info.min
    return torch.where(signed >= 0, signed, signed ^ info.max).view(float_dtype)


def _as_pattern(prefix: torch.Tensor, int_dtype: torch.dtype) -> torch.Tensor:
    """An int64 bit prefix (< 2**32 for 32-bit keys) as the same bit pattern in ``int_dtype``."""
    if int_dtype == torch.int64:
        return prefix
    return torch.where(prefix >= 2**31, prefix - 2**32, prefix).to(torch.int32)


def _plain_candidates(spec: RoleSpec) -> bool:
    """Whether a tile's candidates are every column but the row's positive (no self pair, labels,
    guide or restricted key pool): then they are one comparison with the positive's column."""
    return (spec.self_index is None and spec.row_labels is None and not spec.has_guide and spec.key_negatives)


def _candidates(rows, cols, num_keys, spec: RoleSpec) -> torch.Tensor:
    if _plain_candidates(spec):
        if spec.pos_index is None:
            return torch.ones(rows.shape[0], cols.shape[0], dtype=torch.bool, device=rows.device)
        return cols[None, :] != spec.pos_index[rows][:, None]
    return pair_roles(rows, cols, num_keys, spec)[1]


def _natural_logits(q_blk: torch.Tensor, c_blk: torch.Tensor, scale, out: torch.Tensor | None = None) -> torch.Tensor:
    """``_tile_cosines(q_blk, c_blk) * scale`` (the same bits), written into ``out`` when given. The
    Ring's selection, forward and backward all take their logits from here."""
    acc = accumulation_dtype(q_blk.dtype)
    q_blk, c_blk = q_blk.to(acc), c_blk.to(acc)
    if out is None:
        return (q_blk @ c_blk.T).mul_(scale)
    return torch.mm(q_blk, c_blk.T, out=out).mul_(scale)


def _radix_band(n: int, acc: torch.dtype, device, spec: RoleSpec, count):
    """``(v_lo, v_hi)`` of ``n`` rows by a radix select over the order-preserving bit patterns of their
    logits, one byte per pass from the most significant. ``count(shift, patterns)`` returns the int64
    histograms ``[2, n, 256]`` of byte ``shift`` of the candidates whose bytes above it match
    ``patterns[t]`` (``patterns`` None on the first pass: one histogram of every candidate, in ``[0]``).
    Two ranks are selected at once: ``lo`` (gives ``v_hi``) and ``hi - 1`` (gives ``v_lo``)."""
    int_dtype = _int_dtype(acc)
    nbits = 64 if int_dtype == torch.int64 else 32
    ranks = None  # [2, n] descending ranks still to skip within the current prefix
    prefix = torch.zeros(2, n, dtype=torch.int64, device=device)  # chosen bytes, as an unsigned pattern
    nonempty = None
    for shift in range(nbits - 8, -1, -8):
        hist = count(shift, None if ranks is None else _as_pattern(prefix, int_dtype))
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


def _select_band(q_blk, columns: _Columns, scale, spec: RoleSpec, rows: torch.Tensor, workspace=None):
    """``(v_lo, v_hi)`` of the Ring for the rows of one block, exact on the tile values.

    The order-preserving bit patterns of the logits are selected one byte at a time, from the most
    significant: each pass histograms, per row, the next byte of the candidates that still match
    the prefix chosen so far, and picks the byte holding the wanted rank. Two ranks are selected at
    once: ``lo`` (gives ``v_hi``) and ``hi - 1`` (gives ``v_lo``).
    """
    acc = accumulation_dtype(q_blk.dtype)
    n = rows.shape[0]
    device = q_blk.device
    ws = workspace if workspace is not None else _Workspace(n, max((g1 - g0 for g0, g1, _, _ in columns), default=1),
                                                            acc, device)
    tile_hist = torch.zeros(n, 256, dtype=acc, device=device)  # one tile's counts: exact integers (<= its columns)

    def count(shift, patterns):
        hist = torch.zeros(2, n, 256, dtype=torch.int64, device=device)
        for g0, g1, c_blk, _ in columns:
            cols = torch.arange(g0, g1, device=device)
            keys = _order_bits(_natural_logits(q_blk, c_blk, scale, ws.get("logits", n, g1 - g0)))
            candidate = _candidates(rows, cols, columns.num_keys, spec)
            digit = (keys >> shift).bitwise_and_(255).long()
            for t in range(1 if patterns is None else 2):
                match = candidate  # first pass: no prefix yet, both ranks share one histogram
                if patterns is not None:  # only candidates whose bytes above `shift` match the prefix
                    match = candidate & (((keys ^ patterns[t][:, None]) >> (shift + 8)) == 0)
                tile_hist.zero_().scatter_add_(1, digit, match.to(acc))
                hist[t] += tile_hist.long()
        return hist

    return _radix_band(n, acc, device, spec, count)


def ring_band(query, keys, extra, scale: Scale, spec: RoleSpec, blocks: tuple[int, int]):
    """The Ring band ``(v_lo [N], v_hi [N])`` of every row, by radix select over the tiles.

    ``blocks`` must be the tiling of the forward and backward passes: a tile's logits can differ in
    the last bit with its shape, and the band is exact only on the values the loss itself uses."""
    with torch.no_grad():
        qh, kh, eh = (_normalized(t, spec.normalize) for t in (query, keys, extra))
        acc = accumulation_dtype(qh.dtype)
        qh, kh, eh = (None if t is None else t.to(acc) for t in (qh, kh, eh))
        scale_t = as_scale_tensor(scale.detach() if isinstance(scale, torch.Tensor) else scale, qh)
        columns = _Columns(kh, eh, blocks[1])
        ws = _Workspace(min(blocks[0], qh.shape[0]), min(blocks[1], max(kh.shape[0], 1)), acc, qh.device)
        bands = []
        for r0, r1 in _row_blocks(qh.shape[0], blocks[0]):
            rows = torch.arange(r0, r1, device=qh.device)
            bands.append(_select_band(qh[r0:r1], columns, scale_t, spec, rows, ws))
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


# ---------------------------------------------------------------------------------------------
# The fast CPU path: positives and exclusions off the tiles, one exponential per tile
# ---------------------------------------------------------------------------------------------
#
# Taken in eager mode on CPU tensors (where a branch on a value costs no device sync) for the roles most
# losses use: positives by index (or by label alone, SupCon), at most a self pair and a decoupled positive
# left out per row, optionally a Ring band (natural-base logits, exactly those of the selection), the
# column terms or the pairwise sigmoid. Everything else (labels with an index, guides, hard negatives,
# a restricted key pool, traced or non-CPU calls) takes the general path above. Differences:
#
# * the scale (times log2(e), the softmax then runs on exp2) is folded into the query rows, so a tile's
#   logits are one GEMM; ``ds = Σ_i <q̂_i, (dS·K̂)_i>`` needs no cosines;
# * per row at most two columns are left out: they are set to -inf in the tile (O(rows) scatters),
#   never a [rows, cols] role mask; the positives' logits, counts and gradient terms are O((N+M)·D)
#   work outside the tiles (by index, or by label class sums);
# * the column log-sum-exp reuses the row-shifted exponentials: Σ_i exp2(S_ij - M) = Σ_i w_i·E_ij with
#   E_ij = exp2(S_ij - m_i), w_i = exp2(m_i - M) (a GEMV); a column whose sum falls below 2^-60 (its own
#   maximum far below the tile's) is recomputed with its own maximum. Backward likewise:
#   exp2(S_ij - c_j) = E_ij·a_i·b_j with E_ij = exp2(S_ij - r_i), when the tile's spread max r - min c
#   is at most 60 (a lost term is then below 2^-66), else a second exponential;
# * SigLIP's pair gradient needs no row statistic: dS_ij = σ(x_ij) - [positive]. The forward forms
#   A = dS·K̂ and B = dSᵀ·Q̂ (O((N+M)·D)) in the same tiles; the backward scales them when the
#   incoming per-row gradient is one value for every row (reduction "mean" or "sum"), and otherwise
#   recomputes the tiles.

_LOG2E = 1.4426950408889634
_LN2 = 0.6931471805599453
_COLUMN_FLOOR = 2.0**-60  # a column sum of the shared exponentials below this is recomputed
_MAX_SPREAD = 60.0  # backward: share one exponential while max(row lse) - min(column lse) <= this (base 2)


def fast_path_applies(spec: RoleSpec, device: torch.device) -> bool:
    """Whether :func:`compute_terms` takes the fast CPU path for ``spec`` (see above)."""
    if not _FAST["on"] or device.type != "cpu" or torch.compiler.is_compiling():
        return False
    if spec.has_guide or spec.hard_beta is not None or not spec.key_negatives:
        return False
    if spec.row_labels is not None and spec.pos_index is None:  # positives by label: all but self in the denominator
        return not spec.decoupled and spec.ring is None and not spec.column_terms and not spec.pairwise_sigmoid
    if spec.row_labels is not None and (spec.decoupled or spec.pairwise_sigmoid):
        return False
    if spec.ring is not None:
        return spec.self_index is None and not spec.decoupled and not spec.column_terms and not spec.pairwise_sigmoid
    if spec.pairwise_sigmoid:
        return not spec.decoupled and not spec.column_terms
    return True


_FAST = {"on": True}


@contextlib.contextmanager
def general_path():
    """Run every call through the general tile path (tests: the path of traced and non-CPU calls)."""
    saved = _FAST["on"]
    _FAST["on"] = False
    try:
        yield
    finally:
        _FAST["on"] = saved


class _Problem:
    """The unit rows in the accumulation dtype, the scaled query rows, and the O(N+M) role vectors."""

    def __init__(self, qh, kh, eh, scale_t, spec: RoleSpec, blocks):
        acc = scale_t.dtype
        self.acc, self.spec, self.blocks = acc, spec, blocks
        self.q, self.k = qh.to(acc), kh.to(acc)
        self.e = None if eh is None else eh.to(acc)
        self.n, self.m = self.q.shape[0], self.k.shape[0]
        self.m_total = self.m + (0 if self.e is None else self.e.shape[0])
        self.device = self.q.device
        self.natural = False  # tile logits in base 2 (the Ring's band too: see _ring_band_fast)
        self.scale = scale_t
        # tile logits: one GEMM of these rows (natural: cosines times the scale, as the selection)
        self.scale2 = scale_t * _LOG2E
        # folded into unit rows while that cannot overflow (an infinite or huge scale, or rows that are not
        # unit: the GEMM of the rows, then the scale, as the general path, so cos·inf stays ±inf, not NaN)
        self.folded = spec.normalize and bool(torch.isfinite(self.scale2)) and float(self.scale2.abs()) <= 1e30
        self.qs = self.q * self.scale2 if self.folded else self.q
        self.columns = _Columns(self.k, self.e, blocks[1])
        n, m_total, dev = self.n, self.m_total, self.device
        none = torch.full((n,), -1, dtype=torch.int64, device=dev)
        if spec.self_index is not None:
            self_index = spec.self_index.to(torch.int64)
            self.self_valid = (self_index >= 0) & (self_index < m_total)
            self.self_col = torch.where(self.self_valid, self_index, none)
        else:
            self.self_valid, self.self_col = torch.zeros(n, dtype=torch.bool, device=dev), none
        if spec.pos_index is not None:
            pos = spec.pos_index.to(torch.int64)
            self.pos_valid = (pos >= 0) & (pos < m_total) & (pos != self.self_col)
            self.pos_col = torch.where(self.pos_valid, pos, none)
        else:
            self.pos_valid, self.pos_col = torch.zeros(n, dtype=torch.bool, device=dev), none
        # columns left out of each row's denominator: the self pair, and the positive when decoupled
        self.excluded = [self.self_col] + ([self.pos_col] if spec.decoupled else [])
        self.by_label = spec.pos_index is None and spec.row_labels is not None  # SupCon's positives
        self.label_mask = spec.pos_index is not None and spec.row_labels is not None  # false negatives left out
        self.counted = self.label_mask or spec.ring is not None  # denominators counted in the tiles

    def rows_of(self, r0, r1, g0, c, col):
        """``(local index [r, 1], inside [r, 1])`` of the global columns ``col[r0:r1]`` in a tile at ``g0``."""
        local = col[r0:r1] - g0
        inside = (local >= 0) & (local < c)
        return local.clamp(0, c - 1)[:, None], inside[:, None]

    def gather_columns(self, col):
        """The unit column rows ``[N, D]`` of the global columns ``col`` (0 where ``col`` is -1)."""
        idx = col.clamp(0, self.m_total - 1)
        rows = self.k[idx.clamp(max=self.m - 1)]
        if self.e is not None:
            rows = torch.where((idx < self.m)[:, None], rows, self.e[(idx - self.m).clamp(min=0)])
        return rows * (col >= 0)[:, None]

    def column_target(self, grads_k, grads_e, g0, g1):
        return grads_k[g0:g1] if g0 < self.m else grads_e[g0 - self.m : g1 - self.m]

    def tile_logits(self, r0, r1, g0, g1, c_blk, out):
        if self.natural:
            return _natural_logits(self.q[r0:r1], c_blk, self.scale, out)
        if self.folded:
            return torch.mm(self.qs[r0:r1], c_blk.T, out=out)
        return torch.mm(self.q[r0:r1], c_blk.T, out=out).mul_(self.scale2)

    def mask_tile(self, S, r0, r1, g0, band):
        """-inf at the pairs left out of the denominator; with a band, at the candidates outside it."""
        c = S.shape[1]
        neg_inf = torch.tensor(float("-inf"), dtype=S.dtype)
        for col in self.excluded:
            idx, inside = self.rows_of(r0, r1, g0, c, col)
            S.scatter_(1, idx, torch.where(inside, neg_inf, S.gather(1, idx)))
        if band is not None or (self.label_mask and g0 < self.m):
            idx, inside = self.rows_of(r0, r1, g0, c, self.pos_col)
            pos_value = S.gather(1, idx)
            if self.label_mask and g0 < self.m:  # same label as the row, but not its positive: a false negative
                _, row_cls, col_cls, _ = self.label_state
                S.masked_fill_(row_cls[r0:r1, None] == col_cls[None, g0 : g0 + c], float("-inf"))
            if band is not None:
                lo, hi = band[0][r0:r1, None], band[1][r0:r1, None]
                S.masked_fill_(~((S >= lo) & (S <= hi)), float("-inf"))
            S.scatter_(1, idx, torch.where(inside, pos_value, S.gather(1, idx)))  # the positive is always in
        return S

    # -- the positives, off the tiles ------------------------------------------------------------

    @functools.cached_property
    def label_state(self):
        """SupCon's classes: ``(count, row class [N], column class [M], self pair is a positive [N])``."""
        spec = self.spec
        labels, inverse = torch.unique(torch.cat([spec.row_labels.reshape(-1), spec.col_labels.reshape(-1)]),
                                       return_inverse=True)
        row_cls, col_cls = inverse[: self.n], inverse[self.n :]
        self_is_pos = self.self_valid & (self.self_col < self.m)
        self_is_pos = self_is_pos & (col_cls[self.self_col.clamp(0, self.m - 1)] == row_cls)
        return labels.numel(), row_cls, col_cls, self_is_pos

    def positives(self, pos_logit):
        """``(row_pos mean logit, row_pos_n)`` and, with column terms, ``(col_pos, col_pos_n)``, from
        ``pos_logit`` [N]: each row's positive logit (or, by label, the sum of them) as its tile had it."""
        spec, acc = self.spec, self.acc
        if self.by_label:  # SupCon: every key with the row's label but itself
            classes, row_cls, col_cls, self_is_pos = self.label_state
            pos_n = torch.bincount(col_cls, minlength=classes)[row_cls] - self_is_pos.long()
            return pos_logit / pos_n.clamp(min=1).to(acc), pos_n, None, None
        logit = pos_logit * self.pos_valid
        pos_n = self.pos_valid.long()
        if not spec.column_terms:
            return logit, pos_n, None, None
        key_pos = self.pos_valid & (self.pos_col < self.m)
        idx = self.pos_col.clamp(0, self.m - 1)
        col_pos_n = torch.zeros(self.m, dtype=torch.int64, device=self.device).index_add_(0, idx, key_pos.long())
        col_pos = torch.zeros(self.m, dtype=acc, device=self.device).index_add_(0, idx, logit * key_pos)
        return logit, pos_n, col_pos / col_pos_n.clamp(min=1).to(acc), col_pos_n

    def add_tile_positives(self, S, r0, r1, g0, is_key, pos_logit, workspace):
        """Add the tile's positive logits (before any masking) to ``pos_logit[r0:r1]``: one gathered
        value per row by index, or the sum over the row's label by label (the self pair left out)."""
        c = S.shape[1]
        rs = slice(r0, r1)
        if not self.by_label:
            idx, inside = self.rows_of(r0, r1, g0, c, self.pos_col)
            pos_logit[rs] += torch.where(inside[:, 0], S.gather(1, idx)[:, 0], 0.0)
            return
        if not is_key:
            return
        _, row_cls, col_cls, _ = self.label_state
        same = row_cls[rs, None] == col_cls[None, g0 : g0 + c]
        masked = torch.mul(S, same, out=workspace.get("P", r1 - r0, c))
        idx, inside = self.rows_of(r0, r1, g0, c, self.self_col)
        masked.scatter_(1, idx, torch.where(inside, 0.0, masked.gather(1, idx)))
        pos_logit[rs] += masked.sum(1)

    def den_counts(self):
        row_den = self.m_total - sum(col >= 0 for col in self.excluded).long() if self.excluded else None
        col_den = None
        if self.spec.column_terms:
            col_den = torch.full((self.m,), self.n, dtype=torch.int64, device=self.device)
            for col in self.excluded:
                key = (col >= 0) & (col < self.m)
                col_den.index_add_(0, col.clamp(0, self.m - 1), -key.long())
        return row_den, col_den

    def positive_gradients(self, g_row_pos, g_col_pos, grads_q, grads_k, grads_e):
        """Add the positives' ``dS`` terms to the unscaled gradients ``dS·K̂`` and ``dSᵀ·Q̂``."""
        acc = self.acc
        if self.by_label:
            classes, row_cls, col_cls, self_is_pos = self.label_state
            pos_n = torch.bincount(col_cls, minlength=classes)[row_cls] - self_is_pos.long()
            w = g_row_pos / pos_n.clamp(min=1).to(acc)  # dS_ij = w_i on every positive (i, j)
            class_sum = torch.zeros(classes, self.q.shape[1], dtype=acc, device=self.device)
            class_sum.index_add_(0, col_cls, self.k)
            self_k = self.k[self.self_col.clamp(0, self.m - 1)] * self_is_pos[:, None]
            grads_q += w[:, None] * (class_sum[row_cls] - self_k)
            weighted = torch.zeros(classes, self.q.shape[1], dtype=acc, device=self.device)
            weighted.index_add_(0, row_cls, w[:, None] * self.q)
            grads_k += weighted[col_cls]
            grads_k.index_add_(0, self.self_col.clamp(0, self.m - 1), -(w * self_is_pos)[:, None] * self.q)
            return
        pos_n = self.pos_valid.to(acc)
        d_pos = g_row_pos * pos_n  # dS at (i, pos_i): the row's mean over its one positive
        key_pos = self.pos_valid & (self.pos_col < self.m)
        idx = self.pos_col.clamp(0, self.m - 1)
        if g_col_pos is not None:  # the column's mean over the rows whose positive it is
            col_n = torch.zeros(self.m, dtype=acc, device=self.device).index_add_(0, idx, key_pos.to(acc))
            d_pos = d_pos + (g_col_pos / col_n.clamp(min=1))[idx] * key_pos
        self.add_pair_gradients(d_pos, grads_q, grads_k, grads_e)

    def add_pair_gradients(self, d_pos, grads_q, grads_k, grads_e):
        """``dS`` of ``d_pos[i]`` at each row's positive ``(i, pos_i)``."""
        grads_q += d_pos[:, None] * self.gather_columns(self.pos_col)
        contrib = d_pos[:, None] * self.q
        key_pos = self.pos_valid & (self.pos_col < self.m)
        grads_k.index_add_(0, self.pos_col.clamp(0, self.m - 1), contrib * key_pos[:, None])
        if grads_e is not None:
            extra_pos = self.pos_valid & (self.pos_col >= self.m)
            grads_e.index_add_(0, (self.pos_col - self.m).clamp(0, grads_e.shape[0] - 1), contrib * extra_pos[:, None])


def _ring_band_fast(P: _Problem):
    """The Ring band ``(v_lo, v_hi)`` on the fast path's own (base-2) tile logits, exact on the values
    its forward and backward use. The radix select of :func:`_select_band`, with the order bits made in
    place, the candidates as float weights (the positive zeroed by one scatter per row, false negatives
    by the label comparison) and reused buffers."""
    spec, acc, dev = P.spec, P.acc, P.device
    int_dtype = _int_dtype(acc)
    info = torch.iinfo(int_dtype)
    ws = _Workspace(min(P.blocks[0], P.n), min(P.blocks[1], max(P.m_total, 1)), acc, dev)
    tile_hist = torch.zeros(min(P.blocks[0], P.n), 256, dtype=acc, device=dev)
    zero = torch.zeros((), dtype=acc, device=dev)
    bands = []
    for r0, r1 in _row_blocks(P.n, P.blocks[0]):
        r = r1 - r0

        def count(shift, patterns, r0=r0, r1=r1, r=r):
            hist = torch.zeros(2, r, 256, dtype=torch.int64, device=dev)
            high = None if patterns is None else patterns >> (shift + 8)
            for g0, g1, c_blk, is_key in P.columns:
                c = g1 - g0
                bits = P.tile_logits(r0, r1, g0, g1, c_blk, ws.get("S", r, c)).add_(0.0).view(int_dtype)
                flip = torch.bitwise_right_shift(bits, info.bits - 1, out=ws.get("J", r, c, int_dtype))
                keys = bits.bitwise_xor_(flip.bitwise_and_(info.max)).bitwise_xor_(info.min)  # as _order_bits
                digit = torch.bitwise_right_shift(keys, shift, out=ws.get("J", r, c, int_dtype)).bitwise_and_(255)
                index = ws.get("L", r, c, torch.int64).copy_(digit)
                if high is not None:
                    keys_high = torch.bitwise_right_shift(keys, shift + 8, out=ws.get("J", r, c, int_dtype))
                not_false_negative = None
                if P.label_mask and is_key:
                    _, row_cls, col_cls, _ = P.label_state
                    not_false_negative = row_cls[r0:r1, None] != col_cls[None, g0:g1]
                idx, inside = P.rows_of(r0, r1, g0, c, P.pos_col)
                for t in range(1 if high is None else 2):
                    weight = ws.get("F", r, c)
                    if high is None:
                        weight.fill_(1.0)
                    else:
                        torch.eq(keys_high, high[t][:, None], out=weight)  # 1.0 where the prefix matches
                    if not_false_negative is not None:
                        weight.mul_(not_false_negative)
                    weight.scatter_(1, idx, torch.where(inside, zero, weight.gather(1, idx)))  # the positive
                    tile_hist[:r].zero_().scatter_add_(1, index, weight)
                    hist[t] += tile_hist[:r].long()
            return hist

        bands.append(_radix_band(r, acc, dev, spec, count))
    return torch.cat([b[0] for b in bands]), torch.cat([b[1] for b in bands])


def _lse_ops(natural: bool):
    if natural:
        return torch.Tensor.exp_, torch.log, torch.logaddexp, torch.exp
    return torch.Tensor.exp2_, torch.log2, torch.logaddexp2, torch.exp2


def _column_lse_own(S, cols, log, exp):
    """Log-sum-exp of the columns ``cols`` of ``S``, each shifted by its own maximum."""
    sub = S[:, cols]
    top = sub.amax(0)
    top = torch.where(top.isfinite(), top, torch.zeros_like(top))
    return top + log(exp(sub - top).sum(0))


def _forward_fast(P: _Problem, bias_t, band, want_grads: bool):
    spec, acc, dev = P.spec, P.acc, P.device
    n, m = P.n, P.m
    exp_, log, logaddexp, exp = _lse_ops(P.natural)
    neg_inf = float("-inf")
    row_lse = torch.full((n,), neg_inf, dtype=acc, device=dev)
    col_lse = torch.full((m,), neg_inf, dtype=acc, device=dev) if spec.column_terms else None
    sig = spec.pairwise_sigmoid
    row_pair = torch.zeros(n, dtype=acc, device=dev) if sig else None
    if sig:
        x_pos = torch.zeros(n, dtype=acc, device=dev)
        grad_rows = torch.zeros(n, P.q.shape[1], dtype=acc, device=dev) if want_grads else None
        grad_k = torch.zeros(m, P.q.shape[1], dtype=acc, device=dev) if want_grads else None
        grad_e = torch.zeros_like(P.e) if (want_grads and P.e is not None) else None
        d_sum = torch.zeros(n, dtype=acc, device=dev) if want_grads else None
    ws = _Workspace(min(P.blocks[0], n), min(P.blocks[1], max(P.m_total, 1)), acc, dev)
    pos_logit = torch.zeros(n, dtype=acc, device=dev)  # tile units
    if P.counted:
        den_rows = torch.zeros(n, dtype=torch.int64, device=dev)
        den_cols = torch.zeros(m, dtype=torch.int64, device=dev)
    for r0, r1 in _row_blocks(n, P.blocks[0]):
        rs = slice(r0, r1)
        for g0, g1, c_blk, is_key in P.columns:
            r, c = r1 - r0, g1 - g0
            S = P.tile_logits(r0, r1, g0, g1, c_blk, ws.get("S", r, c))
            if spec.pos_index is not None or spec.row_labels is not None:
                P.add_tile_positives(S, r0, r1, g0, is_key, pos_logit, ws)
            S = P.mask_tile(S, r0, r1, g0, band)
            if P.counted:
                member = S != neg_inf
                den_rows[rs] += member.sum(1)
                if col_lse is not None and is_key:
                    den_cols[g0:g1] += member.sum(0)
            top = S.amax(1)
            shift = torch.where(top.isfinite(), top, torch.zeros_like(top))  # an infinite maximum: lse = ±inf
            E = exp_(torch.sub(S, shift[:, None], out=ws.get("E", r, c)))
            row_lse[rs] = logaddexp(row_lse[rs], shift + log(E.sum(1)))
            if col_lse is not None and is_key:
                tile_top = top.max()
                tile_shift = torch.where(tile_top.isfinite(), tile_top, torch.zeros_like(tile_top))
                col_sum = torch.mv(E.T, exp(top - tile_shift))
                col_tile = tile_shift + log(col_sum)
                low = col_sum < _COLUMN_FLOOR
                if bool(low.any()):
                    cols = low.nonzero()[:, 0]
                    col_tile[cols] = _column_lse_own(S, cols, log, exp)
                col_lse[g0:g1] = logaddexp(col_lse[g0:g1], col_tile)
            if sig:
                X = torch.add(bias_t, S, alpha=_LN2, out=ws.get("X", r, c))  # x = S + bias, natural units
                idx, inside = P.rows_of(r0, r1, g0, c, P.pos_col)
                x_here = X.gather(1, idx)
                x_pos[rs] = torch.where(inside[:, 0], x_here[:, 0], x_pos[rs])
                X.scatter_(1, idx, torch.where(inside, torch.tensor(neg_inf, dtype=acc), x_here))  # positives: below
                U = torch.abs(X, out=ws.get("U", r, c)).neg_().sigmoid_()  # u = σ(-|x|) = e/(1+e), e = exp(-|x|)
                V = torch.clamp(X, min=0, out=ws.get("V", r, c))
                pair = V.sum(1)
                pair -= torch.neg(U, out=V).log1p_().sum(1)  # softplus(x) = max(x, 0) + log(1 + e)
                row_pair[rs] += pair
                if want_grads:
                    D = torch.sigmoid(X, out=V)  # d softplus(x)/dx; 0 at the -inf pairs
                    grad_rows[rs].addmm_(D, c_blk)
                    P.column_target(grad_k, grad_e, g0, g1).addmm_(D.T, P.q[r0:r1])
                    d_sum[rs] += D.sum(1)
    row_lse_t = torch.where(row_lse == neg_inf, torch.zeros_like(row_lse), row_lse)
    col_lse_t = None if col_lse is None else torch.where(col_lse == neg_inf, torch.zeros_like(col_lse), col_lse)
    to_natural = (lambda t: t) if P.natural else (lambda t: t * _LN2)
    row_pos, row_pos_n, col_pos, col_pos_n = P.positives(to_natural(pos_logit))
    row_den, col_den = P.den_counts()
    if P.counted:
        row_den, col_den = den_rows, (den_cols if spec.column_terms else None)
    out = {"row_lse": to_natural(row_lse_t), "row_pos": row_pos, "row_den": row_den, "row_pos_n": row_pos_n,
           "col_lse": None if col_lse is None else to_natural(col_lse_t), "col_pos": col_pos, "col_den": col_den,
           "col_pos_n": col_pos_n, "row_lse_beta": None, "row_pair_loss": None}
    saved = {"row_lse_t": row_lse_t, "col_lse_t": col_lse_t}
    if sig:
        # the positive pair: softplus(-x) and its derivative -σ(-x), from its tile's x
        valid = P.pos_valid
        u = torch.sigmoid(-x_pos.abs())
        pair_pos = torch.clamp(-x_pos, min=0) - torch.log1p(-u)
        out["row_pair_loss"] = row_pair + pair_pos * valid
        saved["x_pos"] = x_pos
        if want_grads:
            d_pos = -torch.sigmoid(-x_pos) * valid
            P.add_pair_gradients(d_pos, grad_rows, grad_k, grad_e)
            saved.update(pair_rows=grad_rows, pair_k=grad_k, pair_e=grad_e, pair_dsum=d_sum + d_pos)
    return out, saved


def _uniform(g: torch.Tensor) -> bool:
    return g.numel() == 0 or bool((g == g.reshape(-1)[0]).all())


def _backward_fast(P: _Problem, bias_t, band, saved: dict, grads: dict):
    """Gradients of the unit rows ``(dQ̂, dK̂, dÊ)`` in fp32, of the scale and of the bias."""
    spec, acc, dev = P.spec, P.acc, P.device
    n, m, d = P.n, P.m, P.q.shape[1]
    exp_, _, _, exp = _lse_ops(P.natural)
    g_lse, g_pos = grads.get("row_lse"), grads.get("row_pos")
    g_col_lse, g_col_pos = grads.get("col_lse"), grads.get("col_pos")
    g_pair = grads.get("row_pair_loss")
    grad_q = torch.zeros(n, d, dtype=acc, device=dev)
    grad_k = torch.zeros(m, d, dtype=acc, device=dev)
    grad_e = None if P.e is None else torch.zeros_like(P.e)
    grad_bias = torch.zeros((), dtype=acc, device=dev)
    sig_done = False
    if g_pair is not None and "pair_rows" in saved and _uniform(g_pair):
        # SigLIP: the forward formed dS·K̂ and dSᵀ·Q̂ of the pair losses; one weight for every row
        grad_q += g_pair[:, None] * saved["pair_rows"]
        w = g_pair.reshape(-1)[0] if g_pair.numel() else torch.zeros((), dtype=acc, device=dev)
        grad_k += w * saved["pair_k"]
        if grad_e is not None:
            grad_e += w * saved["pair_e"]
        grad_bias = grad_bias + (g_pair * saved["pair_dsum"]).sum()
        sig_done = True
    softmax_rows = g_lse is not None
    softmax_cols = g_col_lse is not None and spec.column_terms
    sig_tiles = g_pair is not None and not sig_done
    if softmax_rows or softmax_cols or sig_tiles:
        row_t, col_t = saved["row_lse_t"], saved["col_lse_t"]
        ws = _Workspace(min(P.blocks[0], n), min(P.blocks[1], max(P.m_total, 1)), acc, dev)
        neg_inf = torch.tensor(float("-inf"), dtype=acc)
        for r0, r1 in _row_blocks(n, P.blocks[0]):
            rs = slice(r0, r1)
            for g0, g1, c_blk, is_key in P.columns:
                r, c = r1 - r0, g1 - g0
                S = P.mask_tile(P.tile_logits(r0, r1, g0, g1, c_blk, ws.get("S", r, c)), r0, r1, g0, band)
                cols_here = softmax_cols and is_key
                dS = None
                if sig_tiles:  # before S is overwritten: g_i·σ(x_ij) off the positive (added below)
                    X = torch.add(bias_t, S, alpha=_LN2, out=ws.get("X", r, c))
                    idx, inside = P.rows_of(r0, r1, g0, c, P.pos_col)
                    X.scatter_(1, idx, torch.where(inside, neg_inf, X.gather(1, idx)))
                    X.sigmoid_()
                    grad_bias += (X.sum(1) * g_pair[rs]).sum()
                    dS = X.mul_(g_pair[rs, None])
                if cols_here:
                    r_lse, c_lse = row_t[rs], col_t[g0:g1]
                    spread = float(r_lse.max() - c_lse.min()) if softmax_rows else float("inf")
                    g_r = g_lse[rs] if softmax_rows else torch.zeros(r, dtype=acc, device=dev)
                    if spread <= _MAX_SPREAD:  # one exponential: exp2(S - c_j) = E·exp2(r_i - t)·exp2(t - c_j)
                        E = exp_(torch.sub(S, r_lse[:, None], out=ws.get("E", r, c)))
                        t = r_lse.max()
                        a, v = exp(r_lse - t), g_col_lse[g0:g1] * exp(t - c_lse)
                        E.mul_(torch.addcmul(g_r[:, None], a[:, None], v[None, :], out=S))
                    else:
                        E = exp_(torch.sub(S, r_lse[:, None], out=ws.get("E", r, c))).mul_(g_r[:, None])
                        E.add_(exp_(S.sub_(c_lse[None, :])).mul_(g_col_lse[None, g0:g1]))
                    dS = E if dS is None else dS.add_(E)
                elif softmax_rows:
                    E = exp_(S.sub_(row_t[rs, None])).mul_(g_lse[rs, None])
                    dS = E if dS is None else dS.add_(E)
                if dS is None:
                    continue
                grad_q[rs].addmm_(dS, c_blk)
                P.column_target(grad_k, grad_e, g0, g1).addmm_(dS.T, P.q[r0:r1])
        if sig_tiles:  # the positive pair: dS = -g_i·σ(-x_i)
            d_pos = -torch.sigmoid(-saved["x_pos"]) * P.pos_valid * g_pair
            grad_bias += d_pos.sum()
            P.add_pair_gradients(d_pos, grad_q, grad_k, grad_e)
    if g_pos is not None or (g_col_pos is not None and spec.column_terms):
        zeros = torch.zeros(n, dtype=acc, device=dev)
        P.positive_gradients(zeros if g_pos is None else g_pos, g_col_pos if spec.column_terms else None,
                             grad_q, grad_k, grad_e)
    grad_scale = (grad_q * P.q).sum()
    s = P.scale
    return grad_q * s, grad_k * s, None if grad_e is None else grad_e * s, grad_scale, grad_bias


DOUBLE_BACKWARD_ERROR = double_backward_error("chunked")


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
        ctx.spec = spec
        ctx.blocks = blocks  # backward must recompute the very same tiles
        ctx.fast = fast_path_applies(spec, query.device)
        ctx.set_materialize_grads(False)  # an unused output's gradient stays None: its tile work is skipped
        if ctx.fast:
            problem = _Problem(qh, kh, eh, scale_t, spec, blocks)
            named, saved = _forward_fast(problem, bias_t, band, want_grads=any(ctx.needs_input_grad[:5]))
            out = [named[k] for k in _OUTPUTS]
            ctx.saved_names = tuple(saved)
            extra_saved = list(saved.values())
        else:
            out = _forward(qh, kh, eh, scale_t, bias_t, spec, band, blocks)
            named = dict(zip(_OUTPUTS, out))
            ctx.saved_names = _SAVED
            extra_saved = [named[k] for k in _SAVED]
        ctx.save_for_backward(query, keys, extra, scale_t, bias_t, band_lo, band_hi, *extra_saved)
        ctx.mark_non_differentiable(*(named[k] for k in _COUNTS if named[k] is not None))
        # fixed arity; distinct tensors (torch.compile rejects aliased outputs)
        return tuple(
            x if x is not None else query.new_empty(0, dtype=torch.int64 if k in _COUNTS else scale_t.dtype)
            for k, x in zip(_OUTPUTS, out)
        )

    @staticmethod
    @first_order_only("chunked")
    def backward(ctx, *output_grads):
        spec: RoleSpec = ctx.spec
        query, keys, extra, scale_t, bias_t, band_lo, band_hi, *saved_list = ctx.saved_tensors
        saved = dict(zip(ctx.saved_names, saved_list))
        band = None if band_lo is None else (band_lo, band_hi)
        acc = scale_t.dtype
        shared = keys is None
        keys_in = query if shared else keys
        bias_in = torch.zeros((), dtype=acc, device=query.device) if bias_t is None else bias_t
        if ctx.fast:
            wanted = {"row_lse": True, "row_pos": True, "col_lse": spec.column_terms, "col_pos": spec.column_terms,
                      "row_pair_loss": spec.pairwise_sigmoid}
            grads = {k: output_grads[_OUTPUTS.index(k)] for k, on in wanted.items() if on}
            grads = {k: None if g is None else g.to(acc) for k, g in grads.items()}
        else:
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
        with torch.no_grad():
            qh, kh, eh = (_normalized(t, spec.normalize) for t in (query, keys_in, extra))
            if ctx.fast:
                problem = _Problem(qh, kh, eh, scale_t, spec, ctx.blocks)
                dq, dk, de, dscale, dbias = _backward_fast(problem, bias_in, band, saved, grads)
            else:
                dq, dk, de, dscale, dbias = _backward(qh, kh, eh, scale_t, bias_in, spec, band, ctx.blocks, saved,
                                                      grads)
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
    if spec.ring is not None and fast_path_applies(spec, query.device):
        with torch.no_grad():  # the band on the fast path's own tile logits (base 2)
            qh, kh, eh = (_normalized(t, spec.normalize) for t in (query, keys, extra))
            detached = as_scale_tensor(scale.detach() if isinstance(scale, torch.Tensor) else scale, query)
            band_lo, band_hi = _ring_band_fast(_Problem(qh, kh, eh, detached, spec, blocks))
    elif spec.ring is not None:
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
