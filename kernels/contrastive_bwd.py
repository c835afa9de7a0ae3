"""Backward of the tiled core: ``dL/dS`` of every tile, pushed back through the two products.

Two routes, both with fp32 accumulation, a fixed order and no atomics (two runs give bit-identical
gradients):

* **registers** (``D <= BLOCK_D``, i.e. D up to 256 with ``BLOCK_D`` = D rounded up to a power of
  two): a dQ pass over row blocks and a dC pass over column blocks, each recomputing its tiles'
  logits once and keeping its ``[BLOCK, D]`` fp32 accumulator in registers;
* **chunks** (larger D, where such an accumulator would spill): a fused kernel writes ``dL/dS`` of a
  chunk of rows × columns once (every role rule, column term, hard-negative, sigmoid and Ring rule
  inside it), and the GEMM library (``torch.mm`` → cuBLAS on a GPU) forms ``dQ̂ += dS·Ĉ`` and
  ``dĈ += dSᵀ·Q̂`` for it. The chunk is bounded by :func:`~contrastive_ops.kernels.config.ds_chunk_bytes`
  (64 MiB by default), never N × M.

fp16/bf16 dS is stored multiplied by a power of two ``σ`` (:func:`ds_scale`) chosen from an upper
bound of ``|dL/dS|``, so that the small entries of a large batch (``p/N`` with mean reduction) stay
normal fp16 numbers; the products are divided by ``σ`` in fp32 (exact: a power of two).

The scale's gradient ``Σ dS_ij·<q̂_i, ĉ_j>`` comes from one partial per program (dQ pass or dS
chunk), summed in a fixed order.
"""
import torch
import triton
import triton.language as tl

from .config import ds_chunk_bytes, pipelined
from .normalize import unit_rows
from .tiles import (
    HAS_GUIDE,
    HAS_LABELS,
    MASK_LABELS,
    column_block_operand,
    pipeline_start,
    pipeline_step,
    plain_tile,
    tile_cosine_parts,
    tile_denominator,
    tile_dot_rows,
    tile_logit_grad,
    tile_norms,
    tile_roles,
)

#: largest power of two times the dS bound that fp16 dS may reach (fp16's max is 65504 < 2^16)
_DS_TARGET = 2.0 ** 14


@triton.jit
def _tile_grad(cosines, half, row_scale, scale, bias, beta, sigma, rows, cols, row_mask, col_mask, M, roles, grads,
               ROLE: tl.constexpr, COLUMN_TERMS: tl.constexpr, HARD_NEGATIVES: tl.constexpr, PAIRWISE_SIGMOID: tl.constexpr,
               BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, PLAIN: tl.constexpr, PAIR_LOSS: tl.constexpr = False,
               SHARED_EXP: tl.constexpr = False):
    """``(σ·dL/dS, σ·dL/dS of the sigmoid term, the rows' pair losses)`` of the tile ``rows × cols`` (fp32)
    from its cosines, recomputed exactly as the forward computes them (``σ = sigma``: the power of two of
    :func:`ds_scale`, applied to the incoming gradients, which gives the same bits as scaling each pair);
    ``half`` and ``row_scale = scale·rq`` as ``tiles.exp_of_cosines`` takes them; ``PLAIN`` as
    ``tiles.plain_tile``; the pair losses with ``PAIR_LOSS`` and the exponentials' share with ``SHARED_EXP``
    (``tiles.tile_logit_grad``)."""
    logits = scale * cosines
    positive, candidate = tile_roles(rows, cols, row_mask, col_mask, M, roles, ROLE, BLOCK_M, BLOCK_N, PLAIN)
    den = tile_denominator(positive, candidate, half, rows, row_mask, roles, ROLE)
    return tile_logit_grad(logits, half, row_scale, positive, candidate, den, rows, row_mask, cols, col_mask, M, grads,
                           bias, beta, sigma, COLUMN_TERMS, HARD_NEGATIVES, PAIRWISE_SIGMOID, PLAIN,
                           PLAIN and not HARD_NEGATIVES, PAIR_LOSS, SHARED_EXP)


