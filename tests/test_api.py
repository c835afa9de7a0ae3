"""Public surface: dispatch, modules, the info command, edge cases (zero vectors, empty denominators)."""
import importlib.util
import subprocess
import sys

import pytest
import reference as ref
import torch
from helpers import assert_close_rel

import contrastive_ops as co
from contrastive_ops import nn as con
from contrastive_ops.backends import resolve

BACKENDS = ["naive", "chunked"]


def test_available_backends_on_cpu(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    names = co.available_backends(torch.device("cpu"))
    assert names[:2] == ["naive", "chunked"]
    assert "triton" not in names and "cuda" not in names  # CUDA-only backends
    ok, why = co.backend_status("triton", torch.device("cpu"))
    assert not ok and why
    with pytest.raises(co.BackendUnavailableError, match="backend='triton' cannot run here: "):
        co.info_nce(torch.randn(4, 3), torch.randn(4, 3), backend="triton")


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="Triton is not installed")
def test_triton_runs_on_cpu_tensors_under_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert co.backend_status("triton", torch.device("cpu")) == (True, "ok (Triton interpreter: TRITON_INTERPRET=1)")
    assert resolve("auto", torch.device("cpu")) == "chunked"  # never picked for CPU tensors


def test_auto_never_picks_naive():
    assert resolve("auto", torch.device("cpu")) == "chunked"


def test_info_command_lists_every_backend_with_a_reason():
    out = subprocess.run([sys.executable, "-m", "contrastive_ops.info"], capture_output=True, text=True, check=True).stdout
    assert f"torch {torch.__version__}" in out
    for name in co.BACKENDS:
        assert name in out
    assert "naive    available" in out and "chunked  available" in out
    assert "cuda     unavailable: " in out


@pytest.mark.parametrize("backend", BACKENDS)
def test_modules_equal_functional(backend, seed):
    q, k, e = torch.randn(13, 6), torch.randn(13, 6), torch.randn(5, 6)
    labels = torch.randint(0, 3, (13,))
    pairs = [
        (con.InfoNCELoss(temperature=0.2, symmetric=True, backend=backend)(q, k),
         co.info_nce(q, k, temperature=0.2, symmetric=True, backend=backend)),
        (con.NTXentLoss(temperature=0.3, backend=backend)(q, k), co.nt_xent(q, k, temperature=0.3, backend=backend)),
        (con.DCLLoss(reduction="sum", backend=backend)(q, k), co.dcl_loss(q, k, reduction="sum", backend=backend)),
        (con.ClipLoss(normalize=True, backend=backend)(q, k, 5.0), co.clip_loss(q, k, 5.0, normalize=True, backend=backend)),
        (con.SupConLoss(reduction="none", backend=backend)(q, labels), co.supcon_loss(q, labels, reduction="none", backend=backend)),
        (con.RingInfoNCELoss(outer=0.5, backend=backend)(q, k, e), co.ring_info_nce(q, k, e, outer=0.5, backend=backend)),
        (con.InfoNCELoss(symmetric=True, backend=backend)(q, k, labels=labels),
         co.info_nce(q, k, symmetric=True, labels=labels, backend=backend)),
        (con.ClipLoss(backend=backend)(q, k, 5.0, labels=labels), co.clip_loss(q, k, 5.0, labels=labels, backend=backend)),
        (con.RingInfoNCELoss(outer=0.5, backend=backend)(q, k, e, query_labels=labels, key_labels=labels.flip(0)),
         co.ring_info_nce(q, k, e, outer=0.5, query_labels=labels, key_labels=labels.flip(0), backend=backend)),
        (con.HardNegativeNCELoss(temperature=0.3, beta=0.5, tau_plus=0.2, backend=backend)(q, k),
         co.hard_negative_nce(q, k, temperature=0.3, beta=0.5, tau_plus=0.2, backend=backend)),
        (con.DebiasedNCELoss(tau_plus=0.05, reduction="none", backend=backend)(q, k),
         co.debiased_nce(q, k, tau_plus=0.05, reduction="none", backend=backend)),
        (con.SigLipLoss(backend=backend)(q, k, 10.0, -10.0), co.siglip_loss(q, k, 10.0, -10.0, backend=backend)),
    ]
    for module_out, fn_out in pairs:
        assert torch.equal(module_out, fn_out)


