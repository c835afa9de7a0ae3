"""The triton backend beyond test_against_float64.py (every loss in fp32 and fp16 there): other tile
configs, the dS chunk route and the forward's row products against float64, reductions, ties,
determinism, memory, the custom ops' registration.

On a CPU machine these run the kernels under ``TRITON_INTERPRET=1`` (set by conftest.py): small
shapes, fp32 and fp16 only (bf16 ``tl.dot`` is wrong in the interpreter; bf16 runs on a GPU, in
test_against_float64.py). Shapes are no multiple of the tiles (N=37, R=23, D=40 against 16-wide
tiles); configs are pinned so that both the register and the sliced-D accumulation paths, several
programs per column partial and both radix widths of the Ring selection run.
"""
import pytest
import torch
from cases import CASES, TEMPERATURE_LOSSES, temperature_inputs, temperature_reference
from helpers import (
    DEVICE,
    FP32_REL,
    assert_at_most_twice_pytorchs_own,
    assert_close_rel,
    check_against_float64,
    fresh,
    grads,
    make_inputs,
    required,
    triton_status,
)

import contrastive_ops as co
from contrastive_ops.core import RoleSpec

_AVAILABLE, _WHY = triton_status()
if not _AVAILABLE and required("CONTRASTIVE_OPS_REQUIRE_TRITON"):
    raise RuntimeError(f"CONTRASTIVE_OPS_REQUIRE_TRITON=1 but the triton backend cannot run: {_WHY}")
pytestmark = [pytest.mark.interpreter, pytest.mark.skipif(not _AVAILABLE, reason=f"triton backend: {_WHY}")]

if _AVAILABLE:
    from contrastive_ops.kernels.config import TileConfig, pin_config


def _check_against_reference(name):
    """fp32 loss and every gradient within FP32_REL of float64 (as test_against_float64.py), under
    whatever config or route the caller pinned."""
    case = CASES[name]
    check_against_float64(case, make_inputs(case, torch.float32, DEVICE), "triton", rel=FP32_REL, what=name)


@pytest.mark.parametrize("config", [
    pytest.param((16, 16, 64, 1, 1, 4), id="one-d-block-radix4"),
    pytest.param((32, 16, 16, 1, 1, 1), id="sliced-d-radix1"),
    pytest.param((16, 32, 32, 1, 1, 8), id="wide-columns-radix8"),
])
@pytest.mark.parametrize("name", ["info_nce_symmetric_queue", "clip_normalized", "supcon_many_classes", "ring",
                                  "ring_queue_only"])
def test_other_tile_configs(name, config, seed):
    if name.startswith("ring") and config[-1] == 8 and DEVICE.type == "cpu":
        pytest.skip("8-bit radix passes are too slow for the interpreter (255 thresholds per pass)")
    with pin_config(TileConfig(*config)):
        _check_against_reference(name)


@pytest.mark.parametrize("name", ["info_nce_symmetric_queue", "clip_normalized", "supcon_many_classes", "ring",
                                  "siglip"])
def test_pipelined_tiles_give_the_same_bits(name, seed, monkeypatch):
    """Tiles whose product is issued one tile ahead (``kernels.config.pipelined``: D within one
    ``BLOCK_D``) against the same config without: the same loss and gradients, bit for bit."""
    case = CASES[name]
    inputs = make_inputs(case, torch.float32, DEVICE)
    out = []
    for switch in ("1", "0"):
        monkeypatch.setenv("CONTRASTIVE_OPS_TRITON_PIPELINE", switch)
        with pin_config(TileConfig(16, 16, 64, 1, 1, 4)):  # D = 40 within one BLOCK_D: pipelined with "1"
            leaves = fresh(inputs)
            loss = case.ours(leaves, backend="triton")
            out.append((loss, grads(loss, leaves)))
    assert torch.equal(out[0][0], out[1][0]), name
    for mine, other in zip(out[0][1], out[1][1]):
        assert torch.equal(mine, other), name


