"""Triton kernels of the generic tiled contrastive core (installed as ``contrastive_ops.kernels``).

Only ``@triton.jit`` functions and their launchers live here; autograd and dispatch live in
``contrastive_ops``. Nothing in the package imports this module unless the "triton" backend is
requested, so ``import contrastive_ops`` works without Triton.
"""

#: Whether this build ships the Triton kernels of the generic core. The "triton" backend reports
#: itself unavailable, with this reason, until they are here.
KERNELS_PRESENT = False
