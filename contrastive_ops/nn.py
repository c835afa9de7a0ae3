"""``nn.Module`` wrappers of the functional API: constructor = the keyword arguments (including
``process_group`` and ``exchange``), forward = the tensors. Arguments are validated when the module is built, so a
typo fails at construction.

A tensor ``temperature`` is the module's own: an ``nn.Parameter`` is registered as its parameter
(``parameters()``, ``state_dict()``, ``.to()``, ``copy.deepcopy`` and an assignment to ``p.data`` see it),
any other tensor as a buffer."""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from . import _checks as C
from . import functional as Fn

__all__ = ["ClipLoss", "DCLLoss", "DebiasedNCELoss", "HardNegativeNCELoss", "InfoNCELoss", "NTXentLoss",
           "RingInfoNCELoss", "SigLipLoss", "SupConLoss"]


class _ContrastiveLoss(nn.Module):
    def __init__(self, *, normalize: bool, reduction: str, backend: str, process_group=None,
                 exchange: str = "auto"):
        super().__init__()
        self.normalize = C.check_bool("normalize", normalize)
        self.reduction = C.check_reduction(reduction)
        self.backend = C.check_backend(backend)
        self.process_group = C.check_process_group(process_group)
        self.exchange = C.check_exchange(exchange)

    def _set_temperature(self, temperature) -> None:
        """Validated; a tensor temperature is kept itself, not a copy: an ``nn.Parameter`` is registered
        (``parameters()``, ``state_dict()``, ``.to()``, ``deepcopy``, ``p.data = ...`` all see it), another
        tensor becomes a buffer; a number stays a float attribute."""
        C.check_temperature(temperature)
        if isinstance(temperature, nn.Parameter):
            self.register_parameter("temperature", temperature)
        elif isinstance(temperature, torch.Tensor):
            self.register_buffer("temperature", temperature)
        else:
            self.temperature = float(temperature)

    def _common(self):
        return {"normalize": self.normalize, "reduction": self.reduction, "backend": self.backend,
                "process_group": self.process_group, "exchange": self.exchange}

    def extra_repr(self) -> str:
        fields = {k: v for k, v in vars(self).items() if not k.startswith("_") and k != "training"}
        if "temperature" in self._parameters or "temperature" in self._buffers:  # a registered tensor
            fields = {"temperature": self.temperature.detach(), **fields}
        return ", ".join(f"{k}={v!r}" for k, v in fields.items())


class InfoNCELoss(_ContrastiveLoss):
    """Module form of :func:`contrastive_ops.info_nce`;
    ``forward(query, key, negatives=None, labels=None, query_labels=None, key_labels=None)``."""

    def __init__(self, temperature: float = 0.07, in_batch_negatives: bool = True, symmetric: bool = False,
                 normalize: bool = True, reduction: str = "mean", backend: str = "auto", process_group=None,
                 exchange: str = "auto"):
        super().__init__(normalize=normalize, reduction=reduction, backend=backend, process_group=process_group,
                         exchange=exchange)
        self._set_temperature(temperature)
        self.in_batch_negatives = C.check_bool("in_batch_negatives", in_batch_negatives)
        self.symmetric = C.check_bool("symmetric", symmetric)

    def forward(self, query: torch.Tensor, key: torch.Tensor, negatives: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, query_labels: torch.Tensor | None = None,
                key_labels: torch.Tensor | None = None):
        return Fn.info_nce(query, key, negatives, temperature=self.temperature,
                           in_batch_negatives=self.in_batch_negatives, symmetric=self.symmetric, labels=labels,
                           query_labels=query_labels, key_labels=key_labels, **self._common())


class NTXentLoss(_ContrastiveLoss):
    """Module form of :func:`contrastive_ops.nt_xent`; ``forward(z1, z2)``."""

    def __init__(self, temperature: float = 0.5, normalize: bool = True, reduction: str = "mean", backend: str = "auto", process_group=None,
                 exchange: str = "auto"):
        super().__init__(normalize=normalize, reduction=reduction, backend=backend, process_group=process_group,
                         exchange=exchange)
        self._set_temperature(temperature)

    def forward(self, z1: torch.Tensor, z2: torch.Tensor):
        return Fn.nt_xent(z1, z2, temperature=self.temperature, **self._common())


class DCLLoss(_ContrastiveLoss):
    """Module form of :func:`contrastive_ops.dcl_loss`; ``forward(z1, z2)``."""

    def __init__(self, temperature: float = 0.1, weight_fn: Callable | None = None, normalize: bool = True,
                 reduction: str = "mean", backend: str = "auto", process_group=None,
                 exchange: str = "auto"):
        super().__init__(normalize=normalize, reduction=reduction, backend=backend, process_group=process_group,
                         exchange=exchange)
        self._set_temperature(temperature)
        if weight_fn is not None and not callable(weight_fn):
            raise TypeError(f"weight_fn must be callable or None, got {weight_fn!r}")
        self.weight_fn = weight_fn

    def forward(self, z1: torch.Tensor, z2: torch.Tensor):
        return Fn.dcl_loss(z1, z2, temperature=self.temperature, weight_fn=self.weight_fn, **self._common())


