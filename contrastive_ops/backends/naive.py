"""The naive backend: the whole N×(M+R) logit matrix, plain torch ops, autograd backward.

It is the oracle the tiled backends are tested against and the baseline they are benchmarked
against. Memory grows like N·M; ``backend="auto"`` never picks it.
"""
from __future__ import annotations

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
    pair_roles,
    ring_ranks,
    sigmoid_pair_losses,
)


def _logits(query, keys, extra, scale: Scale, spec: RoleSpec) -> torch.Tensor:
    cols = keys if extra is None else torch.cat([keys, extra], dim=0)
    if spec.normalize:
        query, cols = normalize_rows(query), normalize_rows(cols)
    acc = accumulation_dtype(query.dtype)  # fp32 products of half rows: no overflow of the fp16 output
    return (query.to(acc) @ cols.to(acc).T) * scale


def _masked_lse(logits: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Row log-sum-exp over ``mask``; 0 (with zero gradient, never NaN) for an empty row."""
    count = mask.sum(dim=1)
    nonempty = count > 0
    # Empty rows reduce zeros instead of all -inf, whose logsumexp backward would be NaN.
    safe = torch.where(mask, logits, torch.full_like(logits, float("-inf")))
    safe = torch.where(nonempty[:, None], safe, torch.zeros_like(logits))
    lse = torch.where(nonempty, torch.logsumexp(safe, dim=1), torch.zeros_like(count, dtype=logits.dtype))
    return lse, count


def _positive_mean(logits: torch.Tensor, positive: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    count = positive.sum(dim=1)
    total = torch.where(positive, logits, torch.zeros_like(logits)).sum(dim=1)
    return total / count.clamp(min=1).to(logits.dtype), count


def ring_band_sorted(logits: torch.Tensor, candidate: torch.Tensor, outer: float, inner: float):
    """Per-row value band ``(v_lo, v_hi)`` of the Ring (see ``ring_info_nce``) by a full sort of each row.

    Rows whose ring is empty get ``(+inf, -inf)``, a band that holds nothing.
    """
    values = torch.where(candidate, logits, torch.full_like(logits, float("-inf")))
    ordered = values.sort(dim=1, descending=True).values
    lo, hi = ring_ranks(candidate.sum(dim=1), outer, inner)
    nonempty = hi > lo
    v_hi = ordered.gather(1, lo.clamp(max=logits.shape[1] - 1)[:, None])[:, 0]
    v_lo = ordered.gather(1, (hi - 1).clamp(min=0)[:, None])[:, 0]
    inf = torch.full_like(v_hi, float("inf"))
    return torch.where(nonempty, v_lo, inf), torch.where(nonempty, v_hi, -inf)


def compute_terms(
    query: torch.Tensor,
    keys: torch.Tensor,
    extra: torch.Tensor | None,
    scale: Scale,
    spec: RoleSpec,
    bias: Scale | None = None,
) -> ContrastiveTerms:
    """The core's terms from the materialized ``N × (M + R)`` logits, with autograd's backward.

    ``bias`` (a float or a 0-d tensor) enters only ``row_pair_loss`` (``spec.pairwise_sigmoid``).
    """
    logits = _logits(query, keys, extra, scale, spec)
    check_guide_shapes(spec, query.shape[0], logits.shape[1])
    num_keys = keys.shape[0]
    rows = torch.arange(query.shape[0], device=query.device)
    cols = torch.arange(logits.shape[1], device=query.device)
    positive, candidate = pair_roles(rows, cols, num_keys, spec)
    band = None
    if spec.ring is not None:
        with torch.no_grad():
            band = ring_band_sorted(logits.detach(), candidate, *spec.ring)
    den = denominator(positive, candidate, logits, spec, band)
    row_lse_beta = row_pair_loss = None
    if spec.hard_beta is not None:
        row_lse, row_den = _masked_lse(logits * (1.0 + spec.hard_beta), den)
        row_lse_beta, _ = _masked_lse(logits * spec.hard_beta, den)
    else:
        row_lse, row_den = _masked_lse(logits, den)
    row_pos, row_pos_n = _positive_mean(logits, positive)
    if spec.pairwise_sigmoid:
        bias_t = as_scale_tensor(0.0 if bias is None else bias, query)
        row_pair_loss = sigmoid_pair_losses(logits, bias_t, positive, candidate).sum(dim=1)
    col = [None] * 4
    if spec.column_terms:
        key_logits, key_den, key_pos = logits[:, :num_keys].T, den[:, :num_keys].T, positive[:, :num_keys].T
        col_lse, col_den = _masked_lse(key_logits, key_den)
        col_pos, col_pos_n = _positive_mean(key_logits, key_pos)
        col = [col_lse, col_pos, col_den, col_pos_n]
    return ContrastiveTerms(row_lse, row_pos, row_den, row_pos_n, *col, row_lse_beta, row_pair_loss)
