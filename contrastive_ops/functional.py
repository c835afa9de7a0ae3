"""Public functional API: every loss is a thin wrapper that sets the generic core's roles.

Common keyword arguments:

* ``temperature`` — a finite float > 0, or a learnable temperature: a one-element floating tensor on
  the features' device (e.g. an ``nn.Parameter``) that receives its gradient on every backend (its
  value is not checked, so that no host sync happens).
* ``normalize`` — L2-normalize the feature rows first (fused; ``x / max(‖x‖, 1e-12)`` as ``F.normalize``,
  computed in fp32 with a scaled norm: a zero row gives finite losses in every dtype, a row of norm
  beyond fp32's square root is still a unit row; see ``core.normalize_rows``).
* ``reduction`` — ``"mean"`` (default), ``"sum"`` or ``"none"`` (per-anchor losses, shapes below).
* ``backend`` — ``"auto"`` (default: a fused backend on CUDA when one can run, else ``"chunked"``),
  ``"naive"``, ``"chunked"``, ``"triton"`` or ``"cuda"``.
* ``process_group`` — ``None`` (single process) or a ``torch.distributed`` group: each local anchor
  sees every rank's candidates (and, for symmetric losses, the reverse direction every rank's
  anchors), with their gradients. With ``reduction="mean"`` the ranks' losses average to the
  single-process loss on the concatenated batch (rank order), and each rank's gradients divided by
  the world size (DDP's averaging) equal the single-process gradients of its slice;
  ``"none"``/``"sum"`` give this rank's anchors' losses.
* ``exchange`` — how the ranks see each other's rows (see :mod:`contrastive_ops.exchange`):
  ``"gather"`` (all-gather with gradients; per-rank memory grows with the world size; every rank
  passes the same batch size), ``"ring"`` (blocks passed around the ranks, the next transfer
  overlapped with the current block's tiles; per-rank memory independent of the world size; uneven
  batch sizes allowed) or ``"auto"`` (default: :func:`contrastive_ops.exchange.choose`). Ignored
  without a ``process_group``.

False-negative masking (``labels`` of :func:`info_nce`, :func:`clip_loss`, :func:`ring_info_nce`):
a candidate that shares the anchor's label but is not its own positive is left out of the
denominator (in both directions for the symmetric losses); extra ``negatives`` are never masked.
The rule is applied inside each tile from the ``[N]`` labels; no N×M mask is built.

Losses are returned in fp32 for fp16/bf16/fp32 inputs (fp64 for fp64 inputs). Inputs are never
modified. A row whose denominator set is empty contributes 0 loss and 0 gradient.
"""
from __future__ import annotations

import math
import numbers
from typing import Callable

import torch

from . import _checks as C
from . import distributed as dist_
from . import exchange as exchange_
from .backends import compute_terms
from .core import ContrastiveTerms, RoleSpec, accumulation_dtype, normalize_rows
from .exchange import Block, SpecFn, View, own_index

__all__ = ["clip_loss", "dcl_loss", "debiased_nce", "gist_loss", "hard_negative_nce", "info_nce", "nt_xent",
           "ring_info_nce", "siglip_loss", "supcon_loss"]


def _check_label_pair(labels, query_labels, key_labels, n: int, ref: torch.Tensor):
    """``(row_labels, col_labels)`` for false-negative masking, or ``(None, None)``."""
    if labels is not None:
        if query_labels is not None or key_labels is not None:
            raise ValueError("give either labels or query_labels/key_labels, not both")
        C.check_labels("labels", labels, n, ref)
        return labels, labels
    if query_labels is None and key_labels is None:
        return None, None
    if query_labels is None or key_labels is None:
        missing = "query_labels" if query_labels is None else "key_labels"
        raise ValueError(f"{missing} is None: query_labels and key_labels must be given together")
    C.check_labels("query_labels", query_labels, n, ref)
    C.check_labels("key_labels", key_labels, n, ref)
    return query_labels, key_labels


def _anchor_loss(lse, pos, den_count, pos_count, pos_weight: torch.Tensor | None = None):
    """``lse - w·pos`` per anchor; 0 where the anchor has no positive or an empty denominator."""
    if pos_weight is not None:
        pos = pos * pos_weight
    valid = (den_count > 0) & (pos_count > 0)
    return torch.where(valid, lse - pos, torch.zeros_like(lse))


def _reduce(per_anchor: torch.Tensor, reduction: str, count: torch.Tensor | None = None):
    if reduction == "none":
        return per_anchor
    if reduction == "sum":
        return per_anchor.sum()
    if count is None:
        return per_anchor.mean()
    return per_anchor.sum() / count.clamp(min=1).to(per_anchor.dtype)


def _row_terms(rows, block: Block, extra, scale, spec_fn: SpecFn, backend: str, group, exchange: str, *,
               bias=None, gather=None, sizes=None) -> ContrastiveTerms:
    """The core's row terms of this rank's ``rows`` against every rank's ``block`` of columns plus the
    local ``extra`` columns: one call without a group; with one, by the ``exchange`` (``"gather"`` or
    ``"ring"``). ``spec_fn(view)`` builds the roles of a call from its columns' :class:`View`.
    ``gather = (gather_fn, rank)`` replaces the package's all-gather (a peer's own, for compat classes)."""
    bias_kw = {} if bias is None else {"bias": bias}
    if group is None and gather is None:
        view = View(block.labels, block.guides, 0, extra is not None)
        return compute_terms(rows, block.features, extra, scale, spec_fn(view), backend, **bias_kw)
    if exchange == "ring":
        return exchange_.ring_row_terms(rows, block, extra, scale, spec_fn, backend, group, bias=bias, sizes=sizes)
    if gather is None:
        gather = (lambda x: dist_.gather_rows(x, group), dist_.world(group)[0])
    gather_fn, rank = gather
    features = gather_fn(block.features)
    no_grad = gather_fn if group is None else (lambda x: dist_.gather_rows(x, group, with_grad=False))
    labels, guides = (None if x is None else no_grad(x) for x in (block.labels, block.guides))
    view = View(labels, guides, rank * block.features.shape[0], extra is not None)
    return compute_terms(rows, features, extra, scale, spec_fn(view), backend, **bias_kw)


