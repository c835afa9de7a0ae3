"""Compile every Triton kernel of the core ahead of time for a GPU target, without a GPU.

``python tests/triton_aot.py [ARCH]`` (default 90) compiles each kernel under representative
switch settings down to a cubin with Triton's own compiler and ptxas, and prints one line per
kernel; a compile error exits non-zero. Run in a process of its own: the kernels must be
decorated with ``TRITON_INTERPRET`` off.
"""
import os
import sys
import time

# Triton decides between compiling and interpreting when the kernels are decorated: set before any import.
os.environ["TRITON_INTERPRET"] = "0"
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")

ALL_ON = {"HAS_POS": True, "HAS_LABELS": False, "MASK_LABELS": True, "HAS_SELF": True, "KEY_NEGATIVES": True, "DECOUPLED": False,
              "HAS_BAND": True, "NORMALIZE": True, "COLUMN_TERMS": True, "HARD_NEGATIVES": False, "PAIRWISE_SIGMOID": False}
HARD_SIGMOID = {"HAS_POS": True, "HAS_LABELS": False, "MASK_LABELS": False, "HAS_SELF": True, "KEY_NEGATIVES": True,
                    "DECOUPLED": True, "HAS_BAND": False, "NORMALIZE": False, "COLUMN_TERMS": False, "HARD_NEGATIVES": True,
                    "PAIRWISE_SIGMOID": True}
ROWS = dict(ALL_ON, HAS_BAND=False, COLUMN_TERMS=False)
LABELS = dict(ALL_ON, HAS_POS=False, HAS_LABELS=True, MASK_LABELS=False, HAS_BAND=False, COLUMN_TERMS=False)
TILES = {"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_D": 64}


def _variants():
    from contrastive_ops.kernels import band, contrastive_bwd, contrastive_fwd, normalize, ring_select

    yield "fwd bf16 ring+mask+columns", contrastive_fwd._contrastive_fwd_kernel, "*bf16", {
        **ALL_ON, **TILES, "INPUT_PRECISION": "ieee"}, 8, 3
    yield "fwd bf16 rows + row products (info_nce, D=128)", contrastive_fwd._contrastive_fwd_kernel, "*bf16", {
        **ROWS, "BLOCK_M": 128, "BLOCK_N": 64, "BLOCK_D": 64, "INPUT_PRECISION": "ieee", "ROW_GRAD": True,
        "ACC_D": 128}, 8, 2
    yield "fwd fp32/tf32 hard+sigmoid", contrastive_fwd._contrastive_fwd_kernel, "*fp32", {
        **HARD_SIGMOID, **TILES, "INPUT_PRECISION": "tf32"}, 8, 3
    for name, kernel in (("bwd dq", contrastive_bwd._contrastive_bwd_dq_kernel),
                         ("bwd dc", contrastive_bwd._contrastive_bwd_dc_kernel)):
        yield f"{name} bf16 registers ring+mask+columns", kernel, "*bf16", {
            **ALL_ON, **TILES, "INPUT_PRECISION": "ieee"}, 8, 2
    yield "bwd dS chunk bf16 ring+mask+columns", contrastive_bwd._contrastive_bwd_ds_kernel, "*bf16", {
        **ALL_ON, **TILES, "INPUT_PRECISION": "ieee"}, 8, 3
    yield "bwd dS chunk fp16 hard+sigmoid", contrastive_bwd._contrastive_bwd_ds_kernel, "*fp16", {
        **HARD_SIGMOID, **TILES, "INPUT_PRECISION": "ieee"}, 8, 3
    yield "ring count, labels", ring_select._ring_count_kernel, "*bf16", {
        k: LABELS[k] for k in ("HAS_POS", "HAS_LABELS", "MASK_LABELS", "HAS_SELF", "KEY_NEGATIVES")} | {
        "BLOCK_M": 128, "BLOCK_N": 128}, 4, 1
    yield "ring select bf16 radix 4", ring_select._ring_select_kernel, "*bf16", {
        k: ALL_ON[k] for k in ("HAS_POS", "HAS_LABELS", "MASK_LABELS", "HAS_SELF", "KEY_NEGATIVES", "NORMALIZE")} | {
        "INPUT_PRECISION": "ieee", "RADIX_BITS": 4, **TILES}, 8, 2
    yield "ring gather spans bf16, labels", ring_select._ring_gather_kernel, "*bf16", {
        **{k: LABELS[k] for k in ("HAS_POS", "HAS_LABELS", "MASK_LABELS", "HAS_SELF", "KEY_NEGATIVES", "NORMALIZE")},
        "INPUT_PRECISION": "ieee", "BUFFER": 5120, "BLOCK_M": 128, "BLOCK_N": 64, "BLOCK_D": 128, "PIPELINE": True}, 8, 2
    yield "ring search in the buffer", ring_select._buffer_search_kernel, "*fp32", {
        "BUFFER": 5120, "CHUNK": ring_select.SEARCH_CHUNK, "ROWS": ring_select.SEARCH_ROWS}, 2, 1
    yield "ring band in halves", band._half_band_kernel, "*fp32", {"NORMALIZE": True, "BLOCK": 128}, 4, 1
    yield "inverse norms bf16", normalize._inv_norm_kernel, "*bf16", {"EPS_": 1e-12, "BLOCK_ROWS": 8,
                                                                      "BLOCK_D": 256}, 4, 1
    yield "normalize backward bf16", normalize._normalize_bwd_kernel, "*bf16", {"EPS_": 1e-12, "BLOCK_ROWS": 8,
                                                                               "BLOCK_D": 256}, 4, 1


def main(arch: int) -> int:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo root
    from benchmarks.static.triton_report import aligned, kernel_signature, with_defaults

    target = GPUTarget("cuda", arch, 32)
    failures = 0
    for label, kernel, feature_type, constexprs, warps, stages in _variants():
        start = time.perf_counter()
        try:
            constexprs = with_defaults(kernel, constexprs)
            signature = kernel_signature(kernel, feature_type, constexprs)
            compiled = triton.compile(ASTSource(kernel, signature, constexprs, attrs=aligned(kernel, signature)),
                                      target=target, options={"num_warps": warps, "num_stages": stages})
        except Exception as exc:  # noqa: BLE001  (every failure is reported, then the run fails)
            failures += 1
            print(f"FAILED {label}: {type(exc).__name__}: {exc}")
            continue
        print(f"ok {label}: sm_{arch} cubin {len(compiled.asm['cubin'])} bytes, shared memory "
              f"{compiled.metadata.shared} bytes, {time.perf_counter() - start:.1f} s")
    return failures


if __name__ == "__main__":
    sys.exit(1 if main(int(sys.argv[1]) if len(sys.argv) > 1 else 90) else 0)
