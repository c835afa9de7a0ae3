"""The cuda backend: the generic core as CUDA C++ operators (``csrc/``), CUDA tensors only.

The operators ``torch.ops.contrastive_ops_cuda.{forward, backward, ring_band}`` are defined in C++
(``csrc/ops.cpp``); this module loads the extension (importing it is the first use: only
:func:`contrastive_ops.backends.compute_fn` imports it) and registers their fake implementations
and the autograd of ``forward`` with ``torch.library``, so ``torch.compile(fullgraph=True)`` traces
through them. The algorithm is that of :mod:`contrastive_ops.backends.chunked`, in 64×64 tiles:

* forward: inverse norms (the fused L2 normalization), then per 64-row block one pass over every
  column tile with an online log-sum-exp per row; with column terms, the same per 64-column block
  of keys over every row tile (a second pass, O(N + M) memory, no partial buffers);
* backward: a dQ pass over row blocks and a dK pass over column blocks, each recomputing the
  tiles and owning its output rows (no atomics: deterministic); ``ds = Σ dS·cos`` from per-block
  partial sums added in a fixed order; then the normalization backward;
* Ring: per row, the band ``(v_lo, v_hi)`` by a radix select (4 bits per pass) over order keys of
  the very fp32 logits the loss uses.

Inputs fp32/fp16/bf16 (fp16/bf16 tile products on tensor cores, fp32 accumulation; fp32 in full
fp32 FMA). float64 raises a TypeError pointing at ``backend="chunked"``. Index values
(``pos_index``, ``self_index``) are not range-checked on the device.
"""
from __future__ import annotations

import torch

from .. import _ext
from ..core import ContrastiveTerms, RoleSpec, Scale, as_scale_tensor

_ext.load()  # raises BackendUnavailableError (reason and fix) where it is neither built nor buildable
_OPS = torch.ops.contrastive_ops_cuda
_FLOAT_TYPES = (torch.float32, torch.float16, torch.bfloat16)


# ---------------------------------------------------------------------------------------------
# Fake implementations (shapes and dtypes only), for FakeTensor / torch.compile tracing
# ---------------------------------------------------------------------------------------------


@torch.library.register_fake("contrastive_ops_cuda::forward")
def _forward_fake(query, keys, extra, scale, pos_index, row_labels, col_labels, self_index, band_lo, band_hi,
                  key_negatives, decoupled, column_terms, normalize):
    n = query.shape[0]
    m = (query if keys is None else keys).shape[0] if column_terms else 0
    f32, i64 = torch.float32, torch.int64
    return (
        query.new_empty(n, dtype=f32), query.new_empty(n, dtype=f32),
        query.new_empty(n, dtype=i64), query.new_empty(n, dtype=i64),
        query.new_empty(m, dtype=f32), query.new_empty(m, dtype=f32),
        query.new_empty(m, dtype=i64), query.new_empty(m, dtype=i64),
    )


@torch.library.register_fake("contrastive_ops_cuda::backward")
def _backward_fake(g_row_lse, g_row_pos, g_col_lse, g_col_pos, row_lse, row_pos_count, col_lse, col_pos_count,
                   query, keys, extra, scale, pos_index, row_labels, col_labels, self_index, band_lo, band_hi,
                   key_negatives, decoupled, normalize):
    grad_keys = query.new_empty(0) if keys is None else torch.empty_like(keys)
    grad_extra = query.new_empty(0) if extra is None else torch.empty_like(extra)
    return torch.empty_like(query), grad_keys, grad_extra, query.new_empty((), dtype=torch.float32)


@torch.library.register_fake("contrastive_ops_cuda::ring_band")
def _ring_band_fake(query, keys, extra, scale, pos_index, row_labels, col_labels, self_index, key_negatives,
                    normalize, outer, inner):
    n = query.shape[0]
    return query.new_empty(n, dtype=torch.float32), query.new_empty(n, dtype=torch.float32)


# ---------------------------------------------------------------------------------------------
# Autograd of forward: saves the inputs and the O(N + M) lse and counts, recomputes the tiles
# ---------------------------------------------------------------------------------------------


def _setup_context(ctx, inputs, output):
    (query, keys, extra, scale, pos_index, row_labels, col_labels, self_index, band_lo, band_hi,
     key_negatives, decoupled, column_terms, normalize) = inputs
    ctx.save_for_backward(query, keys, extra, scale, pos_index, row_labels, col_labels, self_index, band_lo, band_hi,
                          output[0], output[3], output[4], output[7])
    ctx.flags = (key_negatives, decoupled, column_terms, normalize)


