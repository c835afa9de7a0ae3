"""Worker for test_exchange.py, launched by torchrun with the gloo backend (2, 3 or 4 processes).

Every rank builds the same global batch (float64) and takes its slice; for every loss and both
exchanges (``gather`` with equal slices; ``ring`` with equal and with uneven slices) it checks that the
mean over ranks of the ranks' losses equals the single-process loss on the concatenated batch, that
each rank's gradients divided by the world size equal the single-process gradients of its slice, and
that a replicated parameter's gradient averaged over the ranks (DDP) equals the single-process one.
The ring also runs twice: both runs must be bitwise identical. Writes the worst relative error of
each check (or the error text of a loss that raised) to ``<out>/rank<r>.json``.
"""
import json
import os
import sys

import torch
import torch.distributed as dist

import contrastive_ops as co

D, R, G = 6, 4, 3


def rel_err(a, b):
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).abs().max() / b.abs().max().clamp(min=1e-30)) if b.numel() else 0.0


# name -> (per-row tensors: (name, columns or "label"), loss(rows, shared, group, exchange))
def _losses():
    def tau(s):
        return s["tau"]

    return {
        "info_nce_queue": (["q", "k"], lambda r, s, pg, ex: co.info_nce(
            r["q"], r["k"], s["queue"], temperature=tau(s), process_group=pg, exchange=ex)),
        "info_nce_symmetric_labels": (["q", "k", "lab"], lambda r, s, pg, ex: co.info_nce(
            r["q"], r["k"], s["queue"], symmetric=True, labels=r["lab"], process_group=pg, exchange=ex)),
        "info_nce_none": (["q", "k"], lambda r, s, pg, ex: co.info_nce(
            r["q"], r["k"], reduction="none", process_group=pg, exchange=ex)),
        "clip": (["q", "k"], lambda r, s, pg, ex: co.clip_loss(r["q"], r["k"], s["scale"], process_group=pg,
                                                             exchange=ex)),
        "clip_labels": (["q", "k", "lab"], lambda r, s, pg, ex: co.clip_loss(
            r["q"], r["k"], s["scale"], labels=r["lab"], normalize=True, process_group=pg, exchange=ex)),
        "nt_xent": (["q", "k"], lambda r, s, pg, ex: co.nt_xent(r["q"], r["k"], temperature=tau(s), process_group=pg,
                                                              exchange=ex)),
        "nt_xent_module": (["q", "k"], lambda r, s, pg, ex: co.nn.NTXentLoss(process_group=pg, exchange=ex)(
            r["q"], r["k"])),
        "dcl": (["q", "k"], lambda r, s, pg, ex: co.dcl_loss(r["q"], r["k"], process_group=pg, exchange=ex)),
        "hard_negative": (["q", "k"], lambda r, s, pg, ex: co.hard_negative_nce(
            r["q"], r["k"], temperature=0.4, process_group=pg, exchange=ex)),
        "debiased": (["q", "k"], lambda r, s, pg, ex: co.debiased_nce(r["q"], r["k"], tau_plus=0.2, process_group=pg,
                                                                    exchange=ex)),
        "supcon": (["q", "lab"], lambda r, s, pg, ex: co.supcon_loss(r["q"], r["lab"], temperature=tau(s),
                                                                   process_group=pg, exchange=ex)),
        "siglip": (["q", "k"], lambda r, s, pg, ex: co.siglip_loss(r["q"], r["k"], s["scale"], s["bias"],
                                                                 process_group=pg, exchange=ex)),
        "gist": (["q", "k", "n", "gq", "gk", "gn"], lambda r, s, pg, ex: co.gist_loss(
            r["q"], r["k"], r["n"], anchor_guide=r["gq"], positive_guide=r["gk"], negative_guide=r["gn"],
            temperature=0.1, margin=0.05, contrast_anchors=False, process_group=pg, exchange=ex)),
        # anchors contrast with this rank's anchors only (as sentence-transformers): not the
        # single-process loss of the whole batch, so the ring is held to the gather here
        "gist_anchors_vs_gather": (["q", "k", "n", "gq", "gk", "gn"], lambda r, s, pg, ex: co.gist_loss(
            r["q"], r["k"], r["n"], anchor_guide=r["gq"], positive_guide=r["gk"], negative_guide=r["gn"],
            temperature=0.1, margin_strategy="relative", margin=0.05, process_group=pg, exchange=ex)),
        "ring_info_nce": (["q", "k"], lambda r, s, pg, ex: co.ring_info_nce(
            r["q"], r["k"], s["queue"], outer=0.5, inner=0.2, process_group=pg, exchange=ex)),
    }


def make_rows(sizes, generator):
    """Global per-row tensors, concatenated in rank order; ``n`` (hard negatives) has 2 rows per anchor."""
    total = sum(sizes)
    rows = {name: torch.randn(total, D, dtype=torch.float64, generator=generator) for name in ("q", "k")}
    rows["n"] = torch.randn(2 * total, D, dtype=torch.float64, generator=generator)
    rows["lab"] = torch.randint(0, 3, (total,), generator=generator)
    projection = torch.randn(D, G, dtype=torch.float64, generator=generator)
    for name in ("q", "k", "n"):
        rows["g" + name] = rows[name] @ projection
    return rows


