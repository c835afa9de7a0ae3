"""The naive and chunked backends beyond test_against_float64.py: every reduction against float64,
tiling, float64 gradcheck, partial requires_grad, a learnable temperature."""
import pytest
import torch
from cases import CASES, TEMPERATURE_LOSSES, temperature_inputs, temperature_reference
from helpers import FP32_REL, as_reference, assert_close_rel, grads, make_inputs

from contrastive_ops.backends import chunked

BACKENDS = ["naive", "chunked"]


def _run(case, tensors, backend, reduction):
    with chunked.block_size(16, 16):  # several partial tiles at these shapes
        return case.ours(tensors, backend=backend, reduction=reduction)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", sorted(CASES))
def test_reductions(name, backend, reduction, seed):
    case = CASES[name]
    tensors = make_inputs(case, torch.float32)
    ours = _run(case, tensors, backend, reduction)
    assert ours.dim() == 0
    ref_tensors = as_reference(tensors)
    per_anchor = case.reference(ref_tensors)
    if reduction == "sum":
        expected = per_anchor.sum()
    elif case.mean_count is not None:
        expected = per_anchor.sum() / max(case.mean_count(ref_tensors), 1)
    else:
        expected = per_anchor.mean()
    assert_close_rel(ours, expected, FP32_REL, f"{name}/{backend}/{reduction}")
    for input_name, g, g_ref in zip(case.names, grads(ours, tensors), grads(expected, ref_tensors)):
        assert_close_rel(g, g_ref, FP32_REL, f"{name}/{backend}/{reduction} d/d{input_name}")


@pytest.mark.parametrize("name", ["info_nce_symmetric_queue", "clip_tensor_scale", "supcon_few_classes", "dcl", "ring",
                                  "info_nce_symmetric_queue_labels", "ring_labels", "hard_negative_beta1",
                                  "hard_negative_clamp", "siglip"])
def test_chunked_equals_naive_with_one_tile_and_many(name, seed):
    """Tiling must not change the result: one big tile and 16×16 tiles agree with naive."""
    case = CASES[name]
    tensors = make_inputs(case, torch.float64)
    naive = case.ours(tensors, backend="naive", reduction="none")
    with chunked.block_size(1024, 1024):
        one_tile = case.ours(tensors, backend="chunked", reduction="none")
    with chunked.block_size(5, 7):
        many = case.ours(tensors, backend="chunked", reduction="none")
    assert_close_rel(one_tile, naive, 1e-12, f"{name} one tile")
    assert_close_rel(many, naive, 1e-12, f"{name} 5x7 tiles")


@pytest.mark.parametrize("name", ["info_nce_queue", "info_nce_symmetric_queue", "nt_xent", "dcl_weighted",
                                  "clip_tensor_scale", "supcon_few_classes", "ring", "ring_queue_only",
                                  "info_nce_symmetric_queue_labels", "clip_labels", "hard_negative_beta05",
                                  "debiased", "siglip"])
def test_gradcheck_chunked_float64(name, seed):
    case = CASES[name]
    small = {"query": 6, "key": 6, "negatives": 4, "z1": 5, "z2": 5, "image_features": 6, "text_features": 6,
             "features": 7}
    tensors = make_inputs(case, torch.float64)
    # shrink to a few rows and features so gradcheck's finite differences stay cheap
    shrunk = []
    rows = small[case.names[0]]  # labels follow the anchors' rows
    for t, nm in zip(tensors, case.names + ["labels"] * (len(tensors) - len(case.names))):
        if t.dim() == 2:
            shrunk.append(t.detach()[: small[nm], :5].clone().requires_grad_(True))
        elif t.dim() == 1:
            shrunk.append(t[:rows].clone())
        else:
            shrunk.append(t.detach().clone().requires_grad_(True))
    if case.separate is not None:  # the shrunk Ring inputs need their own band margin (finite differences move logits)
        shrunk = case.separate(shrunk)
    floats = [t for t in shrunk if t.dtype.is_floating_point]

    def fn(*args):
        it = iter(args)
        full = [next(it) if t.dtype.is_floating_point else t for t in shrunk]
        with chunked.block_size(4, 3):
            return case.ours(full, backend="chunked", reduction="none")

    assert torch.autograd.gradcheck(fn, floats, eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_partial_requires_grad(backend, seed):
    q, k, e = torch.randn(21, 12), torch.randn(21, 12), torch.randn(9, 12)
    k.requires_grad_(True)
    import reference as ref

    import contrastive_ops as co
    with chunked.block_size(8, 8):
        loss = co.info_nce(q, k, e, backend=backend)
    (gk,) = torch.autograd.grad(loss, [k])
    k64 = k.detach().double().requires_grad_(True)
    expected = ref.info_nce(q, k64, e).mean()
    (gk_ref,) = torch.autograd.grad(expected, [k64])
    assert_close_rel(loss, expected, FP32_REL, "loss")
    assert_close_rel(gk, gk_ref, FP32_REL, "d/dkey")
    assert q.grad is None and e.grad is None


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_grad_inputs_give_plain_tensor(backend, seed):
    import contrastive_ops as co
    loss = co.nt_xent(torch.randn(5, 3), torch.randn(5, 3), backend=backend)
    assert not loss.requires_grad and torch.isfinite(loss)


# ---------------------------------------------------------------------------------------------
# a learnable temperature (0-d tensor)
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["naive", "chunked"])
@pytest.mark.parametrize("name", sorted(TEMPERATURE_LOSSES))
def test_a_tensor_temperature_gets_its_gradient(name, backend, seed):
    tensors = temperature_inputs()
    expected, expected_grads, central = temperature_reference(name, tensors, 0.1)
    assert_close_rel(expected_grads[0], central, 1e-6, f"{name}: float64 d temperature against a central difference")
    ours_in = [x.detach().clone().requires_grad_(True) for x in tensors]
    t = torch.tensor(0.1, requires_grad=True)
    with chunked.block_size(8, 16):
        loss = TEMPERATURE_LOSSES[name](t, *ours_in, backend)
        ours_grads = grads(loss, [t, *ours_in])
    assert_close_rel(loss, expected, 1e-5, f"{name} loss")
    for what, g, g_ref in zip(("temperature", "q", "k", "e"), ours_grads, expected_grads):
        assert_close_rel(g, g_ref, 1e-5, f"{name} d {what}")
