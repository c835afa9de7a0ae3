"""The triton backend's forward and backward apply the Ring band exactly in both tile branches: plain tiles
(no positive or self pair: the band's comparisons are the only test, the softmax shifted by the band's
top) and the others, with and without the forward's row products.

As in test_ring_select_triton.py the logits go through the kernels unchanged (``query = I``, ``keys =
logitsᵀ``, no normalization: every dot product has one non-zero term), so the band's membership, the
denominator's counts and log-sum-exps can be checked against a float64 computation on the very same
values, ties at the band's ends included. The interpreter's 16 × 16 tiles make shapes of a few dozen
rows and columns hold plain band tiles, tiles with positives, partial tiles and tiles of extra negatives
in one problem.
"""
import pytest
import torch
from helpers import exact_product_rows, required, triton_status

from contrastive_ops.backends.naive import ring_band_sorted
from contrastive_ops.core import RoleSpec, pair_roles

_AVAILABLE, _WHY = triton_status()
if not _AVAILABLE and required("CONTRASTIVE_OPS_REQUIRE_TRITON"):
    raise RuntimeError(f"CONTRASTIVE_OPS_REQUIRE_TRITON=1 but the triton backend cannot run: {_WHY}")
pytestmark = [pytest.mark.interpreter, pytest.mark.skipif(not _AVAILABLE, reason=f"triton backend: {_WHY}")]

if _AVAILABLE:
    from contrastive_ops.kernels.config import pinned_config

    from contrastive_ops.backends import triton as triton_backend


def _values(kind: str, n: int, m_total: int) -> torch.Tensor:
    if kind == "continuous":
        return torch.randn(n, m_total) * 2
    # few distinct values: the band's ends are tied with many other candidates
    return torch.randint(-4, 5, (n, m_total)).float() * 0.75


def _terms(logits, m, spec, outer, inner, row_grad):
    """The triton forward's terms (dict) of ``logits [n, m_total]`` with the Ring band it selects."""
    n = logits.shape[0]
    query = torch.eye(n)
    keys, extra = logits[:, :m].T.contiguous(), logits[:, m:].T.contiguous()
    extra = extra if extra.shape[0] else None
    scale = torch.tensor(1.0)
    config = pinned_config().as_list()
    ring = RoleSpec(**{**spec.__dict__, "ring": (outer, inner)})
    band = triton_backend._ring_band_impl(query, keys, extra, scale, *ring.flat(), outer, inner, config)
    out = triton_backend._forward_impl(query, keys, extra, scale, None, *band, *ring.flat(), config, row_grad)
    return dict(zip(triton_backend.FORWARD_OUTPUTS, out)), band, (query, keys, extra)


def _expected(logits, m, spec, outer, inner):
    """float64 row terms on the same values: the band by a full sort, ties at its ends kept."""
    n, m_total = logits.shape
    positive, candidate = pair_roles(torch.arange(n), torch.arange(m_total), m, spec)
    v_lo, v_hi = ring_band_sorted(logits, candidate, outer, inner)
    den = positive | (candidate & (logits >= v_lo[:, None]) & (logits <= v_hi[:, None]))
    x = logits.double()
    lse = torch.logsumexp(torch.where(den, x, float("-inf")), dim=1)
    p = torch.where(den, torch.exp(x - lse[:, None]), 0.0)
    return den, lse, p


@pytest.mark.parametrize("values", ["continuous", "ties"])
@pytest.mark.parametrize("outer,inner", [(0.1, 0.1), (0.5, 0.2), (1.0, 0.0), (0.02, 0.0)])
@pytest.mark.parametrize("row_grad", [False, True])
def test_band_denominator_in_plain_and_mixed_tiles(values, outer, inner, row_grad, seed):
    n, m, extra = 37, 41, 29  # partial row blocks and column tiles; plain tiles of keys and of extras
    logits = _values(values, n, m + extra)
    spec = RoleSpec(pos_index=(torch.arange(n) * 7) % m, normalize=False)  # positives off the diagonal
    terms, _, (_, keys, extra_t) = _terms(logits, m, spec, outer, inner, row_grad)
    den, lse, p = _expected(logits, m, spec, outer, inner)
    assert torch.equal(terms["row_den_count"], den.sum(dim=1))  # membership exact, ties kept
    torch.testing.assert_close(terms["row_lse"].double(), lse, rtol=1e-6, atol=1e-5)
    if row_grad:  # the row products: A_i = Σ p_ij·ĉ_j with ĉ_j the j-th column of the logits' transpose
        columns = torch.cat([keys] + ([] if extra_t is None else [extra_t])).double()
        torch.testing.assert_close(terms["row_dq"].double(), p @ columns, rtol=1e-5, atol=1e-6)
    else:
        assert terms["row_dq"].numel() == 0


def test_empty_bands_give_exact_zero_gradients(seed):
    """Rows whose ring is empty have the positive alone in their denominator: p = 1 there, and the
    gradient of lse - pos is exactly zero with the row products as with the dQ pass."""
    import contrastive_ops as co

    q, k, e = torch.randn(37, 24), torch.randn(37, 24), torch.randn(19, 24)
    grads = []
    for backend in ("naive", "triton"):
        qq, kk, ee = (t.clone().requires_grad_() for t in (q, k, e))
        loss = co.ring_info_nce(qq, kk, ee, temperature=0.1, outer=0.01, inner=0.0, backend=backend, reduction="none")
        (loss * torch.linspace(0.5, 1.5, 37)).sum().backward()
        grads.append((qq.grad, kk.grad, ee.grad))
    for got in grads[1]:
        assert torch.count_nonzero(got) == 0


