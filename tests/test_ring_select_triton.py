"""The triton backend's Ring selection picks exactly the band a full sort picks on the same logit values:
the bracketed selection (sample thresholds, a counting pass, a gathering pass), its radix fallback and
the radix search alone, with ties, empty rings, odd shapes, extra negatives and labels.

The logits are fed through the kernels unchanged (``query = I``, ``keys = logitsᵀ``, no normalization:
each dot product has one non-zero term, so the tiles' values are the given ones bit for bit), so the
band can be compared exactly with the sort-based one of ``naive.ring_band_sorted`` and with the
chunked backend's radix select on the very same values.
"""
import pytest
import torch
from helpers import exact_product_rows, required, triton_status

from contrastive_ops.backends import chunked
from contrastive_ops.backends.naive import ring_band_sorted
from contrastive_ops.core import RoleSpec, pair_roles

_AVAILABLE, _WHY = triton_status()
if not _AVAILABLE and required("CONTRASTIVE_OPS_REQUIRE_TRITON"):
    raise RuntimeError(f"CONTRASTIVE_OPS_REQUIRE_TRITON=1 but the triton backend cannot run: {_WHY}")
pytestmark = [pytest.mark.interpreter, pytest.mark.skipif(not _AVAILABLE, reason=f"triton backend: {_WHY}")]

if _AVAILABLE:
    from contrastive_ops.kernels import ring_select
    from contrastive_ops.kernels.config import TileConfig, pinned_config

    from contrastive_ops.backends import triton as triton_backend


