"""Device functions shared by every kernel of the core: one tile's logits, its roles, its gradient.

Every kernel that needs a tile's logits calls :func:`tile_cosines` with the same block sizes, so
the Ring selection, the forward and both backward passes see bit-identical logits (the Ring band
is exact only on the values the loss itself uses).
"""
import triton
import triton.language as tl

#: The role switches, passed to every kernel as one constexpr tuple ``ROLE`` in this order
#: (``problem.role_constexprs`` builds it); the constants below index it (``ROLE[HAS_POS]``).
ROLE_SWITCHES = ("HAS_POS", "HAS_LABELS", "MASK_LABELS", "HAS_SELF", "KEY_NEGATIVES", "DECOUPLED", "HAS_BAND",
                 "HAS_GUIDE", "GUIDE_BLOCK_D", "GUIDE_PRECISION")
HAS_POS = tl.constexpr(0)  # one positive per row, from the POS vector
HAS_LABELS = tl.constexpr(1)  # positives share a label (no POS)
MASK_LABELS = tl.constexpr(2)  # POS and labels: same-label keys other than the positive are excluded
HAS_SELF = tl.constexpr(3)  # the SELF column of each row is excluded
KEY_NEGATIVES = tl.constexpr(4)  # in-batch keys are candidate negatives
DECOUPLED = tl.constexpr(5)  # positives are left out of the denominator
HAS_BAND = tl.constexpr(6)  # candidates restricted to the row's band [BAND_LO, BAND_HI]
HAS_GUIDE = tl.constexpr(7)  # candidates above the guide's limit are excluded
GUIDE_BLOCK_D = tl.constexpr(8)  # the guide's BLOCK_D
GUIDE_PRECISION = tl.constexpr(9)  # the guide's dot-product precision

LOG2E = tl.constexpr(1.4426950408889634)
LN2 = tl.constexpr(0.6931471805599453)  # tl.log lowers to libdevice's logf (about 20 instructions); log2 to MUFU.LG2


@triton.jit
def exp_minus(x, shift):
    """``e^(x - shift)`` as one FFMA and one ``ex2.approx.ftz`` (``tl.exp`` lowers to the non-ftz
    ``ex2`` with a subnormal fix-up: three more instructions per element, for results below 1e-38)."""
    return tl.math.exp2(x * LOG2E - shift * LOG2E)


#: The largest ``|scale|`` at which unit-vector logits are shifted by the bound ``|scale|`` rather than by
#: each line's running max (:func:`logits_bounded`): every ``e^(S - |scale|) >= e^(-2·|scale|)`` then stays
#: a normal fp32 number (``2·40·log2(e) = 115 < 126``), so nothing underflows that a max shift would keep.
BOUNDED_SCALE_MAX = tl.constexpr(40.0)
#: ... and rows span at least this many column tiles: below, a row's denominator lies mostly in tiles with
#: positives, and the running max keeps a small problem's results exact where PyTorch's are (one pair: 0).
BOUNDED_MIN_TILES = tl.constexpr(4)


@triton.jit
def logits_bounded(scale, M_TOTAL, BLOCK_N: tl.constexpr, NORMALIZE: tl.constexpr):
    """Whether every logit ``scale·<q̂, ĉ>`` of the problem is known to lie in ``[-|scale|, |scale|]`` with
    ``|scale| <= BOUNDED_SCALE_MAX`` (unit vectors, rows of at least ``BOUNDED_MIN_TILES`` tiles; a runtime
    scalar; ``NORMALIZE`` False: never): then an online softmax may start its max at ``|scale|`` and a tile whose pairs are all in the
    denominator needs no max of its own, no rescaling and no reduction for it (``contrastive_fwd``).
    Rounding can put a cosine a few ulps above 1: ``e^(S - |scale|)`` is then ``1 + 1e-5`` at most,
    harmless; the log-sum-exp's rounding is then that of ``|scale|`` rather than of the row's max."""
    if NORMALIZE:
        bounded = (tl.abs(scale) <= BOUNDED_SCALE_MAX) & (M_TOTAL >= BOUNDED_MIN_TILES * BLOCK_N)
    else:
        bounded = False
    return bounded


