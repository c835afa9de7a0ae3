"""The sentence-transformers compat classes against the installed sentence-transformers' own classes:
loss and every embedding's gradient to 1e-6 in float64, every direction × partition mode × hard
negatives × similarity; the cached class end to end through GradCache on a tiny local model."""
import logging

import peers
import pytest
import torch
from helpers import assert_close_rel
from tiny_models import tiny_bert

from contrastive_ops.backends import chunked

if peers.REQUIRE:  # a missing peer fails the collection instead of skipping
    import sentence_transformers  # noqa: F401
st_losses = pytest.importorskip("sentence_transformers.sentence_transformer.losses")
from sentence_transformers import SentenceTransformer, util
from sentence_transformers.sentence_transformer.modules import Pooling, WordEmbeddings
from sentence_transformers.sentence_transformer.modules.tokenizer import WhitespaceTokenizer

from contrastive_ops.compat import sentence_transformers as co_st

REL = 1e-6
BACKENDS = ["chunked", "naive"]
ALL = ("query_to_doc", "query_to_query", "doc_to_query", "doc_to_doc")
DIRECTIONS = [("query_to_doc",), ("query_to_doc", "doc_to_query"), ("query_to_doc", "query_to_query"),
              ("query_to_doc", "doc_to_doc"), ALL]
MODES = [(d, p) for d in DIRECTIONS for p in ("joint", "per_direction")
         if p == "joint" or not set(d) & {"query_to_query", "doc_to_doc"}]


@pytest.fixture
def fused_only(monkeypatch):
    """Fails a test whose compat class would fall back to the peer's own code."""

    def refuse(cls, reason):
        raise AssertionError(f"{cls} fell back to the peer's code: {reason}")

    monkeypatch.setattr(co_st, "_warn_once", refuse)


def _embeddings(batch, hard_negatives, dim=12):
    return [torch.randn(batch, dim, dtype=torch.float64) for _ in range(2 + hard_negatives)]


def _compare(ours, peer, embeddings, what):
    a = [e.clone().requires_grad_(True) for e in embeddings]
    b = [e.clone().requires_grad_(True) for e in embeddings]
    with chunked.block_size(4, 8):
        loss_ours = ours.compute_loss_from_embeddings(a, None)
        g_ours = torch.autograd.grad(loss_ours, a)
    loss_peer = peer.compute_loss_from_embeddings(b, None)
    g_peer = torch.autograd.grad(loss_peer, b)
    assert_close_rel(loss_ours, loss_peer, REL, f"{what} loss")
    for i, (x, y) in enumerate(zip(g_ours, g_peer)):
        assert_close_rel(x, y, REL, f"{what} d embeddings[{i}]")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("similarity", ["cos_sim", "dot_score"])
@pytest.mark.parametrize("hard_negatives", [0, 1, 3])
@pytest.mark.parametrize(("directions", "partition_mode"), MODES)
def test_mnrl_every_mode(directions, partition_mode, hard_negatives, similarity, backend, seed, fused_only):
    kw = {"directions": directions, "partition_mode": partition_mode, "similarity_fct": getattr(util, similarity),
          "scale": 20.0 if similarity == "cos_sim" else 0.5}
    peer = st_losses.MultipleNegativesRankingLoss(None, **kw)
    ours = co_st.MultipleNegativesRankingLoss(None, backend=backend, **kw)
    _compare(ours, peer, _embeddings(9, hard_negatives), f"{directions} {partition_mode} K={hard_negatives}")


def test_mnrl_a_batch_of_one(seed, fused_only):
    """One query: query_to_query and doc_to_doc have no candidates (the peer's -inf scores); the two
    remaining directions hold the positive pair alone, so the loss is log 2 and every gradient 0
    (the peer's is rounding noise)."""
    peer = st_losses.MultipleNegativesRankingLoss(None, directions=ALL)
    ours = co_st.MultipleNegativesRankingLoss(None, directions=ALL, backend="chunked")
    embeddings = [e.requires_grad_(True) for e in _embeddings(1, 0)]
    loss_ours, loss_peer = (m.compute_loss_from_embeddings(embeddings, None) for m in (ours, peer))
    assert_close_rel(loss_ours, loss_peer, REL, "batch of one")
    assert_close_rel(loss_ours, torch.tensor(2.0, dtype=torch.float64).log(), REL, "log 2")
    for g in torch.autograd.grad(loss_ours, embeddings):
        assert float(g.abs().max()) < 1e-12


