"""contrastive_ops: exact contrastive losses computed in tiles, as drop-in PyTorch ops.

Functional API: :func:`info_nce`, :func:`nt_xent`, :func:`clip_loss`, :func:`supcon_loss`,
:func:`dcl_loss`, :func:`ring_info_nce`, :func:`hard_negative_nce`, :func:`debiased_nce`,
:func:`siglip_loss`, :func:`gist_loss`; modules in :mod:`contrastive_ops.nn`; drop-in copies of
peers' loss classes in :mod:`contrastive_ops.compat`; batches larger than memory through
:class:`CachedStep` / :func:`cached_step` (:mod:`contrastive_ops.cached`).
"""
from . import nn
from .backends import BACKENDS, BackendUnavailableError, available_backends, backend_status
from .cached import CachedStep, cached_step
from .functional import (
    clip_loss,
    dcl_loss,
    debiased_nce,
    gist_loss,
    hard_negative_nce,
    info_nce,
    nt_xent,
    ring_info_nce,
    siglip_loss,
    supcon_loss,
)

__version__ = "0.1.0"

__all__ = [
    "BACKENDS",
    "BackendUnavailableError",
    "CachedStep",
    "__version__",
    "available_backends",
    "backend_status",
    "cached_step",
    "clip_loss",
    "dcl_loss",
    "debiased_nce",
    "gist_loss",
    "hard_negative_nce",
    "info_nce",
    "nn",
    "nt_xent",
    "ring_info_nce",
    "siglip_loss",
    "supcon_loss",
]
