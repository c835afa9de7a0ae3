"""Ring band selection: per-row logit thresholds ``(v_lo, v_hi)`` without materializing a row.

The candidates of row ``i`` sorted in descending order, the band holds ranks ``[lo_i, hi_i)``
(see ``ring_info_nce``); ties at a boundary are kept, so the band is the value interval
``[v_lo, v_hi]`` with ``v_hi`` the value of rank ``lo`` and ``v_lo`` the value of rank ``hi - 1``.

The kernels here rank the tiles' halves (``tiles.tile_norms``: ``half = raw·rc_j``) rather than the
logits ``scale·(half·rq_i)``: the logit is a monotone function of the half within a row, so a rank's
logit is that function of the same rank's half (for a negative scale, of the mirrored rank's), two
products per pair fewer; ``backends.triton`` maps the halves found back to logits, as the tiles form them.

1. :func:`_ring_count_kernel` counts each row's candidates (roles only, no dot products); the
   rank bounds follow on the host side by ``core.ring_ranks`` (float64, as in every backend).
2. :func:`_ring_select_kernel` finds the two ranks' values by a radix search over the uint32
   order keys of the fp32 halves, ``RADIX_BITS`` bits per pass: a pass recomputes the row block's
   tiles and counts, per row and for every digit ``d``, the candidates whose key is at least
   ``prefix | d << shift``; the rank's digit is the largest ``d`` whose count exceeds the rank.
   The per-row state (prefix, rank) stays in registers across the passes, so one launch does it
   all, and the result is exact on the very values the loss uses.
3. :func:`ring_band_bracketed` (the triton backend's default) needs one pass over the tiles instead of
   ``32 / RADIX_BITS``: each rank's span of values estimated from a sample of columns
   (:func:`sample_spans`), one gathering pass (:func:`_ring_gather_kernel`) that writes the candidates
   inside the spans to the row's buffer and counts those above them, and a search in the buffer
   (:func:`_buffer_search_kernel`). Counts and gathered values come from the same tiles, so it is exact
   too; rows whose spans miss their rank or overflow the buffer go to step 2 (their row blocks only).
"""
import dataclasses
import math

import torch
import triton
import triton.language as tl