def _exchange(exchange: str, group, block_rows: int, ref: torch.Tensor, ring_possible: bool = True):
    """``(concrete exchange, every rank's block size or None)`` of a call (nothing without a group)."""
    if group is None:
        return "gather", None
    return exchange_.resolve(exchange, group, block_rows, ref.shape[1], ref, ring_possible)


def _reduce_ranks(per_anchor: torch.Tensor, reduction: str, group, sizes) -> torch.Tensor:
    """:func:`_reduce`, except that with a group and uneven batch sizes the mean is this rank's share of
    the global mean times the world size (so that the ranks' losses still average to it)."""
    if reduction != "mean" or group is None or sizes is None or len(set(sizes)) == 1:
        return _reduce(per_anchor, reduction)
    _, size = dist_.world(group)
    total = dist_.all_reduce_sum(torch.tensor(per_anchor.shape[0], device=per_anchor.device), group)
    return per_anchor.sum() * size / total.to(per_anchor.dtype)


def _two_views(z1, z2, normalize, reduction):
    C.check_features("z1", z1)
    C.check_features("z2", z2)
    C.check_same_kind(("z1", "z2"), (z1, z2))
    C.check_same_rows("z1", z1, "z2", z2)
    C.check_bool("normalize", normalize)
    C.check_reduction(reduction)


def _two_view_terms(z1, z2, scale, *, decoupled: bool, normalize: bool, backend: str, group, exchange: str,
                    hard_beta=None) -> tuple[ContrastiveTerms, list[int] | None]:
    """The core's terms of the rows ``[z1; z2]`` against every rank's ``[z1; z2]``, and the ranks' block
    sizes when known. The positive of a view is the other view of its sample; a view never contrasts
    with itself."""
    n = z1.shape[0]
    rows = torch.cat([z1, z2], dim=0)
    local = torch.arange(n, device=z1.device)
    pos_local, self_local = torch.cat([local + n, local]), torch.arange(2 * n, device=z1.device)

    def spec(view: View) -> RoleSpec:
        return RoleSpec(pos_index=own_index(view, pos_local), self_index=own_index(view, self_local),
                        decoupled=decoupled, normalize=normalize, hard_beta=hard_beta)

    exchange, sizes = _exchange(exchange, group, 2 * n, z1)
    return _row_terms(rows, Block(rows), None, scale, spec, backend, group, exchange, sizes=sizes), sizes


def _two_view_rows(z1, z2, scale, *, decoupled: bool, normalize: bool, backend: str, group, exchange: str,
                   pos_weight=None) -> tuple[torch.Tensor, list[int] | None]:
    """Per-view losses ``lse - w·pos`` of :func:`_two_view_terms`, and the block sizes."""
    terms, sizes = _two_view_terms(z1, z2, scale, decoupled=decoupled, normalize=normalize, backend=backend,
                                   group=group, exchange=exchange)
    return _anchor_loss(terms.row_lse, terms.row_pos, terms.row_den_count, terms.row_pos_count, pos_weight), sizes


def _check_query_key(query, key, negatives, temperature, in_batch_negatives, normalize, reduction) -> float:
    """Checks shared by the query/key losses; returns the temperature."""
    C.check_features("query", query)
    C.check_features("key", key)
    if negatives is not None:
        C.check_features("negatives", negatives)
    C.check_same_kind(("query", "key", "negatives"), (query, key, negatives))
    C.check_same_rows("query", query, "key", key)
    t = C.check_temperature(temperature, ref=query)
    C.check_bool("in_batch_negatives", in_batch_negatives)
    C.check_bool("normalize", normalize)
    C.check_reduction(reduction)
    if not in_batch_negatives and negatives is None:
        raise ValueError("in_batch_negatives=False needs negatives: otherwise the only candidate is the positive")
    return t


