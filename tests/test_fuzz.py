"""Property-based fuzzing of the public API (Hypothesis).

* valid inputs — random losses, shapes (N, M, D from 1), dtypes, layouts (transposed, expanded,
  strided and sliced views), zero rows, huge and tiny magnitudes, temperatures (floats and learnable
  tensors), options and reductions: loss and every input's gradient against the float64 naive
  reference on the very same (rounded) values, on ``naive`` and ``chunked`` (small tiles), and a few
  tiny cases on ``triton`` (Triton's interpreter on a CPU machine);
* invalid inputs — one argument of a valid call corrupted: a ``TypeError``/``ValueError`` whose
  message names that argument;
* drop-ins — the compat classes against their installed peers on the same odd inputs: accepted or
  raised alike (the same exception type), the same value and dtype.

Each run draws fresh cases. ``CONTRASTIVE_OPS_FUZZ_EXAMPLES=N`` multiplies nothing but sets the
examples per test (default: a few hundred cases in all, under two minutes on two cores); e.g.
``CONTRASTIVE_OPS_FUZZ_EXAMPLES=2000`` for a long run.
"""
from __future__ import annotations

import math
import os
import warnings

import peers
import pytest
import torch

hypothesis = pytest.importorskip("hypothesis", reason="pip install hypothesis (the 'test' extra)")
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from test_compat_odd_inputs import assert_same_outcome, outcome

import contrastive_ops as co
from contrastive_ops.backends import chunked

LONG = int(os.environ.get("CONTRASTIVE_OPS_FUZZ_EXAMPLES", "0"))
TRITON, TRITON_WHY = co.backend_status("triton", torch.device("cpu"))


def fuzz_settings(default: int):
    return settings(max_examples=LONG or default, deadline=None, database=None, derandomize=False,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much])


# ---------------------------------------------------------------------------------------------
# valid inputs against the float64 reference
# ---------------------------------------------------------------------------------------------

LOSSES = ("info_nce", "info_nce_symmetric", "info_nce_queue", "nt_xent", "clip", "supcon", "dcl", "ring",
          "hard_negative", "siglip", "gist")
LAYOUTS = ("contiguous", "transposed", "expanded", "column_stride", "row_slice")
#: norm-wise relative tolerance per dtype (the reference sees the same rounded inputs)
REL = {torch.float64: 1e-9, torch.float32: 2e-4, torch.float16: 3e-2, torch.bfloat16: 2e-1}


def _layout(values: torch.Tensor, layout: str) -> torch.Tensor:
    """The same values [N, D] in another memory layout (a view where the layout allows one)."""
    n, d = values.shape
    if layout == "transposed":
        return values.T.contiguous().T
    if layout == "expanded" and n > 1:
        return values[:1].expand(n, d)  # every row the first one (stride 0)
    if layout == "column_stride":
        wide = torch.zeros(n, 2 * d, dtype=values.dtype)
        wide[:, ::2] = values
        return wide[:, ::2]
    if layout == "row_slice":
        tall = torch.zeros(2 * n, d, dtype=values.dtype)
        tall[::2] = values
        return tall[::2]
    return values.clone()


@st.composite
def matrices(draw, n, d, dtype, *, salt=0, zero_rows=True):
    """An [n, d] tensor of ``dtype``: normal entries at one magnitude, some rows zero, one layout.
    ``salt`` keeps the tensors of one case apart when Hypothesis shrinks every seed to 0 (equal rows
    would put exact ties at the Ring's and the guide's thresholds, decided by the last bit of a
    tiling-dependent product)."""
    magnitude = draw(st.sampled_from([1.0, 1.0, 1e-3, 1e3] + ([1e20, 1e-9] if dtype in (torch.float32, torch.float64)
                                                              else [])))
    seed = draw(st.integers(0, 2**31 - 1))
    values = torch.randn(n, d, generator=torch.Generator().manual_seed(seed * 7 + salt), dtype=torch.float64) * magnitude
    if zero_rows and n > 1 and draw(st.booleans()):
        values[draw(st.integers(0, n - 1))] = 0
    layout = draw(st.sampled_from(LAYOUTS))
    return _layout(values.to(dtype), layout)