from .config import interpreting, pipelined
from .tiles import (
    HAS_GUIDE,
    HAS_LABELS,
    MASK_LABELS,
    key_value,
    order_key,
    pipeline_start,
    pipeline_step,
    plain_tile,
    tile_cosine_parts,
    tile_roles,
)


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
    Q, C, RQ, RC = inputs[0], inputs[1], inputs[2], inputs[3]
    N, M, M_TOTAL, D, stride_q, stride_c = sizes[0], sizes[1], sizes[2], sizes[3], sizes[4], sizes[5]
    RANK_TOP, RANK_BOTTOM, V_HI, V_LO = ranks
    RADIX: tl.constexpr = 1 << RADIX_BITS
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_mask = rows < N
    # wanted descending ranks of the halves: the top of the band (rank lo) and its bottom (rank hi - 1)
    need_top = tl.load(RANK_TOP + rows, mask=row_mask, other=0) + 1
    need_bottom = tl.load(RANK_BOTTOM + rows, mask=row_mask, other=0) + 1
    prefix_top = tl.zeros((BLOCK_M,), dtype=tl.uint32)
    prefix_bottom = tl.zeros((BLOCK_M,), dtype=tl.uint32)
    digits = tl.arange(0, RADIX)
    # a row of rank -1 needs nothing (e.g. resolved by the bracketed selection): a row block of such
    # rows skips the passes
    if tl.max(tl.where(row_mask, need_top, 0), axis=0) > 0:
        for step in range(32 // RADIX_BITS):
            shift = tl.cast(32 - RADIX_BITS * (step + 1), tl.uint32)
            count_top = tl.zeros((BLOCK_M, RADIX), dtype=tl.int32)
            count_bottom = tl.zeros((BLOCK_M, RADIX), dtype=tl.int32)
            for c0 in range(0, M_TOTAL, BLOCK_N):
                cols = c0 + tl.arange(0, BLOCK_N)
                col_mask = cols < M_TOTAL
                half = tile_cosine_parts(Q, C, RQ, RC, rows, cols, row_mask, col_mask, D, stride_q, stride_c,
                                         NORMALIZE, BLOCK_M, BLOCK_N, BLOCK_D, INPUT_PRECISION)[1]
                candidate = tile_roles(rows, cols, row_mask, col_mask, M, roles, ROLE, BLOCK_M, BLOCK_N)[1]
                keys = order_key(half)
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
    """fp32 ``(h_lo, h_hi)`` ``[N]``: the halves (``tiles.tile_norms``) of descending ranks ``rank_bottom``
    and ``rank_top`` (int32 ``[N]``, each below the row's candidate count) among each row's candidates, by
    the radix search (``32 / radix_bits`` passes over the tiles). Rows of ``rank_top`` -1 are skipped
    (their values are garbage), and so are the passes of a row block made of them only."""
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


# ---------------------------------------------------------------------------------------------
# bracketed selection: spans from a sample, one gathering pass, an exact selection in the buffer
# ---------------------------------------------------------------------------------------------

#: Columns of the sample the spans are estimated from (all of them for smaller problems).
SAMPLE_COLUMNS = 2048
#: A rank's span covers this many standard deviations of the sample's estimate of it on each side.
COVER = 5.0
#: Entries per row: the spans' expected candidates plus this many standard deviations of their number
#: (:func:`buffer_length`); a row whose spans hold more falls back to the radix search.
BUFFER_MARGIN = 6.0
#: Entries come in multiples of this (whole chunks of the search's reads).
BUFFER_CHUNK = 1024
#: At most this many entry values (fp32, 512 MiB) at once: rows are gathered and searched in balanced chunks
#: of row blocks (:func:`row_chunks`); 32768 rows of 5120 entries take two.
SCRATCH_VALUES = 1 << 27
#: The gathering pass's tile width at most (:func:`gather_config`).
GATHER_BLOCK_N = 64
#: Warps of the selection in the buffer.
SELECT_WARPS = 2
#: Entries of a row the search reads at once: 8 per thread of its warps.
SEARCH_CHUNK = min(BUFFER_CHUNK, 256 * SELECT_WARPS)
#: Rows per program of the selection in the buffer (:func:`search_rows`): one on a GPU, where a row's warps
#: read its buffer (more rows would wait for the one needing the most passes), many in Triton's interpreter,
#: which runs the programs one after another and spends its time per operation, not per value.
SEARCH_ROWS = 1
SEARCH_ROWS_INTERPRETED = 32


def search_rows():
    """:data:`SEARCH_ROWS`, or :data:`SEARCH_ROWS_INTERPRETED` under ``TRITON_INTERPRET=1``."""
    return SEARCH_ROWS_INTERPRETED if interpreting() else SEARCH_ROWS


def _spread(q, present):
    """Half a rank's span, in sample positions: ``COVER`` standard deviations of the position of quantile
    ``q`` among ``present`` sampled candidates (binomial), plus one."""
    return COVER * (q * (1.0 - q) * present) ** 0.5 + 1.0


def span_fill(columns, outer, inner, sample=SAMPLE_COLUMNS):
    """``(mean, std)``: candidates per row inside the two spans, for the band's top (rank ≈
    ``inner·outer·M``) and its bottom (rank ≈ ``outer·M``) among ``columns`` (M) candidates, from a sample of
    ``sample`` columns. A span of ``2·spread`` sample positions (:func:`_spread`) holds ``2·spread·M/S``
    candidates on average; their number is that of ``2·spread`` spacings between sampled order statistics,
    about ``√(2·spread)·M/S`` from row to row."""
    columns = max(1, columns)
    s = max(1, min(columns, sample))
    hi = max(1.0, outer * columns)
    mean = var = 0.0
    for rank in (inner * hi, hi):
        positions = 2.0 * _spread(min(1.0, rank / columns), s)
        mean += positions * columns / s
        var += positions * (columns / s) ** 2
    return mean, var ** 0.5


def buffer_length(columns, outer, inner, sample=SAMPLE_COLUMNS):
    """Entries per row (:func:`span_fill`'s mean plus ``BUFFER_MARGIN`` standard deviations, in multiples of
    ``BUFFER_CHUNK``, at most the row's length rounded up): spans widen like ``M/√S``, and so do the buffers
    (5120 at 32768 columns, 9216 at 65536, for outer = inner = 0.1)."""
    mean, std = span_fill(columns, outer, inner, sample)
    need = mean + BUFFER_MARGIN * std
    return BUFFER_CHUNK * max(1, min(math.ceil(need / BUFFER_CHUNK), math.ceil(max(1, columns) / BUFFER_CHUNK)))


def row_chunks(n, block_m, entries):
    """``[(first_block, blocks), ...]``: the gathering pass's launches over ``n`` rows in blocks of ``block_m``,
    as few as keep each one's entries within ``SCRATCH_VALUES``, of equal sizes (a last, smaller chunk would
    leave most of the device idle)."""
    blocks = triton.cdiv(n, block_m)
    per_launch = max(1, SCRATCH_VALUES // (entries * block_m))
    size = triton.cdiv(blocks, triton.cdiv(blocks, per_launch))
    return [(first, min(size, blocks - first)) for first in range(0, blocks, size)]


def gather_config(config):
    """The gathering pass's tiles: the selection's, at most ``GATHER_BLOCK_N`` columns wide (its prefix-sum
    product and the next tile's product fit the registers without spilling)."""
    return dataclasses.replace(config, block_n=min(config.block_n, GATHER_BLOCK_N))


@triton.jit
def _ring_gather_kernel(
    inputs, roles, sizes, SPANS, OUT, COUNTS, first_block,
    ROLE: tl.constexpr, NORMALIZE: tl.constexpr, INPUT_PRECISION: tl.constexpr, BUFFER: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, PIPELINE: tl.constexpr = False,
):
    """One pass over the tiles of row blocks ``first_block + program_id``: row ``i``'s candidate halves
    ``x`` (``tiles.tile_norms``) inside either span, ``SPANS[0, i] <= x < SPANS[1, i]`` (the top's) or
    ``SPANS[2, i] <= x < SPANS[3, i]`` (the bottom's; fp32 ``[4, N]``), written in column order to the row's
    entries ``OUT[i - first_block·BLOCK_M, :]`` (fp32 ``[rows, BUFFER]``; those past ``BUFFER`` dropped), and
    ``COUNTS[:, i]`` (int32 ``[3, N]``): the candidates at or above ``SPANS[1, i]``, at or above
    ``SPANS[3, i]``, and inside the spans (more than ``BUFFER``: the row is incomplete). A tile's entries are
    its row's running count plus a prefix sum over the tile's row: no atomics, the same entries every run."""
    Q, C, RQ, RC = inputs[0], inputs[1], inputs[2], inputs[3]
    N, M, M_TOTAL, D, stride_q, stride_c = sizes[0], sizes[1], sizes[2], sizes[3], sizes[4], sizes[5]
    row0 = (tl.program_id(0) + first_block) * BLOCK_M
    rows = row0 + tl.arange(0, BLOCK_M)
    row_mask = rows < N
    MAY_BE_PLAIN: tl.constexpr = not (ROLE[HAS_LABELS] or ROLE[MASK_LABELS] or ROLE[HAS_GUIDE])
    top_lo = tl.load(SPANS + rows, mask=row_mask, other=float("inf"))
    top_hi = tl.load(SPANS + N + rows, mask=row_mask, other=float("inf"))
    bottom_lo = tl.load(SPANS + 2 * N + rows, mask=row_mask, other=float("inf"))
    bottom_hi = tl.load(SPANS + 3 * N + rows, mask=row_mask, other=float("inf"))
    buffer_rows = OUT + (rows - first_block * BLOCK_M).to(tl.int64) * BUFFER
    above_top = tl.zeros((BLOCK_M,), dtype=tl.int32)
    above_bottom = tl.zeros((BLOCK_M,), dtype=tl.int32)
    filled = tl.zeros((BLOCK_M,), dtype=tl.int32)
    upper = (tl.arange(0, BLOCK_N)[:, None] <= tl.arange(0, BLOCK_N)[None, :]).to(tl.float16)
    q_block, raw = pipeline_start(Q, C, rows, row_mask, M_TOTAL, D, stride_q, stride_c, BLOCK_M, BLOCK_N, BLOCK_D,
                                  INPUT_PRECISION, PIPELINE)
    for c0 in range(0, M_TOTAL, BLOCK_N):
        cols = c0 + tl.arange(0, BLOCK_N)
        col_mask = cols < M_TOTAL
        _cosines, half, _rq, raw = pipeline_step(q_block, raw, Q, C, RQ, RC, rows, cols, row_mask, col_mask, M_TOTAL,
                                                 D, stride_q, stride_c, NORMALIZE, BLOCK_M, BLOCK_N, BLOCK_D,
                                                 INPUT_PRECISION, PIPELINE)
        plain = False
        if MAY_BE_PLAIN:
            plain = plain_tile(row0, c0, True, rows, row_mask, N, M, M_TOTAL, roles, ROLE, BLOCK_M, BLOCK_N)
        if plain:  # every pair a candidate (tiles.plain_tile): no per-pair role test
            values = half
        else:
            candidate = tile_roles(rows, cols, row_mask, col_mask, M, roles, ROLE, BLOCK_M, BLOCK_N)[1]
            values = tl.where(candidate, half, float("nan"))  # a NaN compares false: never counted nor taken
        over_top = values >= top_hi[:, None]
        over_bottom = values >= bottom_hi[:, None]
        inside = (((values >= top_lo[:, None]) & (values < top_hi[:, None]))
                  | ((values >= bottom_lo[:, None]) & (values < bottom_hi[:, None])))
        # summed as fp32 ones: a tile's count is at most BLOCK_N, exact
        above_top += tl.sum(over_top.to(tl.float32), axis=1).to(tl.int32)
        above_bottom += tl.sum(over_bottom.to(tl.float32), axis=1).to(tl.int32)
        # 1, 2, ... along the tile's row at the pairs taken: a product with the upper-triangular ones (exact
        # small integers in fp16 and fp32), in the layout of the tile itself
        place = tl.dot(inside.to(tl.float16), upper, out_dtype=tl.float32)
        entry = filled[:, None] + (place + 12582912.0).to(tl.int32, bitcast=True) - (0x4B400000 + 1)
        tl.store(buffer_rows[:, None] + entry, half, mask=inside & (entry < BUFFER))
        filled += tl.sum(inside.to(tl.float32), axis=1).to(tl.int32)
    tl.store(COUNTS + rows, above_top, mask=row_mask)
    tl.store(COUNTS + N + rows, above_bottom, mask=row_mask)
    tl.store(COUNTS + 2 * N + rows, filled, mask=row_mask)


@triton.jit
def _buffer_chunk(VALUES, c0, length, CHUNK: tl.constexpr, FULL: tl.constexpr, other):
    """``VALUES[:, c0 : c0 + CHUNK]`` (fp32; ``VALUES`` ``[ROWS, 1]`` pointers to the rows' buffers), ``other`` from
    each row's ``length`` (``[ROWS, 1]``) on (``FULL``: a chunk wholly inside every row, loaded without a mask:
    contiguous, aligned, vector loads)."""
    at = tl.max_contiguous(tl.multiple_of(c0 + tl.arange(0, CHUNK), CHUNK), CHUNK)[None, :]
    if FULL:
        return tl.load(VALUES + at)
    return tl.load(VALUES + at, mask=at < length, other=other)


@triton.jit
def _count_at_least(VALUES, length, x0, x1, ROWS: tl.constexpr, CHUNK: tl.constexpr):
    """How many of each row's ``VALUES[:length]`` (fp32) are at least ``x0``, and at least ``x1`` (``[ROWS, 1]``
    each): the chunks whole in every row, then the parts left. ``([ROWS], [ROWS])``."""
    lanes0 = tl.zeros((ROWS, CHUNK), dtype=tl.float32)  # one sum per lane (exact: a few thousand)
    lanes1 = tl.zeros((ROWS, CHUNK), dtype=tl.float32)
    full = tl.min(length) // CHUNK * CHUNK
    for c0 in tl.range(0, full, CHUNK, loop_unroll_factor=1):
        v = _buffer_chunk(VALUES, c0, length, CHUNK, True, 0.0)
        lanes0 += (v >= x0).to(tl.float32)
        lanes1 += (v >= x1).to(tl.float32)
    if ROWS == 1:  # less than a chunk left: straight code, no loop
        v = _buffer_chunk(VALUES, full, length, CHUNK, False, float("-inf"))
        lanes0 += (v >= x0).to(tl.float32)
        lanes1 += (v >= x1).to(tl.float32)
    else:
        for c0 in range(full, tl.max(length), CHUNK):
            v = _buffer_chunk(VALUES, c0, length, CHUNK, False, float("-inf"))
            lanes0 += (v >= x0).to(tl.float32)
            lanes1 += (v >= x1).to(tl.float32)
    return tl.sum(lanes0, axis=1).to(tl.int32), tl.sum(lanes1, axis=1).to(tl.int32)


@triton.jit
def _span_counts(VALUES, length, lo0, hi0, lo1, hi1, ROWS: tl.constexpr, CHUNK: tl.constexpr):
    """Each row's ``VALUES[:length]`` (fp32) counts at or above ``lo0``, ``hi0``, ``lo1`` and ``hi1`` (``[ROWS, 1]``
    each), then its largest and smallest (``-inf`` and ``+inf`` if none): one pass, ``[ROWS]`` each."""
    at_lo0 = tl.zeros((ROWS, CHUNK), dtype=tl.float32)
    at_hi0 = tl.zeros((ROWS, CHUNK), dtype=tl.float32)
    at_lo1 = tl.zeros((ROWS, CHUNK), dtype=tl.float32)
    at_hi1 = tl.zeros((ROWS, CHUNK), dtype=tl.float32)
    largest = tl.full((ROWS, CHUNK), float("-inf"), dtype=tl.float32)
    smallest = tl.full((ROWS, CHUNK), float("inf"), dtype=tl.float32)
    for c0 in range(0, tl.max(length), CHUNK):
        v = _buffer_chunk(VALUES, c0, length, CHUNK, False, float("nan"))  # NaN: neither counted nor extreme
        at_lo0 += (v >= lo0).to(tl.float32)
        at_hi0 += (v >= hi0).to(tl.float32)
        at_lo1 += (v >= lo1).to(tl.float32)
        at_hi1 += (v >= hi1).to(tl.float32)
        filled = v >= float("-inf")  # not the NaN past the buffer
        largest = tl.maximum(largest, tl.where(filled, v, float("-inf")))
        smallest = tl.minimum(smallest, tl.where(filled, v, float("inf")))
    return (tl.sum(at_lo0, axis=1).to(tl.int32), tl.sum(at_hi0, axis=1).to(tl.int32),
            tl.sum(at_lo1, axis=1).to(tl.int32), tl.sum(at_hi1, axis=1).to(tl.int32), tl.max(largest, axis=1),
            tl.min(smallest, axis=1))


@triton.jit
def _nearest(VALUES, length, below0, from0, below1, from1, ROWS: tl.constexpr, CHUNK: tl.constexpr):
    """Each row's largest of ``VALUES[:length]`` below ``below0``, smallest at least ``from0`` (and the same for
    ``below1``, ``from1``; ``[ROWS, 1]`` each): one pass (-inf and +inf where none), ``[ROWS]`` each."""
    best_below0 = tl.full((ROWS, CHUNK), float("-inf"), dtype=tl.float32)
    best_from0 = tl.full((ROWS, CHUNK), float("inf"), dtype=tl.float32)
    best_below1 = tl.full((ROWS, CHUNK), float("-inf"), dtype=tl.float32)
    best_from1 = tl.full((ROWS, CHUNK), float("inf"), dtype=tl.float32)
    for c0 in range(0, tl.max(length), CHUNK):
        v = _buffer_chunk(VALUES, c0, length, CHUNK, False, float("nan"))  # NaN: never below nor at least
        best_below0 = tl.maximum(best_below0, tl.where(v < below0, v, float("-inf")))
        best_from0 = tl.minimum(best_from0, tl.where(v >= from0, v, float("inf")))
        best_below1 = tl.maximum(best_below1, tl.where(v < below1, v, float("-inf")))
        best_from1 = tl.minimum(best_from1, tl.where(v >= from1, v, float("inf")))
    return (tl.max(best_below0, axis=1), tl.min(best_from0, axis=1), tl.max(best_below1, axis=1),
            tl.min(best_from1, axis=1))


@triton.jit
def _start(lo, hi, c_lo, c_hi, need, largest, smallest, ok):
    """A search's first interval: no entry lies between the span's ends and the buffer's extremes, so the
    interval may start from these (the same counts; an infinite end, e.g. a span open at the top, becomes
    finite). ``(lo, hi, key_lo, key_hi, active)``."""
    key_lo = order_key(tl.maximum(lo, smallest)).to(tl.int64)
    key_hi = tl.minimum(order_key(hi).to(tl.int64), order_key(largest).to(tl.int64) + 1)
    active = ok & (c_hi + 1 < need) & (c_lo > need) & (key_hi - key_lo > 1)
    return key_value(key_lo.to(tl.uint32)), key_value(key_hi.to(tl.uint32)), key_lo, key_hi, active


@triton.jit
def _pivot(lo, hi, c_lo, c_hi, need, key_lo, key_hi, halve, active):
    """A value strictly inside ``(lo, hi)``: interpolated from the counts at the ends (``need``'s place
    between them), or with ``halve`` (or where that gives none inside) the middle of their order keys;
    ``+inf`` for an inactive search (its count is then ignored)."""
    middle = key_value(((key_lo + key_hi) >> 1).to(tl.uint32))
    # the rank's place from hi down to lo (an inactive search's ends may be infinite: kept out of the arithmetic)
    share = (need - c_hi - 0.5) / tl.maximum(c_lo - c_hi, 1).to(tl.float32)
    pivot = hi - share * (tl.where(active, hi, 0.0) - tl.where(active, lo, 0.0))
    pivot = tl.where(halve | ~((pivot > lo) & (pivot < hi)), middle, pivot)
    return tl.where(active, pivot, float("inf"))


@triton.jit
def _narrow(lo, hi, c_lo, c_hi, need, pivot, count, active):
    """The interval after counting ``count`` entries at or above ``pivot``: ``(lo, hi, c_lo, c_hi, key_lo,
    key_hi, still active)``."""
    reach = active & (count >= need)
    drop = active & (count < need)
    lo = tl.where(reach, pivot, lo)
    c_lo = tl.where(reach, count, c_lo)
    hi = tl.where(drop, pivot, hi)
    c_hi = tl.where(drop, count, c_hi)
    key_lo = order_key(lo).to(tl.int64)
    key_hi = order_key(hi).to(tl.int64)
    active = active & (c_hi + 1 < need) & (c_lo > need) & (key_hi - key_lo > 1)
    return lo, hi, c_lo, c_hi, key_lo, key_hi, active


@triton.jit
def _settle(lo, c_lo, c_hi, need, below, above):
    """The searched value: the largest entry below ``hi`` (``below``) if ``need - 1`` lie at or above ``hi``,
    the smallest at or above ``lo`` (``above``) if ``need`` lie at or above ``lo``, else ``lo`` itself (no
    value lies strictly inside the interval: its entries all equal ``lo``)."""
    return tl.where(c_hi + 1 == need, below, tl.where(c_lo == need, above, lo))


@triton.jit
def _buffer_search_kernel(VALUES, COUNTS, SPANS, RANKS, OUT, first_row, row_count, N, BUFFER: tl.constexpr,
                          CHUNK: tl.constexpr, ROWS: tl.constexpr, PASSES=None):
    """Row ``first_row + local``'s two values from its buffer (``_ring_gather_kernel``'s, row ``local`` of
    ``VALUES``; ``ROWS`` rows per program, ``local < row_count``): for each span ``t`` (0: the top's, 1: the
    bottom's), the value of descending rank ``RANKS[t, i]`` (int32 ``[2, N]``) among the row's candidates, to
    ``OUT[t, i]``, and ``OUT[2, i]`` 1.0 if both were found (else 0.0: the row goes to the radix search).

    With ``a`` candidates at or above the span's top (``COUNTS[t, i]``) and ``g`` of the buffer, the rank is
    the buffer's ``need = rank - a + g + 1``-th largest if it lies in the span. Each search keeps an interval
    ``[lo, hi)`` with at least ``need`` entries at or above ``lo`` and fewer at or above ``hi``, and splits it
    at a value interpolated from those counts or, after a step that left more than half of its buffer, at
    the middle of its ``tiles.order_key`` keys; it ends when one entry settles it (``need - 1`` at or above
    ``hi``: the largest entry below ``hi``; ``need`` at or above ``lo``: the smallest at or above it) or when no
    value lies strictly inside (then ``lo`` itself). Both searches share every read of the buffer: a pass
    for the spans' counts, one per step, one for the settling entries. Exact, on the buffer's own values.
    A program steps until its last row is settled; the others keep their values meanwhile. ``PASSES`` (int32
    ``[N]``, optional): the reads of each row's buffer that its own search needs (what the static model
    charges)."""
    local = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    here = local < row_count
    row = first_row + local
    values = (VALUES + local.to(tl.int64) * BUFFER)[:, None]
    filled = tl.load(COUNTS + 2 * N + row, mask=here, other=0)
    length = tl.minimum(filled, BUFFER)[:, None]
    lo0 = tl.load(SPANS + row, mask=here, other=0.0)
    hi0 = tl.load(SPANS + N + row, mask=here, other=0.0)
    lo1 = tl.load(SPANS + 2 * N + row, mask=here, other=0.0)
    hi1 = tl.load(SPANS + 3 * N + row, mask=here, other=0.0)
    c_lo0, c_hi0, c_lo1, c_hi1, largest, smallest = _span_counts(values, length, lo0[:, None], hi0[:, None],
                                                                 lo1[:, None], hi1[:, None], ROWS, CHUNK)
    need0 = tl.load(RANKS + row, mask=here, other=0) - tl.load(COUNTS + row, mask=here, other=0) + c_hi0 + 1
    need1 = tl.load(RANKS + N + row, mask=here, other=0) - tl.load(COUNTS + N + row, mask=here, other=0) + c_hi1 + 1
    # each rank lies in its span
    ok = here & (filled <= BUFFER) & (c_hi0 < need0) & (c_lo0 >= need0) & (c_hi1 < need1) & (c_lo1 >= need1)
    lo0, hi0, key_lo0, key_hi0, active0 = _start(lo0, hi0, c_lo0, c_hi0, need0, largest, smallest, ok)
    lo1, hi1, key_lo1, key_hi1, active1 = _start(lo1, hi1, c_lo1, c_hi1, need1, largest, smallest, ok)
    halve0 = tl.zeros((ROWS,), dtype=tl.int1)
    halve1 = tl.zeros((ROWS,), dtype=tl.int1)
    passes = tl.full((ROWS,), 2, dtype=tl.int32)
    while tl.max((active0 | active1).to(tl.int32)) > 0:
        passes += (active0 | active1).to(tl.int32)
        pivot0 = _pivot(lo0, hi0, c_lo0, c_hi0, need0, key_lo0, key_hi0, halve0, active0)
        pivot1 = _pivot(lo1, hi1, c_lo1, c_hi1, need1, key_lo1, key_hi1, halve1, active1)
        count0, count1 = _count_at_least(values, length, pivot0[:, None], pivot1[:, None], ROWS, CHUNK)
        before0 = c_lo0 - c_hi0
        before1 = c_lo1 - c_hi1
        lo0, hi0, c_lo0, c_hi0, key_lo0, key_hi0, active0 = _narrow(lo0, hi0, c_lo0, c_hi0, need0, pivot0, count0,
                                                                    active0)
        lo1, hi1, c_lo1, c_hi1, key_lo1, key_hi1, active1 = _narrow(lo1, hi1, c_lo1, c_hi1, need1, pivot1, count1,
                                                                    active1)
        # more than half of the buffer left: the values are far from even there, halve the keys next
        halve0 = 2 * (c_lo0 - c_hi0) > before0
        halve1 = 2 * (c_lo1 - c_hi1) > before1
    below0, above0, below1, above1 = _nearest(values, length, hi0[:, None], lo0[:, None], hi1[:, None],
                                              lo1[:, None], ROWS, CHUNK)
    tl.store(OUT + row, _settle(lo0, c_lo0, c_hi0, need0, below0, above0), mask=here)
    tl.store(OUT + N + row, _settle(lo1, c_lo1, c_hi1, need1, below1, above1), mask=here)
    tl.store(OUT + 2 * N + row, ok.to(tl.float32), mask=here)
    if PASSES is not None:
        tl.store(PASSES + row, passes, mask=here)


def sample_spans(sample, count, rank):
    """fp32 ``[2, N]``: each row's span ``[lo, hi)`` around its estimated value of descending ``rank`` (int64
    ``[N]``) among its ``count`` candidates, from ``sample`` (fp32 ``[N, S]``: the values of some columns,
    sorted in descending order, the non-candidates ``-inf`` at the end).

    The rank's position in the sample is estimated by proportion; ``hi`` is the sample's value
    :func:`_spread` positions above it (``+inf`` past the sample's top), ``lo`` the value as far below it
    (``-inf`` past its last candidate): the span holds the rank unless the sample is off by more than
    ``COVER`` standard deviations. A row without sampled candidates gets the whole row."""
    present = torch.isfinite(sample).sum(dim=1)  # sampled candidates (the sample has no +inf)
    m = count.clamp(min=1).to(torch.float64)
    q = ((rank.to(torch.float64) + 0.5) / m).clamp(0.0, 1.0)
    p = present.to(torch.float64)
    center = q * p - 0.5
    spread = _spread(q, p)
    top = torch.round(center - spread).to(torch.int64)
    bottom = torch.round(center + spread).to(torch.int64)
    last = max(sample.shape[1] - 1, 0)
    hi = torch.gather(sample, 1, top.clamp(0, last)[:, None])[:, 0]
    lo = torch.gather(sample, 1, bottom.clamp(0, last)[:, None])[:, 0]
    hi = torch.where((top >= 0) & (present > 0), hi, float("inf"))
    lo = torch.where((bottom < present) & (present > 0), lo, float("-inf"))
    return torch.stack([lo, hi]).to(torch.float32)


def search_buffer(scratch, counts, spans, ranks, found, first_row, rows, entries, passes=None):
    """:func:`_buffer_search_kernel` over rows ``first_row .. first_row + rows`` (their entries: ``scratch``'s first
    rows); ``passes`` (int32 ``[N]``): the reads of each row's buffer, when given."""
    per_program = search_rows()
    _buffer_search_kernel[(triton.cdiv(rows, per_program),)](
        scratch, counts, spans, ranks, found, first_row, rows, counts.shape[1], BUFFER=entries,
        CHUNK=SEARCH_CHUNK, ROWS=per_program, PASSES=passes, num_warps=SELECT_WARPS)


def ring_band_bracketed(tiles, config, spans, rank_top, rank_bottom, entries):
    """``(h_lo, h_hi, resolved)``: the halves of ranks ``rank_bottom`` and ``rank_top`` (int64 ``[N]``) for the
    rows that one gathering pass and the selection in its buffer resolve (bool ``resolved``); ``spans`` fp32
    ``[4, N]``, the top rank's span ``[lo, hi)`` and the bottom's (e.g. :func:`sample_spans`), ``entries`` per
    row (e.g. :func:`buffer_length`).

    1. the gathering pass writes each row's candidates inside either span to its buffer and counts those
       above each span;
    2. the selection finds each rank among the buffer (:func:`_buffer_search_kernel`).

    Exact on the tiles' halves: the spans only choose what is gathered; counts and values come from the
    same tiles as the loss's. A row whose spans hold more than ``entries`` candidates, or whose rank lies
    outside its span, is not resolved (its values are then garbage). Rows go in chunks
    (:func:`row_chunks`)."""
    t = tiles
    device = t.query.device
    spans = spans.to(torch.float32).contiguous()
    ranks = torch.stack([rank_top, rank_bottom]).to(torch.int32).contiguous()
    counts = torch.empty((3, t.n), dtype=torch.int32, device=device)
    found = torch.empty((3, t.n), dtype=torch.float32, device=device)
    flags = t.constexprs()
    config = gather_config(config)
    chunks = row_chunks(t.n, config.block_m, entries)
    scratch = torch.empty((min(t.n, chunks[0][1] * config.block_m), entries), dtype=torch.float32, device=device)
    for first, chunk_blocks in chunks:
        _ring_gather_kernel[(chunk_blocks,)](
            t.inputs, t.roles, t.sizes, spans, scratch, counts, first, ROLE=flags["ROLE"],
            NORMALIZE=flags["NORMALIZE"], INPUT_PRECISION=flags["INPUT_PRECISION"], BUFFER=entries,
            **config.kernel_kwargs(t.d), PIPELINE=pipelined(config, t.d),
        )
        first_row = first * config.block_m
        rows = min(t.n, first_row + chunk_blocks * config.block_m) - first_row
        search_buffer(scratch, counts, spans, ranks, found, first_row, rows, entries)
    return found[1], found[0], found[2] > 0