@triton.jit
def exp_of_cosines(half, row_scale, shift, SHARED: tl.constexpr = False):
    """``e^(scale·cosines - shift)`` of a tile given as :func:`tile_norms` splits it: ``half`` (the raw
    products times the columns' inverse norms) and ``row_scale = scale·rq_i`` (``[BLOCK_M]``), so that the
    exponent is one FFMA per pair on a per-row factor (``scale·rq_i·log2(e)``, formed once per row) and
    neither the cosines nor the logits are formed: two multiplications per pair fewer than :func:`exp_minus`
    of the logits (whose last bit may differ). Every pass forms the terms of a plain tile (without hard
    negatives; with a Ring band, tested on ``half`` too) this way, so a row's probabilities in the backward
    are those its forward summed; other tiles use :func:`exp_minus` of their logits. ``SHARED``: by :func:`exp2_shared`
    (for kernels whose epilogue the ``ex2`` unit binds)."""
    x = half * (row_scale * LOG2E)[:, None] - shift * LOG2E
    if SHARED:
        y = exp2_shared(x)
    else:
        y = tl.math.exp2(x)
    return y


@triton.jit
def exp2_emulated(x):
    """``2^x`` for ``x`` in ``[-126, 127]`` on the FP32 pipeline, without the ``ex2`` unit (as FlashAttention-4
    does for part of its exponentials, Zadouri et al. 2025): ``x = j + f`` with ``j`` an integer and
    ``|f| <= 1/2`` (adding ``1.5·2^23`` leaves ``j`` in the sum's last bits), ``2^f`` by a degree-5
    polynomial with ``2^0 = 1`` exactly
    (relative error at most 1.9e-7 in fp32, as ``ex2.approx``'s), ``j`` added to its exponent bits: nine
    FP32 instructions instead of one ``ex2``."""
    t = x + 12582912.0
    f = x - (t - 12582912.0)
    p = 0.001326472731307149 * f + 0.009671512991189957
    p = p * f + 0.05550733581185341
    p = p * f + 0.24022242426872253
    p = p * f + 0.6931470036506653
    p = p * f + 1.0
    return (p.to(tl.int32, bitcast=True) + (t.to(tl.int32, bitcast=True) << 23)).to(tl.float32, bitcast=True)


