"""The chunked backend never allocates anything N×M: every tensor any op produces (forward and
backward) is bounded by a tile or by the inputs. The same probe flags the naive backend."""
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

import contrastive_ops as co
from contrastive_ops.backends import chunked


class LargestTensor(TorchDispatchMode):
    """Records the largest number of elements of any tensor an op returns."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


N, D, TILE = 600, 8, 64

LOSSES = {
    "info_nce_symmetric_queue": lambda a, b, c, lab, be: co.info_nce(a, b, c, symmetric=True, backend=be),
    "nt_xent": lambda a, b, c, lab, be: co.nt_xent(a, b, backend=be),
    "dcl": lambda a, b, c, lab, be: co.dcl_loss(a, b, backend=be),
    "clip": lambda a, b, c, lab, be: co.clip_loss(a, b, 10.0, backend=be),
    "supcon": lambda a, b, c, lab, be: co.supcon_loss(a, lab, backend=be),
    "ring": lambda a, b, c, lab, be: co.ring_info_nce(a, b, c, backend=be),
    "info_nce_symmetric_queue_labels": lambda a, b, c, lab, be: co.info_nce(a, b, c, symmetric=True, labels=lab,
                                                                            backend=be),
    "clip_labels": lambda a, b, c, lab, be: co.clip_loss(a, b, 10.0, labels=lab, backend=be),
    "ring_labels": lambda a, b, c, lab, be: co.ring_info_nce(a, b, c, labels=lab, backend=be),
    "hard_negative": lambda a, b, c, lab, be: co.hard_negative_nce(a, b, backend=be),
    "debiased": lambda a, b, c, lab, be: co.debiased_nce(a, b, backend=be),
    "siglip": lambda a, b, c, lab, be: co.siglip_loss(a, b, torch.tensor(10.0, requires_grad=True),
                                                      torch.tensor(-10.0, requires_grad=True), backend=be),
}


def _largest(name, backend):
    a, b, c = (torch.randn(N, D, requires_grad=True) for _ in range(3))
    labels = torch.arange(N) % 7
    with chunked.block_size(TILE, TILE), LargestTensor() as probe:
        loss = LOSSES[name](a, b, c, labels, backend)
        loss.backward()
    return probe.largest


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_chunked_allocations_are_bounded_by_tiles_and_inputs(name, seed):
    bound = max(2 * TILE * TILE, 2 * N * D, TILE * 256 * 2)  # tile temporaries, [z1; z2], ring histograms
    largest = _largest(name, "chunked")
    assert largest <= bound, f"{name}: a tensor of {largest} elements (N*M = {N * N})"


@pytest.mark.parametrize("name", ["info_nce_symmetric_queue", "siglip", "hard_negative"])
def test_probe_sees_the_naive_matrix(name, seed):
    assert _largest(name, "naive") >= N * N