@triton.jit
def _tile_grad_any(inputs, roles, sizes, grads, scale, bias, sigma, row0, c0, inside, rows, cols, row_mask, col_mask,
                   ROLE: tl.constexpr, NORMALIZE: tl.constexpr, COLUMN_TERMS: tl.constexpr,
                   HARD_NEGATIVES: tl.constexpr, PAIRWISE_SIGMOID: tl.constexpr, INPUT_PRECISION: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, PAIR_LOSS: tl.constexpr = False,
                   SHARED_EXP: tl.constexpr = False):
    """``(σ·dL/dS, cosines, σ·dL/dS of the sigmoid term, the rows' pair losses)`` of the tile at ``(row0,
    c0)``: the cosines once, then the gradient by the plain branch where the tile allows it (no per-pair
    role tests) and ``inside`` (the caller's masks cut nothing off the tile)."""
    Q, C, RQ, RC, _, _ = inputs
    D, stride_q, stride_c = sizes[3], sizes[4], sizes[5]
    cosines, half, rq = tile_cosine_parts(Q, C, RQ, RC, rows, cols, row_mask, col_mask, D, stride_q, stride_c,
                                          NORMALIZE, BLOCK_M, BLOCK_N, BLOCK_D, INPUT_PRECISION)
    grad, pair_grad, pair_loss = _tile_grad_of(cosines, half, rq, roles, sizes, grads, scale, bias, sigma, row0, c0,
                                               inside, rows, cols, row_mask, col_mask, ROLE, COLUMN_TERMS,
                                               HARD_NEGATIVES, PAIRWISE_SIGMOID, BLOCK_M, BLOCK_N, PAIR_LOSS,
                                               SHARED_EXP)
    return grad, cosines, pair_grad, pair_loss


@triton.jit
def _tile_grad_of(cosines, half, rq, roles, sizes, grads, scale, bias, sigma, row0, c0, inside, rows, cols, row_mask,
                  col_mask, ROLE: tl.constexpr, COLUMN_TERMS: tl.constexpr, HARD_NEGATIVES: tl.constexpr,
                  PAIRWISE_SIGMOID: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                  PAIR_LOSS: tl.constexpr = False, SHARED_EXP: tl.constexpr = False):
    """``(σ·dL/dS, σ·dL/dS of the sigmoid term, the rows' pair losses)``: :func:`_tile_grad_any` on the
    tile's ``(cosines, half, rq)`` already made (``tiles.tile_norms``)."""
    N, M, M_TOTAL, beta = sizes[0], sizes[1], sizes[2], sizes[6]
    # a plain tile with a Ring band tests the band alone (tiles.tile_denominator)
    MAY_BE_PLAIN: tl.constexpr = not (ROLE[HAS_LABELS] or ROLE[MASK_LABELS] or ROLE[HAS_GUIDE])
    plain = False
    if MAY_BE_PLAIN:
        plain = plain_tile(row0, c0, inside, rows, row_mask, N, M, M_TOTAL, roles, ROLE, BLOCK_M, BLOCK_N)
    row_scale = scale * rq
    # the same call in both branches: PLAIN is a compile-time switch, the plain test a runtime value
    if plain:
        grad, pair_grad, pair_loss = _tile_grad(cosines, half, row_scale, scale, bias, beta, sigma, rows, cols,
                                                row_mask, col_mask, M, roles, grads, ROLE, COLUMN_TERMS,
                                                HARD_NEGATIVES, PAIRWISE_SIGMOID, BLOCK_M, BLOCK_N, True, PAIR_LOSS,
                                                SHARED_EXP)
    else:
        grad, pair_grad, pair_loss = _tile_grad(cosines, half, row_scale, scale, bias, beta, sigma, rows, cols,
                                                row_mask, col_mask, M, roles, grads, ROLE, COLUMN_TERMS,
                                                HARD_NEGATIVES, PAIRWISE_SIGMOID, BLOCK_M, BLOCK_N, False, PAIR_LOSS,
                                                SHARED_EXP)
    return grad, pair_grad, pair_loss