@triton.jit
def _columns_halves(x):
    """``x`` ``[R, C]`` as its first and last ``C/2`` columns."""
    R: tl.constexpr = x.shape[0]
    C: tl.constexpr = x.shape[1]
    return tl.split(tl.permute(tl.reshape(x, (R, 2, C // 2)), (0, 2, 1)))


@triton.jit
def _columns_joined(a, b):
    """The ``[R, 2C]`` tile whose first and last ``C`` columns are ``a`` and ``b`` (:func:`_columns_halves`'s inverse)."""
    R: tl.constexpr = a.shape[0]
    C: tl.constexpr = a.shape[1]
    return tl.reshape(tl.permute(tl.join(a, b), (0, 2, 1)), (R, 2 * C))


@triton.jit
def exp2_shared(x):
    """``2^x`` of a ``[R, C]`` tile (``x <= 127``; ``C`` a power of two, at least 8), its first ``C/8`` columns by :func:`exp2_emulated` (their
    arguments clamped at -126: ``2^-126`` for anything smaller, where ``ex2.approx.ftz`` gives 0), the others
    by ``ex2``: the ``ex2`` unit (16 results per clock per SM on sm_90) and the FP32 pipeline (128) share
    the work. For epilogues of one exponential per pair and few other instructions (the forward's row
    products, the dC pass), where the ``ex2`` unit binds (``python -m benchmarks.static``); the column
    splits are register moves in the MMA accumulator's layout (no shuffles, checked in the SASS)."""
    a, b = _columns_halves(x)
    a0, a1 = _columns_halves(a)
    a00, a01 = _columns_halves(a0)
    e0 = _columns_joined(exp2_emulated(tl.maximum(a00, -126.0)), tl.math.exp2(a01))
    return _columns_joined(_columns_joined(e0, tl.math.exp2(a1)), tl.math.exp2(b))


@triton.jit
def tile_cosines(Q, C, RQ, RC, rows, cols, row_mask, col_mask, D, stride_q, stride_c,
                 NORMALIZE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                 BLOCK_D: tl.constexpr, INPUT_PRECISION: tl.constexpr):
    """``<q̂_i, ĉ_j>`` of the tile ``rows × cols`` in fp32, ``[BLOCK_M, BLOCK_N]``: the first of
    :func:`tile_cosine_parts`."""
    return tile_cosine_parts(Q, C, RQ, RC, rows, cols, row_mask, col_mask, D, stride_q, stride_c, NORMALIZE,
                             BLOCK_M, BLOCK_N, BLOCK_D, INPUT_PRECISION)[0]


@triton.jit
def tile_cosine_parts(Q, C, RQ, RC, rows, cols, row_mask, col_mask, D, stride_q, stride_c,
                      NORMALIZE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                      BLOCK_D: tl.constexpr, INPUT_PRECISION: tl.constexpr):
    """``(cosines, half, rq)`` of the tile ``rows × cols`` (:func:`tile_norms`), fp32.

    The dot products run over D in ``BLOCK_D`` chunks on the raw rows; the inverse norms ``RQ``
    and ``RC`` (fp32) are applied to the fp32 result, so no normalized copy is ever written.
    Rows and columns outside the masks read zeros.
    """
    offs_d = tl.arange(0, BLOCK_D)
    q_rows = Q + rows.to(tl.int64)[:, None] * stride_q
    c_cols = C + cols.to(tl.int64)[None, :] * stride_c
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        d_mask = (d0 + offs_d) < D
        q = tl.load(q_rows + (d0 + offs_d)[None, :], mask=row_mask[:, None] & d_mask[None, :], other=0.0)
        c_t = tl.load(c_cols + (d0 + offs_d)[:, None], mask=col_mask[None, :] & d_mask[:, None], other=0.0)
        acc = tl.dot(q, c_t, acc, input_precision=INPUT_PRECISION)
    return tile_norms(acc, RQ, RC, rows, cols, row_mask, col_mask, NORMALIZE)


@triton.jit
def tile_norms(acc, RQ, RC, rows, cols, row_mask, col_mask, NORMALIZE: tl.constexpr):
    """``(cosines, half, rq)`` of a tile's raw dot products ``acc``: ``half = acc·rc_j`` (the columns'
    inverse norms), ``rq`` the rows' (``[BLOCK_M]``; ones without ``NORMALIZE``) and ``cosines =
    half·rq_i``. A plain tile's exponentials need only ``half`` and one factor per row
    (:func:`exp_of_cosines`); the compiler drops the cosines where nothing else reads them."""
    rq = row_norms(RQ, rows, row_mask, NORMALIZE)
    if NORMALIZE:
        half = acc * tl.load(RC + cols, mask=col_mask, other=0.0)[None, :]
        cosines = half * rq[:, None]
    else:
        half = acc
        cosines = acc
    return cosines, half, rq


@triton.jit
def row_norms(RQ, rows, row_mask, NORMALIZE: tl.constexpr):
    """The rows' inverse norms (fp32 ``[BLOCK_M]``; ones without ``NORMALIZE``), as :func:`tile_norms` reads them."""
    if NORMALIZE:
        rq = tl.load(RQ + rows, mask=row_mask, other=0.0)
    else:
        rq = tl.where(row_mask, 1.0, 1.0)
    return rq


@triton.jit
def row_block_operand(Q, rows, row_mask, D, stride_q, BLOCK_D: tl.constexpr):
    """The row block's ``[BLOCK_M, BLOCK_D]`` operand of :func:`tile_dot` (``D <= BLOCK_D``)."""
    offs_d = tl.arange(0, BLOCK_D)
    return tl.load(Q + rows.to(tl.int64)[:, None] * stride_q + offs_d[None, :],
                   mask=row_mask[:, None] & (offs_d < D)[None, :], other=0.0)


@triton.jit
def pipeline_start(Q, C, rows, row_mask, M_TOTAL, D, stride_q, stride_c, BLOCK_M: tl.constexpr,
                   BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, INPUT_PRECISION: tl.constexpr,
                   PIPELINE: tl.constexpr):
    """``(q_block, the first tile's raw product)`` of a row block's tile loop over the columns, as
    :func:`pipeline_step` carries them (placeholders without ``PIPELINE``)."""
    if PIPELINE:
        q_block = row_block_operand(Q, rows, row_mask, D, stride_q, BLOCK_D)
        first = tl.arange(0, BLOCK_N)
        raw = tile_dot(q_block, C, first, first < M_TOTAL, D, stride_c, BLOCK_M, BLOCK_N, BLOCK_D, INPUT_PRECISION)
    else:
        q_block = 0.0
        raw = 0.0
    return q_block, raw


@triton.jit
def pipeline_step(q_block, raw, Q, C, RQ, RC, rows, cols, row_mask, col_mask, M_TOTAL, D, stride_q, stride_c,
                  NORMALIZE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                  INPUT_PRECISION: tl.constexpr, PIPELINE: tl.constexpr):
    """``(cosines, half, rq, the raw product to carry)`` of the tile at cols (:func:`tile_norms`) in a tile
    loop over the columns. With ``PIPELINE`` (``kernels.config.pipelined``) the next tile's product is
    issued first (past the last tile: all masked, a product of zeros never read), then ``raw``, made a
    tile earlier, gets its norms, so the caller's epilogue overlaps that product; without,
    :func:`tile_cosine_parts`. The same bits either way."""
    if PIPELINE:
        ahead = cols + BLOCK_N
        carried = tile_dot(q_block, C, ahead, ahead < M_TOTAL, D, stride_c, BLOCK_M, BLOCK_N, BLOCK_D,
                           INPUT_PRECISION)
        cosines, half, rq = tile_norms(raw, RQ, RC, rows, cols, row_mask, col_mask, NORMALIZE)
    else:
        carried = raw
        cosines, half, rq = tile_cosine_parts(Q, C, RQ, RC, rows, cols, row_mask, col_mask, D, stride_q, stride_c,
                                              NORMALIZE, BLOCK_M, BLOCK_N, BLOCK_D, INPUT_PRECISION)
    return cosines, half, rq, carried


@triton.jit
def column_block_operand(C, cols, col_mask, D, stride_c, BLOCK_D: tl.constexpr):
    """The column block's ``[BLOCK_D, BLOCK_N]`` operand of :func:`tile_dot_rows` (``D <= BLOCK_D``)."""
    offs_d = tl.arange(0, BLOCK_D)
    return tl.load(C + cols.to(tl.int64)[None, :] * stride_c + offs_d[:, None],
                   mask=col_mask[None, :] & (offs_d < D)[:, None], other=0.0)


@triton.jit
def tile_dot_rows(q_rows, row_mask, d_mask, c_t, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                  INPUT_PRECISION: tl.constexpr):
    """:func:`tile_dot` with the columns fixed (``c_t``, :func:`column_block_operand`) and the rows loaded
    from ``q_rows`` (``[BLOCK_M, BLOCK_D]`` addresses, advanced by the caller): a loop over row blocks
    issues the next block's product ahead the same way."""
    q = tl.load(q_rows, mask=row_mask[:, None] & d_mask[None, :], other=0.0)
    return tl.dot(q, c_t, tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32), input_precision=INPUT_PRECISION)


@triton.jit
def tile_dot(q, C, cols, col_mask, D, stride_c, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
             BLOCK_D: tl.constexpr, INPUT_PRECISION: tl.constexpr):
    """The raw dot products of ``q`` (:func:`row_block_operand`) with the columns ``cols`` when D fits one
    ``BLOCK_D`` chunk: :func:`tile_cosines`' product, the same operation bit for bit, without the norms.
    Nothing reads the result here, so a caller may issue the next tile's product before it works on
    the current one (software pipelining: the tile's epilogue runs while the tensor cores make the
    next tile's logits)."""
    offs_d = tl.arange(0, BLOCK_D)
    c_t = tl.load(C + cols.to(tl.int64)[None, :] * stride_c + offs_d[:, None],
                  mask=col_mask[None, :] & (offs_d < D)[:, None], other=0.0)
    return tl.dot(q, c_t, tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32), input_precision=INPUT_PRECISION)


@triton.jit
def tile_roles(rows, cols, row_mask, col_mask, M, roles, ROLE: tl.constexpr, BLOCK_M: tl.constexpr,
               BLOCK_N: tl.constexpr, PLAIN: tl.constexpr = False):
    """``(positive, candidate)`` bool ``[BLOCK_M, BLOCK_N]`` by the rules of ``core.pair_roles``.

    ``roles``/``ROLE``: the role vectors and switches (``problem.GROUPS["roles"]``, :data:`ROLE_SWITCHES`).
    Columns ``< M`` are in-batch keys, the others extra negatives. Positives come from ``POS``
    (one per row) or, without it, from equal labels (``HAS_LABELS``); with both (``MASK_LABELS``)
    a key sharing the row's label other than its positive is a false negative, excluded from
    everything. From O(N + M) index and label vectors only; positions outside the masks are neither.
    ``PLAIN``: the caller knows (:func:`plain_tile`) that every pair is a candidate negative, so the
    roles are constants and the code that tests them folds away.
    ``HAS_GUIDE``: a candidate whose guide similarity ``<GUIDE_ROWS[i], GUIDE_COLS[j]>`` (``GUIDE_D`` wide,
    fp32 accumulation) exceeds ``GUIDE_MAX[i]`` is none (never with ``PLAIN``).
    """
    _, _, _, _, _, _, GUIDE_ROWS, GUIDE_COLS, GUIDE_MAX, GUIDE_D, stride_gr, stride_gc = roles
    if PLAIN:
        positive = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int1)
        candidate = tl.full((BLOCK_M, BLOCK_N), 1, dtype=tl.int1)
    else:
        positive, candidate = _tile_roles_by_rule(rows, cols, row_mask, col_mask, M, roles, ROLE, BLOCK_M, BLOCK_N)
        if ROLE[HAS_GUIDE]:
            sim = tile_cosines(GUIDE_ROWS, GUIDE_COLS, GUIDE_MAX, GUIDE_MAX, rows, cols, row_mask, col_mask, GUIDE_D,
                               stride_gr, stride_gc, False, BLOCK_M, BLOCK_N, ROLE[GUIDE_BLOCK_D],
                               ROLE[GUIDE_PRECISION])
            limit = tl.load(GUIDE_MAX + rows, mask=row_mask, other=float("inf"))
            candidate = candidate & ((sim > limit[:, None]) == 0)
    return positive, candidate


@triton.jit
def plain_tile(row0, c0, inside, rows, row_mask, N, M, M_TOTAL, roles, ROLE: tl.constexpr, BLOCK_M: tl.constexpr,
               BLOCK_N: tl.constexpr):
    """Whether the tile ``[row0, row0 + BLOCK_M) × [c0, c0 + BLOCK_N)`` is plain: wholly inside the
    matrix, on one side of the key/extra boundary, and free of positives and self pairs, so that every
    pair in it is a candidate negative (for losses without labels; with a Ring band the band still
    applies, :func:`tile_denominator`). Most tiles of a large batch are; the kernels take a branch
    without per-pair role tests for them. ``inside``: the
    caller's own masks (e.g. a chunk's bounds) cut nothing off the tile."""
    POS, SELF, _, _, _, _, _, _, _, _, _, _ = roles
    plain = inside & (row0 + BLOCK_M <= N) & (c0 + BLOCK_N <= M_TOTAL) & ((c0 + BLOCK_N <= M) | (c0 >= M))
    if not ROLE[KEY_NEGATIVES]:
        plain = plain & (c0 >= M)
    if ROLE[HAS_POS]:
        pos = tl.load(POS + rows, mask=row_mask, other=-1)
        plain = plain & (tl.sum(((pos >= c0) & (pos < c0 + BLOCK_N)).to(tl.int32), axis=0) == 0)
    if ROLE[HAS_SELF]:
        own = tl.load(SELF + rows, mask=row_mask, other=-1)
        plain = plain & (tl.sum(((own >= c0) & (own < c0 + BLOCK_N)).to(tl.int32), axis=0) == 0)
    return plain


@triton.jit
def _tile_roles_by_rule(rows, cols, row_mask, col_mask, M, roles, ROLE: tl.constexpr, BLOCK_M: tl.constexpr,
                        BLOCK_N: tl.constexpr):
    POS, SELF, ROW_LABELS, COL_LABELS, _, _, _, _, _, _, _, _ = roles
    valid = row_mask[:, None] & col_mask[None, :]
    is_key = (cols < M)[None, :]
    if ROLE[HAS_SELF]:
        self_col = tl.load(SELF + rows, mask=row_mask, other=-1)
        not_self = cols[None, :] != self_col[:, None]
    else:
        not_self = valid
    if ROLE[HAS_POS]:
        pos_col = tl.load(POS + rows, mask=row_mask, other=-1)
        positive = cols[None, :] == pos_col[:, None]
    elif ROLE[HAS_LABELS]:
        row_label = tl.load(ROW_LABELS + rows, mask=row_mask, other=0)
        col_label = tl.load(COL_LABELS + cols, mask=col_mask & (cols < M), other=0)
        positive = (row_label[:, None] == col_label[None, :]) & is_key
    else:
        positive = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int1)
    positive = positive & not_self & valid
    if ROLE[KEY_NEGATIVES]:
        pool = valid
    else:
        pool = valid & (cols >= M)[None, :]
    if ROLE[MASK_LABELS]:
        row_label = tl.load(ROW_LABELS + rows, mask=row_mask, other=0)
        col_label = tl.load(COL_LABELS + cols, mask=col_mask & (cols < M), other=0)
        pool = pool & ((row_label[:, None] != col_label[None, :]) | (cols >= M)[None, :])
    candidate = pool & not_self & (positive == 0)
    return positive, candidate


