"""Bad input gets a clear TypeError/ValueError naming the argument and value, before any work; odd
but valid input (expanded, huge or zero rows, half precision, learnable temperatures) gets the
promised values on every backend."""
import copy
import math
import subprocess
import sys

import pytest
import torch

import contrastive_ops as co
from contrastive_ops import nn as con
from contrastive_ops.backends import chunked

TRITON, TRITON_WHY = co.backend_status("triton", torch.device("cpu"))


def _cuda_cpu():
    """The extension's CPU operators (the cuda backend's arithmetic), or a skip where it is not built."""
    from contrastive_ops import _ext

    if not _ext.status()[0] and "CUDA tensors only" not in _ext.status()[1]:
        pytest.skip(f"CUDA extension: {_ext.status()[1]}")
    from contrastive_ops.backends import cuda

    return cuda

X = torch.randn(8, 4)
Y = torch.randn(8, 4)
LABELS = torch.arange(8) % 3


@pytest.mark.parametrize(
    "call,error,match",
    [
        (lambda: co.info_nce(X.numpy(), Y), TypeError, "query must be a torch.Tensor"),
        (lambda: co.info_nce(X.long(), Y.long()), TypeError, "query must have a floating dtype"),
        (lambda: co.info_nce(X[0], Y), ValueError, r"query must be 2-D .* got shape \(4,\)"),
        (lambda: co.info_nce(X[:0], Y[:0]), ValueError, "query is an empty batch"),
        (lambda: co.info_nce(X[:, :0], Y[:, :0]), ValueError, "query has no features"),
        (lambda: co.info_nce(X, Y[:, :3]), ValueError, "feature dims differ: query has 4 .* key has 3"),
        (lambda: co.info_nce(X, Y[:5]), ValueError, "batch sizes differ: query has 8 rows"),
        (lambda: co.info_nce(X, Y.double()), TypeError, "dtypes differ: query is torch.float32, key is torch.float64"),
        (lambda: co.info_nce(X, Y, torch.randn(3, 5)), ValueError, "feature dims differ: query has 4 .* negatives has 5"),
        (lambda: co.info_nce(X, Y, temperature=0), ValueError, "temperature must be finite and > 0, got 0"),
        (lambda: co.info_nce(X, Y, temperature=-0.1), ValueError, r"temperature .* got -0.1"),
        (lambda: co.info_nce(X, Y, temperature=math.nan), ValueError, "temperature must be finite"),
        (lambda: co.info_nce(X, Y, temperature=math.inf), ValueError, "temperature must be finite"),
        # finite, but 1/t (or the scale) would overflow fp32 inside the kernels
        (lambda: co.info_nce(X, Y, temperature=1e-40), ValueError, r"temperature must be at least 2.94e-39 .* got 1e-40"),
        (lambda: co.clip_loss(X, Y, 1e39), ValueError, r"logit_scale must be a finite fp32 number .* got 1e\+39"),
        (lambda: co.info_nce(X, Y, temperature="0.1"), TypeError,
         "temperature must be a positive real number or a one-element tensor, got '0.1'"),
        (lambda: co.info_nce(X, Y, temperature=torch.tensor([0.1, 0.2])), ValueError,
         r"temperature must hold one value, got shape \(2,\)"),
        (lambda: co.info_nce(X, Y, temperature=torch.tensor(1)), TypeError,
         "temperature must be a floating tensor, got dtype torch.int64"),
        (lambda: co.info_nce(X, Y, reduction="avg"), ValueError, r"reduction must be one of .* got 'avg'"),
        (lambda: co.info_nce(X, Y, backend="fast"), ValueError, r"backend must be one of .* got 'fast'"),
        (lambda: co.info_nce(X, Y, backend="cuda"), ValueError, "backend='cuda' cannot run here: "),
        (lambda: co.info_nce(X, Y, in_batch_negatives=False), ValueError, "in_batch_negatives=False needs negatives"),
        (lambda: co.info_nce(X, Y, torch.randn(3, 4), symmetric=True, in_batch_negatives=False), ValueError,
         "symmetric=True needs in_batch_negatives=True"),
        (lambda: co.info_nce(X, Y, symmetric=1), TypeError, "symmetric must be True or False, got 1"),
        (lambda: co.nt_xent(X, Y[:7]), ValueError, "batch sizes differ: z1 has 8 rows"),
        (lambda: co.dcl_loss(X, Y, weight_fn=3), TypeError, "weight_fn must be callable"),
        (lambda: co.dcl_loss(X, Y, weight_fn=lambda a, b: a), ValueError, r"weight_fn must return a tensor of shape \(8,\)"),
        (lambda: co.clip_loss(X, Y, 0.0), ValueError, "logit_scale must be finite and > 0, got 0.0"),
        (lambda: co.clip_loss(X, Y, torch.ones(2)), ValueError, r"logit_scale must hold one value, got shape \(2,\)"),
        (lambda: co.clip_loss(X, Y, torch.tensor(1)), TypeError, "logit_scale must be a floating tensor"),
        (lambda: co.clip_loss(X, Y, "10"), TypeError, "logit_scale must be a float or a 0-d tensor"),
        (lambda: co.supcon_loss(X, LABELS[:5]), ValueError, r"labels must have shape \(8,\) .* got \(5,\)"),
        (lambda: co.supcon_loss(X, LABELS.float()), TypeError, "labels must have an integer dtype, got torch.float32"),
        (lambda: co.supcon_loss(X, LABELS.tolist()), TypeError, "labels must be a torch.Tensor"),
        (lambda: co.ring_info_nce(X, Y, outer=1.5), ValueError, r"outer must be in \[0, 1\], got 1.5"),
        (lambda: co.ring_info_nce(X, Y, inner=-0.1), ValueError, r"inner must be in \[0, 1\], got -0.1"),
        (lambda: co.ring_info_nce(X, Y, outer=None), TypeError, "outer must be a number in"),
        (lambda: con.InfoNCELoss(temperature=0), ValueError, "temperature must be finite and > 0"),
        (lambda: con.RingInfoNCELoss(outer=2), ValueError, r"outer must be in \[0, 1\], got 2"),
        (lambda: con.ClipLoss(reduction="mean_batch"), ValueError, "reduction must be one of"),
        (lambda: con.NTXentLoss(backend="gpu"), ValueError, "backend must be one of"),
        (lambda: co.info_nce(X, Y, labels=LABELS.float()), TypeError, "labels must have an integer dtype"),
        (lambda: co.info_nce(X, Y, labels=LABELS[:5]), ValueError, r"labels must have shape \(8,\) .* got \(5,\)"),
        (lambda: co.info_nce(X, Y, labels=LABELS, query_labels=LABELS, key_labels=LABELS), ValueError,
         "give either labels or query_labels/key_labels, not both"),
        (lambda: co.info_nce(X, Y, query_labels=LABELS), ValueError,
         "key_labels is None: query_labels and key_labels must be given together"),
        (lambda: co.info_nce(X, Y, query_labels=LABELS, key_labels=LABELS[:3]), ValueError,
         r"key_labels must have shape \(8,\)"),
        (lambda: co.clip_loss(X, Y, 2.0, labels=LABELS.tolist()), TypeError, "labels must be a torch.Tensor"),
        (lambda: co.ring_info_nce(X, Y, key_labels=LABELS), ValueError, "query_labels is None"),
        (lambda: co.hard_negative_nce(X, Y, beta=-1), ValueError, "beta must be finite and >= 0, got -1"),
        (lambda: co.hard_negative_nce(X, Y, beta="1"), TypeError, "beta must be a real number >= 0, got '1'"),
        (lambda: co.hard_negative_nce(X, Y, tau_plus=1.0), ValueError, r"tau_plus must be in \[0, 1\), got 1.0"),
        (lambda: co.debiased_nce(X, Y, tau_plus=-0.1), ValueError, r"tau_plus must be in \[0, 1\), got -0.1"),
        (lambda: co.debiased_nce(X, Y, tau_plus=None), TypeError, "tau_plus must be a number in"),
        (lambda: co.hard_negative_nce(X, Y[:7]), ValueError, "batch sizes differ: z1 has 8 rows"),
        (lambda: co.hard_negative_nce(X, Y, temperature=0), ValueError, "temperature must be finite and > 0"),
        (lambda: co.siglip_loss(X, Y[:7], 10.0, -10.0), ValueError, "batch sizes differ: image_features has 8 rows"),
        (lambda: co.siglip_loss(X, Y, -1.0, -10.0), ValueError, "logit_scale must be finite and > 0, got -1.0"),
        (lambda: co.siglip_loss(X, Y, 10.0, "b"), TypeError, "logit_bias must be a float, a 0-d tensor or None"),
        (lambda: co.siglip_loss(X, Y, 10.0, torch.ones(2)), ValueError, r"logit_bias must hold one value, got shape"),
        (lambda: co.siglip_loss(X, Y, 10.0, math.nan), ValueError, "logit_bias must be finite, got nan"),
        (lambda: co.siglip_loss(X, Y, 10.0, torch.tensor(1)), TypeError, "logit_bias must be a floating tensor"),
        (lambda: con.HardNegativeNCELoss(tau_plus=1), ValueError, r"tau_plus must be in \[0, 1\), got 1"),
        (lambda: con.HardNegativeNCELoss(beta=math.inf), ValueError, "beta must be finite"),
        (lambda: con.DebiasedNCELoss(temperature=0), ValueError, "temperature must be finite and > 0"),
        (lambda: con.SigLipLoss(reduction="avg"), ValueError, "reduction must be one of"),
    ],
)
def test_bad_input_raises_named_error(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_devices_must_match():
    meta = torch.randn(8, 4, device="meta")
    with pytest.raises(ValueError, match="tensors on different devices: query on cpu, key on meta"):
        co.info_nce(X, meta)
    with pytest.raises(ValueError, match="labels is on meta but the features are on cpu"):
        co.supcon_loss(X, LABELS.to("meta"))


def test_unavailable_backend_is_a_value_error_with_reason():
    with pytest.raises(co.BackendUnavailableError) as info:
        co.nt_xent(X, Y, backend="cuda")
    assert isinstance(info.value, ValueError)
    # without a GPU: "runs on CUDA tensors only" where the extension is built, "not built" elsewhere
    assert "backend='cuda' cannot run here: " in str(info.value)
    assert "CUDA tensors only" in str(info.value) or "not built" in str(info.value)


@pytest.mark.parametrize("backend", ["naive", "chunked"])
def test_inputs_are_never_modified(backend):
    q, k, e = torch.randn(9, 5), torch.randn(9, 5), torch.randn(4, 5)
    labels = torch.arange(9) % 2
    scale = torch.tensor(7.0, requires_grad=True)
    copies = [t.clone() for t in (q, k, e, labels, scale.detach())]
    for loss in (
        co.info_nce(q, k, e, symmetric=True, backend=backend),
        co.ring_info_nce(q, k, e, backend=backend),
        co.supcon_loss(q, labels, backend=backend),
        co.clip_loss(q, k, scale, backend=backend),
        co.dcl_loss(q, k, backend=backend),
        co.nt_xent(q, k, backend=backend),
        co.info_nce(q, k, e, symmetric=True, labels=labels, backend=backend),
        co.hard_negative_nce(q, k, backend=backend),
        co.siglip_loss(q, k, scale, -1.0, backend=backend),
    ):
        loss.backward() if loss.requires_grad else None
    for before, after in zip(copies, (q, k, e, labels, scale.detach())):
        assert torch.equal(before, after)



# ---------------------------------------------------------------------------------------------
# hostile and odd inputs (what fuzzing found): each fixed where it arises, on every backend
# ---------------------------------------------------------------------------------------------

SPARSE = torch.randn(8, 4).to_sparse()


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: co.info_nce(SPARSE, Y, backend="naive"), "query must be a dense"),
        (lambda: co.clip_loss(X, SPARSE, 10.0, backend="naive"), "text_features must be a dense"),
        (lambda: co.siglip_loss(SPARSE, Y, 10.0, -1.0, backend="naive"), "image_features must be a dense"),
        (lambda: co.nt_xent(X, Y.to_sparse_csr()), "z2 must be a dense .* layout torch.sparse_csr"),
        (lambda: co.supcon_loss(X, LABELS.to_sparse()), "labels must be a dense"),
        (lambda: co.info_nce(X, Y, temperature=torch.tensor([0.1]).to_sparse()), "temperature must be a dense"),
        (lambda: co.clip_loss(X, Y, torch.tensor([10.0]).to_sparse()), "logit_scale must be a dense"),
    ],
)
def test_sparse_tensors_raise_a_type_error_naming_the_argument(call, match):
    """Checked in the shared check: never a crash deep in a backend, never silently accepted."""
    with pytest.raises(TypeError, match=match):
        call()


