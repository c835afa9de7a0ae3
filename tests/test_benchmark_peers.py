"""The benchmark's peer adapters compute the very loss they are timed against.

A peer called with the wrong convention (the scale where it wants its log, a head layout that
drops lanes, a missing factor of two) would be timed on a different loss. These checks compare
each adapter in ``benchmarks.workloads`` with this package's naive backend on the suite's own
inputs. On a CPU machine only what runs there is checked (open_clip's losses, siglip-kernel's
reference semantics); inf-cl, memeff and siglip-kernel's kernels need CUDA and are checked by the
``gpu``-marked test, which the GPU session runs.
"""
import peers
import pytest
import torch
from helpers import assert_close_rel

from benchmarks import workloads
from benchmarks.workloads import WORKLOADS, make_inputs


def _as_float64(x: dict) -> dict:
    out = {}
    for name, t in x.items():
        t = t.detach()
        out[name] = t.double().requires_grad_(True) if t.dtype.is_floating_point else t
    return out


def _loss_and_grads(fn, x: dict, names):
    loss = fn(x)
    return loss, torch.autograd.grad(loss, [x[n] for n in names], allow_unused=True, materialize_grads=True)


@pytest.mark.parametrize("loss", ["clip", "siglip"])
def test_open_clip_adapter_matches_naive(loss, seed):
    peers.open_clip_loss()  # fails under CONTRASTIVE_OPS_REQUIRE_PEERS=1 when open_clip is missing
    workload = WORKLOADS[loss]
    x = _as_float64(make_inputs(48, 24, torch.float32, torch.device("cpu"), seed))
    names = ["a", "b", "scale"] + (["bias"] if loss == "siglip" else [])
    ours, our_grads = _loss_and_grads(lambda v: workload.call(v, "naive"), x, names)
    theirs, their_grads = _loss_and_grads(workloads.peer_call("open_clip", workload), x, names)
    assert_close_rel(theirs, ours, 1e-12, f"{loss} loss")
    for name, g, ref in zip(names, their_grads, our_grads):
        assert_close_rel(g, ref, 1e-12, f"{loss} d{name}")


def test_siglip_kernel_reference_is_our_siglip_loss(seed):
    """siglip-kernel multiplies the logits by exp(its log temperature) and divides the summed pair
    losses by N (its reference code, which its dispatcher calls with ``log_temperature.exp()``); the
    adapter passes log(scale). Same loss and gradients as ``siglip_loss`` with ``scale`` itself."""
    reference = peers.siglip_kernel_reference()
    x = _as_float64(make_inputs(40, 16, torch.float32, torch.device("cpu"), seed))
    names = ["a", "b", "scale", "bias"]
    ours, our_grads = _loss_and_grads(lambda v: WORKLOADS["siglip"].call(v, "naive"), x, names)
    theirs, their_grads = _loss_and_grads(
        lambda v: reference.siglip_loss_reference(v["a"], v["b"], v["scale"].log().exp(), v["bias"]), x, names)
    assert_close_rel(theirs, ours, 1e-12, "siglip loss")
    for name, g, ref in zip(names, their_grads, our_grads):
        assert_close_rel(g, ref, 1e-12, f"siglip d{name}")


@pytest.mark.parametrize("d, head_dim", [(128, 128), (512, 256), (768, 256), (1024, 256), (96, 32), (48, 16)])
def test_inf_cl_head_dim_divides_the_features(d, head_dim):
    assert workloads.inf_cl_head_dim(d) == head_dim


@pytest.mark.parametrize("d", [8, 100, 129])
def test_inf_cl_head_dim_refuses_what_inf_cl_cannot_view(d):
    with pytest.raises(ValueError, match=f"d={d}"):
        workloads.inf_cl_head_dim(d)


CUDA_PEERS = {"inf_cl": "inf-cl", "memeff": "memeff", "siglip_kernel": "siglip-kernel"}
PEER_CASES = [(loss, peer) for loss, w in sorted(WORKLOADS.items()) for peer in w.peers if peer in CUDA_PEERS]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype, d, rel", [(torch.float32, 128, 1e-2), (torch.bfloat16, 768, 5e-2)])
@pytest.mark.parametrize("loss, peer", PEER_CASES)
def test_cuda_peer_adapter_matches_naive(loss, peer, dtype, d, rel, seed):
    """Against the naive backend in fp32 on the same (rounded) inputs. The peers' Triton dots run
    in tf32 for fp32 inputs (their default), hence 1e-2 relative, and bf16 (the benchmark's dtype,
    with D = 768: other code paths in every peer) allows 5e-2; both far below what a wrong
    convention gives (factors of 2, a scale of log(14.3) for 14.3, a missing normalization)."""
    peers.require(peer, CUDA_PEERS[peer])
    workload = WORKLOADS[loss]
    x = make_inputs(256, d, dtype, torch.device("cuda"), seed)
    # memeff takes the temperature as a constant: no scale gradient to compare there
    names = ["a", "b"] + ([] if peer == "memeff" else ["scale"]) + (["bias"] if loss == "siglip" else [])
    fp32 = {k: (v.detach().float().requires_grad_(True) if v.dtype.is_floating_point else v) for k, v in x.items()}
    ours, our_grads = _loss_and_grads(lambda v: workload.call(v, "naive"), fp32, names)
    theirs, their_grads = _loss_and_grads(workloads.peer_call(peer, workload), x, names)
    assert_close_rel(theirs, ours, rel, f"{peer} {loss} loss")
    for name, g, ref in zip(names, their_grads, our_grads):
        assert_close_rel(g, ref, rel, f"{peer} {loss} d{name}")


def test_a_backend_that_refuses_a_loss_is_listed_with_its_reason(monkeypatch):
    """A backend whose probe call refuses (here the cuda backend on CPU tensors, its status forced to
    "ok"): the suite lists it once with the refusal, untimed."""
    monkeypatch.setattr(workloads.co, "backend_status", lambda name, device=None: (True, "ok"))
    listed = {name: (fn, why) for name, fn, why in workloads.implementations(WORKLOADS["siglip"], torch.device("cpu"),
                                                                             only="cuda")}
    fn, why = listed["cuda"]
    assert fn is None and "runs on CUDA tensors only" in why, why