@triton.jit
def tile_denominator(positive, candidate, half, rows, row_mask, roles, ROLE: tl.constexpr):
    """Candidates (inside each row's Ring band when given: its logits' ``[v_lo, v_hi]``, tested on the
    tile's ``half`` as ``band.half_domain_band`` maps it) plus, unless decoupled, the positives."""
    _, _, _, _, BAND_LO, BAND_HI, _, _, _, _, _, _ = roles
    if ROLE[HAS_BAND]:
        lo = tl.load(BAND_LO + rows, mask=row_mask, other=float("inf"))
        hi = tl.load(BAND_HI + rows, mask=row_mask, other=float("-inf"))
        candidate = candidate & (half >= lo[:, None]) & (half <= hi[:, None])
    if ROLE[DECOUPLED]:
        den = candidate
    else:
        den = candidate | positive
    return den


@triton.jit
def _softplus_of(x, u):
    """``log(1 + e^x)`` given ``u = e^-|x|``, without overflow, and accurate where ``u`` is below fp32's
    epsilon (``log1p(u) = log(w)·u/(w - 1)`` with ``w = 1 + u``); the division by :func:`_reciprocal`
    (``w - 1`` lies in ``[2^-24, 1]``), not the IEEE division's subroutine."""
    w = 1.0 + u
    ratio = u * _reciprocal(tl.where(w == 1.0, 1.0, w - 1.0))
    log1p = tl.where(w == 1.0, u, tl.math.log2(w) * LN2 * ratio)
    return tl.maximum(x, 0.0) + log1p