def info_nce(
    query: torch.Tensor,
    key: torch.Tensor,
    negatives: torch.Tensor | None = None,
    *,
    temperature: float = 0.07,
    in_batch_negatives: bool = True,
    symmetric: bool = False,
    normalize: bool = True,
    reduction: str = "mean",
    backend: str = "auto",
    process_group=None,
    exchange: str = "auto",
    labels: torch.Tensor | None = None,
    query_labels: torch.Tensor | None = None,
    key_labels: torch.Tensor | None = None,
) -> torch.Tensor:
    """InfoNCE with key ``i`` the positive of query ``i`` (MoCo, one direction of CLIP).

    Row loss ``-s_ii + log(Σ_{j in den(i)} exp(s_ij))`` with ``s = <q̂, k̂>/temperature`` and
    ``den(i)`` = key ``i``, the other keys (if ``in_batch_negatives``) and every ``negatives`` row.
    Equivalent to ``F.cross_entropy(cat([q̂k̂ᵀ, q̂n̂ᵀ], 1)/τ, arange(N))``.

    Args:
        query: ``[N, D]`` floating.
        key: ``[N, D]``, same dtype and device; row ``i`` is the positive of query ``i``.
        negatives: optional ``[R, D]`` extra negatives (e.g. a MoCo queue), any ``R >= 1``.
        temperature: finite, > 0, or a one-element tensor (learnable).
        in_batch_negatives: use the other keys as negatives; if False, ``negatives`` is required.
        symmetric: average with the key→query direction, whose negatives are the in-batch
            queries only (needs ``in_batch_negatives``).
        labels: optional ``[N]`` integer class ids of the pairs (false-negative masking): key ``j``
            is left out of query ``i``'s denominator when ``labels[j] == labels[i]`` and ``j != i``
            (and query ``j`` out of key ``i``'s when ``symmetric``). ``negatives`` rows are never
            masked. A query whose every in-batch key shares its label keeps only the positive
            (and the ``negatives``): with neither, its denominator is the positive alone, loss 0.
        query_labels, key_labels: ``[N]`` each, instead of ``labels`` when the two sides are labelled
            differently: key ``j`` is masked for query ``i`` when ``key_labels[j] == query_labels[i]``
            and ``j != i``.
    Returns:
        a scalar, or ``[N]`` per-query losses with ``reduction="none"`` (the average of both
        directions per index when ``symmetric``).
    """
    t = _check_query_key(query, key, negatives, temperature, in_batch_negatives, normalize, reduction)
    C.check_bool("symmetric", symmetric)
    C.check_call(reduction, backend, process_group, exchange)
    if symmetric and not in_batch_negatives:
        raise ValueError(
            "symmetric=True needs in_batch_negatives=True: the key→query direction has only the in-batch queries as negatives"
        )
    n = query.shape[0]
    row_labels, col_labels = _check_label_pair(labels, query_labels, key_labels, n, query)
    if process_group is not None:
        return _info_nce_distributed(query, key, negatives, 1.0 / t, in_batch_negatives, symmetric, normalize,
                                     reduction, backend, process_group, exchange=exchange, query_labels=row_labels,
                                     key_labels=col_labels)
    spec = RoleSpec(
        pos_index=torch.arange(n, device=query.device),
        row_labels=row_labels,
        col_labels=col_labels,
        key_negatives=in_batch_negatives,
        column_terms=symmetric,
        normalize=normalize,
    )
    terms = compute_terms(query, key, negatives, 1.0 / t, spec, backend)
    loss = _anchor_loss(terms.row_lse, terms.row_pos, terms.row_den_count, terms.row_pos_count)
    if symmetric:
        reverse = _anchor_loss(terms.col_lse, terms.col_pos, terms.col_den_count, terms.col_pos_count)
        loss = 0.5 * (loss + reverse)
    return _reduce(loss, reduction)


def _info_nce_distributed(query, key, negatives, scale, in_batch_negatives, symmetric, normalize, reduction,
                          backend, group, *, exchange="auto", gather=None, query_labels=None, key_labels=None):
    """Local anchors against every rank's keys (and, if symmetric, local keys against every rank's
    queries: the reverse direction as rows of a second pass). Labels, if any, travel with the rows
    they label. ``gather``: a caller's all-gather of rows (open_clip's ``gather_with_grad`` choices),
    used instead of the package's."""
    n = query.shape[0]
    local = torch.arange(n, device=query.device)
    exchange, sizes = _exchange(exchange, group, n, query)
    hook = None if gather is None else (gather, dist_.world(group)[0])

    def forward_spec(view: View) -> RoleSpec:
        return RoleSpec(pos_index=own_index(view, local), row_labels=query_labels, col_labels=view.labels,
                        key_negatives=in_batch_negatives, normalize=normalize)

    terms = _row_terms(query, Block(key, key_labels), negatives, scale, forward_spec, backend, group, exchange,
                       gather=hook, sizes=sizes)
    loss = _anchor_loss(terms.row_lse, terms.row_pos, terms.row_den_count, terms.row_pos_count)
    if symmetric:
        def reverse_spec(view: View) -> RoleSpec:
            return RoleSpec(pos_index=own_index(view, local), row_labels=key_labels, col_labels=view.labels,
                            normalize=normalize)

        rev = _row_terms(key, Block(query, query_labels), None, scale, reverse_spec, backend, group, exchange,
                         gather=hook, sizes=sizes)
        loss = 0.5 * (loss + _anchor_loss(rev.row_lse, rev.row_pos, rev.row_den_count, rev.row_pos_count))
    return _reduce_ranks(loss, reduction, group, sizes)


def nt_xent(
    z1: torch.Tensor,
    z2: torch.Tensor,
    *,
    temperature: float = 0.5,
    normalize: bool = True,
    reduction: str = "mean",
    backend: str = "auto",
    process_group=None,
    exchange: str = "auto",
) -> torch.Tensor:
    """NT-Xent (SimCLR): each of the 2N views against the other 2N-1, the other view positive.

    With ``z = [z1; z2]`` and ``s = ẑẑᵀ/τ`` (diagonal excluded), row ``i`` loss is
    ``-s_{i,i±N} + log Σ_{j≠i} exp(s_ij)``; the mean is over all 2N rows (as lightly's
    ``NTXentLoss``).

    Args:
        z1, z2: ``[N, D]`` the two views, same dtype and device. ``N = 1`` is allowed (the only
            candidate is the positive: loss 0).
    Returns:
        a scalar, or ``[2N]`` per-view losses (z1's rows, then z2's) with ``reduction="none"``.
    """
    _two_views(z1, z2, normalize, reduction)
    t = C.check_temperature(temperature, ref=z1)
    C.check_call(reduction, backend, process_group, exchange)
    loss, sizes = _two_view_rows(z1, z2, 1.0 / t, decoupled=False, normalize=normalize, backend=backend,
                                 group=process_group, exchange=exchange)
    return _reduce_ranks(loss, reduction, process_group, sizes)


