"""Drop-in ranking losses of sentence-transformers (``sentence_transformers.sentence_transformer.losses``).

``MultipleNegativesRankingLoss`` and ``CachedMultipleNegativesRankingLoss`` (and the deprecated
``…SymmetricRankingLoss`` aliases while the installed version has them) are subclasses of the
installed classes: constructor, config, model calls, GradCache, Matryoshka wrapping and the model
card stay the peer's. Only the scores → loss step runs on the fused core, for ``similarity_fct``
``cos_sim`` (normalized rows) or ``dot_score``; no ``[B, (1 + K)·B]`` score matrix is built.

Every direction and partition mode is exact:

* ``query_to_doc``: query ``i`` against every document column (positives, then each hard-negative
  column in the peer's order), its own document the positive;
* ``query_to_query``: against every query but itself; ``doc_to_query``: its document against every
  query; ``doc_to_doc``: its document against every document not belonging to query ``i`` (its own
  positive and hard negatives are excluded by label, in the tile);
* ``partition_mode="joint"``: one softmax over all of them — the log-sum-exp of the directions'
  row log-sum-exps, each from its own tiled pass; ``"per_direction"``: their mean.

``gather_across_devices`` gathers every rank's rows with their gradients by the peer's own
``all_gather_with_grad`` and ``get_rank`` (this rank's anchors against all ranks' candidates, as the
peer), so a gather the peer's code would use is ours too. The loss comes back in the dtype of the
installed peer's similarity scores (found by its own ``similarity_fct`` on one row: fp32 for half
embeddings where it upcasts, the embeddings' dtype where it does not), computed in fp32. Another
``similarity_fct``, and embeddings the fused path does not take (not ``[B, D]`` floating tensors of
one dtype, or documents with other than ``B`` rows per column), run the peer's own code, which then
raises where it raises; the first after a one-time warning.

A ``hardness_mode`` with ``hardness_strength = α > 0`` adds ``α·sim`` (detached) to the query_to_doc
logits of one class of documents. With ``s`` the scale, those logits are ``(s + α)·sim`` in value and
``s·sim`` in gradient, so the class's log-sum-exp is one tiled pass at scale ``s + α`` whose inputs'
gradients are scaled by ``s / (s + α)`` (the scale's own gradient is unchanged); the rest of the row
is another pass, or a row's own ``1 + K`` documents computed directly (O(B·K·D)):

* ``in_batch_negatives``: every document of another query (a pass with the owner as label, its own
  documents left out) against the row's own ``1 + K``;
* ``all_negatives``: every document but the positive (a decoupled pass) against the positive;
* ``hard_negatives``: the row's own K hard negatives against the rest (a pass whose own hard
  negatives are label-masked false negatives).
``GISTEmbedLoss`` and ``CachedGISTEmbedLoss`` embed with the model and the guide as the peer does
(re-tokenizing for a guide with another vocabulary, GradCache for the cached class) and compute the
loss by :func:`contrastive_ops.gist_loss`: the guide's false-negative filter is the core's guide role,
decided tile by tile, so no ``[B, (2 + K)·B]`` score or guide matrix is built.
"""
from __future__ import annotations

import logging
import sys
import warnings

import torch
from torch import Tensor

from ..backends import compute_terms
from ..core import RoleSpec
from ..functional import _gist_loss

try:
    from sentence_transformers import util as _st_util
    from sentence_transformers.base.losses.merged_forward import embed_columns as _embed_columns
    from sentence_transformers.sentence_transformer import losses as _st_losses
except ImportError as exc:  # pragma: no cover - exercised only without the peer
    raise ImportError("contrastive_ops.compat.sentence_transformers needs sentence-transformers installed "
                      "(pip install sentence-transformers)") from exc

__all__ = ["CachedGISTEmbedLoss", "CachedMultipleNegativesRankingLoss", "GISTEmbedLoss", "MultipleNegativesRankingLoss",
           "ranking_loss"]

logger = logging.getLogger(__name__)
_WARNED: set = set()


def _warn_once(cls: str, reason: str) -> None:
    if (cls, reason) not in _WARNED:
        _WARNED.add((cls, reason))
        logger.warning("contrastive_ops.compat.sentence_transformers.%s: %s is not on the fused path; "
                       "sentence-transformers' own code computes this loss (a full score matrix)", cls, reason)