@st.composite
def valid_cases(draw, *, backends=("naive", "chunked"), dtypes=(torch.float64, torch.float32, torch.float16,
                                                                torch.bfloat16), max_n=9, max_d=8):
    loss = draw(st.sampled_from(LOSSES))
    backend = draw(st.sampled_from(backends))
    dtype = draw(st.sampled_from(dtypes))
    n = draw(st.integers(1, max_n))
    d = draw(st.integers(1, max_d))
    r = draw(st.integers(1, 4))
    tensors = {"a": draw(matrices(n, d, dtype, salt=1)), "b": draw(matrices(n, d, dtype, salt=2)),
               "e": draw(matrices(r, d, dtype, salt=3))}
    labels = torch.tensor(draw(st.lists(st.integers(0, 3), min_size=n, max_size=n)), dtype=torch.long)
    temperature = draw(st.floats(0.05, 2.0))
    learnable = draw(st.booleans())
    options = {
        "reduction": draw(st.sampled_from(["mean", "sum", "none"])),
        "normalize": draw(st.booleans()) if loss in ("clip", "siglip") else True,
        "outer": draw(st.sampled_from([1.0, 0.5, 0.25])),
        "inner": draw(st.sampled_from([0.0, 0.1, 0.5])),
        "tau_plus": draw(st.sampled_from([0.0, 0.1])),
        "beta": draw(st.sampled_from([0.0, 0.5, 1.0])),
        "with_labels": draw(st.booleans()),
    }
    blocks = (draw(st.integers(1, 5)), draw(st.integers(1, 5)))
    return loss, backend, dtype, tensors, labels, temperature, learnable, options, blocks


def _call(loss, tensors, labels, temperature, options, backend):
    """The loss of one case on ``tensors`` (a dict of a, b, e and the temperature tensor ``t``)."""
    a, b, e, t = tensors["a"], tensors["b"], tensors["e"], tensors.get("t", temperature)
    common = {"reduction": options["reduction"], "backend": backend}
    fn_labels = labels if options["with_labels"] else None
    if loss == "info_nce":
        return co.info_nce(a, b, temperature=t, labels=fn_labels, **common)
    if loss == "info_nce_symmetric":
        return co.info_nce(a, b, temperature=t, symmetric=True, labels=fn_labels, **common)
    if loss == "info_nce_queue":
        return co.info_nce(a, b, e, temperature=t, in_batch_negatives=False, **common)
    if loss == "nt_xent":
        return co.nt_xent(a, b, temperature=t, **common)
    if loss == "clip":
        return co.clip_loss(a, b, 1.0 / t,
                            normalize=options["normalize"], labels=fn_labels, **common)
    if loss == "supcon":
        return co.supcon_loss(a, labels, temperature=t, **common)
    if loss == "dcl":
        return co.dcl_loss(a, b, temperature=t, **common)
    if loss == "ring":
        return co.ring_info_nce(a, b, e, temperature=t, outer=options["outer"], inner=options["inner"], **common)
    if loss == "hard_negative":
        return co.hard_negative_nce(a, b, temperature=t, beta=options["beta"], tau_plus=options["tau_plus"], **common)
    if loss == "siglip":
        return co.siglip_loss(a, b, 1.0 / t, -1.0, normalize=options["normalize"], **common)
    # guides of their own (random): a guide equal to the rows would put ties at the filter's threshold,
    # decided by the last bit of the guide's products, which depends on the tiling
    gen = torch.Generator().manual_seed(a.shape[0] * 1000 + e.shape[0])
    guides = [torch.randn(x.shape[0], 3, generator=gen, dtype=torch.float64) for x in (a, b, e)]
    return co.gist_loss(a, b, e, anchor_guide=guides[0], positive_guide=guides[1], negative_guide=guides[2],
                        temperature=t, **common)


