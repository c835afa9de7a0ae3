"""Objectives compared over paired seeds: one trainer run per objective × seed, where one seed sets
the model init, the split, the data order and the augmentations, so that runs with the same seed
differ only in the objective.

    python -m contrastive_ops.train.experiment --compare nt_xent,info_nce,ring --seeds 3 [trainer options]

Writes ``OUT/comparison.md`` (mean ± std of every evaluation metric per objective, the random-init
encoder and the raw pixels; the paired differences of each objective against the first, their spread
and a paired t-test, and one sentence per difference saying whether it is beyond the seed noise),
``OUT/comparison.json`` and ``OUT/comparison.png``; each run's own outputs go to ``OUT/<loss>/seed<k>``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

from .config import ConfigError
from .evaluate import METRICS

ALPHA = 0.05  # a paired difference is "beyond the seed noise" when the paired t-test's p is below this


def _parse(argv):
    p = argparse.ArgumentParser(prog="python -m contrastive_ops.train.experiment", description=__doc__.split("\n\n")[0],
                                allow_abbrev=False)  # --seed is a trainer option, not --seeds
    p.add_argument("--compare", required=True, help="comma-separated objectives, the first is the reference")
    p.add_argument("--seeds", type=int, default=3, help="paired seeds 0 .. SEEDS-1 (default 3)")
    p.add_argument("--out", default="runs/compare", help="output folder (default runs/compare)")
    args, trainer_args = p.parse_known_args(argv)
    return args, trainer_args


def paired_summary(reference: np.ndarray, other: np.ndarray) -> dict:
    """Mean and standard deviation of ``other - reference`` over paired seeds, and the paired t-test's
    two-sided p (None with fewer than two pairs, or when every difference is equal)."""
    diff = np.asarray(other, dtype=float) - np.asarray(reference, dtype=float)
    out = {"mean": float(diff.mean()), "std": float(diff.std(ddof=1)) if diff.size > 1 else 0.0, "p": None}
    if diff.size > 1 and out["std"] > 0:
        from scipy import stats

        out["p"] = float(stats.ttest_rel(other, reference).pvalue)
    return out


def verdict(reference: str, other: str, metric: str, d: dict, seeds: int) -> str:
    """One sentence on a paired difference."""
    beyond = d["p"] is not None and d["p"] < ALPHA
    return (f"{other} − {reference}, {metric}: {d['mean']:+.4f} ± {d['std']:.4f} over {seeds} paired seeds "
            f"(paired t-test p = {_p(d)}): {'beyond' if beyond else 'within'} the seed noise.")


def _p(d: dict) -> str:
    return "n/a" if d["p"] is None else f"{d['p']:.3f}"


def run(argv=None) -> dict:
    from .cli import resolve_config
    from .loop import train

    args, trainer_args = _parse(argv)
    objectives = [o.strip() for o in args.compare.split(",") if o.strip()]
    if len(objectives) < 1 or args.seeds < 1:
        raise ConfigError(f"--compare needs objectives and --seeds >= 1, got {args.compare!r}, {args.seeds}")
    for forbidden in ("--loss", "--seed", "--out", "--resume"):
        if forbidden in trainer_args:
            raise ConfigError(f"{forbidden} is set by the experiment (each run's objective, seed and folder)")
    results = {name: [] for name in objectives + ["random_init", "pixels"]}
    for seed in range(args.seeds):
        for loss in objectives:
            out = os.path.join(args.out, loss, f"seed{seed}")
            cfg = resolve_config(trainer_args + ["--loss", loss, "--seed", str(seed), "--out", out])
            summary = train(cfg)
            if "eval" not in summary:
                raise ConfigError("the experiment needs labelled data (its evaluation uses the labels)")
            results[loss].append(summary["eval"]["trained"])
            if loss == objectives[0]:  # the baselines depend on the seed only (split and init)
                results["random_init"].append(summary["eval"]["random_init"])
                results["pixels"].append(summary["eval"]["pixels"])
            print(f"[experiment] {loss} seed {seed}: " + ", ".join(f"{m} {summary['eval']['trained'][m]:.4f}"
                                                                   for m in METRICS), flush=True)
    report = _report(objectives, results, args.seeds)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "comparison.json"), "w") as f:
        json.dump({"objectives": objectives, "seeds": args.seeds, "trainer_args": trainer_args, "runs": results,
                   "paired": report["paired"]}, f, indent=1)
    with open(os.path.join(args.out, "comparison.md"), "w") as f:
        f.write(report["markdown"])
    _plot(results, os.path.join(args.out, "comparison.png"))
    print(report["markdown"])
    return report


def _report(objectives, results, seeds) -> dict:
    lines = ["| encoder | " + " | ".join(METRICS) + " |", "|---|" + "---|" * len(METRICS)]
    for name, runs in results.items():
        cells = []
        for m in METRICS:
            values = np.array([r[m] for r in runs])
            cells.append(f"{values.mean():.4f} ± {values.std(ddof=1) if len(values) > 1 else 0.0:.4f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    paired, sentences = {}, []
    reference = objectives[0]
    others = objectives[1:] + ["random_init"]
    if others:
        lines += ["", f"Paired differences against {reference} (mean ± std over the seeds; paired t-test p):", "",
                  "| encoder | " + " | ".join(METRICS) + " |", "|---|" + "---|" * len(METRICS)]
    for other in others:
        paired[other] = {}
        cells = []
        for m in METRICS:
            d = paired_summary(np.array([r[m] for r in results[reference]]), np.array([r[m] for r in results[other]]))
            paired[other][m] = d
            cells.append(f"{d['mean']:+.4f} ± {d['std']:.4f} (p {_p(d)})")
            sentences.append(verdict(reference, other, m, d, seeds))
        lines.append(f"| {other} | " + " | ".join(cells) + " |")
    markdown = "\n".join(lines + [""] + [f"- {s}" for s in sentences]) + "\n"
    return {"markdown": markdown, "paired": paired}


def _plot(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    fig, ax = plt.subplots(figsize=(2 + 1.6 * len(METRICS), 3.8))
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        means = [np.mean([r[m] for r in results[name]]) for m in METRICS]
        stds = [np.std([r[m] for r in results[name]], ddof=1) if len(results[name]) > 1 else 0.0 for m in METRICS]
        ax.bar(np.arange(len(METRICS)) + i * width, means, width, yerr=stds, capsize=2, label=name)
    ax.set_xticks(np.arange(len(METRICS)) + 0.4 - width / 2, METRICS, fontsize=8)
    ax.set(ylabel="test accuracy", title="encoders over paired seeds (mean ± std)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> None:
    from ..backends import BackendUnavailableError
    from .data import DataError
    from .loop import CheckpointError

    try:
        run(argv)
    except (ConfigError, DataError, CheckpointError, BackendUnavailableError) as exc:
        print(f"contrastive_ops.train.experiment: error: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
