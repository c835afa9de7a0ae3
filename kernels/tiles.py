"""Device functions shared by every kernel of the core: one tile's logits, its roles, its gradient.

Every kernel that needs a tile's logits calls :func:`tile_cosines` with the same block sizes, so
the Ring selection, the forward and both backward passes see bit-identical logits (the Ring band
is exact only on the values the loss itself uses).
"""
import triton
import triton.language as tl


@triton.jit
def tile_cosines(Q, C, RQ, RC, rows, cols, row_mask, col_mask, D, stride_q, stride_c,
                 NORMALIZE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                 BLOCK_D: tl.constexpr, INPUT_PRECISION: tl.constexpr):
    """``<q̂_i, ĉ_j>`` of the tile ``rows × cols`` in fp32, ``[BLOCK_M, BLOCK_N]``.

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
    if NORMALIZE:
        rq = tl.load(RQ + rows, mask=row_mask, other=0.0)
        rc = tl.load(RC + cols, mask=col_mask, other=0.0)
        acc = acc * rq[:, None] * rc[None, :]
    return acc


@triton.jit
def tile_roles(rows, cols, row_mask, col_mask, M, POS, SELF, ROW_LABELS, COL_LABELS,
               HAS_POS: tl.constexpr, HAS_LABELS: tl.constexpr, HAS_SELF: tl.constexpr,
               KEY_NEGATIVES: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """``(positive, candidate)`` bool ``[BLOCK_M, BLOCK_N]`` by the rules of ``core.pair_roles``.

    Columns ``< M`` are in-batch keys, the others extra negatives. From O(N + M) index and label
    vectors only; positions outside the masks are neither.
    """
    valid = row_mask[:, None] & col_mask[None, :]
    is_key = (cols < M)[None, :]
    if HAS_SELF:
        self_col = tl.load(SELF + rows, mask=row_mask, other=-1)
        not_self = cols[None, :] != self_col[:, None]
    else:
        not_self = valid
    if HAS_POS:
        pos_col = tl.load(POS + rows, mask=row_mask, other=-1)
        positive = cols[None, :] == pos_col[:, None]
    elif HAS_LABELS:
        row_label = tl.load(ROW_LABELS + rows, mask=row_mask, other=0)
        col_label = tl.load(COL_LABELS + cols, mask=col_mask & (cols < M), other=0)
        positive = (row_label[:, None] == col_label[None, :]) & is_key
    else:
        positive = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int1)
    positive = positive & not_self & valid
    if KEY_NEGATIVES:
        pool = valid
    else:
        pool = valid & (cols >= M)[None, :]
    candidate = pool & not_self & (positive == 0)
    return positive, candidate


@triton.jit
def tile_denominator(positive, candidate, logits, rows, row_mask, BAND_LO, BAND_HI,
                     HAS_BAND: tl.constexpr, DECOUPLED: tl.constexpr):
    """Candidates (inside each row's Ring band ``[v_lo, v_hi]`` when given) plus, unless decoupled,
    the positives."""
    if HAS_BAND:
        lo = tl.load(BAND_LO + rows, mask=row_mask, other=float("inf"))
        hi = tl.load(BAND_HI + rows, mask=row_mask, other=float("-inf"))
        candidate = candidate & (logits >= lo[:, None]) & (logits <= hi[:, None])
    if DECOUPLED:
        den = candidate
    else:
        den = candidate | positive
    return den


@triton.jit
def tile_logit_grad(logits, positive, den, cols, col_mask, M,
                    row_lse, g_row_lse, g_row_pos_w,
                    COL_LSE, G_COL_LSE, G_COL_POS_W, COLUMN_TERMS: tl.constexpr):
    """``dL/dS`` of the tile: softmax over the denominator times the LSE's gradient, plus the
    positives' share of the mean-positive gradient, per row and (symmetric losses) per key column.

    ``where`` rather than a product keeps an overflowing ``exp`` of a masked logit out of it.
    """
    p = tl.where(den, tl.exp(logits - row_lse[:, None]), 0.0)
    grad = p * g_row_lse[:, None] + tl.where(positive, g_row_pos_w[:, None], 0.0)
    if COLUMN_TERMS:
        key_mask = col_mask & (cols < M)
        col_lse = tl.load(COL_LSE + cols, mask=key_mask, other=0.0)
        g_col_lse = tl.load(G_COL_LSE + cols, mask=key_mask, other=0.0)
        g_col_pos_w = tl.load(G_COL_POS_W + cols, mask=key_mask, other=0.0)
        in_key = key_mask[None, :]
        p_col = tl.where(den & in_key, tl.exp(logits - col_lse[None, :]), 0.0)
        grad += p_col * g_col_lse[None, :] + tl.where(positive & in_key, g_col_pos_w[None, :], 0.0)
    return grad


@triton.jit
def order_key(values):
    """uint32 keys whose unsigned order is the order of the fp32 ``values``; -0.0 and +0.0 alike.

    Non-negative floats get the sign bit set; negative ones have all bits flipped (a larger
    magnitude gives a smaller key).
    """
    bits = tl.where(values == 0.0, 0.0, values).to(tl.uint32, bitcast=True)
    negative = (bits >> 31) != 0
    return tl.where(negative, ~bits, bits | 0x80000000)


@triton.jit
def key_value(keys):
    """The fp32 value of an :func:`order_key` key (its inverse)."""
    was_negative = (keys >> 31) == 0
    bits = tl.where(was_negative, ~keys, keys & 0x7FFFFFFF)
    return bits.to(tl.float32, bitcast=True)