def _leaves(tensors, temperature, learnable, dtype, convert=None):
    """Fresh leaves of the case's tensors, in ``convert`` (default: their own dtype), each as
    ``(leaf, input)``: views are re-made over the new leaves, so their layouts survive (an expanded
    input is one leaf row expanded; a strided one a leaf of the same strides)."""
    out = {}
    for key, x in tensors.items():
        base = x.detach()
        target = convert or base.dtype
        if base.shape[0] > 1 and base.stride(0) == 0:
            leaf = base[:1].to(target).clone().requires_grad_(True)
            out[key] = (leaf, leaf.expand(base.shape))
            continue
        leaf = torch.empty_strided(base.shape, base.stride(), dtype=target).copy_(base).requires_grad_(True)
        out[key] = (leaf, leaf)
    if learnable:
        t = torch.tensor(temperature, dtype=torch.float64 if dtype == torch.float64 else torch.float32,
                         requires_grad=True)
        out["t"] = (t, t)
    return out


def _norm_error(actual, expected) -> float:
    actual, expected = actual.detach().double(), expected.detach().double()
    scale = max(expected.abs().max().item() if expected.numel() else 0.0, 1.0)
    return ((actual - expected).abs().max().item() if expected.numel() else 0.0) / scale


def _lse_rounding_of_the_temperature_gradient(tensors, temperature, options, dtype, terms: int) -> float:
    """The absolute error the log-sum-exp form allows in the temperature's gradient.

    Every backend (PyTorch's ``logsumexp`` backward as much as the tiles) forms a probability as
    ``exp(s - lse)``; ``lse`` rounds to ``|lse|·u`` (u: the unit roundoff), a relative error of that size in
    every probability. The temperature's gradient ``-(1/t)·Σ s·∂L/∂s`` weighs each by ``|s|/t``: a row adds
    up to ``2·|lse|·u·max|s|/t`` (its probabilities sum to 1, its targets too), and the rows' weights add up
    to the loss's ``terms`` (its unreduced size) under ``sum`` and ``none``, to 1 under ``mean``. Where the
    exact gradient is 0 (every logit equal, say) this is all that is left to compare.
    """
    a, b, e = (tensors[k].detach().double() for k in "abe")
    columns = torch.cat([b, e])
    if options["normalize"]:
        a, columns = torch.nn.functional.normalize(a, dim=1), torch.nn.functional.normalize(columns, dim=1)
    if a.numel() == 0 or columns.numel() == 0:
        return 0.0
    largest = (a @ columns.T).abs().max().item() / temperature * (1.0 + options["beta"])
    lse = largest + math.log(columns.shape[0] + a.shape[0])
    weight = 1.0 if options["reduction"] == "mean" else float(terms)
    return 2 * (torch.finfo(dtype).eps / 2) * weight * lse * largest / temperature


def _ring_boundaries_are_clear(tensors, temperature, options, dtype) -> bool:
    """Whether every row's Ring band has its boundaries clear of near-ties that the logits' rounding in
    ``dtype`` could decide otherwise than float64 does (the band is a discontinuous function of the
    logits: the two precisions are compared only where they select alike; an exact float64 tie counts as
    near too, since the unit rows' rounding in ``dtype`` can split it)."""
    a, b, e = (tensors[k].detach().double() for k in "abe")
    s = torch.nn.functional.normalize(a, dim=1) @ torch.nn.functional.normalize(torch.cat([b, e]), dim=1).T
    s = s / temperature
    n = a.shape[0]
    margin = 64 * torch.finfo(dtype).eps * max(1.0, s.abs().max().item())
    for i in range(n):
        keys = s[i, :n][torch.arange(n) != i]
        candidates = torch.cat([keys, s[i, n:]]).sort(descending=True).values
        m = candidates.numel()
        hi = math.floor(options["outer"] * m)
        lo = math.floor(options["inner"] * hi)
        if hi <= lo:
            continue
        for k in (lo, hi):  # the boundary between ranks k - 1 and k
            if 0 < k < m and candidates[k - 1] - candidates[k] < margin:
                return False
    return True


def _logit_magnitude(tensors, temperature) -> float:
    """The largest |logit| of a case without normalization, in float64."""
    a = tensors["a"].detach().double()
    columns = torch.cat([tensors["b"].detach().double(), tensors["e"].detach().double()])
    if a.numel() == 0 or columns.numel() == 0:
        return 0.0
    return (a @ columns.T).abs().max().item() / temperature