def dcl_loss(
    z1: torch.Tensor,
    z2: torch.Tensor,
    *,
    temperature: float = 0.1,
    weight_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    normalize: bool = True,
    reduction: str = "mean",
    backend: str = "auto",
    process_group=None,
    exchange: str = "auto",
) -> torch.Tensor:
    """Decoupled contrastive loss (Yeh et al.): NT-Xent with the positive left out of the denominator.

    Row ``i`` loss: ``-w_i·s_{i,i±N} + log Σ_{j ∉ {i, i±N}} exp(s_ij)``. ``weight_fn(a, b)``, if
    given, is called as lightly's ``DCLLoss`` does — on the (normalized) views ``(ẑ1, ẑ2)`` for the
    first N rows and ``(ẑ2, ẑ1)`` for the last N — and must return ``[N]`` floating weights on the
    features' device (anything else raises a TypeError/ValueError naming ``weight_fn``), used in fp32
    (fp64 for fp64 features). With ``N = 1``
    the denominator is empty and the loss is 0.

    Returns:
        a scalar (mean over 2N rows), or ``[2N]`` per-view losses with ``reduction="none"``.
    """
    _two_views(z1, z2, normalize, reduction)
    t = C.check_temperature(temperature, ref=z1)
    if weight_fn is not None and not callable(weight_fn):
        raise TypeError(f"weight_fn must be callable or None, got {weight_fn!r}")
    C.check_call(reduction, backend, process_group, exchange)
    n = z1.shape[0]
    weights = None
    if weight_fn is not None:
        a, b = (normalize_rows(z1), normalize_rows(z2)) if normalize else (z1, z2)
        weights = torch.cat([_check_weights(weight_fn(a, b), n, z1), _check_weights(weight_fn(b, a), n, z1)])
    loss, sizes = _two_view_rows(z1, z2, 1.0 / t, decoupled=True, normalize=normalize, backend=backend,
                                 group=process_group, exchange=exchange, pos_weight=weights)
    return _reduce_ranks(loss, reduction, process_group, sizes)


def _check_weights(w, n: int, ref: torch.Tensor) -> torch.Tensor:
    """``weight_fn``'s output: a dense floating ``[N]`` tensor on the features' device, used in the
    accumulation dtype (so the loss stays fp32 for half features, fp64 for fp64)."""
    if not isinstance(w, torch.Tensor):
        raise TypeError(f"weight_fn must return a torch.Tensor of shape ({n},), got {type(w).__name__}: {w!r}")
    C.check_dense("weight_fn's output", w)
    if w.shape != (n,):
        raise ValueError(f"weight_fn must return a tensor of shape ({n},), got {tuple(w.shape)}")
    if not w.dtype.is_floating_point:
        raise TypeError(f"weight_fn must return a floating tensor, got dtype {w.dtype}")
    if w.device != ref.device:
        raise ValueError(f"weight_fn returned a tensor on {w.device} but the features are on {ref.device}")
    return w.to(accumulation_dtype(ref.dtype))


def check_clip_arguments(image_features, text_features, logit_scale, normalize, reduction):
    """Validate :func:`clip_loss`'s arguments; returns the scale (a float or a 0-d tensor)."""
    C.check_features("image_features", image_features)
    C.check_features("text_features", text_features)
    C.check_same_kind(("image_features", "text_features"), (image_features, text_features))
    C.check_same_rows("image_features", image_features, "text_features", text_features)
    scale = C.check_scale(logit_scale, image_features, "logit_scale")
    C.check_bool("normalize", normalize)
    C.check_reduction(reduction)
    return scale


def clip_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    logit_scale,
    *,
    normalize: bool = False,
    reduction: str = "mean",
    backend: str = "auto",
    process_group=None,
    exchange: str = "auto",
    labels: torch.Tensor | None = None,
) -> torch.Tensor:
    """CLIP's symmetric cross-entropy (open_clip ``ClipLoss``), pair ``i`` positive.

    ``L = logit_scale · image @ textᵀ``; loss ``= (CE(L, arange) + CE(Lᵀ, arange)) / 2``.

    Args:
        image_features, text_features: ``[N, D]``, same dtype and device; used as given unless
            ``normalize=True`` (open_clip's models normalize before the loss).
        logit_scale: the multiplier itself (already exponentiated): a float > 0 or a one-element
            tensor, which receives a gradient.
        labels: optional ``[N]`` integer ids (false-negative masking): text ``j`` is left out of
            image ``i``'s softmax, and image ``j`` out of text ``i``'s, when ``labels[j] == labels[i]``
            and ``j != i`` (e.g. several captions of one image).
    Returns:
        a scalar, or ``[N]`` with ``(image_loss_i + text_loss_i)/2`` for ``reduction="none"``.
    """
    scale = check_clip_arguments(image_features, text_features, logit_scale, normalize, reduction)
    n = image_features.shape[0]
    if labels is not None:
        C.check_labels("labels", labels, n, image_features)
    C.check_call(reduction, backend, process_group, exchange)
    if process_group is not None:
        return _info_nce_distributed(image_features, text_features, None, scale, True, True, normalize, reduction,
                                     backend, process_group, exchange=exchange, query_labels=labels,
                                     key_labels=labels)
    spec = RoleSpec(pos_index=torch.arange(n, device=image_features.device), row_labels=labels, col_labels=labels,
                    column_terms=True, normalize=normalize)
    terms = compute_terms(image_features, text_features, None, scale, spec, backend)
    image_loss = _anchor_loss(terms.row_lse, terms.row_pos, terms.row_den_count, terms.row_pos_count)
    text_loss = _anchor_loss(terms.col_lse, terms.col_pos, terms.col_den_count, terms.col_pos_count)
    return _reduce(0.5 * (image_loss + text_loss), reduction)


