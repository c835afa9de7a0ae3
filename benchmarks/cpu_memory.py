"""Peak extra memory and time of forward+backward on the CPU, naive against chunked.

Each (loss, backend) runs in a fresh process. Peak resident memory is measured by resetting the
kernel's high-water mark (``/proc/self/clear_refs``) once the inputs exist, then reading
``VmHWM`` after forward+backward: "extra" is that peak minus the resident size before the call.

    python -m benchmarks.cpu_memory                      # symmetric info_nce, N = M = 16384, D = 128
    python -m benchmarks.cpu_memory --n 4096 --loss all  # every loss, smaller
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

LOSSES = ("info_nce_symmetric", "nt_xent", "clip", "supcon", "dcl", "ring")


def _child(loss: str, backend: str, n: int, d: int) -> None:
    import torch

    import contrastive_ops as co
    from benchmarks.measure import _kib

    torch.manual_seed(0)
    a = torch.randn(n, d, requires_grad=True)
    b = torch.randn(n, d, requires_grad=True)
    labels = torch.randint(0, 100, (n,))
    calls = {
        "info_nce_symmetric": lambda: co.info_nce(a, b, symmetric=True, backend=backend),
        "nt_xent": lambda: co.nt_xent(a, b, backend=backend),
        "clip": lambda: co.clip_loss(a, b, 14.3, normalize=True, backend=backend),
        "supcon": lambda: co.supcon_loss(a, labels, backend=backend),
        "dcl": lambda: co.dcl_loss(a, b, backend=backend),
        "ring": lambda: co.ring_info_nce(a, b, backend=backend),
    }
    small_a, small_b = torch.randn(8, d), torch.randn(8, d)
    co.info_nce(small_a, small_b, backend=backend)  # load every library before measuring
    before = _kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current resident size
    start = time.perf_counter()
    loss = calls[loss]()
    loss.backward()
    seconds = time.perf_counter() - start
    peak = _kib("VmHWM")
    print(json.dumps({"extra_mib": (peak - before) / 1024, "seconds": seconds, "loss_value": float(loss)}))


def measure(loss: str, backend: str, n: int, d: int) -> dict:
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.cpu_memory", "--child", loss, backend, str(n), str(d)],
        capture_output=True, text=True, check=False,
    )
    if proc.returncode != 0:
        status = "oom" if proc.returncode in (-9, 137) or "memory" in proc.stderr.lower() else "error"
        return {"status": status, "error": proc.stderr.strip().splitlines()[-1:] or [str(proc.returncode)]}
    return {"status": "ok", **json.loads(proc.stdout.strip().splitlines()[-1])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=16384)
    parser.add_argument("--d", type=int, default=128)
    parser.add_argument("--loss", default="info_nce_symmetric", choices=LOSSES + ("all",))
    parser.add_argument("--out", default=None, help="JSONL file to append rows to (default: benchmarks/results/)")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        loss, backend, n, d = args.child
        _child(loss, backend, int(n), int(d))
        return

    import torch

    from benchmarks._env import environment

    env = environment(torch.device("cpu"))
    out = args.out or os.path.join(
        "benchmarks", "results", f"{env['timestamp'][:10]}-cpu-{env['commit']}-memory.jsonl"
    )
    os.makedirs(os.path.dirname(out), exist_ok=True)
    losses = LOSSES if args.loss == "all" else (args.loss,)
    print(f"{env['device']}, torch {env['torch']}, commit {env['commit']}; N = M = {args.n}, D = {args.d}, fp32, fwd+bwd")
    print(f"{'loss':20s} {'backend':8s} {'extra MiB':>10s} {'seconds':>8s}")
    with open(out, "a") as f:
        for loss in losses:
            rows = {}
            for backend in ("naive", "chunked"):
                r = measure(loss, backend, args.n, args.d)
                rows[backend] = r
                row = {"loss": loss, "backend": backend, "dtype": "float32", "n": args.n, "m": args.n, "d": args.d,
                       "mode": "fwd_bwd", "peak_mem_mib": r.get("extra_mib"), "s": r.get("seconds"), **env,
                       "status": r["status"]}
                f.write(json.dumps(row) + "\n")
                if r["status"] == "ok":
                    print(f"{loss:20s} {backend:8s} {r['extra_mib']:10.1f} {r['seconds']:8.2f}")
                else:
                    print(f"{loss:20s} {backend:8s} {r['status']:>10s}")
            if all(r["status"] == "ok" for r in rows.values()):
                ratio = rows["chunked"]["extra_mib"] / rows["naive"]["extra_mib"]
                print(f"{'':20s} chunked/naive extra memory: {ratio:.1%}")
    print(f"rows appended to {out}")


if __name__ == "__main__":
    main()