def check_case(case):
    loss, backend, dtype, tensors, labels, temperature, learnable, options, blocks = case
    if backend == "triton" and dtype in (torch.float64, torch.bfloat16):
        return
    if loss == "ring":
        # float64 too: a GEMM may round the products of equal columns apart (its edge tiles sum in
        # another order), so an exact tie is decided by each backend's own rounding
        assume(_ring_boundaries_are_clear(tensors, temperature, options, dtype))
    if not options["normalize"] and dtype != torch.float64 and any(x.abs().max() > 10 for x in tensors.values()):
        # unnormalized logits of large rows: past fp32's range they are inf (documented), and well
        # before it the softmax is as ill-conditioned as the logits are large: nothing to compare
        return
    if not options["normalize"] and _logit_magnitude(tensors, temperature) * torch.finfo(dtype).eps > REL[dtype] / 100:
        # the log-sum-exp form (PyTorch's own logsumexp backward as much as our tiles) forms each
        # probability as exp(s - lse): lse rounds to |s|·eps, an error of that size in every exponent
        return
    ours_leaves = _leaves(tensors, temperature, learnable, dtype)
    ref_leaves = _leaves(tensors, temperature, learnable, torch.float64, convert=torch.float64)
    with chunked.block_size(*blocks):
        ours = _call(loss, {k: v[1] for k, v in ours_leaves.items()}, labels, temperature, options, backend)
    expected = _call(loss, {k: v[1] for k, v in ref_leaves.items()}, labels, temperature, options, "naive")
    what = f"{loss} on {backend} in {dtype}, options {options}, blocks {blocks}"
    assert ours.shape == expected.shape, what
    assert ours.dtype == (torch.float64 if dtype == torch.float64 else torch.float32), what
    assert not ours.isnan().any(), f"{what}: NaN loss"
    assert _norm_error(ours, expected) <= REL[dtype], f"{what}: loss {ours} vs {expected}"
    keys = [k for k in ours_leaves]
    # gradients of the inputs themselves (an expanded input's per row: their sum cancels ill-conditioned)
    g_ours = torch.autograd.grad(ours.sum(), [ours_leaves[k][1] for k in keys], allow_unused=True,
                                 materialize_grads=True)
    g_ref = torch.autograd.grad(expected.sum(), [ref_leaves[k][1] for k in keys], allow_unused=True,
                                materialize_grads=True)
    for key, mine, ref in zip(keys, g_ours, g_ref):
        leaf = ours_leaves[key][1].detach()
        if leaf.dim() == 2 and key != "t":
            # a zero row's gradient is g/eps = 1e12·g (F.normalize's): its rounding noise is amplified
            # 1e12 times, and in fp16 it overflows to ±inf (NaN where ±inf meet: documented); the
            # other rows must agree
            keep = (leaf != 0).any(dim=1)
            if dtype != torch.float16:
                assert not mine.isnan().any(), f"{what}: NaN gradient of {key}"
            assert not mine[keep].isnan().any(), f"{what}: NaN gradient of {key}"
            # a row's gradient passes the normalization's backward, which scales by 1/‖x‖ (with the
            # logits' scale 1/t): its rounding error grows alike; the bound of each row says so
            norms = torch.linalg.vector_norm(leaf.double(), dim=1)[keep]
            growth = (1.0 / (temperature * norms)).clamp(min=1.0)
            scale = max(ref[keep].abs().max().item() if keep.any() else 0.0, 1.0)
            err = (mine[keep].double() - ref[keep].double()).abs().amax(dim=1) if keep.any() else norms
            bound = REL[dtype] * 5 * torch.maximum(growth, torch.full_like(growth, scale))
            assert (err <= bound).all(), f"{what}: gradient of {key}: errors {err} > {bound}"
            continue
        assert not mine.isnan().any(), f"{what}: NaN gradient of {key}"
        if key == "t":
            err = (mine.double() - ref.double()).abs().item()
            scale = max(ref.abs().item(), 1.0)
            terms = _call(loss, {k: v[1].detach() for k, v in ref_leaves.items()}, labels, temperature,
                          {**options, "reduction": "none"}, "naive").numel()
            bound = REL[dtype] * 5 * scale + _lse_rounding_of_the_temperature_gradient(tensors, temperature,
                                                                                     options, dtype, terms)
            assert err <= bound, f"{what}: gradient of t: error {err} > {bound}"
            continue
        assert _norm_error(mine, ref) <= REL[dtype] * 5, f"{what}: gradient of {key}"


