"""Drop-in ``NTXentLoss`` and ``SupConLoss`` of pytorch-metric-learning (``pytorch_metric_learning.losses``).

Both keep the peer's defaults: cosine similarity (embeddings L2-normalized), all pairs built from
``labels`` (and ``ref_labels`` when ``ref_emb`` is given), and the ``AvgNonZeroReducer`` (the mean
of the losses that are > 0; a zero loss with zero gradient when there is none).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import _checks as C
from ..core import RoleSpec
from ..functional import _compute

_SUPPORTED_KWARGS = ("collect_stats",)


def _check_kwargs(cls: str, kwargs: dict) -> None:
    for name, value in kwargs.items():
        if name == "distance" and type(value).__name__ == "CosineSimilarity" and getattr(value, "power", 1) == 1:
            continue  # the default distance
        if name in _SUPPORTED_KWARGS:
            continue
        raise ValueError(
            f"{cls}: option {name}={value!r} is not supported by contrastive_ops.compat.pytorch_metric_learning "
            "(only the default CosineSimilarity distance and AvgNonZeroReducer are)"
        )


class _PairLoss(nn.Module):
    def __init__(self, temperature: float, backend: str, kwargs: dict):
        super().__init__()
        _check_kwargs(type(self).__name__, kwargs)
        self.temperature = C.check_temperature(temperature)
        self.backend = backend

    def _inputs(self, embeddings, labels, indices_tuple, ref_emb, ref_labels):
        if indices_tuple is not None:
            raise ValueError(
                f"indices_tuple (a miner's output) is not supported by contrastive_ops.compat.pytorch_metric_learning."
                f"{type(self).__name__}: pass labels and use all pairs"
            )
        C.check_features("embeddings", embeddings)
        if labels is None:
            raise ValueError("labels is required (indices_tuple is not supported), got labels=None")
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
        return _compute(embeddings, ref_emb, None, 1.0 / self.temperature, spec, self.backend)

    @staticmethod
    def _no_pairs(n_pos: torch.Tensor, n_neg: torch.Tensor) -> bool:
        """The peer's early exits: no positive pair, no negative pair, or at most one of each."""
        return bool(n_pos == 0 or n_neg == 0 or (n_pos <= 1 and n_neg <= 1))

    @staticmethod
    def _avg_nonzero(losses: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        kept = losses[losses > 0]
        return kept.mean() if kept.numel() > 0 else (embeddings * 0).sum()


class SupConLoss(_PairLoss):
    """pytorch-metric-learning's ``SupConLoss(temperature=0.1)``;
    ``forward(embeddings, labels, indices_tuple=None, ref_emb=None, ref_labels=None)``."""

    def __init__(self, temperature: float = 0.1, *, backend: str = "auto", **kwargs):
        super().__init__(temperature, backend, kwargs)

    def forward(self, embeddings, labels=None, indices_tuple=None, ref_emb=None, ref_labels=None):
        embeddings, labels, ref_emb, ref_labels, self_index = self._inputs(
            embeddings, labels, indices_tuple, ref_emb, ref_labels)
        t = self._terms(embeddings, labels, ref_emb, ref_labels, self_index, decoupled=False)
        if self._no_pairs(t.row_pos_count.sum(), (t.row_den_count - t.row_pos_count).sum()):
            return (embeddings * 0).sum()
        losses = torch.where(t.row_pos_count > 0, t.row_lse - t.row_pos, torch.zeros_like(t.row_lse))
        return self._avg_nonzero(losses.to(embeddings.dtype), embeddings)


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
    """pytorch-metric-learning's ``NTXentLoss(temperature=0.07)``: one term per positive pair,
    ``-log(e^{s_ap} / (e^{s_ap} + Σ_{n neg of a} e^{s_an}))``;
    ``forward(embeddings, labels, indices_tuple=None, ref_emb=None, ref_labels=None)``."""

    def __init__(self, temperature: float = 0.07, *, backend: str = "auto", **kwargs):
        super().__init__(temperature, backend, kwargs)

    def forward(self, embeddings, labels=None, indices_tuple=None, ref_emb=None, ref_labels=None):
        embeddings, labels, ref_emb, ref_labels, self_index = self._inputs(
            embeddings, labels, indices_tuple, ref_emb, ref_labels)
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
        return self._avg_nonzero(losses.to(embeddings.dtype), embeddings)