@pytest.mark.parametrize("value", ["2", "yes", " 1"])
def test_a_bad_pipeline_switch_is_named(value, seed, monkeypatch):
    monkeypatch.setenv("CONTRASTIVE_OPS_TRITON_PIPELINE", value)
    case = CASES["info_nce_symmetric_queue"]
    inputs = make_inputs(case, torch.float32, DEVICE)
    before = [x.detach().clone() for x in inputs]
    with pytest.raises(ValueError, match=f"CONTRASTIVE_OPS_TRITON_PIPELINE must be '0' or '1', got {value!r}"):
        case.ours(inputs, backend="triton")
    assert all(torch.equal(x.detach(), y) for x, y in zip(inputs, before))


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("name", ["info_nce_queue", "supcon_few_classes", "clip_tensor_scale"])
def test_reductions(name, reduction, seed):
    case = CASES[name]
    tensors = make_inputs(case, torch.float32, DEVICE)
    ours = case.ours(tensors, backend="triton", reduction=reduction)
    naive = case.ours(tensors, backend="naive", reduction=reduction)
    assert ours.dim() == 0
    assert_close_rel(ours.cpu(), naive.double().cpu(), FP32_REL, f"{name}/{reduction}")
    for g, g_naive in zip(grads(ours, tensors), grads(naive, tensors)):
        assert_close_rel(g.cpu(), g_naive.double().cpu(), FP32_REL, f"{name}/{reduction} gradient")


def test_partial_requires_grad(seed):
    """Only the key needs a gradient (a frozen query encoder); the queue needs none."""
    q, k, e = (torch.randn(n, 24, device=DEVICE) for n in (20, 20, 9))
    k.requires_grad_(True)
    loss = co.info_nce(q, k, e, symmetric=True, backend="triton")
    (g,) = torch.autograd.grad(loss, [k])
    k_ref = k.detach().double().requires_grad_(True)
    (g_ref,) = torch.autograd.grad(co.info_nce(q.double(), k_ref, e.double(), symmetric=True, backend="naive"), [k_ref])
    assert_close_rel(g.cpu(), g_ref.cpu(), FP32_REL, "d/dkey")


def test_ties_at_the_ring_boundaries_are_kept(seed):
    """Keys repeated many times give exactly tied logits; the band keeps every tied candidate.

    The ties must hold in fp32 whatever order the tile products are summed in (the interpreter's
    BLAS may round copies of one vector differently by position), and the float64 reference must
    rank the same values: small-integer features without normalization and a power-of-two scale make
    every logit an exact integer multiple of 2 in both precisions. Each row's 48 candidates take at
    most 5 distinct values, so every band boundary falls inside a group of ties."""
    distinct = torch.randint(-2, 3, (5, 24)).float()
    q = torch.randint(-2, 3, (19, 24)).float().to(DEVICE).requires_grad_(True)
    k = distinct[torch.arange(19) % 5].to(DEVICE).requires_grad_(True)
    e = distinct[torch.arange(30) % 5].to(DEVICE).requires_grad_(True)
    for outer, inner in [(0.5, 0.3), (0.2, 0.0), (0.9, 0.5)]:
        kwargs = {"temperature": 0.5, "outer": outer, "inner": inner, "normalize": False, "reduction": "none"}
        ours = co.ring_info_nce(q, k, e, backend="triton", **kwargs)
        ref = co.ring_info_nce(q.double(), k.double(), e.double(), backend="naive", **kwargs)
        assert_close_rel(ours.cpu(), ref.cpu(), FP32_REL, f"ring({outer}, {inner}) with ties")


def test_zero_rows_and_a_single_pair(seed):
    """A zero feature row (normalized with eps as F.normalize) and N = 1 give finite, exact results."""
    q, k = torch.randn(5, 20, device=DEVICE), torch.randn(5, 20, device=DEVICE)
    q[2] = 0.0
    for a, b in [(q, k), (q[:1], k[:1])]:
        a, b = a.clone().requires_grad_(True), b.clone().requires_grad_(True)
        ours = co.nt_xent(a, b, backend="triton", reduction="none")
        ref_a, ref_b = (t.detach().double().requires_grad_(True) for t in (a, b))
        ref = co.nt_xent(ref_a, ref_b, backend="naive", reduction="none")
        assert_close_rel(ours.cpu(), ref.cpu(), FP32_REL, "loss")
        for g, g_ref in zip(torch.autograd.grad(ours.sum(), [a, b]), torch.autograd.grad(ref.sum(), [ref_a, ref_b])):
            assert_close_rel(g.cpu(), g_ref.cpu(), FP32_REL, "gradient")


@pytest.mark.parametrize("temperature", [pytest.param(1 / 40, id="scale-40-bounded"),
                                         pytest.param(1 / 40.5, id="scale-40.5-running-max"),
                                         pytest.param(0.1, id="scale-10-bounded")])
