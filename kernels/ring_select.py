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
3. :func:`ring_band_bracketed` (the triton backend's default) needs two passes instead of
   ``32 / RADIX_BITS``: thresholds estimated from a sample of columns, one counting pass
   (:func:`_ring_count_at_kernel`) that brackets each rank between two thresholds, one gathering
   pass (:func:`_ring_gather_kernel`) that writes the few candidates inside the brackets to a row of
   slots, sorted afterwards. Counts and gathered values come from the same tiles, so it is exact
   too; rows whose brackets overflow the slots go to step 2 (their row blocks only).
"""
import math

import torch
import triton
import triton.language as tl

from .config import pipelined
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
# bracketed selection: thresholds from a sample, one counting pass, one gathering pass
# ---------------------------------------------------------------------------------------------

#: Columns of the sample the thresholds are estimated from (all of them for smaller problems).
SAMPLE_COLUMNS = 2048
#: Slots per row of the gathering pass (both brackets together; 4 KiB per row): a row whose brackets hold
#: more candidates falls back to the radix search.
GATHER_SLOTS = 1024
#: The thresholds span this many standard deviations of the sample's rank estimate on each side.
COVER = 5.0
#: The share of the slots the two brackets are expected to fill together (:func:`threshold_counts`); on
#: random unit vectors at 32768² × 128 the fullest of 32768 rows held about twice the mean.
SLOT_SHARE = 1.0 / 3.0
#: At most this many thresholds per rank: the counting pass compares and sums once per threshold and pair.
MAX_THRESHOLDS = 32


def _spread(q, present):
    """Half the span of a rank's thresholds, in sample positions: ``COVER`` standard deviations of the
    position of quantile ``q`` among ``present`` sampled candidates (binomial), plus one."""
    return COVER * (q * (1.0 - q) * present) ** 0.5 + 1.0


def threshold_counts(columns, outer, inner, sample=SAMPLE_COLUMNS, slots=GATHER_SLOTS):
    """``(top, bottom)``: thresholds per row for the band's top (rank ≈ ``inner·outer·M``) and its bottom
    (rank ≈ ``outer·M``) among ``columns`` (M) candidates, so that the two brackets are expected to hold
    ``SLOT_SHARE`` of the ``slots`` together whatever M.

    A rank at quantile ``q`` gets thresholds over ±:func:`_spread` sample positions, ``w = 2·spread·M/S``
    candidates; T thresholds cut them into brackets of ``w/T``. Brackets therefore widen like ``M/√S``:
    fixed counts would overflow the slots as M grows (at 65536 columns about one row in twenty would, and
    each such row sends its whole row block to the radix search). The budget ``B = SLOT_SHARE·slots`` is
    split by ``T_k = √w_k·(√w_top + √w_bottom)/B``, the fewest thresholds in all for which
    ``w_top/T_top + w_bottom/T_bottom <= B``; at least 2 and at most ``MAX_THRESHOLDS`` each."""
    columns = max(1, columns)
    s = max(1, min(columns, sample))
    hi = max(1.0, outer * columns)
    widths = [2.0 * _spread(min(1.0, rank / columns), s) * columns / s for rank in (inner * hi, hi)]
    total = sum(w ** 0.5 for w in widths)
    budget = SLOT_SHARE * slots
    return tuple(min(MAX_THRESHOLDS, max(2, math.ceil(w ** 0.5 * total / budget))) for w in widths)


@triton.jit
def _ring_count_at_kernel(
    inputs, roles, sizes, THRESH, COUNTS,
    ROLE: tl.constexpr, NORMALIZE: tl.constexpr, INPUT_PRECISION: tl.constexpr, T: tl.constexpr,
    T_POW2: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    PIPELINE: tl.constexpr = False,
):
    """``COUNTS[k, i]``: row ``i``'s candidates whose half (``tiles.tile_norms``) is at least
    ``THRESH[k, i]`` (``[T, N]`` each, fp32 thresholds and int32 counts; ``T_POW2``: T rounded up to a
    power of two): one pass over the row block's tiles (``PIPELINE``: each tile's product issued one tile
    ahead, as the forward's: the same values)."""
    Q, C, RQ, RC = inputs[0], inputs[1], inputs[2], inputs[3]
    N, M, M_TOTAL, D, stride_q, stride_c = sizes[0], sizes[1], sizes[2], sizes[3], sizes[4], sizes[5]
    row0 = tl.program_id(0) * BLOCK_M
    rows = row0 + tl.arange(0, BLOCK_M)
    row_mask = rows < N
    ks = tl.arange(0, T_POW2)
    counts = tl.zeros((BLOCK_M, T_POW2), dtype=tl.int32)
    MAY_BE_PLAIN: tl.constexpr = not (ROLE[HAS_LABELS] or ROLE[MASK_LABELS] or ROLE[HAS_GUIDE])
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
            values = tl.where(candidate, half, float("-inf"))  # thresholds are never -inf
        for k in tl.static_range(T):
            threshold = tl.load(THRESH + k * N + rows, mask=row_mask, other=float("inf"))
            # summed as fp32 ones: a tile's count is at most BLOCK_N, exact, and the compare-and-add
            # takes fewer instructions than int32's (the static model: 2.86 -> 2.01 ms at 32768² × 128)
            at_least = tl.sum((values >= threshold[:, None]).to(tl.float32), axis=1).to(tl.int32)
            counts += tl.where(ks[None, :] == k, at_least[:, None], 0)
    tl.store(COUNTS + ks[None, :] * N + rows[:, None], counts, mask=row_mask[:, None] & (ks < T)[None, :])


@triton.jit
def _ring_gather_kernel(
    inputs, roles, sizes, BRACKET, OUT, FILLED,
    ROLE: tl.constexpr, NORMALIZE: tl.constexpr, INPUT_PRECISION: tl.constexpr, SLOTS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, PIPELINE: tl.constexpr = False,
):
    """Row ``i``'s candidate halves ``x`` (``tiles.tile_norms``) inside either bracket, ``BRACKET[0, i] <= x < BRACKET[1, i]``
    or ``BRACKET[2, i] <= x < BRACKET[3, i]`` (``[4, N]`` fp32), into ``OUT[i, :]`` (``[N, SLOTS]``
    fp32, in no particular order: each takes its slot from an atomic count of its row, ``FILLED[i]``
    (int32, zeros first), which ends as their number; those past ``SLOTS`` are dropped, slots not
    written keep what the caller put there; the row is complete when ``FILLED[i] <= SLOTS``). Sorted
    afterwards, the slots are the same whatever the order: no scan of the tile per row."""
    Q, C, RQ, RC = inputs[0], inputs[1], inputs[2], inputs[3]
    N, M, M_TOTAL, D, stride_q, stride_c = sizes[0], sizes[1], sizes[2], sizes[3], sizes[4], sizes[5]
    row0 = tl.program_id(0) * BLOCK_M
    rows = row0 + tl.arange(0, BLOCK_M)
    row_mask = rows < N
    MAY_BE_PLAIN: tl.constexpr = not (ROLE[HAS_LABELS] or ROLE[MASK_LABELS] or ROLE[HAS_GUIDE])
    FLAT: tl.constexpr = BLOCK_M * BLOCK_N
    top_lo = tl.load(BRACKET + rows, mask=row_mask, other=float("inf"))
    top_hi = tl.load(BRACKET + N + rows, mask=row_mask, other=float("inf"))
    bottom_lo = tl.load(BRACKET + 2 * N + rows, mask=row_mask, other=float("inf"))
    bottom_hi = tl.load(BRACKET + 3 * N + rows, mask=row_mask, other=float("inf"))
    q_block, raw = pipeline_start(Q, C, rows, row_mask, M_TOTAL, D, stride_q, stride_c, BLOCK_M, BLOCK_N, BLOCK_D,
                                  INPUT_PRECISION, PIPELINE)
    for c0 in range(0, M_TOTAL, BLOCK_N):
        cols = c0 + tl.arange(0, BLOCK_N)
        col_mask = cols < M_TOTAL
        _cosines, half, _rq, raw = pipeline_step(q_block, raw, Q, C, RQ, RC, rows, cols, row_mask, col_mask, M_TOTAL,
                                                 D, stride_q, stride_c, NORMALIZE, BLOCK_M, BLOCK_N, BLOCK_D,
                                                 INPUT_PRECISION, PIPELINE)
        inside = (((half >= top_lo[:, None]) & (half < top_hi[:, None]))
                  | ((half >= bottom_lo[:, None]) & (half < bottom_hi[:, None])))
        plain = False
        if MAY_BE_PLAIN:
            plain = plain_tile(row0, c0, True, rows, row_mask, N, M, M_TOTAL, roles, ROLE, BLOCK_M, BLOCK_N)
        if not plain:  # a plain tile (tiles.plain_tile): every pair a candidate, no per-pair role test
            inside = inside & tile_roles(rows, cols, row_mask, col_mask, M, roles, ROLE, BLOCK_M, BLOCK_N)[1]
        # flat: Triton 3.9 cannot give an atomic's result the layout of the products' accumulator
        row_of = tl.reshape(rows[:, None] + cols[None, :] * 0, (FLAT,))
        taken = tl.reshape(inside, (FLAT,))
        slot = tl.atomic_add(FILLED + row_of, 1, mask=taken, sem="relaxed")  # the pair's place in its row
        tl.store(OUT + row_of.to(tl.int64) * SLOTS + slot, tl.reshape(half, (FLAT,)), mask=taken & (slot < SLOTS))


def count_at(tiles, config, thresholds):
    """int32 ``[T, N]``: each row's candidates at or above each of its thresholds (fp32 ``[T, N]``)."""
    t = tiles
    thresholds = thresholds.contiguous()
    counts = torch.empty(thresholds.shape, dtype=torch.int32, device=t.query.device)
    flags = t.constexprs()
    _ring_count_at_kernel[(triton.cdiv(t.n, config.block_m),)](
        t.inputs, t.roles, t.sizes, thresholds, counts, ROLE=flags["ROLE"], NORMALIZE=flags["NORMALIZE"],
        INPUT_PRECISION=flags["INPUT_PRECISION"], T=thresholds.shape[0],
        T_POW2=triton.next_power_of_2(thresholds.shape[0]), **config.kernel_kwargs(t.d),
        PIPELINE=pipelined(config, t.d),
    )
    return counts


def gather_brackets(tiles, config, brackets, slots=GATHER_SLOTS):
    """``(values, filled)``: fp32 ``[N, slots]``, each row's candidate halves inside either of its two
    brackets (fp32 ``[4, N]``: ``[lo, hi)`` of the top's, then of the bottom's), ``-inf`` in the slots
    left over; int32 ``[N]``, how many there were (more than ``slots``: the row is incomplete)."""
    t = tiles
    out = torch.full((t.n, slots), float("-inf"), dtype=torch.float32, device=t.query.device)
    filled = torch.zeros(t.n, dtype=torch.int32, device=t.query.device)
    flags = t.constexprs()
    _ring_gather_kernel[(triton.cdiv(t.n, config.block_m),)](
        t.inputs, t.roles, t.sizes, brackets.contiguous(), out, filled, ROLE=flags["ROLE"],
        NORMALIZE=flags["NORMALIZE"], INPUT_PRECISION=flags["INPUT_PRECISION"], SLOTS=slots,
        **config.kernel_kwargs(t.d), PIPELINE=pipelined(config, t.d),
    )
    return out, filled


def sample_thresholds(sample, count, rank, thresholds):
    """fp32 ``[thresholds, N]``: values around each row's estimated value of descending ``rank``
    (int64 ``[N]``) among its ``count`` candidates, from ``sample`` (fp32 ``[N, S]``: the values of
    some columns, sorted in descending order, the non-candidates ``-inf`` at the end).

    The rank's position in the sample is estimated by proportion; the thresholds are sample values
    spaced evenly around it so that they span ``COVER`` standard deviations of that estimate (the
    binomial spread of a quantile of ``S`` draws) on each side. A row without sampled candidates
    gets ``+inf`` thresholds: its bracket is then the whole row."""
    s = sample.shape[1]
    present = torch.isfinite(sample).sum(dim=1)  # sampled candidates (the sample has no +inf)
    m = count.clamp(min=1).to(torch.float64)
    q = ((rank.to(torch.float64) + 0.5) / m).clamp(0.0, 1.0)
    p = present.to(torch.float64)
    center = q * p - 0.5
    spread = _spread(q, p)
    step = torch.clamp(2.0 * spread / thresholds, min=1.0)
    offsets = torch.arange(thresholds, dtype=torch.float64, device=sample.device) - (thresholds - 1) / 2.0
    position = torch.round(center[:, None] + offsets[None, :] * step[:, None])
    position = torch.minimum(position.clamp(min=0.0), (p - 1.0).clamp(min=0.0)[:, None]).to(torch.int64)
    values = torch.gather(sample, 1, position.clamp(max=max(s - 1, 0)))
    values = torch.where((present > 0)[:, None] & torch.isfinite(values), values, float("inf"))
    return values.T.contiguous().to(torch.float32)


def brackets_from_counts(thresholds, counts, count, rank):
    """From the counts at the thresholds (``[T, N]``), each row's bracket ``[lo, hi)`` holding its
    descending ``rank`` (int64 ``[N]``) among ``count`` candidates: ``(lo, hi, above, inside)``, with
    ``above`` the candidates at or above ``hi`` (those of higher rank) and ``inside`` those in it."""
    need = (rank + 1)[None, :]
    c = counts.to(torch.int64)
    reach = c >= need  # the threshold is at or below the rank's value
    inf = torch.tensor(float("inf"), dtype=thresholds.dtype, device=thresholds.device)
    lo = torch.where(reach, thresholds, -inf).amax(dim=0)
    at_lo = torch.where(reach, c, count[None, :].to(torch.int64)).amin(dim=0)
    hi = torch.where(~reach, thresholds, inf).amin(dim=0)
    above = torch.where(~reach, c, 0).amax(dim=0)
    at_lo = torch.minimum(at_lo, count.to(torch.int64))
    return lo, hi, above, at_lo - above


def ring_band_bracketed(tiles, config, thresholds_top, thresholds_bottom, count, rank_top, rank_bottom,
                        slots=GATHER_SLOTS):
    """``(h_lo, h_hi, resolved)``: the halves of ranks ``rank_bottom`` and ``rank_top`` for the rows that
    one counting pass and one gathering pass resolve (bool ``resolved``); ranks int64 ``[N]``, ``count`` the candidate counts,
    the thresholds fp32 ``[T, N]`` around each rank's value (e.g. :func:`sample_thresholds`).

    1. the counting pass counts each row's candidates at or above every threshold of both ranks;
    2. each rank's bracket is the pair of adjacent thresholds whose counts enclose it (or the row's
       ends), so the counts say how many candidates lie above it and inside it;
    3. the gathering pass writes the candidates inside either bracket (at most ``slots``) to a row of
       slots; sorted, a rank's value is the slot after the gathered values at or above its bracket
       and its ``rank - above`` bracket-mates.

    Exact on the tiles' halves: thresholds only choose the brackets; counts and values come from the
    same tiles as the loss's. A row whose brackets hold more than ``slots`` candidates is not resolved
    (its values are then garbage)."""
    t_top = thresholds_top.shape[0]
    thr = torch.cat([thresholds_top, thresholds_bottom]).to(torch.float32)
    counts = count_at(tiles, config, thr)
    top = brackets_from_counts(thr[:t_top], counts[:t_top], count, rank_top)
    bottom = brackets_from_counts(thr[t_top:], counts[t_top:], count, rank_bottom)
    brackets = torch.stack([top[0], top[1], bottom[0], bottom[1]]).to(torch.float32)
    gathered, filled = gather_brackets(tiles, config, brackets, slots)
    gathered = gathered.sort(dim=1, descending=True).values
    # a rank's slot: the gathered values at or above its bracket (those of the other bracket), then
    # its place inside its own
    slot_top = (gathered >= brackets[1][:, None]).sum(dim=1) + rank_top - top[2]
    slot_bottom = (gathered >= brackets[3][:, None]).sum(dim=1) + rank_bottom - bottom[2]
    v_hi = gathered.gather(1, slot_top.clamp(0, slots - 1)[:, None]).squeeze(1)
    v_lo = gathered.gather(1, slot_bottom.clamp(0, slots - 1)[:, None]).squeeze(1)
    return v_lo, v_hi, filled <= slots
