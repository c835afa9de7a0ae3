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

import os
from dataclasses import replace

import torch

from contrastive_ops.kernels.config import cosine_chunk_shape  # imports no Triton

from .. import _ext
from ..core import ROLE_NAMES, ContrastiveTerms, RoleSpec, Scale, as_scale_tensor, terms_from_outputs
from ..errors import BackendUnavailableError
from .first_order import first_order_only

_ext.load()  # raises BackendUnavailableError (reason and fix) where it is neither built nor buildable
_OPS = torch.ops.contrastive_ops_cuda
_FLOAT_TYPES = (torch.float32, torch.float16, torch.bfloat16)


# ---------------------------------------------------------------------------------------------
# Fake implementations (shapes and dtypes only), for FakeTensor / torch.compile tracing
# ---------------------------------------------------------------------------------------------


def _arguments(op: str) -> tuple[str, ...]:
    """The argument names of ``contrastive_ops_cuda::op``, in its schema's order (``csrc/ops.cpp``)."""
    return tuple(a.name for a in getattr(_OPS, op).default._schema.arguments)


#: Each operator's arguments; the loss options among them carry ``core.ROLE_FIELDS``' names, so calls
#: are made by name (:func:`_call`) and the order lives in the C++ schema alone.
_ARGS = {op: _arguments(op) for op in ("forward", "backward", "ring_band", "pair_forward", "pair_backward")}


def _call(op: str, values: dict):
    """``contrastive_ops_cuda::op`` on the arguments of ``values`` that it takes (by name)."""
    return getattr(_OPS, op)(*(values[name] for name in _ARGS[op]))


@torch.library.register_fake("contrastive_ops_cuda::forward")
def _forward_fake(*args):
    a = dict(zip(_ARGS["forward"], args))
    query, keys = a["query"], a["keys"]
    n = query.shape[0]
    m = (query if keys is None else keys).shape[0] if a["column_terms"] else 0
    f32, i64 = torch.float32, torch.int64
    return (
        query.new_empty(n, dtype=f32), query.new_empty(n, dtype=f32),
        query.new_empty(n, dtype=i64), query.new_empty(n, dtype=i64),
        query.new_empty(m, dtype=f32), query.new_empty(m, dtype=f32),
        query.new_empty(m, dtype=i64), query.new_empty(m, dtype=i64),
        query.new_empty(n if a["hard_beta"] is not None else 0, dtype=f32),
        query.new_empty(n if a["pairwise_sigmoid"] else 0, dtype=f32),
    )


@torch.library.register_fake("contrastive_ops_cuda::pair_forward")
def _pair_forward_fake(*args):
    a = dict(zip(_ARGS["pair_forward"], args))
    query, keys, extra = a["query"], a["keys"], a["extra"]
    n, d = query.shape
    m_total = (query if keys is None else keys).shape[0] + (0 if extra is None else extra.shape[0])
    f32 = torch.float32
    return (*_forward_fake(*args), query.new_empty(n, d, dtype=f32), query.new_empty(m_total, d, dtype=f32),
            query.new_empty(n, dtype=f32), query.new_empty(n, dtype=f32))


@torch.library.register_fake("contrastive_ops_cuda::pair_backward")
def _pair_backward_fake(*args):
    a = dict(zip(_ARGS["pair_backward"], args))
    query, keys, extra = a["query"], a["keys"], a["extra"]
    grad_keys = query.new_empty(0) if keys is None else torch.empty_like(keys)
    grad_extra = query.new_empty(0) if extra is None else torch.empty_like(extra)
    scalar = query.new_empty((), dtype=torch.float32)
    return torch.empty_like(query), grad_keys, grad_extra, scalar, scalar.clone()


@torch.library.register_fake("contrastive_ops_cuda::backward")
def _backward_fake(*args):
    a = dict(zip(_ARGS["backward"], args))
    query, keys, extra = a["query"], a["keys"], a["extra"]
    grad_keys = query.new_empty(0) if keys is None else torch.empty_like(keys)
    grad_extra = query.new_empty(0) if extra is None else torch.empty_like(extra)
    scalar = query.new_empty((), dtype=torch.float32)
    return torch.empty_like(query), grad_keys, grad_extra, scalar, scalar.clone()