@pytest.mark.parametrize("symmetric", [False, True], ids=["rows", "symmetric"])
def test_bounded_logits_shift_by_the_scale(temperature, symmetric, seed):
    """Unit vectors with ``|scale| <= 40`` (``tiles.logits_bounded``): the forward shifts every softmax
    by ``|scale|`` instead of a running max. Rows whose logits all lie near ``-|scale|`` (each query
    opposite every key) keep every ``e^(S - |scale|) >= e^(-80)`` a normal fp32 number; just above the
    bound the running max takes over. Loss and every gradient against float64, rows and columns."""
    key = torch.randn(37, 40, device=DEVICE)
    query = torch.randn(37, 40, device=DEVICE)
    query[:6] = -key[:6].sum(dim=0) + 1e-3 * query[:6]  # opposite every key: logits near -|scale|
    extra = torch.randn(41, 40, device=DEVICE)  # 78 columns: at least tiles.BOUNDED_MIN_TILES tiles of 16
    tensors = [t.requires_grad_(True) for t in (query, key, extra)]
    with pin_config(TileConfig(16, 16, 64, 1, 1)):  # plain tiles (no positive in them) away from the diagonal
        ours = co.info_nce(*tensors, temperature=temperature, symmetric=symmetric, reduction="none", backend="triton")
        ours_grads = torch.autograd.grad((ours * torch.linspace(0.5, 1.5, ours.numel(), device=DEVICE)).sum(), tensors)
    ref_tensors = [t.detach().double().requires_grad_(True) for t in tensors]
    ref = co.info_nce(*ref_tensors, temperature=temperature, symmetric=symmetric, reduction="none", backend="naive")
    ref_grads = torch.autograd.grad((ref * torch.linspace(0.5, 1.5, ref.numel(), dtype=torch.float64,
                                                         device=DEVICE)).sum(), ref_tensors)
    assert_close_rel(ours.cpu(), ref.cpu(), FP32_REL, "loss")
    for name, g, g_ref in zip(("query", "key", "extra"), ours_grads, ref_grads):
        assert_close_rel(g.cpu(), g_ref.cpu(), FP32_REL, f"d/d{name}")


@pytest.mark.parametrize("config", [pytest.param((16, 16, 16, 1, 1, 2), id="chunks"),
                                    pytest.param((16, 16, 64, 1, 1, 2), id="registers")])
def test_backward_is_bitwise_deterministic(config, seed, monkeypatch):
    monkeypatch.setenv("CONTRASTIVE_OPS_DS_CHUNK_BYTES", str(16 * 32 * 4))  # several chunks each way
    q, k, e = (torch.randn(n, 40, device=DEVICE, requires_grad=True) for n in (37, 37, 23))
    with pin_config(TileConfig(*config)):
        runs = [torch.autograd.grad(co.info_nce(q, k, e, symmetric=True, backend="triton"), [q, k, e])
                for _ in range(2)]
    for a, b in zip(*runs):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name", sorted(CASES))
def test_chunk_route_with_partial_chunks(name, seed, monkeypatch):
    """D = 40 > BLOCK_D = 16: dS written chunk by chunk and multiplied by torch.mm. 16 × 32 chunks of
    37 rows × 60 columns: three row chunks (the last of 5 rows), two column chunks (the last of 28)."""
    from contrastive_ops.kernels import contrastive_bwd

    monkeypatch.setenv("CONTRASTIVE_OPS_DS_CHUNK_BYTES", str(16 * 32 * 4))
    assert contrastive_bwd.chunk_shape(37, 60, 4, TileConfig(16, 16, 16)) == (16, 32)
    assert not contrastive_bwd.uses_registers(TileConfig(16, 16, 16), 40)
    _check_against_reference(name)


ROW_PRODUCT_CASES = ["info_nce", "info_nce_labels", "info_nce_query_key_labels", "info_nce_queue",
                     "info_nce_queue_only", "info_nce_unnormalized", "nt_xent", "dcl", "dcl_weighted"]


class _NoLaunch:
    """Stands in for a kernel that must not run."""

    def __getitem__(self, grid):
        raise AssertionError("the backward ran a dQ pass although the forward computed the row products")


@pytest.mark.parametrize("config", [pytest.param((16, 16, 64, 1, 1, 2), id="registers"),
                                    pytest.param((16, 16, 16, 1, 1, 2), id="chunks")])
