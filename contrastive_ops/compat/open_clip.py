"""Drop-in ``ClipLoss`` of open_clip (``open_clip.loss.ClipLoss``)."""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from .. import distributed as dist_
from ..functional import _info_nce_distributed, check_clip_arguments, clip_loss


class ClipLoss(nn.Module):
    """open_clip's ``ClipLoss``: ``(CE(s·I·Tᵀ) + CE(s·T·Iᵀ))/2`` with diagonal targets, features as given.

    With ``world_size > 1`` (``torch.distributed`` initialized with that many ranks) the features
    of every rank are gathered, as open_clip does: ``local_loss=True`` gives this rank's rows
    against the global batch (the tiled core never builds the global logits), ``local_loss=False``
    the global loss on every rank; ``gather_with_grad`` decides whether gradients flow back to the
    other ranks' features. ``use_horovod`` raises a ``ValueError``. ``cache_labels`` is accepted
    and has nothing to cache. ``backend`` (not in open_clip) picks this package's backend.
    """

    def __init__(self, local_loss: bool = False, gather_with_grad: bool = False, cache_labels: bool = False,
                 rank: int = 0, world_size: int = 1, use_horovod: bool = False, *, backend: str = "auto"):
        super().__init__()
        if use_horovod:
            raise ValueError("use_horovod=True is not supported by contrastive_ops.compat.open_clip.ClipLoss")
        self.local_loss = local_loss
        self.gather_with_grad = gather_with_grad
        self.cache_labels = cache_labels
        self.rank = rank
        self.world_size = world_size
        self.use_horovod = use_horovod
        self.backend = backend

    def _group(self):
        if self.world_size == 1:
            return None
        if not dist.is_available() or not dist.is_initialized() or dist.get_world_size() != self.world_size:
            found = dist.get_world_size() if dist.is_available() and dist.is_initialized() else "not initialized"
            raise ValueError(f"world_size={self.world_size} but torch.distributed has world size {found}")
        return dist.group.WORLD

    def forward(self, image_features, text_features, logit_scale, logit_bias=None, output_dict: bool = False):
        group = self._group()
        if group is None:
            total_loss = clip_loss(image_features, text_features, logit_scale, normalize=False, backend=self.backend)
        elif self.local_loss:
            scale = check_clip_arguments(image_features, text_features, logit_scale, False, "mean")
            # as open_clip: without gather_with_grad, the gathered features carry no gradient at all
            total_loss = _info_nce_distributed(
                image_features, text_features, None, scale, True, True, False, "mean", self.backend, group,
                gather=lambda x: dist_.gather_rows(x, group, with_grad=self.gather_with_grad, keep_local_grad=False))
        else:
            all_images = dist_.gather_rows(image_features, group, with_grad=self.gather_with_grad)
            all_texts = dist_.gather_rows(text_features, group, with_grad=self.gather_with_grad)
            total_loss = clip_loss(all_images, all_texts, logit_scale, normalize=False, backend=self.backend)
        if isinstance(logit_bias, torch.Tensor) and logit_bias.requires_grad:
            # A bias added to every logit cancels in both softmaxes: its gradient is zero.
            total_loss = total_loss + (logit_bias * 0).sum()
        return {"contrastive_loss": total_loss} if output_dict else total_loss
