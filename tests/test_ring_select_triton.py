"""The triton backend's Ring selection picks exactly the band a full sort picks on the same logit values:
the bracketed selection (spans from a sample, a gathering pass, a search in its buffer), its radix fallback
and the radix search alone, with ties, empty rings, odd shapes, extra negatives and labels.

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
    """With 4 entries most rows' spans overflow: the radix search takes them, the others stay."""
    n, m = 17, 40
    logits = _logits("ties", n, m)
    spec = _spec("positive", n, m)
    monkeypatch.setattr(ring_select, "buffer_length", lambda *args, **kwargs: 4)
    monkeypatch.setattr(ring_select, "SAMPLE_COLUMNS", 8)  # a coarse estimate: wide spans
    v_lo, v_hi = _band(logits, m, spec, 0.7, 0.3, "bracketed", monkeypatch)
    s_lo, s_hi = _reference(logits, m, spec, 0.7, 0.3)
    assert torch.equal(v_lo, s_lo) and torch.equal(v_hi, s_hi)


@pytest.mark.parametrize("chunk", [1024, 16])
def test_bracketed_selection_resolves_rows_itself(chunk, monkeypatch, seed):
    """On continuous values every row is resolved by the gathering pass and the search in its buffer (no
    fallback), exactly; also with a sample much smaller than the row (spans from estimates, not from the
    values), and with entries and search chunks (16) much shorter than the row (full chunks and a part)."""
    monkeypatch.setattr(ring_select, "BUFFER_CHUNK", chunk)
    n, m = 23, 600
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
        spans = torch.cat([ring_select.sample_spans(ordered, count, lo), ring_select.sample_spans(ordered, count, hi - 1)])
        entries = ring_select.buffer_length(m - 1, 0.2, 0.3, sample)
        if chunk == 16 and sample == m:
            assert entries < m // 2  # the spans, not the row
        v_lo, v_hi, resolved = ring_select.ring_band_bracketed(tiles, cfg, spans, lo, hi - 1, entries)
        assert bool(resolved.all())
        s_lo, s_hi = _reference(logits, m, spec, 0.2, 0.3)
        assert torch.equal(v_lo, s_lo) and torch.equal(v_hi, s_hi)


def _search(buffer_rows, spans, above, ranks):
    """The search in the buffer (``ring_select.search_buffer``) on given entries: ``buffer_rows`` a list of 1-D
    fp32 tensors (each row's filled entries), spans ``[4, N]``, ``above`` ``[2, N]`` (candidates at or above
    each span's top), ``ranks`` ``[2, N]``; ``(values [2, N], found [N], passes [N])``."""
    n = len(buffer_rows)
    entries = 16 * max(1, max(r.numel() for r in buffer_rows))
    scratch = torch.full((n, entries), float("nan"))
    for i, r in enumerate(buffer_rows):
        scratch[i, :r.numel()] = r
    counts = torch.cat([above, torch.tensor([[r.numel() for r in buffer_rows]])]).to(torch.int32)
    found = torch.empty(3, n)
    passes = torch.zeros(n, dtype=torch.int32)
    ring_select.search_buffer(scratch, counts.contiguous(), spans.float().contiguous(),
                                ranks.to(torch.int32).contiguous(), found, 0, n, entries, passes)
    return found[:2], found[2] > 0, passes


