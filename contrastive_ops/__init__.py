"""contrastive_ops: exact contrastive losses computed in tiles, as drop-in PyTorch ops.

Functional API: :func:`info_nce`, :func:`nt_xent`, :func:`clip_loss`, :func:`supcon_loss`,
:func:`dcl_loss`, :func:`ring_info_nce`; modules in :mod:`contrastive_ops.nn`; drop-in copies of
peers' loss classes in :mod:`contrastive_ops.compat`.
"""
from .backends import BACKENDS, BackendUnavailableError, available_backends, backend_status
from . import nn
from .functional import clip_loss, dcl_loss, info_nce, nt_xent, ring_info_nce, supcon_loss

__version__ = "0.1.0"

__all__ = [
    "info_nce",
    "nt_xent",
    "clip_loss",
    "supcon_loss",
    "dcl_loss",
    "ring_info_nce",
    "available_backends",
    "backend_status",
    "BACKENDS",
    "BackendUnavailableError",
    "__version__",
]