@pytest.mark.parametrize("name", ROW_PRODUCT_CASES)
def test_row_products_of_the_forward_replace_the_dq_pass(name, config, seed, monkeypatch):
    """Row-only losses with one positive per row: the forward's online-softmax products give dQ̂ and
    the rows' share of the scale's gradient, the backward runs no dQ pass (the dC pass on registers, or
    only the dĈ products of the dS chunks), and every gradient still equals float64."""
    from contrastive_ops.kernels import contrastive_bwd

    monkeypatch.setattr(contrastive_bwd, "_contrastive_bwd_dq_kernel", _NoLaunch())
    monkeypatch.setenv("CONTRASTIVE_OPS_DS_CHUNK_BYTES", str(16 * 32 * 4))
    with pin_config(TileConfig(*config)):
        _check_against_reference(name)


@pytest.mark.parametrize("name", ["info_nce_queue", "nt_xent", "dcl", "info_nce_query_key_labels"])
def test_row_products_and_the_dq_pass_agree(name, seed, monkeypatch):
    """The same gradients (fp32 rounding apart) with the forward's row products and with the dQ pass."""
    from contrastive_ops.kernels import config as tile_config

    case = CASES[name]
    tensors = make_inputs(case, torch.float32, DEVICE)
    routes = []
    for supported in (tile_config.row_grad_supported, lambda flags, d: False):
        monkeypatch.setattr(tile_config, "row_grad_supported", supported)
        with pin_config(TileConfig(16, 16, 64, 1, 1, 2)):
            loss = case.ours(tensors, backend="triton", reduction="none")
            routes.append([loss, *grads((loss * torch.linspace(0.5, 1.5, loss.numel())).sum(), tensors)])
    for a, b in zip(*routes):
        assert_close_rel(a, b, FP32_REL, name)


def test_row_products_only_when_a_gradient_is_needed(seed):
    """No rows' gradient asked for (no grad mode, or only the keys require one): the forward returns no
    row products, and the keys' gradient is still right."""
    q, k = (torch.randn(21, 24, device=DEVICE) for _ in range(2))
    ops = torch.ops.contrastive_ops
    args = (q, k, None, torch.tensor(5.0), None, None, None, *RoleSpec(pos_index=torch.arange(21)).flat(),
            TileConfig(16, 16, 32, 1, 1, 2).as_list())
    assert ops.tiled_forward(*args, True)[10].shape == (21, 24)
    assert ops.tiled_forward(*args, False)[10].numel() == 0
    key = k.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(co.info_nce(q, key, backend="triton"), [key])
    ref_key = k.double().requires_grad_(True)
    (g_ref,) = torch.autograd.grad(co.info_nce(q.double(), ref_key, backend="naive"), [ref_key])
    assert_close_rel(g, g_ref, FP32_REL, "d key")


@pytest.mark.parametrize("d", [pytest.param(16, id="registers"), pytest.param(64, id="chunks")])
@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("norm", [pytest.param(1.0, id="unit-scale"), pytest.param(1e-2, id="small-norms")])
def test_fp16_gradients_do_not_underflow(d, symmetric, norm, seed):
    """fp16 dS of a large batch is ``p/N``-small; here a tiny upstream gradient (a ``sum`` times
    1e-4) makes it so at N = 64. Stored unscaled, most of it rounds to fp16 subnormals or zero; the
    backward scales dS by a power of two before the cast, so dQ's error stays within twice
    PyTorch's own fp16 error (the naive backend). Features of small norm (inverse norms of ~10)
    must not make the scaled dS overflow either."""
    q, k = ((torch.randn(64, d, device=DEVICE) * norm).half() for _ in range(2))
    ref_q, ref_k = (t.detach().cpu().double().requires_grad_(True) for t in (q, k))
    (g_ref_q, g_ref_k) = torch.autograd.grad(
        co.info_nce(ref_q, ref_k, symmetric=symmetric, backend="naive", reduction="sum") * 1e-4, [ref_q, ref_k])
    results = {}
    for backend in ("naive", "triton"):
        a, b = q.clone().requires_grad_(True), k.clone().requires_grad_(True)
        loss = co.info_nce(a, b, symmetric=symmetric, backend=backend, reduction="sum") * 1e-4
        results[backend] = torch.autograd.grad(loss, [a, b])
    for what, ours, own, truth in zip(("d query", "d key"), results["triton"], results["naive"], (g_ref_q, g_ref_k)):
        assert_at_most_twice_pytorchs_own(ours, own, truth, 0.0, f"triton fp16 {what}")