@pytest.mark.parametrize("values", ["continuous", "ties", "signed_zeros", "equal"])
def test_search_in_the_buffer_finds_every_rank_of_its_span(values, seed, monkeypatch):
    """Every rank inside a span, on entries of two spans in any order, with ties (at the ends too), signed
    zeros and a row of equal values: the value a full sort gives; ranks outside the span are not found.
    The same values, verdicts and reads with one row per program (as on a GPU) as with many (rows of
    several lengths in a program, the last program part-filled)."""
    m = 48
    row = {"continuous": torch.randn(m), "ties": torch.randint(-3, 4, (m,)).float() * 0.5,
           "signed_zeros": _logits("signed_zeros", 1, m)[0], "equal": torch.full((m,), 0.25)}[values]
    ordered = row.sort(descending=True).values
    cases = []
    for top_hi, top_lo, bottom_hi, bottom_lo in ((ordered[3], ordered[12], ordered[20], ordered[40]),
                                                 (float("inf"), ordered[10], ordered[30], float("-inf")),
                                                 (ordered[0], ordered[47], ordered[5], ordered[9])):
        spans = torch.tensor([top_lo, top_hi, bottom_lo, bottom_hi], dtype=torch.float32)
        inside = ((row >= spans[0]) & (row < spans[1])) | ((row >= spans[2]) & (row < spans[3]))
        buffer_row = row[inside][torch.randperm(int(inside.sum()))]  # the search takes them in any order
        above = torch.stack([(row >= spans[1]).sum(), (row >= spans[3]).sum()])
        for top in range(m // 2):  # the top rank over the first half, the bottom one over every other rank
            cases.append((buffer_row, spans, above, top, (top * 2 + 1) % m))
    rows, spans, above, ranks = zip(*[(c[0], c[1], c[2], torch.tensor([c[3], c[4]])) for c in cases])
    args = (list(rows), torch.stack(spans, 1), torch.stack(above, 1), torch.stack(ranks, 1))
    assert len(rows) % ring_select.SEARCH_ROWS_INTERPRETED != 0
    found_values, found, passes = _search(*args)
    monkeypatch.setattr(ring_select, "SEARCH_ROWS_INTERPRETED", 1)
    every_third = [a[:, ::3] for a in args[1:]]  # a third of the rows, of each span set (slow one per program)
    for many, one in zip((found_values[:, ::3], found[::3], passes[::3]), _search(args[0][::3], *every_third)):
        assert torch.equal(many, one)
    for i, (_, span, _, top, bottom) in enumerate(cases):
        in_top = bool(span[0] <= ordered[top] < span[1])
        in_bottom = bool(span[2] <= ordered[bottom] < span[3])
        # a rank in a span whose end cuts through a run of ties is in it only if the whole run is
        expected = in_top and in_bottom
        assert bool(found[i]) == expected, (i, span, top, bottom)
        if expected:
            assert torch.equal(found_values[0, i], ordered[top]) and torch.equal(found_values[1, i], ordered[bottom])
    assert int(passes.max()) <= 70


def _span_occupancy(n, m, outer, inner):
    """Candidates per row inside the two spans that a sample of ``m`` unit-vector logits gives (what the
    gathering pass fills), and whether each rank lies in its span."""
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
    exact = values.sort(dim=1, descending=True).values
    inside = torch.zeros_like(candidate)
    held = torch.ones(n, dtype=torch.bool)
    for rank in (lo, hi - 1):
        span_lo, span_hi = ring_select.sample_spans(ordered, count, rank)
        inside |= candidate & (values >= span_lo[:, None]) & (values < span_hi[:, None])
        value = exact.gather(1, rank[:, None])[:, 0]
        held &= (value >= span_lo) & (value < span_hi)
    return inside.sum(dim=1), held


@pytest.mark.parametrize("m", [16384, 65536])
@pytest.mark.parametrize("outer,inner", [(0.1, 0.1), (0.4, 0.25)])
def test_buffer_length_hold_the_spans(m, outer, inner, seed):
    """The buffers grow with the row so that the spans fit: their mean fill is ``span_fill``'s estimate
    (within 15%), no row overflows, and every rank lies in its span."""
    filled, held = _span_occupancy(48, m, outer, inner)
    entries = ring_select.buffer_length(m - 1, outer, inner)
    mean = ring_select.span_fill(m - 1, outer, inner)[0]
    assert abs(filled.float().mean().item() - mean) <= 0.15 * mean
    assert int(filled.max()) <= entries and bool(held.all())


def test_buffer_length_at_the_edges():
    """Whole chunks, at least one, at most the row rounded up to a chunk, growing with the row."""
    chunk = ring_select.BUFFER_CHUNK
    for columns, outer, inner in ((0, 0.1, 0.1), (1, 0.1, 0.1), (5, 0.0, 0.0), (2048, 1.0, 1.0), (1 << 24, 0.5, 0.5)):
        entries = ring_select.buffer_length(columns, outer, inner)
        assert entries % chunk == 0 and chunk <= entries <= max(chunk, -(-columns // chunk) * chunk)
    assert ring_select.buffer_length(32768, 0.1, 0.1) < ring_select.buffer_length(65536, 0.1, 0.1)


def test_sample_spans_at_the_ends():
    """A span open at the top (+inf) for a rank near the sample's top, open at the bottom (-inf) near its
    last candidate, and the whole row for a row without sampled candidates."""
    sample = torch.tensor([[5.0, 4.0, 3.0, 2.0, 1.0, 0.0, -1.0, -2.0],
                           [5.0, 4.0, 3.0, 2.0, 1.0, 0.0, -1.0, -2.0],
                           [float("-inf")] * 8])
    count = torch.tensor([800, 800, 800])
    spans = ring_select.sample_spans(sample, count, torch.tensor([0, 799, 400]))
    assert spans[1, 0] == float("inf") and spans[0, 0] > -float("inf")
    assert spans[0, 1] == float("-inf") and spans[1, 1] < float("inf")
    assert spans[0, 2] == float("-inf") and spans[1, 2] == float("inf")


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
