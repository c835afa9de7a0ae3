"""Compile every Triton kernel of the core ahead of time for a GPU target, without a GPU.

``python tests/triton_aot.py [ARCH]`` (default 90) compiles each kernel under representative
switch settings down to a cubin with Triton's own compiler and ptxas, and prints one line per
kernel; a compile error exits non-zero. Run in a process of its own: the kernels must be
decorated with ``TRITON_INTERPRET`` off.
"""
import inspect
import os
import sys
import time

# Triton decides between compiling and interpreting when the kernels are decorated: set before any import.
os.environ["TRITON_INTERPRET"] = "0"
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")

INTS = {"N", "M", "M_TOTAL", "D", "stride_q", "stride_c", "stride_dq", "stride_dc", "stride_x", "stride_g",
        "stride_dx"}
POINTER_TYPES = {"POS": "*i64", "SELF": "*i64", "ROW_LABELS": "*i64", "COL_LABELS": "*i64", "ROW_DEN": "*i32",
                 "ROW_POS_N": "*i32", "PART_DEN": "*i32", "PART_POS_N": "*i32", "COUNT": "*i32",
                 "RANK_TOP": "*i32", "RANK_BOTTOM": "*i32"}

ALL_ON = {"HAS_POS": True, "HAS_LABELS": False, "MASK_LABELS": True, "HAS_SELF": True, "KEY_NEGATIVES": True, "DECOUPLED": False,
              "HAS_BAND": True, "NORMALIZE": True, "COLUMN_TERMS": True, "HARD_NEGATIVES": False, "PAIRWISE_SIGMOID": False}
HARD_SIGMOID = {"HAS_POS": True, "HAS_LABELS": False, "MASK_LABELS": False, "HAS_SELF": True, "KEY_NEGATIVES": True,
                    "DECOUPLED": True, "HAS_BAND": False, "NORMALIZE": False, "COLUMN_TERMS": False, "HARD_NEGATIVES": True,
                    "PAIRWISE_SIGMOID": True}
LABELS = dict(ALL_ON, HAS_POS=False, HAS_LABELS=True, MASK_LABELS=False, HAS_BAND=False, COLUMN_TERMS=False)
TILES = {"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_D": 64}


def _variants():
    from contrastive_ops.kernels import contrastive_bwd, contrastive_fwd, normalize, ring_select

    yield "fwd bf16 ring+mask+columns", contrastive_fwd._contrastive_fwd_kernel, "*bf16", {
        **ALL_ON, **TILES, "INPUT_PRECISION": "ieee"}, 8, 3
    yield "fwd fp32/tf32 hard+sigmoid", contrastive_fwd._contrastive_fwd_kernel, "*fp32", {
        **HARD_SIGMOID, **TILES, "INPUT_PRECISION": "tf32"}, 8, 3
    for name, kernel in (("bwd dq", contrastive_bwd._contrastive_bwd_dq_kernel),
                         ("bwd dc", contrastive_bwd._contrastive_bwd_dc_kernel)):
        yield f"{name} bf16 registers ring+mask+columns", kernel, "*bf16", {
            **ALL_ON, **TILES, "INPUT_PRECISION": "ieee", "ONE_D_BLOCK": True}, 8, 2
        yield f"{name} fp16 sliced-D hard+sigmoid", kernel, "*fp16", {
            **HARD_SIGMOID, **TILES, "INPUT_PRECISION": "ieee", "ONE_D_BLOCK": False}, 8, 2
    yield "ring count, labels", ring_select._ring_count_kernel, "*bf16", {
        k: LABELS[k] for k in ("HAS_POS", "HAS_LABELS", "MASK_LABELS", "HAS_SELF", "KEY_NEGATIVES")} | {
        "BLOCK_M": 128, "BLOCK_N": 128}, 4, 1
    yield "ring select bf16 radix 4", ring_select._ring_select_kernel, "*bf16", {
        k: ALL_ON[k] for k in ("HAS_POS", "HAS_LABELS", "MASK_LABELS", "HAS_SELF", "KEY_NEGATIVES", "NORMALIZE")} | {
        "INPUT_PRECISION": "ieee", "RADIX_BITS": 4, **TILES}, 8, 2
    yield "inverse norms bf16", normalize._inv_norm_kernel, "*bf16", {"EPS_": 1e-12, "BLOCK_ROWS": 8,
                                                                      "BLOCK_D": 256}, 4, 1
    yield "normalize backward bf16", normalize._normalize_bwd_kernel, "*bf16", {"EPS_": 1e-12, "BLOCK_ROWS": 8,
                                                                               "BLOCK_D": 256}, 4, 1


def _signature(kernel, feature_type: str, constexprs: dict) -> dict:
    features = {"Q", "C", "X", "DX"}
    sig = {}
    for name in inspect.signature(kernel.fn).parameters:
        if name in constexprs:
            sig[name] = "constexpr"
        elif name in INTS:
            sig[name] = "i32"
        elif name == "beta":
            sig[name] = "fp32"
        elif name in features:
            sig[name] = feature_type
        else:
            sig[name] = POINTER_TYPES.get(name, "*fp32")
    return sig


def main(arch: int) -> int:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    target = GPUTarget("cuda", arch, 32)
    failures = 0
    for label, kernel, feature_type, constexprs, warps, stages in _variants():
        start = time.perf_counter()
        try:
            compiled = triton.compile(ASTSource(kernel, _signature(kernel, feature_type, constexprs), constexprs),
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