@pytest.mark.parametrize("group", ["world", [0], 0, object()])
def test_process_group_of_a_wrong_type_raises_type_error(group):
    with pytest.raises(TypeError, match="process_group must be None or a torch.distributed.ProcessGroup"):
        co.info_nce(X, Y, process_group=group)
    with pytest.raises(TypeError, match="process_group must be None or a torch.distributed.ProcessGroup"):
        con.NTXentLoss(process_group=group)


def test_process_group_of_a_wrong_type_raises_after_init_process_group():
    """With torch.distributed initialized (gloo, one process): still the TypeError naming the argument."""
    script = """
import socket, torch, torch.distributed as dist, contrastive_ops as co
sock = socket.socket(); sock.bind(("127.0.0.1", 0)); port = sock.getsockname()[1]; sock.close()
dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
x = torch.randn(4, 3)
for group in ("world", [0]):
    try:
        co.nt_xent(x, x, process_group=group)
    except TypeError as e:
        assert "process_group must be None or a torch.distributed.ProcessGroup" in str(e), e
    else:
        raise AssertionError(group)
co.nt_xent(x, x, process_group=dist.group.WORLD)
dist.destroy_process_group()
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", script], check=False, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "ok", out.stderr


@pytest.mark.parametrize("backend", ["naive", "chunked"])
@pytest.mark.parametrize("variable", ["CONTRASTIVE_OPS_DS_CHUNK_BYTES", "CONTRASTIVE_OPS_TRITON_CONFIG"])
def test_environment_settings_are_checked_at_every_loss_call(variable, backend, monkeypatch):
    """Read where a loss call starts, whatever the backend: a bad value fails on the CPU as on the GPU."""
    monkeypatch.setenv(variable, "lots")
    with pytest.raises(ValueError, match=variable):
        co.info_nce(X, Y, backend=backend)
    with pytest.raises(ValueError, match=variable):
        con.SupConLoss(backend=backend)(X, LABELS)


@pytest.mark.parametrize(
    "weight_fn,error,match",
    [
        (lambda a, b: 2.0, TypeError, r"weight_fn must return a torch.Tensor of shape \(8,\), got float"),
        (lambda a, b: torch.ones(8, 1), ValueError, r"weight_fn must return a tensor of shape \(8,\), got \(8, 1\)"),
        (lambda a, b: torch.tensor(2.0), ValueError, r"shape \(8,\), got \(\)"),
        (lambda a, b: torch.ones(8, dtype=torch.long), TypeError, "weight_fn must return a floating tensor"),
        (lambda a, b: torch.ones(8, device="meta"), ValueError, "weight_fn returned a tensor on meta"),
        (lambda a, b: torch.ones(8).to_sparse(), TypeError, "weight_fn's output must be a dense"),
    ],
)
def test_dcl_weight_fn_output_is_checked(weight_fn, error, match):
    with pytest.raises(error, match=match):
        co.dcl_loss(X, Y, weight_fn=weight_fn)


def test_dcl_weights_are_used_in_fp32_for_half_features():
    loss = co.dcl_loss(X.half(), Y.half(), weight_fn=lambda a, b: torch.ones(8, dtype=torch.float64))
    assert loss.dtype == torch.float32


# -- double backward ----------------------------------------------------------------------------


@pytest.mark.parametrize("through", ["temperature", "features"])
def test_chunked_double_backward_raises_a_clear_error(through):
    """The custom backward is not differentiable: a second derivative raises, never a silently wrong
    value (it was 6.46 against naive's 12.22 through the temperature)."""
    q = torch.randn(6, 4, requires_grad=True)
    t = torch.tensor(0.3, requires_grad=True)
    loss = co.info_nce(q, Y[:6], temperature=t, backend="chunked")
    target = t if through == "temperature" else q
    (g,) = torch.autograd.grad(loss, target, create_graph=True)
    with pytest.raises(RuntimeError, match="double backward .* not supported; use backend='naive'"):
        torch.autograd.grad(g.sum(), target)


def test_naive_double_backward_matches_a_central_difference():
    q, k = torch.randn(6, 4, dtype=torch.float64), torch.randn(6, 4, dtype=torch.float64)
    t = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(co.info_nce(q, k, temperature=t, backend="naive"), t, create_graph=True)
    (second,) = torch.autograd.grad(g, t)
    h = 1e-4

    def first(tv):
        tt = torch.tensor(tv, dtype=torch.float64, requires_grad=True)
        return torch.autograd.grad(co.info_nce(q, k, temperature=tt, backend="naive"), tt)[0].item()

    assert abs(second.item() - (first(0.3 + h) - first(0.3 - h)) / (2 * h)) < 1e-5 * max(1.0, abs(second.item()))


def test_chunked_first_derivatives_with_create_graph_still_work():
    q = torch.randn(6, 4, requires_grad=True)
    loss = co.nt_xent(q, Y[:6], backend="chunked")
    (g,) = torch.autograd.grad(loss, q, create_graph=True)
    (expected,) = torch.autograd.grad(co.nt_xent(q, Y[:6], backend="naive"), q)
    torch.testing.assert_close(g.detach(), expected, rtol=1e-5, atol=1e-7)


# -- learnable temperatures of the modules -----------------------------------------------------

TEMPERATURE_MODULES = [con.InfoNCELoss, con.NTXentLoss, con.DCLLoss, con.SupConLoss, con.RingInfoNCELoss,
                       con.HardNegativeNCELoss, con.DebiasedNCELoss]


def _module_args(cls):
    if cls is con.SupConLoss:
        return (X, LABELS)
    return (X, Y)


@pytest.mark.parametrize("cls", TEMPERATURE_MODULES, ids=lambda c: c.__name__)
def test_modules_register_a_parameter_temperature(cls):
    p = torch.nn.Parameter(torch.tensor(0.2))
    kwargs = {"outer": 1.0} if cls is con.RingInfoNCELoss else {}
    module = cls(temperature=p, **kwargs)
    assert list(module.parameters()) == [p]
    assert set(module.state_dict()) == {"temperature"}
    clone = copy.deepcopy(module)
    assert clone.temperature is not p and torch.equal(clone.temperature, p)
    before = module(*_module_args(cls))
    p.data = torch.tensor(0.5)  # the module sees the new value
    after = module(*_module_args(cls))
    assert not torch.equal(before, after)
    assert torch.equal(after, cls(temperature=0.5, **kwargs)(*_module_args(cls)))
    after.backward()
    assert p.grad is not None and torch.isfinite(p.grad)
    assert "temperature=tensor(0.5000)" in repr(module)


def test_a_plain_tensor_temperature_is_a_buffer():
    module = con.InfoNCELoss(temperature=torch.tensor(0.3))
    assert list(module.parameters()) == [] and set(module.state_dict()) == {"temperature"}
    assert torch.equal(module(X, Y), co.info_nce(X, Y, temperature=0.3))


def test_tensor_temperature_values_are_not_read():
    """A tensor temperature's value is not checked (no host sync): 0 gives inf/NaN, a negative one a
    loss of the negated logits, NaN gives NaN — the arithmetic of 1/t, documented in docs/losses.md."""
    assert math.isnan(co.info_nce(X, Y, temperature=torch.tensor(float("nan"))).item())
    negative = co.info_nce(X, Y, temperature=torch.tensor(-0.5), backend="naive")
    assert torch.isfinite(negative)
    assert not torch.isfinite(co.info_nce(X, Y, temperature=torch.tensor(0.0), backend="naive"))


# -- the normalization: zero rows in half precision, huge rows, expanded rows --------------------


def _backends(dtype):
    names = ["naive", "chunked"]
    if TRITON and dtype != torch.bfloat16:  # the interpreter's bf16 dots are wrong
        names.append("triton")
    return names


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_zero_rows_give_finite_losses_and_nan_free_gradients_in_every_dtype(dtype):
    """F.normalize's eps (1e-12) underflows in fp16 (0/0 = NaN): the norm is taken in fp32. The zero
    row's gradient is g/eps, finite in fp32/bf16; in fp16 it overflows to ±inf, never NaN."""
    q, k = torch.randn(5, 4).to(dtype), torch.randn(5, 4).to(dtype)
    q[1] = 0
    k[3] = 0
    results = []
    for backend in _backends(dtype):
        a, b = q.clone().requires_grad_(), k.clone().requires_grad_()
        loss = co.info_nce(a, b, symmetric=True, backend=backend)
        loss.backward()
        assert torch.isfinite(loss), backend
        assert not a.grad.isnan().any() and not b.grad.isnan().any(), backend
        if dtype != torch.float16:
            assert torch.isfinite(a.grad).all() and torch.isfinite(b.grad).all(), backend
        results.append(loss.item())
    ref = co.info_nce(q.double(), k.double(), symmetric=True, backend="naive").item()
    for value in results:
        assert abs(value - ref) <= 1e-2 * abs(ref)


def test_zero_rows_agree_on_the_extension_cpu_path():
    cuda = _cuda_cpu()
    from contrastive_ops.core import RoleSpec

    q = torch.randn(5, 4).half()
    q[2] = 0
    terms = cuda.compute_terms(q, q, None, 10.0, RoleSpec(self_index=torch.arange(5), row_labels=LABELS[:5],
                                                          col_labels=LABELS[:5]), allow_cpu=True)
    expected = chunked.compute_terms(q, q, None, 10.0, RoleSpec(self_index=torch.arange(5), row_labels=LABELS[:5],
                                                                col_labels=LABELS[:5]))
    torch.testing.assert_close(terms.row_lse, expected.row_lse, rtol=2e-3, atol=2e-3)


@pytest.mark.parametrize("magnitude", [1e19, 1e30, 1e37])
def test_huge_and_tiny_rows_normalize_like_their_rescaled_copies(magnitude):
    """A row's sum of squares overflows fp32 past ~1.8e19: the norm is
    scaled by the row's largest entry first, on every backend, so backends agree."""
    q, k = torch.randn(6, 5), torch.randn(6, 5)
    expected = co.info_nce(q.double(), k.double(), symmetric=True, backend="naive")
    backends = ["naive", "chunked"]
    for backend in backends:
        a, b = (q * magnitude).requires_grad_(), (k * magnitude).requires_grad_()
        loss = co.info_nce(a, b, symmetric=True, backend=backend)
        loss.backward()
        torch.testing.assert_close(loss.double(), expected, rtol=1e-5, atol=1e-6)
        assert torch.isfinite(a.grad).all() and torch.isfinite(b.grad).all()


@pytest.mark.skipif(not TRITON, reason=f"triton backend: {TRITON_WHY}")
@pytest.mark.interpreter
def test_huge_query_rows_on_triton():
    """The Triton kernels' inverse norms and normalization backward are scaled too (the tiles' raw
    dot products of two huge rows still overflow: see docs/losses.md, Promises)."""
    q, k = torch.randn(6, 5), torch.randn(6, 5)
    expected = co.info_nce(q.double(), k.double(), backend="naive")
    a = (q * 1e25).requires_grad_()
    loss = co.info_nce(a, k, backend="triton")
    loss.backward()
    torch.testing.assert_close(loss.double(), expected, rtol=1e-5, atol=1e-6)
    assert torch.isfinite(a.grad).all()


def test_huge_rows_on_the_extension_cpu_path():
    cuda = _cuda_cpu()
    from contrastive_ops.core import RoleSpec

    q, k = torch.randn(6, 5), torch.randn(6, 5)
    spec = RoleSpec(pos_index=torch.arange(6))
    expected = chunked.compute_terms(q, k, None, 10.0, spec)
    a = (q * 1e20).requires_grad_()
    terms = cuda.compute_terms(a, k * 1e20, None, 10.0, spec, allow_cpu=True)
    torch.testing.assert_close(terms.row_lse, expected.row_lse, rtol=1e-5, atol=1e-5)
    (terms.row_lse.sum()).backward()
    assert torch.isfinite(a.grad).all()


@pytest.mark.skipif(not TRITON, reason=f"triton backend: {TRITON_WHY}")
@pytest.mark.interpreter
@pytest.mark.parametrize("loss", ["info_nce", "supcon", "nt_xent", "gist"])
def test_expanded_features_on_triton(loss):
    """Rows expanded from one (stride 0): the backward's unit rows are one row expanded alike, not a
    write through overlapping memory."""
    v = torch.randn(1, 4, requires_grad=True)
    k = torch.randn(5, 4, requires_grad=True)
    labels = torch.tensor([0, 1, 0, 1, 1])

    def run(backend):
        v.grad = k.grad = None
        q = v.expand(5, 4)
        if loss == "info_nce":
            out = co.info_nce(q, k, backend=backend)
        elif loss == "supcon":
            out = co.supcon_loss(q, labels, backend=backend)
        elif loss == "nt_xent":
            out = co.nt_xent(q, k, backend=backend)
        else:
            out = co.gist_loss(q, k, anchor_guide=q.detach(), positive_guide=k.detach(), temperature=0.1,
                               backend=backend)
        out.backward()
        return out.detach(), v.grad.clone(), None if k.grad is None else k.grad.clone()

    ours, expected = run("triton"), run("naive")
    for a, b in zip(ours, expected):
        if b is not None:
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
