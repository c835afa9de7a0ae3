"""Correctness of backend="cuda" on a GPU (marked ``gpu``; skipped without a CUDA device or
without the built extension). The same checks as the Triton backend's: odd shapes, integer
outputs, bitwise-deterministic backward, torch.compile, the fused sm_90a tiles; every loss
configuration of tests/cases.py against the float64 reference in fp32/fp16/bf16, every input's
gradient included, is in test_against_float64.py.
"""
import pytest
import torch
from cases import CASES
from helpers import assert_close_rel

import contrastive_ops as co

DEVICE = torch.device("cuda")
_CAN_RUN = torch.cuda.is_available() and co.backend_status("cuda", DEVICE)[0]

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not _CAN_RUN, reason="needs a CUDA GPU and the CUDA extension"),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_odd_shapes_match_chunked(dtype, seed):
    """Sizes that are no multiple of the chunks, the warps or 16-byte rows (D = 123), N != M, a queue."""
    q, k, e = (torch.randn(n, 123, device=DEVICE, dtype=dtype, requires_grad=True) for n in (131, 131, 67))
    scale = torch.tensor(7.5, device=DEVICE, requires_grad=True)
    outs = {}
    for backend in ("chunked", "cuda"):
        loss = co.info_nce(q, k, e, symmetric=True, reduction="none", backend=backend) * scale
        outs[backend] = (loss, torch.autograd.grad(loss.sum(), [q, k, e, scale]))
    rel = 1e-5 if dtype == torch.float32 else 2e-2
    assert_close_rel(outs["cuda"][0], outs["chunked"][0], rel, "loss")
    for a, b in zip(outs["cuda"][1], outs["chunked"][1]):
        assert_close_rel(a, b, rel, "grad")


def test_counts_match_the_reference_roles(seed):
    """Integer outputs are exact: every element written (outputs start as uninitialized memory)."""
    from contrastive_ops.backends import chunked, cuda
    from contrastive_ops.core import RoleSpec

    n, m, r, d = 70, 90, 33, 20
    q, k, e = (torch.randn(x, d, device=DEVICE) for x in (n, m, r))
    labels_q, labels_k = torch.randint(0, 4, (n,), device=DEVICE), torch.randint(0, 4, (m,), device=DEVICE)
    spec = RoleSpec(row_labels=labels_q, col_labels=labels_k, self_index=torch.arange(n, device=DEVICE) % m,
                    key_negatives=False, column_terms=True)
    ours, theirs = cuda.compute_terms(q, k, e, 3.0, spec), chunked.compute_terms(q, k, e, 3.0, spec)
    for name in ("row_den_count", "row_pos_count", "col_den_count", "col_pos_count"):
        assert torch.equal(getattr(ours, name), getattr(theirs, name)), name


def test_ring_band_matches_the_reference_selection(seed):
    case = CASES["ring"]  # outer 0.3, inner 0.1; drawn with its band boundaries apart (cases._ring_margin)
    q, k, e = (t.to(DEVICE) for t in case.make(torch.float32))
    ours = case.ours([q, k, e], backend="cuda", reduction="none")
    truth = case.reference([t.double().cpu() for t in (q, k, e)])
    assert_close_rel(ours.cpu(), truth, 1e-5, "ring loss")


def test_backward_is_bitwise_deterministic(seed):
    q, k, e = (torch.randn(n, 200, device=DEVICE, dtype=torch.bfloat16, requires_grad=True) for n in (1000, 1000, 300))
    scale = torch.tensor(10.0, device=DEVICE, requires_grad=True)
    runs = [torch.autograd.grad(co.clip_loss(q, k, scale, backend="cuda") + co.info_nce(q, k, e, backend="cuda"),
                                [q, k, e, scale]) for _ in range(2)]
    for a, b in zip(*runs):
        assert torch.equal(a, b)


def test_empty_denominator_rows_give_zero_loss_and_gradient(seed):
    q, k = (torch.randn(5, 8, device=DEVICE, requires_grad=True) for _ in range(2))
    loss = co.ring_info_nce(q, k, outer=0.01, inner=0.0, reduction="none", backend="cuda")  # empty rings
    assert torch.isfinite(loss).all()
    assert all(torch.isfinite(g).all() for g in torch.autograd.grad(loss.sum(), [q, k]))


def test_fullgraph_compile_matches_eager(seed):
    q, k, e = (torch.randn(n, 48, device=DEVICE, requires_grad=True) for n in (50, 50, 20))

    def f(a, b, c):
        return co.info_nce(a, b, c, symmetric=True, backend="cuda") + co.ring_info_nce(a, b, c, outer=0.5, backend="cuda")

    eager = f(q, k, e)
    compiled = torch.compile(f, fullgraph=True)(q, k, e)
    assert_close_rel(compiled, eager, 1e-6, "loss")
    for a, b in zip(torch.autograd.grad(compiled, [q, k, e]), torch.autograd.grad(eager, [q, k, e])):
        assert_close_rel(a, b, 1e-6, "grad")


def _fused_available():
    return _CAN_RUN and torch.cuda.get_device_capability(DEVICE) == (9, 0)


@pytest.mark.skipif(not _fused_available(), reason="the fused sm_90a kernels need an sm_90 GPU")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("loss", ["clip", "info_nce_queue", "nt_xent", "dcl"])
def test_fused_sm90_tiles_match_the_cublas_path(loss, dtype, seed, monkeypatch):
    """The fused kernels (csrc/fused_sm90.cu: plain roles, d % 8 == 0) against the cuBLAS + epilogue
    path of the same operators (CONTRASTIVE_OPS_CUDA_FUSED=0), on sizes that end mid-tile and a
    positive and self column in every diagonal tile; both against float64 through the case suite."""
    n, m, r, d = 389, 389, 130, 200
    q, k, e = (torch.randn(x, d, device=DEVICE, dtype=dtype, requires_grad=True) for x in (n, m, r))
    scale = torch.tensor(9.0, device=DEVICE, requires_grad=True)

    def run():
        if loss == "clip":
            out, leaves = co.clip_loss(q, k, scale, reduction="none", backend="cuda"), [q, k, scale]
        elif loss == "info_nce_queue":
            out, leaves = co.info_nce(q, k, e, symmetric=True, reduction="none", backend="cuda") * scale, [q, k, e, scale]
        elif loss == "nt_xent":
            out, leaves = co.nt_xent(q, k, temperature=0.1, reduction="none", backend="cuda"), [q, k]
        else:
            out, leaves = co.dcl_loss(q, k, temperature=0.1, reduction="none", backend="cuda"), [q, k]
        return out, torch.autograd.grad(out.sum(), leaves)

    fused = run()
    monkeypatch.setenv("CONTRASTIVE_OPS_CUDA_FUSED", "0")
    plain = run()
    assert_close_rel(fused[0], plain[0], 1e-3, "loss")
    for a, b in zip(fused[1], plain[1]):
        assert_close_rel(a, b, 2e-2, "grad")
