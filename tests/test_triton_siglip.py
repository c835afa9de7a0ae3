"""SigLIP without recomputation on the triton backend (``backends.triton.pair_route``).

With ``reduction="mean"`` or ``"sum"`` every row's pair losses get the same upstream gradient, so the
forward runs the dS chunks once (row weight 1), sums the pair losses on the way and forms the products
dS·K̂, dSᵀ·Q̂; the backward only scales them. ``reduction="none"``, no
gradient wanted, or ``CONTRASTIVE_OPS_TRITON_SIGLIP=recompute`` keep the recomputing backward. Loss and
every gradient (both inputs, logit_scale, logit_bias) against the float64 naive reference, in one chunk
and in many partial chunks, odd shapes, normalize on and off (under ``TRITON_INTERPRET=1`` on a CPU).
"""
import pytest
import torch
from helpers import DEVICE, FP32_REL, assert_close_rel, required, triton_status

import contrastive_ops as co

_AVAILABLE, _WHY = triton_status()
if not _AVAILABLE and required("CONTRASTIVE_OPS_REQUIRE_TRITON"):
    raise RuntimeError(f"CONTRASTIVE_OPS_REQUIRE_TRITON=1 but the triton backend cannot run: {_WHY}")
pytestmark = [pytest.mark.interpreter, pytest.mark.skipif(not _AVAILABLE, reason=f"triton backend: {_WHY}")]

D = 272  # above kernels.config.REGISTER_D_MAX: chunks of D in the dS pass (smaller D: test_register_route_...)
SMALL_CHUNK_BYTES = str(16 * 16 * 4)  # one 16 × 16 tile per chunk: partial chunks both ways


@pytest.fixture
def routes(monkeypatch):
    """The names of the triton ops each call ran (``tiled_pair_forward``, ``tiled_forward``, ...)."""
    from contrastive_ops.backends import triton as backend

    calls = []
    for name in ("_pair_forward_op", "_forward_op", "_backward_op", "_pair_backward_op"):
        real = getattr(backend, name)

        def spy(*args, _real=real, _name=name, **kwargs):
            calls.append(_name)
            return _real(*args, **kwargs)

        monkeypatch.setattr(backend, name, spy)
    return calls


def _inputs(n, d, normalize=True):
    """As test_against_float64's siglip cases: matched pairs (normalized) or features of norm ≈ 0.2·√D
    (unnormalized), so that the scale's gradient is no near-cancelling sum (fp32 PyTorch itself misses
    such a sum by 1e-5)."""
    g = torch.Generator().manual_seed(n * 1000 + d)
    img, txt = (torch.randn(n, d, generator=g) for _ in range(2))
    if normalize:
        txt = img + 0.5 * txt
    else:
        img, txt = 0.2 * img, 0.2 * txt
    return img.to(DEVICE), txt.to(DEVICE)


#: (logit_scale, logit_bias) of the normalized and the unnormalized inputs
PARAMS = {True: (10.0, -10.0), False: (5.0, -2.0)}


def _run(img, txt, scale, bias, backend, reduction, normalize, weights=None):
    img, txt = img.clone().requires_grad_(), txt.clone().requires_grad_()
    scale = torch.tensor(scale, dtype=img.dtype, device=img.device, requires_grad=True)
    bias = torch.tensor(bias, dtype=img.dtype, device=img.device, requires_grad=True)
    loss = co.siglip_loss(img, txt, scale, bias, normalize=normalize, reduction=reduction, backend=backend)
    out = loss if weights is None else (loss * weights.to(loss.dtype)).sum()
    out = out * 3.25 if reduction != "none" else out  # any upstream scalar: still one weight per row
    return (loss, *torch.autograd.grad(out, [img, txt, scale, bias]))


