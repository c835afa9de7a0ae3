"""``python -m contrastive_ops.check --processes N``: every process-group loss, on N processes of this
machine, against the same loss in one process on the concatenated batch.

N processes are spawned (gloo on CPU tensors; NCCL on CUDA tensors, one GPU per process). Every rank
builds the same global batch and takes its slice; for every loss and exchange (``gather`` with equal
slices, ``ring`` with equal and with uneven slices) it checks that

* the mean over ranks of the ranks' losses equals the single-process loss (``reduction="none"``:
  this rank's rows of the single-process losses),
* each rank's gradients divided by the world size (DDP's averaging) equal the single-process
  gradients of its slice, every feature input's, and a replicated parameter's (temperature,
  ``logit_scale``, ``logit_bias``) averaged over the ranks equals the single-process one,
* the ring gives bitwise-identical losses and gradients when run twice.

float64 on the CPU (bound ``1e-10``), float32 on a GPU (bound ``1e-5``; tf32 off). Errors are
norm-wise relative: ``max|x - ref| / max|ref|``. GISTEmbed with ``contrast_anchors=True`` contrasts
with this rank's anchors only (as sentence-transformers), so its ring is held to its gather instead.
``ring_info_nce`` keeps the gather (its band is a selection over every rank's candidates): its ring
must raise the ValueError that says so.
"""
from __future__ import annotations

import json
import os
import socket
import tempfile
from dataclasses import dataclass

import torch
import torch.distributed as dist

D, R, G = 6, 4, 3  # features, extra negatives, guide features
BOUNDS = {torch.float64: 1e-10, torch.float32: 1e-5}


def _losses(backend: str) -> dict:
    """name -> (the per-row inputs it takes, loss(rows, shared, group, exchange))."""
    import contrastive_ops as co

    b = {"backend": backend}
    return {
        "info_nce_queue": (["q", "k"], lambda r, s, pg, ex: co.info_nce(
            r["q"], r["k"], s["queue"], temperature=s["tau"], process_group=pg, exchange=ex, **b)),
        "info_nce_symmetric_labels": (["q", "k", "lab"], lambda r, s, pg, ex: co.info_nce(
            r["q"], r["k"], s["queue"], symmetric=True, labels=r["lab"], process_group=pg, exchange=ex, **b)),
        "info_nce_none": (["q", "k"], lambda r, s, pg, ex: co.info_nce(
            r["q"], r["k"], reduction="none", process_group=pg, exchange=ex, **b)),
        "clip": (["q", "k"], lambda r, s, pg, ex: co.clip_loss(
            r["q"], r["k"], s["scale"], process_group=pg, exchange=ex, **b)),
        "clip_labels": (["q", "k", "lab"], lambda r, s, pg, ex: co.clip_loss(
            r["q"], r["k"], s["scale"], labels=r["lab"], normalize=True, process_group=pg, exchange=ex, **b)),
        "nt_xent": (["q", "k"], lambda r, s, pg, ex: co.nt_xent(
            r["q"], r["k"], temperature=s["tau"], process_group=pg, exchange=ex, **b)),
        "nt_xent_module": (["q", "k"], lambda r, s, pg, ex: co.nn.NTXentLoss(process_group=pg, exchange=ex, **b)(
            r["q"], r["k"])),
        "dcl": (["q", "k"], lambda r, s, pg, ex: co.dcl_loss(r["q"], r["k"], process_group=pg, exchange=ex, **b)),
        "hard_negative": (["q", "k"], lambda r, s, pg, ex: co.hard_negative_nce(
            r["q"], r["k"], temperature=0.4, process_group=pg, exchange=ex, **b)),
        "debiased": (["q", "k"], lambda r, s, pg, ex: co.debiased_nce(
            r["q"], r["k"], tau_plus=0.2, process_group=pg, exchange=ex, **b)),
        "supcon": (["q", "lab"], lambda r, s, pg, ex: co.supcon_loss(
            r["q"], r["lab"], temperature=s["tau"], process_group=pg, exchange=ex, **b)),
        "siglip": (["q", "k"], lambda r, s, pg, ex: co.siglip_loss(
            r["q"], r["k"], s["scale"], s["bias"], process_group=pg, exchange=ex, **b)),
        "gist": (["q", "k", "n", "gq", "gk", "gn"], lambda r, s, pg, ex: co.gist_loss(
            r["q"], r["k"], r["n"], anchor_guide=r["gq"], positive_guide=r["gk"], negative_guide=r["gn"],
            temperature=0.1, margin=0.05, contrast_anchors=False, process_group=pg, exchange=ex, **b)),
        "gist_anchors_vs_gather": (["q", "k", "n", "gq", "gk", "gn"], lambda r, s, pg, ex: co.gist_loss(
            r["q"], r["k"], r["n"], anchor_guide=r["gq"], positive_guide=r["gk"], negative_guide=r["gn"],
            temperature=0.1, margin_strategy="relative", margin=0.05, process_group=pg, exchange=ex, **b)),
        "ring_info_nce": (["q", "k"], lambda r, s, pg, ex: co.ring_info_nce(
            r["q"], r["k"], s["queue"], outer=0.5, inner=0.2, process_group=pg, exchange=ex, **b)),
    }


