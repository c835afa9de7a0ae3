"""A model using the losses compiles with ``torch.compile(fullgraph=True)`` (no graph break) and
gives eager's loss and gradients."""
import pytest
import torch
from helpers import assert_close_rel

import contrastive_ops as co

N, D, R = 24, 12, 7

LOSSES = {
    "info_nce": lambda a, b, e, lab, s, be: co.info_nce(a, b, backend=be),
    "info_nce_symmetric_queue": lambda a, b, e, lab, s, be: co.info_nce(a, b, e, symmetric=True, backend=be),
    "nt_xent": lambda a, b, e, lab, s, be: co.nt_xent(a, b, backend=be),
    "dcl": lambda a, b, e, lab, s, be: co.dcl_loss(a, b, backend=be),
    "clip": lambda a, b, e, lab, s, be: co.clip_loss(a, b, s, backend=be),
    "supcon": lambda a, b, e, lab, s, be: co.supcon_loss(a, lab, backend=be),
    "ring": lambda a, b, e, lab, s, be: co.ring_info_nce(a, b, e, outer=0.5, backend=be),
    "info_nce_labels": lambda a, b, e, lab, s, be: co.info_nce(a, b, e, symmetric=True, labels=lab, backend=be),
    "hard_negative": lambda a, b, e, lab, s, be: co.hard_negative_nce(a, b, beta=0.5, backend=be),
    "debiased": lambda a, b, e, lab, s, be: co.debiased_nce(a, b, backend=be),
    "siglip": lambda a, b, e, lab, s, be: co.siglip_loss(a, b, s, s - 12.0, backend=be),
}
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
# the fused backend whenever it can run here (on CPU: under the Triton interpreter, see conftest.py)
BACKENDS = ["chunked"] + (["triton"] if co.backend_status("triton", DEVICE)[0] else [])


class Model(torch.nn.Module):
    def __init__(self, loss, backend):
        super().__init__()
        self.backend = backend
        self.proj = torch.nn.Linear(D, D)
        self.log_scale = torch.nn.Parameter(torch.tensor(2.3))
        self.loss = loss

    def forward(self, x, y, e, labels):
        return self.loss(self.proj(x), self.proj(y), e, labels, self.log_scale.exp(), self.backend)


def _loss_and_grads(model, inputs):
    loss = model(*inputs)
    return loss.detach(), torch.autograd.grad(loss, list(model.parameters()), allow_unused=True, materialize_grads=True)


@pytest.mark.parametrize("compiler", ["aot_eager"])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", sorted(LOSSES))
def test_fullgraph_compile_matches_eager(name, backend, compiler, seed):
    torch._dynamo.reset()
    model = Model(LOSSES[name], backend).to(DEVICE)
    inputs = tuple(t.to(DEVICE) for t in (torch.randn(N, D), torch.randn(N, D), torch.randn(R, D), torch.arange(N) % 5))
    compiled = torch.compile(model, fullgraph=True, backend=compiler)
    loss_c, grads_c = _loss_and_grads(compiled, inputs)
    loss_e, grads_e = _loss_and_grads(model, inputs)
    assert_close_rel(loss_c, loss_e, 1e-6, f"{name} loss")
    for (pname, _), gc, ge in zip(model.named_parameters(), grads_c, grads_e):
        assert_close_rel(gc, ge, 1e-5, f"{name} d/d{pname}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_inductor_compiles_the_loss(backend, seed):
    """The default compiler (inductor; C++ codegen on CPU) on one loss end to end."""
    torch._dynamo.reset()
    model = Model(LOSSES["info_nce_symmetric_queue"], backend).to(DEVICE)
    inputs = tuple(t.to(DEVICE) for t in (torch.randn(N, D), torch.randn(N, D), torch.randn(R, D), torch.arange(N) % 5))
    loss_c, grads_c = _loss_and_grads(torch.compile(model, fullgraph=True), inputs)
    loss_e, grads_e = _loss_and_grads(model, inputs)
    assert_close_rel(loss_c, loss_e, 1e-5, "loss")
    for gc, ge in zip(grads_c, grads_e):
        assert_close_rel(gc, ge, 1e-4, "grad")
