"""The triton backend: the generic core on the fused kernels of ``contrastive_ops.kernels``.

Three ``torch.library`` custom ops (each with a fake implementation, so ``torch.compile`` traces a
model through them without graph breaks):

* ``contrastive_ops::ring_band`` — the Ring's per-row value band (no gradient);
* ``contrastive_ops::tiled_forward`` — per-row (and per-column) LSE, positive means and counts;
* ``contrastive_ops::tiled_backward`` — gradients of the inputs and the scale, registered as the
  forward's autograd formula.

Inputs are fp32, fp16 or bf16 (fp32 accumulation) on CUDA, or on the CPU under
``TRITON_INTERPRET=1`` (slow; for tests). Saved for backward: the inputs and O(N + M) vectors.
"""
# torch.library infers the ops' schemas from these annotations: keep typing's Optional/List/Tuple forms.
# ruff: noqa: UP006, UP035, UP045
from __future__ import annotations

from typing import List, Optional, Tuple

import torch
from torch import Tensor

from contrastive_ops.kernels import config as tile_config

from ..core import ContrastiveTerms, RoleSpec, Scale, as_scale_tensor, ring_ranks

_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _kernels():
    """The kernel modules, imported on first use (Triton is an optional dependency)."""
    from contrastive_ops.kernels import contrastive_bwd, contrastive_fwd, problem, ring_select

    return tile_config, contrastive_fwd, contrastive_bwd, ring_select, problem


def _column_programs(device: torch.device) -> int:
    """Programs of a symmetric forward: each owns one row of the ``[P, M]`` column partials."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 2  # interpreter: few, so that programs take several row blocks each


def _problem(query, keys, extra, scale, pos_index, self_index, row_labels, col_labels, band_lo, band_hi,
             key_negatives, decoupled, column_terms, normalize):
    problem = _kernels()[4]
    band = None if band_lo is None else (band_lo, band_hi)
    return problem.TileProblem.build(
        query, keys, extra, scale, pos_index=pos_index, self_index=self_index, row_labels=row_labels,
        col_labels=col_labels, band=band, key_negatives=key_negatives, decoupled=decoupled,
        column_terms=column_terms, normalize=normalize,
    )


def _config(tiles, config: List[int]):
    """The pinned config when one was given, else the tuned one for this problem's size."""
    cfg, fwd = _kernels()[0], _kernels()[1]
    if config:
        return cfg.TileConfig.from_list(config)
    programs = _column_programs(tiles.query.device)
    return cfg.tuned_config(tiles.tuning_key(), lambda c: fwd.contrastive_forward(tiles, c, programs))


# ---------------------------------------------------------------------------------------------
# custom ops
# ---------------------------------------------------------------------------------------------


@torch.library.custom_op("contrastive_ops::ring_band", mutates_args=())
def _ring_band_op(
    query: Tensor, keys: Optional[Tensor], extra: Optional[Tensor], scale: Tensor,
    pos_index: Optional[Tensor], self_index: Optional[Tensor], row_labels: Optional[Tensor],
    col_labels: Optional[Tensor], key_negatives: bool, normalize: bool, outer: float, inner: float,
    config: List[int],
) -> Tuple[Tensor, Tensor]:
    """``(v_lo, v_hi)`` fp32 ``[N]``; ``(+inf, -inf)`` for a row whose ring is empty."""
    ring_select = _kernels()[3]
    tiles = _problem(query, keys, extra, scale, pos_index, self_index, row_labels, col_labels, None, None,
                     key_negatives, False, False, normalize)
    cfg = _config(tiles, config)
    count = ring_select.candidate_counts(tiles, cfg)
    lo, hi = ring_ranks(count.to(torch.int64), outer, inner)
    nonempty = hi > lo
    rank_top = torch.where(nonempty, lo, 0).to(torch.int32)
    rank_bottom = torch.where(nonempty, hi - 1, 0).to(torch.int32)
    v_lo, v_hi = ring_select.ring_band(tiles, cfg, rank_top, rank_bottom)
    inf = torch.full_like(v_lo, float("inf"))
    return torch.where(nonempty, v_lo, inf), torch.where(nonempty, v_hi, -inf)


@_ring_band_op.register_fake
def _(query, keys, extra, scale, pos_index, self_index, row_labels, col_labels, key_negatives, normalize, outer,
      inner, config):
    n = query.shape[0]
    return query.new_empty(n, dtype=torch.float32), query.new_empty(n, dtype=torch.float32)