@pytest.mark.parametrize("chunks", ["one", "small"])
@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("n", [1, 19, 37])
def test_siglip_forward_formed_gradient_against_float64(routes, n, reduction, normalize, chunks, monkeypatch):
    if chunks == "small":
        monkeypatch.setenv("CONTRASTIVE_OPS_DS_CHUNK_BYTES", SMALL_CHUNK_BYTES)
    img, txt = _inputs(n, D, normalize)
    weights = torch.rand(n, generator=torch.Generator().manual_seed(5)).to(DEVICE) + 0.5 if reduction == "none" else None
    ours = _run(img, txt, *PARAMS[normalize], "triton", reduction, normalize, weights)
    ref = _run(img.double(), txt.double(), *PARAMS[normalize], "naive", reduction, normalize,
               None if weights is None else weights.double())
    for a, b, what in zip(ours, ref, ("loss", "d image", "d text", "d logit_scale", "d logit_bias")):
        assert_close_rel(a, b, FP32_REL, f"siglip {reduction} normalize={normalize} n={n} {chunks}: {what}")
    formed = reduction != "none"
    assert ("_pair_forward_op" in routes) == formed and ("_forward_op" in routes) == (not formed), routes


def test_the_switch_keeps_the_recomputing_backward(routes, monkeypatch):
    img, txt = _inputs(19, D)
    formed = _run(img, txt, 10.0, -4.0, "triton", "mean", True)
    assert routes == ["_pair_forward_op", "_pair_backward_op"], routes
    routes.clear()
    monkeypatch.setenv("CONTRASTIVE_OPS_TRITON_SIGLIP", "recompute")
    recomputed = _run(img, txt, 10.0, -4.0, "triton", "mean", True)
    assert "_pair_forward_op" not in routes and "_backward_op" in routes, routes
    for a, b in zip(formed, recomputed):
        assert_close_rel(a, b, FP32_REL, "forward-formed against recomputed")


def test_a_bad_switch_is_named(monkeypatch):
    img, txt = _inputs(5, D)
    monkeypatch.setenv("CONTRASTIVE_OPS_TRITON_SIGLIP", "sometimes")
    img.requires_grad_(True)
    with pytest.raises(ValueError, match="CONTRASTIVE_OPS_TRITON_SIGLIP must be 'forward' or 'recompute', got 'sometimes'"):
        co.siglip_loss(img, txt, 10.0, -4.0, backend="triton")


def test_no_gradient_wanted_takes_the_plain_forward(routes):
    img, txt = _inputs(19, D)
    with torch.no_grad():
        loss = co.siglip_loss(img, txt, 10.0, -4.0, backend="triton")
    assert routes == ["_forward_op"], routes
    assert_close_rel(loss, co.siglip_loss(img.double(), txt.double(), 10.0, -4.0, backend="naive"), FP32_REL)


@pytest.mark.parametrize("d", [40, 128])
def test_register_route_sizes_take_it_too(routes, d):
    """D up to 256, where the recomputing backward keeps its accumulators in registers: the formed
    gradient still replaces the forward and the backward's passes."""
    img, txt = (t[:, :d].contiguous() for t in _inputs(19, D))
    ours = _run(img, txt, *PARAMS[True], "triton", "sum", True)
    ref = _run(img.double(), txt.double(), *PARAMS[True], "naive", "sum", True)
    assert routes == ["_pair_forward_op", "_pair_backward_op"], routes
    for a, b, what in zip(ours, ref, ("loss", "d image", "d text", "d logit_scale", "d logit_bias")):
        assert_close_rel(a, b, FP32_REL, f"D={d}: {what}")


def test_logits_beyond_exp_range(routes):
    """Unnormalized features whose logits reach hundreds (``e^S`` overflows fp32): the formed gradient has
    no softmax term to overflow, and matches float64 like the rest."""
    g = torch.Generator().manual_seed(7)
    img, txt = (torch.randn(19, D, generator=g).to(DEVICE) for _ in range(2))
    ours = _run(img, txt, 5.0, -2.0, "triton", "mean", False)
    ref = _run(img.double(), txt.double(), 5.0, -2.0, "naive", "mean", False)
    assert "_pair_forward_op" in routes, routes
    for a, b, what in zip(ours, ref, ("loss", "d image", "d text", "d logit_scale", "d logit_bias")):
        assert torch.isfinite(a).all(), what
        assert_close_rel(a, b, FP32_REL, f"large logits: {what}")