def test_inputs_are_not_modified(seed):
    q, k = torch.randn(21, 40, device=DEVICE), torch.randn(21, 40, device=DEVICE)[:, ::2]  # k: strided rows
    before = (q.clone(), k.clone())
    co.clip_loss(q[:, :20], k, 10.0, normalize=True, backend="triton")
    co.info_nce(q[:, 20:], k, backend="triton")
    co.nt_xent(q[:, :20], k, backend="triton")
    assert torch.equal(q, before[0]) and torch.equal(k, before[1])


def test_float64_is_refused_with_the_fix(seed):
    x = torch.randn(4, 8, dtype=torch.float64, device=DEVICE)
    with pytest.raises(TypeError, match="backend='triton' takes float32, float16 or bfloat16.*backend='chunked'"):
        co.info_nce(x, x.clone(), backend="triton")


@pytest.mark.skipif(DEVICE.type == "cuda", reason="the interpreter's refusal")
def test_bfloat16_is_refused_in_the_interpreter(seed):
    """Triton's interpreter computes bf16 dot products wrongly: the backend refuses them there."""
    x = torch.randn(6, 8, dtype=torch.bfloat16)
    with pytest.raises(co.BackendUnavailableError, match="cannot compute bfloat16 in Triton's interpreter"):
        co.info_nce(x, x.clone(), backend="triton")


def test_no_tensor_grows_like_n_times_m(seed):
    """The launchers allocate O(N + M) vectors, O((N + M)·D) gradients and O(P·M) column
    partials, never anything N×M (the kernels themselves hold one tile at a time)."""
    from test_memory import LargestTensor

    n, d = 100, 4
    a, b, c = (torch.randn(n, d, device=DEVICE, requires_grad=True) for _ in range(3))
    with pin_config(TileConfig(32, 32, 16, 1, 1, 2)), LargestTensor() as probe:
        for loss in (co.info_nce(a, b, c, symmetric=True, backend="triton"),
                     co.supcon_loss(a, torch.arange(n, device=DEVICE) % 4, backend="triton"),
                     co.ring_info_nce(a, b, c, outer=0.5, backend="triton")):
            loss.backward()
    bound = max(2 * n * d, 2 * 2 * n)  # inputs (shared q/k are concatenated once), two column partials
    assert probe.largest <= bound, f"a tensor of {probe.largest} elements (N*M = {n * n})"


def test_the_chunk_route_holds_one_chunk(seed, monkeypatch):
    """D > BLOCK_D: besides O((N + M)·D) tensors, only one dS chunk (here 32 × 64) at a time."""
    from test_memory import LargestTensor

    monkeypatch.setenv("CONTRASTIVE_OPS_DS_CHUNK_BYTES", str(32 * 64 * 4))
    n, d = 100, 20
    a, b, c = (torch.randn(n, d, device=DEVICE, requires_grad=True) for _ in range(3))
    with pin_config(TileConfig(32, 32, 16, 1, 1, 2)), LargestTensor() as probe:
        for loss in (co.info_nce(a, b, c, symmetric=True, backend="triton"),
                     co.ring_info_nce(a, b, c, outer=0.5, backend="triton")):
            loss.backward()
    bound = max(2 * n * d, 2 * 2 * n, 32 * 64)
    assert probe.largest <= bound, f"a tensor of {probe.largest} elements (N*M = {n * 2 * n})"


