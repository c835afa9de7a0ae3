"""Forward of the tiled core: per-row (and per-key-column) log-sum-exp, positive sums and counts.

One pass over the tiles. Programs own row blocks (persistent: program ``p`` takes row blocks
``p, p + P, ...``) and keep each row's online log-sum-exp in registers. For symmetric losses the
same tiles also update per-column partial results that program ``p`` alone owns (row ``p`` of
``[P, M]`` buffers: running max and sum of exponentials, positive sum, two counts); they are combined in a fixed order
afterwards, so the result does not depend on scheduling and no atomics are used.

**Row gradients in the forward** (``ROW_GRAD``, row-only losses with at most one positive per row, no
Ring band, D <= 256): the softmax part of a row's gradient, ``A_i = Σ_j p_ij·ĉ_j`` with ``p_ij = e^(S_ij - lse_i)``
over the denominator, is the same product the forward's tiles are already set up for (an online
softmax times a ``[BLOCK_N, D]`` operand, rescaled when the row's running max grows). Its backward
then only scales it per row, ``dq̂_i = s·(g_lse_i·A_i + g_pos_i·ĉ_pos(i))``, instead of recomputing
every tile in a dQ pass: forward + backward do the floor's ``8·N·M·D`` FLOPs, not ``10·N·M·D``.
The scale's gradient needs ``E_i = Σ_j p_ij·<q̂_i, ĉ_j>`` too (same pass).
"""
import torch
import triton
import triton.language as tl

from .config import ROW_GRAD_D_MAX, pipelined, row_grad_supported
from .normalize import unit_rows
from .tiles import (
    HAS_BAND,
    HAS_GUIDE,
    HAS_LABELS,
    MASK_LABELS,
    exp_minus,
    exp_of_cosines,
    logits_bounded,
    pair_terms,
    pipeline_start,
    pipeline_step,
    plain_tile,
    row_norms,
    tile_denominator,
    tile_roles,
)


@triton.jit
def _online_step(run_max, values, mask, ALL: tl.constexpr, AXIS: tl.constexpr = 1, half=0.0, row_scale=0.0,
                 FROM_COSINES: tl.constexpr = False, SHARED_EXP: tl.constexpr = False):
    """One tile's step of an online softmax along ``AXIS`` of ``values`` (per row: 1, per column: 0),
    over ``mask`` (everywhere with ``ALL``): ``(new max, factor that rescales the running sum,
    e^(values - new max) (0 outside the mask))``; a line with nothing yet keeps max -inf.
    ``FROM_COSINES`` (with ``ALL``; ``values = scale·cosines``): the terms by ``tiles.exp_of_cosines`` of
    ``half`` and ``row_scale``, as every pass forms those of a plain tile (``SHARED_EXP``:
    shared with the FP32 pipeline, ``tiles.exp2_shared``)."""
    if ALL:  # the tile's max is finite: no guard against an empty line
        new_max = tl.maximum(run_max, tl.max(values, axis=AXIS))
        alpha = exp_minus(run_max, new_max)
        if FROM_COSINES:
            p = exp_of_cosines(half, row_scale, tl.expand_dims(new_max, AXIS), SHARED_EXP)
        else:
            p = exp_minus(values, tl.expand_dims(new_max, AXIS))
    else:
        new_max = tl.maximum(run_max, tl.max(tl.where(mask, values, float("-inf")), axis=AXIS))
        shift = tl.where(new_max == float("-inf"), 0.0, new_max)
        alpha = exp_minus(run_max, shift)
        p = tl.where(mask, exp_minus(values, tl.expand_dims(shift, AXIS)), 0.0)
    return new_max, alpha, p


@triton.jit
def _online_lse(run_max, run_sum, values, mask, ALL: tl.constexpr, AXIS: tl.constexpr = 1, half=0.0, row_scale=0.0,
                FROM_COSINES: tl.constexpr = False):
    """One tile's update of online log-sum-exps (``(max, sum)`` per line, see :func:`_online_step`)."""
    new_max, alpha, p = _online_step(run_max, values, mask, ALL, AXIS, half, row_scale, FROM_COSINES)
    return new_max, run_sum * alpha + tl.sum(p, axis=AXIS)


