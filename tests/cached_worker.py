"""Worker for test_cached_step.py, launched by torchrun with the gloo backend (2 processes), float64.

Every rank builds the same global batch and takes its slice. For every objective of the trainer:

* ``chunked_ddp``: BatchNorm and dropout (each rank its own draws): the trainer's cached step
  (``TrainStep(micro_batch=4)``: the bare objective, gradients averaged by ``average_gradients``)
  against DDP's plain step over the same chunked forward — loss, averaged gradients, buffers
  (running statistics, MoCo's queue) and the generator's state;
* ``full_batch``: a batch-independent encoder (GroupNorm, no dropout): the cached step's loss
  averaged over the ranks and its averaged gradients against the single-process full-batch step.

Writes the worst relative error of each check to ``<out>/rank<r>.json``.
"""
import json
import os
import sys

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(__file__))

from test_cached_step import ChunkedReference, batch, grad_errs, make_model, make_objective, rel_err

from contrastive_ops.train.objectives import LOSSES
from contrastive_ops.train.step import TrainStep

N_LOCAL, K = 6, 4  # chunks of 4 and 2 rows on each rank


def step(objective, micro_batch, group, data, chunks=None, seed=11):
    trainer = TrainStep(objective, torch.optim.SGD(objective.parameters(), lr=0.0), micro_batch=micro_batch,
                        group=group)
    if chunks:
        objective.cache = ChunkedReference(chunks)
    torch.manual_seed(seed)
    loss = trainer.forward(*data)
    trainer.backward(loss)
    grads = {n: p.grad.clone() for n, p in objective.named_parameters() if p.requires_grad}
    buffers = {n: b.clone() for n, b in objective.named_buffers()}
    return loss.detach(), grads, buffers, torch.get_rng_state()


def worst(got, want):
    errs = [rel_err(got[0], want[0])]
    errs += list(grad_errs(got[1], want[1]).values())
    errs += [rel_err(got[2][n], want[2][n]) for n in want[2] if want[2][n].is_floating_point()]
    errs += [0.0 if torch.equal(got[2][n], want[2][n]) else 1.0 for n in want[2] if not want[2][n].is_floating_point()]
    if len(got) > 3:
        errs.append(0.0 if torch.equal(got[3], want[3]) else 1.0)
    return max(errs)


def main():
    out_dir = sys.argv[1]
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    group = dist.group.WORLD
    v1, v2, labels = batch(21, n=N_LOCAL * world)
    mine = slice(rank * N_LOCAL, (rank + 1) * N_LOCAL)
    local = (v1[mine], v2[mine], labels[mine])
    errors = {}
    for loss in LOSSES:
        objective = make_objective(loss, make_model(), group)  # the same initialization on every rank
        reference = make_objective(loss, make_model(), group)
        got = step(objective, K, group, local, seed=11 + rank)
        want = step(reference, 0, group, local, chunks=K, seed=11 + rank)
        errors[f"chunked_ddp/{loss}"] = worst(got, want)

        objective = make_objective(loss, make_model(norm="group", dropout=0.0), group)
        single = make_objective(loss, make_model(norm="group", dropout=0.0))
        got = step(objective, K, group, local)
        mean_loss = got[0].clone()
        dist.all_reduce(mean_loss)
        want = step(single, 0, None, (v1, v2, labels))
        errors[f"full_batch/{loss}"] = worst((mean_loss / world, got[1], got[2]), want[:3])
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(errors, f)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