class ClipLoss(_ContrastiveLoss):
    """Module form of :func:`contrastive_ops.clip_loss`;
    ``forward(image_features, text_features, logit_scale, labels=None)``."""

    def __init__(self, normalize: bool = False, reduction: str = "mean", backend: str = "auto", process_group=None,
                 exchange: str = "auto"):
        super().__init__(normalize=normalize, reduction=reduction, backend=backend, process_group=process_group,
                         exchange=exchange)

    def forward(self, image_features: torch.Tensor, text_features: torch.Tensor, logit_scale,
                labels: torch.Tensor | None = None):
        return Fn.clip_loss(image_features, text_features, logit_scale, labels=labels, **self._common())


class SupConLoss(_ContrastiveLoss):
    """Module form of :func:`contrastive_ops.supcon_loss`; ``forward(features, labels)``."""

    def __init__(self, temperature: float = 0.1, normalize: bool = True, reduction: str = "mean", backend: str = "auto", process_group=None,
                 exchange: str = "auto"):
        super().__init__(normalize=normalize, reduction=reduction, backend=backend, process_group=process_group,
                         exchange=exchange)
        self._set_temperature(temperature)

    def forward(self, features: torch.Tensor, labels: torch.Tensor):
        return Fn.supcon_loss(features, labels, temperature=self.temperature, **self._common())


class RingInfoNCELoss(_ContrastiveLoss):
    """Module form of :func:`contrastive_ops.ring_info_nce`;
    ``forward(query, key, negatives=None, labels=None, query_labels=None, key_labels=None)``.

    ``outer`` may be changed between steps (e.g. annealed from 1.0 to its final value);
    :meth:`set_outer` validates the new value.
    """

    def __init__(self, temperature: float = 0.07, outer: float = 0.1, inner: float = 0.1,
                 in_batch_negatives: bool = True, normalize: bool = True, reduction: str = "mean",
                 backend: str = "auto", process_group=None,
                 exchange: str = "auto"):
        super().__init__(normalize=normalize, reduction=reduction, backend=backend, process_group=process_group,
                         exchange=exchange)
        self._set_temperature(temperature)
        self.outer = C.check_fraction("outer", outer)
        self.inner = C.check_fraction("inner", inner)
        self.in_batch_negatives = C.check_bool("in_batch_negatives", in_batch_negatives)

    def set_outer(self, outer: float) -> None:
        self.outer = C.check_fraction("outer", outer)

    def forward(self, query: torch.Tensor, key: torch.Tensor, negatives: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, query_labels: torch.Tensor | None = None,
                key_labels: torch.Tensor | None = None):
        return Fn.ring_info_nce(query, key, negatives, temperature=self.temperature, outer=self.outer,
                                inner=self.inner, in_batch_negatives=self.in_batch_negatives, labels=labels,
                                query_labels=query_labels, key_labels=key_labels, **self._common())


class HardNegativeNCELoss(_ContrastiveLoss):
    """Module form of :func:`contrastive_ops.hard_negative_nce`; ``forward(z1, z2)``."""

    def __init__(self, temperature: float = 0.5, beta: float = 1.0, tau_plus: float = 0.1, normalize: bool = True,
                 reduction: str = "mean", backend: str = "auto", process_group=None,
                 exchange: str = "auto"):
        super().__init__(normalize=normalize, reduction=reduction, backend=backend, process_group=process_group,
                         exchange=exchange)
        self._set_temperature(temperature)
        self.beta = C.check_beta(beta)
        self.tau_plus = C.check_tau_plus(tau_plus)

    def forward(self, z1: torch.Tensor, z2: torch.Tensor):
        return Fn.hard_negative_nce(z1, z2, temperature=self.temperature, beta=self.beta, tau_plus=self.tau_plus,
                                    **self._common())


class DebiasedNCELoss(_ContrastiveLoss):
    """Module form of :func:`contrastive_ops.debiased_nce`; ``forward(z1, z2)``."""

    def __init__(self, temperature: float = 0.5, tau_plus: float = 0.1, normalize: bool = True,
                 reduction: str = "mean", backend: str = "auto", process_group=None,
                 exchange: str = "auto"):
        super().__init__(normalize=normalize, reduction=reduction, backend=backend, process_group=process_group,
                         exchange=exchange)
        self._set_temperature(temperature)
        self.tau_plus = C.check_tau_plus(tau_plus)

    def forward(self, z1: torch.Tensor, z2: torch.Tensor):
        return Fn.debiased_nce(z1, z2, temperature=self.temperature, tau_plus=self.tau_plus, **self._common())


class SigLipLoss(_ContrastiveLoss):
    """Module form of :func:`contrastive_ops.siglip_loss`;
    ``forward(image_features, text_features, logit_scale, logit_bias)`` (the scale already
    exponentiated; for open_clip's own constructor see :mod:`contrastive_ops.compat.open_clip`)."""

    def __init__(self, normalize: bool = False, reduction: str = "mean", backend: str = "auto", process_group=None,
                 exchange: str = "auto"):
        super().__init__(normalize=normalize, reduction=reduction, backend=backend, process_group=process_group,
                         exchange=exchange)

    def forward(self, image_features: torch.Tensor, text_features: torch.Tensor, logit_scale, logit_bias):
        return Fn.siglip_loss(image_features, text_features, logit_scale, logit_bias, **self._common())
