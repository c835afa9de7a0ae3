"""The cuda backend: the generic core as CUDA C++ operators (``csrc/``), every role of it.

The operators ``torch.ops.contrastive_ops_cuda.{forward, backward, ring_band}`` are defined in C++
(``csrc/ops.cpp``); this module loads the extension (importing it is the first use: only
:func:`contrastive_ops.backends.compute_fn` imports it) and registers their fake implementations
and the autograd of ``forward`` with ``torch.library``, so ``torch.compile(fullgraph=True)`` traces
through them.

The dataflow is the Triton backend's large-D path (``kernels.contrastive_bwd``'s dS chunks): the
logits exist only as chunks of fp32 cosines ``S = Q̂·Ĉᵀ`` from torch's GEMM (cuBLAS), each read once
by a fused CUDA epilogue — the forward's online log-sum-exp per row and, for symmetric losses, per
key column; the backward's ``dS``, followed by the GEMMs ``dQ̂ += dS·Ĉ`` and ``dĈ += dSᵀ·Q̂`` into
fp32; the Ring's radix histograms (one byte per pass, on the very logits the loss uses). With a guide
(GISTEmbed), each chunk of cosines has beside it the chunk of guide similarities ``G = guide_rows ·
guide_colsᵀ`` (fp32, the same GEMM route), read by the same epilogues to drop the guide's false
negatives from every role decision; no N×M mask is ever formed. Chunks are
bounded by ``CONTRASTIVE_OPS_DS_CHUNK_BYTES`` (64 MiB of fp32 cosines by default), go in a fixed order
and are summed without float atomics: deterministic. Every option of the core runs: labels
(positives or false-negative masking), hard-negative weighting, the pairwise sigmoid with its bias,
the Ring band, column terms in the same pass as the rows, extra negatives, the guide.

Inputs fp32/fp16/bf16 on one CUDA device (fp32 accumulation); float64 raises a TypeError pointing
at ``backend="chunked"``; float64 guides are compared as fp32 copies.
Index values are range-checked before any work. The operators also run on CPU tensors, with the
same epilogue arithmetic in plain loops and fp32 products: the tests check that arithmetic against
float64 on machines without a GPU (``compute_terms(..., allow_cpu=True)``).
"""
from __future__ import annotations

import torch

from contrastive_ops.kernels.config import cosine_chunk_shape  # imports no Triton

from .. import _ext
from ..core import ContrastiveTerms, RoleSpec, Scale, as_scale_tensor
from ..errors import BackendUnavailableError

_ext.load()  # raises BackendUnavailableError (reason and fix) where it is neither built nor buildable
_OPS = torch.ops.contrastive_ops_cuda
_FLOAT_TYPES = (torch.float32, torch.float16, torch.bfloat16)
_FIELDS = ContrastiveTerms._fields  # row_lse, row_pos, row_den_count, row_pos_count, col_*, row_lse_beta, row_pair_loss


# ---------------------------------------------------------------------------------------------
# Fake implementations (shapes and dtypes only), for FakeTensor / torch.compile tracing
# ---------------------------------------------------------------------------------------------


@torch.library.register_fake("contrastive_ops_cuda::forward")
def _forward_fake(query, keys, extra, scale, bias, pos_index, row_labels, col_labels, self_index, band_lo, band_hi,
                  guide_rows, guide_cols, guide_max, key_negatives, decoupled, column_terms, normalize, hard_beta,
                  pairwise_sigmoid, chunk_rows, chunk_cols):
    n = query.shape[0]
    m = (query if keys is None else keys).shape[0] if column_terms else 0
    f32, i64 = torch.float32, torch.int64
    return (
        query.new_empty(n, dtype=f32), query.new_empty(n, dtype=f32),
        query.new_empty(n, dtype=i64), query.new_empty(n, dtype=i64),
        query.new_empty(m, dtype=f32), query.new_empty(m, dtype=f32),
        query.new_empty(m, dtype=i64), query.new_empty(m, dtype=i64),
        query.new_empty(n if hard_beta is not None else 0, dtype=f32),
        query.new_empty(n if pairwise_sigmoid else 0, dtype=f32),
    )