_FORWARD_OUTPUTS = 8  # row_lse, row_pos, row_den, row_pos_n, col_lse, col_pos, col_den, col_pos_n


@torch.library.custom_op("contrastive_ops::tiled_forward", mutates_args=())
def _forward_op(
    query: Tensor, keys: Optional[Tensor], extra: Optional[Tensor], scale: Tensor,
    pos_index: Optional[Tensor], self_index: Optional[Tensor], row_labels: Optional[Tensor],
    col_labels: Optional[Tensor], band_lo: Optional[Tensor], band_hi: Optional[Tensor],
    key_negatives: bool, decoupled: bool, column_terms: bool, normalize: bool, config: List[int],
) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Row terms ``[N]`` and, with ``column_terms``, column terms ``[M]`` (else empty ``[0]``):
    fp32 lse and positive mean, int64 denominator and positive counts."""
    fwd = _kernels()[1]
    tiles = _problem(query, keys, extra, scale, pos_index, self_index, row_labels, col_labels, band_lo, band_hi,
                     key_negatives, decoupled, column_terms, normalize)
    cfg = _config(tiles, config)
    out = fwd.contrastive_forward(tiles, cfg, _column_programs(query.device))
    if not column_terms:
        out = out[:4] + (query.new_empty(0, dtype=torch.float32), query.new_empty(0, dtype=torch.float32),
                         query.new_empty(0, dtype=torch.int32), query.new_empty(0, dtype=torch.int32))
    return tuple(t.to(torch.int64) if t.dtype == torch.int32 else t for t in out)


@_forward_op.register_fake
def _(query, keys, extra, scale, pos_index, self_index, row_labels, col_labels, band_lo, band_hi, key_negatives,
      decoupled, column_terms, normalize, config):
    n = query.shape[0]
    m = (query if keys is None else keys).shape[0] if column_terms else 0
    f32, i64 = torch.float32, torch.int64
    return (query.new_empty(n, dtype=f32), query.new_empty(n, dtype=f32), query.new_empty(n, dtype=i64),
            query.new_empty(n, dtype=i64), query.new_empty(m, dtype=f32), query.new_empty(m, dtype=f32),
            query.new_empty(m, dtype=i64), query.new_empty(m, dtype=i64))


@torch.library.custom_op("contrastive_ops::tiled_backward", mutates_args=())
def _backward_op(
    query: Tensor, keys: Optional[Tensor], extra: Optional[Tensor], scale: Tensor,
    pos_index: Optional[Tensor], self_index: Optional[Tensor], row_labels: Optional[Tensor],
    col_labels: Optional[Tensor], band_lo: Optional[Tensor], band_hi: Optional[Tensor],
    key_negatives: bool, decoupled: bool, column_terms: bool, normalize: bool, config: List[int],
    row_lse: Tensor, row_pos_n: Tensor, col_lse: Tensor, col_pos_n: Tensor,
    g_row_lse: Tensor, g_row_pos: Tensor, g_col_lse: Tensor, g_col_pos: Tensor,
) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(d query, d keys, d extra, d scale)``; d keys is empty ``[0]`` when the keys are the
    queries (its share is in d query) and d extra is empty without extra negatives."""
    bwd = _kernels()[2]
    from contrastive_ops.kernels.normalize import normalize_backward

    tiles = _problem(query, keys, extra, scale, pos_index, self_index, row_labels, col_labels, band_lo, band_hi,
                     key_negatives, decoupled, column_terms, normalize)
    cfg = _config(tiles, config)
    # incoming gradients may be expanded scalars (stride 0): the kernels need dense vectors
    g_row_lse, g_row_pos, g_col_lse, g_col_pos = (g.contiguous() for g in (g_row_lse, g_row_pos, g_col_lse, g_col_pos))
    g_row_pos_w = g_row_pos / row_pos_n.clamp(min=1).to(torch.float32)
    g_col_pos_w = g_col_pos / col_pos_n.clamp(min=1).to(torch.float32) if column_terms else g_col_pos
    dq, dc, dscale = bwd.contrastive_backward(tiles, cfg, row_lse, g_row_lse, g_row_pos_w, col_lse, g_col_lse,
                                              g_col_pos_w)
    n_keys = tiles.m
    if keys is None:
        dq = dq + dc[:n_keys]
    dk = dc[:n_keys] if keys is not None else None
    de = dc[n_keys:] if extra is not None else None

    def finish(grad, x):
        if grad is None:
            return query.new_empty(0)
        return normalize_backward(x, grad) if normalize else grad.to(x.dtype)

    return finish(dq, tiles.query), finish(dk, keys), finish(de, extra), dscale.reshape(())