def _logits(kind: str, n: int, m_total: int) -> torch.Tensor:
    if kind == "continuous":
        return torch.randn(n, m_total) * 3
    if kind == "ties":  # few distinct values: every boundary tied
        return torch.randint(-3, 4, (n, m_total)).float() * 0.5
    if kind == "signed_zeros":
        x = torch.randint(-1, 2, (n, m_total)).float() * 0.0 * torch.where(torch.rand(n, m_total) < 0.5, -1.0, 1.0)
        x[:, ::3] = torch.randn(n, (m_total + 2) // 3)
        return x
    raise ValueError(kind)


def _band(logits, m, spec, outer, inner, mode, monkeypatch, config=None):
    # the interpreter's default config when none is given (as the backend pins it)
    """The triton backend's band of ``logits [n, m_total]`` (the first ``m`` columns keys, the rest extra)."""
    n = logits.shape[0]
    monkeypatch.setenv("CONTRASTIVE_OPS_RING_SELECT", mode)
    query = torch.eye(n)
    keys, extra = logits[:, :m].T.contiguous(), logits[:, m:].T.contiguous()
    cfg = (config or pinned_config()).as_list()
    return triton_backend._ring_band_impl(query, keys, extra if extra.shape[0] else None, torch.tensor(1.0),
                                          *spec.flat(), outer, inner, cfg)


def _reference(logits, m, spec, outer, inner):
    n, m_total = logits.shape
    candidate = pair_roles(torch.arange(n), torch.arange(m_total), m, spec)[1]
    return ring_band_sorted(logits, candidate, outer, inner)


def _spec(kind: str, n: int, m: int) -> RoleSpec:
    if kind == "positive":
        return RoleSpec(pos_index=torch.arange(n) % m, normalize=False)
    if kind == "labels":  # same-label keys other than the positive are left out (false negatives)
        return RoleSpec(pos_index=torch.arange(n) % m, row_labels=torch.arange(n) % 3, col_labels=torch.arange(m) % 3,
                        normalize=False)
    if kind == "self":
        return RoleSpec(pos_index=(torch.arange(n) + 1) % m, self_index=torch.arange(n) % m, normalize=False)
    raise ValueError(kind)


@pytest.mark.parametrize("mode", ["bracketed", "radix"])
@pytest.mark.parametrize("values", ["continuous", "ties", "signed_zeros"])
@pytest.mark.parametrize("outer,inner", [(0.1, 0.1), (0.5, 0.0), (1.0, 0.9), (0.0, 0.0)])
def test_band_equals_sort(mode, values, outer, inner, monkeypatch, seed):
    n, m, extra = 19, 19, 37  # odd sizes: partial row blocks and column tiles
    logits = _logits(values, n, m + extra)
    spec = _spec("positive", n, m)
    v_lo, v_hi = _band(logits, m, spec, outer, inner, mode, monkeypatch)
    s_lo, s_hi = _reference(logits, m, spec, outer, inner)
    assert torch.equal(v_lo, s_lo) and torch.equal(v_hi, s_hi)
    # and the chunked backend's radix select on the same values
    c_lo, c_hi = chunked.ring_band(torch.eye(n), logits[:, :m].T.contiguous(), logits[:, m:].T.contiguous(), 1.0,
                                   RoleSpec(**{**spec.__dict__, "ring": (outer, inner)}), (16, 16))
    assert torch.equal(v_lo, c_lo) and torch.equal(v_hi, c_hi)


@pytest.mark.parametrize("roles", ["labels", "self"])
def test_band_with_roles(roles, monkeypatch, seed):
    n, m, extra = 21, 21, 11
    logits = _logits("continuous", n, m + extra)
    spec = _spec(roles, n, m)
    v_lo, v_hi = _band(logits, m, spec, 0.4, 0.25, "bracketed", monkeypatch)
    s_lo, s_hi = _reference(logits, m, spec, 0.4, 0.25)
    assert torch.equal(v_lo, s_lo) and torch.equal(v_hi, s_hi)


def test_overflowing_rows_fall_back_to_the_radix_search(monkeypatch, seed):
    """With 4 slots most rows' brackets overflow: the radix search takes them, the others stay."""
    n, m = 17, 40
    logits = _logits("ties", n, m)
    spec = _spec("positive", n, m)
    monkeypatch.setattr(ring_select, "GATHER_SLOTS", 4)
    monkeypatch.setattr(ring_select, "SAMPLE_COLUMNS", 8)  # a coarse estimate: wide brackets
    v_lo, v_hi = _band(logits, m, spec, 0.7, 0.3, "bracketed", monkeypatch)
    s_lo, s_hi = _reference(logits, m, spec, 0.7, 0.3)
    assert torch.equal(v_lo, s_lo) and torch.equal(v_hi, s_hi)


def test_bracketed_selection_resolves_rows_itself(seed):
    """On continuous values every row is resolved by the two passes (no fallback), exactly; also with a
    sample much smaller than the row (thresholds from estimates, not from the values)."""
    n, m = 23, 150
    logits = _logits("continuous", n, m)
    spec = _spec("positive", n, m)
    tiles = triton_backend._problem(torch.eye(n), logits.T.contiguous(), None, torch.tensor(1.0), None, None, None,
                                    spec)
    cfg = TileConfig(16, 32, 16, num_warps=1, num_stages=1)
    count = ring_select.candidate_counts(tiles, cfg).to(torch.int64)
    lo, hi = triton_backend.ring_ranks(count, 0.2, 0.3)
    for sample in (m, 32):
        cols = torch.arange(sample) * m // sample
        candidate = pair_roles(torch.arange(n), cols, m, spec)[1]
        ordered = torch.where(candidate, logits[:, cols], float("-inf")).sort(dim=1, descending=True).values
        t_top, t_bottom = ring_select.threshold_counts(m - 1, 0.2, 0.3, sample)
        thresholds = (ring_select.sample_thresholds(ordered, count, lo, t_top),
                      ring_select.sample_thresholds(ordered, count, hi - 1, t_bottom))
        v_lo, v_hi, resolved = ring_select.ring_band_bracketed(tiles, cfg, *thresholds, count, lo, hi - 1)
        assert bool(resolved.all())
        s_lo, s_hi = _reference(logits, m, spec, 0.2, 0.3)
        assert torch.equal(v_lo, s_lo) and torch.equal(v_hi, s_hi)


def _bracket_occupancy(n, m, outer, inner, counts):
    """Candidates per row inside the two brackets that thresholds from a sample of ``m`` unit-vector
    logits (``counts`` thresholds per rank) and exact counts at them give: what the gathering pass fills."""
    q = torch.nn.functional.normalize(torch.randn(n, 64), dim=1)
    k = torch.nn.functional.normalize(torch.randn(m, 64), dim=1)
    logits = (q @ k.T) * 14.0
    spec = _spec("positive", n, m)
    candidate = pair_roles(torch.arange(n), torch.arange(m), m, spec)[1]
    values = torch.where(candidate, logits, float("-inf"))
    count = candidate.sum(dim=1)
    lo, hi = triton_backend.ring_ranks(count, outer, inner)
    s = min(m, ring_select.SAMPLE_COLUMNS)
    ordered = values[:, torch.arange(s) * m // s].sort(dim=1, descending=True).values
    inside = torch.zeros_like(candidate)
    for rank, t in zip((lo, hi - 1), counts):
        thresholds = ring_select.sample_thresholds(ordered, count, rank, t)
        at = torch.stack([(values >= row[:, None]).sum(dim=1) for row in thresholds]).to(torch.int32)
        b_lo, b_hi = ring_select.brackets_from_counts(thresholds, at, count, rank)[:2]
        inside |= candidate & (logits >= b_lo[:, None]) & (logits < b_hi[:, None])
    return inside.sum(dim=1)


@pytest.mark.parametrize("m", [16384, 65536])
@pytest.mark.parametrize("outer,inner", [(0.1, 0.1), (0.4, 0.25)])
def test_threshold_counts_keep_the_brackets_inside_the_slots(m, outer, inner, seed):
    """The thresholds per rank grow with the row length so that the brackets' expected occupancy stays at
    ``SLOT_SHARE`` of the slots: a sample of fixed size brackets a rank ever more loosely as M grows
    (6 + 10 thresholds fill 74% of the slots on average at 65536 columns, and rows overflow)."""
    counts = ring_select.threshold_counts(m - 1, outer, inner)
    filled = _bracket_occupancy(48, m, outer, inner, counts)
    slots = ring_select.GATHER_SLOTS
    assert filled.float().mean() <= 1.5 * ring_select.SLOT_SHARE * slots
    assert int((filled > slots).sum()) <= 1


def test_threshold_counts_at_the_edges():
    """At least 2 and at most ``MAX_THRESHOLDS`` per rank, also for no column or one, an empty ring or a
    sample as long as the row."""
    for columns, outer, inner in ((0, 0.1, 0.1), (1, 0.1, 0.1), (5, 0.0, 0.0), (2048, 1.0, 1.0), (1 << 24, 0.5, 0.5)):
        for t in ring_select.threshold_counts(columns, outer, inner):
            assert 2 <= t <= ring_select.MAX_THRESHOLDS
    assert ring_select.threshold_counts(32768, 0.1, 0.1) < ring_select.threshold_counts(65536, 0.1, 0.1)


def test_brackets_from_counts_enclose_the_rank():
    """Thresholds in any order, repeated ones, all of them reaching the rank or none."""
    thresholds = torch.tensor([[3.0, 5.0, 9.0, 7.0], [1.0, 5.0, -1.0, 8.0], [2.0, 5.0, 9.0, 9.0]])  # [T, N]
    counts = torch.tensor([[7, 4, 0, 3], [9, 4, 9, 2], [8, 4, 0, 2]], dtype=torch.int32)
    count = torch.tensor([10, 4, 9, 10])
    rank = torch.tensor([5, 2, 0, 6])
    lo, hi, above, inside = ring_select.brackets_from_counts(thresholds, counts, count, rank)
    # row 0: all reach rank 5 (at least 6 at or above): lo = 3, the highest; nothing above the bracket
    # row 2: rank 0 between -1 (9 at or above) and 9 (none); row 3: none reaches rank 6: lo = -inf
    assert lo.tolist() == [3.0, 5.0, -1.0, float("-inf")]
    assert hi.tolist() == [float("inf"), float("inf"), 9.0, 7.0]
    assert above.tolist() == [0, 0, 0, 3] and inside.tolist() == [7, 4, 9, 7]


@pytest.mark.parametrize("mode", ["bracketed", "radix"])
def test_loss_is_bitwise_the_same_either_way(mode, monkeypatch, seed):
    """The band feeds the loss: both selections give the same loss bit for bit (fp32, normalized inputs)."""
    import contrastive_ops as co

    q, k, e = torch.randn(18, 8), torch.randn(18, 8), torch.randn(13, 8)
    monkeypatch.setenv("CONTRASTIVE_OPS_RING_SELECT", "radix")
    ref = co.ring_info_nce(q, k, e, outer=0.3, inner=0.2, backend="triton", reduction="none")
    monkeypatch.setenv("CONTRASTIVE_OPS_RING_SELECT", mode)
    ours = co.ring_info_nce(q, k, e, outer=0.3, inner=0.2, backend="triton", reduction="none")
    assert torch.equal(ours, ref)


def test_unknown_mode_is_refused(monkeypatch):
    monkeypatch.setenv("CONTRASTIVE_OPS_RING_SELECT", "sorted")
    with pytest.raises(ValueError, match="CONTRASTIVE_OPS_RING_SELECT"):
        triton_backend._ring_select_mode()


def test_a_bad_selection_switch_is_named(monkeypatch):
    """CONTRASTIVE_OPS_RING_SELECT takes 'bracketed' or 'radix'; anything else is a ValueError naming the
    switch and the value, before any kernel runs."""
    import contrastive_ops as co

    monkeypatch.setenv("CONTRASTIVE_OPS_RING_SELECT", "fast")
    q, k = torch.randn(9, 16), torch.randn(9, 16)
    with pytest.raises(ValueError, match="CONTRASTIVE_OPS_RING_SELECT must be 'bracketed' or 'radix', got 'fast'"):
        co.ring_info_nce(q, k, backend="triton")


@pytest.mark.parametrize("mode", ["bracketed", "radix"])
@pytest.mark.parametrize("scale", [1.0 / 0.07, -3.0, 0.0])
def test_band_of_normalized_rows_by_the_halves(mode, scale, monkeypatch, seed):
    """The kernels rank the tiles' halves and map the ranks' halves to logits (mirrored ranks for a negative
    scale): the band equals the full sort's of the logits formed as the tiles form them (exact integer dot
    products, the kernels' own inverse norms), ties included, for either sign of the scale and for zero."""
    n, m = 29, 67
    query, keys, logits_of = exact_product_rows(n, m, 5)
    spec = RoleSpec(pos_index=torch.arange(n) % m, normalize=True)
    monkeypatch.setenv("CONTRASTIVE_OPS_RING_SELECT", mode)
    s = torch.tensor(scale)
    v_lo, v_hi = triton_backend._ring_band_impl(query, keys, None, s, *spec.flat(), 0.4, 0.25,
                                                pinned_config().as_list())
    logits = logits_of(s)
    candidate = pair_roles(torch.arange(n), torch.arange(m), m, spec)[1]
    want_lo, want_hi = ring_band_sorted(logits, candidate, 0.4, 0.25)
    assert torch.equal(v_lo, want_lo) and torch.equal(v_hi, want_hi)