@triton.jit
def _bounded_lse(run_max, run_sum, half, row_scale, scale, AXIS: tl.constexpr):
    """:func:`_online_lse` of a tile whose logits ``scale·cosines`` are all in the sum and at most
    ``|scale|``: the lines' shift is ``max(run_max, |scale|)``, so the tile needs no max (no reduction
    across it); terms by ``tiles.exp_of_cosines`` of ``half`` and ``row_scale``."""
    new_max = tl.maximum(run_max, tl.abs(scale))
    alpha = exp_minus(run_max, new_max)
    terms = exp_of_cosines(half, row_scale, tl.expand_dims(new_max, AXIS))
    return new_max, run_sum * alpha + tl.sum(terms, axis=AXIS)


@triton.jit
def _row_counts(logits, positive, den, pos_sum, den_n, pos_n, BLOCK_N: tl.constexpr, PLAIN: tl.constexpr):
    """The rows' positive sums and their denominator and positive counts, one tile's share (a plain
    tile: every pair in the denominator, no positive). A tile's counts are summed as fp32 ones (at most
    ``BLOCK_N``: exact), a compare-and-add per pair on the FP32 pipeline rather than int32's select and add."""
    if PLAIN:
        den_n += BLOCK_N
    else:
        pos_sum += tl.sum(tl.where(positive, logits, 0.0), axis=1)
        den_n += tl.sum(den.to(tl.float32), axis=1).to(tl.int32)
        pos_n += tl.sum(positive.to(tl.float32), axis=1).to(tl.int32)
    return pos_sum, den_n, pos_n


@triton.jit
def _finish_lse(run_max, run_sum, count):
    return tl.where(count > 0, run_max + tl.log(tl.where(count > 0, run_sum, 1.0)), 0.0)