def local_slice(name, rank, sizes):
    scale = 2 if name in ("n", "gn") else 1
    start = scale * sum(sizes[:rank])
    return slice(start, start + scale * sizes[rank])


def run(fn, names, rows, shared, group, exchange, rank, sizes, requires):
    """``(loss, grads of the per-row float tensors, grads of the shared parameters)``."""
    local = {k: v[local_slice(k, rank, sizes)].clone() if group is not None else v.clone() for k, v in rows.items()}
    params = {k: v.clone().requires_grad_(True) for k, v in shared.items()}
    inputs = {k: local[k].requires_grad_(True) for k in names if k in requires}
    loss = fn(local, params, group, exchange)
    targets = list(inputs.values()) + list(params.values())
    total = loss.sum() if loss.dim() else loss
    grads = torch.autograd.grad(total, targets, allow_unused=True, materialize_grads=True)
    return loss, dict(zip(inputs, grads[:len(inputs)])), dict(zip(params, grads[len(inputs):]))


REQUIRES = ("q", "k", "n")  # the guides and labels get no gradient


def check(args, group, exchange, rank, world, sizes, against_gather):
    """The worst relative errors of one loss and exchange against its reference."""
    loss, g_local, p_local = run(*args, group, exchange, rank, sizes, REQUIRES)
    if against_gather:  # the same ranks with exchange="gather": equal per rank
        ref_loss, g_ref, p_ref = run(*args, group, "gather", rank, sizes, REQUIRES)
        errors = {"loss": rel_err(loss, ref_loss)}
        errors.update({f"grad_{k}": rel_err(g, g_ref[k]) for k, g in g_local.items()})
        errors.update({f"grad_{k}": rel_err(g, p_ref[k]) for k, g in p_local.items()})
    else:  # the single-process loss on the whole batch, DDP's averaging
        single, g_single, p_single = run(*args, None, exchange, rank, sizes, REQUIRES)
        if loss.dim():  # reduction="none": this rank's rows of the single-process losses
            errors, divisor = {"loss": rel_err(loss, single[local_slice("q", rank, sizes)])}, 1.0
        else:
            mean_loss = loss.detach().clone()
            dist.all_reduce(mean_loss)
            errors, divisor = {"loss": rel_err(mean_loss / world, single)}, world
        for k, g in g_local.items():
            errors[f"grad_{k}"] = rel_err(g / divisor, g_single[k][local_slice(k, rank, sizes)])
        for k, g in p_local.items():  # a replicated parameter: the ranks' gradients summed
            if p_single[k].abs().max() > 0:
                summed = g.clone()
                dist.all_reduce(summed)
                errors[f"grad_{k}"] = rel_err(summed / divisor, p_single[k])
    if exchange == "ring":  # a second run is bitwise the same
        again, g_again, p_again = run(*args, group, exchange, rank, sizes, REQUIRES)
        same = torch.equal(again, loss) and all(torch.equal(g_again[k], g_local[k]) for k in g_local) \
            and all(torch.equal(p_again[k], p_local[k]) for k in p_local)
        errors["bitwise_repeat"] = 0.0 if same else 1.0
    return errors


def main():
    out_dir = sys.argv[1]
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    group = dist.group.WORLD
    seed = 4321 + int(os.environ.get("TEST_SEED", "0"))
    results = {}
    layouts = {"even": [5] * world, "uneven": [3 + 2 * r for r in range(world)]}
    for layout, sizes in layouts.items():
        generator = torch.Generator().manual_seed(seed)  # the same data on every rank
        rows = make_rows(sizes, generator)
        shared = {"queue": torch.randn(R, D, dtype=torch.float64, generator=generator),
                  "tau": torch.tensor(0.3, dtype=torch.float64),
                  "scale": torch.tensor(4.5, dtype=torch.float64), "bias": torch.tensor(-1.5, dtype=torch.float64)}
        for name, (names, fn) in _losses().items():
            against_gather = name.endswith("_vs_gather")
            if layout == "even":
                exchanges = ("ring",) if against_gather else ("gather", "ring")
            else:
                exchanges = () if against_gather else ("ring",)
            for exchange in exchanges:
                args = (fn, names, rows, shared)
                if os.environ.get("EXCHANGE_WORKER_TRACE"):
                    print(rank, name, exchange, layout, flush=True)
                try:
                    results[f"{name}/{exchange}/{layout}"] = check(args, group, exchange, rank, world, sizes,
                                                                   against_gather)
                except (ValueError, TypeError) as exc:
                    results[f"{name}/{exchange}/{layout}"] = {"error": f"{type(exc).__name__}: {exc}"}
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(results, f)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # see dist_worker.py: gloo's threads may abort interpreter finalization
