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
# ruff: noqa: UP006, UP035
from __future__ import annotations

import os
from dataclasses import replace
from typing import List

import torch

from contrastive_ops.kernels import config as tile_config

from ..core import (
    ROLE_FIELDS,
    ContrastiveTerms,
    RoleSpec,
    Scale,
    as_scale_tensor,
    check_guide_shapes,
    pair_roles,
    ring_ranks,
    role_schema,
    terms_from_outputs,
)
from ..errors import BackendUnavailableError

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


def _problem(query, keys, extra, scale, bias, band_lo, band_hi, spec: RoleSpec):
    """The kernels' view of one problem (``keys=None``: the columns are the rows themselves)."""
    problem = _kernels()[4]
    band = None if band_lo is None else (band_lo, band_hi)
    guide = None if spec.guide_rows is None else (spec.guide_rows, spec.guide_cols, spec.guide_max)
    return problem.TileProblem.build(
        query, keys, extra, scale, bias=bias, pos_index=spec.pos_index, self_index=spec.self_index,
        row_labels=spec.row_labels, col_labels=spec.col_labels, band=band, key_negatives=spec.key_negatives,
        decoupled=spec.decoupled, column_terms=spec.column_terms, normalize=spec.normalize,
        hard_beta=spec.hard_beta, pairwise_sigmoid=spec.pairwise_sigmoid, guide=guide,
    )


def _config(tiles, config: List[int], row_grad: bool = False):
    """The pinned config when one was given, else the tuned one for this problem's size (a forward
    with row gradients is another kernel, on its own key; not with a Ring band, whose forward must
    use the selection's config: its tile logits, bit for bit)."""
    cfg, fwd = _kernels()[0], _kernels()[1]
    if config:
        return cfg.TileConfig.from_list(config)
    programs = _column_programs(tiles.query.device)
    own_key = row_grad and not tiles.flags["HAS_BAND"]
    key = tiles.tuning_key() + (("row_grad",) if own_key else ())
    return cfg.tuned_config(key, lambda c: fwd.contrastive_forward(tiles, c, programs, row_grad))


def _backward_config(tiles, config: List[int], row: dict, col: dict, row_grad=None):
    """The pinned config when one was given; the forward's when the loss has a Ring band (membership
    is decided on the logits, so the backward must recompute them bit for bit); else the fastest
    backward candidate for this problem, tuned on its own key (the dC pass alone with ``row_grad``)."""
    cfg, bwd = _kernels()[0], _kernels()[2]
    if config or tiles.flags["HAS_BAND"]:
        return _config(tiles, config)
    key = tiles.tuning_key() + ("backward",) + (("columns",) if row_grad is not None else ())
    return cfg.tuned_config(key, lambda c: bwd.contrastive_backward(tiles, c, row, col, row_grad),
                            cfg.backward_candidates(tiles.d))


# ---------------------------------------------------------------------------------------------
# custom ops
# ---------------------------------------------------------------------------------------------


# Every op takes the problem's tensors, then the loss options as ``core.ROLE_FIELDS`` lists them (one
# list for every layer: the schemas below are written from it), then its own arguments.
_ROLES = role_schema()
_N_ROLES = len(ROLE_FIELDS)


#: How the triton backend selects the Ring band: ``"bracketed"`` (default: spans from a sample, one gathering
#: pass over the tiles, an exact selection in its buffer, the radix search only for the rows they leave) or
#: ``"radix"`` (the radix search alone); ``CONTRASTIVE_OPS_RING_SELECT`` changes it.
RING_SELECT_ENV = "CONTRASTIVE_OPS_RING_SELECT"


def _env_choice(name: str, choices: tuple) -> str:
    """The value of the environment switch ``name`` (unset: ``choices[0]``); another value is a
    ValueError naming the switch and the value."""
    value = os.environ.get(name, choices[0])
    if value not in choices:
        raise ValueError(f"{name} must be {' or '.join(map(repr, choices))}, got {value!r}")
    return value


def _ring_select_mode() -> str:
    return _env_choice(RING_SELECT_ENV, ("bracketed", "radix"))


