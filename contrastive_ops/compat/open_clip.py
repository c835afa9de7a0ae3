"""Drop-in ``ClipLoss`` and ``SigLipLoss`` of open_clip (``open_clip.loss``).

As open_clip, ``logit_scale`` and ``logit_bias`` may be any real number (0, negative, NaN, inf, an int,
a bool) or a one-element tensor of any dtype and shape; the loss comes back in the dtype open_clip's
arithmetic gives (the features' for a float or 0-d scale, fp32 for a ``[1]`` fp32 scale and half
features, ...). What the fused path does not take — features that are not ``[N, D]`` pairs of one
dtype and device, a scale or bias with several elements (open_clip broadcasts it over the logits) —
is computed by open_clip's own formula on the materialized logits (one warning per reason), which
raises where open_clip raises.
"""
from __future__ import annotations

import math
import numbers
import warnings

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .. import _checks as C
from .. import distributed as dist_
from ..functional import _info_nce_distributed, check_clip_arguments, clip_loss, siglip_loss

_FP32_MAX = torch.finfo(torch.float32).max
_WARNED: set = set()


def _warn_once(cls: str, reason: str) -> None:
    if (cls, reason) not in _WARNED:
        _WARNED.add((cls, reason))
        warnings.warn(f"contrastive_ops.compat.open_clip.{cls}: {reason} is not on the fused path; open_clip's formula "
                      "computes this loss on the materialized logits (O(N·M) memory)", stacklevel=3)


def _scalar_like(value) -> bool:
    """A finite real number or a dense one-element tensor (the fused path's scale and bias; a tensor's
    value is not read)."""
    if isinstance(value, torch.Tensor):
        return value.numel() == 1 and value.layout == torch.strided and not value.is_complex()
    return isinstance(value, numbers.Real) and math.isfinite(float(value))


def _fallback_reason(image_features, text_features, logit_scale, logit_bias) -> str | None:
    """Why a single-process call needs open_clip's formula, or None for the fused path."""
    for name, x in (("image_features", image_features), ("text_features", text_features)):
        if not isinstance(x, torch.Tensor) or x.dim() != 2 or x.layout != torch.strided \
                or x.dtype not in C.FLOAT_DTYPES or 0 in x.shape:
            return f"{name} other than a non-empty [N, D] floating tensor"
    if image_features.shape != text_features.shape or image_features.dtype != text_features.dtype \
            or image_features.device != text_features.device:
        return "features of different shapes, dtypes or devices"
    if not _scalar_like(logit_scale):
        return "a logit_scale other than one finite number or one-element tensor"
    if logit_bias is not None and not _scalar_like(logit_bias):
        return "a logit_bias other than one finite number or one-element tensor"
    return None


def _core_value(value, ref: torch.Tensor):
    """A scale or bias as the core takes it: a positive finite float where the core's float checks
    pass, else a 0-d floating tensor on the features' device (its value is not read: 0, negative,
    NaN and inf compute what open_clip's product computes); a tensor keeps its graph."""
    acc = torch.float64 if ref.dtype == torch.float64 else torch.float32
    if isinstance(value, torch.Tensor):
        value = value.reshape(())
        if not value.dtype.is_floating_point:
            value = value.to(acc)
        return value.to(ref.device) if value.device != ref.device else value
    v = float(value)
    if 0 < v <= _FP32_MAX:
        return v
    return torch.tensor(v, dtype=acc, device=ref.device)


def _peer_dtype(image_features, text_features, logit_scale, logit_bias, *, sigmoid: bool) -> torch.dtype:
    """The dtype of open_clip's loss: its own arithmetic run on empty slices of the features (no work,
    no sync), so it raises where open_clip's would (e.g. a ``[1]`` fp32 scale times fp16 features
    meets fp16 texts in the product) and promotes as open_clip's does."""
    image, text = image_features[:0], text_features[:0]
    logits = logit_scale * image @ text.T
    if logit_bias is not None:
        logits += logit_bias
    if sigmoid:
        logits = image.new_empty((0, 0)) * logits
    return logits.dtype


def _clip_formula(image_features, text_features, logit_scale, logit_bias):
    """open_clip's single-process ``ClipLoss`` on the materialized logits."""
    logits_per_image = logit_scale * image_features @ text_features.T
    logits_per_text = logit_scale * text_features @ image_features.T
    if logit_bias is not None:
        logits_per_image += logit_bias
        logits_per_text += logit_bias
    labels = torch.arange(logits_per_image.shape[0], device=image_features.device, dtype=torch.long)
    return (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels)) / 2