@triton.jit
def _fwd_tile(logits, half, row_scale, rows, cols, row_mask, col_mask, c0, M, roles, partials, part_row, bias, beta, bounded, scale,
              run_max, run_sum, beta_max, beta_sum, pair_loss, pos_sum, den_n, pos_n, ROLE: tl.constexpr,
              COLUMN_TERMS: tl.constexpr, HARD_NEGATIVES: tl.constexpr, PAIRWISE_SIGMOID: tl.constexpr,
              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, PLAIN: tl.constexpr):
    """One tile's update of the row terms (returned) and of this program's column partials (stored).
    ``PLAIN`` (see ``tiles.plain_tile``): every pair is a candidate negative, so no role is tested, no
    positive is summed and, without a Ring band, the counts grow by the tile's size (with one, the
    band's two comparisons per pair are the only test). ``bounded`` (``tiles.logits_bounded``): every logit
    is at most ``|scale|``, where the rows' running max started, so such a tile needs no max of its own (no
    reduction across it, no rescaling). ``half`` and ``row_scale`` as ``tiles.exp_of_cosines`` takes them."""
    ALL: tl.constexpr = PLAIN and not ROLE[HAS_BAND]  # every pair of the tile in the denominator
    positive, candidate = tile_roles(rows, cols, row_mask, col_mask, M, roles, ROLE, BLOCK_M, BLOCK_N, PLAIN)
    den = tile_denominator(positive, candidate, half, rows, row_mask, roles, ROLE)
    if HARD_NEGATIVES:  # LSEs of (1+β)·S and of β·S over the same set, in the same pass
        run_max, run_sum = _online_lse(run_max, run_sum, (1.0 + beta) * logits, den, ALL)
        beta_max, beta_sum = _online_lse(beta_max, beta_sum, beta * logits, den, ALL)
    elif PLAIN and ROLE[HAS_BAND]:  # the denominator's pairs are at most the band's top <= run_max: no max
        run_sum += tl.sum(tl.where(den, exp_of_cosines(half, row_scale, run_max[:, None]), 0.0), axis=1)
    elif ALL:
        if bounded:  # every logit is at most |scale| <= run_max (where it started): no max
            run_sum += tl.sum(exp_of_cosines(half, row_scale, run_max[:, None]), axis=1)
        else:
            run_max, run_sum = _online_lse(run_max, run_sum, logits, den, ALL, 1, half, row_scale, True)
    else:
        run_max, run_sum = _online_lse(run_max, run_sum, logits, den, ALL)
    if PAIRWISE_SIGMOID:
        pair_loss += tl.sum(pair_terms(logits, positive, candidate, bias, PLAIN)[1], axis=1)
    pos_sum, den_n, pos_n = _row_counts(logits, positive, den, pos_sum, den_n, pos_n, BLOCK_N, ALL)
    if COLUMN_TERMS:  # noqa: SIM102  (compile-time switch, then a runtime test)
        if c0 < M:  # the block holds in-batch keys
            PART_MAX, PART_SUM, PART_POS, PART_DEN, PART_POS_N = partials
            key_mask = col_mask & (cols < M)
            # this program's running (max, sum) per key column: no log per tile
            p_max = PART_MAX + part_row + cols
            p_sum = PART_SUM + part_row + cols
            col_max = tl.load(p_max, mask=key_mask, other=float("-inf"))
            col_sum = tl.load(p_sum, mask=key_mask, other=0.0)
            if ALL and not HARD_NEGATIVES:
                if bounded:  # every logit is at most |scale|: no max across the tile's rows
                    col_max, col_sum = _bounded_lse(col_max, col_sum, half, row_scale, scale, 0)
                else:
                    col_max, col_sum = _online_lse(col_max, col_sum, logits, den, ALL, 0, half, row_scale, True)
            else:
                col_max, col_sum = _online_lse(col_max, col_sum, logits, den, ALL, 0)
            tl.store(p_max, col_max, mask=key_mask)
            tl.store(p_sum, col_sum, mask=key_mask)
            p_den = PART_DEN + part_row + cols
            if ALL:
                tl.store(p_den, tl.load(p_den, mask=key_mask, other=0) + BLOCK_M, mask=key_mask)
            else:
                p_pos = PART_POS + part_row + cols
                tl.store(p_pos, tl.load(p_pos, mask=key_mask, other=0.0)
                         + tl.sum(tl.where(positive, logits, 0.0), axis=0), mask=key_mask)
                tl.store(p_den, tl.load(p_den, mask=key_mask, other=0) + tl.sum(den.to(tl.int32), axis=0),
                         mask=key_mask)
                p_pos_n = PART_POS_N + part_row + cols
                tl.store(p_pos_n, tl.load(p_pos_n, mask=key_mask, other=0)
                         + tl.sum(positive.to(tl.int32), axis=0), mask=key_mask)
    return run_max, run_sum, beta_max, beta_sum, pair_loss, pos_sum, den_n, pos_n


@triton.jit
def _row_grad_tile(logits, half, row_scale, rows, cols, row_mask, col_mask, M, roles, CH, stride_c, D, bounded, run_max,
                   run_sum, acc, e_acc, pos_sum, den_n, pos_n, ROLE: tl.constexpr, INPUT_PRECISION: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, ACC_D: tl.constexpr, PLAIN: tl.constexpr):
    """One tile's update of the row terms and of the online softmax products ``acc = Σ e^(S - max)·ĉ``
    and ``e_acc = Σ e^(S - max)·half`` (both rescaled with the running sum when the max grows: divided
    by the final sum they are ``A_i`` and ``E_i / rq_i``, ``half = cos / rq_i`` as ``tiles.tile_norms``
    splits the cosines; ``PLAIN``, ``bounded`` and ``row_scale`` as in :func:`_fwd_tile`). Its epilogue is
    one exponential per pair feeding the product: the ``ex2`` unit binds, so plain tiles share their
    exponentials with the FP32 pipeline (``tiles.exp2_shared``)."""
    ALL: tl.constexpr = PLAIN and not ROLE[HAS_BAND]  # every pair of the tile in the denominator
    positive, candidate = tile_roles(rows, cols, row_mask, col_mask, M, roles, ROLE, BLOCK_M, BLOCK_N, PLAIN)
    den = tile_denominator(positive, candidate, half, rows, row_mask, roles, ROLE)
    offs_d = tl.arange(0, ACC_D)
    c = tl.load(CH + cols.to(tl.int64)[:, None] * stride_c + offs_d[None, :],
                mask=col_mask[:, None] & (offs_d < D)[None, :], other=0.0)
    if PLAIN and ROLE[HAS_BAND]:
        # the denominator's pairs are at most the band's top, where run_max started: no max, no rescaling
        new_max, run_sum, acc, e_acc = _row_grad_fixed(half, row_scale, den, c, run_max, run_sum, acc, e_acc,
                                                       INPUT_PRECISION, False)
    elif PLAIN:
        if bounded:  # every logit is at most |scale| <= run_max (where it started): no max, no rescaling
            new_max, run_sum, acc, e_acc = _row_grad_fixed(half, row_scale, den, c, run_max, run_sum, acc,
                                                           e_acc, INPUT_PRECISION, True)
        else:
            new_max, run_sum, acc, e_acc = _row_grad_online(logits, half, row_scale, den, c, run_max, run_sum, acc,
                                                            e_acc, INPUT_PRECISION, ALL)
    else:
        new_max, run_sum, acc, e_acc = _row_grad_online(logits, half, row_scale, den, c, run_max, run_sum, acc, e_acc,
                                                        INPUT_PRECISION, ALL)
    pos_sum, den_n, pos_n = _row_counts(logits, positive, den, pos_sum, den_n, pos_n, BLOCK_N, ALL)
    return new_max, run_sum, acc, e_acc, pos_sum, den_n, pos_n


