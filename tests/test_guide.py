"""The core's guide role (a guide's similarities drop candidates above a per-row limit) with every role
it meets: label masking and label positives, self exclusion, decoupling, column terms, the pairwise
sigmoid and its bias, extra negatives and the Ring band, on naive (float64, checked against explicit
masks first), chunked and triton (the interpreter on a CPU).

Guide vectors are small integers and the limits half-integers, so the guide's products are exact in
every precision and no pair sits on its limit: every backend drops the same pairs.
"""
import os

import pytest
import torch
from cases import _ring_boundary_gaps
from helpers import assert_close_rel

import contrastive_ops as co
from contrastive_ops.backends import chunked, compute_fn
from contrastive_ops.core import RoleSpec, pair_roles

N, M, R, D, G = 19, 17, 7, 12, 5
RING = (0.5, 0.2)
SCALE = 4.0
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
_TRITON, _WHY = co.backend_status("triton", DEVICE)


def _guide(n, m_total):
    rows = torch.randint(-2, 3, (n, G)).double()
    cols = torch.randint(-2, 3, (m_total, G)).double()
    limit = torch.randint(-3, 4, (n,)).double() + 0.5
    return rows, cols, limit


def _roles(name, n, m):
    index = torch.arange(n)
    labels = torch.randint(0, 4, (n,)), torch.randint(0, 4, (m,))
    return {
        "positive": {"pos_index": index},
        "masked_labels": {"pos_index": index, "row_labels": labels[0], "col_labels": labels[1]},
        "label_positives": {"row_labels": labels[0], "col_labels": labels[1], "self_index": index},
        "decoupled_self": {"pos_index": (index + 1) % m, "self_index": index, "decoupled": True},
        "symmetric": {"pos_index": index, "column_terms": True},
        "sigmoid": {"pos_index": index, "pairwise_sigmoid": True},
        "ring": {"pos_index": index, "ring": RING},
    }[name]


ROLES = ["positive", "masked_labels", "label_positives", "decoupled_self", "symmetric", "sigmoid", "ring"]


def _problem(name):
    """``(q, k, e, spec)`` in float64; Ring problems are redrawn until every band boundary is clear
    of its neighbours by 1e-3 (the band is a discontinuous function of the logits)."""
    extra_rows = 0 if name == "symmetric" else R
    for _ in range(200):
        q, k = torch.randn(N, D, dtype=torch.float64), torch.randn(M, D, dtype=torch.float64)
        e = torch.randn(extra_rows, D, dtype=torch.float64) if extra_rows else None
        rows, cols, limit = _guide(N, M + extra_rows)
        spec = RoleSpec(normalize=True, guide_rows=rows, guide_cols=cols, guide_max=limit, **_roles(name, N, M))
        if spec.ring is None:
            return q, k, e, spec
        columns = torch.cat([k, e])
        logits = SCALE * torch.nn.functional.normalize(q, dim=1) @ torch.nn.functional.normalize(columns, dim=1).T
        _, candidate = pair_roles(torch.arange(N), torch.arange(M + extra_rows), M, spec)
        if (_ring_boundary_gaps([logits[i][candidate[i]] for i in range(N)], *RING) > 1e-3).all():
            return q, k, e, spec
    raise RuntimeError("could not draw Ring inputs with separated band boundaries")


def _terms(backend, q, k, e, spec, dtype, bias):
    leaves = [t.detach().to(DEVICE, dtype).requires_grad_(True) for t in (q, k) + ((e,) if e is not None else ())]
    scale = torch.tensor(SCALE, dtype=dtype, device=DEVICE, requires_grad=True)
    bias_t = torch.tensor(bias, dtype=dtype, device=DEVICE, requires_grad=True)
    moved = RoleSpec(**{f: (v.to(DEVICE) if isinstance(v, torch.Tensor) else v) for f, v in vars(spec).items()})
    kw = {"bias": bias_t} if spec.pairwise_sigmoid else {}
    terms = compute_fn(backend)(leaves[0], leaves[1], leaves[2] if e is not None else None, scale, moved, **kw)
    values = {f: getattr(terms, f) for f in terms._fields if getattr(terms, f) is not None}
    weights = {f: torch.rand(v.shape, dtype=torch.float64) for f, v in values.items() if v.is_floating_point()}
    objective = sum((values[f].double().cpu() * w).sum() for f, w in weights.items())
    inputs = leaves + [scale] + ([bias_t] if spec.pairwise_sigmoid else [])
    grads = torch.autograd.grad(objective, inputs, allow_unused=True, materialize_grads=True)
    return {f: v.detach().cpu() for f, v in values.items()}, [g.cpu() for g in grads], weights