def supcon_loss(
    features: torch.Tensor,
    labels: torch.Tensor,
    *,
    temperature: float = 0.1,
    normalize: bool = True,
    reduction: str = "mean",
    backend: str = "auto",
    process_group=None,
    exchange: str = "auto",
) -> torch.Tensor:
    """Supervised contrastive loss (Khosla et al., the "L_out" form; pytorch-metric-learning).

    Anchor ``i``'s positives ``P(i)`` are the other samples with its label; its denominator is
    every other sample: ``loss_i = log Σ_{a≠i} exp(s_ia) - mean_{p∈P(i)} s_ip``.

    Args:
        features: ``[N, D]`` floating.
        labels: ``[N]`` integer class ids on the same device.
    Returns:
        the mean over anchors with at least one positive (0 if there is none), the sum, or
        ``[N]`` per-anchor losses (0 for anchors without a positive) with ``reduction="none"``.
    """
    C.check_features("features", features)
    C.check_labels("labels", labels, features.shape[0], features)
    t = C.check_temperature(temperature, ref=features)
    C.check_bool("normalize", normalize)
    C.check_call(reduction, backend, process_group, exchange)
    n = features.shape[0]
    local = torch.arange(n, device=features.device)

    def spec(view: View) -> RoleSpec:
        return RoleSpec(row_labels=labels, col_labels=view.labels, self_index=own_index(view, local),
                        normalize=normalize)

    exchange, sizes = _exchange(exchange, process_group, n, features)
    terms = _row_terms(features, Block(features, labels), None, 1.0 / t, spec, backend, process_group, exchange,
                       sizes=sizes)
    loss = _anchor_loss(terms.row_lse, terms.row_pos, terms.row_den_count, terms.row_pos_count)
    count = (terms.row_pos_count > 0).sum()
    if process_group is not None and reduction == "mean":
        # global mean over anchors with a positive, scaled so that the ranks' losses average to it
        _, size = dist_.world(process_group)
        return loss.sum() * size / dist_.all_reduce_sum(count, process_group).clamp(min=1).to(loss.dtype)
    return _reduce(loss, reduction, count=count)


def ring_info_nce(
    query: torch.Tensor,
    key: torch.Tensor,
    negatives: torch.Tensor | None = None,
    *,
    temperature: float = 0.07,
    outer: float = 0.1,
    inner: float = 0.1,
    in_batch_negatives: bool = True,
    normalize: bool = True,
    reduction: str = "mean",
    backend: str = "auto",
    process_group=None,
    exchange: str = "auto",
    labels: torch.Tensor | None = None,
    query_labels: torch.Tensor | None = None,
    key_labels: torch.Tensor | None = None,
) -> torch.Tensor:
    """InfoNCE over a restricted "Ring" of negatives (Wu et al., CNCE).

    For query ``i`` the candidates ``C_i`` are its negatives as in :func:`info_nce` (``M_i`` of
    them). Sorted by logit in descending order, the ring is the ranks ``[lo, hi)`` with
    ``hi = floor(outer·M_i)`` and ``lo = floor(inner·hi)``; ties at a boundary are all kept
    (selection is by value: ``sorted[hi-1] ≤ s_ij ≤ sorted[lo]``). Loss
    ``-s_ii + log(exp(s_ii) + Σ_{j∈ring} exp(s_ij))``; the selection carries no gradient.
    ``inner=0`` is the "ball" (the closest ``outer`` fraction). An empty ring gives the row loss 0.

    Args:
        query, key: ``[N, D]``; negatives: optional ``[R, D]``.
        outer, inner: fractions in ``[0, 1]`` (a schedule usually anneals ``outer`` from 1.0).
        labels, query_labels, key_labels: false-negative masking as in :func:`info_nce`; the masked
            keys are not candidates, so ``M_i`` counts the candidates left after masking.
        exchange: ``"gather"`` or ``"auto"`` (which gathers): the band is a rank selection over every
            rank's candidates of a row, made exactly on the gathered logits; ``"ring"`` raises.
    Returns:
        a scalar (mean over all N queries), or ``[N]`` with ``reduction="none"``.
    """
    t = _check_query_key(query, key, negatives, temperature, in_batch_negatives, normalize, reduction)
    outer = C.check_fraction("outer", outer)
    inner = C.check_fraction("inner", inner)
    n = query.shape[0]
    row_labels, col_labels = _check_label_pair(labels, query_labels, key_labels, n, query)
    C.check_call(reduction, backend, process_group, exchange)
    if exchange == "ring" and process_group is not None:
        raise ValueError("exchange='ring' is not available for ring_info_nce: its band is a rank selection over "
                         "every rank's candidates of a row, made on the gathered logits; use exchange='gather'")
    keys = key if process_group is None else dist_.gather_rows(key, process_group)
    if process_group is not None and col_labels is not None:
        col_labels = dist_.gather_rows(col_labels, process_group, with_grad=False)
    spec = RoleSpec(
        pos_index=torch.arange(n, device=query.device) + dist_.offset(n, process_group),
        row_labels=row_labels,
        col_labels=col_labels,
        key_negatives=in_batch_negatives,
        ring=(outer, inner),
        normalize=normalize,
    )
    terms = compute_terms(query, keys, negatives, 1.0 / t, spec, backend)
    loss = _anchor_loss(terms.row_lse, terms.row_pos, terms.row_den_count, terms.row_pos_count)
    return _reduce(loss, reduction)


# ---------------------------------------------------------------------------------------------
# Hard negatives, debiased, SigLIP
# ---------------------------------------------------------------------------------------------

_LOG_HALF = math.log(0.5)


def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    """``log(1 - exp(x))`` for ``x < 0``, accurate on both sides of ``-log 2`` (each branch gets safe
    inputs, so neither produces a NaN gradient)."""
    near = x > _LOG_HALF
    a = torch.where(near, x, torch.full_like(x, _LOG_HALF))
    b = torch.where(near, torch.full_like(x, 2 * _LOG_HALF), x)
    return torch.where(near, torch.log(-torch.expm1(a)), torch.log1p(-torch.exp(b)))


