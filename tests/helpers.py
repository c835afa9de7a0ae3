"""What the tests share: inputs for a case, gradients, and the two ways a result is judged against
its float64 reference (a norm-wise relative bound, and "at most twice PyTorch's own error in this
dtype"), with :func:`check_against_float64` putting them together for one loss configuration.

Nothing here imports ``contrastive_ops`` at module level: conftest.py sets ``TRITON_INTERPRET`` first.
"""
from __future__ import annotations

import contextlib
import os

import pytest
import torch

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
FP32_REL = 1e-5  # fp32 against float64: the bound every backend meets on the CPU (and cuda on a GPU)


# ---------------------------------------------------------------------------------------------
# inputs and gradients
# ---------------------------------------------------------------------------------------------


def make_inputs(case, dtype=torch.float32, device="cpu", requires_grad=True):
    """The case's tensors, drawn in float32 (float64 for float64) on the CPU, rounded to ``dtype`` and
    moved to ``device``; the floating ones require a gradient, integer labels ride along as drawn."""
    out = []
    for t in case.make(torch.float64 if dtype == torch.float64 else torch.float32):
        t = t.to(device)
        if t.dtype.is_floating_point:
            t = t.to(dtype).requires_grad_(requires_grad)
        out.append(t)
    return out


def exact_product_rows(n: int, m: int, d: int):
    """``(query [n, d], keys [m, d], logits_of)``: rows of small integers times 1/4 (norms below 1 too, so
    inverse norms above 1; every dot product exact in any order) and ``logits_of(scale)``, the ``[n, m]``
    logits ``scale·((raw·rc_j)·rq_i)`` as the Triton tiles form them, with the kernels' own inverse norms:
    a reference that decides on the kernels' very values."""
    from contrastive_ops.kernels.normalize import inverse_norms

    query, keys = torch.randint(-2, 3, (n, d)).float(), torch.randint(-2, 3, (m, d)).float()
    query[query.abs().sum(dim=1) == 0, 0] = 1.0  # no zero rows
    keys[keys.abs().sum(dim=1) == 0, 0] = 1.0
    query, keys = query * 0.25, keys * 0.25
    half = (query @ keys.T) * inverse_norms(keys)[None, :]

    def logits_of(scale: torch.Tensor) -> torch.Tensor:
        return scale * (half * inverse_norms(query)[:, None])

    return query, keys, logits_of


def as_reference(tensors):
    """The same values in float64 on the CPU, as new leaves: the reference sees exactly what the
    backend was given (inputs already rounded to fp16/bf16 stay rounded)."""
    return [t.detach().cpu().double().requires_grad_(t.requires_grad) if t.dtype.is_floating_point else t.cpu()
            for t in tensors]


def fresh(tensors):
    """New leaves with the same values, dtype and device (a second backend's run on the same inputs)."""
    return [t.detach().clone().requires_grad_(t.requires_grad) if t.dtype.is_floating_point else t for t in tensors]


def grads(loss, tensors):
    """d loss / d every tensor that requires a gradient, in order; an input the loss does not use gets
    zeros (a missing gradient compares as 0, not as None)."""
    leaves = [t for t in tensors if t.requires_grad]
    return torch.autograd.grad(loss, leaves, allow_unused=True, materialize_grads=True)


# ---------------------------------------------------------------------------------------------
# judging errors
# ---------------------------------------------------------------------------------------------