def test_naive_drops_exactly_the_guides_pairs(seed):
    """row_lse and the counts against explicit masks: candidates are the columns other than the
    positive whose guide product is at most the row's limit."""
    q, k, e, spec = _problem("positive")
    terms, _, _ = _terms("naive", q, k, e, spec, torch.float64, 0.0)
    columns = torch.cat([k, e])
    logits = SCALE * torch.nn.functional.normalize(q, dim=1) @ torch.nn.functional.normalize(columns, dim=1).T
    kept = (spec.guide_rows @ spec.guide_cols.T) <= spec.guide_max[:, None]
    positive = torch.zeros_like(kept)
    positive[torch.arange(N), torch.arange(N)] = True
    den = kept | positive
    assert (~kept).any() and kept.any(), "the draw drops some pairs and keeps others"
    expected = torch.logsumexp(logits.masked_fill(~den, float("-inf")), dim=1)
    assert_close_rel(terms["row_lse"], expected, 1e-12, "row_lse")
    assert torch.equal(terms["row_den_count"], den.sum(1))


@pytest.mark.parametrize("name", ROLES)
def test_chunked_equals_naive(name, seed):
    q, k, e, spec = _problem(name)
    torch.manual_seed(int(torch.randint(0, 2**31, ())))
    state = torch.get_rng_state()
    expected, expected_grads, _ = _terms("naive", q, k, e, spec, torch.float64, -1.5)
    torch.set_rng_state(state)
    with chunked.block_size(4, 8):
        ours, grads, _ = _terms("chunked", q, k, e, spec, torch.float64, -1.5)
    for f, v in expected.items():
        assert_close_rel(ours[f], v, 1e-12, f"{name} {f}")
    for i, (g, g_ref) in enumerate(zip(grads, expected_grads)):
        assert_close_rel(g, g_ref, 1e-12, f"{name} grad {i}")


@pytest.mark.interpreter
@pytest.mark.skipif(not _TRITON and os.environ.get("CONTRASTIVE_OPS_REQUIRE_TRITON") != "1",
                    reason=f"triton backend: {_WHY}")
@pytest.mark.parametrize("name", ROLES)
def test_triton_equals_float64(name, seed):
    q, k, e, spec = _problem(name)
    state = torch.get_rng_state()
    expected, expected_grads, _ = _terms("naive", q, k, e, spec, torch.float64, -1.5)
    torch.set_rng_state(state)
    ours, grads, _ = _terms("triton", q, k, e, spec, torch.float32, -1.5)
    for f, v in expected.items():
        if v.is_floating_point():
            assert_close_rel(ours[f], v, 1e-5, f"{name} {f}")
        else:
            assert torch.equal(ours[f].to(v.dtype), v), f"{name} {f}"
    for i, (g, g_ref) in enumerate(zip(grads, expected_grads)):
        assert_close_rel(g, g_ref, 1e-5, f"{name} grad {i}")


def test_guide_shapes_are_checked():
    q, k = torch.randn(5, 4), torch.randn(5, 4)
    rows, cols, limit = _guide(5, 5)
    with pytest.raises(ValueError, match="guide_rows, guide_cols and guide_max must be given together"):
        RoleSpec(guide_rows=rows, guide_cols=cols)
    with pytest.raises(ValueError, match=r"guide_max must be \[N\] = \[5\]"):
        RoleSpec(guide_rows=rows, guide_cols=cols, guide_max=limit[:3])
    for backend in ("naive", "chunked"):
        spec = RoleSpec(pos_index=torch.arange(5), guide_rows=rows, guide_cols=cols[:4], guide_max=limit)
        with pytest.raises(ValueError, match="guide_cols has 4 rows but there are 5 columns"):
            compute_fn(backend)(q, k, None, 1.0, spec)