def _normalize_for(similarity_fct):
    """``True`` for cosine similarity, ``False`` for the dot product, None for anything else."""
    if similarity_fct in (_st_util.cos_sim, getattr(_st_util, "pytorch_cos_sim", None)):
        return True
    if similarity_fct is _st_util.dot_score:
        return False
    return None


def _peer_distributed(cls) -> tuple:
    """``(all_gather_with_grad, get_rank)`` as the peer's module of ``cls`` names them now (so that
    whatever the peer's code would gather with, ours does too), sentence-transformers' own otherwise."""
    for base in cls.__mro__:
        if base.__module__.startswith("sentence_transformers."):
            module = sys.modules[base.__module__]
            return (getattr(module, "all_gather_with_grad", _st_util.all_gather_with_grad),
                    getattr(module, "get_rank", _st_util.get_rank))
    return _st_util.all_gather_with_grad, _st_util.get_rank


def _row_lse(terms) -> Tensor:
    """A direction's per-row log-sum-exp, ``-inf`` where its candidate set is empty (a joint softmax
    then ignores it, as the peer's ``-inf`` scores)."""
    return torch.where(terms.row_den_count > 0, terms.row_lse, torch.full_like(terms.row_lse, float("-inf")))


class _GradScale(torch.autograd.Function):
    """The identity whose backward multiplies the gradient by ``factor`` (a float or a 0-d tensor
    without a gradient)."""

    @staticmethod
    def forward(ctx, x, factor):
        ctx.factor = factor
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.factor, None


def _own_similarities(queries: Tensor, docs: list[Tensor], normalize: bool) -> Tensor:
    """``[B, 1 + K]``: each query's similarity to its own positive and hard negatives (``docs`` rows
    aligned with ``queries``), in the core's accumulation dtype."""
    dtype = torch.float64 if queries.dtype == torch.float64 else torch.float32
    q = queries.to(dtype)
    own = torch.stack([d.to(dtype) for d in docs], dim=1)  # [B, 1 + K, D]
    if normalize:
        q, own = torch.nn.functional.normalize(q, dim=-1), torch.nn.functional.normalize(own, dim=-1)
    return torch.einsum("bd,bkd->bk", q, own)


def ranking_loss(queries: Tensor, docs: list[Tensor], *, scale, normalize: bool = True,
                 directions=("query_to_doc",), partition_mode: str = "joint", gather_across_devices: bool = False,
                 hardness_mode: str | None = None, hardness_strength: float = 0.0,
                 backend: str = "auto", distributed: tuple | None = None) -> Tensor:
    """sentence-transformers' multiple-negatives ranking loss from embeddings, on the fused core.

    Args:
        queries: ``[B, D]`` this rank's query embeddings.
        docs: ``1 + K`` tensors ``[B, D]``: the positive documents, then each hard-negative column.
        scale: logits are ``scale · sim`` (float or 0-d tensor).
        normalize: cosine similarity (True) or dot product (False).
        directions, partition_mode, gather_across_devices, hardness_mode, hardness_strength: as
            ``MultipleNegativesRankingLoss`` (the mode is ignored where the strength is 0).
        distributed: ``(all_gather_with_grad, get_rank)`` for ``gather_across_devices``;
            sentence-transformers' own by default (every rank's rows with their gradients, this rank's
            queries at offset ``rank · B``; outside a process group they gather nothing).
    Returns:
        the mean over this rank's queries of ``log Z_i − scale·sim(q_i, d_i)`` (fp32 for half inputs).
    """
    batch = queries.shape[0]
    offset = 0
    if gather_across_devices:
        gather, get_rank = distributed or (_st_util.all_gather_with_grad, _st_util.get_rank)
        queries = gather(queries)
        docs = [gather(d) for d in docs]
        offset = get_rank() * batch
    world_batch = queries.shape[0]
    docs_all = torch.cat(docs, dim=0) if len(docs) > 1 else docs[0]
    local = torch.arange(offset, offset + batch, device=queries.device)
    local_queries = queries if world_batch == batch else queries[local]
    local_docs = docs[0] if world_batch == batch else docs[0][local]

    owner = torch.arange(docs_all.shape[0], device=queries.device) % world_batch  # the query a document belongs to

    def terms(rows, columns, scale=scale, **roles):
        return compute_terms(rows, columns, None, scale, RoleSpec(normalize=normalize, **roles), backend)

    alpha = float(hardness_strength) if hardness_mode is not None else 0.0
    if hardness_mode == "hard_negatives" and len(docs) == 1:
        alpha = 0.0  # no hard negatives: nothing is penalized
    if alpha > 0.0:
        q2d_lse, pos = _hard_query_to_doc(terms, local_queries, docs, docs_all, local, owner, offset, batch,
                                          scale, alpha, normalize, hardness_mode)
    else:
        q2d = terms(local_queries, docs_all, pos_index=local)
        q2d_lse, pos = q2d.row_lse, q2d.row_pos
    lses = [q2d_lse]
    if "query_to_query" in directions:
        lses.append(_row_lse(terms(local_queries, queries, self_index=local)))
    if "doc_to_query" in directions:
        lses.append(_row_lse(terms(local_docs, queries)))
    if "doc_to_doc" in directions:
        # a document column's label is the query it belongs to; decoupled: no positive in the denominator
        lses.append(_row_lse(terms(local_docs, docs_all, row_labels=local, col_labels=owner, decoupled=True)))
    if partition_mode == "joint":
        log_z = torch.logsumexp(torch.stack(lses), dim=0) if len(lses) > 1 else lses[0]
    else:
        log_z = torch.stack(lses).mean(dim=0)
    return (log_z - pos).mean()