@torch.library.register_fake("contrastive_ops_cuda::backward")
def _backward_fake(g_row_lse, g_row_pos, g_col_lse, g_col_pos, g_row_lse_beta, g_row_pair, row_lse, row_pos_count,
                   col_lse, col_pos_count, row_lse_beta, query, keys, extra, scale, bias, pos_index, row_labels,
                   col_labels, self_index, band_lo, band_hi, guide_rows, guide_cols, guide_max, key_negatives,
                   decoupled, column_terms, normalize, hard_beta, pairwise_sigmoid, chunk_rows, chunk_cols):
    grad_keys = query.new_empty(0) if keys is None else torch.empty_like(keys)
    grad_extra = query.new_empty(0) if extra is None else torch.empty_like(extra)
    scalar = query.new_empty((), dtype=torch.float32)
    return torch.empty_like(query), grad_keys, grad_extra, scalar, scalar.clone()


@torch.library.register_fake("contrastive_ops_cuda::ring_band")
def _ring_band_fake(query, keys, extra, scale, pos_index, row_labels, col_labels, self_index, guide_rows, guide_cols,
                    guide_max, key_negatives, normalize, outer, inner, chunk_rows, chunk_cols):
    n = query.shape[0]
    return query.new_empty(n, dtype=torch.float32), query.new_empty(n, dtype=torch.float32)


# ---------------------------------------------------------------------------------------------
# Autograd of forward: saves the inputs and the O(N + M) terms, recomputes the chunks
# ---------------------------------------------------------------------------------------------

# the guide's tensors are inputs without a gradient (the backward recomputes its chunks)
_INPUTS = ("query", "keys", "extra", "scale", "bias", "pos_index", "row_labels", "col_labels", "self_index",
           "band_lo", "band_hi", "guide_rows", "guide_cols", "guide_max")


def _setup_context(ctx, inputs, output):
    tensors = inputs[:len(_INPUTS)]
    ctx.options = inputs[len(_INPUTS):]  # key_negatives, decoupled, column_terms, normalize, hard_beta, ...
    row_lse, _, _, row_pos_n, col_lse, _, _, col_pos_n, row_lse_beta, _ = output
    ctx.save_for_backward(*tensors, row_lse, row_pos_n, col_lse, col_pos_n, row_lse_beta)


def _backward(ctx, g_row_lse, g_row_pos, _d0, _d1, g_col_lse, g_col_pos, _d2, _d3, g_row_lse_beta, g_row_pair):
    saved = ctx.saved_tensors
    inputs = dict(zip(_INPUTS, saved[:len(_INPUTS)]))
    row_lse, row_pos_n, col_lse, col_pos_n, row_lse_beta = saved[len(_INPUTS):]
    key_negatives, decoupled, column_terms, normalize, hard_beta, pairwise_sigmoid, chunk_rows, chunk_cols = ctx.options

    def grad(g, like):
        return torch.zeros_like(like) if g is None else g.float().contiguous()

    dq, dk, de, dscale, dbias = _OPS.backward(
        grad(g_row_lse, row_lse), grad(g_row_pos, row_lse),
        grad(g_col_lse, col_lse) if column_terms else None, grad(g_col_pos, col_lse) if column_terms else None,
        grad(g_row_lse_beta, row_lse) if hard_beta is not None else None,
        grad(g_row_pair, row_lse) if pairwise_sigmoid else None,
        row_lse, row_pos_n, col_lse if column_terms else None, col_pos_n if column_terms else None,
        row_lse_beta if hard_beta is not None else None,
        *(inputs[name] for name in _INPUTS), key_negatives, decoupled, column_terms, normalize, hard_beta,
        pairwise_sigmoid, chunk_rows, chunk_cols,
    )
    keys, extra, bias = inputs["keys"], inputs["extra"], inputs["bias"]
    return (dq, None if keys is None else dk, None if extra is None else de, dscale,
            None if bias is None else dbias) + (None,) * (len(_INPUTS) - 5 + len(ctx.options))