def _siglip_formula(image_features, text_features, logit_scale, logit_bias):
    """open_clip's single-process ``SigLipLoss`` on the materialized logits."""
    logits = logit_scale * image_features @ text_features.T
    if logit_bias is not None:
        logits += logit_bias
    n = image_features.shape[0]
    labels = 2 * torch.eye(n, device=image_features.device, dtype=image_features.dtype) \
        - torch.ones((n, n), device=image_features.device, dtype=image_features.dtype)
    return -F.logsigmoid(labels * logits).sum() / n


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
        reason = _fallback_reason(image_features, text_features, logit_scale, logit_bias)
        if reason is not None:
            if group is not None:
                raise ValueError(f"ClipLoss with world_size={self.world_size}: {reason} is not supported "
                                 "(a single process computes it with open_clip's formula)")
            _warn_once(type(self).__name__, reason)
            total_loss = _clip_formula(image_features, text_features, logit_scale, logit_bias)
            return {"contrastive_loss": total_loss} if output_dict else total_loss
        dtype = _peer_dtype(image_features, text_features, logit_scale, logit_bias, sigmoid=False)
        scale = _core_value(logit_scale, image_features)
        if group is None:
            total_loss = clip_loss(image_features, text_features, scale, normalize=False, backend=self.backend)
        elif self.local_loss:
            scale = check_clip_arguments(image_features, text_features, scale, False, "mean")
            # as open_clip: without gather_with_grad, the gathered features carry no gradient at all
            total_loss = _info_nce_distributed(
                image_features, text_features, None, scale, True, True, False, "mean", self.backend, group,
                gather=lambda x: dist_.gather_rows(x, group, with_grad=self.gather_with_grad, keep_local_grad=False))
        else:
            all_images = dist_.gather_rows(image_features, group, with_grad=self.gather_with_grad)
            all_texts = dist_.gather_rows(text_features, group, with_grad=self.gather_with_grad)
            total_loss = clip_loss(all_images, all_texts, scale, normalize=False, backend=self.backend)
        if logit_bias is not None:
            # A bias added to every logit cancels in both softmaxes: its gradient is zero; a NaN or
            # infinite one still makes the loss NaN, as in open_clip's logits.
            zero = _core_value(logit_bias, image_features) * 0
            total_loss = total_loss + (zero.sum() if isinstance(zero, torch.Tensor) else zero)
        total_loss = total_loss.to(dtype)
        return {"contrastive_loss": total_loss} if output_dict else total_loss


SIGLIP_DIST_IMPLS = ("bidir", "shift", "reduce", "gather")


class SigLipLoss(nn.Module):
    """open_clip's ``SigLipLoss`` (Zhai et al.): ``-Σ logsigmoid(y·(s·I·Tᵀ + b)) / N`` with ``y = +1``
    on the diagonal and ``-1`` elsewhere, features as given, the scale already exponentiated.

    With ``world_size > 1`` (``torch.distributed`` initialized with that many ranks) this rank's
    images meet every rank's texts, the other ranks' as negatives only, divided by the local batch
    size, with gradients flowing back to every rank's texts: what each of open_clip's ``dist_impl``
    exchanges (``bidir``, ``shift``, ``reduce``, ``gather``) computes, and the tiled core never builds
    the logits. Open_clip's neighbour exchanges (``bidir``, ``shift``) become this package's ring
    exchange (texts passed around the ranks, memory independent of the world size), ``gather`` and
    ``reduce`` its gather; ``exchange`` (not in open_clip: ``"gather"``, ``"ring"`` or ``"auto"``)
    overrides that. ``cache_labels`` is accepted and has nothing to cache. ``backend`` (not in
    open_clip) picks this package's backend.
    """

    def __init__(self, cache_labels: bool = False, rank: int = 0, world_size: int = 1, dist_impl: str | None = None,
                 *, backend: str = "auto", exchange: str | None = None):
        super().__init__()
        dist_impl = dist_impl or "bidir"
        if dist_impl not in SIGLIP_DIST_IMPLS:
            raise ValueError(f"dist_impl must be one of {SIGLIP_DIST_IMPLS} or None, got {dist_impl!r}")
        if exchange is None:
            exchange = "ring" if dist_impl in ("bidir", "shift") else "gather"
        self.exchange = C.check_exchange(exchange)
        self.cache_labels = cache_labels
        self.rank = rank
        self.world_size = world_size
        self.dist_impl = dist_impl
        self.backend = backend

    def forward(self, image_features, text_features, logit_scale, logit_bias, output_dict: bool = False):
        group = _world_group(self.world_size)
        reason = _fallback_reason(image_features, text_features, logit_scale, logit_bias)
        if reason is not None:
            if group is not None:
                raise ValueError(f"SigLipLoss with world_size={self.world_size}: {reason} is not supported "
                                 "(a single process computes it with open_clip's formula)")
            _warn_once(type(self).__name__, reason)
            loss = _siglip_formula(image_features, text_features, logit_scale, logit_bias)
            return {"contrastive_loss": loss} if output_dict else loss
        dtype = _peer_dtype(image_features, text_features, logit_scale, logit_bias, sigmoid=True)
        bias = None if logit_bias is None else _core_value(logit_bias, image_features)
        loss = siglip_loss(image_features, text_features, _core_value(logit_scale, image_features), bias,
                           normalize=False, backend=self.backend, process_group=group, exchange=self.exchange).to(dtype)
        return {"contrastive_loss": loss} if output_dict else loss