def _hard_query_to_doc(terms, queries, docs, docs_all, local, owner, offset, batch, scale, alpha, normalize, mode):
    """query_to_doc's ``(row log-sum-exp, positive logit)`` with the hardness penalty ``α·sim`` (see the
    module's docstring): the penalized class at scale ``s + α`` with gradients ``s·∂sim``."""
    own_docs = [d if d.shape[0] == batch else d[offset:offset + batch] for d in docs]
    own = _own_similarities(queries, own_docs, normalize)  # [B, 1 + K]
    own_logits = own * scale
    pos = own_logits[:, 0]

    def penalized(**roles):
        # a tensor scale stays on its device (no host sync); the factor itself gets no gradient
        factor = scale.detach() / (scale.detach() + alpha) if isinstance(scale, Tensor) else scale / (scale + alpha)
        q, c = _GradScale.apply(queries, factor), _GradScale.apply(docs_all, factor)
        return _row_lse(terms(q, c, scale=scale + alpha, **roles))

    if mode == "in_batch_negatives":
        rest = [penalized(row_labels=local, col_labels=owner, decoupled=True), torch.logsumexp(own_logits, dim=1)]
    elif mode == "all_negatives":
        rest = [penalized(pos_index=local, decoupled=True), pos]
    else:  # hard_negatives: the row's own hard negatives penalized, every other document not
        others = terms(queries, docs_all, pos_index=local, row_labels=local, col_labels=owner)
        hard = own_logits[:, 1:] + alpha * own[:, 1:].detach()
        return torch.logsumexp(torch.cat([others.row_lse[:, None], hard], dim=1), dim=1), pos
    return torch.logsumexp(torch.stack(rest), dim=0), pos


def _score_dtype(similarity_fct, a: Tensor, b: Tensor) -> torch.dtype:
    """The dtype of the installed peer's scores: its similarity function on one row of each side."""
    with torch.no_grad():
        return similarity_fct(a[:1].detach(), b[:1].detach()).dtype


def _fusable(embeddings: list[Tensor]) -> bool:
    """Embeddings the fused path takes: ``[B, D]`` dense floating tensors of one dtype, device and ``D``,
    every document column with the queries' ``B`` rows (``B >= 1``). The peer's own code runs anything
    else (and raises where it raises)."""
    first = embeddings[0]
    for e in embeddings:
        if not isinstance(e, Tensor) or e.dim() != 2 or e.layout != torch.strided or not e.dtype.is_floating_point:
            return False
        if e.shape != first.shape or e.dtype != first.dtype or e.device != first.device:
            return False
    return first.shape[0] > 0 and first.shape[1] > 0