@fuzz_settings(400)
@given(valid_cases())
def test_valid_inputs_match_the_float64_reference(case):
    check_case(case)


@pytest.mark.interpreter
@pytest.mark.skipif(not TRITON, reason=f"triton backend: {TRITON_WHY}")
@fuzz_settings(10)
@given(valid_cases(backends=("triton",), dtypes=(torch.float32, torch.float16), max_n=4, max_d=4))
def test_valid_inputs_on_triton(case):
    loss, _, _, tensors = case[:4]
    if any(x.abs().max() > 1e15 for x in tensors.values()) and loss not in ("info_nce_queue",):
        # the tiles' raw dot products of two huge rows overflow fp32 (docs/losses.md, Promises)
        return
    check_case(case)


# ---------------------------------------------------------------------------------------------
# invalid inputs: a TypeError/ValueError naming the argument
# ---------------------------------------------------------------------------------------------

X, Y = torch.randn(6, 4), torch.randn(6, 4)
LABELS = torch.tensor([0, 1, 0, 1, 2, 2])

#: (argument, bad value, loss names that take it)
CORRUPTIONS = [
    ("query", X.numpy()), ("query", X.long()), ("query", X[0]), ("query", X[:0]), ("query", X[:, :0]),
    ("query", X.to_sparse()), ("query", X.to(torch.complex64)), ("query", X[None]),
    ("key", Y[:3]), ("key", Y[:, :3]), ("key", Y.double()),
    ("temperature", 0.0), ("temperature", -1.0), ("temperature", math.nan), ("temperature", math.inf),
    ("temperature", 1e-40), ("temperature", "0.1"), ("temperature", True), ("temperature", torch.tensor(1)),
    ("temperature", torch.ones(2)), ("temperature", None),
    ("reduction", "avg"), ("reduction", None), ("backend", "fast"), ("backend", 3),
    ("normalize", 1), ("normalize", "yes"),
    ("labels", LABELS.float()), ("labels", LABELS[:3]), ("labels", LABELS[:, None]), ("labels", LABELS.tolist()),
    ("process_group", "world"), ("process_group", [0]),
]
CALLS = {
    "info_nce": lambda a: co.info_nce(a["query"], a["key"], temperature=a["temperature"], reduction=a["reduction"],
                                      backend=a["backend"], normalize=a["normalize"], labels=a["labels"],
                                      process_group=a["process_group"]),
    "ring_info_nce": lambda a: co.ring_info_nce(a["query"], a["key"], temperature=a["temperature"],
                                                reduction=a["reduction"], backend=a["backend"],
                                                normalize=a["normalize"], labels=a["labels"],
                                                process_group=a["process_group"]),
    "nt_xent": lambda a: co.nt_xent(a["query"], a["key"], temperature=a["temperature"], reduction=a["reduction"],
                                    backend=a["backend"], normalize=a["normalize"], process_group=a["process_group"]),
    "supcon_loss": lambda a: co.supcon_loss(a["query"], a["labels"] if a["labels"] is not None else LABELS,
                                            temperature=a["temperature"], reduction=a["reduction"],
                                            backend=a["backend"], normalize=a["normalize"],
                                            process_group=a["process_group"]),
}
#: the name a message uses for an argument, per loss (the functions name their own arguments)
NAMES = {"nt_xent": {"query": "z1", "key": "z2"}, "supcon_loss": {"query": "features"}}


@fuzz_settings(150)
@given(st.sampled_from(sorted(CALLS)), st.sampled_from(CORRUPTIONS))
def test_invalid_inputs_raise_a_named_error(loss, corruption):
    argument, value = corruption
    if loss in ("nt_xent",) and argument == "labels":
        return
    if loss == "supcon_loss" and argument == "key":
        return
    args = {"query": X, "key": Y, "temperature": 0.1, "reduction": "mean", "backend": "chunked", "normalize": True,
            "labels": None, "process_group": None, argument: value}
    name = NAMES.get(loss, {}).get(argument, argument)
    if loss == "supcon_loss" and argument == "temperature" and value is None:
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises((TypeError, ValueError)) as info:
            CALLS[loss](args)
    message = str(info.value)
    shown = {"key": ("key", "z2", "feature dims", "batch sizes", "dtypes differ"),
             "query": (name, "feature dims", "batch sizes", "dtypes differ")}.get(argument, (name,))
    assert any(word in message for word in shown), f"{loss}({argument}={value!r}): {message!r} names no {shown}"


