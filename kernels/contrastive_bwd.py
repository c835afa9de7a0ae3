"""Backward of the tiled core: a dQ pass over row blocks and a dC pass over column blocks.

Each pass recomputes its tiles' logits once and forms the full ``dL/dS`` (row and column terms),
then ``dQ̂ = s·dS·Ĉ`` (row programs) or ``dĈ = s·dSᵀ·Q̂`` (column programs). A program owns its
output rows, so no atomics are used and two runs give bit-identical gradients. The gradient of
the scale, ``Σ dS_ij·<q̂_i, ĉ_j>``, comes from the dQ pass as one partial per program, summed in
a fixed order.

Both passes accumulate in fp32. When ``BLOCK_D >= D`` the accumulator lives in registers across
the whole loop; otherwise each tile's contribution, one ``BLOCK_D`` slice at a time, is added to
the program's own rows of an fp32 output in global memory (any D, at the price of that traffic).
"""
import torch
import triton
import triton.language as tl

from .tiles import tile_cosines, tile_denominator, tile_logit_grad, tile_roles


@triton.jit
def _contrastive_bwd_dq_kernel(
    Q, C, RQ, RC, SCALE, BIAS, POS, SELF, ROW_LABELS, COL_LABELS, BAND_LO, BAND_HI,
    ROW_LSE, G_ROW_LSE, G_ROW_POS_W, ROW_LSE_BETA, G_ROW_LSE_BETA, G_ROW_PAIR, COL_LSE, G_COL_LSE, G_COL_POS_W,
    DQ, DSCALE_PART, DBIAS_PART,
    N, M, M_TOTAL, D, stride_q, stride_c, beta, stride_dq,
    HAS_POS: tl.constexpr, HAS_LABELS: tl.constexpr, MASK_LABELS: tl.constexpr, HAS_SELF: tl.constexpr,
    KEY_NEGATIVES: tl.constexpr, DECOUPLED: tl.constexpr, HAS_BAND: tl.constexpr, NORMALIZE: tl.constexpr,
    COLUMN_TERMS: tl.constexpr, HARD_NEGATIVES: tl.constexpr, PAIRWISE_SIGMOID: tl.constexpr,
    INPUT_PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    ONE_D_BLOCK: tl.constexpr,
):
    row_block = tl.program_id(0)
    scale = tl.load(SCALE).to(tl.float32)
    bias = tl.load(BIAS).to(tl.float32) if PAIRWISE_SIGMOID else 0.0
    rows = row_block * BLOCK_M + tl.arange(0, BLOCK_M)
    row_mask = rows < N
    offs_d = tl.arange(0, BLOCK_D)
    dq_rows = DQ + rows.to(tl.int64)[:, None] * stride_dq
    acc = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)  # used when one D block holds all of D
    dscale = tl.zeros((BLOCK_M,), dtype=tl.float32)
    dbias = tl.zeros((BLOCK_M,), dtype=tl.float32)
    for c0 in range(0, M_TOTAL, BLOCK_N):
        cols = c0 + tl.arange(0, BLOCK_N)
        col_mask = cols < M_TOTAL
        cosines = tile_cosines(Q, C, RQ, RC, rows, cols, row_mask, col_mask, D, stride_q, stride_c,
                               NORMALIZE, BLOCK_M, BLOCK_N, BLOCK_D, INPUT_PRECISION)
        logits = scale * cosines
        positive, candidate = tile_roles(rows, cols, row_mask, col_mask, M, POS, SELF, ROW_LABELS, COL_LABELS,
                                         HAS_POS, HAS_LABELS, MASK_LABELS, HAS_SELF, KEY_NEGATIVES, BLOCK_M, BLOCK_N)
        den = tile_denominator(positive, candidate, logits, rows, row_mask, BAND_LO, BAND_HI, HAS_BAND, DECOUPLED)
        grad, pair_grad = tile_logit_grad(
            logits, positive, candidate, den, rows, row_mask, cols, col_mask, M, ROW_LSE, G_ROW_LSE, G_ROW_POS_W,
            ROW_LSE_BETA, G_ROW_LSE_BETA, G_ROW_PAIR, bias, beta, COL_LSE, G_COL_LSE, G_COL_POS_W,
            COLUMN_TERMS, HARD_NEGATIVES, PAIRWISE_SIGMOID)
        dscale += tl.sum(grad * cosines, axis=1)
        if PAIRWISE_SIGMOID:
            dbias += tl.sum(pair_grad, axis=1)
        if NORMALIZE:  # dQ̂ = s·dS·Ĉ with Ĉ = diag(rc)·C: fold rc into dS
            grad = grad * tl.load(RC + cols, mask=col_mask, other=0.0)[None, :]
        grad = grad.to(C.dtype.element_ty)
        c_cols = C + cols.to(tl.int64)[:, None] * stride_c
        for d0 in range(0, D, BLOCK_D):
            d_mask = (d0 + offs_d) < D
            c = tl.load(c_cols + (d0 + offs_d)[None, :], mask=col_mask[:, None] & d_mask[None, :], other=0.0)
            if ONE_D_BLOCK:
                acc = tl.dot(grad, c, acc, input_precision=INPUT_PRECISION)
            else:
                out = dq_rows + (d0 + offs_d)[None, :]
                out_mask = row_mask[:, None] & d_mask[None, :]
                part = tl.dot(grad, c, input_precision=INPUT_PRECISION)
                tl.store(out, tl.load(out, mask=out_mask, other=0.0) + part, mask=out_mask)
    if ONE_D_BLOCK:
        tl.store(dq_rows + offs_d[None, :], acc * scale, mask=row_mask[:, None] & (offs_d < D)[None, :])
    else:
        for d0 in range(0, D, BLOCK_D):
            out = dq_rows + (d0 + offs_d)[None, :]
            out_mask = row_mask[:, None] & ((d0 + offs_d) < D)[None, :]
            tl.store(out, tl.load(out, mask=out_mask, other=0.0) * scale, mask=out_mask)
    tl.store(DSCALE_PART + row_block, tl.sum(dscale, axis=0))
    tl.store(DBIAS_PART + row_block, tl.sum(dbias, axis=0))