@triton.jit
def _contrastive_bwd_dq_kernel(
    inputs, roles, sizes, grads, dq_out,
    ROLE: tl.constexpr, NORMALIZE: tl.constexpr, COLUMN_TERMS: tl.constexpr, HARD_NEGATIVES: tl.constexpr,
    PAIRWISE_SIGMOID: tl.constexpr, INPUT_PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr, PIPELINE: tl.constexpr = False,
):
    """Register route, rows: ``dQ̂ = s·dS·Ĉ`` for one row block (``D <= BLOCK_D``). Argument groups as
    ``problem.GROUPS`` lists them. ``PIPELINE``: each tile's cosines issued one tile ahead (as the
    forward's; the dC pass issues them one row block ahead)."""
    # (a name bound here must not be rebound in a loop: no ``_`` for the unused members)
    Q, C, RQ, RC, SCALE, BIAS = inputs[0], inputs[1], inputs[2], inputs[3], inputs[4], inputs[5]
    N, M_TOTAL, D, stride_q, stride_c = sizes[0], sizes[2], sizes[3], sizes[4], sizes[5]
    CH, DS_SCALE, DQ, DSCALE_PART, DBIAS_PART, stride_dq = dq_out
    row_block = tl.program_id(0)
    scale = tl.load(SCALE).to(tl.float32)
    bias = tl.load(BIAS).to(tl.float32) if PAIRWISE_SIGMOID else 0.0
    sigma = tl.load(DS_SCALE)
    rows = row_block * BLOCK_M + tl.arange(0, BLOCK_M)
    row_mask = rows < N
    offs_d = tl.arange(0, BLOCK_D)
    d_mask = offs_d < D
    acc = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
    dscale = tl.zeros((BLOCK_M,), dtype=tl.float32)
    dbias = tl.zeros((BLOCK_M,), dtype=tl.float32)
    q_block, raw = pipeline_start(Q, C, rows, row_mask, M_TOTAL, D, stride_q, stride_c, BLOCK_M, BLOCK_N, BLOCK_D,
                                  INPUT_PRECISION, PIPELINE)
    for c0 in range(0, M_TOTAL, BLOCK_N):
        cols = c0 + tl.arange(0, BLOCK_N)
        col_mask = cols < M_TOTAL
        cosines, half, rq, raw = pipeline_step(q_block, raw, Q, C, RQ, RC, rows, cols, row_mask, col_mask, M_TOTAL, D,
                                               stride_q, stride_c, NORMALIZE, BLOCK_M, BLOCK_N, BLOCK_D,
                                               INPUT_PRECISION, PIPELINE)
        grad, pair_grad, _no_loss = _tile_grad_of(cosines, half, rq, roles, sizes, grads, scale, bias, sigma,
                                                  row_block * BLOCK_M, c0, True, rows, cols, row_mask, col_mask, ROLE,
                                                  COLUMN_TERMS, HARD_NEGATIVES, PAIRWISE_SIGMOID, BLOCK_M, BLOCK_N)
        dscale += tl.sum(grad * cosines, axis=1)  # σ times (a power of two: divided out at the end)
        if PAIRWISE_SIGMOID:
            dbias += tl.sum(pair_grad, axis=1)
        # dQ̂ = s·dS·Ĉ on the unit rows CH (not rc folded into dS: σ·dS·rc could overflow fp16)
        c = tl.load(CH + cols.to(tl.int64)[:, None] * stride_c + offs_d[None, :],
                    mask=col_mask[:, None] & d_mask[None, :], other=0.0)
        acc = tl.dot(grad.to(C.dtype.element_ty), c, acc, input_precision=INPUT_PRECISION)
    tl.store(DQ + rows.to(tl.int64)[:, None] * stride_dq + offs_d[None, :], acc * (scale / sigma),
             mask=row_mask[:, None] & d_mask[None, :])
    tl.store(DSCALE_PART + row_block, tl.sum(dscale, axis=0) / sigma)
    tl.store(DBIAS_PART + row_block, tl.sum(dbias, axis=0) / sigma)


