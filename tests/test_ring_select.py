"""The chunked backend's radix select picks exactly the band the sort-based selection picks on the
same logit values, ties, signed zeros and both float widths included."""
import math

import pytest
import torch

from contrastive_ops.backends import chunked
from contrastive_ops.backends.naive import ring_band_sorted
from contrastive_ops.core import RoleSpec


def _radix_band(logits: torch.Tensor, outer: float, inner: float, blocks=(5, 7)):
    """Feed ``logits`` through the tiled path unchanged: ``I @ logits`` is exact."""
    n = logits.shape[0]
    eye = torch.eye(n, dtype=logits.dtype)
    spec = RoleSpec(pos_index=torch.full((n,), -1), normalize=False, ring=(outer, inner))
    return chunked.ring_band(eye, logits.T.contiguous(), None, 1.0, spec, blocks)


def _python_band(row, outer, inner):
    ordered = sorted(row, reverse=True)
    hi = math.floor(outer * len(ordered))
    lo = math.floor(inner * hi)
    if hi <= lo:
        return math.inf, -math.inf
    return ordered[hi - 1], ordered[lo]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("values", ["continuous", "ties", "signed_zeros", "huge_range"])
@pytest.mark.parametrize("outer,inner", [(0.1, 0.1), (0.5, 0.0), (1.0, 0.0), (1.0, 0.9), (0.37, 0.5), (0.0, 0.0)])
def test_radix_select_equals_sort(dtype, values, outer, inner, seed):
    n, m = 9, 41
    if values == "continuous":
        logits = torch.randn(n, m, dtype=dtype) * 10
    elif values == "ties":
        logits = torch.randint(-3, 4, (n, m)).to(dtype) * 0.25
    elif values == "signed_zeros":
        logits = torch.randint(-1, 2, (n, m)).to(dtype) * 0.0 * torch.where(torch.rand(n, m) < 0.5, -1.0, 1.0).to(dtype)
        logits[:, ::3] = torch.randn(n, (m + 2) // 3, dtype=dtype)
    else:
        logits = torch.randn(n, m, dtype=dtype) * torch.tensor([1e-30, 1.0, 1e30], dtype=dtype)[torch.randint(0, 3, (n, m))]
    v_lo, v_hi = _radix_band(logits, outer, inner)
    s_lo, s_hi = ring_band_sorted(logits, torch.ones(n, m, dtype=torch.bool), outer, inner)
    assert torch.equal(v_lo, s_lo) and torch.equal(v_hi, s_hi)
    for i in range(n):
        p_lo, p_hi = _python_band(logits[i].tolist(), outer, inner)
        assert (v_lo[i].item(), v_hi[i].item()) == (p_lo, p_hi)


def test_ring_keeps_all_ties_at_the_boundary(seed):
    """Selection is by value: every logit equal to a boundary value is in the ring."""
    row = torch.tensor([[5.0, 3.0, 3.0, 3.0, 1.0, 0.0, -1.0, -2.0, -3.0, -4.0]])
    v_lo, v_hi = _radix_band(row, outer=0.2, inner=0.0)  # hi = 2: ranks [0, 2) -> values 5, 3
    assert (v_lo.item(), v_hi.item()) == (3.0, 5.0)
    assert int(((row >= v_lo) & (row <= v_hi)).sum()) == 4  # 5 and all three 3s


def test_selection_only_counts_candidates(seed):
    """Positives and excluded pairs are neither counted in M_i nor selected."""
    n, m = 6, 11
    logits = torch.randn(n, m, dtype=torch.float64)
    eye = torch.eye(n, dtype=torch.float64)
    pos = torch.randint(0, m, (n,))
    spec = RoleSpec(pos_index=pos, normalize=False, ring=(0.5, 0.2))
    v_lo, v_hi = chunked.ring_band(eye, logits.T.contiguous(), None, 1.0, spec, (4, 4))
    for i in range(n):
        cand = [logits[i, j].item() for j in range(m) if j != pos[i]]
        assert (v_lo[i].item(), v_hi[i].item()) == _python_band(cand, 0.5, 0.2)
