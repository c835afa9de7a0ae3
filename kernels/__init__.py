"""Triton kernels of the generic tiled contrastive core (installed as ``contrastive_ops.kernels``).

Only ``@triton.jit`` functions and their launchers live here, one file per kernel family:

* ``tiles`` — device functions every kernel shares (a tile's logits, roles, ``dL/dS``, order keys);
* ``normalize`` — inverse row norms and the L2-normalization backward;
* ``contrastive_fwd`` — one pass: row (and key-column) log-sum-exp, positive sums, counts;
* ``contrastive_bwd`` — dQ over row blocks, dK over column blocks, d(scale); deterministic;
* ``ring_select`` — the Ring's per-row thresholds: a sample, a counting and a gathering pass over
  recomputed tiles, the radix search for the rows they leave;
* ``band`` — the Ring band as the exact interval of the tiles' halves the other kernels test;
* ``problem``/``config`` — the prepared inputs and the tile configs (tuned or pinned).

Autograd and dispatch live in ``contrastive_ops.backends.triton``. This file imports nothing, so
the package can ask whether the kernels are present without importing Triton.
"""

#: Whether this build ships the Triton kernels of the generic core.
KERNELS_PRESENT = True
