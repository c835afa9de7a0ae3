"""Drop-in ``NTXentLoss`` and ``SupConLoss`` of pytorch-metric-learning (``pytorch_metric_learning.losses``).

Both keep the peer's defaults: cosine similarity (embeddings L2-normalized), all pairs built from
``labels`` (and ``ref_labels`` when ``ref_emb`` is given), and the peer's default reducer: the mean
of every positive pair's loss for ``NTXentLoss`` (``MeanReducer``), the mean of the anchor losses
that are > 0 for ``SupConLoss`` (``AvgNonZeroReducer``); a zero loss with zero gradient when there is
no pair. ``MeanReducer`` and ``AvgNonZeroReducer`` run on the fused path for both.

An ``indices_tuple`` of all pairs — every pair with equal labels (less at most each anchor's one
self-comparison, as ``CrossBatchMemory`` removes them) and every pair with different labels, in the
row-major order of ``lmu.get_all_pairs_indices`` — is what the fused path computes, and is computed
there (so ``CrossBatchMemory`` without a miner gives the direct call's value). Labels of any dtype the
peer compares with ``==`` (bool, integer, float) are accepted; so is any temperature the peer accepts.

Options the fused path cannot honour — a miner's ``indices_tuple``, another ``distance`` or
``reducer``, regularizers, a temperature of 0 or NaN (or one whose inverse overflows fp32) — are
computed by the installed peer's own class, built with the same arguments, after a one-time warning
that says why.
"""
from __future__ import annotations

import math
import numbers
import warnings

import torch
from torch import nn

from .. import _checks as C
from ..backends import compute_terms
from ..core import RoleSpec, normalize_rows

#: reducers computed on the fused path, by class name
_REDUCERS = ("MeanReducer", "AvgNonZeroReducer")


def _fused_reason(kwargs: dict) -> str | None:
    """Why these constructor options need the peer's own code, or None when the fused path honours
    them all (the default distance, a mean or average-non-zero reducer, ``collect_stats``)."""
    for name, value in kwargs.items():
        if name == "collect_stats":
            continue
        if name == "distance" and type(value).__name__ == "CosineSimilarity" and getattr(value, "power", 1) == 1 \
                and getattr(value, "normalize_embeddings", True):
            continue
        if name == "reducer" and type(value).__name__ in _REDUCERS:
            continue
        return f"option {name}={value!r}"
    return None


_FP32_MAX = torch.finfo(torch.float32).max


def _temperature_reason(temperature) -> str | None:
    """Why this temperature needs the peer's own code (None where the fused path computes it: any
    number whose inverse is a finite fp32 number, negative and infinite ones included; a tensor)."""
    if isinstance(temperature, torch.Tensor):
        return None
    if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real):
        return None  # checked (and refused) as the functional API does
    t = float(temperature)
    if t == 0 or math.isnan(t) or (math.isfinite(t) and abs(1.0 / t) > _FP32_MAX):
        return f"temperature={temperature!r}"
    return None


def _scale_of(temperature):
    """``1/temperature`` for the core: a float for a positive finite one (checked as the functional
    API does), else a 0-d tensor (a negative or infinite temperature, whose values the core does not
    read); a tensor temperature is checked and inverted as a tensor."""
    if isinstance(temperature, torch.Tensor):
        return 1.0 / C.check_temperature(temperature)
    if isinstance(temperature, numbers.Real) and not isinstance(temperature, bool) and not 0 < float(temperature) < math.inf:
        return torch.tensor(1.0 / float(temperature), dtype=torch.float32)
    return 1.0 / C.check_temperature(temperature)


def _label_ids(labels: torch.Tensor, ref_labels: torch.Tensor):
    """Integer ids with the peer's equality (``==``) for labels of any real dtype: integers as they
    are, bools as 0/1, floats by their distinct values (one sort, over both sides together)."""
    if not labels.dtype.is_floating_point and labels.dtype != torch.bool:
        return labels, ref_labels
    if labels.dtype == torch.bool and ref_labels.dtype == torch.bool:
        return labels.long(), ref_labels.long()
    both = torch.cat([labels, ref_labels]) if ref_labels is not labels else labels
    ids = torch.unique(both, return_inverse=True)[1]
    return ids[: labels.shape[0]], (ids[labels.shape[0]:] if ref_labels is not labels else ids)