@pytest.mark.long
def test_custom_ops_pass_torch_library_opcheck(seed):
    """Schemas, fake (meta) implementations and the autograd registration, checked by PyTorch."""
    q, k, e = (torch.randn(n, 20, device=DEVICE, requires_grad=True) for n in (18, 18, 7))
    scale = torch.tensor(10.0, device=DEVICE, requires_grad=True)
    pos = torch.arange(18, device=DEVICE)
    config = TileConfig(16, 16, 16, 1, 1, 2).as_list()
    ops = torch.ops.contrastive_ops
    detached = (q.detach(), k.detach(), e.detach(), scale.detach())
    band = ops.ring_band(*detached, *RoleSpec(pos_index=pos).flat(), 0.5, 0.2, config)
    torch.library.opcheck(ops.ring_band, (*detached, *RoleSpec(pos_index=pos).flat(), 0.5, 0.2, config))
    # integer guides, limits at half-integers: [rows, columns (keys then queue), limits]
    guide = (torch.randint(-2, 3, (18, 5), device=DEVICE).float(), torch.randint(-2, 3, (25, 5), device=DEVICE).float(),
             torch.randint(-3, 4, (18,), device=DEVICE).float() + 0.5)
    guided = {"guide_rows": guide[0], "guide_cols": guide[1], "guide_max": guide[2]}
    torch.library.opcheck(ops.ring_band, (*detached, *RoleSpec(pos_index=pos, **guided).flat(), 0.5, 0.2, config))
    bias = torch.tensor(-2.0, device=DEVICE, requires_grad=True)
    labels = torch.arange(18, device=DEVICE) % 4
    for args in [
        # symmetric with a queue and false-negative masking by labels
        (q, k, e, scale, None, None, None,
         *RoleSpec(pos_index=pos, row_labels=labels, col_labels=labels, column_terms=True).flat(), config, True),
        # rows only with a queue and label masking: the forward's row-gradient products
        (q, k, e, scale, None, None, None, *RoleSpec(pos_index=pos, row_labels=labels, col_labels=labels).flat(),
         config, True),
        # keys shared with the queries, decoupled, hard negatives
        (q, None, None, scale, None, None, None,
         *RoleSpec(pos_index=pos, self_index=pos, decoupled=True, normalize=False, hard_beta=0.5).flat(), config,
         False),
        # keys shared with the queries, decoupled (nt_xent-like rows): row-gradient products
        (q, None, None, scale, None, None, None,
         *RoleSpec(pos_index=pos, self_index=pos, decoupled=True, normalize=False).flat(), config, True),
        # a Ring band
        (q, k, e, scale, None, band[0], band[1], *RoleSpec(pos_index=pos).flat(), config, True),
        # pairwise sigmoid with a bias
        (q, k, None, scale, bias, None, None, *RoleSpec(pos_index=pos, normalize=False, pairwise_sigmoid=True).flat(),
         config, False),
        # a guide (GISTEmbed's role) with column terms and a queue
        (q, k, e, scale, None, None, None, *RoleSpec(pos_index=pos, column_terms=True, **guided).flat(), config,
         True),
    ]:
        torch.library.opcheck(ops.tiled_forward, args)
    # SigLIP's gradient formed in the forward (backends.triton.pair_route), normalized and not, with a queue
    for normalize, extra in [(True, None), (False, e)]:
        spec = RoleSpec(pos_index=pos, normalize=normalize, pairwise_sigmoid=True)
        torch.library.opcheck(ops.tiled_pair_forward, (q, k, extra, scale, bias, None, None, *spec.flat(), config))


def test_strided_labels_and_expanded_incoming_gradients(seed):
    """Vectors reach the kernels dense: labels given as a strided view, and the gradient of a plain
    ``.sum()`` of the core's terms (an expanded scalar, stride 0)."""
    from contrastive_ops.backends import chunked
    from contrastive_ops.backends import triton as triton_backend
    from contrastive_ops.core import RoleSpec

    x = torch.randn(23, 20, device=DEVICE, requires_grad=True)
    labels = (torch.arange(46, device=DEVICE) % 4)[::2]
    spec = RoleSpec(row_labels=labels, col_labels=labels, self_index=torch.arange(23, device=DEVICE), column_terms=True)
    grads = []
    for backend in (triton_backend, chunked):
        terms = backend.compute_terms(x, x, None, 5.0, spec)
        total = terms.row_lse.sum() + terms.row_pos.sum() + terms.col_lse.sum() - terms.col_pos.sum()
        grads.append(torch.autograd.grad(total, [x])[0])
        assert torch.equal(terms.row_pos_count.cpu(), (labels[:, None] == labels[None, :]).sum(1).cpu() - 1)
    assert_close_rel(grads[0].cpu(), grads[1].cpu(), FP32_REL, "d/dx")