@triton.jit
def sigmoid_softplus(x):
    """``(σ(x), softplus(x))`` from one ``e^-|x|``."""
    u = tl.math.exp2(-tl.abs(x) * LOG2E)
    return _sigmoid_of(x, u), _softplus_of(x, u)


@triton.jit
def pair_terms(logits, positive, candidate, bias, PLAIN: tl.constexpr):
    """``(their derivatives in S, the terms)`` of SigLIP's pairwise terms ``softplus(-z·(S + bias))`` of the
    tile (``z = +1`` for a positive, -1 for a candidate negative, no term elsewhere), both from one
    ``e^-|x|`` (a caller that uses one of them leaves the other's instructions out); ``PLAIN``
    (:func:`plain_tile`): every pair a negative."""
    if PLAIN:  # z = -1: d softplus(x)/dx = σ(x)
        derivative, terms = sigmoid_softplus(logits + bias)
    else:
        sign = tl.where(positive, 1.0, -1.0)
        s, terms = sigmoid_softplus(-sign * (logits + bias))
        pair = positive | candidate
        derivative = tl.where(pair, -sign * s, 0.0)
        terms = tl.where(pair, terms, 0.0)
    return derivative, terms


@triton.jit
def _sigmoid_of(x, e):
    """``σ(x)`` given ``e = e^-|x|``: one :func:`_reciprocal` (``1 + e`` lies in [1, 2])."""
    r = _reciprocal(1.0 + e)
    return tl.where(x >= 0, r, e * r)