def test_ring_module_outer_can_be_annealed():
    loss = con.RingInfoNCELoss(outer=1.0, inner=0.0)
    loss.set_outer(0.3)
    assert loss.outer == 0.3
    with pytest.raises(ValueError, match="outer"):
        loss.set_outer(1.3)
    assert "outer=0.3" in repr(loss)


def test_reduction_none_shapes():
    q, k = torch.randn(7, 4), torch.randn(7, 4)
    assert co.info_nce(q, k, reduction="none").shape == (7,)
    assert co.info_nce(q, k, symmetric=True, reduction="none").shape == (7,)
    assert co.nt_xent(q, k, reduction="none").shape == (14,)
    assert co.dcl_loss(q, k, reduction="none").shape == (14,)
    assert co.clip_loss(q, k, 3.0, reduction="none").shape == (7,)
    assert co.supcon_loss(q, torch.arange(7) % 2, reduction="none").shape == (7,)
    assert co.ring_info_nce(q, k, reduction="none").shape == (7,)
    assert co.hard_negative_nce(q, k, reduction="none").shape == (14,)
    assert co.debiased_nce(q, k, reduction="none").shape == (14,)
    assert co.siglip_loss(q, k, 10.0, -10.0, reduction="none").shape == (7,)


@pytest.mark.parametrize("backend", BACKENDS)
def test_zero_vectors_give_finite_loss_and_gradients(backend, seed):
    """As F.normalize (eps=1e-12): a zero row normalizes to zero and its gradient stays finite."""
    q, k = torch.randn(6, 5), torch.randn(6, 5)
    q[2] = 0
    k[4] = 0
    q64, k64 = q.double().requires_grad_(True), k.double().requires_grad_(True)
    q.requires_grad_(True)
    k.requires_grad_(True)
    loss = co.info_nce(q, k, symmetric=True, backend=backend)
    expected = ref.info_nce(q64, k64, symmetric=True).mean()
    loss.backward()
    expected.backward()
    assert torch.isfinite(loss) and torch.isfinite(q.grad).all() and torch.isfinite(k.grad).all()
    assert_close_rel(loss, expected, 1e-5, "loss")
    assert_close_rel(q.grad, q64.grad, 1e-5, "dq")
    assert_close_rel(k.grad, k64.grad, 1e-5, "dk")


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_denominators_contribute_zero(backend):
    z1, z2 = torch.randn(1, 4, requires_grad=True), torch.randn(1, 4, requires_grad=True)
    loss = co.dcl_loss(z1, z2, backend=backend)  # N=1: no negatives at all
    loss.backward()
    assert float(loss.detach()) == 0.0 and torch.equal(z1.grad, torch.zeros_like(z1))
    x = torch.randn(5, 4, requires_grad=True)
    loss = co.supcon_loss(x, torch.arange(5), backend=backend)  # no anchor has a positive
    loss.backward()
    assert float(loss.detach()) == 0.0 and torch.equal(x.grad, torch.zeros_like(x))
    q, k = torch.randn(5, 4, requires_grad=True), torch.randn(5, 4)
    loss = co.ring_info_nce(q, k, outer=0.1, backend=backend)  # floor(0.1 * 4) = 0: every ring empty
    loss.backward()
    assert float(loss.detach()) == 0.0 and torch.equal(q.grad, torch.zeros_like(q))


@pytest.mark.parametrize("backend", BACKENDS)
def test_large_scale_does_not_overflow(backend, seed):
    """The online max keeps the log-sum-exp finite at scales where exp() of a logit overflows."""
    q, k = torch.randn(9, 8, requires_grad=True), torch.randn(9, 8)
    loss = co.clip_loss(q, k, torch.tensor(5000.0), normalize=True, backend=backend)
    loss.backward()
    expected = ref.clip(q.detach(), k, 5000.0, normalize=True).mean()
    assert_close_rel(loss, expected, 1e-5, "loss at scale 5000")
    assert torch.isfinite(q.grad).all()
