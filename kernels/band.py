"""The Ring band as an interval of the tiles' halves (see :func:`half_domain_band`)."""
import torch
import triton
import triton.language as tl

from .tiles import key_value

# tiles.order_key's keys of the finite fp32 values: -FLT_MAX .. FLT_MAX
_KEY_MIN = tl.constexpr(0x00800000)
_KEY_MAX = tl.constexpr(0xFF7FFFFF)


@triton.jit
def _first_key(r, mag, bound, STRICT: tl.constexpr):
    """Per element, the smallest order key (``tiles.order_key``) of a finite fp32 ``h`` with
    ``(h·r)·mag >= bound`` (``> bound`` with ``STRICT``), or ``_KEY_MAX + 1`` if none: a bisection over
    the keys (int64 bounds; the product is monotone in ``h``)."""
    lo = tl.zeros_like(bound).to(tl.int64) + _KEY_MIN
    hi = tl.zeros_like(bound).to(tl.int64) + _KEY_MAX + 1
    for _ in tl.static_range(33):  # 2^33 > the keys of finite values
        mid = (lo + hi) >> 1
        u = (key_value(mid.to(tl.uint32)) * r) * mag
        if STRICT:
            ok = u > bound
        else:
            ok = u >= bound
        hi = tl.where(ok, mid, hi)
        lo = tl.where(ok, lo, mid + 1)
    return lo


@triton.jit
def _half_band_kernel(V_LO, V_HI, SCALE, RQ, H_LO, H_HI, N, NORMALIZE: tl.constexpr, BLOCK: tl.constexpr):
    rows = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = rows < N
    v_lo = tl.load(V_LO + rows, mask=mask, other=float("inf"))
    v_hi = tl.load(V_HI + rows, mask=mask, other=float("-inf"))
    scale = tl.load(SCALE).to(tl.float32)
    if NORMALIZE:
        r = tl.load(RQ + rows, mask=mask, other=1.0)
    else:
        r = tl.full((BLOCK,), 1.0, tl.float32)
    mag = tl.abs(scale)
    # logit = sign·u(half), u = (half·r)·|scale| non-decreasing: the band in u's terms
    lo_u = tl.where(scale >= 0, v_lo, -v_hi)
    hi_u = tl.where(scale >= 0, v_hi, -v_lo)
    k_lo = _first_key(r, mag, lo_u, False)
    k_above = _first_key(r, mag, hi_u, True)
    h_lo = tl.where(k_lo <= _KEY_MAX, key_value(tl.minimum(k_lo, _KEY_MAX).to(tl.uint32)), float("inf"))
    h_hi = tl.where(k_above > _KEY_MIN, key_value(tl.maximum(k_above - 1, _KEY_MIN).to(tl.uint32)), float("-inf"))
    tl.store(H_LO + rows, h_lo, mask=mask)
    tl.store(H_HI + rows, h_hi, mask=mask)


def half_domain_band(v_lo: torch.Tensor, v_hi: torch.Tensor, scale: torch.Tensor, rq):
    """The Ring band ``v_lo <= logit <= v_hi`` (fp32 ``[N]``) as an interval ``[h_lo, h_hi]`` of the tiles'
    ``half`` (``tiles.tile_norms``), for the rows' inverse norms ``rq`` (fp32 ``[N]``; None without
    normalization) and ``scale`` (0-d fp32).

    Every tile forms a logit as ``scale·(half·rq_i)``, two fp32 products rounded to nearest (no ``.ftz``
    in the kernels' PTX): monotone in ``half`` (increasing for ``scale > 0``, decreasing below), so the
    halves whose logit lies in the band are exactly an interval, found by bisecting the fp32 values in
    order with the same two products (one launch, 33 steps per row). The kernels then test ``half``
    against it and never form a plain tile's logits: exact, two multiplications per pair fewer. A row
    whose band holds no attainable half (an empty ring: ``(+inf, -inf)``) gets ``h_lo > h_hi``; with
    ``scale = 0`` every half or none."""
    n = v_lo.shape[0]
    h_lo, h_hi = torch.empty_like(v_lo), torch.empty_like(v_hi)
    block = 128
    _half_band_kernel[(triton.cdiv(n, block),)](v_lo, v_hi, scale, v_lo if rq is None else rq, h_lo, h_hi, n,
                                               NORMALIZE=rq is not None, BLOCK=block)
    return h_lo, h_hi