@triton.jit
def _contrastive_bwd_dc_kernel(
    inputs, roles, sizes, grads, dc_out,
    ROLE: tl.constexpr, NORMALIZE: tl.constexpr, COLUMN_TERMS: tl.constexpr, HARD_NEGATIVES: tl.constexpr,
    PAIRWISE_SIGMOID: tl.constexpr, INPUT_PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr, PIPELINE: tl.constexpr = False,
):
    """Register route, columns: ``dĈ = s·dSᵀ·Q̂`` for one column block (``D <= BLOCK_D``). Argument
    groups as ``problem.GROUPS`` lists them. Its epilogue is one exponential per pair and its cast: the
    ``ex2`` unit binds, so plain tiles share their exponentials with the FP32 pipeline
    (``tiles.exp2_shared``)."""
    # (a name bound here must not be rebound in a loop: no ``_`` for the unused members)
    Q, C, RQ, RC, SCALE, BIAS = inputs[0], inputs[1], inputs[2], inputs[3], inputs[4], inputs[5]
    N, M_TOTAL, D, stride_q, stride_c = sizes[0], sizes[2], sizes[3], sizes[4], sizes[5]
    QH, DS_SCALE, DC, stride_dc = dc_out
    col_block = tl.program_id(0)
    scale = tl.load(SCALE).to(tl.float32)
    bias = tl.load(BIAS).to(tl.float32) if PAIRWISE_SIGMOID else 0.0
    sigma = tl.load(DS_SCALE)
    cols = col_block * BLOCK_N + tl.arange(0, BLOCK_N)
    col_mask = cols < M_TOTAL
    offs_d = tl.arange(0, BLOCK_D)
    d_mask = offs_d < D
    acc = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
    first = tl.arange(0, BLOCK_M)
    # row addresses advanced by a block per tile (no per-row 64-bit products in the tile loop)
    step = BLOCK_M * stride_q.to(tl.int64)
    qh_rows = QH + first.to(tl.int64)[:, None] * stride_q + offs_d[None, :]
    if PIPELINE:
        c_block = column_block_operand(C, cols, col_mask, D, stride_c, BLOCK_D)
        q_rows = Q + first.to(tl.int64)[:, None] * stride_q + offs_d[None, :]
        raw_next = tile_dot_rows(q_rows, first < N, d_mask, c_block, BLOCK_M, BLOCK_N, INPUT_PRECISION)
    for r0 in range(0, N, BLOCK_M):
        rows = r0 + first
        row_mask = rows < N
        # the tile in the forward's orientation (rows × cols): the very same logits
        if PIPELINE:
            raw = raw_next
            ahead = rows + BLOCK_M  # past the last block: all masked, a product of zeros never read
            q_rows += step
            raw_next = tile_dot_rows(q_rows, ahead < N, d_mask, c_block, BLOCK_M, BLOCK_N, INPUT_PRECISION)
            cosines, half, rq = tile_norms(raw, RQ, RC, rows, cols, row_mask, col_mask, NORMALIZE)
            grad = _tile_grad_of(cosines, half, rq, roles, sizes, grads, scale, bias, sigma, r0, col_block * BLOCK_N,
                                 True, rows, cols, row_mask, col_mask, ROLE, COLUMN_TERMS, HARD_NEGATIVES,
                                 PAIRWISE_SIGMOID, BLOCK_M, BLOCK_N, False, True)[0]
        else:
            grad = _tile_grad_any(
                inputs, roles, sizes, grads, scale, bias, sigma, r0, col_block * BLOCK_N, True, rows, cols, row_mask,
                col_mask, ROLE, NORMALIZE, COLUMN_TERMS, HARD_NEGATIVES, PAIRWISE_SIGMOID, INPUT_PRECISION, BLOCK_M,
                BLOCK_N, BLOCK_D, False, True)[0]
        # dĈ = s·dSᵀ·Q̂ on the unit rows QH
        q_hat = tl.load(qh_rows, mask=row_mask[:, None] & d_mask[None, :], other=0.0)
        qh_rows += step
        acc = tl.dot(tl.trans(grad.to(Q.dtype.element_ty)), q_hat, acc, input_precision=INPUT_PRECISION)
    tl.store(DC + cols.to(tl.int64)[:, None] * stride_dc + offs_d[None, :], acc * (scale / sigma),
             mask=col_mask[:, None] & d_mask[None, :])


