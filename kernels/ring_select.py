"""Ring band selection: per-row logit thresholds ``(v_lo, v_hi)`` without materializing a row.

The candidates of row ``i`` sorted in descending order, the band holds ranks ``[lo_i, hi_i)``
(see ``ring_info_nce``); ties at a boundary are kept, so the band is the value interval
``[v_lo, v_hi]`` with ``v_hi`` the value of rank ``lo`` and ``v_lo`` the value of rank ``hi - 1``.

1. :func:`_ring_count_kernel` counts each row's candidates (roles only, no dot products); the
   rank bounds follow on the host side by ``core.ring_ranks`` (float64, as in every backend).
2. :func:`_ring_select_kernel` finds the two ranks' values by a radix search over the uint32
   order keys of the fp32 logits, ``RADIX_BITS`` bits per pass: a pass recomputes the row block's
   tiles and counts, per row and for every digit ``d``, the candidates whose key is at least
   ``prefix | d << shift``; the rank's digit is the largest ``d`` whose count exceeds the rank.
   The per-row state (prefix, rank) stays in registers across the passes, so one launch does it
   all, and the result is exact on the very logits the loss uses.
"""
import torch
import triton
import triton.language as tl

from .tiles import key_value, order_key, tile_cosines, tile_roles


@triton.jit
def _ring_count_kernel(roles, sizes, COUNT, ROLE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Argument groups as ``problem.GROUPS`` lists them; ``ROLE`` as ``tiles.ROLE_SWITCHES``."""
    N, M, M_TOTAL = sizes[0], sizes[1], sizes[2]
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_mask = rows < N
    count = tl.zeros((BLOCK_M,), dtype=tl.int32)
    for c0 in range(0, M_TOTAL, BLOCK_N):
        cols = c0 + tl.arange(0, BLOCK_N)
        candidate = tile_roles(rows, cols, row_mask, cols < M_TOTAL, M, roles, ROLE, BLOCK_M, BLOCK_N)[1]
        count += tl.sum(candidate.to(tl.int32), axis=1)
    tl.store(COUNT + rows, count, mask=row_mask)


@triton.jit
def _ring_select_kernel(
    inputs, roles, sizes, ranks,
    ROLE: tl.constexpr, NORMALIZE: tl.constexpr, INPUT_PRECISION: tl.constexpr, RADIX_BITS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """Argument groups as ``problem.GROUPS`` lists them; ``ROLE`` as ``tiles.ROLE_SWITCHES``."""
    # (a name bound here must not be rebound in a loop: no ``_`` for the unused members)
    Q, C, RQ, RC, SCALE = inputs[0], inputs[1], inputs[2], inputs[3], inputs[4]
    N, M, M_TOTAL, D, stride_q, stride_c = sizes[0], sizes[1], sizes[2], sizes[3], sizes[4], sizes[5]
    RANK_TOP, RANK_BOTTOM, V_HI, V_LO = ranks
    RADIX: tl.constexpr = 1 << RADIX_BITS
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_mask = rows < N
    scale = tl.load(SCALE).to(tl.float32)
    # wanted descending ranks: the top of the band (rank lo) and its bottom (rank hi - 1)
    need_top = tl.load(RANK_TOP + rows, mask=row_mask, other=0) + 1
    need_bottom = tl.load(RANK_BOTTOM + rows, mask=row_mask, other=0) + 1
    prefix_top = tl.zeros((BLOCK_M,), dtype=tl.uint32)
    prefix_bottom = tl.zeros((BLOCK_M,), dtype=tl.uint32)
    digits = tl.arange(0, RADIX)
    for step in range(32 // RADIX_BITS):
        shift = tl.cast(32 - RADIX_BITS * (step + 1), tl.uint32)
        count_top = tl.zeros((BLOCK_M, RADIX), dtype=tl.int32)
        count_bottom = tl.zeros((BLOCK_M, RADIX), dtype=tl.int32)
        for c0 in range(0, M_TOTAL, BLOCK_N):
            cols = c0 + tl.arange(0, BLOCK_N)
            col_mask = cols < M_TOTAL
            logits = scale * tile_cosines(Q, C, RQ, RC, rows, cols, row_mask, col_mask, D, stride_q, stride_c,
                                          NORMALIZE, BLOCK_M, BLOCK_N, BLOCK_D, INPUT_PRECISION)
            candidate = tile_roles(rows, cols, row_mask, col_mask, M, roles, ROLE, BLOCK_M, BLOCK_N)[1]
            keys = order_key(logits)
            for d in tl.static_range(1, RADIX):
                step_d = tl.full((BLOCK_M,), d, dtype=tl.uint32) << shift
                at_least_top = tl.sum((candidate & (keys >= (prefix_top | step_d)[:, None])).to(tl.int32), axis=1)
                at_least_bottom = tl.sum((candidate & (keys >= (prefix_bottom | step_d)[:, None])).to(tl.int32),
                                         axis=1)
                count_top += tl.where(digits[None, :] == d, at_least_top[:, None], 0)
                count_bottom += tl.where(digits[None, :] == d, at_least_bottom[:, None], 0)
        # counts fall with the digit: the digit is how many of 1 .. RADIX-1 still reach the rank
        digit_top = tl.sum(((count_top >= need_top[:, None]) & (digits[None, :] > 0)).to(tl.int32), axis=1)
        digit_bottom = tl.sum(((count_bottom >= need_bottom[:, None]) & (digits[None, :] > 0)).to(tl.int32), axis=1)
        prefix_top = prefix_top | (digit_top.to(tl.uint32) << shift)
        prefix_bottom = prefix_bottom | (digit_bottom.to(tl.uint32) << shift)
    tl.store(V_HI + rows, key_value(prefix_top), mask=row_mask)
    tl.store(V_LO + rows, key_value(prefix_bottom), mask=row_mask)


def candidate_counts(tiles, config):
    """int32 ``[N]``: each row's candidate negatives (the Ring's ``M_i``)."""
    t = tiles
    count = torch.empty(t.n, dtype=torch.int32, device=t.query.device)
    _ring_count_kernel[(triton.cdiv(t.n, config.block_m),)](
        t.roles, t.sizes, count, ROLE=t.constexprs()["ROLE"], BLOCK_M=config.block_m, BLOCK_N=config.block_n,
    )
    return count


def ring_band(tiles, config, rank_top, rank_bottom):
    """fp32 ``(v_lo, v_hi)`` ``[N]``: the values of descending ranks ``rank_bottom`` and
    ``rank_top`` (int32 ``[N]``, each below the row's candidate count) among each row's candidates."""
    t = tiles
    v_hi = torch.empty(t.n, dtype=torch.float32, device=t.query.device)
    v_lo = torch.empty_like(v_hi)
    flags = t.constexprs()
    _ring_select_kernel[(triton.cdiv(t.n, config.block_m),)](
        t.inputs, t.roles, t.sizes, (rank_top, rank_bottom, v_hi, v_lo), ROLE=flags["ROLE"],
        NORMALIZE=flags["NORMALIZE"], INPUT_PRECISION=flags["INPUT_PRECISION"], RADIX_BITS=config.radix_bits,
        **config.kernel_kwargs(t.d),
    )
    return v_lo, v_hi
