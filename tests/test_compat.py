"""Each compat class against the real peer's loss code: same loss and gradients to 1e-5."""
import importlib
import warnings

import peers
import pytest
import torch
from helpers import assert_close_rel

from contrastive_ops.backends import chunked
from contrastive_ops.compat import lightly as co_lightly
from contrastive_ops.compat import open_clip as co_open_clip
from contrastive_ops.compat import pytorch_metric_learning as co_pml

REL = 1e-5
BACKENDS = ["chunked", "naive"]


def _compare(ours_fn, peer_fn, tensors, what, zero_grad_inputs=()):
    """Loss and every input's gradient within REL; inputs in ``zero_grad_inputs`` have an exactly zero
    gradient mathematically, where the peer returns rounding noise: compared in absolute terms."""
    a = [t.detach().clone().requires_grad_(t.dtype.is_floating_point) for t in tensors]
    b = [t.detach().clone().requires_grad_(t.dtype.is_floating_point) for t in tensors]
    with chunked.block_size(16, 16):
        ours = ours_fn(*a)
        peer = peer_fn(*b)
        assert_close_rel(ours, peer, REL, f"{what} loss")
        float_a = [t for t in a if t.dtype.is_floating_point]
        float_b = [t for t in b if t.dtype.is_floating_point]
        g_ours = torch.autograd.grad(ours, float_a, allow_unused=True, materialize_grads=True)
        g_peer = torch.autograd.grad(peer, float_b, allow_unused=True, materialize_grads=True)
    for i, (x, y) in enumerate(zip(g_ours, g_peer)):
        if i in zero_grad_inputs:
            assert float(x) == 0.0 and abs(float(y)) < 1e-6, (what, i, x, y)
        else:
            assert_close_rel(x, y, REL, f"{what} grad of input {i}")
    return ours, peer


