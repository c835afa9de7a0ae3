"""Drop-in copies of peers' loss classes: same constructor, forward signature, semantics and
reductions, computed by this package's tiled core. Change only the import line:

* ``contrastive_ops.compat.pytorch_metric_learning``: ``NTXentLoss``, ``SupConLoss``
* ``contrastive_ops.compat.lightly``: ``NTXentLoss`` (with ``memory_bank_size``), ``DCLLoss``, ``DCLWLoss``
* ``contrastive_ops.compat.open_clip``: ``ClipLoss``, ``SigLipLoss``

An option a compat class cannot honour raises a ``ValueError`` that names it.
"""