# ---------------------------------------------------------------------------------------------
# drop-ins against their installed peers
# ---------------------------------------------------------------------------------------------

PEER_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
ODD_NUMBERS = (0.1, 0.5, 2.0, -0.5, 0.0, math.inf, math.nan, 1e-40, 100.0)


@st.composite
def peer_features(draw, dtype, n=None):
    n = draw(st.integers(1, 8)) if n is None else n
    d = draw(st.integers(1, 6))
    seed = draw(st.integers(0, 2**31 - 1))
    gen = torch.Generator().manual_seed(seed)
    x, y = torch.randn(n, d, generator=gen).to(dtype), torch.randn(n, d, generator=gen).to(dtype)
    if n > 1 and dtype in (torch.float32, torch.float64) and draw(st.booleans()):
        x[draw(st.integers(0, n - 1))] = 0  # (the peers' fp16 F.normalize makes a zero row NaN: docs/compat.md)
    return x, y


@fuzz_settings(100)
@given(st.data())
def test_pytorch_metric_learning_against_the_peer(data):
    from contrastive_ops.compat import pytorch_metric_learning as co_pml

    cls = data.draw(st.sampled_from(["NTXentLoss", "SupConLoss"]))
    # SupConLoss's AvgNonZeroReducer keeps the anchor losses > 0: in fp16 an anchor whose loss rounds
    # to either side of 0 halves or doubles the mean, so fp16 is compared for NTXentLoss only
    dtype = data.draw(st.sampled_from((torch.float32, torch.float64) + ((torch.float16,) if cls == "NTXentLoss"
                                                                       else ())))
    x, _ = data.draw(peer_features(dtype))
    n = x.shape[0]
    labels = torch.tensor(data.draw(st.lists(st.integers(-2, 3), min_size=n, max_size=n)))
    labels = labels.to(data.draw(st.sampled_from([torch.long, torch.int32, torch.bool, torch.float32])))
    temperature = data.draw(st.sampled_from(ODD_NUMBERS))
    if dtype == torch.float16 and not (temperature > 0.05 or temperature < 0) and math.isfinite(temperature):
        return  # both give garbage of different kinds (fp16 overflow of the peer's logits)
    peer = getattr(peers.pytorch_metric_learning(), cls)(temperature=temperature)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours = getattr(co_pml, cls)(temperature=temperature)
    assert_same_outcome(outcome(ours, x, labels), outcome(peer, x, labels), f"{cls} T={temperature} {labels.dtype}",
                        inputs_dtype=dtype)