def _pair_labels(n):
    """SimCLR-style labels: every sample appears twice."""
    return torch.arange(n // 2).repeat(2)[torch.randperm(n)]


LABELINGS = {
    "pairs": lambda n: _pair_labels(n),
    "few_classes": lambda n: torch.randint(0, 4, (n,)),
    "with_singletons": lambda n: torch.cat([torch.randint(0, 3, (n - 3,)), torch.tensor([100, 101, 102])]),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("labeling", sorted(LABELINGS))
@pytest.mark.parametrize("cls", ["NTXentLoss", "SupConLoss"])
def test_pml_all_pairs(cls, labeling, backend, seed):
    losses = peers.pytorch_metric_learning()
    temperature = 0.07 if cls == "NTXentLoss" else 0.1
    peer = getattr(losses, cls)(temperature=temperature)
    ours = getattr(co_pml, cls)(temperature=temperature, backend=backend)
    emb = torch.randn(38, 16)
    labels = LABELINGS[labeling](38)
    _compare(lambda e: ours(e, labels), lambda e: peer(e, labels), [emb], f"{cls}/{labeling}")


@pytest.mark.parametrize("ref_labels_given", [True, False])
@pytest.mark.parametrize("cls", ["NTXentLoss", "SupConLoss"])
def test_pml_ref_emb(cls, ref_labels_given, seed):
    losses = peers.pytorch_metric_learning()
    peer, ours = getattr(losses, cls)(temperature=0.2), getattr(co_pml, cls)(temperature=0.2)
    emb, ref = torch.randn(21, 12), torch.randn(21 if not ref_labels_given else 30, 12)
    labels = torch.randint(0, 5, (21,))
    ref_labels = torch.randint(0, 5, (30,)) if ref_labels_given else None
    _compare(lambda e, r: ours(e, labels, ref_emb=r, ref_labels=ref_labels),
             lambda e, r: peer(e, labels, ref_emb=r, ref_labels=ref_labels), [emb, ref], f"{cls}/ref_emb")


@pytest.mark.parametrize("labels", [torch.zeros(10, dtype=torch.long), torch.arange(10)])
@pytest.mark.parametrize("cls", ["NTXentLoss", "SupConLoss"])
def test_pml_degenerate_labels_give_zero_loss(cls, labels, seed):
    losses = peers.pytorch_metric_learning()
    peer, ours = getattr(losses, cls)(), getattr(co_pml, cls)()
    emb = torch.randn(10, 6, requires_grad=True)
    ours_loss, peer_loss = ours(emb, labels), peer(emb, labels)
    assert float(ours_loss.detach()) == float(peer_loss.detach()) == 0.0
    ours_loss.backward()
    assert torch.equal(emb.grad, torch.zeros_like(emb))


def test_pml_ntxent_reduces_like_the_peer_with_zero_loss_pairs(seed):
    """The peer's default reducer for NTXentLoss is MeanReducer: pairs whose loss is exactly 0 count.
    Two tight, well-separated classes (their pair losses round to exactly 0 at temperature 0.02) beside
    two classes of random rows (float64: a pair loss near 0 is ``-log`` of a ratio near 1, which fp32
    rounds differently in two codes)."""
    losses = peers.pytorch_metric_learning()
    centers = torch.nn.functional.normalize(torch.randn(2, 16, dtype=torch.float64), dim=1)
    labels = torch.arange(4).repeat(2)
    emb = torch.randn(8, 16, dtype=torch.float64)
    tight = labels < 2
    emb[tight] = centers[labels[tight]] * 5 + 0.01 * torch.randn(int(tight.sum()), 16, dtype=torch.float64)
    for temperature in (0.02, 0.07):
        peer, ours = losses.NTXentLoss(temperature=temperature), co_pml.NTXentLoss(temperature=temperature)
        _compare(lambda e, ours=ours, peer=peer: ours(e, labels), lambda e, peer=peer: peer(e, labels), [emb],
                 f"NTXent T={temperature}")
    # the same embeddings, each reducer both classes run natively
    reducers = importlib.import_module("pytorch_metric_learning.reducers")
    for cls in ("NTXentLoss", "SupConLoss"):
        for reducer in ("MeanReducer", "AvgNonZeroReducer"):
            peer = getattr(losses, cls)(temperature=0.05, reducer=getattr(reducers, reducer)())
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # the fused path: no fallback warning
                ours = getattr(co_pml, cls)(temperature=0.05, reducer=getattr(reducers, reducer)())
                _compare(lambda e, ours=ours: ours(e, labels), lambda e, peer=peer: peer(e, labels), [emb],
                         f"{cls} {reducer}")


def _peer_options():
    distances = importlib.import_module("pytorch_metric_learning.distances")
    reducers = importlib.import_module("pytorch_metric_learning.reducers")
    return {
        "LpDistance": {"distance": distances.LpDistance()},
        "DotProduct": {"distance": distances.DotProductSimilarity()},
        "PerAnchorReducer": {"reducer": reducers.PerAnchorReducer()},
        "ThresholdReducer": {"reducer": reducers.ThresholdReducer(low=0.1)},
    }


@pytest.mark.parametrize("option", ["LpDistance", "DotProduct", "PerAnchorReducer", "ThresholdReducer"])
@pytest.mark.parametrize("cls", ["NTXentLoss", "SupConLoss"])
def test_pml_other_distances_and_reducers_are_the_peers_own(cls, option, seed):
    """Options the fused path does not cover are computed by the installed peer, with one warning."""
    losses = peers.pytorch_metric_learning()
    kwargs = _peer_options()[option]
    peer = getattr(losses, cls)(temperature=0.1, **kwargs)
    with pytest.warns(UserWarning, match="not on the fused path"):
        ours = getattr(co_pml, cls)(temperature=0.1, **_peer_options()[option])
    emb, labels = torch.randn(20, 8), torch.randint(0, 4, (20,))
    _compare(lambda e: ours(e, labels), lambda e: peer(e, labels), [emb], f"{cls} {option}")


@pytest.mark.parametrize("cls", ["NTXentLoss", "SupConLoss"])
def test_pml_indices_tuple_of_a_miner(cls, seed):
    losses = peers.pytorch_metric_learning()
    miners = importlib.import_module("pytorch_metric_learning.miners")
    emb, labels = torch.randn(24, 8), torch.randint(0, 4, (24,))
    tuples = miners.MultiSimilarityMiner(epsilon=0.3)(emb, labels)
    peer, ours = getattr(losses, cls)(temperature=0.1), getattr(co_pml, cls)(temperature=0.1)
    with pytest.warns(UserWarning, match="indices_tuple"):
        _compare(lambda e: ours(e, labels, tuples), lambda e: peer(e, labels, tuples), [emb], f"{cls} miner")
    # without indices_tuple the same instance is back on the fused path
    _compare(lambda e: ours(e, labels), lambda e: peer(e, labels), [emb], f"{cls} all pairs")


@pytest.mark.parametrize("cls", ["NTXentLoss", "SupConLoss"])
def test_pml_cross_batch_memory(cls, seed):
    """pytorch-metric-learning's memory bank around the compat class, step by step, wrap-around included."""
    losses = peers.pytorch_metric_learning()
    peer = losses.CrossBatchMemory(getattr(losses, cls)(temperature=0.1), embedding_size=8, memory_size=40)
    ours = losses.CrossBatchMemory(getattr(co_pml, cls)(temperature=0.1), embedding_size=8, memory_size=40)
    for step in range(4):
        emb, labels = torch.randn(16, 8), torch.randint(0, 5, (16,))
        _compare(lambda e, y=labels: ours(e, y), lambda e, y=labels: peer(e, y), [emb],
                 f"{cls} CrossBatchMemory step {step}")
        assert torch.equal(ours.embedding_memory, peer.embedding_memory)


def test_pml_argument_errors():
    with pytest.raises(ValueError, match="labels is required"):
        co_pml.SupConLoss()(torch.randn(4, 3))
    with pytest.raises(TypeError, match="temperature"):
        co_pml.NTXentLoss(temperature="0.1")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("temperature", [0.5, 0.1])
def test_lightly_ntxent_without_bank(temperature, backend, seed):
    ntx, _ = peers.lightly_losses()
    peer = ntx.NTXentLoss(temperature=temperature)
    ours = co_lightly.NTXentLoss(temperature=temperature, backend=backend)
    _compare(ours, peer, [torch.randn(27, 10), torch.randn(27, 10)], "lightly NTXent")


@pytest.mark.parametrize("backend", BACKENDS)
def test_lightly_ntxent_memory_bank_fifo(backend, seed):
    """Same bank initialization (same RNG state), then several steps that wrap the FIFO."""
    ntx, _ = peers.lightly_losses()
    state = torch.get_rng_state()
    peer = ntx.NTXentLoss(temperature=0.2, memory_bank_size=(50, 8))
    torch.set_rng_state(state)
    ours = co_lightly.NTXentLoss(temperature=0.2, memory_bank_size=(50, 8), backend=backend)
    assert torch.equal(ours.bank, peer.memory_bank.bank)
    for step in range(5):
        out0, out1 = torch.randn(17, 8), torch.randn(17, 8)
        _compare(ours, peer, [out0, out1], f"lightly NTXent bank step {step}")
        # _compare runs each module once with requires_grad inputs, so both banks advanced once
        assert torch.equal(ours.bank, peer.memory_bank.bank), f"banks differ after step {step}"
        assert int(ours.bank_ptr) == int(peer.memory_bank.bank_ptr)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bank", [False, True])
def test_lightly_negative_temperature(bank, backend, seed):
    """lightly rejects only |T| < 1e-8 (its own test runs a negative temperature)."""
    ntx, dcl = peers.lightly_losses()
    kwargs = {"memory_bank_size": (40, 8)} if bank else {}
    state = torch.get_rng_state()
    peer = ntx.NTXentLoss(temperature=-0.5, **kwargs)
    torch.set_rng_state(state)
    ours = co_lightly.NTXentLoss(temperature=-0.5, backend=backend, **kwargs)
    _compare(ours, peer, [torch.randn(13, 8), torch.randn(13, 8)], f"lightly NTXent T=-0.5 bank={bank}")
    if not bank:
        peer, ours = dcl.DCLLoss(temperature=-0.2), co_lightly.DCLLoss(temperature=-0.2, backend=backend)
        _compare(ours, peer, [torch.randn(13, 8), torch.randn(13, 8)], "lightly DCL T=-0.2")


def test_lightly_memory_bank_size_rules():
    with pytest.raises(ValueError, match="feature dimension"):
        co_lightly.NTXentLoss(memory_bank_size=128)
    with pytest.raises(ValueError, match="Illegal temperature"):
        co_lightly.NTXentLoss(temperature=0.0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("variant", ["plain", "weight_fn", "dclw"])
def test_lightly_dcl(variant, backend, seed):
    _, dcl = peers.lightly_losses()
    if variant == "plain":
        peer, ours = dcl.DCLLoss(temperature=0.1), co_lightly.DCLLoss(temperature=0.1, backend=backend)
    elif variant == "weight_fn":
        fn = lambda a, b: torch.sum((a - b) ** 2, dim=1)
        peer, ours = dcl.DCLLoss(weight_fn=fn), co_lightly.DCLLoss(weight_fn=fn, backend=backend)
    else:
        peer, ours = dcl.DCLWLoss(temperature=0.2, sigma=0.4), co_lightly.DCLWLoss(temperature=0.2, sigma=0.4, backend=backend)
    _compare(ours, peer, [torch.randn(23, 9), torch.randn(23, 9)], f"lightly DCL {variant}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("with_bias", [False, True])
def test_open_clip_clip_loss(with_bias, backend, seed):
    loss_module = peers.open_clip_loss()
    peer, ours = loss_module.ClipLoss(), co_open_clip.ClipLoss(backend=backend)
    img = torch.nn.functional.normalize(torch.randn(29, 24), dim=1)
    txt = torch.nn.functional.normalize(torch.randn(29, 24), dim=1)
    scale = torch.tensor(20.0)
    tensors = [img, txt, scale] + ([torch.tensor(-3.0)] if with_bias else [])
    # a bias added to every logit cancels in the softmax: its gradient is 0 (the peer's is ~1e-8 noise)
    _compare(lambda *t: ours(*t), lambda *t: peer(*t), tensors, "open_clip ClipLoss", zero_grad_inputs=(3,))
    out = ours(img, txt, scale, output_dict=True)
    assert set(out) == {"contrastive_loss"}


def test_open_clip_distributed_options_raise():
    with pytest.raises(ValueError, match="world_size=2 but torch.distributed has world size not initialized"):
        co_open_clip.ClipLoss(world_size=2, rank=1)(torch.randn(3, 2), torch.randn(3, 2), 1.0)
    with pytest.raises(ValueError, match="use_horovod"):
        co_open_clip.ClipLoss(use_horovod=True)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("params", ["init", "trained"])
def test_open_clip_siglip_loss(params, backend, seed):
    """Against open_clip's own SigLipLoss: loss and the gradients of both features, scale and bias."""
    loss_module = peers.open_clip_loss()
    peer, ours = loss_module.SigLipLoss(), co_open_clip.SigLipLoss(backend=backend)
    # float64 on both sides: at SigLIP's initialisation the scale's gradient is a sum that nearly
    # cancels, where two fp32 implementations differ by more than any useful tolerance
    img = torch.nn.functional.normalize(torch.randn(31, 20, dtype=torch.float64), dim=1)
    txt = torch.nn.functional.normalize(torch.randn(31, 20, dtype=torch.float64), dim=1)
    # SigLIP's initialisation (scale e^log(10), bias -10) and values after some training
    scale, bias = (10.0, -10.0) if params == "init" else (30.0, -4.0)
    scale, bias = torch.tensor(scale, dtype=torch.float64), torch.tensor(bias, dtype=torch.float64)
    _compare(lambda *t: ours(*t), lambda *t: peer(*t), [img, txt, scale, bias], "open_clip SigLipLoss")
    out = ours(img, txt, scale, bias, output_dict=True)
    assert set(out) == {"contrastive_loss"}


def test_open_clip_siglip_options():
    with pytest.raises(ValueError, match="dist_impl must be one of"):
        co_open_clip.SigLipLoss(dist_impl="ring")
    with pytest.raises(ValueError, match="world_size=2 but torch.distributed has world size not initialized"):
        co_open_clip.SigLipLoss(world_size=2, rank=1)(torch.randn(3, 2), torch.randn(3, 2), 1.0, 0.0)
