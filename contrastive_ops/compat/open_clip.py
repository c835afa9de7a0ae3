"""Drop-in ``ClipLoss`` and ``SigLipLoss`` of open_clip (``open_clip.loss``)."""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from .. import distributed as dist_
from ..functional import _info_nce_distributed, check_clip_arguments, clip_loss, siglip_loss


def _world_group(world_size: int):
    """None for one process, else the default group (checked to have ``world_size`` ranks)."""
    if world_size == 1:
        return None
    if not dist.is_available() or not dist.is_initialized() or dist.get_world_size() != world_size:
        found = dist.get_world_size() if dist.is_available() and dist.is_initialized() else "not initialized"
        raise ValueError(f"world_size={world_size} but torch.distributed has world size {found}")
    return dist.group.WORLD


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
        return _world_group(self.world_size)

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


SIGLIP_DIST_IMPLS = ("bidir", "shift", "reduce", "gather")


class SigLipLoss(nn.Module):
    """open_clip's ``SigLipLoss`` (Zhai et al.): ``-Σ logsigmoid(y·(s·I·Tᵀ + b)) / N`` with ``y = +1``
    on the diagonal and ``-1`` elsewhere, features as given, the scale already exponentiated.

    With ``world_size > 1`` (``torch.distributed`` initialized with that many ranks) this rank's
    images meet every rank's texts, the other ranks' as negatives only, divided by the local batch
    size, with gradients flowing back to every rank's texts: what each of open_clip's ``dist_impl``
    exchanges (``bidir``, ``shift``, ``reduce``, ``gather``) computes; here the texts are gathered
    once and the tiled core never builds the logits. ``cache_labels`` is accepted and has nothing to
    cache. ``backend`` (not in open_clip) picks this package's backend.
    """

    def __init__(self, cache_labels: bool = False, rank: int = 0, world_size: int = 1, dist_impl: str | None = None,
                 *, backend: str = "auto"):
        super().__init__()
        dist_impl = dist_impl or "bidir"
        if dist_impl not in SIGLIP_DIST_IMPLS:
            raise ValueError(f"dist_impl must be one of {SIGLIP_DIST_IMPLS} or None, got {dist_impl!r}")
        self.cache_labels = cache_labels
        self.rank = rank
        self.world_size = world_size
        self.dist_impl = dist_impl
        self.backend = backend

    def forward(self, image_features, text_features, logit_scale, logit_bias, output_dict: bool = False):
        group = _world_group(self.world_size)
        loss = siglip_loss(image_features, text_features, logit_scale, logit_bias, normalize=False,
                           backend=self.backend, process_group=group)
        return {"contrastive_loss": loss} if output_dict else loss
