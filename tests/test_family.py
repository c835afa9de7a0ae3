"""False-negative masking, hard negatives, the debiased loss and SigLIP: identities between the
losses, the clamp of the debiasing correction, the core's new terms and their edge cases."""
import pytest
import reference as ref
import torch
from cases import CASES, CLAMP_CASES
from helpers import assert_close_rel

import contrastive_ops as co
from contrastive_ops.backends import chunked, naive
from contrastive_ops.core import RoleSpec

BACKENDS = ["naive", "chunked"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_distinct_labels_mask_nothing(backend, seed):
    q, k, e = torch.randn(11, 6), torch.randn(11, 6), torch.randn(4, 6)
    distinct = torch.arange(11) * 3
    for fn in (lambda **kw: co.info_nce(q, k, e, symmetric=True, backend=backend, **kw),
               lambda **kw: co.clip_loss(q, k, 5.0, backend=backend, **kw),
               lambda **kw: co.ring_info_nce(q, k, e, outer=0.5, backend=backend, **kw)):
        assert torch.equal(fn(labels=distinct, reduction="none"), fn(reduction="none"))


@pytest.mark.parametrize("backend", BACKENDS)
def test_one_label_leaves_only_the_positive_and_the_queue(backend, seed):
    q, k, e = torch.randn(9, 5, requires_grad=True), torch.randn(9, 5, requires_grad=True), torch.randn(3, 5)
    same = torch.zeros(9, dtype=torch.long)
    loss = co.info_nce(q, k, labels=same, backend=backend)  # denominator = the positive alone
    loss.backward()
    assert float(loss.detach()) == 0.0 and torch.equal(q.grad, torch.zeros_like(q))
    with_queue = co.info_nce(q.detach(), k.detach(), e, labels=same, in_batch_negatives=True, backend=backend,
                             reduction="none")
    queue_only = co.info_nce(q.detach(), k.detach(), e, in_batch_negatives=False, backend=backend, reduction="none")
    assert_close_rel(with_queue, queue_only, 1e-6, "all in-batch keys masked = queue only")


@pytest.mark.parametrize("backend", BACKENDS)
def test_debiased_without_correction_is_nt_xent(backend, seed):
    """τ⁺ = 0, β = 0: Ng is the plain sum of negatives, never below the clamp for unit vectors."""
    z1, z2 = torch.randn(13, 7), torch.randn(13, 7)
    ours = co.debiased_nce(z1, z2, temperature=0.3, tau_plus=0.0, backend=backend, reduction="none")
    assert_close_rel(ours, co.nt_xent(z1, z2, temperature=0.3, backend=backend, reduction="none"), 1e-5, "nt_xent")


@pytest.mark.parametrize("backend", BACKENDS)
def test_hard_negative_beta_zero_is_debiased(backend, seed):
    z1, z2 = torch.randn(10, 4), torch.randn(10, 4)
    a = co.hard_negative_nce(z1, z2, beta=0.0, tau_plus=0.2, backend=backend)
    b = co.debiased_nce(z1, z2, tau_plus=0.2, backend=backend)
    assert torch.equal(a, b)


@pytest.mark.parametrize("name", ["hard_negative_clamp", "debiased_clamp"])
def test_clamp_cases_mix_clamped_and_free_rows(name, seed):
    """The clamp cases of tests/cases.py really exercise both branches of the clamp."""
    z1, z2 = CASES[name].make(torch.float64)
    clamped = ref.hard_negative_clamp_rows(z1, z2, **CLAMP_CASES[name])
    assert 0 < int(clamped.sum()) < clamped.numel()


@pytest.mark.parametrize("backend", BACKENDS)
def test_clamped_rows_get_no_gradient_through_the_negatives(backend, seed):
    """Every row clamped (near-duplicate views, τ⁺ large): each row loss is log(1 + N·e^(-1/τ)/pos),
    a function of its positive logit only, as in the reference."""
    z1 = torch.randn(6, 8, dtype=torch.float64)
    z2 = z1 + 1e-3 * torch.randn(6, 8, dtype=torch.float64)
    z1.requires_grad_(True)
    z2.requires_grad_(True)
    loss = co.hard_negative_nce(z1, z2, temperature=0.5, tau_plus=0.9, backend=backend, reduction="none")
    assert bool(ref.hard_negative_clamp_rows(z1.detach(), z2.detach(), temperature=0.5, tau_plus=0.9).all())
    u1, u2 = torch.nn.functional.normalize(z1, dim=1), torch.nn.functional.normalize(z2, dim=1)
    s_pos = (u1 * u2).sum(1) / 0.5
    n_neg = 2 * 6 - 2
    expected = torch.log1p(n_neg * torch.exp(torch.tensor(-2.0, dtype=torch.float64)) / torch.exp(s_pos)).repeat(2)
    assert_close_rel(loss, expected, 1e-12, "clamped rows")
    g = torch.autograd.grad(loss.sum(), [z1, z2])
    g_ref = torch.autograd.grad(expected.sum(), [z1, z2])
    for a, b in zip(g, g_ref):
        assert_close_rel(a, b, 1e-10, "gradient of clamped rows")


@pytest.mark.parametrize("backend", BACKENDS)
def test_hard_negative_single_pair_is_zero(backend):
    z1, z2 = torch.randn(1, 4, requires_grad=True), torch.randn(1, 4, requires_grad=True)
    loss = co.hard_negative_nce(z1, z2, backend=backend)
    loss.backward()
    assert float(loss.detach()) == 0.0 and torch.equal(z1.grad, torch.zeros_like(z1))


@pytest.mark.parametrize("backend", BACKENDS)
def test_hard_negative_small_temperature_stays_finite(backend, seed):
    """exp(s/τ) overflows fp32 at τ = 0.01 (the reference code's direct form gives inf/NaN); the log
    form does not."""
    z1, z2 = torch.randn(20, 6, requires_grad=True), torch.randn(20, 6, requires_grad=True)
    loss = co.hard_negative_nce(z1, z2, temperature=0.01, beta=1.0, backend=backend)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(z1.grad).all() and torch.isfinite(z2.grad).all()
    expected = ref.hard_negative(z1.detach(), z2.detach(), temperature=0.01, beta=1.0).mean()
    if torch.isfinite(expected):  # float64 still holds exp(200)
        assert_close_rel(loss, expected, 1e-5, "tau=0.01")


@pytest.mark.parametrize("backend", BACKENDS)
def test_siglip_without_bias_and_large_scale(backend, seed):
    img, txt = torch.randn(9, 5), torch.randn(9, 5)
    a = co.siglip_loss(img, txt, 3.0, None, backend=backend)
    b = co.siglip_loss(img, txt, 3.0, 0.0, backend=backend)
    assert_close_rel(a, b, 1e-7, "bias None = 0")
    big = co.siglip_loss(img, txt, 1e4, -5.0, normalize=True, backend=backend)
    assert_close_rel(big, ref.siglip(img, txt, 1e4, -5.0, normalize=True).mean(), 1e-5, "scale 1e4")


@pytest.mark.parametrize("backend", ["naive", "chunked"])
def test_core_terms_with_every_option(backend, seed):
    """The core's new terms against a direct float64 computation on a spec mixing labels, self,
    queue, hard_beta and the pairwise sigmoid (what no loss asks for at once)."""
    n, m, r, d = 10, 8, 3, 5
    q, k, e = (torch.randn(x, d, dtype=torch.float64) for x in (n, m, r))
    pos = torch.randint(0, m, (n,))
    self_index = torch.randint(0, m, (n,))
    rl, cl = torch.randint(0, 3, (n,)), torch.randint(0, 3, (m,))
    spec = RoleSpec(pos_index=pos, self_index=self_index, row_labels=rl, col_labels=cl, hard_beta=0.7,
                    pairwise_sigmoid=True, decoupled=True)
    fn = naive.compute_terms if backend == "naive" else chunked.compute_terms
    with chunked.block_size(3, 4):
        terms = fn(q, k, e, 4.0, spec, bias=-1.5)
    s = 4.0 * torch.nn.functional.normalize(q, dim=1) @ torch.nn.functional.normalize(torch.cat([k, e]), dim=1).T
    cols = torch.arange(m + r)
    is_self = cols[None, :] == self_index[:, None]
    positive = (cols[None, :] == pos[:, None]) & ~is_self
    excluded = torch.zeros_like(positive)
    excluded[:, :m] = (rl[:, None] == cl[None, :]) & ~positive[:, :m]
    candidate = ~positive & ~is_self & ~excluded
    inf = float("-inf")
    lse = torch.logsumexp((1.7 * s).masked_fill(~candidate, inf), 1)
    lse_beta = torch.logsumexp((0.7 * s).masked_fill(~candidate, inf), 1)
    z = torch.where(positive, 1.0, -1.0).double()
    pair = torch.where(positive | candidate, torch.nn.functional.softplus(-z * (s - 1.5)), 0.0).sum(1)
    nonempty = candidate.any(1)
    assert_close_rel(terms.row_lse, torch.where(nonempty, lse, 0.0), 1e-12, "row_lse")
    assert_close_rel(terms.row_lse_beta, torch.where(nonempty, lse_beta, 0.0), 1e-12, "row_lse_beta")
    assert_close_rel(terms.row_pair_loss, pair, 1e-12, "row_pair_loss")
    assert torch.equal(terms.row_den_count, candidate.sum(1))


def test_role_spec_rejects_undefined_combinations():
    with pytest.raises(ValueError, match="hard_beta is not supported together with column_terms"):
        RoleSpec(hard_beta=1.0, column_terms=True)
    with pytest.raises(ValueError, match="hard_beta must be >= 0"):
        RoleSpec(hard_beta=-0.5)