LOSSES = tuple(_losses("auto"))
REQUIRES = ("q", "k", "n")  # the guides and labels get no gradient


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return float((a - b).abs().max() / b.abs().max().clamp(min=1e-30)) if b.numel() else 0.0


def _rows(sizes: list[int], generator: torch.Generator, dtype, device) -> dict:
    """Global per-row tensors, concatenated in rank order; ``n`` (hard negatives) has 2 rows per anchor."""
    total = sum(sizes)
    rows = {name: torch.randn(total, D, dtype=torch.float64, generator=generator) for name in ("q", "k")}
    rows["n"] = torch.randn(2 * total, D, dtype=torch.float64, generator=generator)
    rows["lab"] = torch.randint(0, 3, (total,), generator=generator)
    projection = torch.randn(D, G, dtype=torch.float64, generator=generator)
    for name in ("q", "k", "n"):
        rows["g" + name] = rows[name] @ projection
    return {k: v.to(device=device, dtype=dtype if v.is_floating_point() else v.dtype) for k, v in rows.items()}


def _slice(name: str, rank: int, sizes: list[int]) -> slice:
    per_row = 2 if name in ("n", "gn") else 1
    start = per_row * sum(sizes[:rank])
    return slice(start, start + per_row * sizes[rank])


def _run(fn, names, rows, shared, group, exchange, rank, sizes):
    """``(loss, gradients of the per-row float inputs, gradients of the shared parameters)``."""
    local = {k: (v[_slice(k, rank, sizes)] if group is not None else v).clone() for k, v in rows.items()}
    params = {k: v.clone().requires_grad_(True) for k, v in shared.items()}
    inputs = {k: local[k].requires_grad_(True) for k in names if k in REQUIRES}
    loss = fn(local, params, group, exchange)
    targets = list(inputs.values()) + list(params.values())
    grads = torch.autograd.grad(loss.sum(), targets, allow_unused=True, materialize_grads=True)
    return loss, dict(zip(inputs, grads[: len(inputs)])), dict(zip(params, grads[len(inputs):]))


def _check(args, group, exchange, rank, world, sizes, against_gather) -> dict[str, float]:
    loss, g_local, p_local = _run(*args, group, exchange, rank, sizes)
    if against_gather:  # the same ranks with exchange="gather": equal per rank
        ref_loss, g_ref, p_ref = _run(*args, group, "gather", rank, sizes)
        errors = {"loss": _rel_err(loss, ref_loss)}
        errors.update({f"grad_{k}": _rel_err(g, g_ref[k]) for k, g in g_local.items()})
        errors.update({f"grad_{k}": _rel_err(g, p_ref[k]) for k, g in p_local.items()})
    else:  # the single-process loss on the whole batch, DDP's averaging
        single, g_single, p_single = _run(*args, None, exchange, rank, sizes)
        if loss.dim():  # reduction="none": this rank's rows
            errors, divisor = {"loss": _rel_err(loss, single[_slice("q", rank, sizes)])}, 1.0
        else:
            mean_loss = loss.detach().clone()
            dist.all_reduce(mean_loss)
            errors, divisor = {"loss": _rel_err(mean_loss / world, single)}, world
        for k, g in g_local.items():
            errors[f"grad_{k}"] = _rel_err(g / divisor, g_single[k][_slice(k, rank, sizes)])
        for k, g in p_local.items():  # a replicated parameter: the ranks' gradients summed
            if p_single[k].abs().max() > 0:
                summed = g.clone()
                dist.all_reduce(summed)
                errors[f"grad_{k}"] = _rel_err(summed / divisor, p_single[k])
    if exchange == "ring":  # a second run is bitwise the same
        again, g_again, p_again = _run(*args, group, exchange, rank, sizes)
        same = torch.equal(again, loss) and all(torch.equal(g_again[k], g_local[k]) for k in g_local) \
            and all(torch.equal(p_again[k], p_local[k]) for k in p_local)
        errors["bitwise_repeat"] = 0.0 if same else 1.0
    return errors


