"""The cached step (``contrastive_ops.cached``; the trainer's ``--micro-batch``) in float64.

Its parameter gradients equal those of the same chunked forward run with full autograd (every
objective of the trainer, a micro-batch that divides the batch and one that does not, with dropout
and BatchNorm), and those of the full-batch step for a batch-independent encoder; the random state,
BatchNorm's running statistics and MoCo's queue end as the reference's; autocast is replayed; the
public helper does the same in a user's own loop; and under two gloo processes (``cached_worker.py``)
the trainer's cached step equals DDP's chunked step and the single-process full-batch step.
"""
import contextlib
import copy
import json
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

import contrastive_ops as co
from contrastive_ops import cached
from contrastive_ops.cached import CachedStep, cached_step, chunked
from contrastive_ops.train import objectives
from contrastive_ops.train.config import DEFAULTS
from contrastive_ops.train.model import ContrastiveModel
from contrastive_ops.train.objectives import LOSSES
from contrastive_ops.train.step import TrainStep

N = 10  # rows per view: micro-batches of 5 divide it, of 4 do not
TOL = 1e-10


class ChunkedReference:
    """The plain step over the chunked forward: every encoder call ``k`` rows at a time, one graph."""

    def __init__(self, k):
        self.k = k

    def embed(self, module, x):
        return chunked(module, x, micro_batch=self.k)


def rel_err(a, b, floor=1e-30):
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).abs().max() / b.abs().max().clamp(min=floor))


def grad_errs(grads, want):
    """Each gradient's relative error; a gradient that is zero up to rounding (a convolution's bias
    before a normalization) is measured against a thousandth of the largest one."""
    floor = 1e-3 * max(float(g.abs().max()) for g in want.values())
    return {name: rel_err(grads[name], want[name], floor) for name in want}


def make_model(norm="batch", dropout=0.2, channels=1, seed=0):
    torch.manual_seed(seed)
    model = ContrastiveModel(channels, width=4, feature_dim=8, embed_dim=6, norm=norm)
    if dropout:
        model.encoder.net.insert(3, nn.Dropout(dropout))  # after the first block
        model.head.insert(2, nn.Dropout(dropout))
    return model.double()


def make_objective(loss, model, group=None):
    cfg = {**DEFAULTS, "loss": loss, "backend": "chunked", "temperature": 0.3, "queue_size": 16, "ring_outer": 0.4,
           "ring_inner": 0.25, "ring_anneal_epochs": 2.0}
    objective = objectives.build(loss, model, cfg, group).double()
    objective.set_progress(1.0)  # ring: outer half-way between 1.0 and 0.4
    return objective


def batch(seed, n=N, channels=1):
    g = torch.Generator().manual_seed(seed)
    v1 = torch.rand(n, channels, 8, 8, generator=g, dtype=torch.float64)
    v2 = torch.rand(n, channels, 8, 8, generator=g, dtype=torch.float64)
    return v1, v2, torch.arange(n) % 3


def one_step(objective, micro_batch, reference_chunks, data, seed=7, autocast=contextlib.nullcontext):
    """Loss, gradients, buffers and the CPU generator's state after one step's backward."""
    trainer = TrainStep(objective, torch.optim.SGD(objective.parameters(), lr=0.0), micro_batch=micro_batch,
                        autocast=autocast)
    if reference_chunks:
        objective.cache = ChunkedReference(reference_chunks)
    torch.manual_seed(seed)  # the dropout draws
    loss = trainer.forward(*data)
    trainer.backward(loss)
    grads = {n: p.grad.clone() for n, p in objective.named_parameters() if p.requires_grad}
    buffers = {n: b.clone() for n, b in objective.named_buffers()}
    return loss.detach(), grads, buffers, torch.get_rng_state()


def assert_same(got, want, tol=TOL):
    loss, grads, buffers, rng = got
    loss_ref, grads_ref, buffers_ref, rng_ref = want
    assert rel_err(loss, loss_ref) <= tol
    assert grads.keys() == grads_ref.keys()
    for name, err in grad_errs(grads, grads_ref).items():
        assert err <= tol, (name, err)
    for name in buffers:
        assert torch.allclose(buffers[name].double(), buffers_ref[name].double(), rtol=tol, atol=tol), name
    assert torch.equal(rng, rng_ref)


@pytest.mark.parametrize("micro_batch", [5, 4])
@pytest.mark.parametrize("loss", LOSSES)
def test_cached_equals_chunked_autograd(loss, micro_batch):
    """BatchNorm (statistics per chunk) and dropout: the cached step is the chunked forward's step."""
    objective = make_objective(loss, make_model())
    reference = copy.deepcopy(objective)
    data = batch(1)
    got = one_step(objective, micro_batch, None, data)
    want = one_step(reference, 0, micro_batch, data)
    assert_same(got, want)
    assert any(g.abs().max() > 0 for g in got[1].values())


@pytest.mark.parametrize("norm", ["group", "layer"])
@pytest.mark.parametrize("loss", LOSSES)
def test_cached_equals_full_batch_for_a_batch_independent_encoder(loss, norm):
    objective = make_objective(loss, make_model(norm=norm, dropout=0.0))
    reference = copy.deepcopy(objective)
    data = batch(2)
    assert_same(one_step(objective, 4, None, data), one_step(reference, 0, None, data))


def test_without_the_replay_dropout_would_differ(monkeypatch):
    """The equality above needs the random state replayed: without it the gradients are wrong."""
    objective = make_objective("nt_xent", make_model(dropout=0.5))
    reference = copy.deepcopy(objective)
    data = batch(3)
    want = one_step(reference, 0, 4, data)
    monkeypatch.setattr(cached._RandomState, "replay", lambda self: contextlib.nullcontext())
    got = one_step(objective, 4, None, data)
    assert max(rel_err(got[1][n], want[1][n]) for n in want[1]) > 1e-3


