"""SigLIP without recomputation on the cuda backend, through the extension's CPU operators.

With ``reduction="mean"`` or ``"sum"`` every row's pair losses get the same upstream gradient, so
``pair_forward`` forms dS (row weight 1) and its products dS·K̂, dSᵀ·Q̂ in the forward's chunks and
the backward only scales them (``pair_backward``); ``reduction="none"`` keeps the recomputing
backward. Loss and every gradient (both inputs, logit_scale, logit_bias) against the float64 naive
reference, in one chunk and in many partial chunks, odd shapes, normalize on and off.
"""
import pytest
import torch
from helpers import FP32_REL, assert_close_rel, cuda_extension_expected, route_cuda_to_cpu

import contrastive_ops as co
from contrastive_ops.core import RoleSpec

pytestmark = pytest.mark.skipif(not cuda_extension_expected(), reason="the CUDA extension is not built here")

SMALL_CHUNK_BYTES = str(4 * 72)  # 8 × 9 cosines per chunk: partial chunks both ways


@pytest.fixture
def cuda_on_cpu(monkeypatch):
    """backend="cuda" on the extension's CPU operators; returns the names of the operators called."""
    cuda = route_cuda_to_cpu(monkeypatch)
    calls = []
    real = cuda._call

    def spy(op, values):
        calls.append(op)
        return real(op, values)

    monkeypatch.setattr(cuda, "_call", spy)
    return calls


def _inputs(n, d, dtype=torch.float32):
    g = torch.Generator().manual_seed(n * 1000 + d)
    img = torch.randn(n, d, generator=g, dtype=dtype)
    txt = (img + 0.7 * torch.randn(n, d, generator=g, dtype=dtype)) * 1.3
    return img, txt


def _run(img, txt, scale, bias, backend, reduction, normalize, weights=None):
    img, txt = img.clone().requires_grad_(), txt.clone().requires_grad_()
    scale = torch.tensor(scale, dtype=img.dtype, requires_grad=True)
    bias = torch.tensor(bias, dtype=img.dtype, requires_grad=True)
    loss = co.siglip_loss(img, txt, scale, bias, normalize=normalize, reduction=reduction, backend=backend)
    out = loss if weights is None else (loss * weights.to(loss.dtype)).sum()
    out = out * 3.25 if reduction != "none" else out  # any upstream scalar: still one weight per row
    return (loss, *torch.autograd.grad(out, [img, txt, scale, bias]))


SHAPES = [(1, 3), (19, 24), (37, 17)]


@pytest.mark.parametrize("chunks", ["one", "small"])
@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_siglip_forward_formed_gradient_against_float64(cuda_on_cpu, shape, reduction, normalize, chunks,
                                                        monkeypatch):
    if chunks == "small":
        monkeypatch.setenv("CONTRASTIVE_OPS_DS_CHUNK_BYTES", SMALL_CHUNK_BYTES)
    n, d = shape
    img, txt = _inputs(n, d)
    if not normalize:  # raw features of moderate norm, so the logits stay in the sigmoid's range
        img, txt = img / d**0.5, txt / d**0.5
    scale, bias = 10.0, -4.0
    weights = torch.rand(n, generator=torch.Generator().manual_seed(5)) + 0.5 if reduction == "none" else None
    ours = _run(img, txt, scale, bias, "cuda", reduction, normalize, weights)
    ref = _run(img.double(), txt.double(), scale, bias, "naive", reduction, normalize,
               None if weights is None else weights.double())
    names = ("loss", "d image", "d text", "d logit_scale", "d logit_bias")
    for a, b, what in zip(ours, ref, names):
        assert_close_rel(a, b, FP32_REL, f"siglip {reduction} normalize={normalize} {shape} {chunks}: {what}")
    expected = "forward" if reduction == "none" else "pair_forward"
    assert expected in cuda_on_cpu and ("pair_forward" in cuda_on_cpu) == (reduction != "none")


def test_the_switch_keeps_the_recomputing_backward(cuda_on_cpu, monkeypatch):
    img, txt = _inputs(19, 24)
    formed = _run(img, txt, 10.0, -4.0, "cuda", "mean", True)
    assert "pair_forward" in cuda_on_cpu
    cuda_on_cpu.clear()
    monkeypatch.setenv("CONTRASTIVE_OPS_CUDA_SIGLIP", "recompute")
    recomputed = _run(img, txt, 10.0, -4.0, "cuda", "mean", True)
    assert "pair_forward" not in cuda_on_cpu and "backward" in cuda_on_cpu
    for a, b in zip(formed, recomputed):
        assert_close_rel(a, b, FP32_REL, "forward-formed against recomputed")


def test_no_gradient_wanted_takes_the_plain_forward(cuda_on_cpu):
    img, txt = _inputs(19, 24)
    with torch.no_grad():
        loss = co.siglip_loss(img, txt, 10.0, -4.0, backend="cuda")
    assert cuda_on_cpu == ["forward"]
    assert_close_rel(loss, co.siglip_loss(img.double(), txt.double(), 10.0, -4.0, backend="naive"), FP32_REL)


@pytest.mark.parametrize("extra_rows", [0, 5])
def test_softmax_terms_used_beside_the_pair_losses_recompute_only_their_part(cuda_on_cpu, extra_rows):
    """A caller of the core that also differentiates row_lse and row_pos (with the uniform promise on
    the pair losses): the pair part from the forward's products, the rest recomputed, summed."""
    from contrastive_ops.backends import compute_terms

    img, txt = _inputs(19, 24)
    extra = torch.randn(extra_rows, 24, generator=torch.Generator().manual_seed(3)) if extra_rows else None

    def run(dtype, backend):
        q, k = img.to(dtype).requires_grad_(), txt.to(dtype).requires_grad_()
        e = None if extra is None else extra.to(dtype).requires_grad_()
        scale = torch.tensor(7.0, dtype=dtype, requires_grad=True)
        bias = torch.tensor(-2.0, dtype=dtype, requires_grad=True)
        spec = RoleSpec(pos_index=torch.arange(19), pairwise_sigmoid=True, uniform_pair_grad=True)
        t = compute_terms(q, k, e, scale, spec, backend, bias=bias)
        w = torch.linspace(0.5, 1.5, 19, dtype=dtype)
        out = 2.0 * t.row_pair_loss.sum() + (w * t.row_lse).sum() - (w * t.row_pos).sum()
        leaves = [q, k, scale, bias] + ([] if e is None else [e])
        return (t.row_pair_loss, t.row_lse, *torch.autograd.grad(out, leaves))

    ours, ref = run(torch.float32, "cuda"), run(torch.float64, "naive")
    assert "pair_forward" in cuda_on_cpu
    for a, b in zip(ours, ref):
        assert_close_rel(a, b, FP32_REL, "pair losses with softmax terms")


def test_pair_forward_refuses_column_terms():
    from contrastive_ops import _ext

    _ext.load()
    q = torch.randn(4, 3)
    args = (q, q.clone(), None, torch.tensor(1.0), torch.tensor(0.0), torch.arange(4), None, None, None, None, None,
            None, None, None, True, False, True, True, None, True, 4, 4)
    with pytest.raises(ValueError, match="pairwise sigmoid alone"):
        torch.ops.contrastive_ops_cuda.pair_forward(*args)