def _check_label_tensor(name: str, labels, n: int, ref: torch.Tensor) -> torch.Tensor:
    """As the functional check, but any real dtype (the peer compares labels with ``==``)."""
    if isinstance(labels, torch.Tensor) and (labels.dtype.is_floating_point or labels.dtype == torch.bool):
        C.check_dense(name, labels)
        if labels.dim() != 1 or labels.shape[0] != n:
            raise ValueError(f"{name} must have shape ({n},) to match the features, got {tuple(labels.shape)}")
        if labels.device != ref.device:
            raise ValueError(f"{name} is on {labels.device} but the features are on {ref.device}")
        return labels
    return C.check_labels(name, labels, n, ref)


def _all_pairs_self_index(indices_tuple, labels, ref_labels, n: int, m: int):
    """``(True, self_index)`` when ``indices_tuple`` is all pairs of ``labels × ref_labels`` in row-major
    order, less nothing (``self_index`` None) or less exactly one positive per anchor (its column, the
    anchor's self-comparison: ``self_index [N]``); ``(False, None)`` for any other tuple. O(pairs)."""
    if not isinstance(indices_tuple, (tuple, list)) or len(indices_tuple) != 4:
        return False, None
    if not all(isinstance(t, torch.Tensor) and t.dim() == 1 and not t.dtype.is_floating_point
               and t.dtype != torch.bool and t.device == labels.device for t in indices_tuple):
        return False, None
    a1, p, a2, neg = (t.long() for t in indices_tuple)
    if a1.shape != p.shape or a2.shape != neg.shape:
        return False, None
    for a, c in ((a1, p), (a2, neg)):
        if a.numel() and (a.min() < 0 or a.max() >= n or c.min() < 0 or c.max() >= m):
            return False, None
        key = a * m + c
        if key.numel() > 1 and not bool((key[1:] > key[:-1]).all()):  # row-major, each pair once
            return False, None
    if a1.numel() and not bool((labels[a1] == ref_labels[p]).all()):
        return False, None
    if a2.numel() and bool((labels[a2] == ref_labels[neg]).any()):
        return False, None
    # how many columns share each anchor's label, and the sum of their indices (over dense class ids)
    ids = torch.unique(torch.cat([labels, ref_labels]), return_inverse=True)[1]
    labels, ref_labels = ids[:n], ids[n:]
    classes = int(ids.max()) + 1
    same = torch.zeros(classes, dtype=torch.long, device=labels.device).index_add_(
        0, ref_labels, torch.ones_like(ref_labels))[labels]
    if a2.shape[0] != int((m - same).sum()):  # every negative pair is there
        return False, None
    given = torch.bincount(a1, minlength=n)
    missing = same - given
    if bool((missing == 0).all()):
        return True, None
    if not bool((missing == 1).all()):
        return False, None
    column_sum = torch.zeros(classes, dtype=torch.long, device=labels.device).index_add_(
        0, ref_labels, torch.arange(m, device=labels.device))[labels]
    given_sum = torch.zeros(n, dtype=torch.long, device=labels.device).index_add_(0, a1, p)
    return True, column_sum - given_sum