@fuzz_settings(100)
@given(st.data())
def test_lightly_against_the_peer(data):
    from contrastive_ops.compat import lightly as co_lightly

    ntx, dcl = peers.lightly_losses()
    cls = data.draw(st.sampled_from(["NTXentLoss", "DCLLoss", "DCLWLoss"]))
    dtype = data.draw(st.sampled_from(PEER_DTYPES))
    x, y = data.draw(peer_features(dtype))
    temperature = data.draw(st.sampled_from(ODD_NUMBERS))
    kwargs = {} if cls == "DCLWLoss" else {"temperature": temperature}
    if cls == "DCLLoss":
        n = x.shape[0]
        kwargs["weight_fn"] = data.draw(st.sampled_from([
            None, lambda a, b: torch.tensor(2.0), lambda a, b: torch.ones(n, 1), lambda a, b: (a * b).sum(1)]))
    if dtype in (torch.float16, torch.bfloat16) and cls != "DCLWLoss" and not 0.05 <= abs(temperature) < math.inf:
        return  # both give garbage of different kinds (half-precision overflow of the peer's logits)
    peer_cls = {"NTXentLoss": ntx.NTXentLoss, "DCLLoss": dcl.DCLLoss, "DCLWLoss": dcl.DCLWLoss}[cls]
    ours = outcome(lambda: getattr(co_lightly, cls)(**kwargs)(x, y))
    peer = outcome(lambda: peer_cls(**kwargs)(x, y))
    if cls != "DCLWLoss" and 0 < temperature < math.inf and 1.0 / temperature > torch.finfo(torch.float32).max:
        # lightly divides the cosines by t, the core multiplies them by 1/t in fp32, +inf here: every
        # logit that overflows in lightly's does in ours, but a zero cosine gives NaN (0·inf) and a
        # log-sum-exp over +inf gives inf - inf = NaN where torch's gives inf. Both are garbage: a
        # non-finite loss of the peer must be non-finite here too, of whichever kind
        assert ours[0] == peer[0], f"{cls} {kwargs} {dtype}: ours {ours}, peer {peer}"
        if ours[0] == "raises":
            assert ours[1] == peer[1], f"{cls} {kwargs} {dtype}: ours {ours}, peer {peer}"
            return
        assert ours[2] == peer[2], f"{cls} {kwargs} {dtype}: ours {ours}, peer {peer}"
        if not math.isfinite(peer[1]):
            assert not math.isfinite(ours[1]), f"{cls} {kwargs} {dtype}: ours {ours}, peer {peer}"
        return
    assert_same_outcome(ours, peer, f"{cls} {kwargs} {dtype}", inputs_dtype=dtype)


@fuzz_settings(100)
@given(st.data())
def test_open_clip_against_the_peer(data):
    from contrastive_ops.compat import open_clip as co_open_clip

    oc = peers.open_clip_loss()
    cls = data.draw(st.sampled_from(["ClipLoss", "SigLipLoss"]))
    dtype = data.draw(st.sampled_from(PEER_DTYPES))
    x, y = data.draw(peer_features(dtype))
    scale = data.draw(st.sampled_from([10.0, 1.0, 0.0, -1.0, math.nan, 5, True, torch.tensor(10.0),
                                       torch.tensor(3), torch.tensor([2.0]), torch.tensor(-2.0, dtype=torch.float64)]))
    bias = data.draw(st.sampled_from([None, -1.0, 0.5, math.nan, torch.tensor(-3.0), torch.tensor([1.0])]))
    if dtype in (torch.float16, torch.bfloat16) and isinstance(scale, float) and abs(scale) > 5:
        scale = 5.0  # the peer's half-precision logits lose what the comparison measures
    assert_same_outcome(outcome(getattr(co_open_clip, cls)(), x, y, scale, bias),
                        outcome(getattr(oc, cls)(), x, y, scale, bias), f"{cls} {scale!r} {bias!r} {dtype}",
                        inputs_dtype=dtype)


@fuzz_settings(60)
@given(st.data())
def test_sentence_transformers_against_the_peer(data):
    st_losses = pytest.importorskip("sentence_transformers.sentence_transformer.losses")
    from contrastive_ops.compat import sentence_transformers as co_st

    dtype = data.draw(st.sampled_from((torch.float32, torch.float64, torch.float16)))
    x, y = data.draw(peer_features(dtype))
    columns = [x, y]
    if data.draw(st.booleans()):  # a hard-negative column, perhaps with another row count
        extra = data.draw(st.sampled_from([x.shape[0], max(1, x.shape[0] - 1), x.shape[0] + 1]))
        columns.append(torch.randn(extra, x.shape[1]).to(dtype))
    directions = data.draw(st.sampled_from([("query_to_doc",), ("query_to_doc", "doc_to_query"),
                                            ("query_to_doc", "query_to_query", "doc_to_doc")]))
    kw = {"directions": directions, "scale": data.draw(st.sampled_from([20.0, 1.0]))}
    peer = st_losses.MultipleNegativesRankingLoss(None, **kw)
    ours = co_st.MultipleNegativesRankingLoss(None, backend="chunked", **kw)
    assert_same_outcome(outcome(ours.compute_loss_from_embeddings, columns, None),
                        outcome(peer.compute_loss_from_embeddings, columns, None), f"MNRL {kw} {dtype}",
                        inputs_dtype=dtype)
