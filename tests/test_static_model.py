"""The static kernel report (``python -m benchmarks.static``) on its CI subset: the headline
kernels compiled for sm_90a without a GPU, and the invariants of their design checked on the SASS."""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None
                                and os.environ.get("CONTRASTIVE_OPS_REQUIRE_TRITON") != "1",
                                reason="Triton is not installed")

REPO = Path(__file__).resolve().parents[1]
REQUIRED = {"loss", "n", "m", "d", "dtype", "mode", "backend", "kernel", "modeled_ms"}


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("report") / "rows.json"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.static", "--subset", "ci", "--json", str(out)], check=False,
                          cwd=REPO, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "TRITON_INTERPRET": "0"})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc.stdout, json.loads(out.read_text())


@pytest.mark.long
def test_every_half_precision_dot_is_wgmma(report):
    _, rows = report
    variants = [r for r in rows if "mma_count" in r]
    assert len(variants) == 4
    for r in variants:
        assert r["mma"] == "wgmma" and r["mma_count"] > 0, r


def test_plain_tiles_take_the_shorter_branch(report):
    _, rows = report
    for r in (r for r in rows if "mma_count" in r):
        assert r["plain_sass_per_tile"] < r["general_sass_per_tile"], r


def test_no_variant_is_limited_by_its_shared_memory_to_zero_ctas(report):
    _, rows = report
    for r in (r for r in rows if "mma_count" in r):
        assert r["ctas_per_sm"] >= 1 and r["shared_bytes"] <= 227 * 1024, r


def test_large_d_backward_is_chunks_and_library_products(report):
    """At D = 768 the backward writes dS chunks and multiplies them with cuBLAS; neither step is
    bound by memory (the former route re-read fp32 rows per tile), and the products run at the
    matmul rate."""
    _, rows = report
    clip = [r for r in rows if r.get("loss") == "clip" and r.get("d") == 768]
    kernels = {r["kernel"]: r for r in clip}
    assert "backward dS chunks" in kernels and not any(k.startswith("backward dQ") and "torch.mm" not in k
                                                       for k in kernels)
    assert kernels["backward dS chunks"]["bound"] != "memory"
    gemm = next(r for k, r in kernels.items() if "torch.mm" in k)
    assert gemm["bound"] == "mma"


def test_rows_and_totals(report):
    stdout, rows = report
    workloads = [r for r in rows if "loss" in r]
    totals = [r for r in workloads if r["kernel"] == "total"]
    assert {(r["loss"], r["d"]) for r in totals} == {("clip", 768), ("info_nce", 128)}
    for r in workloads:
        assert REQUIRED <= set(r), r
        assert r["modeled_ms"] >= 0
    for total in totals:
        parts = [r["modeled_ms"] for r in workloads if r["loss"] == total["loss"] and r["kernel"] != "total"]
        assert total["modeled_ms"] == pytest.approx(sum(parts))
        assert total["floor_ms"] <= total["modeled_ms"]
    assert "MODELED" in stdout


def test_the_suite_can_put_a_modeled_time_beside_a_measured_one():
    code = ("from benchmarks.static import triton_report as k; "
            "a = k.modeled_ms('clip', 8192, 8192, 768, 'bfloat16', 790.0, 4.3e12); "
            "b = k.modeled_ms('clip', 8192, 8192, 768, 'bfloat16', 395.0, 4.3e12); "
            "assert 0 < a < b, (a, b); assert k.modeled_ms('dcl', 8192, 8192, 768, 'bfloat16') is None; print(a)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=900,
                          check=False, env={**os.environ, "TRITON_INTERPRET": "0"})
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_rows_only_losses_form_their_row_gradient_in_the_forward(report):
    """InfoNCE at D = 128: the forward forms the rows' gradient products and the backward runs only
    the dC pass, so the tile kernels do the floor's 8·N·M·D FLOPs in all."""
    _, rows = report
    info = {r["kernel"]: r for r in rows if r.get("loss") == "info_nce" and r.get("d") == 128}
    assert "forward + row products" in info and "backward dC" in info, sorted(info)
    assert "backward dQ" not in info, sorted(info)
    assert info["forward + row products"]["mma"].startswith("wgmma")