def _backward(ctx, g_row_lse, g_row_pos, _g_row_den, _g_row_pos_n, g_col_lse, g_col_pos, _g_col_den, _g_col_pos_n):
    (query, keys, extra, scale, pos_index, row_labels, col_labels, self_index, band_lo, band_hi,
     row_lse, row_pos_count, col_lse, col_pos_count) = ctx.saved_tensors
    key_negatives, decoupled, column_terms, normalize = ctx.flags

    def grad(g, like):
        return torch.zeros_like(like) if g is None else g.float().contiguous()

    cols = {}
    if column_terms:
        cols = {"g_col_lse": grad(g_col_lse, col_lse), "g_col_pos": grad(g_col_pos, col_lse), "col_lse": col_lse,
                    "col_pos_count": col_pos_count}
    dq, dk, de, dscale = _OPS.backward(
        grad(g_row_lse, row_lse), grad(g_row_pos, row_lse), cols.get("g_col_lse"), cols.get("g_col_pos"),
        row_lse, row_pos_count, cols.get("col_lse"), cols.get("col_pos_count"),
        query, keys, extra, scale, pos_index, row_labels, col_labels, self_index, band_lo, band_hi,
        key_negatives, decoupled, normalize,
    )
    return (dq, None if keys is None else dk, None if extra is None else de, dscale) + (None,) * 10


torch.library.register_autograd("contrastive_ops_cuda::forward", _backward, setup_context=_setup_context)


# ---------------------------------------------------------------------------------------------
# The backend's entry point
# ---------------------------------------------------------------------------------------------


def _long(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.long()


def _check(query: torch.Tensor) -> None:
    from . import BackendUnavailableError

    if query.dtype == torch.float64:
        raise TypeError("backend='cuda' computes in fp32/fp16/bf16 (fp32 accumulation), got torch.float64 inputs: "
                        "use backend='chunked' for float64 (e.g. gradcheck)")
    if query.dtype not in _FLOAT_TYPES:
        raise TypeError(f"backend='cuda' takes float32, float16 or bfloat16 inputs, got {query.dtype}")
    if query.device.type not in ("cuda", "meta"):
        raise BackendUnavailableError(
            f"backend='cuda' runs on CUDA tensors only, these are on {query.device}: move them to a GPU "
            "(tensor.cuda()) or use backend='chunked' (any device) or backend='auto'"
        )


def compute_terms(
    query: torch.Tensor,
    keys: torch.Tensor,
    extra: torch.Tensor | None,
    scale: Scale,
    spec: RoleSpec,
    bias: Scale | None = None,
) -> ContrastiveTerms:
    """The core's terms (see :mod:`contrastive_ops.core`), as :func:`chunked.compute_terms`, for the
    roles the extension implements (``backends.cuda_supports`` names what it lacks: hard-negative
    LSEs, the pairwise sigmoid and its ``bias``, false-negative masking by labels).

    ``query [N, D]``, ``keys [M, D]`` (may be ``query`` itself: NT-Xent, SupCon), ``extra [R, D]`` or
    None, same dtype (fp32/fp16/bf16) and CUDA device; ``scale`` a float or a 0-d tensor (which
    receives a gradient). Returns fp32 ``lse``/``pos`` and int64 counts per row (and per key column
    with ``spec.column_terms``); a row with an empty denominator has ``lse = 0`` and no gradient.
    The Ring band, when asked for, is selected first on the device (no gradient, no host sync).
    """
    from . import BackendUnavailableError, cuda_supports

    missing = cuda_supports(spec)
    if missing is not None:
        raise BackendUnavailableError(f"backend='cuda' does not implement {missing}: use backend='triton' or 'chunked'")
    _check(query)
    scale_t = as_scale_tensor(scale, query)
    shared_keys = None if keys is query else keys
    roles = (_long(spec.pos_index), _long(spec.row_labels), _long(spec.col_labels), _long(spec.self_index))
    band_lo = band_hi = None
    if spec.ring is not None:
        outer, inner = spec.ring
        band_lo, band_hi = _OPS.ring_band(query.detach(), None if shared_keys is None else shared_keys.detach(),
                                          None if extra is None else extra.detach(), scale_t.detach(), *roles,
                                          spec.key_negatives, spec.normalize, float(outer), float(inner))
    out = _OPS.forward(query, shared_keys, extra, scale_t, *roles, band_lo, band_hi,
                       spec.key_negatives, spec.decoupled, spec.column_terms, spec.normalize)
    if spec.column_terms:
        return ContrastiveTerms(*out)
    return ContrastiveTerms(*out[:4], None, None, None, None)  # row_lse_beta, row_pair_loss: None
