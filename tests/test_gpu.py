"""CUDA checks of every runnable backend (marked ``gpu``; skipped without a CUDA device).

Run on a GPU machine with ``pytest -m gpu tests`` (the benchmark suite does). Covers what the CPU
tests cannot: bf16, large shapes, bitwise-deterministic backward, and large logit scales.
"""
import pytest
import torch
from cases import CASES

import contrastive_ops as co

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

DEVICE = torch.device("cuda")
BACKENDS = [b for b in ("chunked", "triton", "cuda") if torch.cuda.is_available() and co.backend_status(b, DEVICE)[0]]
NAMES = ["info_nce_queue", "info_nce_symmetric_queue", "nt_xent", "dcl", "clip_tensor_scale", "supcon_few_classes",
         "ring", "ring_queue_only"]


def _on(tensors, device, dtype=None, grad=True):
    out = []
    for t in tensors:
        t = t.detach().to(device)
        if t.dtype.is_floating_point:
            t = t.to(dtype or t.dtype).requires_grad_(grad)
        out.append(t)
    return out


def _grads(loss, tensors):
    leaves = [t for t in tensors if t.dtype.is_floating_point]
    return torch.autograd.grad(loss, leaves, allow_unused=True, materialize_grads=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", NAMES)
def test_error_at_most_twice_pytorchs_own(name, backend, dtype, seed):
    """Error against float64 no worse than twice PyTorch's own (naive) in the same dtype."""
    case = CASES[name]
    base = case.make(torch.float32)
    # the reference sees the values the backends see: the inputs rounded to dtype (a Ring band decided
    # on the fp32 draw would differ from one decided on the rounded inputs)
    ref_in = _on(_on(base, "cpu", dtype, grad=False), "cpu", torch.float64)
    expected = case.reference(ref_in)
    weights = torch.rand(expected.shape, dtype=torch.float64)
    ref_grads = _grads((expected * weights).sum(), ref_in)
    results = {}
    for impl in ("naive", backend):
        inputs = _on(base, DEVICE, dtype)
        out = case.ours(inputs, backend=impl, reduction="none")
        grads = _grads((out.double() * weights.to(DEVICE)).sum(), inputs)
        results[impl] = (out.double().cpu(), [g.double().cpu() for g in grads])
    for what, ours, own, ref in [("loss", results[backend][0], results["naive"][0], expected)] + [
        (f"d/d{n}", a, b, r) for n, a, b, r in zip(case.names, results[backend][1], results["naive"][1], ref_grads)
    ]:
        our_err = (ours - ref.detach()).abs().max().item()
        own_err = (own - ref.detach()).abs().max().item()
        floor = 1e-6 * ref.abs().max().item() if dtype == torch.float32 else 1e-3 * ref.abs().max().item()
        assert our_err <= 2 * own_err + floor, (what, our_err, own_err)


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