@triton.jit
def _contrastive_bwd_dc_kernel(
    Q, C, RQ, RC, SCALE, BIAS, POS, SELF, ROW_LABELS, COL_LABELS, BAND_LO, BAND_HI,
    ROW_LSE, G_ROW_LSE, G_ROW_POS_W, ROW_LSE_BETA, G_ROW_LSE_BETA, G_ROW_PAIR, COL_LSE, G_COL_LSE, G_COL_POS_W,
    DC,
    N, M, M_TOTAL, D, stride_q, stride_c, beta, stride_dc,
    HAS_POS: tl.constexpr, HAS_LABELS: tl.constexpr, MASK_LABELS: tl.constexpr, HAS_SELF: tl.constexpr,
    KEY_NEGATIVES: tl.constexpr, DECOUPLED: tl.constexpr, HAS_BAND: tl.constexpr, NORMALIZE: tl.constexpr,
    COLUMN_TERMS: tl.constexpr, HARD_NEGATIVES: tl.constexpr, PAIRWISE_SIGMOID: tl.constexpr,
    INPUT_PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    ONE_D_BLOCK: tl.constexpr,
):
    col_block = tl.program_id(0)
    scale = tl.load(SCALE).to(tl.float32)
    bias = tl.load(BIAS).to(tl.float32) if PAIRWISE_SIGMOID else 0.0
    cols = col_block * BLOCK_N + tl.arange(0, BLOCK_N)
    col_mask = cols < M_TOTAL
    offs_d = tl.arange(0, BLOCK_D)
    dc_cols = DC + cols.to(tl.int64)[:, None] * stride_dc
    acc = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
    for r0 in range(0, N, BLOCK_M):
        rows = r0 + tl.arange(0, BLOCK_M)
        row_mask = rows < N
        # the tile in the forward's orientation (rows × cols): the very same logits
        logits = scale * tile_cosines(Q, C, RQ, RC, rows, cols, row_mask, col_mask, D, stride_q, stride_c,
                                      NORMALIZE, BLOCK_M, BLOCK_N, BLOCK_D, INPUT_PRECISION)
        positive, candidate = tile_roles(rows, cols, row_mask, col_mask, M, POS, SELF, ROW_LABELS, COL_LABELS,
                                         HAS_POS, HAS_LABELS, MASK_LABELS, HAS_SELF, KEY_NEGATIVES, BLOCK_M, BLOCK_N)
        den = tile_denominator(positive, candidate, logits, rows, row_mask, BAND_LO, BAND_HI, HAS_BAND, DECOUPLED)
        grad, _ = tile_logit_grad(
            logits, positive, candidate, den, rows, row_mask, cols, col_mask, M, ROW_LSE, G_ROW_LSE, G_ROW_POS_W,
            ROW_LSE_BETA, G_ROW_LSE_BETA, G_ROW_PAIR, bias, beta, COL_LSE, G_COL_LSE, G_COL_POS_W,
            COLUMN_TERMS, HARD_NEGATIVES, PAIRWISE_SIGMOID)
        if NORMALIZE:  # dĈ = s·dSᵀ·Q̂ with Q̂ = diag(rq)·Q: fold rq into dS
            grad = grad * tl.load(RQ + rows, mask=row_mask, other=0.0)[:, None]
        grad_t = tl.trans(grad.to(Q.dtype.element_ty))
        q_rows = Q + rows.to(tl.int64)[:, None] * stride_q
        for d0 in range(0, D, BLOCK_D):
            d_mask = (d0 + offs_d) < D
            q = tl.load(q_rows + (d0 + offs_d)[None, :], mask=row_mask[:, None] & d_mask[None, :], other=0.0)
            if ONE_D_BLOCK:
                acc = tl.dot(grad_t, q, acc, input_precision=INPUT_PRECISION)
            else:
                out = dc_cols + (d0 + offs_d)[None, :]
                out_mask = col_mask[:, None] & d_mask[None, :]
                part = tl.dot(grad_t, q, input_precision=INPUT_PRECISION)
                tl.store(out, tl.load(out, mask=out_mask, other=0.0) + part, mask=out_mask)
    if ONE_D_BLOCK:
        tl.store(dc_cols + offs_d[None, :], acc * scale, mask=col_mask[:, None] & (offs_d < D)[None, :])
    else:
        for d0 in range(0, D, BLOCK_D):
            out = dc_cols + (d0 + offs_d)[None, :]
            out_mask = col_mask[:, None] & ((d0 + offs_d) < D)[None, :]
            tl.store(out, tl.load(out, mask=out_mask, other=0.0) * scale, mask=out_mask)