@pytest.mark.long
@pytest.mark.skipif(not __import__("contrastive_ops._build", fromlist=["x"]).find_nvcc(), reason="nvcc not found")
def test_the_cuda_extensions_report_compiles_its_epilogues_and_models_the_headline():
    """The extension's section: every epilogue kernel compiled for sm_90a without spills and with
    its per-pair instruction count, and the headline modeled launch by launch beside Triton's."""
    code = ("import json; from benchmarks.static import cuda_report as c, model as k; "
            "s = c.epilogue_stats(); "
            "w = k.workload('clip', 65536, 65536, 768, 'bfloat16'); rows, total = c.model_workload(w); "
            "print(json.dumps({'stats': [vars(x) for x in s.values()], 'rows': rows, 'total': total}))")
    proc = subprocess.run([sys.executable, "-c", code], check=False, cwd=REPO, capture_output=True, text=True,
                          timeout=900, env={**os.environ, "TRITON_INTERPRET": "0"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    kernels = {s["kernel"] for s in out["stats"]}
    for name in ("rows_forward_kernel<0>", "cols_forward_kernel<0>", "rows_backward_kernel<__nv_bfloat16, 4>",
                 "ring_histogram_kernel<0>", "rows_forward_kernel<-1>"):
        assert name in kernels, sorted(kernels)
    for s in out["stats"]:
        assert s["spill_bytes"] == 0 and s["registers"] > 0, s
        if s["kernel"].startswith(("rows_", "cols_", "ring_histogram")):
            assert 10 < s["per_pair"] < 400, s
    stats = {s["kernel"]: s for s in out["stats"]}
    # the plain feature sets have a plain-quad loop, cheaper per pair than their pair-by-pair loop;
    # the others (labels here) none
    for name in ("rows_forward_kernel<0>", "rows_backward_kernel<__nv_bfloat16, 4>", "cols_forward_quads_kernel"):
        assert stats[name]["quad_per_pair"] is not None and stats[name]["quad_per_pair"] < stats[name]["per_pair"]
    assert stats["rows_forward_kernel<16>"]["quad_per_pair"] is None
    launches = {r["kernel"] for r in out["rows"]}
    # the headline's plain roles take the fused sm_90a tiles (wgmma, no spills), the dS products cuBLAS
    assert any("cuBLAS" in k for k in launches) and any(k.startswith("fused_") for k in launches), launches
    for r in out["rows"]:
        if r["kernel"].startswith("fused_"):
            assert r["mma"] == "wgmma" and r["spill_bytes"] == 0 and r["registers"] <= 128, r
    total = out["total"]
    assert total["modeled_ms"] == pytest.approx(sum(r["modeled_ms"] for r in out["rows"]))
    assert total["modeled_ms"] > total["floor_ms"] and total["triton_modeled_ms"] > 0


def test_per_opcode_throughputs_and_pipelines():
    """sm_90 throughputs from the programming guide's table: FFMA 4 warp-instructions per clock per SM,
    MUFU one per 2 cycles, shuffles one per cycle; distinct pipelines overlap, the issue cycles bound."""
    from benchmarks.static.sass import sm_cycles

    assert sm_cycles({"FFMA": 4}, 4) == pytest.approx(4.0)
    assert sm_cycles({"MUFU": 4}, 4) == pytest.approx(32.0)
    assert sm_cycles({"SHFL": 4}, 4) == pytest.approx(16.0)
    assert sm_cycles({"FMNMX": 4}, 4) == pytest.approx(8.0)
    assert sm_cycles({"MUFU": 4, "FFMA": 16}, 4) == pytest.approx(32.0)  # XU and FMA overlap
    assert sm_cycles({"MOV": 8}, 4) == pytest.approx(8.0)  # issue cycles only


def test_exposed_work_serializes_with_the_warpgroups_mma():
    """One CTA per SM: exposed issue adds to the MMA; co-resident CTAs run in phase (each round pays
    their products, then their exposed epilogues); a warp-specialized kernel overlaps within the CTA."""
    import dataclasses

    from benchmarks.static.model import H200, KernelStats, Launch

    base = KernelStats("k", 4, 3, 255, 0, 0, 200 * 1024, "wgmma", 8, 100, 0, 0, 100,
                       tile_exposed={"FFMA": 1000}, tile_overlapped={"IADD3": 10})
    tile_flops = 1000.0 * H200.mma_flops["bfloat16"] / H200.sms / H200.clock_hz  # 1000 cycles of MMA
    one = Launch("k", base, H200.sms, 10, 1, tile_flops * H200.sms * 10, 0.0).model(H200, "bfloat16")
    assert one["bound"] == "mma+epilogue (serial)"
    assert one["modeled_ms"] - one["refill_ms"] == pytest.approx(10 * 2000 / H200.clock_hz * 1e3, rel=1e-3)
    special = dataclasses.replace(base, specialized=True)
    ws = Launch("k", special, H200.sms, 10, 1, tile_flops * H200.sms * 10, 0.0).model(H200, "bfloat16")
    assert ws["modeled_ms"] < one["modeled_ms"]
    # two CTAs per SM (half the shared memory): 2 × (1000 MMA + 1000 exposed) per round of two tiles
    two = dataclasses.replace(base, shared=100 * 1024, registers=128)
    assert two.ctas_per_sm(H200) == 2
    paired = Launch("k", two, 2 * H200.sms, 10, 1, tile_flops * 2 * H200.sms * 10, 0.0).model(H200, "bfloat16")
    assert paired["bound"] == "mma+epilogue (serial)"
    assert paired["modeled_ms"] == pytest.approx(10 * 2 * 2000 / H200.clock_hz * 1e3, rel=1e-3)


def test_every_k_step_is_counted():
    """The tile's opcode counts exclude its k-loop; a tile of ksteps steps pays ksteps k-steps."""
    from benchmarks.static.model import KernelStats

    stats = KernelStats("k", 4, 3, 128, 0, 0, 0, "wgmma", 8, 30, 10, 0, 100,
                        tile_exposed={"FFMA": 20}, kloop_overlapped={"MOV": 10})
    for ksteps in (1, 3):
        exposed, overlapped = stats.cycles(ksteps)
        assert exposed == pytest.approx(20.0)  # 20 FFMA × 4 warps at 4 per clock
        assert overlapped == pytest.approx(ksteps * 10.0)  # 10 MOV × 4 warps at 4 issues per clock
        assert stats.per_tile(ksteps) == 30 + 10 * (ksteps - 1)


def test_a_kernel_without_a_reduction_loop_has_its_tile_loop_read_as_such():
    """A pipelined kernel (its product issued once per tile, no loop over D): its innermost loop with MMA
    is the tile loop, every instruction of it counted once per tile, the epilogue's MUFU included."""
    from benchmarks.static.sass import parse_sass, sass_stats

    text = """
        /*0000*/ MOV R1, c[0x0][0x28] ;
        /*0010*/ WARPGROUP.ARRIVE ;
        /*0020*/ HGMMA.64x64x16.F32.BF16 R24, gdesc[UR4], RZ, !UPT, gsb0 ;
        /*0030*/ MUFU.EX2 R2, R3 ;
        /*0040*/ WARPGROUP.DEPBAR.LE gsb0, 0x0 ;
        /*0050*/ FFMA R4, R24, R5, R6 ;
        /*0060*/ MUFU.EX2 R7, R4 ;
        /*0070*/ @P0 BRA 0x10 ;
        /*0080*/ EXIT ;
    """
    instructions = parse_sass(text)
    kloop = sass_stats(instructions)  # read as a k-loop: the counts of one step go to the k-loop
    assert kloop.kloop_instructions == 7 and kloop.kloop_mufu == 2
    tiles = sass_stats(instructions, reduction_loop=False)
    assert tiles.kloop_instructions == 0 and tiles.tile_instructions == 7 and tiles.tile_mufu == 2
    assert tiles.tile_overlapped.get("MUFU") == 1 and tiles.tile_exposed.get("MUFU") == 1


def test_library_gemms_are_charged_their_measured_rate_by_shape():
    from benchmarks.static.model import GEMM_RATE_PEAK, H200, library_gemm_efficiency, library_gemm_ms

    full = 2.0 * 4096 * 4096 * 4096 / H200.mma_flops["bfloat16"] * 1e3
    # a table point: M = N = K = 4096 at batch 4 ran at 793.1 TFLOP/s of the table's 808.7
    assert library_gemm_ms(4096, 4096, 4096, H200, "bfloat16") == pytest.approx(full * GEMM_RATE_PEAK / 793.1)
    # short K and narrow outputs cost, monotonically; larger problems than the table's keep its 4096 rate
    assert library_gemm_efficiency(4096, 4096, 512) < library_gemm_efficiency(4096, 4096, 768) < \
        library_gemm_efficiency(4096, 4096, 1024)
    assert library_gemm_efficiency(4096, 512, 4096) < library_gemm_efficiency(4096, 768, 4096) < \
        library_gemm_efficiency(4096, 1024, 4096)
    assert library_gemm_efficiency(65536, 65536, 65536) == library_gemm_efficiency(4096, 4096, 4096)
    assert library_gemm_efficiency(4096, 4096, 64) == library_gemm_efficiency(4096, 4096, 256)
    assert 0.0 < library_gemm_efficiency(256, 256, 256) <= 1.0


def test_any_triton_kernel_can_be_modeled(tmp_path):
    """benchmarks.static.any_kernel: a kernel of another project, typed by its caller."""
    code = ("import triton, triton.language as tl\n"
            "from benchmarks.static.any_kernel import model_kernel\n"
            "@triton.jit\n"
            "def scale(X, Y, N, BLOCK: tl.constexpr):\n"
            "    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)\n"
            "    tl.store(Y + offs, tl.load(X + offs, mask=offs < N) * 2.0, mask=offs < N)\n"
            "r = model_kernel(scale, {'X': '*fp32', 'Y': '*fp32', 'N': 'i32'}, {'BLOCK': 1024}, (4096,), 0.0,\n"
            "                 8.0 * 4096 * 1024, divisible=('N',))\n"
            "assert r['bound'] == 'memory' and r['modeled_ms'] > 0 and r['stats'].mma_kind == 'none', r\n"
            "print(r['modeled_ms'])\n")
    script = tmp_path / "other_project.py"  # Triton reads a kernel's source from its file
    script.write_text(code)
    proc = subprocess.run([sys.executable, str(script)], cwd=REPO, capture_output=True, text=True, timeout=600,
                          check=False, env={**os.environ, "TRITON_INTERPRET": "0", "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr[-3000:]