class Recorder(nn.Module):
    """Wraps a module and records, per call, whether autograd and CPU autocast were on."""

    def __init__(self, module):
        super().__init__()
        self.module, self.calls = module, []

    def forward(self, x):
        self.calls.append((torch.is_grad_enabled(), torch.is_autocast_enabled("cpu")))
        return self.module(x)


@pytest.mark.parametrize("loss", ["nt_xent", "clip"])
def test_autocast_is_replayed(loss):
    """A bf16 forward (autocast on the CPU, float32 parameters): the re-run is cast as the first pass
    was. (Its gradients match the chunked graph's to bf16 rounding only: that graph casts each weight
    once and sums the chunks' bf16 weight gradients in bf16, the re-run casts per chunk and sums in
    float32.)"""
    objective = make_objective(loss, make_model()).float()
    reference = copy.deepcopy(objective)
    objective.model = Recorder(objective.model)
    data = tuple(x.float() if x.is_floating_point() else x for x in batch(4))
    bf16 = lambda: torch.autocast("cpu", dtype=torch.bfloat16)
    got = one_step(objective, 4, None, data, autocast=bf16)
    want = one_step(reference, 0, 4, data, autocast=bf16)
    assert objective.model.calls == [(False, True)] * 6 + [(True, True)] * 6  # 2 views × 3 chunks, twice
    assert rel_err(got[0], want[0]) <= 1e-6  # the same bf16 embeddings
    for name in want[1]:
        assert rel_err(got[1][name.replace("model.", "model.module.", 1)], want[1][name]) <= 2e-2, name


class Tower(nn.Module):
    def __init__(self, d_in, d_out):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d_in, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.3),
                                 nn.Linear(16, d_out))

    def forward(self, x, mask=None):
        return self.net(x if mask is None else x * mask)


def test_public_helper_in_a_users_loop():
    """Two towers (one with a second input), a learnable scale in the loss, 11 rows in chunks of 3."""
    torch.manual_seed(0)
    image, text = Tower(5, 4).double(), Tower(7, 4).double()
    scale = nn.Parameter(torch.tensor(8.0, dtype=torch.float64))
    x, y, mask = torch.randn(11, 5, dtype=torch.float64), torch.randn(11, 7, dtype=torch.float64), torch.rand(11, 7)
    params = lambda m1, m2, s: list(m1.parameters()) + list(m2.parameters()) + [s]
    ref_image, ref_text, ref_scale = copy.deepcopy(image), copy.deepcopy(text), copy.deepcopy(scale)
    loss_fn = lambda s: lambda a, b: co.clip_loss(a, b, s, normalize=True)

    torch.manual_seed(5)
    loss = cached_step([image, text], (x, (y, mask.double())), loss_fn(scale), micro_batch=3)
    after = torch.get_rng_state()
    torch.manual_seed(5)
    ref = loss_fn(ref_scale)(chunked(ref_image, x, micro_batch=3), chunked(ref_text, y, mask.double(), micro_batch=3))
    ref.backward()
    assert rel_err(loss, ref) <= TOL and not loss.requires_grad
    for p, q in zip(params(image, text, scale), params(ref_image, ref_text, ref_scale)):
        assert rel_err(p.grad, q.grad) <= TOL
    for b, c in zip(list(image.buffers()) + list(text.buffers()), list(ref_image.buffers()) + list(ref_text.buffers())):
        assert torch.equal(b, c)  # running statistics updated once per chunk, as by the chunked forward
    assert torch.equal(after, torch.get_rng_state())


def test_step_object_accumulates_and_skips_an_unused_embedding():
    torch.manual_seed(0)
    enc = nn.Sequential(nn.Linear(4, 3), nn.Tanh()).double()
    x = torch.randn(7, 4, dtype=torch.float64)
    step = CachedStep(2)
    z = step.embed(enc, x)
    step.embed(enc, x)  # not used by the loss: never re-run
    assert z.requires_grad and z.is_leaf and z.shape == (7, 3)
    step.backward((z ** 2).sum())
    first = [p.grad.clone() for p in enc.parameters()]
    z = step.embed(enc, x)
    step.backward((z ** 2).sum())
    for p, g in zip(enc.parameters(), first):
        assert rel_err(p.grad, 2 * g) <= TOL  # accumulated, as loss.backward() does
    with torch.no_grad():
        keys = step.embed(enc, x)  # no autograd: just chunked
    assert not keys.requires_grad and step._records == []


def test_bad_arguments_say_what_is_wrong():
    enc = nn.Linear(3, 2)
    with pytest.raises(ValueError, match="micro_batch must be a positive integer"):
        CachedStep(0)
    with pytest.raises(ValueError, match="share a first dimension"):
        CachedStep(2).embed(lambda a, b: a, torch.zeros(4, 3), torch.zeros(5, 3))
    with pytest.raises(TypeError, match="must return one tensor"):
        CachedStep(2).embed(lambda a: (a, a), torch.zeros(4, 3))
    with pytest.raises(ValueError, match="2 encoders for 3 inputs"):
        cached_step([enc, enc], (torch.zeros(2, 3),) * 3, lambda *z: z[0].sum(), micro_batch=1)


def test_two_processes(tmp_path):
    """The worker's checks under torchrun (gloo): see cached_worker.py."""
    worker = os.path.join(os.path.dirname(__file__), "cached_worker.py")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", worker, str(tmp_path)]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for rank in range(2):
        errors = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert set(errors) == {f"{kind}/{loss}" for kind in ("chunked_ddp", "full_batch") for loss in LOSSES}
        for check, worst in errors.items():
            assert worst <= TOL, f"rank {rank} {check}: relative error {worst:.2e}"