def contrastive_backward(tiles, config, row, col):
    """Gradients with respect to the unit rows: ``dQ̂ [N, D]``, ``dĈ [M_total, D]`` (fp32), and the
    scale's and the bias's gradients (0-d fp32).

    ``row``: dict of ``[N]`` fp32 vectors ``lse``, ``g_lse``, ``g_pos_w`` (the mean-positive
    gradient divided by the positive count) and, as the switches need them, ``lse_beta``,
    ``g_lse_beta``, ``g_pair``; ``col``: ``lse``, ``g_lse``, ``g_pos_w`` ``[M]`` for symmetric losses.
    """
    t = tiles
    device = t.query.device
    d = t.d
    one_block = config.block_d_for(d) >= d
    alloc = torch.empty if one_block else torch.zeros  # the sliced path adds into its output
    dq = alloc((t.n, d), dtype=torch.float32, device=device)
    dc = alloc((t.m_total, d), dtype=torch.float32, device=device)
    row_blocks = triton.cdiv(t.n, config.block_m)
    dscale_part = torch.empty(row_blocks, dtype=torch.float32, device=device)
    dbias_part = torch.empty(row_blocks, dtype=torch.float32, device=device)
    unused = row["lse"]  # placeholder pointer for vectors a switch leaves out
    vectors = [row["lse"], row["g_lse"], row["g_pos_w"]] + [
        row.get(name, unused) for name in ("lse_beta", "g_lse_beta", "g_pair")] + [
        col.get(name, unused) for name in ("lse", "g_lse", "g_pos_w")]
    common = (t.query, t.columns, t.rq, t.rc, t.scale, t.bias, t.pos_index, t.self_index, t.row_labels,
              t.col_labels, t.band_lo, t.band_hi, *vectors)
    sizes = (t.n, t.m, t.m_total, d, t.query.stride(0), t.columns.stride(0), t.beta)
    meta = {**t.constexprs(), **config.kernel_kwargs(d), "ONE_D_BLOCK": one_block}
    _contrastive_bwd_dq_kernel[(row_blocks,)](*common, dq, dscale_part, dbias_part, *sizes, dq.stride(0), **meta)
    _contrastive_bwd_dc_kernel[(triton.cdiv(t.m_total, config.block_n),)](*common, dc, *sizes, dc.stride(0), **meta)
    return dq, dc, dscale_part.sum(), dbias_part.sum()