@torch.library.register_fake("contrastive_ops_cuda::ring_band")
def _ring_band_fake(*args):
    query = dict(zip(_ARGS["ring_band"], args))["query"]
    n = query.shape[0]
    return query.new_empty(n, dtype=torch.float32), query.new_empty(n, dtype=torch.float32)


# ---------------------------------------------------------------------------------------------
# Autograd of forward: saves the inputs and the O(N + M) terms, recomputes the chunks
# ---------------------------------------------------------------------------------------------

#: The forward's tensor inputs, saved for the backward (the guide's have no gradient: the backward
#: recomputes its chunks); its other inputs are options.
_SAVED = tuple(arg.name for arg in _OPS.forward.default._schema.arguments if "Tensor" in str(arg.type))
_DIFFERENTIABLE = ("query", "keys", "extra", "scale", "bias")


def _setup_context(ctx, inputs, output):
    values = dict(zip(_ARGS["forward"], inputs))
    ctx.options = {name: value for name, value in values.items() if name not in _SAVED}
    row_lse, _, _, row_pos_n, col_lse, _, _, col_pos_n, row_lse_beta, _ = output
    ctx.save_for_backward(*(values[name] for name in _SAVED), row_lse, row_pos_n, col_lse, col_pos_n, row_lse_beta)


@first_order_only("cuda")
def _backward(ctx, g_row_lse, g_row_pos, _d0, _d1, g_col_lse, g_col_pos, _d2, _d3, g_row_lse_beta, g_row_pair):
    saved = ctx.saved_tensors
    values = dict(zip(_SAVED, saved[:len(_SAVED)]), **ctx.options)
    row_lse, row_pos_n, col_lse, col_pos_n, row_lse_beta = saved[len(_SAVED):len(_SAVED) + 5]
    columns, hard, sigmoid = values["column_terms"], values["hard_beta"] is not None, values["pairwise_sigmoid"]

    def grad(g, like):
        return torch.zeros_like(like) if g is None else g.float().contiguous()

    values.update(
        g_row_lse=grad(g_row_lse, row_lse), g_row_pos=grad(g_row_pos, row_lse),
        g_col_lse=grad(g_col_lse, col_lse) if columns else None, g_col_pos=grad(g_col_pos, col_lse) if columns else None,
        g_row_lse_beta=grad(g_row_lse_beta, row_lse) if hard else None,
        g_row_pair=grad(g_row_pair, row_lse) if sigmoid else None,
        row_lse=row_lse, row_pos_count=row_pos_n, col_lse=col_lse if columns else None,
        col_pos_count=col_pos_n if columns else None, row_lse_beta=row_lse_beta if hard else None,
    )
    grads = dict(zip(_DIFFERENTIABLE, _call("backward", values)))
    return tuple(grads[name] if name in grads and values[name] is not None else None for name in _ARGS["forward"])


torch.library.register_autograd("contrastive_ops_cuda::forward", _backward, setup_context=_setup_context)


# ---------------------------------------------------------------------------------------------
# SigLIP without recomputation: pair_forward forms the pair losses' gradient products (row weight 1)
# in the forward; the backward scales them (exact when the incoming gradient is one value per row)
# ---------------------------------------------------------------------------------------------


def _pair_setup_context(ctx, inputs, output):
    values = dict(zip(_ARGS["pair_forward"], inputs))
    ctx.options = {name: value for name, value in values.items() if name not in _SAVED}
    row_lse, _, _, row_pos_n, col_lse, _, _, col_pos_n, row_lse_beta, _ = output[:10]
    # then dQ̂₁, dĈ₁, Σ_j dL/dx·cos and Σ_j dL/dx per row (fp32) of the pair losses at row weight 1
    ctx.save_for_backward(*(values[name] for name in _SAVED), row_lse, row_pos_n, col_lse, col_pos_n, row_lse_beta,
                          *output[10:])


