"""The bundled pretraining trainer: ``contrastive-ops-train`` / ``python -m contrastive_ops.train``.

It uses only the public API (``contrastive_ops.functional``), trains a small encoder on the
embedded digits dataset (or a user's array or image folder), and reports a linear probe.
"""
