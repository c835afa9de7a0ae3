"""Per-rank memory, bytes sent and time of the loss step for ``exchange="gather"`` and ``"ring"``.

    python -m benchmarks.exchange                  # CPU, gloo: world sizes 1 2 4 8, clip and nt_xent
    python -m benchmarks.exchange --paper          # the same formulas at 8/64/512 × 8192 rows (D 768, bf16)

Each (loss, exchange, world size) runs as its own ``torch.distributed.run`` job on this machine (gloo
over the loopback interface), every rank with the same local batch. Per rank it records the peak
extra resident memory of one forward+backward (``VmHWM`` after the step minus ``VmRSS`` before, as
``benchmarks.cpu_memory``), the step's median time, and the bytes the ranks put on the loopback
interface during one step (``/proc/net/dev``, divided by the world size: every rank sends alike),
beside :func:`payload_bytes`, the count of the exchange's own payload. The formulas of
:func:`payload_bytes` and :func:`buffer_bytes` are those of the ``--paper`` table.

Ranks share this machine's cores, so a world of 8 on a 2-core CPU runs ~4× slower per rank than
alone: the time column says how the exchanges compare at the same world size, not how either
scales. The memory and byte columns do not depend on that.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

LOSSES = ("clip", "nt_xent")
EXCHANGES = ("gather", "ring")


def directions(loss: str) -> int:
    """Column sets that travel per step: both views for clip (images, then texts as rows), one block of
    ``2n`` rows for nt_xent."""
    return 2 if loss == "clip" else 1


def block_rows(loss: str, n_local: int) -> int:
    return 2 * n_local if loss == "nt_xent" else n_local


def payload_bytes(exchange: str, world: int, m: int, d: int, element: int, grad_element: int = 4) -> int:
    """Bytes one rank sends for one column set of ``m`` rows per step (forward + backward).

    gather: the all-gather of the rows, ``(W-1)·m·D·e`` (ring all-gather), and the all-reduce of the
    gathered rows' gradient in the features' dtype, ``2(W-1)/W · W·m·D·e`` (ring all-reduce).
    ring: the blocks travel in the forward and again in the backward, ``2(W-1)·m·D·e``, and each
    block's gradient (fp32) once around, ``W·m·D·4``.
    """
    if world == 1:
        return 0
    if exchange == "gather":
        return 3 * (world - 1) * m * d * element
    return 2 * (world - 1) * m * d * element + world * m * d * grad_element


def buffer_bytes(exchange: str, world: int, m: int, d: int, element: int, grad_element: int = 4) -> int:
    """Per-rank bytes of the exchange's own buffers for one column set at the backward's peak.

    gather: the gathered rows (kept for the backward), their gradient from the core (fp32) and its
    all-reduce copy in the features' dtype: ``W·m·D·(2e + 4)``. ring: the block in use and the one in
    flight, the travelling gradient and the one arriving, and the visiting block's gradient from the
    core: ``m·D·(2e + 3·4)``, whatever the world size.
    """
    if exchange == "gather":
        return world * m * d * (2 * element + grad_element)
    return m * d * (2 * element + 3 * grad_element)


# ---------------------------------------------------------------------------------------------
# one rank
# ---------------------------------------------------------------------------------------------


def _loopback_tx() -> int:
    with open("/proc/net/dev") as f:
        for line in f:
            name, _, rest = line.partition(":")
            if name.strip() == "lo":
                return int(rest.split()[8])
    return 0


_CHILD = "CONTRASTIVE_OPS_EXCHANGE_POINT"  # a rank's point, as JSON (torchrun's parser would take its options)


def _child(args) -> None:
    import torch
    import torch.distributed as dist

    import contrastive_ops as co
    from benchmarks.measure import _kib

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    group = dist.group.WORLD
    torch.manual_seed(rank)
    a = torch.randn(args.n_local, args.d, requires_grad=True)
    b = torch.randn(args.n_local, args.d, requires_grad=True)

    def step():
        if args.loss == "clip":
            loss = co.clip_loss(a, b, 14.3, normalize=True, process_group=group, exchange=args.exchange)
        else:
            loss = co.nt_xent(a, b, process_group=group, exchange=args.exchange)
        loss.backward()
        a.grad = b.grad = None

    step()  # load everything once
    dist.barrier()
    before = _kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # the high-water mark restarts from the current resident size
    tx0 = _loopback_tx()
    dist.barrier()
    start = time.perf_counter()
    step()
    first = time.perf_counter() - start
    dist.barrier()
    tx1 = _loopback_tx()
    peak = _kib("VmHWM")
    times = [first]
    for _ in range(args.reps - 1):
        dist.barrier()
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    row = {"rank": rank, "extra_mib": (peak - before) / 1024, "seconds": statistics.median(times),
           "loopback_tx_bytes": tx1 - tx0}
    with open(os.path.join(args.out, f"rank{rank}.json"), "w") as f:
        json.dump(row, f)
    dist.barrier()
    dist.destroy_process_group()


# ---------------------------------------------------------------------------------------------
# the grid
# ---------------------------------------------------------------------------------------------


def measure(loss: str, exchange: str, world: int, n_local: int, d: int, reps: int) -> dict:
    with tempfile.TemporaryDirectory() as out:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(world),
               "-m", "benchmarks.exchange"]
        point = {"loss": loss, "exchange": exchange, "n_local": n_local, "d": d, "reps": reps, "out": out}
        # a fixed mmap threshold: glibc returns every large block at its free, so the high-water mark
        # follows the live tensors (its adaptive threshold would keep freed blocks of earlier steps)
        env = dict(os.environ, OMP_NUM_THREADS="1", MALLOC_MMAP_THRESHOLD_="131072", **{_CHILD: json.dumps(point)})
        proc = subprocess.run(cmd, check=False, capture_output=True, text=True, env=env, timeout=1800)
        if proc.returncode != 0:
            raise RuntimeError(f"{loss} {exchange} world {world} failed:\n{proc.stderr[-3000:]}")
        ranks = []
        for r in range(world):
            with open(os.path.join(out, f"rank{r}.json")) as f:
                ranks.append(json.load(f))
    m = block_rows(loss, n_local)
    k = directions(loss)
    return {
        "loss": loss, "exchange": exchange, "world": world, "n_local": n_local, "d": d, "dtype": "float32",
        "peak_extra_mib_max": max(r["extra_mib"] for r in ranks),
        "peak_extra_mib_mean": statistics.mean(r["extra_mib"] for r in ranks),
        "seconds_median": statistics.median(r["seconds"] for r in ranks),
        "sent_bytes_per_rank": sum(r["loopback_tx_bytes"] for r in ranks) / world / world,
        "payload_bytes_per_rank": k * payload_bytes(exchange, world, m, d, 4),
        "buffer_mib_formula": k * buffer_bytes(exchange, world, m, d, 4) / 2**20,
    }


def table(rows: list[dict]) -> str:
    lines = [("| loss | world | exchange | peak extra MiB (max rank) | buffers by formula, MiB | sent per rank, MiB "
              "(loopback) | payload by formula, MiB | step s (median) |"),
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['loss']} | {r['world']} | {r['exchange']} | {r['peak_extra_mib_max']:.1f} | "
                     f"{r['buffer_mib_formula']:.1f} | {r['sent_bytes_per_rank'] / 2**20:.2f} | "
                     f"{r['payload_bytes_per_rank'] / 2**20:.2f} | {r['seconds_median']:.3f} |")
    return "\n".join(lines)


def plot(rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for loss, ax in zip(LOSSES, axes):
        for exchange, style in zip(EXCHANGES, ("o-", "s-")):
            pts = sorted((r["world"], r["peak_extra_mib_max"]) for r in rows if r["loss"] == loss and r["exchange"] == exchange)
            if pts:
                ax.plot(*zip(*pts), style, label=exchange)
        ax.set_title(f"{loss}: per-rank peak extra memory")
        ax.set_xlabel("world size (gloo processes)")
        ax.set_ylabel("MiB")
        ax.set_xscale("log", base=2)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


# ---------------------------------------------------------------------------------------------
# on paper
# ---------------------------------------------------------------------------------------------

#: one direction of one link, GB/s (10^9 bytes): NVLink 4 on H100/H200 (900 GB/s both ways), a 400 Gb/s
#: InfiniBand NDR port
LINKS = {"NVLink 4 (450 GB/s per direction)": 450e9, "InfiniBand NDR 400 Gb/s (50 GB/s)": 50e9}


def paper(local: int = 8192, d: int = 768, element: int = 2, worlds=(8, 64, 512)) -> str:
    """Per-rank exchange memory and transfer time of clip (both column sets) at ``world × local`` rows."""
    lines = [("| global batch | exchange | per-rank exchange buffers | sent per rank per step | "
              + " | ".join(f"transfer time, {name}" for name in LINKS) + " |"),
             "|---|---|---|---|" + "---|" * len(LINKS)]
    for world in worlds:
        for exchange in EXCHANGES:
            mem = 2 * buffer_bytes(exchange, world, local, d, element)
            sent = 2 * payload_bytes(exchange, world, local, d, element)
            times = " | ".join(f"{sent / bw * 1e3:.1f} ms" for bw in LINKS.values())
            lines.append(f"| {world} × {local} = {world * local:,} | {exchange} | {mem / 2**30:.2f} GiB | "
                         f"{sent / 2**30:.2f} GiB | {times} |")
    block, grad = local * d * element, local * d * 4
    product = 2 * local * local * d / 790e12  # one block's S at the measured matmul rate
    lines.append("")
    lines.append(f"Per ring step and column set: forward, one block of {block / 2**20:.0f} MiB against one product of "
                 f"{local}² × {d} ({product * 1e3:.2f} ms at 790 TFLOP/s); backward, the block and its fp32 "
                 f"gradient ({(block + grad) / 2**20:.0f} MiB) against four products ({4 * product * 1e3:.2f} ms).")
    for name, bw in LINKS.items():
        fwd, bwd = block / bw, (block + grad) / bw
        lines.append(f"- {name}: {fwd * 1e3:.3f} ms forward and {bwd * 1e3:.3f} ms backward per step: "
                     + ("hidden behind the tiles." if fwd <= product and bwd <= 4 * product else
                        f"exposed; the tiles hide it from about {local * max(fwd / product, bwd / (4 * product)):,.0f} "
                        "rows per rank."))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=None, help="write OUT.jsonl, OUT.md and OUT.png")
    parser.add_argument("--losses", nargs="+", default=list(LOSSES))
    parser.add_argument("--worlds", nargs="+", type=int, default=[1, 2, 4, 8])
    parser.add_argument("--n-local", type=int, default=512)
    parser.add_argument("--d", type=int, default=1024)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--paper", action="store_true", help="print the on-paper table and exit")
    if _CHILD in os.environ:
        _child(argparse.Namespace(**json.loads(os.environ[_CHILD])))
        return
    args = parser.parse_args()
    if args.paper:
        print(paper())
        return
    rows = []
    for loss in args.losses:
        for world in args.worlds:
            for exchange in EXCHANGES:
                row = measure(loss, exchange, world, args.n_local, args.d, args.reps)
                print(json.dumps(row), flush=True)
                rows.append(row)
    print(table(rows))
    if args.out:
        base = args.out
        with open(base + ".jsonl", "w") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
        with open(base + ".md", "w") as f:
            f.write(table(rows) + "\n")
        plot(rows, base + ".png")


if __name__ == "__main__":
    main()