def _rank_main(rank: int, world: int, port: int, device_type: str, backend: str, seed: int, out: str) -> None:
    """One spawned rank: every loss × exchange × layout, its errors to ``out/rank<r>.json``."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    if device_type == "cuda":
        torch.cuda.set_device(rank)
        torch.backends.cuda.matmul.allow_tf32 = False
    dist.init_process_group("nccl" if device_type == "cuda" else "gloo", rank=rank, world_size=world)
    device = torch.device(device_type, rank) if device_type == "cuda" else torch.device("cpu")
    dtype = torch.float32 if device_type == "cuda" else torch.float64
    group = dist.group.WORLD
    results = {}
    try:
        for layout, sizes in {"even": [5] * world, "uneven": [3 + 2 * r for r in range(world)]}.items():
            generator = torch.Generator().manual_seed(seed)  # the same data on every rank
            rows = _rows(sizes, generator, dtype, device)
            shared = {"queue": torch.randn(R, D, dtype=torch.float64, generator=generator),
                      "tau": torch.tensor(0.3, dtype=torch.float64), "scale": torch.tensor(4.5, dtype=torch.float64),
                      "bias": torch.tensor(-1.5, dtype=torch.float64)}
            shared = {k: v.to(device=device, dtype=dtype) for k, v in shared.items()}
            for name, (names, fn) in _losses(backend).items():
                against_gather = name.endswith("_vs_gather")
                if layout == "even":
                    exchanges = ("ring",) if against_gather else ("gather", "ring")
                else:  # the gather takes equal batch sizes only
                    exchanges = () if against_gather else ("ring",)
                for exchange in exchanges:
                    key = f"{name}/{exchange}/{layout}"
                    try:
                        results[key] = _check((fn, names, rows, shared), group, exchange, rank, world, sizes,
                                              against_gather)
                    except (ValueError, TypeError) as exc:  # raised alike on every rank, before any transfer
                        results[key] = {"error": f"{type(exc).__name__}: {exc}"}
        with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
            json.dump({"dtype": str(dtype), "results": results}, f)
        dist.barrier()
    finally:
        dist.destroy_process_group()


@dataclass
class Row:
    case: str  # loss/exchange/layout
    worst: float | None  # the largest error over ranks and tensors
    bound: float
    verdict: str


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(processes: int, device: torch.device, backend: str = "auto", seed: int = 0) -> list[Row]:
    """Spawn ``processes`` ranks on ``device`` and return one :class:`Row` per loss × exchange × layout."""
    import torch.multiprocessing as mp

    if processes < 2:
        raise ValueError(f"--processes must be >= 2, got {processes}")
    if device.type == "cuda" and processes > torch.cuda.device_count():
        raise ValueError(f"--processes {processes} on cuda needs one GPU per process, this machine has "
                         f"{torch.cuda.device_count()} (use --device cpu)")
    with tempfile.TemporaryDirectory() as out:
        mp.spawn(_rank_main, args=(processes, _free_port(), device.type, backend, seed, out), nprocs=processes)
        ranks = []
        for r in range(processes):
            with open(os.path.join(out, f"rank{r}.json")) as f:
                ranks.append(json.load(f))
    bound = BOUNDS[torch.float32 if device.type == "cuda" else torch.float64]
    return [verdict(case, [r["results"][case] for r in ranks], bound) for case in ranks[0]["results"]]


def verdict(case: str, per_rank: list[dict], bound: float) -> Row:
    """The :class:`Row` of one case from every rank's errors (or error text)."""
    if case.startswith("ring_info_nce/ring/"):
        ok = all("not available for ring_info_nce" in r.get("error", "") for r in per_rank)
        return Row(case, None, bound, "pass (raises, as documented)" if ok else "FAIL: should raise")
    errors = [r["error"] for r in per_rank if "error" in r]
    if errors:
        return Row(case, None, bound, f"FAIL: {errors[0]}")
    values = [v for r in per_rank for k, v in r.items() if k != "bitwise_repeat"]
    if not values or not any(k.startswith("grad_") for r in per_rank for k in r):
        return Row(case, None, bound, "FAIL: nothing was compared")
    worst = max(values)
    if not all(r.get("bitwise_repeat", 0.0) == 0.0 for r in per_rank):
        return Row(case, worst, bound, "FAIL: not bitwise repeatable")
    return Row(case, worst, bound, "pass" if worst <= bound else "FAIL")


def table(rows: list[Row]) -> str:
    lines = ["| loss / exchange / batch sizes | worst error | bound | verdict |", "|---|---|---|---|"]
    for r in rows:
        worst = "—" if r.worst is None else f"{r.worst:.1e}"
        lines.append(f"| {r.case} | {worst} | {r.bound:.0e} | {r.verdict} |")
    return "\n".join(lines)