def _hard_negative_rows(terms: ContrastiveTerms, temperature: float, tau_plus: float) -> torch.Tensor:
    """Per-row loss of Robinson et al.'s estimator in log space, from the terms of the decoupled
    denominator (the negatives) with ``hard_beta = β``.

    With ``s`` the logits, ``pos = exp(s_ip)`` and the ``N_i`` negatives:
    ``reweight = Σ exp((1+β)s)/mean(exp(βs))``, so ``log reweight = lse((1+β)s) - lse(βs) + log N_i``;
    ``Ng = (reweight - τ⁺·N_i·pos)/(1-τ⁺)`` clamped below at ``N_i·e^(-1/τ)`` (zero gradient where
    the clamp is active, as ``torch.clamp``); loss ``= log(pos + Ng) - log pos``.
    """
    count = terms.row_den_count
    s_pos = terms.row_pos
    log_n = torch.log(count.clamp(min=1).to(s_pos.dtype))
    log_reweight = terms.row_lse - terms.row_lse_beta + log_n
    log_floor = log_n - 1.0 / temperature
    if tau_plus == 0.0:
        log_ng = log_reweight
        clamped = log_ng < log_floor
    else:
        x = math.log(tau_plus) + log_n + s_pos - log_reweight  # log(τ⁺·N·pos / reweight)
        log_scale = -math.log1p(-tau_plus)
        with torch.no_grad():  # where the clamp holds, before any gradient is formed
            unclamped = log_reweight + _log1mexp(x.clamp(max=-1e-30)) + log_scale
            clamped = (x >= 0) | (unclamped < log_floor)
        x_safe = torch.where(clamped, torch.full_like(x, -1.0), x)
        log_ng = log_reweight + _log1mexp(x_safe) + log_scale
    log_ng = torch.where(clamped, log_floor, log_ng)
    loss = torch.logaddexp(s_pos, log_ng) - s_pos
    return torch.where(count > 0, loss, torch.zeros_like(loss))


def hard_negative_nce(
    z1: torch.Tensor,
    z2: torch.Tensor,
    *,
    temperature: float = 0.5,
    beta: float = 1.0,
    tau_plus: float = 0.1,
    normalize: bool = True,
    reduction: str = "mean",
    backend: str = "auto",
    process_group=None,
    exchange: str = "auto",
) -> torch.Tensor:
    """Hard-negative contrastive loss (Robinson et al. 2021), as their reference code's ``criterion``.

    With ``z = [ẑ1; ẑ2]``, ``s = zzᵀ/τ``, row ``i``'s negatives are the ``N_neg = 2N - 2`` other views
    (itself and the other view of its sample excluded) and ``pos_i = exp(<ẑ1_k, ẑ2_k>/τ)``. In the
    reference's terms: ``neg = exp(s)``, ``imp = neg**β`` (not detached),
    ``reweight_neg = Σ(imp·neg)/mean(imp)``, ``Ng = (-τ⁺·N_neg·pos + reweight_neg)/(1-τ⁺)`` clamped
    below at ``N_neg·e^(-1/τ)``, and ``loss_i = -log(pos_i/(pos_i + Ng_i))``. Computed in log space
    from two log-sum-exps per row (of ``(1+β)·s`` and ``β·s``, one tiled pass), so small ``τ`` does
    not overflow. Where the clamp is active the row's loss is ``log(1 + N_neg·e^(-1/τ)/pos)`` and,
    as in the reference, the clamp passes no gradient.

    Args:
        z1, z2: ``[N, D]`` the two views, same dtype and device. ``N = 1`` has no negatives: loss 0.
        temperature: τ, finite and > 0, or a one-element tensor (learnable).
        beta: β >= 0, the concentration on hard negatives (``β = 0`` is :func:`debiased_nce`).
        tau_plus: τ⁺ in ``[0, 1)``, the class prior of a false negative (``0``: no debiasing).
        process_group: as every loss; ``N_neg`` is then the global count ``2·N·world - 2``.
    Returns:
        a scalar (mean over the 2N rows), or ``[2N]`` per-view losses (z1's rows, then z2's) with
        ``reduction="none"``.
    """
    _two_views(z1, z2, normalize, reduction)
    t = C.check_temperature(temperature, ref=z1)
    b = C.check_beta(beta)
    tp = C.check_tau_plus(tau_plus)
    C.check_call(reduction, backend, process_group, exchange)
    terms, sizes = _two_view_terms(z1, z2, 1.0 / t, decoupled=True, normalize=normalize, backend=backend,
                                   group=process_group, exchange=exchange, hard_beta=b)
    return _reduce_ranks(_hard_negative_rows(terms, t, tp), reduction, process_group, sizes)


def debiased_nce(
    z1: torch.Tensor,
    z2: torch.Tensor,
    *,
    temperature: float = 0.5,
    tau_plus: float = 0.1,
    normalize: bool = True,
    reduction: str = "mean",
    backend: str = "auto",
    process_group=None,
    exchange: str = "auto",
) -> torch.Tensor:
    """Debiased contrastive loss (Chuang et al. 2020): :func:`hard_negative_nce` with ``β = 0``.

    ``Ng = (Σ_neg exp(s) - τ⁺·N_neg·pos)/(1-τ⁺)``, clamped below at ``N_neg·e^(-1/τ)``;
    ``loss_i = -log(pos_i/(pos_i + Ng_i))``. Arguments, shapes and edge cases as
    :func:`hard_negative_nce`.
    """
    return hard_negative_nce(z1, z2, temperature=temperature, beta=0.0, tau_plus=tau_plus, normalize=normalize,
                             reduction=reduction, backend=backend, process_group=process_group, exchange=exchange)