@first_order_only("cuda")
def _pair_backward(ctx, *grads):
    saved = ctx.saved_tensors
    values = dict(zip(_SAVED, saved[:len(_SAVED)]), **ctx.options)
    g_pair = grads[9]
    g_pair = torch.zeros_like(saved[len(_SAVED)]) if g_pair is None else g_pair.float().contiguous()
    dqh, dch, row_dscale, row_dbias = saved[-4:]
    out = _call("pair_backward", {**values, "g_row_pair": g_pair, "dqh": dqh, "dch": dch, "row_dscale": row_dscale,
                                  "row_dbias": row_dbias})
    if grads[0] is not None or grads[1] is not None:  # a caller of the softmax terms too: those recompute
        rest = _backward(ctx, *grads[:9], None)
        out = tuple(a if b is None else a + b for a, b in zip(out, (rest[_ARGS["forward"].index(name)]
                                                                     for name in _DIFFERENTIABLE)))
    grads_by_name = dict(zip(_DIFFERENTIABLE, out))
    return tuple(grads_by_name[name] if name in grads_by_name and values[name] is not None else None
                 for name in _ARGS["pair_forward"])


torch.library.register_autograd("contrastive_ops_cuda::pair_forward", _pair_backward,
                                setup_context=_pair_setup_context)


def pair_route(spec: RoleSpec, *tensors) -> bool:
    """Whether :func:`compute_terms` forms SigLIP's pair gradient in the forward (``pair_forward``): the
    roles of the chunked backend's fast sigmoid path (the pairwise sigmoid alone, no labels, guide,
    hard negatives, band or column terms, keys as negatives), a caller's promise that the incoming
    gradient is one value for every row (``spec.uniform_pair_grad``: siglip_loss's mean and sum), a
    gradient to be asked for (grad mode on and an input requiring one), and
    ``CONTRASTIVE_OPS_CUDA_SIGLIP`` not ``"recompute"`` (which keeps the backward's recomputation)."""
    if os.environ.get("CONTRASTIVE_OPS_CUDA_SIGLIP", "forward") == "recompute":
        return False
    if not (spec.pairwise_sigmoid and spec.uniform_pair_grad and spec.key_negatives) or spec.decoupled:
        return False
    if spec.column_terms or spec.hard_beta is not None or spec.ring is not None or spec.has_guide:
        return False
    if spec.row_labels is not None:
        return False
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


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
    # float64 guides (gist_loss's unit guides of float64 embeddings) are compared as fp32 copies, as the
    # Triton backend does: this backend has no float64 arithmetic
    guide = {name: None if g is None else g.detach().to(torch.float32 if g.dtype == torch.float64 else g.dtype)
             for name, g in (("guide_rows", spec.guide_rows), ("guide_cols", spec.guide_cols),
                             ("guide_max", spec.guide_max))}
    indices = {name: _long(getattr(spec, name)) for name in ("pos_index", "self_index", "row_labels", "col_labels")}
    values = dict(zip(ROLE_NAMES, replace(spec, **guide, **indices).flat()))
    m_total = keys.shape[0] + (0 if extra is None else extra.shape[0])
    values["chunk_rows"], values["chunk_cols"] = cosine_chunk_shape(query.shape[0], m_total)
    values.update(query=query, keys=shared_keys, extra=extra, scale=scale_t, bias=bias_t, band_lo=None, band_hi=None)
    if spec.ring is not None:
        outer, inner = spec.ring
        detached = {name: None if values[name] is None else values[name].detach()
                    for name in ("query", "keys", "extra", "scale")}
        values["band_lo"], values["band_hi"] = _call("ring_band", {**values, **detached, "outer": float(outer),
                                                                   "inner": float(inner)})
    if pair_route(spec, query, keys, extra, scale_t, bias_t):
        return terms_from_outputs(_call("pair_forward", values), spec)
    return terms_from_outputs(_call("forward", values), spec)