@_backward_op.register_fake
def _(query, keys, extra, scale, pos_index, self_index, row_labels, col_labels, band_lo, band_hi, key_negatives,
      decoupled, column_terms, normalize, config, row_lse, row_pos_n, col_lse, col_pos_n, g_row_lse, g_row_pos,
      g_col_lse, g_col_pos):
    empty = query.new_empty(0)
    return (torch.empty_like(query), empty if keys is None else torch.empty_like(keys),
            empty if extra is None else torch.empty_like(extra), scale.new_empty(()))


def _setup_context(ctx, inputs, output):
    (query, keys, extra, scale, pos_index, self_index, row_labels, col_labels, band_lo, band_hi,
     key_negatives, decoupled, column_terms, normalize, config) = inputs
    ctx.options = (key_negatives, decoupled, column_terms, normalize, list(config))
    ctx.has = (keys is not None, extra is not None)
    row_lse, _, _, row_pos_n, col_lse, _, _, col_pos_n = output
    ctx.save_for_backward(query, keys, extra, scale, pos_index, self_index, row_labels, col_labels, band_lo,
                          band_hi, row_lse, row_pos_n, col_lse, col_pos_n)


def _backward(ctx, g_row_lse, g_row_pos, _g_row_den, _g_row_pos_n, g_col_lse, g_col_pos, _g_col_den, _g_col_pos_n):
    (query, keys, extra, scale, pos_index, self_index, row_labels, col_labels, band_lo, band_hi, row_lse,
     row_pos_n, col_lse, col_pos_n) = ctx.saved_tensors

    def grad_or_zero(g, like):
        return torch.zeros_like(like) if g is None else g.to(torch.float32)

    dq, dk, de, dscale = _backward_op(
        query, keys, extra, scale, pos_index, self_index, row_labels, col_labels, band_lo, band_hi, *ctx.options,
        row_lse, row_pos_n, col_lse, col_pos_n,
        grad_or_zero(g_row_lse, row_lse), grad_or_zero(g_row_pos, row_lse),
        grad_or_zero(g_col_lse, col_lse), grad_or_zero(g_col_pos, col_lse),
    )
    has_keys, has_extra = ctx.has
    return (dq, dk if has_keys else None, de if has_extra else None, dscale) + (None,) * 11


torch.library.register_autograd("contrastive_ops::tiled_forward", _backward, setup_context=_setup_context)


# ---------------------------------------------------------------------------------------------
# backend entry point
# ---------------------------------------------------------------------------------------------


def compute_terms(
    query: torch.Tensor,
    keys: torch.Tensor,
    extra: torch.Tensor | None,
    scale: Scale,
    spec: RoleSpec,
) -> ContrastiveTerms:
    """The core's terms (see :mod:`contrastive_ops.core`) from the fused Triton kernels.

    ``query [N, D]``, ``keys [M, D]`` (may be ``query`` itself), ``extra [R, D]`` or None: fp32,
    fp16 or bf16 on one CUDA device (CPU only under ``TRITON_INTERPRET=1``). ``scale``: float or
    0-d tensor (receives a gradient).
    """
    if query.dtype not in _DTYPES:
        raise TypeError(
            f"backend='triton' takes float32, float16 or bfloat16 features, got {query.dtype} "
            "(use backend='chunked' for float64)"
        )
    pinned = tile_config.pinned_config()
    config = [] if pinned is None else pinned.as_list()
    scale_t = as_scale_tensor(scale, query)
    shared = keys is query
    keys_arg = None if shared else keys
    band_lo = band_hi = None
    if spec.ring is not None:
        band_lo, band_hi = _ring_band_op(
            query.detach(), None if shared else keys.detach(), None if extra is None else extra.detach(),
            scale_t.detach(), spec.pos_index, spec.self_index, spec.row_labels, spec.col_labels, spec.key_negatives,
            spec.normalize, float(spec.ring[0]), float(spec.ring[1]), config,
        )
    out = _forward_op(query, keys_arg, extra, scale_t, spec.pos_index, spec.self_index, spec.row_labels,
                      spec.col_labels, band_lo, band_hi, spec.key_negatives, spec.decoupled, spec.column_terms,
                      spec.normalize, config)
    if spec.column_terms:
        return ContrastiveTerms(*out)
    return ContrastiveTerms(*out[:4], None, None, None, None)