torch.library.register_autograd("contrastive_ops_cuda::forward", _backward, setup_context=_setup_context)


# ---------------------------------------------------------------------------------------------
# The backend's entry point
# ---------------------------------------------------------------------------------------------


def _long(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.long()


def _check(query: torch.Tensor, spec: RoleSpec, allow_cpu: bool) -> None:
    if query.dtype == torch.float64:
        raise TypeError("backend='cuda' computes in fp32/fp16/bf16 (fp32 accumulation), got torch.float64 inputs: "
                        "use backend='chunked' for float64 (e.g. gradcheck)")
    if query.dtype not in _FLOAT_TYPES:
        raise TypeError(f"backend='cuda' takes float32, float16 or bfloat16 inputs, got {query.dtype}")
    if query.device.type not in ("cuda", "meta") and not (allow_cpu and query.device.type == "cpu"):
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
    *,
    allow_cpu: bool = False,
) -> ContrastiveTerms:
    """The core's terms (see :mod:`contrastive_ops.core`), as :func:`chunked.compute_terms`.

    ``query [N, D]``, ``keys [M, D]`` (may be ``query`` itself: NT-Xent, SupCon), ``extra [R, D]`` or
    None, same dtype (fp32/fp16/bf16) and CUDA device; ``scale`` a float or a 0-d tensor (which
    receives a gradient), ``bias`` likewise (``spec.pairwise_sigmoid`` only). Returns fp32 terms and
    int64 counts (absent terms as None); a row with an empty denominator has ``lse = 0`` and no
    gradient. The Ring band, when asked for, is selected first on the device (no gradient) over the
    same chunks as the loss. Index values are range-checked first (a host sync per index vector). A
    guide (``spec.guide_rows [N, G]``, ``guide_cols [M + R, G]``, ``guide_max [N]``) is compared in
    fp32 (float64 guides as fp32 copies); no gradient flows to it. ``allow_cpu``: run the operators'
    CPU implementation on CPU tensors (the same epilogue arithmetic; for tests).
    """
    _check(query, spec, allow_cpu)
    scale_t = as_scale_tensor(scale, query)
    bias_t = as_scale_tensor(0.0 if bias is None else bias, query) if spec.pairwise_sigmoid else None
    shared_keys = None if keys is query else keys
    roles = (_long(spec.pos_index), _long(spec.row_labels), _long(spec.col_labels), _long(spec.self_index))
    # float64 guides (gist_loss's unit guides of float64 embeddings) are compared as fp32 copies, as the
    # Triton backend does: this backend has no float64 arithmetic
    guide = tuple(None if g is None else g.detach().to(torch.float32 if g.dtype == torch.float64 else g.dtype)
                  for g in (spec.guide_rows, spec.guide_cols, spec.guide_max))
    m_total = keys.shape[0] + (0 if extra is None else extra.shape[0])
    chunk_rows, chunk_cols = cosine_chunk_shape(query.shape[0], m_total)
    band_lo = band_hi = None
    if spec.ring is not None:
        outer, inner = spec.ring
        band_lo, band_hi = _OPS.ring_band(query.detach(), None if shared_keys is None else shared_keys.detach(),
                                          None if extra is None else extra.detach(), scale_t.detach(), *roles,
                                          *guide, spec.key_negatives, spec.normalize, float(outer), float(inner),
                                          chunk_rows, chunk_cols)
    out = _OPS.forward(query, shared_keys, extra, scale_t, bias_t, *roles, band_lo, band_hi, *guide,
                       spec.key_negatives, spec.decoupled, spec.column_terms, spec.normalize,
                       None if spec.hard_beta is None else float(spec.hard_beta), spec.pairwise_sigmoid,
                       chunk_rows, chunk_cols)
    named = dict(zip(_FIELDS, out))
    if not spec.column_terms:
        named.update(col_lse=None, col_pos=None, col_den_count=None, col_pos_count=None)
    if spec.hard_beta is None:
        named["row_lse_beta"] = None
    if not spec.pairwise_sigmoid:
        named["row_pair_loss"] = None
    return ContrastiveTerms(**named)
