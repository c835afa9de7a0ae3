"""The chunked backend's two tile paths: the fast CPU path (positives off the tiles, one exponential
shared by the row and column terms, SigLIP's gradient formed in the forward) and the general path
(role masks per tile; traced and non-CPU calls take it). Both against the float64 naive reference,
including the fallbacks of the fast path: columns whose shared exponentials underflow, tiles whose
log-sum-exp spread is too wide to share one exponential, and SigLIP rows weighted unequally."""
import pytest
import torch
from helpers import assert_close_rel

import contrastive_ops as co
from contrastive_ops.backends import chunked
from contrastive_ops.core import RoleSpec

N, D, R = 37, 6, 5

LOSSES = {
    "info_nce": lambda a, b, e, lab, s, be: co.info_nce(a, b, backend=be),
    "info_nce_symmetric_queue": lambda a, b, e, lab, s, be: co.info_nce(a, b, e, symmetric=True, backend=be),
    "info_nce_labels": lambda a, b, e, lab, s, be: co.info_nce(a, b, e, symmetric=True, labels=lab, backend=be),
    "clip": lambda a, b, e, lab, s, be: co.clip_loss(a, b, s, backend=be),
    "clip_labels": lambda a, b, e, lab, s, be: co.clip_loss(a, b, s, labels=lab, backend=be),
    "nt_xent": lambda a, b, e, lab, s, be: co.nt_xent(a, b, backend=be),
    "dcl": lambda a, b, e, lab, s, be: co.dcl_loss(a, b, backend=be),
    "supcon": lambda a, b, e, lab, s, be: co.supcon_loss(a, lab, backend=be),
    "siglip": lambda a, b, e, lab, s, be: co.siglip_loss(a, b, s, s - 12.0, backend=be),
    "siglip_weighted": lambda a, b, e, lab, s, be: (co.siglip_loss(a, b, s, -3.0, reduction="none", backend=be)
                                                * torch.linspace(0.1, 2.0, N, dtype=a.dtype)).sum(),
    "ring": lambda a, b, e, lab, s, be: co.ring_info_nce(a, b, e, outer=0.5, inner=0.2, backend=be),
    "ring_labels": lambda a, b, e, lab, s, be: co.ring_info_nce(a, b, e, outer=0.5, labels=lab, backend=be),
}


def _inputs(dtype, scale=10.0, magnitude=1.0):
    g = torch.Generator().manual_seed(7)
    a, b, e = (torch.randn(n, D, generator=g, dtype=dtype) * magnitude for n in (N, N, R))
    labels = torch.randint(0, 6, (N,), generator=g)
    return a, b, e, labels, torch.tensor(scale, dtype=dtype)


def _loss_and_grads(name, a, b, e, labels, s, backend="chunked", dtype=None):
    leaves = [t.detach().to(dtype or t.dtype).requires_grad_() for t in (a, b, e, s)]
    loss = LOSSES[name](leaves[0], leaves[1], leaves[2], labels, leaves[3], backend)
    return loss.detach(), torch.autograd.grad(loss, leaves, allow_unused=True, materialize_grads=True)


def _check(name, inputs, rel, blocks=(8, 16)):
    with chunked.block_size(*blocks):
        loss, grads = _loss_and_grads(name, *inputs)
    ref_loss, ref_grads = _loss_and_grads(name, *inputs, backend="naive", dtype=torch.float64)
    assert_close_rel(loss.double(), ref_loss, rel, f"{name} loss")
    for what, g, rg in zip(("a", "b", "e", "scale"), grads, ref_grads):
        assert_close_rel(g.double(), rg, rel, f"{name} d/d{what}")


@pytest.mark.parametrize("name", sorted(LOSSES))
@pytest.mark.parametrize("path", ["fast", "general"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_both_paths_against_float64(name, path, dtype, seed):
    rel = 1e-5 if dtype == torch.float32 else 1e-10
    if path == "general":
        with chunked.general_path():
            _check(name, _inputs(dtype), rel)
    else:
        _check(name, _inputs(dtype), rel)


@pytest.mark.parametrize("name", ["clip", "info_nce_symmetric_queue", "clip_labels"])
def test_wide_logit_ranges_take_the_fallbacks(name, seed):
    """Scale 300 on rows of norm up to ~3 (no normalization for clip): row and column maxima hundreds
    apart, so shared exponentials would underflow: low columns are recomputed with their own maximum and
    the backward tiles use a second exponential. Still exact against float64."""
    inputs = _inputs(torch.float64, scale=300.0)
    _check(name, inputs, 1e-10)
    _check(name, _inputs(torch.float32, scale=300.0), 1e-5)


def test_fast_path_is_taken_where_documented():
    plain = RoleSpec(pos_index=torch.arange(4), column_terms=True)
    assert chunked.fast_path_applies(plain, torch.device("cpu"))
    assert chunked.fast_path_applies(RoleSpec(pos_index=torch.arange(4), pairwise_sigmoid=True), torch.device("cpu"))
    assert chunked.fast_path_applies(RoleSpec(pos_index=torch.arange(4), ring=(0.1, 0.1)), torch.device("cpu"))
    assert not chunked.fast_path_applies(RoleSpec(pos_index=torch.arange(4), hard_beta=0.5), torch.device("cpu"))
    assert not chunked.fast_path_applies(RoleSpec(pos_index=torch.arange(4), key_negatives=False),
                                         torch.device("cpu"))
    assert not chunked.fast_path_applies(plain, torch.device("meta"))
    with chunked.general_path():
        assert not chunked.fast_path_applies(plain, torch.device("cpu"))


@pytest.mark.parametrize("name", ["clip", "siglip", "supcon", "ring"])
def test_fast_path_backward_is_deterministic(name, seed):
    inputs = _inputs(torch.float32)
    with chunked.block_size(8, 16):
        first = _loss_and_grads(name, *inputs)
        second = _loss_and_grads(name, *inputs)
    assert torch.equal(first[0], second[0])
    for g1, g2 in zip(first[1], second[1]):
        assert torch.equal(g1, g2)


def test_fast_and_general_paths_agree_in_half_precision(seed):
    a, b, _, _, s = _inputs(torch.float32)
    a, b = a.to(torch.bfloat16), b.to(torch.bfloat16)
    with chunked.block_size(8, 16):
        fast = co.clip_loss(a, b, s, backend="chunked", reduction="none")
        with chunked.general_path():
            general = co.clip_loss(a, b, s, backend="chunked", reduction="none")
    assert fast.dtype == general.dtype
    assert_close_rel(fast.float(), general.float(), 1e-5, "bf16 clip, fast vs general path")
