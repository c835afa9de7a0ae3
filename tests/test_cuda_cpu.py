"""The cuda backend's arithmetic on a CPU: the extension's operators run on CPU tensors with the very
epilogue functions its GPU kernels call (csrc/epilogue.h; plain loops instead of warps, fp32
products instead of cuBLAS), through the backend's own Python (autograd, the Ring band first, the
chunk shape). Every loss and every input's gradient against float64 in chunks much smaller than the
shapes (8 × 9 cosines, and 8 × 8), so that every merge of partial states runs (in one chunk:
test_against_float64.py); the guide role directly at the core's level on every role it changes.
"""
import pytest
import torch
from cases import CASES
from helpers import (
    FP32_REL,
    assert_close_rel,
    check_against_float64,
    cuda_extension_expected,
    make_inputs,
    route_cuda_to_cpu,
)

import contrastive_ops as co
from contrastive_ops.core import RoleSpec

# 8 × 9 fp32 cosines per chunk at the tests' shapes (N = 37): partial chunks both ways
SMALL_CHUNK_BYTES = str(4 * 72)
# 8 × 8: rows of whole quads (the epilogues' plain-quad paths), quads cut by the key/extra boundary
QUAD_CHUNK_BYTES = str(4 * 64)
CHUNK_BYTES = {"small": SMALL_CHUNK_BYTES, "quads": QUAD_CHUNK_BYTES}

pytestmark = pytest.mark.skipif(not cuda_extension_expected(), reason="the CUDA extension is not built here")


@pytest.fixture
def cuda_on_cpu(monkeypatch):
    """backend="cuda" routed to the extension's CPU implementation for the losses of contrastive_ops."""
    return route_cuda_to_cpu(monkeypatch)