def check_siglip_arguments(image_features, text_features, logit_scale, logit_bias, normalize, reduction):
    """Validate :func:`siglip_loss`'s arguments; returns ``(scale, bias)`` (floats or 0-d tensors)."""
    scale = check_clip_arguments(image_features, text_features, logit_scale, normalize, reduction)
    bias = None if logit_bias is None else C.check_bias(logit_bias, image_features, "logit_bias")
    return scale, bias


def siglip_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    logit_scale,
    logit_bias,
    *,
    normalize: bool = False,
    reduction: str = "mean",
    backend: str = "auto",
    process_group=None,
    exchange: str = "auto",
) -> torch.Tensor:
    """SigLIP's pairwise sigmoid loss (Zhai et al. 2023; open_clip ``SigLipLoss``).

    ``L = logit_scale · image @ textᵀ + logit_bias``, ``y = 2·eye(N) - 1``; loss
    ``= -Σ_ij logsigmoid(y_ij · L_ij) / N``, i.e. ``Σ_ij softplus(-y_ij·L_ij)/N``. Every one of the N×N
    pairs counts, one positive per row; the tiles never hold more than a block of ``L``.

    Args:
        image_features, text_features: ``[N, D]``, same dtype and device; used as given unless
            ``normalize=True`` (open_clip's models normalize before the loss).
        logit_scale: the multiplier itself (already exponentiated, as open_clip passes it): a float
            > 0 or a one-element tensor, which receives a gradient.
        logit_bias: a float, a one-element tensor (receives a gradient) or None (no bias).
        process_group: this rank's images against every rank's texts (with gradients), only the own
            pair positive — open_clip's multi-rank loss; the mean divides by the local N, so the ranks'
            losses average to the single-process loss. With ``exchange="ring"`` the texts travel
            around the ranks as open_clip's neighbour exchange, fused with the tiles.
    Returns:
        a scalar (``mean``: the sum over all pairs divided by N, as open_clip; ``sum``: the sum over
        all pairs), or ``[N]`` per-image sums over the row's pairs with ``reduction="none"``.
    """
    scale, bias = check_siglip_arguments(image_features, text_features, logit_scale, logit_bias, normalize,
                                         reduction)
    C.check_call(reduction, backend, process_group, exchange)
    local = torch.arange(image_features.shape[0], device=image_features.device)

    def spec(view: View) -> RoleSpec:
        # a mean or sum weighs every row's pair losses alike: the cuda and triton backends form their gradient in
        # the forward
        return RoleSpec(pos_index=own_index(view, local), pairwise_sigmoid=True, normalize=normalize,
                        uniform_pair_grad=reduction != "none", pair_loss_only=True)

    exchange, sizes = _exchange(exchange, process_group, text_features.shape[0], image_features)
    terms = _row_terms(image_features, Block(text_features), None, scale, spec, backend, process_group, exchange,
                       bias=bias, sizes=sizes)
    return _reduce_ranks(terms.row_pair_loss, reduction, process_group, sizes)


def _unit_guide(x: torch.Tensor) -> torch.Tensor:
    return normalize_rows(x.detach().to(accumulation_dtype(x.dtype)))


def gist_loss(
    anchor: torch.Tensor,
    positive: torch.Tensor,
    negative: torch.Tensor | None = None,
    *,
    anchor_guide: torch.Tensor,
    positive_guide: torch.Tensor,
    negative_guide: torch.Tensor | None = None,
    temperature: float = 0.01,
    margin_strategy: str = "absolute",
    margin: float = 0.0,
    contrast_anchors: bool = True,
    contrast_positives: bool = True,
    reduction: str = "mean",
    backend: str = "auto",
    process_group=None,
    exchange: str = "auto",
) -> torch.Tensor:
    """GISTEmbed (Solatorio 2024): InfoNCE whose in-batch negatives a guide model filters.

    Anchor ``i``'s softmax runs over cosine logits ``sim/τ`` against every positive (its own is the
    target), every anchor (``contrast_anchors``), every negative, and, from its own positive's row,
    every positive (``contrast_positives``). A candidate ``j`` is dropped as a false negative when the
    guide's cosine similarity of the same pair exceeds ``g_i − margin`` (``"absolute"``) or
    ``g_i − |g_i|·margin`` (``"relative"``), ``g_i`` the guide's similarity of anchor ``i`` and its
    positive; the positive itself is never dropped (an anchor's own copy, among the anchors, is by
    the same rule). The guide's similarities are formed tile by tile beside the logits: no
    ``[B, (2+K)·B]`` matrix. Equal to sentence-transformers' ``GISTEmbedLoss`` on its embeddings.

    Args:
        anchor, positive: ``[B, D]``; row ``i`` of ``positive`` is anchor ``i``'s target.
        negative: optional ``[R, D]`` hard negatives, shared by every anchor.
        anchor_guide, positive_guide, negative_guide: the guide model's embeddings of the same rows,
            ``[B, G]`` / ``[R, G]``, any floating dtype (no gradient flows to them).
        temperature: finite, > 0, or a one-element tensor (learnable).
        margin_strategy: ``"absolute"`` or ``"relative"``; margin: a finite real.
        process_group: every rank's positives and negatives (and their guides) are candidates, with
            their gradients; anchors contrast with this rank's anchors only (as the peer).
    Returns:
        a scalar, or ``[B]`` per-anchor losses with ``reduction="none"``.
    """
    t = _check_gist(anchor, positive, negative, anchor_guide, positive_guide, negative_guide, temperature,
                    margin_strategy, margin, contrast_anchors, contrast_positives, reduction)
    C.check_call(reduction, backend, process_group, exchange)
    return _gist_rows(anchor, positive, negative, anchor_guide, positive_guide, negative_guide, t, margin_strategy,
                      margin, contrast_anchors, contrast_positives, reduction, backend, process_group, exchange, None)


