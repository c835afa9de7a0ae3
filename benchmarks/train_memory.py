"""Peak memory and time of one step of the bundled trainer against the batch size: the plain step
against the cached step (``--micro-batch``), on synthetic 32×32×3 images, the small encoder and
ResNet-18 (the trainer's, in torch), the default objective (nt_xent, chunked backend, AdamW).

Every point runs in a fresh process (the method of ``benchmarks/cpu_memory.py``): the model, the
optimizer's state (one warm-up step on 16 images) and the batch's two augmented views exist first,
and their augmentation is timed; freed heap is handed back (``malloc_trim``), the kernel's resident
high-water mark is reset (``/proc/self/clear_refs``) and one step runs — forward, loss, backward,
optimizer update, through ``contrastive_ops.train.step.TrainStep``, the trainer's own step. "Peak" is
``VmHWM`` after the step minus ``VmRSS`` before it; the views (which both steps need) are reported
beside it. A plain point whose peak, extrapolated linearly from the last measured one, would exceed
``--plain-cap-mib`` is not run (the table says so), to keep a shared machine alive.

    python -m benchmarks.train_memory                 # the published run: 15–30 minutes on 2 cores
    python -m benchmarks.train_memory --arch small --small-sizes 256,1024 --out-dir /tmp/bench

Writes ``<date>-train-memory-<commit>.{jsonl,md,png}`` into ``--out-dir`` (``benchmarks/results``).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ARCHS = ("small", "resnet18")
DEFAULT_SIZES = {"small": "256,1024,2048,4096,16384", "resnet18": "128,256,1024"}
WARMUP = 16


def _trim() -> None:
    """Give the heap's free memory back to the kernel (glibc), so the step's growth shows in RSS."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _child(arch: str, n: int, micro_batch: int) -> None:
    import gc

    import torch

    from benchmarks.measure import _kib
    from contrastive_ops.train import objectives
    from contrastive_ops.train.config import DEFAULTS
    from contrastive_ops.train.data import augment
    from contrastive_ops.train.model import ContrastiveModel
    from contrastive_ops.train.step import TrainStep

    torch.manual_seed(0)
    cfg = {**DEFAULTS, "loss": "nt_xent", "backend": "chunked", "arch": arch, "micro_batch": micro_batch}
    model = ContrastiveModel(3, cfg["width"], cfg["feature_dim"], cfg["embed_dim"], arch)
    objective = objectives.build("nt_xent", model, cfg)
    optimizer = torch.optim.AdamW(objective.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    trainer = TrainStep(objective, optimizer, micro_batch=micro_batch)
    g = torch.Generator().manual_seed(1)

    def step(v1, v2):
        loss = trainer.forward(v1, v2, None)
        trainer.backward(loss)
        trainer.step()
        return float(loss)

    warm = torch.rand(WARMUP, 3, 32, 32, generator=g)
    step(augment(warm, g), augment(warm, g))  # libraries loaded, the optimizer's state allocated
    images = torch.rand(n, 3, 32, 32, generator=g)
    start = time.perf_counter()
    v1, v2 = augment(images, g), augment(images, g)
    augment_s = time.perf_counter() - start
    del images
    gc.collect()
    _trim()
    before = _kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current resident size
    start = time.perf_counter()
    loss = step(v1, v2)
    seconds = time.perf_counter() - start
    peak = _kib("VmHWM")
    print(json.dumps({"peak_mib": (peak - before) / 1024, "views_mib": 2 * v1.numel() * 4 / 2**20, "s": seconds,
                      "augment_s": augment_s, "loss": loss}))


def measure(arch: str, n: int, micro_batch: int, timeout: float) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.train_memory", "--child", arch, str(n), str(micro_batch)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"status": "timeout"}
    if proc.returncode != 0:
        status = "oom" if proc.returncode in (-9, 137) or "memory" in proc.stderr.lower() else "error"
        return {"status": status, "error": (proc.stderr.strip().splitlines() or [str(proc.returncode)])[-1]}
    return {"status": "ok", **json.loads(proc.stdout.strip().splitlines()[-1])}


def markdown(rows: list, env: dict, command: str, micro_batch: int) -> str:
    lines = [f"# Trainer step memory against the batch size ({env['device']})", "",
             (f"torch {env['torch']}, commit `{env['commit']}`, {env['timestamp']}; nt_xent, chunked backend, "
              f"AdamW, fp32, synthetic 32×32×3 images, two augmented views per image; cached step: `--micro-batch "
              f"{micro_batch}`."), "", f"Command: `{command}`", "",
             ("Peak: the resident high-water mark during one step (forward, loss, backward, optimizer update) above "
              "the resident size before it; the two views (in memory for both steps) are the next column. Times are "
              "one step each on a machine others share: the load column is its 1-minute load average before the "
              "point (2 cores)."), "",
             "| encoder | batch | step | peak MiB | views MiB | step s | samples/s | augmentation s | load |",
             "|---|---:|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        what = "plain" if r["micro_batch"] == 0 else f"cached ({r['micro_batch']})"
        if r["status"] == "ok":
            lines.append(f"| {r['arch']} | {r['batch']} | {what} | {r['peak_mib']:.0f} | {r['views_mib']:.0f} | "
                         f"{r['s']:.1f} | {r['batch'] / r['s']:.0f} | {r['augment_s']:.1f} | {r['load_before']:.1f} |")
        else:
            note = r["status"] if r["status"] != "skipped" else f"not run: ≈ {r['projected_mib'] / 1024:.0f} GiB projected"
            lines.append(f"| {r['arch']} | {r['batch']} | {what} | {note} | | | | | |")
    for arch in sorted({r["arch"] for r in rows}):
        cached = [r for r in rows if r["arch"] == arch and r["micro_batch"] and r["status"] == "ok" and r["batch"] >= 1024]
        if len(cached) > 1:
            lo, hi = min(r["peak_mib"] for r in cached), max(r["peak_mib"] for r in cached)
            sizes = sorted(r["batch"] for r in cached)
            lines += ["", (f"{arch}: the cached step's peak over batches {sizes[0]}–{sizes[-1]} spans "
                           f"{lo:.0f}–{hi:.0f} MiB (max/min {hi / lo:.2f}).")]
    return "\n".join(lines) + "\n"


def plot(rows: list, path: str, env: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    for arch, color in zip(ARCHS, ("tab:blue", "tab:orange")):
        for cached, style in ((False, "--"), (True, "-")):
            pts = [r for r in rows if r["arch"] == arch and bool(r["micro_batch"]) == cached and r["status"] == "ok"]
            if not pts:
                continue
            label = f"{arch}, {'cached' if cached else 'plain'}"
            xs = [r["batch"] for r in pts]
            ax1.plot(xs, [r["peak_mib"] for r in pts], style, marker="o", ms=4, color=color, label=label)
            ax2.plot(xs, [r["s"] / r["batch"] * 1e3 for r in pts], style, marker="o", ms=4, color=color, label=label)
    ax1.set(xscale="log", yscale="log", xlabel="batch size", ylabel="peak MiB above the views",
            title="one training step: peak memory")
    ax2.set(xscale="log", xlabel="batch size", ylabel="ms per sample", title="one training step: time per sample")
    for ax in (ax1, ax2):
        ax.set_xscale("log", base=2)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    fig.suptitle(f"{env['device']}, torch {env['torch']}, commit {env['commit']}", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default=",".join(ARCHS), help="comma-separated encoders (default: small,resnet18)")
    parser.add_argument("--small-sizes", default=DEFAULT_SIZES["small"], help="batch sizes of the small encoder")
    parser.add_argument("--resnet18-sizes", default=DEFAULT_SIZES["resnet18"], help="batch sizes of ResNet-18")
    parser.add_argument("--micro-batch", type=int, default=256, help="the cached step's micro-batch (default 256)")
    parser.add_argument("--plain-cap-mib", type=float, default=6144,
                        help="skip a plain point whose projected peak exceeds this (default 6144)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per point (default 1800)")
    parser.add_argument("--out-dir", default=os.path.join("benchmarks", "results"))
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        arch, n, micro = args.child
        _child(arch, int(n), int(micro))
        return

    import torch

    from benchmarks._env import environment

    env = environment(torch.device("cpu"))
    stem = os.path.join(args.out_dir, f"{env['timestamp'][:10]}-train-memory-{env['commit']}")
    os.makedirs(args.out_dir, exist_ok=True)
    command = " ".join(["python -m benchmarks.train_memory", *sys.argv[1:]])
    print(f"{env['device']}, torch {env['torch']}, commit {env['commit']}", flush=True)
    rows = []
    for arch in args.arch.split(","):
        sizes = [int(s) for s in getattr(args, f"{arch}_sizes").split(",")]
        last_plain = None
        for n in sizes:
            for micro in (0, args.micro_batch):
                row = {"arch": arch, "batch": n, "micro_batch": micro, **env}
                projected = last_plain["peak_mib"] * n / last_plain["batch"] if micro == 0 and last_plain else 0.0
                if projected > args.plain_cap_mib:
                    row.update(status="skipped", projected_mib=projected)
                else:
                    row["load_before"] = os.getloadavg()[0]  # the machine's 1-minute load: others' work slows the step
                    row.update(measure(arch, n, micro, args.timeout))
                    if micro == 0 and row["status"] == "ok":
                        last_plain = row
                rows.append(row)
                shown = f"{row['peak_mib']:8.0f} MiB {row['s']:7.1f} s" if row["status"] == "ok" else row["status"]
                print(f"{arch:9s} {n:6d} {'plain' if micro == 0 else f'cached {micro}':11s} {shown}", flush=True)
    with open(stem + ".jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    with open(stem + ".md", "w") as f:
        f.write(markdown(rows, env, command, args.micro_batch))
    plot(rows, stem + ".png", env)
    print(f"wrote {stem}.jsonl, .md and .png")


if __name__ == "__main__":
    main()