def _ring_sample_spans(tiles, spec: RoleSpec, count, rank_top, rank_bottom):
    """The bracketed selection's spans (``ring_select.sample_spans``, fp32 ``[4, N]``: the top rank's
    ``[lo, hi)``, then the bottom's) for the descending ranks ``rank_top`` and ``rank_bottom`` of the tiles'
    halves, estimated from the halves of at most ``ring_select.SAMPLE_COLUMNS`` evenly spread columns
    (computed by torch: the estimate needs no bit-exactness), in row chunks of at most 4 Mi sampled values."""
    ring_select = _kernels()[3]
    n, mt = tiles.n, tiles.m_total
    device = tiles.query.device
    s = max(1, min(mt, ring_select.SAMPLE_COLUMNS))
    cols = torch.arange(s, device=device) * mt // s
    sample_cols = tiles.columns[cols].float()
    if tiles.flags["NORMALIZE"]:
        sample_cols = sample_cols * tiles.rc[cols][:, None]
    spans = []
    chunk = max(1, (4 << 20) // s)
    for r0 in range(0, n, chunk):
        r1 = min(n, r0 + chunk)
        rows = torch.arange(r0, r1, device=device)
        halves = tiles.query[r0:r1].float() @ sample_cols.T  # raw·rc_j, as tiles.tile_norms forms them
        candidate = pair_roles(rows, cols, tiles.m, spec)[1]
        ordered = torch.where(candidate, halves, float("-inf")).sort(dim=1, descending=True).values
        spans.append(torch.cat([ring_select.sample_spans(ordered, count[r0:r1], rank[r0:r1])
                                for rank in (rank_top, rank_bottom)]))
    return torch.cat(spans, dim=1)


def _ring_band_impl(query, keys, extra, scale, *rest):
    """``(v_lo, v_hi)`` fp32 ``[N]``; ``(+inf, -inf)`` for a row whose ring is empty."""
    roles, (outer, inner, config) = rest[:_N_ROLES], rest[_N_ROLES:]
    ring_select = _kernels()[3]
    # the band is chosen among the candidates: the denominator's and the loss's own options do not enter
    spec = replace(RoleSpec.from_flat(roles), decoupled=False, column_terms=False, hard_beta=None,
                   pairwise_sigmoid=False)
    tiles = _problem(query, keys, extra, scale, None, None, None, spec)
    cfg = _config(tiles, config)
    count = ring_select.candidate_counts(tiles, cfg).to(torch.int64)
    lo, hi = ring_ranks(count, outer, inner)
    nonempty = hi > lo
    # the kernels rank the tiles' halves: a logit is scale·(half·rq_i), monotone in the half, so the band's
    # logits are those of the same ranks' halves, or of the mirrored ranks' for a negative scale (no sync)
    mirror = tiles.scale < 0
    rank_top = torch.where(nonempty, torch.where(mirror, count - 1 - lo, lo), 0)
    rank_bottom = torch.where(nonempty, torch.where(mirror, count - hi, hi - 1), 0)
    if _ring_select_mode() == "bracketed":
        spans = _ring_sample_spans(tiles, spec, count, rank_top, rank_bottom)
        entries = ring_select.buffer_length(tiles.m_total, outer, inner)
        fast_bottom, fast_top, resolved = ring_select.ring_band_bracketed(tiles, cfg, spans, rank_top, rank_bottom,
                                                                          entries)
        # the radix search for the rows left over (rank -1: skipped; a row block of such rows does no pass)
        left = nonempty & ~resolved
        h_bottom, h_top = ring_select.ring_band(tiles, cfg, torch.where(left, rank_top, -1).to(torch.int32),
                                                torch.where(left, rank_bottom, -1).to(torch.int32))
        h_bottom, h_top = torch.where(left, h_bottom, fast_bottom), torch.where(left, h_top, fast_top)
    else:
        h_bottom, h_top = ring_select.ring_band(tiles, cfg, rank_top.to(torch.int32), rank_bottom.to(torch.int32))
    v_lo, v_hi = (tiles.scale * (h * tiles.rq) if tiles.flags["NORMALIZE"] else tiles.scale * h
                  for h in (h_bottom, h_top))  # the two products of the tiles, in their order
    # (the op returns logits, not these halves: the band is a value interval of logits, and halves with a
    # logit tied to an end count too; kernels.band maps it back to the exact interval of halves)
    inf = torch.full_like(v_lo, float("inf"))
    return torch.where(nonempty, v_lo, inf), torch.where(nonempty, v_hi, -inf)


_ring_band_op = torch.library.custom_op(
    "contrastive_ops::ring_band", _ring_band_impl, mutates_args=(),
    schema=f"(Tensor query, Tensor? keys, Tensor? extra, Tensor scale, {_ROLES}, float outer, float inner, "
           "int[] config) -> (Tensor, Tensor)")


@_ring_band_op.register_fake
def _(query, keys, extra, scale, *rest):
    n = query.shape[0]
    return query.new_empty(n, dtype=torch.float32), query.new_empty(n, dtype=torch.float32)


#: The forward op's outputs, in order: ``ContrastiveTerms``' fields, then the rows' gradient products;
#: those a loss does not ask for are empty ``[0]`` tensors.
FORWARD_OUTPUTS = ContrastiveTerms._fields + ("row_dq", "row_dscale")
_COUNTS = ("row_den_count", "row_pos_count", "col_den_count", "col_pos_count")
#: The forward op's inputs before the options, and the tensors among them saved for the backward.
_PROBLEM = ("query", "keys", "extra", "scale", "bias", "band_lo", "band_hi")
_PROBLEM_SCHEMA = "Tensor query, Tensor? keys, Tensor? extra, Tensor scale, Tensor? bias, Tensor? band_lo, Tensor? band_hi"
_ROLE_TENSORS = tuple(name for name, kind in ROLE_FIELDS if kind.startswith("Tensor"))


def _forward_impl(query, keys, extra, scale, bias, band_lo, band_hi, *rest):
    """The :data:`FORWARD_OUTPUTS`: fp32 LSEs, positive means and pair losses, int64 counts; row
    terms ``[N]``, column terms ``[M]`` (with ``column_terms``); with ``row_grad`` (a gradient will be
    asked for), where the kernels support it, the rows' gradient products ``row_dq [N, D]`` and
    ``row_dscale [N]`` for the backward (else empty)."""
    spec, (config, row_grad) = RoleSpec.from_flat(rest[:_N_ROLES]), rest[_N_ROLES:]
    fwd = _kernels()[1]
    tiles = _problem(query, keys, extra, scale, bias, band_lo, band_hi, spec)
    row_grad = row_grad and tile_config.row_grad_supported(tiles.flags, tiles.d)
    out = fwd.contrastive_forward(tiles, _config(tiles, config, row_grad), _column_programs(query.device), row_grad)
    result = []
    for name in FORWARD_OUTPUTS:
        t = out.get(name)
        if t is None:
            t = query.new_empty(0, dtype=torch.int64 if name in _COUNTS else torch.float32)
        result.append(t.to(torch.int64) if name in _COUNTS else t)
    return tuple(result)


_forward_op = torch.library.custom_op(
    "contrastive_ops::tiled_forward", _forward_impl, mutates_args=(),
    schema=f"({_PROBLEM_SCHEMA}, {_ROLES}, int[] config, bool row_grad) -> ({', '.join(['Tensor'] * len(FORWARD_OUTPUTS))})")


@_forward_op.register_fake
def _(query, keys, extra, scale, bias, band_lo, band_hi, *rest):
    spec, (_, row_grad) = RoleSpec.from_flat(rest[:_N_ROLES]), rest[_N_ROLES:]
    n = query.shape[0]
    m = (query if keys is None else keys).shape[0] if spec.column_terms else 0
    flags = {"COLUMN_TERMS": spec.column_terms, "HARD_NEGATIVES": spec.hard_beta is not None,
             "PAIRWISE_SIGMOID": spec.pairwise_sigmoid,
             "HAS_LABELS": spec.pos_index is None and spec.row_labels is not None, "HAS_BAND": band_lo is not None}
    fused = row_grad and tile_config.row_grad_supported(flags, query.shape[1])
    sizes = {"row": n, "col": m, "row_lse_beta": n if spec.hard_beta is not None else 0,
             "row_pair_loss": n if spec.pairwise_sigmoid else 0, "row_dq": (n, query.shape[1]) if fused else 0,
             "row_dscale": n if fused else 0}
    return tuple(
        query.new_empty(sizes.get(name, sizes[name[:3]]), dtype=torch.int64 if name in _COUNTS else torch.float32)
        for name in FORWARD_OUTPUTS
    )


#: What the backward op takes after the forward's inputs: the saved terms, their incoming gradients
#: and the forward's row products.
_BACKWARD_VECTORS = ("row_lse", "row_pos_n", "col_lse", "col_pos_n", "row_lse_beta", "g_row_lse", "g_row_pos",
                     "g_col_lse", "g_col_pos", "g_row_lse_beta", "g_row_pair", "row_dq", "row_dscale")


def _backward_impl(query, keys, extra, scale, bias, band_lo, band_hi, *rest):
    """``(d query, d keys, d extra, d scale, d bias)``; d keys is empty ``[0]`` when the keys are the
    queries (its share is in d query), d extra without extra negatives, d bias without a bias.
    ``row_dq``/``row_dscale``: the forward's row-gradient products, or empty (then a dQ pass runs)."""
    spec, config = RoleSpec.from_flat(rest[:_N_ROLES]), rest[_N_ROLES]
    v = dict(zip(_BACKWARD_VECTORS, rest[_N_ROLES + 1:]))
    bwd = _kernels()[2]

    tiles = _problem(query, keys, extra, scale, bias, band_lo, band_hi, spec)
    # incoming gradients may be expanded scalars (stride 0): the kernels need dense vectors
    g = {name: v[name].contiguous() for name in _BACKWARD_VECTORS if name.startswith("g_")}
    row = {"lse": v["row_lse"], "g_lse": g["g_row_lse"],
           "g_pos_w": g["g_row_pos"] / v["row_pos_n"].clamp(min=1).to(torch.float32)}
    if spec.hard_beta is not None:
        row.update(lse_beta=v["row_lse_beta"], g_lse_beta=g["g_row_lse_beta"])
    if spec.pairwise_sigmoid:
        row.update(g_pair=g["g_row_pair"])
    col = {}
    if spec.column_terms:
        col = {"lse": v["col_lse"], "g_lse": g["g_col_lse"],
               "g_pos_w": g["g_col_pos"] / v["col_pos_n"].clamp(min=1).to(torch.float32)}
    row_grad = (v["row_dq"], v["row_dscale"]) if v["row_dscale"].numel() else None
    dq, dc, dscale, dbias = bwd.contrastive_backward(tiles, _backward_config(tiles, config, row, col, row_grad), row,
                                                     col, row_grad)
    dbias = dbias.reshape(()) if bias is not None else query.new_empty(0, dtype=torch.float32)
    return (*_input_grads(dq, dc, tiles.query, keys, extra, spec.normalize), dscale.reshape(()), dbias)


def _input_grads(dq, dc, query, keys, extra, normalize: bool):
    """``(d query, d keys, d extra)`` from the unit rows' and columns' gradients ``dq [N, D]``, ``dc
    [M_total, D]`` (fp32): keys that are the queries add their share into d query; an absent input gets
    an empty ``[0]``; separate tensors, never views of one buffer (an op's outputs may not alias)."""
    from contrastive_ops.kernels.normalize import normalize_backward

    n_keys = query.shape[0] if keys is None else keys.shape[0]
    if keys is None:
        dq = dq + dc[:n_keys]

    def finish(grad, x):
        return normalize_backward(x, grad) if normalize else grad.to(x.dtype)

    return (finish(dq, query), query.new_empty(0) if keys is None else finish(dc[:n_keys].clone(), keys),
            query.new_empty(0) if extra is None else finish(dc[n_keys:].clone(), extra))


_backward_op = torch.library.custom_op(
    "contrastive_ops::tiled_backward", _backward_impl, mutates_args=(),
    schema=f"({_PROBLEM_SCHEMA}, {_ROLES}, int[] config, {', '.join('Tensor ' + n for n in _BACKWARD_VECTORS)}) "
           "-> (Tensor, Tensor, Tensor, Tensor, Tensor)")


@_backward_op.register_fake
def _(query, keys, extra, scale, bias, band_lo, band_hi, *rest):
    empty = query.new_empty(0)  # the options, the saved row/column terms, their gradients, the row products
    return (torch.empty_like(query), empty if keys is None else torch.empty_like(keys),
            empty if extra is None else torch.empty_like(extra), scale.new_empty(()),
            scale.new_empty(()) if bias is not None else query.new_empty(0, dtype=torch.float32))


def _setup_context(ctx, inputs, output):
    problem, roles = inputs[:len(_PROBLEM)], inputs[len(_PROBLEM):len(_PROBLEM) + _N_ROLES]
    spec = RoleSpec.from_flat(roles)
    ctx.options = (*(None if kind.startswith("Tensor") else value for (_, kind), value in zip(ROLE_FIELDS, roles)),
                   list(inputs[len(_PROBLEM) + _N_ROLES]))  # the role tensors are saved; the config; not row_grad
    ctx.spec_flags = (spec.hard_beta is not None, spec.pairwise_sigmoid)
    ctx.has = (problem[1] is not None, problem[2] is not None, problem[4] is not None)
    out = dict(zip(FORWARD_OUTPUTS, output))
    role_tensors = [value for (_, kind), value in zip(ROLE_FIELDS, roles) if kind.startswith("Tensor")]
    ctx.save_for_backward(*problem, *role_tensors, out["row_lse"], out["row_pos_count"], out["col_lse"],
                          out["col_pos_count"], out["row_lse_beta"], out["row_dq"], out["row_dscale"])


def _backward(ctx, *grads):
    saved = ctx.saved_tensors
    problem = saved[:len(_PROBLEM)]
    role_tensors = iter(saved[len(_PROBLEM):len(_PROBLEM) + len(_ROLE_TENSORS)])
    saved_terms = saved[len(_PROBLEM) + len(_ROLE_TENSORS):]
    roles = tuple(next(role_tensors) if kind.startswith("Tensor") else value
                  for (_, kind), value in zip(ROLE_FIELDS, ctx.options[:-1]))
    row_lse, _, col_lse, _, row_lse_beta, _, _ = saved_terms
    g = dict(zip(FORWARD_OUTPUTS, grads))

    def grad_or_zero(name, like):
        return torch.zeros_like(like) if g[name] is None else g[name].to(torch.float32)

    _, pairwise_sigmoid = ctx.spec_flags
    dq, dk, de, dscale, dbias = _backward_op(
        *problem, *roles, ctx.options[-1], *saved_terms[:5],
        grad_or_zero("row_lse", row_lse), grad_or_zero("row_pos", row_lse), grad_or_zero("col_lse", col_lse),
        grad_or_zero("col_pos", col_lse), grad_or_zero("row_lse_beta", row_lse_beta),
        grad_or_zero("row_pair_loss", row_lse if pairwise_sigmoid else row_lse_beta), *saved_terms[5:],
    )
    has_keys, has_extra, has_bias = ctx.has
    grads_in = {"query": dq, "keys": dk if has_keys else None, "extra": de if has_extra else None, "scale": dscale,
                "bias": dbias if has_bias else None}
    return tuple(grads_in.get(name) for name in _PROBLEM) + (None,) * (_N_ROLES + 2)


torch.library.register_autograd("contrastive_ops::tiled_forward", _backward, setup_context=_setup_context)


# ---------------------------------------------------------------------------------------------
# SigLIP without recomputation: the pair losses and their gradient products (row weight 1) from one
# pass of dS chunks in the forward; the backward scales them (exact when the incoming gradient is one
# value for every row, as siglip_loss's mean and sum promise)
# ---------------------------------------------------------------------------------------------

#: ``"forward"`` (default): where :func:`pair_route` allows it, SigLIP's gradient is formed in the forward;
#: ``"recompute"``: the forward sums the losses and the backward recomputes the tiles.
SIGLIP_ENV = "CONTRASTIVE_OPS_TRITON_SIGLIP"


def _siglip_mode() -> str:
    return _env_choice(SIGLIP_ENV, ("forward", "recompute"))


def pair_route(spec: RoleSpec, *tensors) -> bool:
    """Whether :func:`compute_terms` forms SigLIP's gradient in the forward (``tiled_pair_forward``): the
    pairwise sigmoid alone (no labels, guide, hard negatives, band or column terms, keys as negatives),
    the caller's promises that the pair losses' incoming gradient is one value for every row and that
    no other term is used (``spec.uniform_pair_grad``, ``spec.pair_loss_only``: siglip_loss's mean and
    sum), a gradient to be asked for (grad mode on and an input requiring one), and :data:`SIGLIP_ENV`
    not ``"recompute"``. Any D: one pass of dS chunks and their cuBLAS products replaces the forward
    and the backward's passes over the tiles (at D = 128 too, where the backward keeps its
    accumulators in registers, the static model puts it at 14.9 ms against 20.1 at 65536²)."""
    if _siglip_mode() == "recompute":
        return False
    if not (spec.pairwise_sigmoid and spec.uniform_pair_grad and spec.pair_loss_only and spec.key_negatives):
        return False
    if spec.decoupled or spec.column_terms or spec.hard_beta is not None or spec.ring is not None:
        return False
    if spec.has_guide or spec.row_labels is not None:
        return False
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _pair_forward_impl(query, keys, extra, scale, bias, band_lo, band_hi, *rest):
    """``(row_pair_loss [N], dQ̂₁ [N, D], dĈ₁ [M_total, D], d scale₁, d bias₁)``, fp32, at row weight 1
    (``kernels.contrastive_bwd.pair_forward``)."""
    spec, config = RoleSpec.from_flat(rest[:_N_ROLES]), rest[_N_ROLES]
    cfg, bwd = _kernels()[0], _kernels()[2]
    tiles = _problem(query, keys, extra, scale, bias, None, None, spec)
    if config:
        chosen = cfg.TileConfig.from_list(config)
    else:
        chosen = cfg.tuned_config(tiles.tuning_key() + ("pair_forward",), lambda c: bwd.pair_forward(tiles, c),
                                  cfg.backward_candidates(tiles.d))
    loss, dq, dc, dscale, dbias = bwd.pair_forward(tiles, chosen)
    return loss, dq, dc, dscale.reshape(()), dbias.reshape(())


_pair_forward_op = torch.library.custom_op(
    "contrastive_ops::tiled_pair_forward", _pair_forward_impl, mutates_args=(),
    schema=f"({_PROBLEM_SCHEMA}, {_ROLES}, int[] config) -> (Tensor, Tensor, Tensor, Tensor, Tensor)")


@_pair_forward_op.register_fake
def _(query, keys, extra, scale, bias, band_lo, band_hi, *rest):
    n, d = query.shape
    m_total = (n if keys is None else keys.shape[0]) + (0 if extra is None else extra.shape[0])
    f32 = torch.float32
    return (query.new_empty(n, dtype=f32), query.new_empty((n, d), dtype=f32), query.new_empty((m_total, d), dtype=f32),
            scale.new_empty((), dtype=f32), scale.new_empty((), dtype=f32))


def _pair_backward_impl(query, keys, extra, g_pair, dq1, dc1, dscale1, dbias1, normalize: bool):
    """``(d query, d keys, d extra, d scale, d bias)`` from :func:`_pair_forward_impl`'s products and the
    pair losses' incoming gradient ``g_pair [N]``: dQ̂ per row, the rest by its one value (the promise)."""
    g = g_pair.to(torch.float32)
    g0 = g[:1].sum()  # one value for every row (uniform_pair_grad); 0 without rows
    return (*_input_grads(dq1 * g[:, None], dc1 * g0, query, keys, extra, normalize), (dscale1 * g0).reshape(()),
            (dbias1 * g0).reshape(()))


_pair_backward_op = torch.library.custom_op(
    "contrastive_ops::tiled_pair_backward", _pair_backward_impl, mutates_args=(),
    schema="(Tensor query, Tensor? keys, Tensor? extra, Tensor g_pair, Tensor dq1, Tensor dc1, Tensor dscale1, "
           "Tensor dbias1, bool normalize) -> (Tensor, Tensor, Tensor, Tensor, Tensor)")


@_pair_backward_op.register_fake
def _(query, keys, extra, g_pair, dq1, dc1, dscale1, dbias1, normalize):
    empty = query.new_empty(0)
    return (torch.empty_like(query), empty if keys is None else torch.empty_like(keys),
            empty if extra is None else torch.empty_like(extra), dscale1.new_empty(()), dbias1.new_empty(()))


def _pair_setup_context(ctx, inputs, output):
    query, keys, extra, _, bias = inputs[:5]
    ctx.normalize = RoleSpec.from_flat(inputs[len(_PROBLEM):len(_PROBLEM) + _N_ROLES]).normalize
    ctx.has_bias = bias is not None
    ctx.save_for_backward(query, keys, extra, *output[1:])


def _pair_backward(ctx, g_loss, *unused):
    query, keys, extra, dq1, dc1, dscale1, dbias1 = ctx.saved_tensors
    g = torch.zeros(query.shape[0], dtype=torch.float32, device=query.device) if g_loss is None else g_loss
    dq, dk, de, dscale, dbias = _pair_backward_op(query, keys, extra, g, dq1, dc1, dscale1, dbias1, ctx.normalize)
    grads_in = {"query": dq, "keys": dk if keys is not None else None, "extra": de if extra is not None else None,
                "scale": dscale, "bias": dbias if ctx.has_bias else None}
    return tuple(grads_in.get(name) for name in _PROBLEM) + (None,) * (_N_ROLES + 1)


torch.library.register_autograd("contrastive_ops::tiled_pair_forward", _pair_backward,
                                setup_context=_pair_setup_context)


# ---------------------------------------------------------------------------------------------
# backend entry point
# ---------------------------------------------------------------------------------------------


def in_interpreter() -> bool:
    """Whether Triton interprets the kernels in this process (read from the environment, as Triton does:
    ``tile_config.interpreting`` may be stood in for by the ahead-of-time tools)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _guide_inputs(guide, query):
    """The guide's rows and columns in the rows' dtype where the kernels take it (fp32 for float64
    guides, as the cuda backend), detached, and its limits in fp32."""
    rows, cols, limit = (g.detach() for g in guide)
    for name, g in (("guide_rows", rows), ("guide_cols", cols), ("guide_max", limit)):
        if g.device != query.device:
            raise ValueError(f"{name} is on {g.device} but the features are on {query.device}")
    dtype = rows.dtype if rows.dtype in _DTYPES else torch.float32
    return rows.to(dtype), cols.to(dtype), limit.float()


def compute_terms(
    query: torch.Tensor,
    keys: torch.Tensor,
    extra: torch.Tensor | None,
    scale: Scale,
    spec: RoleSpec,
    bias: Scale | None = None,
) -> ContrastiveTerms:
    """The core's terms (see :mod:`contrastive_ops.core`) from the fused Triton kernels.

    ``query [N, D]``, ``keys [M, D]`` (may be ``query`` itself), ``extra [R, D]`` or None: fp32,
    fp16 or bf16 on one CUDA device (CPU only under ``TRITON_INTERPRET=1``). ``scale`` and
    ``bias`` (pairwise sigmoid only): floats or 0-d tensors (which receive gradients).
    """
    if query.dtype not in _DTYPES:
        raise TypeError(
            f"backend='triton' takes float32, float16 or bfloat16 features, got {query.dtype} "
            "(use backend='chunked' for float64)"
        )
    if query.dtype == torch.bfloat16 and in_interpreter():
        raise BackendUnavailableError(
            "backend='triton' cannot compute bfloat16 in Triton's interpreter (TRITON_INTERPRET=1): its bf16 dot "
            "products are wrong there; use float32/float16 with the interpreter, a GPU, or backend='chunked'"
        )
    if spec.has_guide:
        check_guide_shapes(spec, query.shape[0], keys.shape[0] + (0 if extra is None else extra.shape[0]))
        rows, cols, limit = _guide_inputs((spec.guide_rows, spec.guide_cols, spec.guide_max), query)
        spec = replace(spec, guide_rows=rows, guide_cols=cols, guide_max=limit)
    roles = spec.flat()
    pinned = tile_config.pinned_config()
    config = [] if pinned is None else pinned.as_list()
    scale_t = as_scale_tensor(scale, query)
    bias_t = as_scale_tensor(0.0 if bias is None else bias, query) if spec.pairwise_sigmoid else None
    shared = keys is query
    keys_arg = None if shared else keys
    band_lo = band_hi = None
    if spec.ring is not None:
        band_lo, band_hi = _ring_band_op(
            query.detach(), None if shared else keys.detach(), None if extra is None else extra.detach(),
            scale_t.detach(), *roles, float(spec.ring[0]), float(spec.ring[1]), config,
        )
    # the forward computes the rows' gradient products where a backward will need them (see
    # kernels.contrastive_fwd): grad mode on and the rows' or the scale's gradient asked for
    row_grad = torch.is_grad_enabled() and (query.requires_grad or scale_t.requires_grad)
    if pair_route(spec, query, keys, extra, scale_t, bias_t):
        loss = _pair_forward_op(query, keys_arg, extra, scale_t, bias_t, None, None, *roles, config)[0]
        return ContrastiveTerms(None, None, None, None, None, None, None, None, row_pair_loss=loss)
    out = _forward_op(query, keys_arg, extra, scale_t, bias_t, band_lo, band_hi, *roles, config, row_grad)
    return terms_from_outputs(out, spec)
