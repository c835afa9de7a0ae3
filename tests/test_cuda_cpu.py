"""The cuda backend's arithmetic on a CPU: the extension's operators run on CPU tensors with the very
epilogue functions its GPU kernels call (csrc/epilogue.h; plain loops instead of warps, fp32
products instead of cuBLAS), through the backend's own Python (autograd, the Ring band first, the
chunk shape). Every loss and every input's gradient against float64, in one chunk and in chunks
much smaller than the shapes (8 × 9 cosines), so that every merge of partial states runs.
"""
import os

import pytest
import torch
from cases import CASES
from conftest import assert_close_rel

import contrastive_ops as co
from contrastive_ops import _ext, functional
from contrastive_ops.core import RoleSpec

FP32_REL = 1e-5
# 8 × 9 fp32 cosines per chunk at the tests' shapes (N = 37): partial chunks both ways
SMALL_CHUNK_BYTES = str(4 * 72)

pytestmark = pytest.mark.skipif(
    not _ext.prebuilt() and os.environ.get("CONTRASTIVE_OPS_REQUIRE_CUDA_EXT") != "1",
    reason="the CUDA extension is not built here")


@pytest.fixture
def cuda_on_cpu(monkeypatch):
    """backend="cuda" routed to the extension's CPU implementation for the losses of contrastive_ops."""
    from contrastive_ops.backends import cuda

    real = functional.compute_fn

    def compute_fn(name):
        if name != "cuda":
            return real(name)
        return lambda *args, **kwargs: cuda.compute_terms(*args, allow_cpu=True, **kwargs)

    monkeypatch.setattr(functional, "resolve", lambda backend, device: backend)
    monkeypatch.setattr(functional, "compute_fn", compute_fn)
    return cuda


def _grads(loss, tensors):
    leaves = [t for t in tensors if t.requires_grad]
    return torch.autograd.grad(loss, leaves, allow_unused=True, materialize_grads=True)


@pytest.mark.parametrize("chunks", ["one", "small"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_every_loss_and_gradient_against_float64(cuda_on_cpu, name, chunks, seed, monkeypatch):
    if chunks == "small":
        monkeypatch.setenv("CONTRASTIVE_OPS_DS_CHUNK_BYTES", SMALL_CHUNK_BYTES)
    case = CASES[name]
    tensors = [t.requires_grad_(True) if t.dtype.is_floating_point else t for t in case.make(torch.float32)]
    ours = case.ours(tensors, backend="cuda", reduction="none")
    ref_tensors = [t.detach().double().requires_grad_(True) if t.dtype.is_floating_point else t for t in tensors]
    expected = case.reference(ref_tensors)
    assert ours.dtype == torch.float32
    assert_close_rel(ours, expected, FP32_REL, f"{name} per-anchor loss")
    weights = torch.rand(expected.shape, dtype=torch.float64)
    ours_grads = _grads((ours.double() * weights).sum(), tensors)
    ref_grads = _grads((expected * weights).sum(), ref_tensors)
    assert len(ours_grads) == len(ref_grads) > 0
    for input_name, g, g_ref in zip(case.names, ours_grads, ref_grads):
        assert g.dtype == torch.float32
        assert_close_rel(g, g_ref, FP32_REL, f"{name} d/d{input_name}")


@pytest.mark.parametrize("chunk_bytes", [SMALL_CHUNK_BYTES, str(4 * 37 * 60)])
def test_the_ring_band_equals_the_chunked_backends_on_the_same_logits(cuda_on_cpu, chunk_bytes, seed, monkeypatch):
    """A discontinuous function, compared where both decide on bit-identical logits: the same fp32
    products (the chunked backend's tiles of the same shape as the chunks) give the same band."""
    from contrastive_ops.backends import chunked

    monkeypatch.setenv("CONTRASTIVE_OPS_DS_CHUNK_BYTES", chunk_bytes)
    q, k, e = torch.randn(37, 40), torch.randn(37, 40), torch.randn(23, 40)
    from contrastive_ops.kernels.config import cosine_chunk_shape

    rows, cols = cosine_chunk_shape(37, 60)
    spec = RoleSpec(pos_index=torch.arange(37), ring=(0.4, 0.2))
    ours = torch.ops.contrastive_ops_cuda.ring_band(q, k, e, torch.tensor(14.0), spec.pos_index, None, None, None,
                                                      True, True, 0.4, 0.2, rows, cols)
    with chunked.block_size(rows, cols):
        theirs = chunked.ring_band(q, k, e, 14.0, spec, (rows, cols))
    assert torch.equal(ours[0], theirs[0]) and torch.equal(ours[1], theirs[1])


def test_repeated_calls_give_the_same_bits(cuda_on_cpu, seed, monkeypatch):
    monkeypatch.setenv("CONTRASTIVE_OPS_DS_CHUNK_BYTES", SMALL_CHUNK_BYTES)
    q = torch.randn(37, 40, requires_grad=True)
    k = torch.randn(37, 40, requires_grad=True)

    def run():
        loss = co.clip_loss(q, k, 14.0, backend="cuda")
        return (loss, *torch.autograd.grad(loss, [q, k]))

    assert all(torch.equal(a, b) for a, b in zip(run(), run()))


def test_a_tensor_temperature_and_the_siglip_bias_get_their_gradients(cuda_on_cpu, seed):
    q = torch.randn(19, 24, requires_grad=True)
    k = torch.randn(19, 24, requires_grad=True)
    t = torch.tensor(0.2, requires_grad=True)
    grads = {}
    for backend in ("chunked", "cuda"):
        loss = co.info_nce(q, k, temperature=t, backend=backend)
        grads[backend] = torch.autograd.grad(loss, [q, k, t])
    for a, b in zip(grads["cuda"], grads["chunked"]):
        assert_close_rel(a, b, FP32_REL, "info_nce with a tensor temperature")
    scale, bias = torch.tensor(10.0, requires_grad=True), torch.tensor(-5.0, requires_grad=True)
    for backend in ("chunked", "cuda"):
        loss = co.siglip_loss(q, k, scale, bias, backend=backend)
        grads[backend] = torch.autograd.grad(loss, [q, k, scale, bias])
    for a, b in zip(grads["cuda"], grads["chunked"]):
        assert_close_rel(a, b, FP32_REL, "siglip_loss")
