"""``python -m benchmarks.static``: the static report of the kernels, every time in it MODELED.

    python -m benchmarks.static                      # markdown on stdout: Triton kernels, then the CUDA extension
    python -m benchmarks.static --json rows.json     # and one JSON row per workload × kernel
    python -m benchmarks.static --subset ci          # the few Triton variants CI checks
    python -m benchmarks.static --subset headline    # the two headline workloads only
    python -m benchmarks.static --subset calibration # the calibration table alone

Every report starts with the calibration table (:mod:`.calibration`): published H100-class times of
public kernels beside the same model's (``--no-calibration`` skips it).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from . import calibration, cuda_report
from .model import H200, headline_workloads
from .triton_report import (
    best_configs,
    ci_variants,
    config_variants,
    default_configs,
    variant_row,
    variant_table,
    workload_table,
)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", help="write one JSON row per workload × kernel (and a 'total' row each) here")
    parser.add_argument("--subset", choices=("headline", "all", "ci", "calibration"), default="all",
                        help="headline: the two headline workloads; all: every workload of the report; ci: the "
                             "variants CI checks; calibration: the calibration table alone")
    parser.add_argument("--no-calibration", action="store_true", help="skip the calibration table")
    parser.add_argument("--n", type=int, default=65536)
    parser.add_argument("--mma-tflops", type=float, help="measured bf16/fp16 matmul rate (TFLOP/s)")
    parser.add_argument("--bandwidth-tbs", type=float, help="measured copy bandwidth (TB/s)")
    args = parser.parse_args(argv)
    device = H200
    if args.mma_tflops or args.bandwidth_tbs:
        mma = dict(device.mma_flops)
        if args.mma_tflops:
            mma = {"bfloat16": args.mma_tflops * 1e12, "float16": args.mma_tflops * 1e12,
                   "float32": args.mma_tflops * 0.5e12}
        device = dataclasses.replace(device, mma_flops=mma, name=device.name + " (measured rates)",
                                     dram_bytes_s=(args.bandwidth_tbs * 1e12 if args.bandwidth_tbs else device.dram_bytes_s))
    import triton

    print(f"# Static kernel report (sm_90a, Triton {triton.__version__}); every time below is MODELED for "
          f"{device.name}: {device.mma_flops['bfloat16'] / 1e12:.0f} TFLOP/s bf16, "
          f"{device.dram_bytes_s / 1e12:.1f} TB/s, {device.clock_hz / 1e9:.2f} GHz\n")
    calibration_rows = []
    if not args.no_calibration and args.subset != "ci":
        calibration_rows = calibration.run()
        print("## Calibration: published times of public kernels, and the same model's (MODELED)\n")
        print(calibration.table(calibration_rows) + "\n")
        if args.subset == "calibration":
            if args.json:
                with open(args.json, "w") as fh:
                    json.dump(calibration_rows, fh, indent=1)
            return 0
    if args.subset == "ci":
        variants = list(ci_variants())
        print(variant_table(variants, device) + "\n")
        results = [default_configs(w, device) for w in headline_workloads(n=args.n)
                   if (w.loss, w.d) in (("clip", 768), ("info_nce", 128))]
        rows = [variant_row(label, stats, device) for label, stats in variants]
    else:
        workloads = headline_workloads(n=args.n)
        if args.subset == "headline":
            workloads = [w for w in workloads if (w.loss, w.d) in (("clip", 768), ("info_nce", 128))]
        results = [r for r in (best_configs(w, device) for w in workloads) if r is not None]
        rows = []
        if args.subset == "all":
            variants = list(config_variants())
            print(variant_table(variants, device) + "\n")
            rows = [variant_row(label, stats, device) for label, stats in variants]
    print(workload_table(results))
    cuda_rows = []
    if args.subset != "ci":
        from contrastive_ops import _build

        if _build.find_nvcc() is None:
            print("\n(the CUDA extension's section needs nvcc: not on this machine)")
        else:
            workloads = [w for w in headline_workloads(n=args.n)
                         if args.subset == "all" or (w.loss, w.d) in (("clip", 768), ("info_nce", 128))]
            text, cuda_rows = cuda_report.section(device, workloads)
            print("\n" + text)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows + [row for wrows, total in results for row in wrows + [total]] + cuda_rows
                      + [{"calibration": True, **r} for r in calibration_rows], fh, indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
