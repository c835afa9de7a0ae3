"""What the library launches for a modeled loss, asked of the library itself.

Each modeled loss is a call of the public functional API; :func:`loss_switches` runs it once on tiny
CPU tensors, takes the role spec it hands to the backends (``contrastive_ops.backends.compute_terms``)
and turns it into the Triton kernels' switches with ``kernels.problem.role_switches``, the function
the backend's own problems use. So a loss whose roles change is modeled with its new roles, and no
table of switches here can drift from the code.
"""
from __future__ import annotations

import functools

#: The modeled losses as users call them (features ``q``, ``k``, labels ``y``; defaults otherwise).
MODELED_CALLS = {
    "clip": lambda co, q, k, y: co.clip_loss(q, k, 10.0, backend="naive"),
    "info_nce": lambda co, q, k, y: co.info_nce(q, k, backend="naive"),
    "siglip": lambda co, q, k, y: co.siglip_loss(q, k, 10.0, -10.0, backend="naive"),
    "supcon": lambda co, q, k, y: co.supcon_loss(q, y, backend="naive"),
    "ring": lambda co, q, k, y: co.ring_info_nce(q, k, outer=0.1, inner=0.1, backend="naive"),
}


@functools.cache
def loss_switches(loss: str) -> tuple[tuple, int, tuple]:
    """``(switches as sorted (name, value) pairs, Ring radix bits or 0, the Ring's (outer, inner) or ())``
    of one call of ``loss``."""
    import torch
    from contrastive_ops.kernels.config import GPU_CONFIGS
    from contrastive_ops.kernels.problem import role_switches

    import contrastive_ops as co
    from contrastive_ops import functional

    specs = []
    compute = functional.compute_terms

    def record(query, keys, extra, scale, spec, backend="auto", **bias):
        specs.append(spec)
        return compute(query, keys, extra, scale, spec, backend, **bias)

    functional.compute_terms = record
    try:
        gen = torch.Generator().manual_seed(0)
        q, k = torch.randn(8, 4, generator=gen), torch.randn(8, 4, generator=gen)
        MODELED_CALLS[loss](co, q, k, torch.arange(8) % 3)
    finally:
        functional.compute_terms = compute
    if len(specs) != 1:
        raise ValueError(f"{loss}: the model expects one pass of the core, the loss made {len(specs)}")
    spec = specs[0]
    switches = role_switches(spec.pos_index is not None, spec.row_labels is not None, spec.self_index is not None,
                             spec.key_negatives, spec.decoupled, spec.ring is not None, spec.normalize,
                             spec.column_terms, spec.hard_beta is not None, spec.pairwise_sigmoid)
    ring = spec.ring is not None
    return tuple(sorted(switches.items())), GPU_CONFIGS[0].radix_bits if ring else 0, tuple(spec.ring) if ring else ()
