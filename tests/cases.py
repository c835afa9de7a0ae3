"""Every loss configuration under test, as (inputs, call into the package, float64 reference).

Shapes are deliberately no block multiple (N=37, R=23, D=40 against 16×16 test tiles).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import reference as ref
import torch

import contrastive_ops as co
from contrastive_ops.core import ring_ranks

N, R, D = 37, 23, 40


@dataclass
class Case:
    names: list[str]  # input names, in the order of the tensors
    make: Callable[[torch.dtype], list[torch.Tensor]]
    ours: Callable[..., torch.Tensor]  # (tensors, backend=, reduction=) -> loss
    reference: Callable[..., torch.Tensor]  # (tensors in float64) -> per-anchor losses
    mean_count: Callable[[list[torch.Tensor]], int] | None = None  # divisor of the mean if not numel
    # Ring cases: redraws anchor rows until every band boundary has a margin (see _ring_margin)
    separate: Callable[[list[torch.Tensor]], list[torch.Tensor]] | None = None


def _feats(*rows):
    return lambda dtype: [torch.randn(r, D, dtype=dtype) for r in rows]


def _labels(n, classes):
    labels = torch.randint(0, classes, (n,))
    labels[0] = 10_000  # a singleton label: an anchor without positives
    return labels


def _supcon_case(classes: int) -> Case:
    # the labels ride along as the last (integer, gradient-free) tensor
    return Case(
        ["features"],
        lambda dtype: [torch.randn(N, D, dtype=dtype), _labels(N, classes)],
        lambda t, **kw: co.supcon_loss(t[0], t[1], temperature=0.1, **kw),
        lambda t: ref.supcon(t[0], t[1], temperature=0.1)[0],
        mean_count=lambda t: ref.supcon(t[0].detach(), t[1])[1],
    )


def _clip_case(tensor_scale: bool, normalize: bool) -> Case:
    def make(dtype):
        feats = [torch.randn(N, D, dtype=dtype) * 0.2 for _ in range(2)]
        return feats + ([torch.tensor(14.3, dtype=dtype)] if tensor_scale else [])

    def scale(t):
        return t[2] if tensor_scale else 14.3

    return Case(
        ["image_features", "text_features"] + (["logit_scale"] if tensor_scale else []),
        make,
        lambda t, **kw: co.clip_loss(t[0], t[1], scale(t), normalize=normalize, **kw),
        lambda t: ref.clip(t[0], t[1], scale(t), normalize=normalize),
    )


RING_MARGIN = 0.05  # logits, at temperature 0.1: > 2× the logit error of bf16 chunked (≈ 0.02), ≫ fp32's (1e-6)


def _ring_boundary_gaps(candidates: list[torch.Tensor], outer: float, inner: float) -> torch.Tensor:
    """Per row, the smallest gap between the logits on either side of a Ring boundary (ranks lo−1 | lo
    and hi−1 | hi of the descending candidates); inf for a row without a boundary."""
    gaps = []
    for cand in candidates:
        lo, hi = (int(v) for v in ring_ranks(torch.tensor([cand.numel()]), outer, inner))
        ordered = cand.sort(descending=True).values
        sides = [ordered[b - 1] - ordered[b] for b in (lo, hi) if 0 < b < cand.numel() and hi > lo]
        gaps.append(min(sides).item() if sides else float("inf"))
    return torch.tensor(gaps, dtype=torch.float64)


def _ring_margin(candidates_of, outer, inner):
    """``separate`` of a Ring case: the band is a discontinuous function of the logits, so a backend
    and its float64 reference agree on it only if no boundary falls between values closer than their
    rounding. Redraws the anchors (row i of the first tensor decides only row i's candidates) until
    every boundary gap is at least :data:`RING_MARGIN` for the values as drawn and as rounded to
    fp16 and bf16 (what the GPU tests feed), all decided in float64."""

    def separate(tensors):
        tensors = list(tensors)
        for _ in range(200):
            bad = torch.zeros(tensors[0].shape[0], dtype=torch.bool)
            for dtype in (tensors[0].dtype, torch.float16, torch.bfloat16):
                rounded = [t.detach().to(dtype).double() if t.dtype.is_floating_point else t for t in tensors]
                bad |= _ring_boundary_gaps(candidates_of(rounded), outer, inner) < RING_MARGIN
            if not bad.any():
                return tensors
            fresh = tensors[0].detach().clone()
            fresh[bad] = torch.randn(int(bad.sum()), fresh.shape[1], dtype=fresh.dtype)
            tensors[0] = fresh.requires_grad_(tensors[0].requires_grad)
        raise RuntimeError("could not draw Ring inputs with separated band boundaries")

    return separate


def _unit(x):
    return x / x.norm(dim=1, keepdim=True).clamp(min=1e-12)


def _ring_case(outer, inner, with_queue=True, in_batch=True) -> Case:
    rows = (N, N, R) if with_queue else (N, N)
    names = ["query", "key"] + (["negatives"] if with_queue else [])

    def neg(t):
        return t[2] if with_queue else None

    kwargs = {"temperature": 0.1, "outer": outer, "inner": inner, "in_batch_negatives": in_batch}

    def candidates(t):
        q, k = _unit(t[0]), _unit(t[1])
        qk = q @ k.T / 0.1
        qn = q @ _unit(t[2]).T / 0.1 if with_queue else q.new_zeros(q.shape[0], 0)
        n = q.shape[0]
        return [torch.cat([qn[i]] + ([qk[i, :i], qk[i, i + 1:]] if in_batch else [])) for i in range(n)]

    separate = _ring_margin(candidates, outer, inner)
    return Case(
        names,
        lambda dtype: separate(_feats(*rows)(dtype)),
        lambda t, **kw: co.ring_info_nce(t[0], t[1], neg(t), **kwargs, **kw),
        lambda t: ref.ring_info_nce(t[0], t[1], neg(t), **kwargs),
        separate=separate,
    )


def _dcl_weights(a, b):
    # any differentiable per-row weight; the package calls weight_fn as lightly does
    return 1.0 + (a * b).sum(dim=1)


def _dcl_weighted_reference(t):
    a, b = torch.nn.functional.normalize(t[0].double(), dim=1), torch.nn.functional.normalize(t[1].double(), dim=1)
    w = torch.cat([_dcl_weights(a, b), _dcl_weights(b, a)])
    return ref.dcl(t[0], t[1], temperature=0.1, weights=w)


CASES: dict[str, Case] = {
    "info_nce": Case(["query", "key"], _feats(N, N),
                     lambda t, **kw: co.info_nce(t[0], t[1], temperature=0.07, **kw),
                     lambda t: ref.info_nce(t[0], t[1], temperature=0.07)),
    "info_nce_queue": Case(["query", "key", "negatives"], _feats(N, N, R),
                           lambda t, **kw: co.info_nce(t[0], t[1], t[2], temperature=0.2, **kw),
                           lambda t: ref.info_nce(t[0], t[1], t[2], temperature=0.2)),
    "info_nce_queue_only": Case(["query", "key", "negatives"], _feats(N, N, R),
                                lambda t, **kw: co.info_nce(t[0], t[1], t[2], in_batch_negatives=False, **kw),
                                lambda t: ref.info_nce(t[0], t[1], t[2], in_batch_negatives=False)),
    "info_nce_symmetric": Case(["query", "key"], _feats(N, N),
                               lambda t, **kw: co.info_nce(t[0], t[1], symmetric=True, **kw),
                               lambda t: ref.info_nce(t[0], t[1], symmetric=True)),
    "info_nce_symmetric_queue": Case(["query", "key", "negatives"], _feats(N, N, R),
                                     lambda t, **kw: co.info_nce(t[0], t[1], t[2], symmetric=True, **kw),
                                     lambda t: ref.info_nce(t[0], t[1], t[2], symmetric=True)),
    "info_nce_unnormalized": Case(["query", "key"], lambda dt: [torch.randn(N, D, dtype=dt) * 0.3 for _ in range(2)],
                                  lambda t, **kw: co.info_nce(t[0], t[1], temperature=0.5, normalize=False, **kw),
                                  lambda t: ref.info_nce(t[0], t[1], temperature=0.5, normalize=False)),
    "nt_xent": Case(["z1", "z2"], _feats(N, N),
                    lambda t, **kw: co.nt_xent(t[0], t[1], temperature=0.5, **kw),
                    lambda t: ref.nt_xent(t[0], t[1], temperature=0.5)),
    "dcl": Case(["z1", "z2"], _feats(N, N),
                lambda t, **kw: co.dcl_loss(t[0], t[1], temperature=0.1, **kw),
                lambda t: ref.dcl(t[0], t[1], temperature=0.1)),
    "dcl_weighted": Case(["z1", "z2"], _feats(N, N),
                         lambda t, **kw: co.dcl_loss(t[0], t[1], temperature=0.1, weight_fn=_dcl_weights, **kw),
                         _dcl_weighted_reference),
    "clip": _clip_case(tensor_scale=False, normalize=False),
    "clip_tensor_scale": _clip_case(tensor_scale=True, normalize=False),
    "clip_normalized": _clip_case(tensor_scale=True, normalize=True),
    "supcon_few_classes": _supcon_case(classes=3),
    "supcon_many_classes": _supcon_case(classes=15),
    "ring": _ring_case(0.3, 0.1),
    "ring_ball": _ring_case(0.5, 0.0),
    "ring_full": _ring_case(1.0, 0.0),
    "ring_in_batch_only": _ring_case(0.4, 0.25, with_queue=False),
    "ring_queue_only": _ring_case(0.6, 0.3, in_batch=False),
    "ring_single": _ring_case(0.03, 0.5),
    "ring_empty": _ring_case(0.01, 0.0),
    "ring_inner_one": _ring_case(0.5, 1.0),
}


# ---------------------------------------------------------------------------------------------
# False-negative masking, hard negatives, debiased, SigLIP
# ---------------------------------------------------------------------------------------------


def _class_labels(n, classes):
    """Few classes (many false negatives per row), and one row whose label no other row shares."""
    labels = torch.randint(0, classes, (n,))
    labels[1] = 10_000
    return labels


def _info_nce_labels_case(with_queue: bool, symmetric: bool, split_labels: bool) -> Case:
    rows = (N, N, R) if with_queue else (N, N)
    names = ["query", "key"] + (["negatives"] if with_queue else [])
    nf = len(names)

    def make(dtype):
        feats = _feats(*rows)(dtype)
        labels = [_class_labels(N, 4), _class_labels(N, 4)] if split_labels else [_class_labels(N, 4)]
        return feats + labels

    def label_kw(t):
        return {"query_labels": t[nf], "key_labels": t[nf + 1]} if split_labels else {"labels": t[nf]}

    def ref_labels(t):
        return (t[nf], t[nf + 1]) if split_labels else (t[nf], t[nf])

    def neg(t):
        return t[2] if with_queue else None

    return Case(
        names,
        make,
        lambda t, **kw: co.info_nce(t[0], t[1], neg(t), temperature=0.2, symmetric=symmetric, **label_kw(t), **kw),
        lambda t: ref.info_nce_masked(t[0], t[1], neg(t), query_labels=ref_labels(t)[0], key_labels=ref_labels(t)[1],
                                      temperature=0.2, symmetric=symmetric),
    )


def _clip_labels_case() -> Case:
    def make(dtype):
        return [torch.randn(N, D, dtype=dtype) * 0.2 for _ in range(2)] + [torch.tensor(14.3, dtype=dtype),
                                                                          _class_labels(N, 6)]

    return Case(
        ["image_features", "text_features", "logit_scale"],
        make,
        lambda t, **kw: co.clip_loss(t[0], t[1], t[2], labels=t[3], **kw),
        lambda t: ref.clip_masked(t[0], t[1], t[2], t[3]),
    )


def _ring_labels_case(split_labels: bool) -> Case:
    def make(dtype):
        return _feats(N, N, R)(dtype) + [_class_labels(N, 5)] + ([_class_labels(N, 5)] if split_labels else [])

    kwargs = {"temperature": 0.1, "outer": 0.5, "inner": 0.2}

    def label_kw(t):
        return {"query_labels": t[3], "key_labels": t[4]} if split_labels else {"labels": t[3]}

    def candidates(t):
        q, k = _unit(t[0]), _unit(t[1])
        qk, qn = q @ k.T / 0.1, q @ _unit(t[2]).T / 0.1
        query_labels, key_labels = t[3], t[4 if split_labels else 3]
        n = q.shape[0]
        return [torch.cat([qn[i], qk[i][(key_labels != query_labels[i]) & (torch.arange(n) != i)]]) for i in range(n)]

    separate = _ring_margin(candidates, kwargs["outer"], kwargs["inner"])
    return Case(
        ["query", "key", "negatives"],
        lambda dtype: separate(make(dtype)),
        lambda t, **kw: co.ring_info_nce(t[0], t[1], t[2], **label_kw(t), **kwargs, **kw),
        lambda t: ref.ring_info_nce_masked(t[0], t[1], t[2], query_labels=t[3], key_labels=t[4 if split_labels else 3],
                                           **kwargs),
        separate=separate,
    )


def _close_pairs(dtype, fraction=0.5, noise=0.05):
    """Two views where the first ``fraction`` of the pairs are near-duplicates (a large positive
    logit: the debiasing correction drives their Ng below the clamp) and the rest independent."""
    z1 = torch.randn(N, D, dtype=dtype)
    z2 = torch.randn(N, D, dtype=dtype)
    k = int(N * fraction)
    z2[:k] = z1[:k] + noise * torch.randn(k, D, dtype=dtype)
    return [z1, z2]


#: Near-duplicate pairs land far below the clamp and independent pairs far above it (the row loss
#: is ill-conditioned in any precision right at the boundary, where Ng is a difference of near-equals).
CLAMP_CASES = {
    "hard_negative_clamp": {"temperature": 0.5, "beta": 1.0, "tau_plus": 0.2},
    "debiased_clamp": {"temperature": 0.3, "beta": 0.0, "tau_plus": 0.1},
}


def _hard_negative_case(temperature, beta, tau_plus, close=False) -> Case:
    kwargs = {"temperature": temperature, "tau_plus": tau_plus}
    make = _close_pairs if close else _feats(N, N)
    if beta == 0.0:
        ours = lambda t, **kw: co.debiased_nce(t[0], t[1], **kwargs, **kw)
    else:
        ours = lambda t, **kw: co.hard_negative_nce(t[0], t[1], beta=beta, **kwargs, **kw)
    return Case(["z1", "z2"], make, ours, lambda t: ref.hard_negative(t[0], t[1], beta=beta, **kwargs))


def _siglip_case(tensor_params: bool, normalize: bool) -> Case:
    # normalized: SigLIP's initial scale 10 and bias -10; unnormalized: logits spread around 0, so
    # that the scale's gradient is not a near-cancelling sum (which fp32 PyTorch itself misses by 1e-5)
    scale, bias = (10.0, -10.0) if normalize else (5.0, -2.0)

    def make(dtype):
        feats = [torch.randn(N, D, dtype=dtype) * (1.0 if normalize else 0.2) for _ in range(2)]
        if normalize:  # matched pairs, as in training: the positives' terms do not cancel in d/dscale
            feats[1] = feats[0] + 0.5 * feats[1]
        return feats + ([torch.tensor(scale, dtype=dtype), torch.tensor(bias, dtype=dtype)] if tensor_params else [])

    def params(t):
        return (t[2], t[3]) if tensor_params else (7.5, -3.0)

    return Case(
        ["image_features", "text_features"] + (["logit_scale", "logit_bias"] if tensor_params else []),
        make,
        lambda t, **kw: co.siglip_loss(t[0], t[1], *params(t), normalize=normalize, **kw),
        lambda t: ref.siglip(t[0], t[1], *params(t), normalize=normalize),
    )


CASES.update({
    "info_nce_labels": _info_nce_labels_case(with_queue=False, symmetric=False, split_labels=False),
    "info_nce_query_key_labels": _info_nce_labels_case(with_queue=True, symmetric=False, split_labels=True),
    "info_nce_symmetric_queue_labels": _info_nce_labels_case(with_queue=True, symmetric=True, split_labels=False),
    "info_nce_symmetric_split_labels": _info_nce_labels_case(with_queue=False, symmetric=True, split_labels=True),
    "clip_labels": _clip_labels_case(),
    "ring_labels": _ring_labels_case(split_labels=False),
    "ring_query_key_labels": _ring_labels_case(split_labels=True),
    "hard_negative_beta1": _hard_negative_case(0.5, 1.0, 0.1),
    "hard_negative_beta05": _hard_negative_case(0.5, 0.5, 0.1),
    "hard_negative_small_temperature": _hard_negative_case(0.1, 1.0, 0.1),
    "hard_negative_no_debiasing": _hard_negative_case(0.2, 1.0, 0.0),
    "hard_negative_clamp": _hard_negative_case(**CLAMP_CASES["hard_negative_clamp"], close=True),
    "debiased": _hard_negative_case(0.5, 0.0, 0.1),
    "debiased_clamp": _hard_negative_case(**CLAMP_CASES["debiased_clamp"], close=True),
    "siglip": _siglip_case(tensor_params=True, normalize=False),
    "siglip_float_params": _siglip_case(tensor_params=False, normalize=False),
    "siglip_normalized": _siglip_case(tensor_params=True, normalize=True),
})


def _gist_case(margin_strategy, margin, contrast_anchors=True, contrast_positives=True, negatives=True) -> Case:
    """GISTEmbed with a guide whose similarities sit far from every threshold (a discontinuity, so the
    backends and the float64 reference must decide alike in every dtype): guide embeddings are 5 class
    directions plus 1 % noise, so guide cosines are about 1 (same class) or about 0; a few anchors get
    a positive of another class (a threshold near -margin, which drops nearly every candidate)."""
    kwargs = {"temperature": 0.1, "margin_strategy": margin_strategy, "margin": margin,
              "contrast_anchors": contrast_anchors, "contrast_positives": contrast_positives}
    guide_dim = 8

    def guide(classes, dtype):
        return (torch.eye(guide_dim)[classes] + 0.01 * torch.randn(len(classes), guide_dim)).to(dtype)

    def make(dtype):
        classes = torch.randint(0, 5, (N,))
        positive_classes = torch.where(torch.rand(N) < 0.15, (classes + 1) % 5, classes)
        feats = [torch.randn(N, D, dtype=dtype), torch.randn(N, D, dtype=dtype)]
        guides = [guide(classes, dtype), guide(positive_classes, dtype)]
        if not negatives:
            return feats + guides
        return feats + [torch.randn(R, D, dtype=dtype)] + guides + [guide(torch.randint(0, 5, (R,)), dtype)]

    def split(t):
        return (t[0], t[1], None, t[2], t[3], None) if not negatives else tuple(t)

    def ours(t, **kw):
        a, p, n, ga, gp, gn = split(t)
        return co.gist_loss(a, p, n, anchor_guide=ga, positive_guide=gp, negative_guide=gn, **kwargs, **kw)

    names = ["anchor", "positive"] + (["negative"] if negatives else []) + ["anchor_guide", "positive_guide"]
    return Case(names + (["negative_guide"] if negatives else []), make, ours,
                lambda t: ref.gist(*split(t), **kwargs))


CASES.update({
    "gist": _gist_case("absolute", 0.1),
    "gist_relative_no_negatives": _gist_case("relative", 0.05, negatives=False),
    "gist_no_anchors": _gist_case("absolute", 0.1, contrast_anchors=False),
    "gist_no_positives": _gist_case("relative", 0.05, contrast_positives=False),
})


# a learnable temperature (0-d tensor): (t, q, k, e, backend) -> loss
TEMPERATURE_LOSSES = {
    "info_nce": lambda t, q, k, e, b: co.info_nce(q, k, e, temperature=t, backend=b),
    "info_nce_symmetric": lambda t, q, k, e, b: co.info_nce(q, k, temperature=t, symmetric=True, backend=b),
    "nt_xent": lambda t, q, k, e, b: co.nt_xent(q, k, temperature=t, backend=b),
    "supcon_loss": lambda t, q, k, e, b: co.supcon_loss(q, torch.arange(q.shape[0]) % 3, temperature=t, backend=b),
    "dcl_loss": lambda t, q, k, e, b: co.dcl_loss(q, k, temperature=t, backend=b),
    # the Ring case's outer and inner at its temperature 0.1: inputs with separated band boundaries
    "ring_info_nce": lambda t, q, k, e, b: co.ring_info_nce(q, k, e, temperature=t, outer=0.3, inner=0.1, backend=b),
    "hard_negative_nce": lambda t, q, k, e, b: co.hard_negative_nce(q, k, temperature=t, backend=b),
    "debiased_nce": lambda t, q, k, e, b: co.debiased_nce(q, k, temperature=t, backend=b),
}


def temperature_inputs(dtype=torch.float32):
    """``(query [37, 40], key, negatives [23, 40])`` of the Ring case (band boundaries well apart at
    temperature 0.1), used by every loss here."""
    return [x.to(dtype) for x in CASES["ring"].make(torch.float32)]


def temperature_reference(name, tensors, value):
    """``(loss, gradients (temperature first, then q, k, e), central difference of the loss in the
    temperature)`` in float64 on the naive backend (the difference from float temperatures)."""
    ref = [x.detach().double().requires_grad_(True) for x in tensors]
    t = torch.tensor(value, dtype=torch.float64, requires_grad=True)
    loss = TEMPERATURE_LOSSES[name](t, *ref, "naive")
    grads = torch.autograd.grad(loss, [t, *ref], allow_unused=True, materialize_grads=True)
    with torch.no_grad():
        h = 1e-6
        plus, minus = (TEMPERATURE_LOSSES[name](value + d, *ref, "naive") for d in (h, -h))
    return loss, grads, (plus - minus) / (2 * h)
