"""Plots and a markdown table from a results file of the suite.

    python -m benchmarks.report benchmarks/results/<file>.jsonl

Writes, beside the file: ``<stem>-<dtype>-d<D>.png`` (per loss: forward+backward time vs N, peak
memory vs N on log–log axes, and share of the matmul rate; one line per backend and peer) and
``<stem>.md`` (forward+backward milliseconds and peak MiB per N and implementation, then ``chunked``'s
time and memory divided by ``compiled_naive``'s wherever both ran).
"""
from __future__ import annotations

import json
import os
import sys
from collections import defaultdict


def load(path: str) -> list:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _groups(rows, mode="fwd_bwd"):
    groups = defaultdict(list)
    for r in rows:
        if r["mode"] == mode:
            groups[(r["dtype"], r["d"])].append(r)
    return groups


def plots(rows, stem: str) -> list:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for (dtype, d), group in sorted(_groups(rows).items()):
        losses = sorted({r["loss"] for r in group})
        fig, axes = plt.subplots(len(losses), 3, figsize=(13, 3.2 * len(losses)), squeeze=False)
        for ax_row, loss in zip(axes, losses):
            by_impl = defaultdict(list)
            for r in group:
                if r["loss"] == loss and r["status"] == "ok":
                    by_impl[r["backend"]].append(r)
            for impl, pts in sorted(by_impl.items()):
                pts.sort(key=lambda r: r["n"])
                ns = [r["n"] for r in pts]
                line = ax_row[0].plot(ns, [r["ms"] for r in pts], marker="o", label=impl)[0]
                ax_row[1].plot(ns, [max(r["peak_mem_mib"], 1e-3) for r in pts], marker="o", label=impl)
                ax_row[2].plot(ns, [r["share_of_matmul"] for r in pts], marker="o", label=impl)
                # the wall: the smallest N past the last measured one where this implementation ran out
                # of memory or would not fit
                walls = [r["n"] for r in group if r["loss"] == loss and r["backend"] == impl and r["n"] > ns[-1]
                         and (r["status"] == "oom" or "GiB free" in r.get("reason", ""))]
                if walls:
                    ax_row[1].axvline(min(walls), color=line.get_color(), linestyle=":", linewidth=1.5)
                    ax_row[1].annotate(f"{impl}: out of memory", (min(walls), 1), xycoords=("data", "axes fraction"),
                                       rotation=90, va="top", ha="right", fontsize=7, color=line.get_color())
            for ax, title, ylabel in zip(ax_row, ("time", "peak extra memory", "share of matmul rate"),
                                         ("ms (fwd+bwd)", "MiB", "useful TFLOP/s ÷ matmul")):
                ax.set_xscale("log", base=2)
                if ylabel != "useful TFLOP/s ÷ matmul":
                    ax.set_yscale("log")
                ax.set(title=f"{loss}: {title}", xlabel="N (logit rows)", ylabel=ylabel)
                ax.grid(alpha=0.3, which="both")
            ax_row[0].legend(fontsize=8)
        device = group[0]["device"]
        fig.suptitle(f"{device}, {dtype}, D = {d}, torch {group[0]['torch']}, commit {group[0]['commit']}")
        fig.tight_layout(rect=(0, 0, 1, 1 - 0.3 / (3.2 * len(losses))))
        path = f"{stem}-{dtype}-d{d}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(path)
    return written


def table(rows) -> str:
    lines = []
    for (dtype, d), group in sorted(_groups(rows).items()):
        r0 = group[0]
        lines.append(f"### {dtype}, D = {d} — forward+backward, ms / peak extra MiB\n")
        lines.append(f"{r0['device']}, torch {r0['torch']}, triton {r0['triton']}, commit {r0['commit']}, "
                     f"{r0['timestamp'][:10]}; matmul rate {r0['matmul_tflops']:.2f} TFLOP/s.\n")
        impls = sorted({r["backend"] for r in group})
        lines.append("| loss | N × M | " + " | ".join(impls) + " |")
        lines.append("|---|---|" + "---|" * len(impls))
        cells = defaultdict(dict)
        for r in group:
            if r["status"] == "ok":
                cell = f"{r['ms']:.1f} / {r['peak_mem_mib']:.0f}"
            elif r["status"] == "skipped":
                cell = "—"
            else:
                cell = r["status"]
            cells[(r["loss"], r["n"], r["m"])][r["backend"]] = cell
        for (loss, n, m), by_impl in sorted(cells.items()):
            lines.append(f"| {loss} | {n} × {m} | " + " | ".join(by_impl.get(i, "") for i in impls) + " |")
        lines.append("")
    return "\n".join(lines)


def ratios(rows, impl: str = "chunked", baseline: str = "compiled_naive") -> str:
    """Per loss and size: ``impl``'s forward+backward time and peak memory divided by ``baseline``'s
    (the CPU acceptance figure: both at most 1, memory far below at large N)."""
    lines = []
    for (dtype, d), group in sorted(_groups(rows).items()):
        cells = defaultdict(dict)
        for r in group:
            if r["status"] == "ok" and r["backend"] in (impl, baseline):
                cells[(r["loss"], r["n"], r["m"])][r["backend"]] = r
        pairs = [(key, by) for key, by in sorted(cells.items()) if impl in by and baseline in by]
        if not pairs:
            continue
        lines.append(f"### {dtype}, D = {d} — {impl} ÷ {baseline}, forward+backward\n")
        lines.append(f"| loss | N × M | {impl} ms | {baseline} ms | time ratio | {impl} MiB | {baseline} MiB "
                     "| memory ratio |")
        lines.append("|---|---|---|---|---|---|---|---|")
        for (loss, n, m), by in pairs:
            a, b = by[impl], by[baseline]
            mem = a["peak_mem_mib"] / b["peak_mem_mib"] if b["peak_mem_mib"] > 0 else float("nan")
            lines.append(f"| {loss} | {n} × {m} | {a['ms']:.1f} | {b['ms']:.1f} | {a['ms'] / b['ms']:.2f} "
                         f"| {a['peak_mem_mib']:.0f} | {b['peak_mem_mib']:.0f} | {mem:.2f} |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        sys.exit("usage: python -m benchmarks.report RESULTS.jsonl")
    rows = load(argv[0])
    stem = os.path.splitext(argv[0])[0]
    ratio_table = ratios(rows)
    with open(stem + ".md", "w") as f:
        f.write(table(rows) + ("\n" + ratio_table if ratio_table else ""))
    if ratio_table:
        print(ratio_table)
    print("table:", stem + ".md")
    try:
        written = plots(rows, stem)
    except ImportError as exc:  # the table stands on its own where matplotlib is missing
        print(f"plots: not drawn ({exc}; pip install matplotlib)")
        return
    for path in written:
        print("plot:", path)


if __name__ == "__main__":
    main()
