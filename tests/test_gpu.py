"""CUDA checks of every runnable backend (marked ``gpu``; skipped without a CUDA device).

Run on a GPU machine with ``pytest -m gpu tests`` (the benchmark suite does). Covers what the CPU
tests cannot: large shapes, bitwise-deterministic backward, and large logit scales (bf16 and every
dtype against float64: test_against_float64.py).
"""
import pytest
import torch

import contrastive_ops as co

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

DEVICE = torch.device("cuda")
BACKENDS = [b for b in ("chunked", "triton", "cuda") if torch.cuda.is_available() and co.backend_status(b, DEVICE)[0]]


@pytest.mark.parametrize("backend", BACKENDS)
def test_backward_is_bitwise_deterministic(backend, seed):
    q, k, e = (torch.randn(n, 256, device=DEVICE, dtype=torch.bfloat16, requires_grad=True) for n in (3000, 3000, 1000))
    runs = []
    for _ in range(2):
        loss = co.info_nce(q, k, e, symmetric=True, backend=backend)
        runs.append(torch.autograd.grad(loss, [q, k, e]))
    for a, b in zip(*runs):
        assert torch.equal(a, b)


@pytest.mark.parametrize("backend", BACKENDS)
def test_large_shape_matches_fp32_naive(backend, seed):
    n, d = 8192, 256
    img, txt = (torch.nn.functional.normalize(torch.randn(n, d, device=DEVICE), dim=1) for _ in range(2))
    scale = torch.tensor(20.0, device=DEVICE, requires_grad=True)
    ours_in = [img.bfloat16().requires_grad_(True), txt.bfloat16().requires_grad_(True)]
    ref_in = [t.detach().float().requires_grad_(True) for t in ours_in]
    ours = co.clip_loss(*ours_in, scale, backend=backend)
    ref = co.clip_loss(*ref_in, scale, backend="naive")
    assert abs(ours.item() - ref.item()) <= 2e-2 * abs(ref.item())
    g_ours = torch.autograd.grad(ours, ours_in)
    g_ref = torch.autograd.grad(ref, ref_in)
    for a, b in zip(g_ours, g_ref):
        assert (a.float() - b).abs().max() <= 5e-2 * b.abs().max()


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_nan_at_logit_scale_100_in_bf16(backend, seed):
    img, txt = (torch.randn(2048, 512, device=DEVICE, dtype=torch.bfloat16, requires_grad=True) for _ in range(2))
    loss = co.clip_loss(img, txt, 100.0, normalize=True, backend=backend)
    grads = torch.autograd.grad(loss, [img, txt])
    assert torch.isfinite(loss) and all(torch.isfinite(g).all() for g in grads)