@triton.jit
def _contrastive_bwd_ds_kernel(
    inputs, roles, sizes, grads, ds_out, pair_out,
    ROLE: tl.constexpr, NORMALIZE: tl.constexpr, COLUMN_TERMS: tl.constexpr, HARD_NEGATIVES: tl.constexpr,
    PAIRWISE_SIGMOID: tl.constexpr, INPUT_PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr, PAIR_LOSS: tl.constexpr = False,
):
    """Chunk route: ``σ·dL/dS`` of one tile of the chunk ``[row0, row0 + chunk_rows) × [col0, col0 +
    chunk_cols)``, written to ``DS [chunk_rows, chunk_cols]`` in its dtype (positions past the chunk
    or the matrix are not written), and the tile's partials of the scale's and bias's gradients.
    ``PAIR_LOSS`` (SigLIP's gradient formed in the forward, :func:`pair_forward`): also the rows' pair
    losses over the tile, ``LOSS_PART[local row, tile column]``. Argument groups as ``problem.GROUPS``
    lists them."""
    SCALE, BIAS = inputs[4], inputs[5]
    N, M_TOTAL = sizes[0], sizes[2]
    DS_SCALE, DS, DSCALE_PART, DBIAS_PART, stride_ds, row0, col0, chunk_rows, chunk_cols = ds_out
    tile_m = tl.program_id(0)
    tile_n = tl.program_id(1)
    scale = tl.load(SCALE).to(tl.float32)
    bias = tl.load(BIAS).to(tl.float32) if PAIRWISE_SIGMOID else 0.0
    sigma = tl.load(DS_SCALE)
    local_rows = tile_m * BLOCK_M + tl.arange(0, BLOCK_M)
    local_cols = tile_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rows = row0 + local_rows
    cols = col0 + local_cols
    row_mask = (local_rows < chunk_rows) & (rows < N)
    col_mask = (local_cols < chunk_cols) & (cols < M_TOTAL)
    inside = ((tile_m + 1) * BLOCK_M <= chunk_rows) & ((tile_n + 1) * BLOCK_N <= chunk_cols)
    grad, cosines, pair_grad, pair_loss = _tile_grad_any(
        inputs, roles, sizes, grads, scale, bias, sigma, row0 + tile_m * BLOCK_M, col0 + tile_n * BLOCK_N, inside, rows,
        cols, row_mask, col_mask, ROLE, NORMALIZE, COLUMN_TERMS, HARD_NEGATIVES, PAIRWISE_SIGMOID, INPUT_PRECISION,
        BLOCK_M, BLOCK_N, BLOCK_D, PAIR_LOSS)
    if PAIR_LOSS:
        LOSS_PART, stride_lp = pair_out
        tl.store(LOSS_PART + local_rows.to(tl.int64) * stride_lp + tile_n, pair_loss, mask=row_mask)
    out = DS + local_rows.to(tl.int64)[:, None] * stride_ds + local_cols[None, :]
    tl.store(out, grad.to(DS.dtype.element_ty), mask=row_mask[:, None] & col_mask[None, :])
    part = tile_m * tl.num_programs(1) + tile_n
    # σ is a power of two: dividing it out of the sums gives the bits of the unscaled sums
    tl.store(DSCALE_PART + part, tl.sum(tl.sum(grad * cosines, axis=1), axis=0) / sigma)
    if PAIRWISE_SIGMOID:
        tl.store(DBIAS_PART + part, tl.sum(tl.sum(pair_grad, axis=1), axis=0) / sigma)
    else:
        tl.store(DBIAS_PART + part, 0.0)