class _PairLoss(nn.Module):
    _default_reducer = "MeanReducer"

    def __init__(self, temperature: float, backend: str, kwargs: dict):
        super().__init__()
        reason = _temperature_reason(temperature)
        if reason is None:
            _scale_of(temperature)  # checked as the functional API checks it (e.g. a string raises)
        self.temperature = temperature  # the peer's attribute; an nn.Parameter is registered, as the peer's
        self.backend = backend
        self._peer_kwargs = dict(kwargs)
        reducer = kwargs.get("reducer")
        self._reducer = self._default_reducer if reducer is None else type(reducer).__name__
        self._constructor_reason = _fused_reason(kwargs) or reason
        self._peer = None
        if self._constructor_reason is not None:
            self._build_peer(self._constructor_reason)

    def _build_peer(self, reason: str):
        """The installed peer's class with this instance's arguments (built once), announced by a
        one-time warning."""
        if self._peer is None:
            try:
                from pytorch_metric_learning import losses
            except ImportError as exc:
                raise ImportError(
                    f"{type(self).__name__} with {reason} is computed by pytorch-metric-learning's own "
                    "implementation, which is not installed (pip install pytorch-metric-learning)") from exc
            warnings.warn(
                f"contrastive_ops.compat.pytorch_metric_learning.{type(self).__name__}: {reason} is not on the "
                "fused path; pytorch-metric-learning's own implementation computes this loss (O(N·M) memory)",
                stacklevel=3)
            self._peer = getattr(losses, type(self).__name__)(temperature=self.temperature, **self._peer_kwargs)
        return self._peer

    def _prepare(self, embeddings, labels, indices_tuple, ref_emb, ref_labels):
        """``(peer, inputs)``: the peer's module where this call needs it (constructor options, or a
        tuple other than all pairs), else None and the fused path's checked inputs."""
        if self._constructor_reason is not None:
            return self._peer, None
        if indices_tuple is None:
            return None, self._inputs(embeddings, labels, ref_emb, ref_labels)
        if isinstance(embeddings, torch.Tensor) and isinstance(labels, torch.Tensor):
            try:
                inputs = self._inputs(embeddings, labels, ref_emb, ref_labels)
            except (TypeError, ValueError):
                inputs = None
            if inputs is not None:
                emb, ids, ref, ref_ids, _ = inputs
                all_pairs, tuple_self = _all_pairs_self_index(indices_tuple, ids, ref_ids, emb.shape[0], ref.shape[0])
                if all_pairs:  # the pairs the fused path takes: self-comparisons as the tuple leaves them out
                    return None, (emb, ids, ref, ref_ids, tuple_self)
        return self._build_peer("indices_tuple (a miner's pairs, other than all pairs)"), None

    def _inputs(self, embeddings, labels, ref_emb, ref_labels):
        C.check_features("embeddings", embeddings)
        if labels is None:
            raise ValueError("labels is required when indices_tuple is None, got labels=None")
        labels = _check_label_tensor("labels", labels, embeddings.shape[0], embeddings)
        if ref_emb is None:
            ref_emb, ref_labels = embeddings, labels
        else:
            C.check_features("ref_emb", ref_emb)
            C.check_same_kind(("embeddings", "ref_emb"), (embeddings, ref_emb))
        if ref_labels is None:  # the peer then pairs ref_emb rows with labels, self excluded
            ref_labels = labels
        ref_labels = _check_label_tensor("ref_labels", ref_labels, ref_emb.shape[0], ref_emb)
        # As the peer: a row is never its own positive exactly when ref_labels *is* labels.
        self_index = torch.arange(embeddings.shape[0], device=embeddings.device) if ref_labels is labels else None
        labels, ref_labels = _label_ids(labels, ref_labels)
        return embeddings, labels, ref_emb, ref_labels, self_index

    def _scale(self, ref: torch.Tensor):
        scale = _scale_of(self.temperature)
        return scale.to(ref.device) if isinstance(scale, torch.Tensor) and scale.device != ref.device else scale

    def _terms(self, embeddings, labels, ref_emb, ref_labels, self_index, decoupled: bool):
        spec = RoleSpec(row_labels=labels, col_labels=ref_labels, self_index=self_index, decoupled=decoupled)
        return compute_terms(embeddings, ref_emb, None, self._scale(embeddings), spec, self.backend)

    @staticmethod
    def _no_pairs(n_pos: torch.Tensor, n_neg: torch.Tensor) -> bool:
        """The peer's early exits: no positive pair, no negative pair, or at most one of each."""
        return bool(n_pos == 0 or n_neg == 0 or (n_pos <= 1 and n_neg <= 1))

    def _reduce(self, losses: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        """The reducer's value: the mean of all losses (MeanReducer) or of those > 0 (AvgNonZeroReducer)."""
        if self._reducer == "MeanReducer":
            return losses.mean() if losses.numel() > 0 else (embeddings * 0).sum()
        kept = losses[losses > 0]
        return kept.mean() if kept.numel() > 0 else (embeddings * 0).sum()


class SupConLoss(_PairLoss):
    """pytorch-metric-learning's ``SupConLoss(temperature=0.1, **kwargs)`` (default reducer
    ``AvgNonZeroReducer``); ``forward(embeddings, labels, indices_tuple=None, ref_emb=None, ref_labels=None)``."""

    _default_reducer = "AvgNonZeroReducer"

    def __init__(self, temperature: float = 0.1, *, backend: str = "auto", **kwargs):
        super().__init__(temperature, backend, kwargs)

    def forward(self, embeddings, labels=None, indices_tuple=None, ref_emb=None, ref_labels=None):
        peer, inputs = self._prepare(embeddings, labels, indices_tuple, ref_emb, ref_labels)
        if peer is not None:
            return peer(embeddings, labels, indices_tuple, ref_emb, ref_labels)
        embeddings, labels, ref_emb, ref_labels, self_index = inputs
        t = self._terms(embeddings, labels, ref_emb, ref_labels, self_index, decoupled=False)
        if self._no_pairs(t.row_pos_count.sum(), (t.row_den_count - t.row_pos_count).sum()):
            return (embeddings * 0).sum()
        losses = torch.where(t.row_pos_count > 0, t.row_lse - t.row_pos, torch.zeros_like(t.row_lse))
        return self._reduce(losses.to(embeddings.dtype), embeddings)


def _positive_pairs(labels: torch.Tensor, ref_labels: torch.Tensor, self_index: torch.Tensor | None):
    """All ``(anchor, positive)`` index pairs with equal labels, without an N×M matrix, less the pairs
    ``(i, self_index[i])``."""
    order = torch.argsort(ref_labels, stable=True)
    sorted_ref = ref_labels[order]
    start = torch.searchsorted(sorted_ref, labels, right=False)
    end = torch.searchsorted(sorted_ref, labels, right=True)
    counts = end - start
    anchors = torch.repeat_interleave(torch.arange(labels.shape[0], device=labels.device), counts)
    first = torch.repeat_interleave(start - torch.cumsum(counts, 0) + counts, counts)
    positives = order[first + torch.arange(anchors.shape[0], device=labels.device)]
    if self_index is not None:
        keep = self_index[anchors] != positives
        anchors, positives = anchors[keep], positives[keep]
    return anchors, positives


class NTXentLoss(_PairLoss):
    """pytorch-metric-learning's ``NTXentLoss(temperature=0.07, **kwargs)``: one term per positive pair,
    ``-log(e^{s_ap} / (e^{s_ap} + Σ_{n neg of a} e^{s_an}))``, averaged over the pairs (the default
    ``MeanReducer``; zero-loss pairs included);
    ``forward(embeddings, labels, indices_tuple=None, ref_emb=None, ref_labels=None)``."""

    def __init__(self, temperature: float = 0.07, *, backend: str = "auto", **kwargs):
        super().__init__(temperature, backend, kwargs)

    def forward(self, embeddings, labels=None, indices_tuple=None, ref_emb=None, ref_labels=None):
        peer, inputs = self._prepare(embeddings, labels, indices_tuple, ref_emb, ref_labels)
        if peer is not None:
            return peer(embeddings, labels, indices_tuple, ref_emb, ref_labels)
        embeddings, labels, ref_emb, ref_labels, self_index = inputs
        # Per anchor: the log-sum-exp over its negatives only (positives decoupled), tiled.
        t = self._terms(embeddings, labels, ref_emb, ref_labels, self_index, decoupled=True)
        if self._no_pairs(t.row_pos_count.sum(), t.row_den_count.sum()):  # decoupled: den = negatives
            return (embeddings * 0).sum()
        anchors, positives = _positive_pairs(labels, ref_labels, self_index)
        a_hat, r_hat = normalize_rows(embeddings[anchors]), normalize_rows(ref_emb[positives])
        pos_logits = (a_hat * r_hat).sum(dim=1).to(t.row_lse.dtype) * self._scale(embeddings)
        neg_lse = torch.where(t.row_den_count > 0, t.row_lse, torch.full_like(t.row_lse, float("-inf")))[anchors]
        ratio = torch.exp(pos_logits - torch.logaddexp(pos_logits, neg_lse))
        tiny = torch.finfo(embeddings.dtype).tiny  # the peer's guard inside the log
        losses = -torch.log(ratio + tiny)
        return self._reduce(losses.to(embeddings.dtype), embeddings)