class _Fused:
    """What the fused classes share: whether this configuration can take the fused path."""

    backend = "auto"

    def _fused_normalize(self):
        """``normalize`` for the core, or None (with a one-time warning) where the peer's code must run."""
        normalize = _normalize_for(self.similarity_fct)
        if normalize is None:
            _warn_once(type(self).__name__, f"similarity_fct={_st_util.similarity_fct_name(self.similarity_fct)}")
            return None
        return normalize

    def _fused_loss(self, queries, docs, normalize):
        """The loss, in the dtype of the peer's scores (computed in fp32 for half embeddings)."""
        loss = ranking_loss(queries, docs, scale=self.scale, normalize=normalize, directions=self.directions,
                            partition_mode=self.partition_mode, gather_across_devices=self.gather_across_devices,
                            hardness_mode=self.hardness_mode, hardness_strength=self.hardness_strength,
                            backend=self.backend, distributed=_peer_distributed(type(self)))
        return loss.to(_score_dtype(self.similarity_fct, queries, docs[0]))


class MultipleNegativesRankingLoss(_Fused, _st_losses.MultipleNegativesRankingLoss):
    """sentence-transformers' ``MultipleNegativesRankingLoss(model, scale=20.0, similarity_fct=cos_sim,
    gather_across_devices=False, directions=("query_to_doc",), partition_mode="joint",
    hardness_mode=None, hardness_strength=0.0)``; its ``compute_loss_from_embeddings`` on the fused core.
    ``backend=`` (keyword only) picks the core's backend."""

    def __init__(self, *args, backend: str = "auto", **kwargs):
        super().__init__(*args, **kwargs)
        self.backend = backend

    def compute_loss_from_embeddings(self, embeddings: list[Tensor], labels: Tensor) -> Tensor:
        if len(embeddings) < 2 or not _fusable(list(embeddings)):
            return super().compute_loss_from_embeddings(embeddings, labels)
        normalize = self._fused_normalize()
        if normalize is None:
            return super().compute_loss_from_embeddings(embeddings, labels)
        return self._fused_loss(embeddings[0], list(embeddings[1:]), normalize)


class CachedMultipleNegativesRankingLoss(_Fused, _st_losses.CachedMultipleNegativesRankingLoss):
    """sentence-transformers' ``CachedMultipleNegativesRankingLoss`` (GradCache): the embeddings of
    every mini-batch are cached as the peer does, and the loss and its gradients with respect to them
    come from one fused call over the whole batch (no ``mini_batch_size`` × batch score chunks)."""

    def __init__(self, *args, backend: str = "auto", **kwargs):
        super().__init__(*args, **kwargs)
        self.backend = backend

    def calculate_loss(self, reps: list[list[Tensor]], labels: Tensor | None = None, *,
                       with_backward: bool = False) -> Tensor:
        embeddings = [torch.cat(r) for r in reps]
        if len(embeddings) < 2 or not _fusable(embeddings):
            return super().calculate_loss(reps, labels, with_backward=with_backward)
        normalize = self._fused_normalize()
        if normalize is None:
            return super().calculate_loss(reps, labels, with_backward=with_backward)
        loss = self._fused_loss(embeddings[0], embeddings[1:], normalize)
        if with_backward:
            loss.backward()
            loss = loss.detach()
        return loss


class _FusedGIST:
    """What the GIST classes share: the loss of one batch's embeddings and the guide's."""

    backend = "auto"

    def _gist(self, embeddings: list[Tensor], guides: list[Tensor]) -> Tensor:
        negatives = torch.cat(embeddings[2:]) if len(embeddings) > 2 else None
        negative_guides = torch.cat(guides[2:]) if len(guides) > 2 else None
        gather = None
        if self.gather_across_devices:  # gathered as the peer would
            gather_fn, get_rank = _peer_distributed(type(self))
            gather = (gather_fn, get_rank())
        loss = _gist_loss(embeddings[0], embeddings[1], negatives, anchor_guide=guides[0], positive_guide=guides[1],
                          negative_guide=negative_guides, temperature=self.temperature,
                          margin_strategy=self.margin_strategy, margin=self.margin,
                          contrast_anchors=self.contrast_anchors, contrast_positives=self.contrast_positives,
                          backend=self.backend, gather=gather)
        with torch.no_grad():  # the dtype of the installed peer's scores, from its own sim_matrix on one row
            dtype = self.sim_matrix(embeddings[0][:1].detach(), embeddings[1][:1].detach()).dtype
        return loss.to(dtype)