@triton.jit
def _reciprocal(v):
    """``1/v`` for ``v`` in ``[2^-24, 2]``, as ``rsqrt(v·v)``: one ``MUFU.RSQ`` and a multiplication, about
    2 ulp (as ``div.approx``, which Triton 3.6 does not offer; IEEE division is a subroutine of a dozen
    instructions)."""
    return tl.math.rsqrt(v * v)


@triton.jit
def tile_logit_grad(logits, half, row_scale, positive, candidate, den, rows, row_mask, cols, col_mask, M, grads, bias,
                    beta, g_scale, COLUMN_TERMS: tl.constexpr, HARD_NEGATIVES: tl.constexpr,
                    PAIRWISE_SIGMOID: tl.constexpr, PLAIN: tl.constexpr = False, FROM_COSINES: tl.constexpr = False,
                    PAIR_LOSS: tl.constexpr = False, SHARED_EXP: tl.constexpr = False):
    """``(dL/dS, dL/dS from the pairwise-sigmoid term alone, the rows' pair losses)`` of the tile, the first
    two times ``g_scale``; the pair losses (``[BLOCK_M]``, the forward's sums) with ``PAIR_LOSS`` only (else
    0), from the same exponentials as their gradient. ``PAIR_LOSS`` is for the pairwise sigmoid alone (SigLIP's
    gradient formed in the forward): no softmax term is formed.

    * softmax over the denominator times the LSE's gradient (with hard negatives: of ``(1+β)·S``
      and of ``β·S``), per row and, for symmetric losses, per key column;
    * the positives' share of the mean-positive gradient;
    * pairwise sigmoid: ``-z·σ(-z·(S + b))`` times the row's gradient (``z = ±1``: positive or not).

    ``where`` rather than a product keeps an overflowing ``exp`` of a masked logit out of it.
    ``PLAIN`` (see :func:`plain_tile`): no positive in the tile, every pair a candidate (in the
    denominator unless a Ring band leaves it out: ``den`` says).
    ``grads``: the saved terms and their incoming gradients (``problem.GROUPS["grads"]``).
    ``g_scale`` multiplies the incoming gradients (per row or column, not per pair): a power of two (the
    backward's ``σ``) gives the bits of the product taken afterwards, one multiplication per pair fewer.
    ``FROM_COSINES`` (a plain tile without hard negatives, as in the forward): the softmax terms by
    :func:`exp_of_cosines` of ``half`` and ``row_scale`` (:func:`tile_norms`; unused otherwise), with
    ``SHARED_EXP`` by :func:`exp2_shared`.
    """
    ROW_LSE, G_ROW_LSE, G_ROW_POS_W, ROW_LSE_BETA, G_ROW_LSE_BETA, G_ROW_PAIR, COL_LSE, G_COL_LSE, G_COL_POS_W = grads
    row_lse = tl.load(ROW_LSE + rows, mask=row_mask, other=0.0)
    g_row_lse = tl.load(G_ROW_LSE + rows, mask=row_mask, other=0.0) * g_scale
    g_row_pos_w = tl.load(G_ROW_POS_W + rows, mask=row_mask, other=0.0) * g_scale
    if PAIR_LOSS:  # the pairwise sigmoid alone: no softmax term to form (its incoming gradient is zero)
        grad = tl.zeros_like(logits)
    elif HARD_NEGATIVES:
        lse_beta = tl.load(ROW_LSE_BETA + rows, mask=row_mask, other=0.0)
        g_lse_beta = tl.load(G_ROW_LSE_BETA + rows, mask=row_mask, other=0.0) * g_scale
        p_main = tl.where(den, exp_minus((1.0 + beta) * logits, row_lse[:, None]), 0.0)
        p_beta = tl.where(den, exp_minus(beta * logits, lse_beta[:, None]), 0.0)
        grad = (1.0 + beta) * p_main * g_row_lse[:, None] + beta * p_beta * g_lse_beta[:, None]
    elif FROM_COSINES:
        grad = tl.where(den, exp_of_cosines(half, row_scale, row_lse[:, None], SHARED_EXP), 0.0) * g_row_lse[:, None]
    else:
        grad = tl.where(den, exp_minus(logits, row_lse[:, None]), 0.0) * g_row_lse[:, None]
    if not (PLAIN or PAIR_LOSS):
        grad += tl.where(positive, g_row_pos_w[:, None], 0.0)
    if COLUMN_TERMS:
        key_mask = col_mask & (cols < M)
        col_lse = tl.load(COL_LSE + cols, mask=key_mask, other=0.0)
        g_col_lse = tl.load(G_COL_LSE + cols, mask=key_mask, other=0.0) * g_scale
        if FROM_COSINES:  # no positive: extra negatives have no column terms
            grad += tl.where(den & key_mask[None, :],
                             exp_of_cosines(half, row_scale, col_lse[None, :], SHARED_EXP) * g_col_lse[None, :], 0.0)
        elif PLAIN:  # no positive; extra negatives have no column terms (``den``: a constant without a band)
            grad += tl.where(den & key_mask[None, :], exp_minus(logits, col_lse[None, :]) * g_col_lse[None, :], 0.0)
        else:
            g_col_pos_w = tl.load(G_COL_POS_W + cols, mask=key_mask, other=0.0) * g_scale
            in_key = key_mask[None, :]
            p_col = tl.where(den & in_key, exp_minus(logits, col_lse[None, :]), 0.0)
            grad += p_col * g_col_lse[None, :] + tl.where(positive & in_key, g_col_pos_w[None, :], 0.0)
    if PAIRWISE_SIGMOID:
        g_pair = tl.load(G_ROW_PAIR + rows, mask=row_mask, other=0.0) * g_scale
        derivative, terms = pair_terms(logits, positive, candidate, bias, PLAIN)
        pair_grad = derivative * g_pair[:, None]
        grad += pair_grad
        pair_loss = tl.sum(terms, axis=1) if PAIR_LOSS else 0.0
    else:
        pair_grad = 0.0
        pair_loss = 0.0
    return grad, pair_grad, pair_loss


@triton.jit
def order_key(values):
    """uint32 keys whose unsigned order is the order of the fp32 ``values``; -0.0 and +0.0 alike.

    Non-negative floats get the sign bit set; negative ones have all bits flipped (a larger
    magnitude gives a smaller key).
    """
    bits = tl.where(values == 0.0, 0.0, values).to(tl.uint32, bitcast=True)
    negative = (bits >> 31) != 0
    # ``^ 0xFFFFFFFF`` rather than ``~``: the same instruction compiled, and Triton 3.6's interpreter
    # evaluates ``~`` on uint32 as an xor with -1, which NumPy 2 refuses
    return tl.where(negative, bits ^ 0xFFFFFFFF, bits | 0x80000000)


@triton.jit
def key_value(keys):
    """The fp32 value of an :func:`order_key` key (its inverse)."""
    was_negative = (keys >> 31) == 0
    bits = tl.where(was_negative, keys ^ 0xFFFFFFFF, keys & 0x7FFFFFFF)
    return bits.to(tl.float32, bitcast=True)