HARDNESS = ["hard_negatives", "in_batch_negatives", "all_negatives"]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("similarity", ["cos_sim", "dot_score"])
@pytest.mark.parametrize("hard_negatives", [0, 1, 3])
@pytest.mark.parametrize("mode", HARDNESS)
@pytest.mark.parametrize(("directions", "partition_mode"), MODES)
def test_mnrl_hardness_modes(mode, hard_negatives, directions, partition_mode, similarity, backend, seed, fused_only):
    """The detached penalty ``α·sim`` on the fused path: the penalized class at scale ``s + α`` with
    its gradients scaled back to ``s``."""
    kw = {"hardness_mode": mode, "hardness_strength": 5.0, "directions": directions,
          "partition_mode": partition_mode, "similarity_fct": getattr(util, similarity),
          "scale": 20.0 if similarity == "cos_sim" else 0.5}
    peer = st_losses.MultipleNegativesRankingLoss(None, **kw)
    ours = co_st.MultipleNegativesRankingLoss(None, backend=backend, **kw)
    _compare(ours, peer, _embeddings(9, hard_negatives), f"hardness {mode} K={hard_negatives} {directions}")


@pytest.mark.parametrize("mode", HARDNESS)
def test_mnrl_hardness_strength_zero_is_no_penalty(mode, seed, fused_only):
    """Strength 0 has no effect in the peer (which warns at construction)."""
    quiet = co_st.MultipleNegativesRankingLoss(None, hardness_mode=mode, hardness_strength=0.0, backend="chunked")
    _compare(quiet, st_losses.MultipleNegativesRankingLoss(None), _embeddings(8, 2), "strength 0")


def test_mnrl_other_similarity_is_the_peers_own(seed, caplog):
    peer = st_losses.MultipleNegativesRankingLoss(None, similarity_fct=util.euclidean_sim, scale=1.0)
    ours = co_st.MultipleNegativesRankingLoss(None, similarity_fct=util.euclidean_sim, scale=1.0)
    with caplog.at_level(logging.WARNING, logger="contrastive_ops.compat.sentence_transformers"):
        _compare(ours, peer, _embeddings(8, 1), "euclidean_sim")
    assert any("similarity_fct" in r.getMessage() for r in caplog.records)


def test_peer_argument_errors_are_the_peers():
    for kw, match in (({"scale": 0.0}, "Scale must be a positive value"),
                      ({"directions": ("doc_to_query",)}, "'query_to_doc' direction is required"),
                      ({"partition_mode": "per_direction", "directions": ALL}, "partition_mode='per_direction'")):
        with pytest.raises(ValueError, match=match):
            st_losses.MultipleNegativesRankingLoss(None, **kw)
        with pytest.raises(ValueError, match=match):
            co_st.MultipleNegativesRankingLoss(None, **kw)


def _tiny_model(dim=16):
    """Word embeddings + mean pooling over a whitespace vocabulary built here (no download); its
    inputs split along the batch, as GradCache needs."""
    words = ["the", "a", "cat", "dog", "sat", "on", "mat", "red", "blue", "green", "fish", "bird", "tree", "car", "road", "sky", "sun", "moon", "runs", "fast", "slow", "big", "small", "old", "new"]
    tokenizer = WhitespaceTokenizer(vocab=words, stop_words=set(), do_lower_case=False)
    embeddings = WordEmbeddings(tokenizer, torch.randn(len(words), dim), update_embeddings=True)
    return SentenceTransformer(modules=[embeddings, Pooling(dim, "mean")], device="cpu"), words


def _batch(model, words, batch, columns):
    generator = torch.Generator().manual_seed(int(torch.randint(0, 2**31, ())))
    texts = [[" ".join(words[int(i)] for i in torch.randint(0, len(words), (4,), generator=generator))
              for _ in range(batch)] for _ in range(columns)]
    return [model.preprocess(column) for column in texts]


