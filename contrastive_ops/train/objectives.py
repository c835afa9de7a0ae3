"""The training objectives, each on top of the public functional API.

Every objective maps two augmented views of a batch (and its labels) to a scalar loss, and says
how many candidates each anchor's softmax holds (``K``), for the InfoNCE bound ``log K − loss``.
Every encoder call goes through :meth:`Objective.embed`, so that under ``--micro-batch`` the trainer
runs the encoders through a :class:`contrastive_ops.cached.CachedStep` (``Objective.cache``) and the
loss, its options and any state (queue, logit scale) stay as they are.
"""
from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from .. import functional as cf

LOSSES = ("nt_xent", "info_nce", "supcon", "dcl", "ring", "moco_ring", "clip", "hard_negative", "debiased", "siglip")
RING_SCHEDULES = ("linear", "step", "exponential")


class Objective(nn.Module):
    """Base: holds the model(s) and any state (queue, logit scale) that must be checkpointed."""

    needs_labels = False

    def __init__(self, model: nn.Module, cfg: dict, group=None):
        super().__init__()
        self.model = model
        self.cfg = cfg
        self.group = group
        self.candidates = 1.0  # K of the last step
        #: None: encoders run on the whole batch; else an object whose ``embed(module, x)`` runs them
        #: (a ``CachedStep`` under ``--micro-batch``)
        self.cache = None

    def embed(self, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """``module(x)``, or through :attr:`cache` when one is set (chunks of the micro-batch; under
        ``torch.no_grad()`` just chunked)."""
        return module(x) if self.cache is None else self.cache.embed(module, x)

    def common(self):
        return {"backend": self.cfg["backend"], "process_group": self.group, "exchange": self.cfg["exchange"]}

    def after_step(self) -> None:
        """Called after the optimizer step (momentum updates)."""

    def set_progress(self, epoch_float: float) -> None:
        """Called before every step with the fractional epoch (for schedules)."""


def _world(group) -> int:
    return 1 if group is None else torch.distributed.get_world_size(group)


class NTXent(Objective):
    def forward(self, v1, v2, labels):
        z1, z2 = self.embed(self.model, v1), self.embed(self.model, v2)
        self.candidates = 2 * z1.shape[0] * _world(self.group) - 1
        return cf.nt_xent(z1, z2, temperature=self.cfg["temperature"], **self.common())


class DCL(Objective):
    def forward(self, v1, v2, labels):
        z1, z2 = self.embed(self.model, v1), self.embed(self.model, v2)
        self.candidates = 2 * z1.shape[0] * _world(self.group) - 2
        return cf.dcl_loss(z1, z2, temperature=self.cfg["temperature"], **self.common())


class SupCon(Objective):
    needs_labels = True

    def forward(self, v1, v2, labels):
        z = torch.cat([self.embed(self.model, v1), self.embed(self.model, v2)])
        self.candidates = z.shape[0] * _world(self.group) - 1
        return cf.supcon_loss(z, torch.cat([labels, labels]), temperature=self.cfg["temperature"], **self.common())


class Clip(Objective):
    """The two views as two modalities, with CLIP's learnable logit scale (log-parametrized, capped at 100)."""

    def __init__(self, model, cfg, group=None):
        super().__init__(model, cfg, group)
        self.log_scale = nn.Parameter(torch.tensor(math.log(1.0 / cfg["temperature"])))

    def forward(self, v1, v2, labels):
        image, text = self.embed(self.model, v1), self.embed(self.model, v2)
        self.candidates = image.shape[0] * _world(self.group)
        scale = self.log_scale.clamp(max=math.log(100.0)).exp()
        return cf.clip_loss(image, text, scale, normalize=True, **self.common())


class HardNegative(Objective):
    """Robinson et al.'s hard-negative loss over the two views (``--hard-beta``, ``--tau-plus``)."""

    def forward(self, v1, v2, labels):
        z1, z2 = self.embed(self.model, v1), self.embed(self.model, v2)
        self.candidates = 2 * z1.shape[0] * _world(self.group) - 1
        return cf.hard_negative_nce(z1, z2, temperature=self.cfg["temperature"], beta=self.cfg["hard_beta"],
                                    tau_plus=self.cfg["tau_plus"], **self.common())


class Debiased(Objective):
    """Chuang et al.'s debiased contrastive loss over the two views (``--tau-plus``)."""

    def forward(self, v1, v2, labels):
        z1, z2 = self.embed(self.model, v1), self.embed(self.model, v2)
        self.candidates = 2 * z1.shape[0] * _world(self.group) - 1
        return cf.debiased_nce(z1, z2, temperature=self.cfg["temperature"], tau_plus=self.cfg["tau_plus"],
                               **self.common())


class SigLip(Objective):
    """The two views as two modalities under SigLIP's sigmoid loss, with its learnable log-scale
    (initialised at log 10) and bias (initialised at -10). ``candidates`` is the texts per image, as
    for CLIP; the InfoNCE bound is only indicative for a sigmoid loss."""

    def __init__(self, model, cfg, group=None):
        super().__init__(model, cfg, group)
        self.log_scale = nn.Parameter(torch.tensor(math.log(10.0)))
        self.bias = nn.Parameter(torch.tensor(-10.0))

    def forward(self, v1, v2, labels):
        image, text = self.embed(self.model, v1), self.embed(self.model, v2)
        self.candidates = image.shape[0] * _world(self.group)
        return cf.siglip_loss(image, text, self.log_scale.exp(), self.bias, normalize=True, **self.common())


class MoCo(Objective):
    """MoCo: a momentum key encoder and a FIFO queue of its past keys as the negatives."""

    def __init__(self, model, cfg, group=None):
        super().__init__(model, cfg, group)
        self.key_model = copy.deepcopy(model)
        for p in self.key_model.parameters():
            p.requires_grad_(False)
        embed_dim = model.head[-1].out_features
        self.register_buffer("queue", F.normalize(torch.randn(cfg["queue_size"], embed_dim), dim=1))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def after_step(self):
        m = self.cfg["momentum"]
        for pk, pq in zip(self.key_model.parameters(), self.model.parameters()):
            pk.mul_(m).add_(pq.detach(), alpha=1 - m)
        for bk, bq in zip(self.key_model.buffers(), self.model.buffers()):
            bk.copy_(bq)

    @torch.no_grad()
    def _enqueue(self, keys):
        if self.group is not None:
            from ..distributed import gather_rows

            keys = gather_rows(keys, self.group, with_grad=False)
        size, n = self.queue.shape[0], keys.shape[0]
        # FIFO: as if the n keys were written one after another; more keys than places leave the last ones
        start = self.queue_ptr + max(n - size, 0)
        keys = keys[-size:]
        idx = (start + torch.arange(keys.shape[0], device=keys.device)) % size
        self.queue[idx] = keys
        self.queue_ptr.copy_((self.queue_ptr + n) % size)

    def _keys(self, v2):
        with torch.no_grad():
            return F.normalize(self.embed(self.key_model, v2), dim=1)

    def forward(self, v1, v2, labels):
        q, k = self.embed(self.model, v1), self._keys(v2)
        self.candidates = self.queue.shape[0] + 1
        loss = cf.info_nce(q, k, self.queue.clone(), temperature=self.cfg["temperature"], in_batch_negatives=False,
                           **self.common())
        if self.training:
            self._enqueue(k)
        return loss


def ring_outer(cfg: dict, epoch_float: float) -> float:
    """``outer`` at a point of the run: from 1.0 to ``ring_outer`` over the anneal span — the share
    ``ring_anneal_share`` of the epochs when it is > 0 (the reference anneals over half its run),
    else ``ring_anneal_epochs`` — along ``ring_anneal``: ``linear``, ``step`` (1.0 for the whole span,
    then the final value) or ``exponential`` (geometric, ``final^t``)."""
    share = cfg.get("ring_anneal_share", 0.0)
    span = share * cfg["epochs"] if share > 0 else cfg["ring_anneal_epochs"]
    t = min(epoch_float / max(span, 1e-9), 1.0)
    final = cfg["ring_outer"]
    schedule = cfg.get("ring_anneal", "linear")
    if schedule == "step":
        return 1.0 if t < 1.0 else final
    if schedule == "exponential":
        return final ** t if final > 0 else (1.0 if t < 1.0 else 0.0)
    return 1.0 + t * (final - 1.0)


class _RingSchedule:
    """What Ring and MoCo-Ring share: ``outer`` on its schedule (:func:`ring_outer`) and the number of
    candidates a row's softmax sees (its positive and the ring)."""

    outer = 1.0

    def set_progress(self, epoch_float: float) -> None:
        self.outer = ring_outer(self.cfg, epoch_float)

    def _ring_candidates(self, negatives: int) -> int:
        hi = math.floor(self.outer * negatives)
        return 1 + hi - math.floor(self.cfg["ring_inner"] * hi)

    def _ring_loss(self, q, k, queue=None, **kwargs):
        common = self.common()
        if common["exchange"] == "ring":  # the band is a selection over every rank's candidates: gathered
            common["exchange"] = "gather"
        return cf.ring_info_nce(q, k, queue, temperature=self.cfg["temperature"], outer=self.outer,
                                inner=self.cfg["ring_inner"], **kwargs, **common)


class Ring(_RingSchedule, Objective):
    """Ring (Wu et al.): in-batch negatives restricted to a band of the anchor's ranked candidates,
    with ``outer`` annealed from 1.0 to its final value (:func:`ring_outer`)."""

    def forward(self, v1, v2, labels):
        q, k = self.embed(self.model, v1), self.embed(self.model, v2)
        self.candidates = self._ring_candidates(q.shape[0] * _world(self.group) - 1)
        return self._ring_loss(q, k)


class MoCoRing(_RingSchedule, MoCo):
    """MoCo-Ring (the reference's ``MoCoRing``): MoCo's momentum keys, with the queue as the ring's
    candidates — each query's positive against the band of its ranked queue negatives, ``outer``
    annealed as :class:`Ring`."""

    def forward(self, v1, v2, labels):
        q, k = self.embed(self.model, v1), self._keys(v2)
        self.candidates = self._ring_candidates(self.queue.shape[0])
        loss = self._ring_loss(q, k, self.queue.clone(), in_batch_negatives=False)
        if self.training:
            self._enqueue(k)
        return loss


OBJECTIVES = {"nt_xent": NTXent, "info_nce": MoCo, "supcon": SupCon, "dcl": DCL, "ring": Ring, "moco_ring": MoCoRing,
              "clip": Clip,
              "hard_negative": HardNegative, "debiased": Debiased, "siglip": SigLip}


def build(name: str, model: nn.Module, cfg: dict, group=None) -> Objective:
    return OBJECTIVES[name](model, cfg, group)


def mi_lower_bound(loss: float, candidates: float) -> float | None:
    """The InfoNCE bound on mutual information, ``log K − loss`` (nats)."""
    return math.log(candidates) - loss if candidates >= 1 else None