@triton.jit
def _row_grad_fixed(half, row_scale, den, c, run_max, run_sum, acc, e_acc, INPUT_PRECISION: tl.constexpr,
                    ALL: tl.constexpr):
    """:func:`_row_grad_tile`'s update of a plain tile, where ``run_max`` bounds every logit of the
    denominator in it: no max, no rescaling; the terms by ``tiles.exp_of_cosines`` (``ALL``: all of the
    tile's pairs are in the denominator; else a Ring band's, ``den`` says which)."""
    p = exp_of_cosines(half, row_scale, run_max[:, None], True)  # see _row_grad_tile
    if not ALL:
        p = tl.where(den, p, 0.0)
    run_sum += tl.sum(p, axis=1)
    e_acc += tl.sum(p * half, axis=1)
    acc = tl.dot(p.to(c.dtype), c, acc, input_precision=INPUT_PRECISION)
    return run_max, run_sum, acc, e_acc


@triton.jit
def _row_grad_online(logits, half, row_scale, den, c, run_max, run_sum, acc, e_acc, INPUT_PRECISION: tl.constexpr,
                     ALL: tl.constexpr):
    """:func:`_row_grad_tile`'s online-softmax update (the exponentials feed the products too)."""
    new_max, alpha, p = _online_step(run_max, logits, den, ALL, 1, half, row_scale, ALL, True)  # see _row_grad_tile
    run_sum = run_sum * alpha + tl.sum(p, axis=1)
    e_acc = e_acc * alpha + tl.sum(p * half, axis=1)
    # p <= 1: no scaling needed before the cast to the operands' dtype
    acc = tl.dot(p.to(c.dtype), c, acc * alpha[:, None], input_precision=INPUT_PRECISION)
    return new_max, run_sum, acc, e_acc