def max_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |actual - expected| in float64 on the CPU."""
    return (actual.detach().double().cpu() - expected.detach().double().cpu()).abs().max().item()


def assert_close_rel(actual: torch.Tensor, expected: torch.Tensor, rel: float, what: str = "") -> None:
    """Norm-wise relative check: max|actual - expected| <= rel * max(max|expected|, 1e-30).

    Relative to the largest value rather than element by element, so that entries near zero (a
    cancelling gradient) are judged at the scale of the result. On failure, reports the error, the
    scale and the first offending index; NaN/inf anywhere fails.
    """
    actual = actual.detach().double()
    expected = expected.detach().double()
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert torch.isfinite(actual).all(), f"{what}: non-finite values in result: {actual}"
    scale = max(expected.abs().max().item() if expected.numel() else 0.0, 1e-30)
    err = (actual - expected).abs()
    worst = err.max().item() if err.numel() else 0.0
    if worst > rel * scale:
        idx = tuple(int(i) for i in torch.nonzero(err == err.max())[0]) if err.dim() else ()
        raise AssertionError(
            f"{what}: max abs error {worst:.3e} > {rel:.1e} x scale {scale:.3e} "
            f"(at {idx}: got {actual[idx].item():.8g}, expected {expected[idx].item():.8g})"
        )


def assert_at_most_twice_pytorchs_own(ours, own, truth, floor: float, what: str = "") -> None:
    """``max|ours - truth| <= 2 max|own - truth| + floor max|truth|``.

    ``own`` is PyTorch's own result in the same dtype (the naive backend, same inputs, same device)
    and ``truth`` the float64 reference of those rounded inputs: in fp16/bf16 (and for GPU matmuls)
    no fixed tolerance fits every loss, so the bound is what PyTorch itself achieves, with a factor 2
    for a different summation order and a floor (relative to the result's scale) so that a draw on
    which PyTorch happens to be almost exact does not fail on rounding alone.
    """
    our_err, own_err = max_error(ours, truth), max_error(own, truth)
    scale = truth.detach().abs().max().item()
    assert our_err <= 2 * own_err + floor * scale, (
        f"{what}: error {our_err:.3e} > 2 x PyTorch's own {own_err:.3e} + {floor:.0e} x scale {scale:.3e}")


# ---------------------------------------------------------------------------------------------
# one loss configuration against float64
# ---------------------------------------------------------------------------------------------


def _weighted_loss_and_grads(case, tensors, backend, weights, context):
    with context():
        out = case.ours(tensors, backend=backend, reduction="none")
        return out, grads((out.double() * weights.to(out.device)).sum(), tensors)


def check_against_float64(case, tensors, backend, *, rel=None, own_floors=None, context=contextlib.nullcontext,
                          what=""):
    """The per-anchor loss of ``case`` on ``tensors`` with ``backend``, and every input's gradient of a
    randomly weighted sum of it (so each anchor's gradient counts, not only their sum), against the
    float64 reference of the same values.

    ``rel``: :func:`assert_close_rel` at that bound. ``own_floors = (loss floor, gradient floor)``:
    :func:`assert_at_most_twice_pytorchs_own`, PyTorch's own being the naive backend on fresh copies
    of the same inputs. Either or both. Always: the loss comes back in float32 (the accumulation
    dtype of fp32/fp16/bf16 inputs), every gradient in its input's dtype. ``context`` is entered
    around the backend's run (tile sizes, a pinned config)."""
    assert rel is not None or own_floors is not None
    ref_tensors = as_reference(tensors)
    expected = case.reference(ref_tensors)
    weights = torch.rand(expected.shape, dtype=torch.float64)
    ref_grads = grads((expected * weights).sum(), ref_tensors)
    ours, our_grads = _weighted_loss_and_grads(case, tensors, backend, weights, context)
    assert ours.dtype == torch.float32, f"{what}: loss in {ours.dtype}"
    leaves = [t for t in tensors if t.requires_grad]
    assert len(our_grads) == len(ref_grads) == len(leaves) > 0
    for input_name, g, t in zip(case.names, our_grads, leaves):
        assert g.dtype == t.dtype, f"{what}: d/d{input_name} in {g.dtype}, input in {t.dtype}"
    results = [("per-anchor loss", ours, expected)]
    results += [(f"d/d{n}", g, r) for n, g, r in zip(case.names, our_grads, ref_grads)]
    if rel is not None:
        for part, actual, truth in results:
            assert_close_rel(actual.cpu(), truth, rel, f"{what} {part}")
    if own_floors is not None:
        own, own_grads = _weighted_loss_and_grads(case, fresh(tensors), "naive", weights, contextlib.nullcontext)
        owns = [own, *own_grads]
        for i, ((part, actual, truth), mine) in enumerate(zip(results, owns)):
            assert_at_most_twice_pytorchs_own(actual, mine, truth, own_floors[0 if i == 0 else 1], f"{what} {part}")


# ---------------------------------------------------------------------------------------------
# backends that may be missing
# ---------------------------------------------------------------------------------------------


def required(variable: str) -> bool:
    """``CONTRASTIVE_OPS_REQUIRE_TRITON=1`` / ``CONTRASTIVE_OPS_REQUIRE_CUDA_EXT=1`` (set by CI): a
    backend that cannot run is then a failure, not a skip."""
    return os.environ.get(variable) == "1"


def triton_status():
    """``(available, why)`` of the triton backend on :data:`DEVICE` (the interpreter on a CPU)."""
    import contrastive_ops as co

    return co.backend_status("triton", DEVICE)


def skip_without_triton():
    """Skips where the triton backend cannot run, fails instead under CONTRASTIVE_OPS_REQUIRE_TRITON=1."""
    available, why = triton_status()
    if not available:
        if required("CONTRASTIVE_OPS_REQUIRE_TRITON"):
            pytest.fail(f"CONTRASTIVE_OPS_REQUIRE_TRITON=1 but the triton backend cannot run: {why}")
        pytest.skip(f"triton backend: {why}")


def cuda_extension_expected() -> bool:
    """Whether the CUDA extension's CPU path is to be tested: it is built, or
    CONTRASTIVE_OPS_REQUIRE_CUDA_EXT=1 (then a missing one fails where it is loaded)."""
    from contrastive_ops import _ext

    return _ext.prebuilt() or required("CONTRASTIVE_OPS_REQUIRE_CUDA_EXT")


def route_cuda_to_cpu(monkeypatch):
    """``backend="cuda"`` routed to the extension's CPU implementation (the GPU kernels' epilogue
    functions in plain loops) for the losses of contrastive_ops; returns the backend module."""
    from contrastive_ops import backends
    from contrastive_ops.backends import cuda

    real = backends.compute_fn

    def compute_fn(name):
        if name != "cuda":
            return real(name)
        return lambda *args, **kwargs: cuda.compute_terms(*args, allow_cpu=True, **kwargs)

    # backends.compute_terms (the losses' one way down) looks both up in its module
    monkeypatch.setattr(backends, "resolve", lambda backend, device: backend)
    monkeypatch.setattr(backends, "compute_fn", compute_fn)
    return cuda


def skip_without_gpu_backend(backend: str):
    """Skips without a CUDA GPU, or where ``backend`` cannot run on it."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    import contrastive_ops as co

    available, why = co.backend_status(backend, torch.device("cuda"))
    if not available:
        pytest.skip(f"{backend} backend on the GPU: {why}")