@pytest.mark.parametrize("chunks", ["small", "quads"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_every_loss_and_gradient_in_chunks(cuda_on_cpu, name, chunks, seed, monkeypatch):
    """As test_against_float64.py's cuda-cpu row, the cosines in many partial chunks."""
    monkeypatch.setenv("CONTRASTIVE_OPS_DS_CHUNK_BYTES", CHUNK_BYTES[chunks])
    case = CASES[name]
    check_against_float64(case, make_inputs(case, torch.float32), "cuda", rel=FP32_REL, what=f"{name}/{chunks}")


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
                                                      None, None, None, True, True, 0.4, 0.2, rows, cols)
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


G_N, G_M, G_R, G_D, G_G = 37, 37, 23, 40, 6


def _guided_problem(kind: str):
    """Inputs and RoleSpec keywords for a guide on the role ``kind``: integer guide vectors (their
    products are exact in fp32 and float64 alike) and half-integer limits (no pair sits on a tie)."""
    q, k, e = torch.randn(G_N, G_D), torch.randn(G_M, G_D), torch.randn(G_R, G_D)
    labels = torch.randint(0, 5, (G_N,))
    roles = {"pos_index": torch.arange(G_N)}
    if kind == "columns":
        roles.update(column_terms=True)
    elif kind == "sigmoid":
        roles.update(pairwise_sigmoid=True)
    elif kind == "labels":  # false-negative masking beside the guide's
        roles.update(row_labels=labels, col_labels=labels)
    elif kind == "shared_labels_columns":  # SupCon-like: keys are the queries, labels give the positives
        k = q
        roles = {"self_index": torch.arange(G_N), "row_labels": labels, "col_labels": labels, "column_terms": True}
    elif kind == "hard":
        roles.update(hard_beta=0.5)
    elif kind == "ring":
        roles.update(ring=(0.5, 0.2))
    m_total = k.shape[0] + G_R
    guide = {"guide_rows": torch.randint(-2, 3, (G_N, G_G)).float(),
             "guide_cols": torch.randint(-2, 3, (m_total, G_G)).float(),
             "guide_max": torch.randint(-3, 4, (G_N,)).float() + 0.5}
    return q, k, e, {**roles, **guide}


def _leaves(q, k, e, scale, bias):
    return [t for t in (q, None if k is q else k, e, scale, bias) if t is not None]


def _weighted(terms, weights):
    return sum((getattr(terms, name).double() * w).sum() for name, w in weights.items())


@pytest.mark.parametrize("chunk_bytes", [None, SMALL_CHUNK_BYTES])
@pytest.mark.parametrize("kind", ["columns", "sigmoid", "labels", "shared_labels_columns", "hard", "ring"])
def test_the_guide_role_against_the_chunked_backend(cuda_on_cpu, kind, chunk_bytes, seed, monkeypatch):
    """Candidates whose guide similarity exceeds the row's limit are dropped in every term (rows,
    columns, the sigmoid's valid pairs, the Ring's counts and band) and in every backward; positives
    are kept. Against the chunked backend in float64, or in fp32 on tiles of the chunks' shape for the
    Ring (a discontinuous band, decided alike only on bit-identical logits)."""
    from contrastive_ops.kernels.config import cosine_chunk_shape

    from contrastive_ops.backends import chunked

    if chunk_bytes is not None:
        monkeypatch.setenv("CONTRASTIVE_OPS_DS_CHUNK_BYTES", chunk_bytes)
    q, k, e, roles = _guided_problem(kind)
    spec = RoleSpec(**roles)
    bias = torch.tensor(-3.0) if spec.pairwise_sigmoid else None

    def inputs(dtype):
        qq = q.to(dtype).requires_grad_(True)
        kk = qq if k is q else k.to(dtype).requires_grad_(True)
        s = torch.tensor(7.0, dtype=dtype, requires_grad=True)
        b = None if bias is None else bias.to(dtype).requires_grad_(True)
        return qq, kk, e.to(dtype).requires_grad_(True), s, b

    ours_in = inputs(torch.float32)
    ours = cuda_on_cpu.compute_terms(*ours_in[:4], spec, bias=ours_in[4], allow_cpu=True)
    if spec.ring is not None:
        theirs_in, theirs_spec = inputs(torch.float32), spec
        rows, cols = cosine_chunk_shape(G_N, k.shape[0] + G_R)
        with chunked.block_size(rows, cols):
            theirs = chunked.compute_terms(*theirs_in[:4], theirs_spec, bias=theirs_in[4])
    else:
        theirs_in = inputs(torch.float64)
        theirs_spec = RoleSpec(**{n: (v.double() if n.startswith("guide") else v) for n, v in roles.items()})
        theirs = chunked.compute_terms(*theirs_in[:4], theirs_spec, bias=theirs_in[4])

    plain = chunked.compute_terms(q, k, e, 7.0, RoleSpec(**{n: v for n, v in roles.items()
                                                          if not n.startswith("guide")}))
    assert (theirs.row_den_count < plain.row_den_count).any(), "the guide excludes no candidate"
    assert torch.equal(theirs.row_pos_count, plain.row_pos_count), "the guide must keep every positive"
    weights = {}
    for name in ours._fields:
        a, b = getattr(ours, name), getattr(theirs, name)
        assert (a is None) == (b is None), name
        if a is None:
            continue
        if name.endswith("_count"):
            assert torch.equal(a, b), f"{kind}: {name}"
        else:
            assert a.dtype == torch.float32
            assert_close_rel(a, b, FP32_REL, f"{kind}: {name}")
            weights[name] = torch.rand(a.shape, dtype=torch.float64)
    ours_grads = torch.autograd.grad(_weighted(ours, weights), _leaves(*ours_in))
    theirs_grads = torch.autograd.grad(_weighted(theirs, weights), _leaves(*theirs_in))
    for name, a, b in zip(("query", "keys", "extra", "scale", "bias"), ours_grads, theirs_grads):
        assert_close_rel(a, b, FP32_REL, f"{kind}: d/d{name}")


def test_the_guided_ring_band_equals_the_chunked_backends_on_the_same_logits(cuda_on_cpu, seed, monkeypatch):
    from contrastive_ops.kernels.config import cosine_chunk_shape

    from contrastive_ops.backends import chunked

    monkeypatch.setenv("CONTRASTIVE_OPS_DS_CHUNK_BYTES", SMALL_CHUNK_BYTES)
    q, k, e, roles = _guided_problem("ring")
    spec = RoleSpec(**roles)
    rows, cols = cosine_chunk_shape(G_N, G_M + G_R)
    ours = torch.ops.contrastive_ops_cuda.ring_band(q, k, e, torch.tensor(14.0), spec.pos_index, None, None, None,
                                                      spec.guide_rows, spec.guide_cols, spec.guide_max, True, True,
                                                      0.5, 0.2, rows, cols)
    with chunked.block_size(rows, cols):
        theirs = chunked.ring_band(q, k, e, 14.0, spec, (rows, cols))
        unguided = chunked.ring_band(q, k, e, 14.0, RoleSpec(pos_index=spec.pos_index, ring=spec.ring), (rows, cols))
    assert torch.equal(ours[0], theirs[0]) and torch.equal(ours[1], theirs[1])
    assert not torch.equal(theirs[0], unguided[0]), "the guide changes no band"


@pytest.mark.parametrize("sigmoid", [False, True], ids=["softmax", "pair_forward"])
def test_double_backward_raises_a_clear_error(cuda_on_cpu, sigmoid):
    """The extension's backwards are not differentiable: a second derivative raises (it was silently
    first-order); first derivatives with create_graph=True still work."""
    torch.manual_seed(0)
    q, k = torch.randn(6, 4, requires_grad=True), torch.randn(6, 4, requires_grad=True)
    t = torch.tensor(3.0, requires_grad=True)
    if sigmoid:
        spec = RoleSpec(pos_index=torch.arange(6), pairwise_sigmoid=True, normalize=False, uniform_pair_grad=True)
        terms = cuda_on_cpu.compute_terms(q, k, None, t, spec, bias=torch.tensor(-1.0), allow_cpu=True)
        loss = terms.row_pair_loss.sum()
    else:
        spec = RoleSpec(pos_index=torch.arange(6))
        terms = cuda_on_cpu.compute_terms(q, k, None, t, spec, allow_cpu=True)
        loss = (terms.row_lse - terms.row_pos).mean()
    g_q, g_t = torch.autograd.grad(loss, (q, t), create_graph=True)
    plain = torch.autograd.grad(loss, (q, t), retain_graph=True)
    assert torch.equal(g_q.detach(), plain[0]) and torch.equal(g_t.detach(), plain[1])
    with pytest.raises(RuntimeError, match="backend='cuda' computes first derivatives only"):
        torch.autograd.grad(g_t, t, retain_graph=True)
    with pytest.raises(RuntimeError, match="backend='cuda' computes first derivatives only"):
        torch.autograd.grad(g_q.sum(), q)