@triton.jit
def _contrastive_fwd_kernel(
    inputs, roles, sizes, row_terms, partials, row_products,
    ROLE: tl.constexpr, NORMALIZE: tl.constexpr, COLUMN_TERMS: tl.constexpr, HARD_NEGATIVES: tl.constexpr,
    PAIRWISE_SIGMOID: tl.constexpr, INPUT_PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr, ROW_GRAD: tl.constexpr = False, ACC_D: tl.constexpr = 16, PIPELINE: tl.constexpr = False,
):
    """Argument groups as ``problem.GROUPS`` lists them; ``ROLE`` as ``tiles.ROLE_SWITCHES``. ``PIPELINE``
    (``D <= BLOCK_D`` only, :func:`~contrastive_ops.kernels.config.pipelined`): each tile's product is
    issued one tile ahead (``tiles.tile_dot``), so a tile's epilogue overlaps the next tile's MMA."""
    Q, C, RQ, RC, SCALE, BIAS = inputs
    N, M, M_TOTAL, D, stride_q, stride_c, beta = sizes
    ROW_LSE, ROW_POS, ROW_DEN, ROW_POS_N, ROW_LSE_BETA, ROW_PAIR_LOSS = row_terms
    CH, ROW_DQ, ROW_DSCALE, stride_dq = row_products
    pid = tl.program_id(0)
    num_programs = tl.num_programs(0)
    scale = tl.load(SCALE).to(tl.float32)
    bias = tl.load(BIAS).to(tl.float32) if PAIRWISE_SIGMOID else 0.0
    # the row products' fp16 operand would round e^(S - |scale|) (as small as e^-80) to subnormals or zero:
    # there the running max stays (bf16 has fp32's exponent range)
    MAY_BOUND: tl.constexpr = NORMALIZE and not (ROW_GRAD and CH.dtype.element_ty == tl.float16)
    bounded = logits_bounded(scale, M_TOTAL, BLOCK_N, MAY_BOUND)
    # tiles without per-pair role tests exist only for losses without labels and guides (with a Ring band
    # a plain tile tests the band alone)
    MAY_BE_PLAIN: tl.constexpr = not (ROLE[HAS_LABELS] or ROLE[MASK_LABELS] or ROLE[HAS_GUIDE])
    part_row = pid.to(tl.int64) * M
    for row_block in range(pid, tl.cdiv(N, BLOCK_M), num_programs):
        row0 = row_block * BLOCK_M
        rows = row0 + tl.arange(0, BLOCK_M)
        row_mask = rows < N
        if ROLE[HAS_BAND] and not HARD_NEGATIVES:
            # the row's softmax starts shifted by its band's top (a candidate's logit; -inf for an empty
            # band), so that a plain tile, whose pairs in the denominator are at most that, needs no max:
            # the logit of the band's end in halves (band.half_domain_band), formed as the tiles form it
            h_lo = tl.load(roles[4] + rows, mask=row_mask, other=float("inf"))
            h_hi = tl.load(roles[5] + rows, mask=row_mask, other=float("-inf"))
            rq = row_norms(RQ, rows, row_mask, NORMALIZE)
            top = scale * (tl.where(scale >= 0, h_hi, h_lo) * rq)  # the top end: h_hi, or h_lo below 0
            top = tl.where(scale == 0, 0.0, top)  # every logit 0 (not 0 times an end that overflowed)
            run_max = tl.where(h_lo <= h_hi, top, float("-inf"))
        elif HARD_NEGATIVES:
            run_max = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
        else:  # bounded logits: the rows' softmax starts shifted by their bound (tiles.logits_bounded)
            run_max = tl.where(bounded, tl.abs(scale), float("-inf")) + tl.zeros((BLOCK_M,), dtype=tl.float32)
        run_sum = tl.zeros((BLOCK_M,), dtype=tl.float32)
        beta_max = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
        beta_sum = tl.zeros((BLOCK_M,), dtype=tl.float32)
        pair_loss = tl.zeros((BLOCK_M,), dtype=tl.float32)
        pos_sum = tl.zeros((BLOCK_M,), dtype=tl.float32)
        den_n = tl.zeros((BLOCK_M,), dtype=tl.int32)
        pos_n = tl.zeros((BLOCK_M,), dtype=tl.int32)
        acc = tl.zeros((BLOCK_M, ACC_D), dtype=tl.float32)
        e_acc = tl.zeros((BLOCK_M,), dtype=tl.float32)
        q_block, raw = pipeline_start(Q, C, rows, row_mask, M_TOTAL, D, stride_q, stride_c, BLOCK_M, BLOCK_N,
                                      BLOCK_D, INPUT_PRECISION, PIPELINE)
        for c0 in range(0, M_TOTAL, BLOCK_N):
            cols = c0 + tl.arange(0, BLOCK_N)
            col_mask = cols < M_TOTAL
            cosines, half, rq, raw = pipeline_step(q_block, raw, Q, C, RQ, RC, rows, cols, row_mask, col_mask,
                                                   M_TOTAL, D, stride_q, stride_c, NORMALIZE, BLOCK_M, BLOCK_N,
                                                   BLOCK_D, INPUT_PRECISION, PIPELINE)
            logits = scale * cosines
            row_scale = scale * rq
            plain = False
            if MAY_BE_PLAIN:
                plain = plain_tile(row0, c0, True, rows, row_mask, N, M, M_TOTAL, roles, ROLE, BLOCK_M, BLOCK_N)
            # the same call in both branches: PLAIN is a compile-time switch, the plain test a runtime value
            if ROW_GRAD:
                if plain:
                    run_max, run_sum, acc, e_acc, pos_sum, den_n, pos_n = _row_grad_tile(
                        logits, half, row_scale, rows, cols, row_mask, col_mask, M, roles, CH, stride_c, D, bounded,
                        run_max, run_sum, acc, e_acc, pos_sum, den_n, pos_n, ROLE, INPUT_PRECISION, BLOCK_M, BLOCK_N, ACC_D, True)
                else:
                    run_max, run_sum, acc, e_acc, pos_sum, den_n, pos_n = _row_grad_tile(
                        logits, half, row_scale, rows, cols, row_mask, col_mask, M, roles, CH, stride_c, D, bounded,
                        run_max, run_sum, acc, e_acc, pos_sum, den_n, pos_n, ROLE, INPUT_PRECISION, BLOCK_M, BLOCK_N, ACC_D, False)
            elif plain:
                run_max, run_sum, beta_max, beta_sum, pair_loss, pos_sum, den_n, pos_n = _fwd_tile(
                    logits, half, row_scale, rows, cols, row_mask, col_mask, c0, M, roles, partials, part_row, bias, beta, bounded,
                    scale, run_max, run_sum, beta_max, beta_sum, pair_loss, pos_sum, den_n, pos_n, ROLE, COLUMN_TERMS,
                    HARD_NEGATIVES, PAIRWISE_SIGMOID, BLOCK_M, BLOCK_N, True)
            else:
                run_max, run_sum, beta_max, beta_sum, pair_loss, pos_sum, den_n, pos_n = _fwd_tile(
                    logits, half, row_scale, rows, cols, row_mask, col_mask, c0, M, roles, partials, part_row, bias, beta, bounded,
                    scale, run_max, run_sum, beta_max, beta_sum, pair_loss, pos_sum, den_n, pos_n, ROLE, COLUMN_TERMS,
                    HARD_NEGATIVES, PAIRWISE_SIGMOID, BLOCK_M, BLOCK_N, False)
        tl.store(ROW_LSE + rows, _finish_lse(run_max, run_sum, den_n), mask=row_mask)
        if ROW_GRAD:
            inv_sum = tl.where(run_sum > 0, 1.0 / tl.where(run_sum > 0, run_sum, 1.0), 0.0)
            offs_d = tl.arange(0, ACC_D)
            tl.store(ROW_DQ + rows.to(tl.int64)[:, None] * stride_dq + offs_d[None, :], acc * inv_sum[:, None],
                     mask=row_mask[:, None] & (offs_d < D)[None, :])
            tl.store(ROW_DSCALE + rows, e_acc * row_norms(RQ, rows, row_mask, NORMALIZE) * inv_sum, mask=row_mask)
        if HARD_NEGATIVES:
            tl.store(ROW_LSE_BETA + rows, _finish_lse(beta_max, beta_sum, den_n), mask=row_mask)
        if PAIRWISE_SIGMOID:
            tl.store(ROW_PAIR_LOSS + rows, pair_loss, mask=row_mask)
        tl.store(ROW_POS + rows, pos_sum / tl.maximum(pos_n, 1).to(tl.float32), mask=row_mask)
        tl.store(ROW_DEN + rows, den_n, mask=row_mask)
        tl.store(ROW_POS_N + rows, pos_n, mask=row_mask)


