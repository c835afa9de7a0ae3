"""The drop-in classes on odd inputs, against their installed peers: a drop-in accepts what its peer
accepts, raises the peer's exception type where it raises, and returns the peer's value (to the
dtype's precision) in the peer's dtype. Where the peer cannot be matched, docs/compat.md says why."""
import math
import warnings

import peers
import pytest
import torch

from contrastive_ops.compat import lightly as co_lightly
from contrastive_ops.compat import open_clip as co_open_clip
from contrastive_ops.compat import pytorch_metric_learning as co_pml

TOL = {torch.float64: 1e-9, torch.float32: 1e-5, torch.bfloat16: 3e-2, torch.float16: 5e-3}


def outcome(fn, *args):
    """``("value", loss, dtype)`` or ``("raises", exception type name)``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            out = fn(*args)
        except Exception as exc:  # noqa: BLE001  (the type is what is compared)
            return ("raises", type(exc).__name__)
    return ("value", out.detach().double().item(), out.dtype)


def assert_same_outcome(ours, peer, what="", inputs_dtype=None):
    """Same accept/raise, same exception type, same dtype, values within the tolerance of the inputs'
    dtype (default: the result's; NaN matches NaN, ±inf matches the same inf)."""
    assert ours[0] == peer[0], f"{what}: ours {ours}, peer {peer}"
    if ours[0] == "raises":
        assert ours[1] == peer[1], f"{what}: ours raise {ours[1]}, peer {peer[1]}"
        return
    assert ours[2] == peer[2], f"{what}: dtype {ours[2]} != peer's {peer[2]}"
    a, b = ours[1], peer[1]
    if math.isnan(b) or math.isinf(b):
        assert (math.isnan(a) and math.isnan(b)) or a == b, f"{what}: {a} != {b}"
    else:
        tol = TOL[inputs_dtype or peer[2]]
        assert abs(a - b) <= tol * max(1.0, abs(b)) * 4, f"{what}: {a} != {b}"


# -- pytorch-metric-learning -------------------------------------------------------------------

LABELS = torch.tensor([0, 1, 0, 1, 1, 0, 0, 1])


@pytest.mark.parametrize("cls", ["NTXentLoss", "SupConLoss"])
@pytest.mark.parametrize("labels", [LABELS.bool(), LABELS.float() + 0.5, LABELS - 5, LABELS.to(torch.uint8),
                                    LABELS.int(), LABELS[:, None]],
                         ids=["bool", "float", "negative", "uint8", "int32", "2d"])
def test_pml_labels_of_any_dtype(cls, labels):
    x = torch.randn(8, 4)
    peer, ours = getattr(peers.pytorch_metric_learning(), cls)(), getattr(co_pml, cls)()
    assert_same_outcome(outcome(ours, x, labels), outcome(peer, x, labels), f"{cls} labels {labels.dtype}")


@pytest.mark.parametrize("cls", ["NTXentLoss", "SupConLoss"])
@pytest.mark.parametrize("temperature", [0.0, -0.5, math.inf, math.nan, 1e-40, 0.07])
def test_pml_any_temperature(cls, temperature):
    x = torch.randn(8, 4)
    peer = getattr(peers.pytorch_metric_learning(), cls)(temperature=temperature)
    ours = getattr(co_pml, cls)(temperature=temperature)
    assert_same_outcome(outcome(ours, x, LABELS), outcome(peer, x, LABELS), f"{cls} T={temperature}")


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
@pytest.mark.parametrize("cls", ["NTXentLoss", "SupConLoss"])
def test_pml_cross_batch_memory_all_pairs_take_the_fused_path(cls, dtype):
    """pytorch-metric-learning's own test_sanity_check: CrossBatchMemory without a miner (all pairs, self
    comparisons removed) equals the direct call exactly — both are the fused path."""
    from pytorch_metric_learning.losses import CrossBatchMemory

    for memory_size in (20, 25):
        inner = getattr(co_pml, cls)(temperature=0.1)
        memory = CrossBatchMemory(loss=inner, embedding_size=16, memory_size=memory_size)
        embeddings, labels = torch.randn(memory_size, 16, dtype=dtype), torch.randint(0, 4, (memory_size,))
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no fall-back to the peer's code (it warns)
            direct, through_memory = inner(embeddings, labels), memory(embeddings, labels)
        assert torch.equal(direct, through_memory)
        # later steps: the memory holds older rows too; the peer's CrossBatchMemory agrees
        peer_memory = CrossBatchMemory(loss=getattr(peers.pytorch_metric_learning(), cls)(temperature=0.1),
                                       embedding_size=16, memory_size=memory_size)
        peer_memory(embeddings, labels)
        more, more_labels = torch.randn(memory_size // 2, 16, dtype=dtype), torch.randint(0, 4, (memory_size // 2,))
        assert_same_outcome(outcome(memory, more, more_labels), outcome(peer_memory, more, more_labels),
                            f"{cls} CrossBatchMemory step 2")


def test_pml_a_miners_tuple_still_goes_to_the_peer():
    from pytorch_metric_learning.utils import loss_and_miner_utils as lmu

    x = torch.randn(8, 4)
    a1, p, a2, n = lmu.get_all_pairs_indices(LABELS)
    partial = (a1[::2], p[::2], a2, n)
    peer = peers.pytorch_metric_learning().NTXentLoss()
    with pytest.warns(UserWarning, match="indices_tuple"):
        ours = co_pml.NTXentLoss()(x, LABELS, partial)
    assert abs(ours.item() - peer(x, LABELS, partial).item()) < 1e-5
    assert abs(co_pml.NTXentLoss()(x, LABELS, (a1, p, a2, n)).item() - peer(x, LABELS).item()) < 1e-5


# -- lightly ----------------------------------------------------------------------------------


def _lightly(name):
    ntx, dcl = peers.lightly_losses()
    return {"NTXentLoss": (ntx.NTXentLoss, co_lightly.NTXentLoss), "DCLLoss": (dcl.DCLLoss, co_lightly.DCLLoss),
            "DCLWLoss": (dcl.DCLWLoss, co_lightly.DCLWLoss)}[name]


@pytest.mark.parametrize("cls", ["NTXentLoss", "DCLLoss"])
@pytest.mark.parametrize("temperature", [math.inf, -0.5, 1e-9, 0.0, math.nan, 1e-40])
def test_lightly_any_temperature(cls, temperature):
    peer_cls, ours_cls = _lightly(cls)
    x, y = torch.randn(5, 4), torch.randn(5, 4)
    assert_same_outcome(outcome(lambda: ours_cls(temperature=temperature)(x, y)),
                        outcome(lambda: peer_cls(temperature=temperature)(x, y)), f"{cls} T={temperature}")


@pytest.mark.parametrize("weights", ["scalar", "column", "column_varying", "rows", "wrong_length"])
def test_lightly_dcl_weight_fn_broadcasts_as_lightly(weights):
    fn = {"scalar": lambda a, b: torch.tensor(2.0), "column": lambda a, b: torch.ones(5, 1) * 2,
          "column_varying": lambda a, b: torch.arange(5.0)[:, None], "rows": lambda a, b: (a * b).sum(1),
          "wrong_length": lambda a, b: torch.ones(3)}[weights]
    peer_cls, ours_cls = _lightly("DCLLoss")
    x, y = torch.randn(5, 4, requires_grad=True), torch.randn(5, 4)
    ours, peer = outcome(lambda: ours_cls(weight_fn=fn)(x, y)), outcome(lambda: peer_cls(weight_fn=fn)(x, y))
    assert_same_outcome(ours, peer, weights)
    if ours[0] == "value":
        g_ours = torch.autograd.grad(ours_cls(weight_fn=fn)(x, y), x)[0]
        g_peer = torch.autograd.grad(peer_cls(weight_fn=fn)(x, y), x)[0]
        torch.testing.assert_close(g_ours, g_peer, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("cls", ["DCLLoss", "DCLWLoss"])
def test_lightly_dcl_of_one_pair_is_minus_infinity(cls):
    peer_cls, ours_cls = _lightly(cls)
    x, y = torch.randn(1, 4), torch.randn(1, 4)
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours, peer = ours_cls()(a, y), peer_cls()(b, y)
    assert ours.item() == peer.item() == -math.inf
    ours.backward()
    peer.backward()
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("cls", ["NTXentLoss", "DCLLoss", "DCLWLoss"])
def test_lightly_loss_in_the_inputs_dtype(cls, dtype):
    peer_cls, ours_cls = _lightly(cls)
    x, y = torch.randn(6, 4, dtype=dtype), torch.randn(6, 4, dtype=dtype)
    assert_same_outcome(outcome(ours_cls(), x, y), outcome(peer_cls(), x, y), f"{cls} {dtype}")


# -- open_clip ---------------------------------------------------------------------------------

SCALES = [0.0, -1.0, math.nan, math.inf, 10, True, torch.tensor(10), torch.tensor(0.0), torch.tensor(-1.0),
          torch.tensor([10.0]), torch.tensor([[10.0]]), torch.ones(2), torch.ones(5, 1),
          torch.tensor(10.0, dtype=torch.float64), torch.tensor(float("nan"))]
BIASES = [None, -1.0, math.nan, math.inf, torch.tensor(1), torch.ones(5, 1), torch.tensor([2.0])]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64])
@pytest.mark.parametrize("cls", ["ClipLoss", "SigLipLoss"])
def test_open_clip_any_scale_and_bias(cls, dtype):
    """Every pairing of the scales and biases open_clip takes (0, negative, NaN, inf, ints, bools,
    [1] and [N, 1] tensors): same acceptance, exception type, value and dtype."""
    oc = peers.open_clip_loss()
    x, y = torch.randn(5, 4, dtype=dtype), torch.randn(5, 4, dtype=dtype)
    for scale in SCALES:
        for bias in BIASES:
            assert_same_outcome(outcome(getattr(co_open_clip, cls)(), x, y, scale, bias),
                                outcome(getattr(oc, cls)(), x, y, scale, bias), f"{cls} {scale!r} {bias!r}")


@pytest.mark.parametrize("cls", ["ClipLoss", "SigLipLoss"])
@pytest.mark.parametrize("shapes", [((4,), (4,)), ((5, 4), (3, 4)), ((1, 4), (1, 4)), ((0, 4), (0, 4)),
                                    ((5, 4), (5, 3))])
def test_open_clip_odd_feature_shapes(cls, shapes):
    oc = peers.open_clip_loss()
    x, y = torch.randn(*shapes[0]), torch.randn(*shapes[1])
    assert_same_outcome(outcome(getattr(co_open_clip, cls)(), x, y, 10.0, -1.0),
                        outcome(getattr(oc, cls)(), x, y, 10.0, -1.0), f"{cls} {shapes}")


def test_open_clip_mixed_feature_dtypes_raise_as_the_peer():
    oc = peers.open_clip_loss()
    x, y = torch.randn(5, 4), torch.randn(5, 4).double()
    for cls in ("ClipLoss", "SigLipLoss"):
        assert_same_outcome(outcome(getattr(co_open_clip, cls)(), x, y, 10.0, -1.0),
                            outcome(getattr(oc, cls)(), x, y, 10.0, -1.0), cls)


# -- sentence-transformers -----------------------------------------------------------------------

st_losses = pytest.importorskip("sentence_transformers.sentence_transformer.losses")


@pytest.mark.parametrize("case", ["fewer_docs", "more_docs", "one_dim", "fewer_hard_negatives", "dim_mismatch",
                                  "half", "bf16", "mixed", "empty", "three_dim"])
def test_mnrl_odd_embeddings(case):
    from contrastive_ops.compat import sentence_transformers as co_st

    q = torch.randn(4, 3)
    embeddings = {
        "fewer_docs": [q, torch.randn(3, 3)], "more_docs": [q, torch.randn(6, 3)],
        "one_dim": [torch.randn(3), torch.randn(3)], "fewer_hard_negatives": [q, torch.randn(4, 3), torch.randn(2, 3)],
        "dim_mismatch": [q, torch.randn(4, 2)], "half": [q.half(), torch.randn(4, 3).half()],
        "bf16": [q.bfloat16(), torch.randn(4, 3).bfloat16()], "mixed": [q, torch.randn(4, 3).double()],
        "empty": [q[:0], q[:0]], "three_dim": [torch.randn(2, 4, 3), torch.randn(2, 4, 3)],
    }[case]
    peer = st_losses.MultipleNegativesRankingLoss(None)
    ours = co_st.MultipleNegativesRankingLoss(None, backend="chunked")
    assert_same_outcome(outcome(ours.compute_loss_from_embeddings, embeddings, None),
                        outcome(peer.compute_loss_from_embeddings, embeddings, None), case,
                        inputs_dtype=getattr(embeddings[0], "dtype", None))