def _gist_loss(anchor, positive, negative=None, *, anchor_guide, positive_guide, negative_guide=None,
               temperature=0.01, margin_strategy="absolute", margin=0.0, contrast_anchors=True,
               contrast_positives=True, reduction="mean", backend="auto", gather=None):
    """:func:`gist_loss` (the same checks) with a gather of the caller's: ``gather = (gather_fn, rank)``,
    ``gather_fn(x)`` every rank's rows of ``x`` with their gradients in rank order and ``rank`` this
    rank's place among them (sentence-transformers' own helpers, for its compat classes); None: no gather."""
    t = _check_gist(anchor, positive, negative, anchor_guide, positive_guide, negative_guide, temperature,
                    margin_strategy, margin, contrast_anchors, contrast_positives, reduction)
    C.check_call(reduction, backend, None)
    return _gist_rows(anchor, positive, negative, anchor_guide, positive_guide, negative_guide, t, margin_strategy,
                      margin, contrast_anchors, contrast_positives, reduction, backend, None, "gather", gather)


def _check_gist(anchor, positive, negative, anchor_guide, positive_guide, negative_guide, temperature,
                margin_strategy, margin, contrast_anchors, contrast_positives, reduction):
    """The checks of :func:`gist_loss`; returns the temperature."""
    C.check_features("anchor", anchor)
    C.check_features("positive", positive)
    if negative is not None:
        C.check_features("negative", negative)
    C.check_same_kind(("anchor", "positive", "negative"), (anchor, positive, negative))
    C.check_same_rows("anchor", anchor, "positive", positive)
    C.check_features("anchor_guide", anchor_guide)
    C.check_features("positive_guide", positive_guide)
    C.check_same_rows("anchor", anchor, "anchor_guide", anchor_guide)
    C.check_same_rows("positive", positive, "positive_guide", positive_guide)
    if (negative is None) != (negative_guide is None):
        raise ValueError("negative and negative_guide must be given together, got "
                         f"negative={'None' if negative is None else 'a tensor'} and "
                         f"negative_guide={'None' if negative_guide is None else 'a tensor'}")
    if negative_guide is not None:
        C.check_features("negative_guide", negative_guide)
        C.check_same_rows("negative", negative, "negative_guide", negative_guide)
    guides = [g for g in (anchor_guide, positive_guide, negative_guide) if g is not None]
    for name, g in zip(("positive_guide", "negative_guide"), guides[1:]):
        if g.shape[1] != anchor_guide.shape[1]:
            raise ValueError(f"{name} has {g.shape[1]} columns but anchor_guide has {anchor_guide.shape[1]}")
        if g.device != anchor.device:
            raise ValueError(f"{name} is on {g.device} but the embeddings are on {anchor.device}")
    if anchor_guide.device != anchor.device:
        raise ValueError(f"anchor_guide is on {anchor_guide.device} but the embeddings are on {anchor.device}")
    t = C.check_temperature(temperature, ref=anchor)
    if margin_strategy not in ("absolute", "relative"):
        raise ValueError(f"margin_strategy must be 'absolute' or 'relative', got {margin_strategy!r}")
    if isinstance(margin, bool) or not isinstance(margin, numbers.Real) or not math.isfinite(float(margin)):
        raise TypeError(f"margin must be a finite real number, got {margin!r}")
    C.check_bool("contrast_anchors", contrast_anchors)
    C.check_bool("contrast_positives", contrast_positives)
    C.check_reduction(reduction)
    return t


def _gist_rows(anchor, positive, negative, anchor_guide, positive_guide, negative_guide, t, margin_strategy, margin,
               contrast_anchors, contrast_positives, reduction, backend, group, exchange, gather):
    """GISTEmbed's per-anchor losses as two sets of row terms: anchors against every rank's
    ``[positives; negatives]`` plus this rank's anchors, and each anchor's own positive against every
    rank's positives, both under the anchor's guide limit."""
    batch = anchor.shape[0]
    local = torch.arange(batch, device=anchor.device)
    unit_anchor_guide, unit_positive_guide = _unit_guide(anchor_guide), _unit_guide(positive_guide)
    own_guide = (unit_anchor_guide * unit_positive_guide).sum(dim=1)  # the guide's g_i
    limit = own_guide - (margin if margin_strategy == "absolute" else own_guide.abs() * margin)
    if negative is None:
        block = Block(positive, guides=unit_positive_guide)
    else:
        block = Block(torch.cat([positive, negative]),
                      guides=torch.cat([unit_positive_guide, _unit_guide(negative_guide)]))
    anchors = anchor if contrast_anchors else None  # local columns: this rank's anchors only

    def spec(view: View) -> RoleSpec:
        guides = [view.guides] + ([unit_anchor_guide] if view.with_extra else [])
        return RoleSpec(pos_index=own_index(view, local), guide_rows=unit_anchor_guide,
                        guide_cols=torch.cat(guides) if len(guides) > 1 else guides[0], guide_max=limit)

    exchange, sizes = _exchange(exchange, group, block.features.shape[0], anchor)
    terms = _row_terms(anchor, block, anchors, 1.0 / t, spec, backend, group, exchange, gather=gather, sizes=sizes)
    log_z = terms.row_lse
    if contrast_positives:  # row i's own positive against every positive, under anchor i's threshold
        def positive_spec(view: View) -> RoleSpec:
            return RoleSpec(guide_rows=unit_positive_guide, guide_cols=view.guides, guide_max=limit)

        psizes = sizes if negative is None else None
        pp = _row_terms(positive, Block(positive, guides=unit_positive_guide), None, 1.0 / t, positive_spec, backend,
                        group, exchange, gather=gather, sizes=psizes)
        log_z = torch.logaddexp(log_z, torch.where(pp.row_den_count > 0, pp.row_lse,
                                                   torch.full_like(pp.row_lse, float("-inf"))))
    return _reduce_ranks(log_z - terms.row_pos, reduction, group, sizes)