def contrastive_forward(tiles, config, column_programs: int, row_grad: bool = False):
    """Launch the forward over ``tiles`` (a :class:`~contrastive_ops.kernels.problem.TileProblem`).

    Returns a dict of ``[N]`` row terms — fp32 ``row_lse``, ``row_pos``, int32 ``row_den``,
    ``row_pos_n``, and ``row_lse_beta`` (hard negatives) / ``row_pair_loss`` (pairwise sigmoid) or
    None — and, with column terms, ``[M]`` ``col_lse``, ``col_pos`` (fp32), ``col_den_count``,
    ``col_pos_count`` (int32). ``column_programs`` caps the programs (and the ``[P, M]`` partial
    buffers) of a symmetric loss.

    ``row_grad`` (where :func:`~contrastive_ops.kernels.config.row_grad_supported`): also ``row_dq``
    fp32 ``[N, D]``, the softmax-weighted mean of the unit columns ``A_i = Σ_j p_ij·ĉ_j``, and
    ``row_dscale`` fp32 ``[N]``, ``E_i = Σ_j p_ij·<q̂_i, ĉ_j>`` (both 0 for a row with an empty
    denominator).
    """
    t = tiles
    device = t.query.device
    n, m = t.n, t.m
    f32, i32 = torch.float32, torch.int32
    if row_grad and not row_grad_supported(t.flags, t.d):
        raise ValueError(f"row_grad=True needs a row-only loss with one positive per row and D <= "
                         f"{ROW_GRAD_D_MAX}, got D={t.d} and switches {t.flags}")
    out = {
        "row_lse": torch.empty(n, dtype=f32, device=device),
        "row_pos": torch.empty(n, dtype=f32, device=device),
        "row_den_count": torch.empty(n, dtype=i32, device=device),
        "row_pos_count": torch.empty(n, dtype=i32, device=device),
        "row_lse_beta": torch.empty(n, dtype=f32, device=device) if t.flags["HARD_NEGATIVES"] else None,
        "row_pair_loss": torch.empty(n, dtype=f32, device=device) if t.flags["PAIRWISE_SIGMOID"] else None,
    }
    row_blocks = triton.cdiv(n, config.block_m)
    programs = min(row_blocks, column_programs) if t.column_terms else row_blocks
    if t.column_terms:
        part_max = torch.full((programs, m), float("-inf"), dtype=f32, device=device)
        part_sum = torch.zeros((programs, m), dtype=f32, device=device)
        part_pos = torch.zeros((programs, m), dtype=f32, device=device)
        part_den = torch.zeros((programs, m), dtype=i32, device=device)
        part_pos_n = torch.zeros((programs, m), dtype=i32, device=device)
    else:
        part_max = part_sum = part_pos = part_den = part_pos_n = out["row_lse"]  # never read
    unused = out["row_lse"]  # placeholder pointer for outputs a switch leaves out
    if row_grad:
        c_hat = unit_rows(t.columns, t.rc if t.flags["NORMALIZE"] else None)
        out["row_dq"] = torch.empty((n, t.d), dtype=f32, device=device)
        out["row_dscale"] = torch.empty(n, dtype=f32, device=device)
        row_grad_args = (c_hat, out["row_dq"], out["row_dscale"], t.d)
        row_grad_meta = {"ROW_GRAD": True, "ACC_D": max(16, triton.next_power_of_2(t.d))}
    else:
        row_grad_args = (t.columns, unused, unused, t.d)
        row_grad_meta = {}
    row_terms = (out["row_lse"], out["row_pos"], out["row_den_count"], out["row_pos_count"],
                 unused if out["row_lse_beta"] is None else out["row_lse_beta"],
                 unused if out["row_pair_loss"] is None else out["row_pair_loss"])
    _contrastive_fwd_kernel[(programs,)](
        t.inputs, t.roles, t.sizes, row_terms, (part_max, part_sum, part_pos, part_den, part_pos_n), row_grad_args,
        **t.constexprs(), **config.kernel_kwargs(t.d), **row_grad_meta, PIPELINE=pipelined(config, t.d),
    )
    if t.column_terms:  # fixed-order combination of the programs' partials (deterministic)
        col_den = part_den.sum(dim=0, dtype=i32)
        part_lse = torch.where(part_sum > 0, part_max + torch.log(part_sum), torch.full_like(part_sum, float("-inf")))
        col_lse = torch.logsumexp(part_lse, dim=0)
        col_pos_n = part_pos_n.sum(dim=0, dtype=i32)
        out.update(
            col_lse=torch.where(col_den > 0, col_lse, torch.zeros_like(col_lse)),
            col_pos=part_pos.sum(dim=0) / col_pos_n.clamp(min=1).to(f32),
            col_den_count=col_den,
            col_pos_count=col_pos_n,
        )
    return out