def ds_scale(row: dict, col: dict, beta: float, dtype: torch.dtype) -> torch.Tensor:
    """0-d fp32 ``σ``: 1 for fp32 dS; for fp16/bf16 the power of two that takes the bound
    ``max_i Σ|row terms| + max_j Σ|column terms|`` of ``|dL/dS|`` (probabilities and sigmoids are at
    most 1) to ``2^14``. On the device, no host sync."""
    device = row["g_lse"].device
    if dtype == torch.float32 or row["g_lse"].numel() == 0:
        return torch.ones((), dtype=torch.float32, device=device)
    bound = (1.0 + abs(beta)) * row["g_lse"].abs() + row["g_pos_w"].abs()
    if "g_lse_beta" in row:
        bound = bound + abs(beta) * row["g_lse_beta"].abs()
    if "g_pair" in row:
        bound = bound + row["g_pair"].abs()
    bound = bound.max()
    if col and col["g_lse"].numel():
        bound = bound + (col["g_lse"].abs() + col["g_pos_w"].abs()).max()
    exponent = torch.floor(torch.log2(_DS_TARGET / bound.clamp(min=2.0 ** -100)))
    return torch.exp2(exponent.clamp(-100.0, 100.0)).to(torch.float32)


def _accumulate_product(out: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    """``out += a @ b`` with fp32 accumulation: fp32 operands by ``addmm_`` into ``out``; fp16/bf16 on a
    GPU the product straight into fp32 (``torch.mm(..., out_dtype=torch.float32)``), or where this torch
    lacks it, in the input dtype (fp32 accumulation inside cuBLAS, one rounding per chunk); elsewhere
    (CPU, tests) on upcast operands."""
    if a.dtype == torch.float32 or not a.is_cuda:
        out.addmm_(a.float(), b.float())
        return
    if _MM_OUT_DTYPE.get("ok", True):
        try:
            out.add_(torch.mm(a, b, out_dtype=torch.float32))
            return
        except (TypeError, RuntimeError, NotImplementedError):
            _MM_OUT_DTYPE["ok"] = False
    out.add_(torch.mm(a, b))


_MM_OUT_DTYPE: dict = {}  # whether this torch's mm takes out_dtype, learned on first use


def chunk_shape(n: int, m_total: int, itemsize: int, config) -> tuple[int, int]:
    """``(rows, cols)`` of a dS chunk: at most :func:`ds_chunk_bytes`, whole tiles, columns first
    (long GEMM reductions), at least one tile each way."""
    budget = max(ds_chunk_bytes(), config.block_m * config.block_n * itemsize)
    cols = min(triton.cdiv(m_total, config.block_n) * config.block_n,
               max(config.block_n, budget // (config.block_m * itemsize) // config.block_n * config.block_n), 8192)
    rows = max(config.block_m, budget // (cols * itemsize) // config.block_m * config.block_m)
    rows = min(rows, triton.cdiv(n, config.block_m) * config.block_m)
    return rows, cols


def uses_registers(config, d: int) -> bool:
    """Whether the backward keeps its accumulators in registers (one ``BLOCK_D`` holds D)."""
    return config.block_d_for(d) >= d


def rows_from_forward(tiles, row, row_dq, row_dscale, q_hat):
    """``(dQ̂ [N, D] fp32, the rows' share of the scale's gradient)`` from the forward's row-gradient
    products (``contrastive_fwd`` with ``row_grad``): ``dq̂_i = s·(g_lse_i·A_i + g_pos_w_i·ĉ_pos(i))``
    and ``Σ_i g_lse_i·E_i + g_pos_w_i·<q̂_i, ĉ_pos(i)>``. The positive is ``pos_index[i]`` where the
    roles make it one (inside the columns, not the row's self column); only those N unit columns are
    formed (fp32, from the raw columns and their inverse norms). ``q_hat``: the unit rows."""
    t = tiles
    g_lse, g_pos_w = row["g_lse"], row["g_pos_w"]
    dq = row_dq * g_lse[:, None]
    dscale = (g_lse * row_dscale).sum()
    if t.flags["HAS_POS"]:
        pos = t.pos_index
        valid = (pos >= 0) & (pos < t.m_total)
        if t.flags["HAS_SELF"]:
            valid &= pos != t.self_index
        weight = torch.where(valid, g_pos_w, torch.zeros_like(g_pos_w))
        index = pos.clamp(0, t.m_total - 1)
        c_pos = t.columns[index].float()
        if t.flags["NORMALIZE"]:
            c_pos = c_pos * t.rc[index][:, None]
        # the product rounded on its own, as g_lse·A is: where the positive is a row's whole denominator
        # (A = ĉ_pos, g_pos_w = -g_lse) the two cancel exactly, as the dQ pass's p - 1 = 0 does (a fused
        # multiply-add would leave the first product's rounding error)
        dq.add_(weight[:, None] * c_pos)
        dscale = dscale + (weight * (q_hat.float() * c_pos).sum(dim=1)).sum()
    return dq.mul_(t.scale.to(torch.float32)), dscale


def contrastive_backward(tiles, config, row, col, row_grad=None, pair_loss=None):
    """Gradients with respect to the unit rows: ``dQ̂ [N, D]``, ``dĈ [M_total, D]`` (fp32), and the
    scale's and the bias's gradients (0-d fp32).

    ``row``: dict of ``[N]`` fp32 vectors ``lse``, ``g_lse``, ``g_pos_w`` (the mean-positive
    gradient divided by the positive count) and, as the switches need them, ``lse_beta``,
    ``g_lse_beta``, ``g_pair``; ``col``: ``lse``, ``g_lse``, ``g_pos_w`` ``[M]`` for symmetric losses.
    The route (registers or chunks) follows :func:`uses_registers`. ``row_grad``: ``(row_dq,
    row_dscale)`` of a forward run with ``row_grad``; then dQ̂ comes from them
    (:func:`rows_from_forward`) and only the dC pass (or the chunks' dĈ products) runs. ``pair_loss``
    (fp32 ``[N]``, zeros): the chunk route, whose dS pass also adds each row's pair losses into it
    (:func:`pair_forward`).
    """
    t = tiles
    device = t.query.device
    d = t.d
    sigma = ds_scale(row, col, t.beta, t.query.dtype)
    unused = row["lse"]  # placeholder pointer for vectors a switch leaves out
    vectors = [row["lse"], row["g_lse"], row["g_pos_w"]] + [
        row.get(name, unused) for name in ("lse_beta", "g_lse_beta", "g_pair")] + [
        col.get(name, unused) for name in ("lse", "g_lse", "g_pos_w")]
    common = (t.inputs, t.roles, t.sizes, tuple(vectors))
    meta = {**t.constexprs(), **config.kernel_kwargs(d)}
    register_meta = {**meta, "PIPELINE": pipelined(config, d)}  # the register route's dQ and dC passes
    # the products' operands: the unit rows in the input dtype (the logits still come from the raw rows
    # and their inverse norms, bit for bit as in the forward)
    normalize = t.flags["NORMALIZE"]
    q_hat = unit_rows(t.query, t.rq if normalize else None)
    registers = uses_registers(config, d) and pair_loss is None
    if row_grad is not None and registers:  # no dQ products: no unit columns either
        dq, dscale = rows_from_forward(t, row, *row_grad, q_hat)
        dc = torch.empty((t.m_total, d), dtype=torch.float32, device=device)
        _contrastive_bwd_dc_kernel[(triton.cdiv(t.m_total, config.block_n),)](
            *common, (q_hat, sigma, dc, dc.stride(0)), **register_meta)
        return dq, dc, dscale, torch.zeros((), dtype=torch.float32, device=device)
    c_hat = None  # the dQ products' operand; with the forward's row products there are none
    if row_grad is None:
        c_hat = q_hat if t.columns is t.query else unit_rows(t.columns, t.rc if normalize else None)
    if registers:
        dq = torch.empty((t.n, d), dtype=torch.float32, device=device)
        dc = torch.empty((t.m_total, d), dtype=torch.float32, device=device)
        row_blocks = triton.cdiv(t.n, config.block_m)
        dscale_part = torch.empty(row_blocks, dtype=torch.float32, device=device)
        dbias_part = torch.empty(row_blocks, dtype=torch.float32, device=device)
        _contrastive_bwd_dq_kernel[(row_blocks,)](*common, (c_hat, sigma, dq, dscale_part, dbias_part, dq.stride(0)),
                                                  **register_meta)
        _contrastive_bwd_dc_kernel[(triton.cdiv(t.m_total, config.block_n),)](
            *common, (q_hat, sigma, dc, dc.stride(0)), **register_meta)
        return dq, dc, dscale_part.sum(), dbias_part.sum()

    # chunk route: dS chunk by chunk (row chunks outer, column chunks inner: a fixed order); with the
    # forward's row products only dĈ's GEMMs run (the chunks still give the scale's whole gradient)
    dq = torch.zeros((t.n, d), dtype=torch.float32, device=device) if row_grad is None else None
    dc = torch.zeros((t.m_total, d), dtype=torch.float32, device=device)
    ds_dtype = t.query.dtype
    chunk_rows, chunk_cols = chunk_shape(t.n, t.m_total, torch.finfo(ds_dtype).bits // 8, config)
    ds = torch.empty((min(chunk_rows, t.n), min(chunk_cols, t.m_total)), dtype=ds_dtype, device=device)
    dscale_parts, dbias_parts = [], []
    loss_part = None
    if pair_loss is not None:  # one partial per row and column tile of a chunk, summed in a fixed order
        loss_part = torch.empty((ds.shape[0], triton.cdiv(ds.shape[1], config.block_n)), dtype=torch.float32,
                                device=device)
    for r0 in range(0, t.n, chunk_rows):
        r1 = min(r0 + chunk_rows, t.n)
        for c0 in range(0, t.m_total, chunk_cols):
            c1 = min(c0 + chunk_cols, t.m_total)
            grid = (triton.cdiv(r1 - r0, config.block_m), triton.cdiv(c1 - c0, config.block_n))
            dscale_part = torch.empty(grid[0] * grid[1], dtype=torch.float32, device=device)
            dbias_part = torch.empty_like(dscale_part)
            block = ds[: r1 - r0, : c1 - c0]
            _contrastive_bwd_ds_kernel[grid](
                *common, (sigma, block, dscale_part, dbias_part, ds.stride(0), r0, c0, r1 - r0, c1 - c0),
                (dscale_part, 0) if loss_part is None else (loss_part, loss_part.stride(0)), **meta,
                PAIR_LOSS=loss_part is not None)
            if loss_part is not None:
                pair_loss[r0:r1] += loss_part[: r1 - r0, : grid[1]].sum(dim=1)
            if dq is not None:
                _accumulate_product(dq[r0:r1], block, c_hat[c0:c1])
            _accumulate_product(dc[c0:c1], block.T, q_hat[r0:r1])
            dscale_parts.append(dscale_part.sum())
            dbias_parts.append(dbias_part.sum())
    alpha = t.scale.to(torch.float32) / sigma  # the products summed σ·dS; one pass scales them back
    dq = rows_from_forward(t, row, *row_grad, q_hat)[0] if dq is None else dq.mul_(alpha)
    return dq, dc.mul_(alpha), torch.stack(dscale_parts).sum(), torch.stack(dbias_parts).sum()


def pair_forward(tiles, config):
    """SigLIP's gradient formed in the forward, for a caller whose incoming gradient of the pair losses is
    one value for every row (a mean or a sum): ``(row_pair_loss [N], dQ̂₁ [N, D], dĈ₁ [M_total, D], the
    scale's and the bias's gradients)`` at row weight 1, all fp32, from one pass of dS chunks (the pair
    losses summed on the way) and their products; the backward only scales them. The loss alone (the
    pairwise sigmoid, no softmax terms); ``config`` as the chunk route's."""
    t = tiles
    ones = torch.ones(t.n, dtype=torch.float32, device=t.query.device)
    zeros = torch.zeros_like(ones)
    # no softmax term (the dS pass forms none with PAIR_LOSS); an LSE of +inf would make its terms 0, never
    # e^S·0, which overflows to NaN
    row = {"lse": torch.full_like(ones, float("inf")), "g_lse": zeros, "g_pos_w": zeros, "g_pair": ones}
    loss = torch.zeros_like(ones)
    dq, dc, dscale, dbias = contrastive_backward(t, config, row, {}, pair_loss=loss)
    return loss, dq, dc, dscale, dbias
