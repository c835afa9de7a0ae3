"""Drop-in copies of peers' loss classes: same constructor, forward signature, semantics and
reductions, computed by this package's tiled core. Change only the import line:

* ``contrastive_ops.compat.pytorch_metric_learning``: ``NTXentLoss``, ``SupConLoss``
* ``contrastive_ops.compat.lightly``: ``NTXentLoss`` (with ``memory_bank_size``), ``DCLLoss``, ``DCLWLoss``
* ``contrastive_ops.compat.open_clip``: ``ClipLoss``, ``SigLipLoss``
* ``contrastive_ops.compat.sentence_transformers``: ``MultipleNegativesRankingLoss``,
  ``CachedMultipleNegativesRankingLoss`` (and their symmetric aliases), subclasses of the installed ones

A peer option the fused path cannot honour is computed by the peer's own code after a one-time
warning (pytorch-metric-learning, sentence-transformers), or, where the peer would raise, raises
what it raises.
"""
