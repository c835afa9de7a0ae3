"""Drop-in ``ClipLoss`` of open_clip (``open_clip.loss.ClipLoss``)."""
from __future__ import annotations

import torch
from torch import nn

from ..functional import clip_loss


class ClipLoss(nn.Module):
    """open_clip's ``ClipLoss``: ``(CE(s·I·Tᵀ) + CE(s·T·Iᵀ))/2`` with diagonal targets, features as given.

    Single process only: ``world_size > 1`` (with ``local_loss`` / ``gather_with_grad``) and
    ``use_horovod`` raise a ``ValueError``. ``cache_labels`` is accepted and has nothing to cache.
    ``backend`` (not in open_clip) picks this package's backend.
    """

    def __init__(self, local_loss: bool = False, gather_with_grad: bool = False, cache_labels: bool = False,
                 rank: int = 0, world_size: int = 1, use_horovod: bool = False, *, backend: str = "auto"):
        super().__init__()
        if world_size != 1:
            raise ValueError(
                f"world_size={world_size!r}: distributed ClipLoss (local_loss, gather_with_grad) is not supported "
                "by contrastive_ops.compat.open_clip.ClipLoss yet; use world_size=1"
            )
        if use_horovod:
            raise ValueError("use_horovod=True is not supported by contrastive_ops.compat.open_clip.ClipLoss")
        self.local_loss = local_loss
        self.gather_with_grad = gather_with_grad
        self.cache_labels = cache_labels
        self.rank = rank
        self.world_size = world_size
        self.use_horovod = use_horovod
        self.backend = backend

    def forward(self, image_features, text_features, logit_scale, logit_bias=None, output_dict: bool = False):
        total_loss = clip_loss(image_features, text_features, logit_scale, normalize=False, backend=self.backend)
        if isinstance(logit_bias, torch.Tensor) and logit_bias.requires_grad:
            # A bias added to every logit cancels in both softmaxes: its gradient is zero.
            total_loss = total_loss + (logit_bias * 0).sum()
        return {"contrastive_loss": total_loss} if output_dict else total_loss
