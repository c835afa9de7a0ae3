"""Drop-in ``NTXentLoss`` and ``SupConLoss`` of pytorch-metric-learning (``pytorch_metric_learning.losses``).

Both keep the peer's defaults: cosine similarity (embeddings L2-normalized), all pairs built from
``labels`` (and ``ref_labels`` when ``ref_emb`` is given), and the peer's default reducer: the mean
of every positive pair's loss for ``NTXentLoss`` (``MeanReducer``), the mean of the anchor losses
that are > 0 for ``SupConLoss`` (``AvgNonZeroReducer``); a zero loss with zero gradient when there is
no pair. ``MeanReducer`` and ``AvgNonZeroReducer`` run on the fused path for both.

Options the fused path cannot honour — a miner's ``indices_tuple`` (what ``CrossBatchMemory``
passes), another ``distance`` or ``reducer``, regularizers — are computed by the installed peer's
own class, built with the same arguments, after a one-time warning that says why.
"""
from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn

from .. import _checks as C
from ..backends import compute_terms
from ..core import RoleSpec

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


class _PairLoss(nn.Module):
    _default_reducer = "MeanReducer"

    def __init__(self, temperature: float, backend: str, kwargs: dict):
        super().__init__()
        self.temperature = C.check_temperature(temperature)
        self.backend = backend
        self._peer_kwargs = dict(kwargs)
        reducer = kwargs.get("reducer")
        self._reducer = self._default_reducer if reducer is None else type(reducer).__name__
        self._constructor_reason = _fused_reason(kwargs)
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

    def _peer_for(self, indices_tuple):
        """The peer's module when this call needs it (constructor options or a miner's tuples), else None."""
        if self._constructor_reason is not None:
            return self._peer
        if indices_tuple is not None:
            return self._build_peer("indices_tuple (a miner's or CrossBatchMemory's pairs)")
        return None

    def _inputs(self, embeddings, labels, ref_emb, ref_labels):
        C.check_features("embeddings", embeddings)
        if labels is None:
            raise ValueError("labels is required when indices_tuple is None, got labels=None")
        labels = C.check_labels("labels", labels, embeddings.shape[0], embeddings)
        if ref_emb is None:
            ref_emb, ref_labels = embeddings, labels
        else:
            C.check_features("ref_emb", ref_emb)
            C.check_same_kind(("embeddings", "ref_emb"), (embeddings, ref_emb))
        if ref_labels is None:  # the peer then pairs ref_emb rows with labels, self excluded
            ref_labels = labels
        ref_labels = C.check_labels("ref_labels", ref_labels, ref_emb.shape[0], ref_emb)
        # As the peer: a row is never its own positive exactly when ref_labels *is* labels.
        self_index = torch.arange(embeddings.shape[0], device=embeddings.device) if ref_labels is labels else None
        return embeddings, labels, ref_emb, ref_labels, self_index

    def _terms(self, embeddings, labels, ref_emb, ref_labels, self_index, decoupled: bool):
        spec = RoleSpec(row_labels=labels, col_labels=ref_labels, self_index=self_index, decoupled=decoupled)
        return compute_terms(embeddings, ref_emb, None, 1.0 / self.temperature, spec, self.backend)

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
        peer = self._peer_for(indices_tuple)
        if peer is not None:
            return peer(embeddings, labels, indices_tuple, ref_emb, ref_labels)
        embeddings, labels, ref_emb, ref_labels, self_index = self._inputs(embeddings, labels, ref_emb, ref_labels)
        t = self._terms(embeddings, labels, ref_emb, ref_labels, self_index, decoupled=False)
        if self._no_pairs(t.row_pos_count.sum(), (t.row_den_count - t.row_pos_count).sum()):
            return (embeddings * 0).sum()
        losses = torch.where(t.row_pos_count > 0, t.row_lse - t.row_pos, torch.zeros_like(t.row_lse))
        return self._reduce(losses.to(embeddings.dtype), embeddings)


def _positive_pairs(labels: torch.Tensor, ref_labels: torch.Tensor, exclude_self: bool):
    """All ``(anchor, positive)`` index pairs with equal labels, without an N×M matrix."""
    order = torch.argsort(ref_labels, stable=True)
    sorted_ref = ref_labels[order]
    start = torch.searchsorted(sorted_ref, labels, right=False)
    end = torch.searchsorted(sorted_ref, labels, right=True)
    counts = end - start
    anchors = torch.repeat_interleave(torch.arange(labels.shape[0], device=labels.device), counts)
    first = torch.repeat_interleave(start - torch.cumsum(counts, 0) + counts, counts)
    positives = order[first + torch.arange(anchors.shape[0], device=labels.device)]
    if exclude_self:
        keep = anchors != positives
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
        peer = self._peer_for(indices_tuple)
        if peer is not None:
            return peer(embeddings, labels, indices_tuple, ref_emb, ref_labels)
        embeddings, labels, ref_emb, ref_labels, self_index = self._inputs(embeddings, labels, ref_emb, ref_labels)
        # Per anchor: the log-sum-exp over its negatives only (positives decoupled), tiled.
        t = self._terms(embeddings, labels, ref_emb, ref_labels, self_index, decoupled=True)
        if self._no_pairs(t.row_pos_count.sum(), t.row_den_count.sum()):  # decoupled: den = negatives
            return (embeddings * 0).sum()
        anchors, positives = _positive_pairs(labels, ref_labels, exclude_self=self_index is not None)
        a_hat, r_hat = F.normalize(embeddings[anchors], dim=1), F.normalize(ref_emb[positives], dim=1)
        pos_logits = (a_hat * r_hat).sum(dim=1).to(t.row_lse.dtype) / self.temperature
        neg_lse = torch.where(t.row_den_count > 0, t.row_lse, torch.full_like(t.row_lse, float("-inf")))[anchors]
        ratio = torch.exp(pos_logits - torch.logaddexp(pos_logits, neg_lse))
        tiny = torch.finfo(embeddings.dtype).tiny  # the peer's guard inside the log
        losses = -torch.log(ratio + tiny)
        return self._reduce(losses.to(embeddings.dtype), embeddings)