@pytest.mark.parametrize("in_batch", [True, False])
def test_gradients_match_float64_with_plain_band_tiles(in_batch, seed):
    """Loss and every gradient (the forward's row products, the dC pass) against float64 on an odd shape
    whose tiles are mostly plain, with extra negatives and ties at the band's ends."""
    import contrastive_ops as co

    n, d = 45, 20
    q, k, e = torch.randn(n, d), torch.randn(n, d), torch.randn(27, d)
    k[20:26] = k[3]  # identical keys: their logits tie for every row
    e[::5] = k[3]
    out = {}
    for backend, dtype in (("naive", torch.float64), ("triton", torch.float32)):
        qq, kk, ee = (t.to(dtype).clone().requires_grad_() for t in (q, k, e))
        loss = co.ring_info_nce(qq, kk, ee, temperature=0.2, outer=0.3, inner=0.2, in_batch_negatives=in_batch,
                                backend=backend, reduction="none")
        (loss * torch.linspace(0.5, 1.5, n, dtype=dtype)).sum().backward()
        out[backend] = (loss, qq.grad, kk.grad, ee.grad)
    for got, want in zip(out["triton"], out["naive"]):
        torch.testing.assert_close(got.double(), want.detach(), rtol=2e-4, atol=2e-5)


@pytest.mark.parametrize("scale", [14.285714, 1.0, 0.3, -7.0, 0.0])
def test_band_on_halves_holds_exactly_the_band_logits(scale, seed):
    """``band.half_domain_band``: the halves whose logit ``scale·(half·rq)`` (fp32, as the tiles form it)
    lies in ``[v_lo, v_hi]`` are exactly an interval, for any scale's sign, ties (few distinct halves,
    products that round together), signed zeros, subnormal products and empty bands."""
    from contrastive_ops.kernels.band import half_domain_band

    n = 64
    s = torch.tensor(scale, dtype=torch.float32)
    rq = torch.rand(n) * 4 + 0.05
    rq[:4] = torch.tensor([1.0, 1e-30, 3e-39, 2.0 ** 20])  # products near and in the subnormal range
    half = torch.cat([torch.randn(n, 200), torch.randint(-3, 4, (n, 60)).float() * 0.5,
                      torch.tensor([0.0, -0.0, 1e-45, -1e-45, 1e-38]).expand(n, 5)], dim=1)
    logits = s * (half * rq[:, None])
    ordered = logits.sort(dim=1).values
    pick = torch.randint(0, half.shape[1], (n, 2)).sort(dim=1).values
    v_lo, v_hi = ordered.gather(1, pick[:, :1]).squeeze(1), ordered.gather(1, pick[:, 1:]).squeeze(1)
    v_lo[-3:], v_hi[-3:] = float("inf"), float("-inf")  # empty rings
    h_lo, h_hi = half_domain_band(v_lo, v_hi, s, rq)
    want = (logits >= v_lo[:, None]) & (logits <= v_hi[:, None])
    got = (half >= h_lo[:, None]) & (half <= h_hi[:, None])
    assert torch.equal(got, want)
    assert not got[-3:].any()
    h1, h2 = half_domain_band(v_lo, v_hi, s, None)  # without normalization: logit = scale·half
    assert torch.equal((half >= h1[:, None]) & (half <= h2[:, None]),
                       (s * half >= v_lo[:, None]) & (s * half <= v_hi[:, None]))


@pytest.mark.parametrize("outer,inner,scale", [(0.3, 0.2, 1.0 / 0.07), (1.0, 0.0, 1.0 / 0.07), (0.3, 0.2, -3.0),
                                               (0.5, 0.0, 0.0)])
def test_band_membership_with_normalized_rows_and_a_scale(outer, inner, scale, seed):
    """With normalization and a scale the kernels test the band on the tiles' halves: the forward's
    denominator counts equal the candidates whose logit, formed as the tiles form it (exact integer dot
    products, the kernels' own inverse norms), lies in the band the selection returned, ties included;
    its log-sum-exp is that of those logits (the softmax shifted by the band's top, for a negative scale
    and for a zero one too)."""
    n, m = 37, 45
    query, keys, logits_of = exact_product_rows(n, m, 6)
    scale = torch.tensor(scale)
    spec = RoleSpec(pos_index=torch.arange(n) % m, normalize=True, ring=(outer, inner))
    config = pinned_config().as_list()
    band = triton_backend._ring_band_impl(query, keys, None, scale, *spec.flat(), outer, inner, config)
    out = triton_backend._forward_impl(query, keys, None, scale, None, *band, *spec.flat(), config, False)
    terms = dict(zip(triton_backend.FORWARD_OUTPUTS, out))
    logits = logits_of(scale)
    positive, candidate = pair_roles(torch.arange(n), torch.arange(m), m, spec)
    den = positive | (candidate & (logits >= band[0][:, None]) & (logits <= band[1][:, None]))
    assert torch.equal(terms["row_den_count"], den.sum(dim=1))
    lse = torch.logsumexp(torch.where(den, logits.double(), float("-inf")), dim=1)
    torch.testing.assert_close(terms["row_lse"].double(), lse, rtol=1e-6, atol=1e-5)
    ties = (candidate & ((logits == band[0][:, None]) | (logits == band[1][:, None]))).sum(dim=1)
    assert bool((ties > 1).any())  # the band's ends are tied somewhere: the test sees ties