@pytest.mark.parametrize("name", sorted(TEMPERATURE_LOSSES))
def test_a_tensor_temperature_gets_its_gradient(name, seed):
    tensors = temperature_inputs()
    expected, expected_grads, _ = temperature_reference(name, tensors, 0.1)
    ours_in = [x.detach().clone().to(DEVICE).requires_grad_(True) for x in tensors]
    t = torch.tensor(0.1, device=DEVICE, requires_grad=True)
    loss = TEMPERATURE_LOSSES[name](t, *ours_in, "triton")
    ours_grads = grads(loss, [t, *ours_in])
    assert_close_rel(loss.cpu(), expected, FP32_REL, f"{name} loss")
    for what, g, g_ref in zip(("temperature", "q", "k", "e"), ours_grads, expected_grads):
        assert_close_rel(g.cpu(), g_ref, FP32_REL, f"{name} d {what}")


def test_the_tuner_can_be_held_to_its_first_candidates(monkeypatch):
    """CONTRASTIVE_OPS_TRITON_CANDIDATES=k: only the first k candidates are tried; k = 1 takes the
    first without timing anything; a value that is no positive count is refused, naming the variable."""
    from contrastive_ops.kernels import config as cfg

    tried = []

    def run(c):
        tried.append(c)
        raise AssertionError("a single candidate is not timed")

    monkeypatch.setenv("CONTRASTIVE_OPS_TRITON_CANDIDATES", "1")
    assert cfg.tuned_config(("limit-test",), run) == cfg.GPU_CONFIGS[0] and tried == []
    assert cfg.tuned_config(("limit-test",), run, cfg.backward_candidates(128)) == cfg.backward_candidates(128)[0]
    monkeypatch.setenv("CONTRASTIVE_OPS_TRITON_CANDIDATES", "2")
    assert cfg.candidate_limit() == 2 and len(cfg.GPU_CONFIGS[:cfg.candidate_limit()]) == 2
    for bad in ("0", "-1", "two"):
        monkeypatch.setenv("CONTRASTIVE_OPS_TRITON_CANDIDATES", bad)
        with pytest.raises(ValueError, match="CONTRASTIVE_OPS_TRITON_CANDIDATES"):
            cfg.tuned_config(("limit-test",), run)
    monkeypatch.setenv("CONTRASTIVE_OPS_TRITON_CANDIDATES", "all")
    assert cfg.candidate_limit() is None
    monkeypatch.delenv("CONTRASTIVE_OPS_TRITON_CANDIDATES")
    assert cfg.candidate_limit() == cfg.DEFAULT_CANDIDATES


if _AVAILABLE:  # kernels that apply tiles.exp2_emulated to a vector and tiles.exp2_shared to a tile
    import triton
    import triton.language as tl
    from contrastive_ops.kernels.tiles import exp2_emulated, exp2_shared

    @triton.jit
    def _emulated_probe(X, Y, N: tl.constexpr):
        offs = tl.arange(0, N)
        tl.store(Y + offs, exp2_emulated(tl.load(X + offs)))

    @triton.jit
    def _shared_probe(X, Y, R: tl.constexpr, C: tl.constexpr):
        offs = tl.arange(0, R)[:, None] * C + tl.arange(0, C)[None, :]
        tl.store(Y + offs, exp2_shared(tl.load(X + offs)))


def test_emulated_exponential_matches_exp2(seed):
    """``tiles.exp2_emulated`` (2^x on the FP32 pipeline) within 2 fp32 ulps of 2^x over [-126, 1], 2^0
    exactly 1; ``tiles.exp2_shared`` splits a tile between it (the first eighth of the columns, arguments
    below -126 clamped) and ``ex2``: every column within the same bound, nothing below -126 turns into
    garbage."""
    x = torch.cat([torch.rand(4093, device=DEVICE) * -127.0 + 1.0,
                   torch.tensor([0.0, -126.0, 1.0], device=DEVICE)])
    y = torch.empty_like(x)
    _emulated_probe[(1,)](x, y, x.numel())
    exact = torch.exp2(x.double())
    assert ((y.double() - exact).abs() / exact).max().item() <= 2 * 2.0 ** -23
    assert y[-3].item() == 1.0
    tile = torch.rand(16, 64, device=DEVICE) * -120.0
    tile[:, :8] -= 40.0 * torch.rand(16, 8, device=DEVICE)  # some below -126 in the emulated columns
    out = torch.empty_like(tile)
    _shared_probe[(1,)](tile, out, 16, 64)
    exact = torch.exp2(tile.double())
    normal = tile >= -126.0
    rel = ((out.double() - exact).abs() / exact)[normal]
    assert rel.max().item() <= 2 * 2.0 ** -23
    assert (out[~normal] <= 2.0 ** -126).all() and (out[~normal] >= 0).all()