def _model_grads(model, loss_fn, features):
    model.zero_grad()
    loss = loss_fn([dict(f) for f in features], None)
    loss.backward()
    # parameters the loss does not reach (a BERT's pooler) have no gradient: zero in both
    return loss.detach(), [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize(("directions", "hardness"), [(("query_to_doc",), None), (ALL, None),
                                                     (("query_to_doc",), "in_batch_negatives")])
@pytest.mark.parametrize("cls", ["MultipleNegativesRankingLoss", "CachedMultipleNegativesRankingLoss"])
def test_end_to_end_through_the_model(cls, directions, hardness, seed, fused_only):
    """The loss and the model's parameter gradients, through the peer's own forward (and GradCache
    with mini-batches of 3 for the cached class), with one hard-negative column."""
    torch.manual_seed(int(torch.randint(0, 2**31, ())))
    model, words = _tiny_model()
    model.double()
    features = _batch(model, words, 10, 3)
    kw = {"directions": directions} | ({"mini_batch_size": 3} if cls.startswith("Cached") else {})
    if hardness is not None:
        kw |= {"hardness_mode": hardness, "hardness_strength": 9.0}
    peer = getattr(st_losses, cls)(model, **kw)
    ours = getattr(co_st, cls)(model, backend="chunked", **kw)
    loss_peer, g_peer = _model_grads(model, peer, features)
    loss_ours, g_ours = _model_grads(model, ours, features)
    assert_close_rel(loss_ours, loss_peer, REL, f"{cls} loss")
    for x, y in zip(g_ours, g_peer):
        assert_close_rel(x, y, REL, f"{cls} parameter gradient")


def test_matryoshka_wraps_the_fused_class(seed, fused_only):
    torch.manual_seed(int(torch.randint(0, 2**31, ())))
    model, words = _tiny_model()
    model.double()
    features = _batch(model, words, 8, 2)
    peer = st_losses.MatryoshkaLoss(model, st_losses.MultipleNegativesRankingLoss(model), [16, 8, 4])
    ours = st_losses.MatryoshkaLoss(model, co_st.MultipleNegativesRankingLoss(model, backend="chunked"), [16, 8, 4])
    loss_peer, g_peer = _model_grads(model, peer, features)
    loss_ours, g_ours = _model_grads(model, ours, features)
    assert_close_rel(loss_ours, loss_peer, REL, "Matryoshka loss")
    for x, y in zip(g_ours, g_peer):
        assert_close_rel(x, y, REL, "Matryoshka parameter gradient")


@pytest.mark.parametrize("name", ["MultipleNegativesSymmetricRankingLoss", "CachedMultipleNegativesSymmetricRankingLoss"])
def test_symmetric_aliases(name, seed, fused_only):
    peer_cls, ours_cls = getattr(st_losses, name, None), getattr(co_st, name, None)
    if peer_cls is None:
        pytest.skip(f"this sentence-transformers has no {name}")
    torch.manual_seed(int(torch.randint(0, 2**31, ())))
    model, words = _tiny_model()
    model.double()
    features = _batch(model, words, 8, 2)
    kw = {"mini_batch_size": 4} if name.startswith("Cached") else {}
    peer, ours = peer_cls(model, **kw), ours_cls(model, backend="chunked", **kw)
    assert isinstance(ours, peer_cls) and ours.directions == peer.directions
    loss_peer, g_peer = _model_grads(model, peer, features)
    loss_ours, g_ours = _model_grads(model, ours, features)
    assert_close_rel(loss_ours, loss_peer, REL, f"{name} loss")
    for x, y in zip(g_ours, g_peer):
        assert_close_rel(x, y, REL, f"{name} parameter gradient")


def test_config_is_the_peers():
    kw = {"scale": 10.0, "directions": ("query_to_doc", "doc_to_query"), "partition_mode": "per_direction"}
    assert co_st.MultipleNegativesRankingLoss(None, **kw).get_config_dict() == \
        st_losses.MultipleNegativesRankingLoss(None, **kw).get_config_dict()


@pytest.mark.parametrize("hardness", [None, "in_batch_negatives"])
def test_mnrl_on_the_triton_backend(hardness, seed, fused_only):
    """Every direction with hard negatives on the Triton kernels (the interpreter on a CPU), fp32
    against the peer in float64; with a hardness penalty too."""
    import contrastive_ops as co

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    available, why = co.backend_status("triton", device)
    if not available:
        pytest.skip(f"triton backend: {why}")
    embeddings = _embeddings(9, 1)
    kw = {"directions": ALL} | ({} if hardness is None else {"hardness_mode": hardness, "hardness_strength": 5.0})
    peer = st_losses.MultipleNegativesRankingLoss(None, **kw)
    ours = co_st.MultipleNegativesRankingLoss(None, backend="triton", **kw)
    a = [e.float().to(device).requires_grad_(True) for e in embeddings]
    b = [e.clone().requires_grad_(True) for e in embeddings]
    loss_ours, loss_peer = ours.compute_loss_from_embeddings(a, None), peer.compute_loss_from_embeddings(b, None)
    assert_close_rel(loss_ours.double().cpu(), loss_peer, 1e-5, "triton loss")
    for i, (x, y) in enumerate(zip(torch.autograd.grad(loss_ours, a), torch.autograd.grad(loss_peer, b))):
        assert_close_rel(x.double().cpu(), y, 1e-5, f"triton d embeddings[{i}]")


# --- GISTEmbedLoss / CachedGISTEmbedLoss -----------------------------------------------------------

GIST_WORDS = ["the", "a", "cat", "dog", "sat", "on", "mat", "red", "blue", "green", "fish", "bird", "tree", "car",
              "road", "sky", "sun", "moon", "runs", "fast", "slow", "big", "small", "old", "new"]


def _gist_gap(guide, features, margin_strategy, margin):
    """The smallest distance of a guide similarity to its row's threshold over the pairs the filter
    decides (all but each anchor's positive), in float64: the decision is discontinuous there."""
    with torch.no_grad():
        g = [torch.nn.functional.normalize(guide(dict(f))["sentence_embedding"], dim=1) for f in features]
    g_pos = (g[0] * g[1]).sum(1, keepdim=True)
    limit = g_pos - margin if margin_strategy == "absolute" else g_pos - g_pos.abs() * margin
    ap = g[0] @ g[1].T
    ap.fill_diagonal_(float("inf"))
    sims = [ap, g[0] @ g[0].T, g[1] @ g[1].T] + [g[0] @ x.T for x in g[2:]]
    return min(float((s - limit).abs().min()) for s in sims)


@pytest.fixture(scope="module")
def gist_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("gist")
    model = tiny_bert(root / "model", GIST_WORDS, 16)
    same_vocab_guide = tiny_bert(root / "guide", GIST_WORDS, 8)
    other_vocab_guide = tiny_bert(root / "other", GIST_WORDS[::-1] + ["zebra"], 8)  # re-tokenizes
    return model, {"same_vocab": same_vocab_guide, "other_vocab": other_vocab_guide}


def _gist_batch(model, guide, columns, kw, batch=10):
    """Texts whose guide similarities keep clear of every threshold (redrawn otherwise)."""
    for _ in range(50):
        features = _batch(model, GIST_WORDS, batch, columns)
        guide_features = [guide.preprocess(model.tokenizer.batch_decode(f["input_ids"], skip_special_tokens=True))
                          for f in features]
        if _gist_gap(guide, guide_features, kw.get("margin_strategy", "absolute"), kw.get("margin", 0.0)) > 1e-9:
            return features
    raise RuntimeError("no batch with separated guide similarities")


@pytest.mark.parametrize("cls", ["GISTEmbedLoss", "CachedGISTEmbedLoss"])
@pytest.mark.parametrize("guide_kind", ["same_vocab", "other_vocab"])
@pytest.mark.parametrize(("columns", "kw"), [
    (2, {}),
    (3, {"margin_strategy": "absolute", "margin": 0.05, "temperature": 0.05}),
    (3, {"margin_strategy": "relative", "margin": 0.1, "contrast_anchors": False}),
    (2, {"contrast_positives": False, "contrast_anchors": False}),
])
def test_gist_end_to_end_through_the_models(cls, guide_kind, columns, kw, gist_models, seed, fused_only):
    """The loss and the model's parameter gradients through the peer's own embedding (and GradCache with
    mini-batches of 3), guided by a model with the same vocabulary or one that re-tokenizes."""
    model, guides = gist_models
    guide = guides[guide_kind]
    torch.manual_seed(int(torch.randint(0, 2**31, ())))
    features = _gist_batch(model, guide, columns, kw)
    extra = {"mini_batch_size": 3} if cls.startswith("Cached") else {}
    peer = getattr(st_losses, cls)(model, guide, **kw, **extra)
    ours = getattr(co_st, cls)(model, guide, backend="chunked", **kw, **extra)
    assert peer.must_retokenize == ours.must_retokenize == (guide_kind == "other_vocab")
    loss_peer, g_peer = _model_grads(model, peer, features)
    loss_ours, g_ours = _model_grads(model, ours, features)
    assert_close_rel(loss_ours, loss_peer, REL, f"{cls} loss")
    # all parameters as one vector: some (the last layer norm's bias, under the cosine) have an exactly
    # zero gradient, which both compute as rounding noise of 1e-20
    assert_close_rel(torch.cat([g.flatten() for g in g_ours]), torch.cat([g.flatten() for g in g_peer]), REL,
                     f"{cls} parameter gradients")


def test_gist_config_and_errors_are_the_peers(gist_models):
    model, guides = gist_models
    kw = {"temperature": 0.02, "margin_strategy": "relative", "margin": 0.1, "contrast_positives": False}
    assert co_st.GISTEmbedLoss(model, guides["same_vocab"], **kw).get_config_dict() == \
        st_losses.GISTEmbedLoss(model, guides["same_vocab"], **kw).get_config_dict()
    for cls in ("GISTEmbedLoss", "CachedGISTEmbedLoss"):
        with pytest.raises(ValueError, match="margin_strategy must be 'absolute' or 'relative'"):
            getattr(st_losses, cls)(model, guides["same_vocab"], margin_strategy="soft")
        with pytest.raises(ValueError, match="margin_strategy must be 'absolute' or 'relative'"):
            getattr(co_st, cls)(model, guides["same_vocab"], margin_strategy="soft")
    features = _batch(model, GIST_WORDS, 4, 4)
    for loss in (st_losses.GISTEmbedLoss(model, guides["same_vocab"]), co_st.GISTEmbedLoss(model, guides["same_vocab"])):
        with pytest.raises(ValueError, match="Expected 2 or 3 embeddings, got 4"):
            loss([dict(f) for f in features], None)


@pytest.mark.parametrize("mode", HARDNESS)
def test_ranking_loss_hardness_with_a_learnable_scale(mode, seed):
    """``ranking_loss`` with a 0-d tensor scale: the same loss and embedding gradients as the float
    scale, and the scale's gradient equal to a central difference of the loss (float64)."""
    embeddings = [e.requires_grad_(True) for e in _embeddings(7, 2)]
    kw = {"hardness_mode": mode, "hardness_strength": 5.0, "directions": ALL, "backend": "chunked"}
    scale = torch.tensor(20.0, dtype=torch.float64, requires_grad=True)
    loss = co_st.ranking_loss(embeddings[0], embeddings[1:], scale=scale, **kw)
    grads = torch.autograd.grad(loss, embeddings + [scale])
    as_float = co_st.ranking_loss(embeddings[0], embeddings[1:], scale=20.0, **kw)
    assert_close_rel(loss, as_float, 1e-12, "loss")
    for g, g_float in zip(grads[:-1], torch.autograd.grad(as_float, embeddings)):
        assert_close_rel(g, g_float, 1e-12, "embedding gradient")
    with torch.no_grad():
        h = 1e-5
        up, down = (co_st.ranking_loss(embeddings[0], embeddings[1:], scale=20.0 + t, **kw) for t in (h, -h))
    assert_close_rel(grads[-1], (up - down) / (2 * h), 1e-6, "d loss / d scale")
