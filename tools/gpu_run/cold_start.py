"""The first call's compile time: every Triton kernel one forward + backward of a headline loss
compiles on a cold cache, compiled here for sm_90a (Triton's own compiler; no GPU needed).

    python -m tools.gpu_run.cold_start                  # the tuner's default candidates (two per list)
    python -m tools.gpu_run.cold_start --candidates all # every candidate (the tuner's former default)

The tuner compiles each candidate it times: the census (:class:`.triton_cache.Census`) records the
kernels of the call once per candidate index, and the distinct ones are compiled one after another in
this process, as the JIT would on a first call. Seconds depend on this machine's cores and load.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

os.environ["TRITON_INTERPRET"] = "0"  # compile, do not interpret: before any Triton import

#: The headline losses at stand-in sizes of the same divisibility as 65536 (what the JIT specializes on).
LOSSES = (("clip", 768), ("info_nce", 128), ("siglip", 768))


def measure(candidates: int | None, n: int = 1024) -> dict:
    """``{loss: {"kernels", "compile_s"}}`` for the first ``candidates`` of each list (None: all)."""
    import torch
    from contrastive_ops.kernels import config

    from benchmarks.workloads import WORKLOADS, make_inputs
    from tools.gpu_run.first_run import _cast, _evaluate
    from tools.gpu_run.triton_cache import Census, compile_records

    def call(name, d):
        def go():
            x = _cast(make_inputs(n, d, torch.float32, torch.device("cpu"), 0), torch.bfloat16)
            _evaluate(WORKLOADS[name].call, x, "triton")
        return go

    points = [(name, call(name, d)) for name, d in LOSSES]
    longest = max(len(config.GPU_CONFIGS), len(config.BACKWARD_CHUNK_CONFIGS), len(config.BACKWARD_REGISTER_CONFIGS))
    count = longest if candidates is None else candidates
    records: dict[str, dict] = {}
    tuned = config.tuned_config
    try:
        for i in range(count):  # the census sees one config per list: the i-th candidate of each
            config.tuned_config = lambda key, run, candidates=config.GPU_CONFIGS, i=i: candidates[
                min(i, len(candidates) - 1)]
            census = Census(points)
            if census.errors:
                raise RuntimeError(f"census errors: {census.errors}")
            for spec, record in census.records.items():
                kept = records.setdefault(spec, {"kernel": record["kernel"], "spec": spec, "steps": []})
                kept["steps"] = sorted(set(kept["steps"]) | set(record["steps"]))
    finally:
        config.tuned_config = tuned
    with tempfile.TemporaryDirectory() as tmp:
        compile_records(list(records.values()), Path(tmp))
    return {name: {"kernels": len(mine), "compile_s": round(sum(r["compile_s"] for r in mine), 1)}
            for name, _ in LOSSES
            for mine in [[r for r in records.values() if name in r["steps"]]]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--candidates", default="2", help="candidates per list: a count or 'all' (default 2)")
    args = parser.parse_args(argv)
    candidates = None if args.candidates == "all" else int(args.candidates)
    if candidates is not None and candidates < 1:
        parser.error(f"--candidates must be >= 1 or 'all', got {args.candidates}")
    import triton

    result = measure(candidates)
    print(json.dumps({"triton": triton.__version__, "target": "sm_90a", "cpus": os.cpu_count(),
                      "candidates": args.candidates, "losses": result}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
