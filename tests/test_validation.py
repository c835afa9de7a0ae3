"""Bad input gets a clear TypeError/ValueError naming the argument and value, before any work."""
import math

import pytest
import torch

import contrastive_ops as co
from contrastive_ops import nn as con

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