class GISTEmbedLoss(_FusedGIST, _st_losses.GISTEmbedLoss):
    """sentence-transformers' ``GISTEmbedLoss(model, guide, temperature=0.01, margin_strategy="absolute",
    margin=0.0, contrast_anchors=True, contrast_positives=True, gather_across_devices=False)`` with
    the loss on the fused core. ``backend=`` (keyword only) picks the core's backend."""

    def __init__(self, *args, backend: str = "auto", **kwargs):
        super().__init__(*args, **kwargs)
        self.backend = backend

    def _guide_features(self, features: list[dict]) -> list[dict]:
        """The guide's inputs: the model's own, or the model's texts re-tokenized for the guide."""
        if not self.must_retokenize:
            return [dict(f) for f in features]
        out = []
        for feature in features:
            input_ids = feature["input_ids"]
            if "cu_seq_lens_q" in feature:  # packed sequences: one row, split at the offsets
                flat, bounds = input_ids[0].tolist(), feature["cu_seq_lens_q"].tolist()
                input_ids = [flat[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
            texts = self.tokenizer.batch_decode(input_ids, skip_special_tokens=True)
            out.append(_st_util.batch_to_device(self.guide.preprocess(texts), self.guide.device))
        return out

    def forward(self, sentence_features, labels: Tensor) -> Tensor:
        features = list(sentence_features)
        guide_features = self._guide_features(features)
        embeddings = _embed_columns(self.model, features)
        with torch.no_grad():
            guides = _embed_columns(self.guide, guide_features)
        if len(embeddings) not in (2, 3):
            raise ValueError(f"Expected 2 or 3 embeddings, got {len(embeddings)}")
        return self._gist(embeddings, guides)


class CachedGISTEmbedLoss(_FusedGIST, _st_losses.CachedGISTEmbedLoss):
    """sentence-transformers' ``CachedGISTEmbedLoss`` (GradCache with a guide): the embeddings and the
    guide's of every mini-batch are cached as the peer does, and the loss and its gradients with
    respect to them come from one fused call over the whole batch."""

    def __init__(self, *args, backend: str = "auto", **kwargs):
        super().__init__(*args, **kwargs)
        self.backend = backend

    def calculate_loss(self, reps: list[list[Tensor]], reps_guided: list[list[Tensor]], *,
                       with_backward: bool = False) -> Tensor:
        if len(reps) != len(reps_guided):
            raise ValueError("reps and reps_guided must have the same length")
        loss = self._gist([torch.cat(r) for r in reps], [torch.cat(r) for r in reps_guided])
        if with_backward:
            loss.backward()
            loss = loss.detach()
        return loss


def _symmetric(fused, peer_name: str):
    """The fused class for a deprecated symmetric alias of the installed version (None if it has none)."""
    peer = getattr(_st_losses, peer_name, None)
    if peer is None:
        return None
    with warnings.catch_warnings():  # the peer marks the class deprecated, which warns on subclassing too
        warnings.simplefilter("ignore", DeprecationWarning)
        doc = f"sentence-transformers' ``{peer_name}`` on the fused core (as :class:`{fused.__name__}`)."
        return type(peer_name, (fused, peer), {"__doc__": doc, "__module__": __name__})


MultipleNegativesSymmetricRankingLoss = _symmetric(MultipleNegativesRankingLoss, "MultipleNegativesSymmetricRankingLoss")
CachedMultipleNegativesSymmetricRankingLoss = _symmetric(CachedMultipleNegativesRankingLoss,
                                                         "CachedMultipleNegativesSymmetricRankingLoss")
__all__ += [name for name, cls in (("MultipleNegativesSymmetricRankingLoss", MultipleNegativesSymmetricRankingLoss),
                                   ("CachedMultipleNegativesSymmetricRankingLoss",
                                    CachedMultipleNegativesSymmetricRankingLoss)) if cls is not None]
