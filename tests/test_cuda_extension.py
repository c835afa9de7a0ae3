"""The CUDA extension (backend="cuda") without a GPU: it compiles, links and loads on a CPU machine
(the build is part of CI: a compile error fails it), its operators are registered with fake
implementations, and its argument checks give clear errors naming the fix.

The extension comes from ``setup.py`` (``pip install --no-build-isolation -e .`` with nvcc, as
``tools/bootstrap.sh`` does, for the default targets) or, where it was not built, from a JIT build for
sm_90 into ``build/cuda-test`` once per session. Without nvcc the tests skip, unless
``CONTRASTIVE_OPS_REQUIRE_CUDA_EXT=1`` (set by CI) makes that a failure.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import contrastive_ops as co
from contrastive_ops import _build, _ext
from contrastive_ops.core import RoleSpec

REPO = Path(__file__).resolve().parents[1]
X = torch.randn(8, 4)
Y = torch.randn(8, 4)


@pytest.fixture(scope="session")
def ext():
    """The loaded extension: prebuilt, else JIT-built once for sm_90 inside the repo."""
    if not _ext.prebuilt():
        ok, why = _ext.jit_status()
        if not ok:
            if os.environ.get("CONTRASTIVE_OPS_REQUIRE_CUDA_EXT") == "1":
                pytest.fail(f"CONTRASTIVE_OPS_REQUIRE_CUDA_EXT=1 but the extension is not built: {why}")
            pytest.skip(f"the CUDA extension is not built and cannot be built here: {why}")
        os.environ["CONTRASTIVE_OPS_CUDA_BUILD_DIR"] = str(REPO / "build" / "cuda-test")
        os.environ["CONTRASTIVE_OPS_CUDA_ARCHS"] = "90"
    _ext.load()  # compile errors surface here
    from contrastive_ops.backends import cuda

    return cuda


def _ops():
    return torch.ops.contrastive_ops_cuda


def _forward(query, keys=None, extra=None, scale=None, bias=None, pos_index=None, row_labels=None, col_labels=None,
             self_index=None, band_lo=None, band_hi=None, guide_rows=None, guide_cols=None, guide_max=None,
             column_terms=False, hard_beta=None, pairwise_sigmoid=False, chunks=(16, 16)):
    scale = torch.tensor(2.0) if scale is None else scale
    return _ops().forward(query, keys, extra, scale, bias, pos_index, row_labels, col_labels, self_index, band_lo,
                          band_hi, guide_rows, guide_cols, guide_max, True, False, column_terms, True, hard_beta,
                          pairwise_sigmoid, *chunks)


def test_plain_import_never_loads_the_extension():
    code = ("import sys, contrastive_ops as co; co.info_nce; "
            "assert not any(m in sys.modules for m in ('contrastive_ops._cuda_ext', 'contrastive_ops.backends.cuda'))")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_no_import_circle_between_the_registry_and_the_loader():
    """The loader (_ext) and the registry (backends) take their error type from contrastive_ops.errors:
    importing the loader first imports no backend."""
    code = ("import sys; import contrastive_ops._ext as e; "
            "assert 'contrastive_ops.backends' not in sys.modules or e.BackendUnavailableError is "
            "sys.modules['contrastive_ops.backends'].BackendUnavailableError; "
            "from contrastive_ops.errors import BackendUnavailableError as E; import contrastive_ops as co; "
            "assert co.BackendUnavailableError is E is e.BackendUnavailableError")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
    import ast

    loader = ast.parse((REPO / "contrastive_ops" / "_ext.py").read_text())
    imported = {node.module for node in ast.walk(loader) if isinstance(node, ast.ImportFrom)}
    assert "backends" not in imported and not any("backends" in (m or "") for m in imported), imported


def test_extension_loads_with_its_operators(ext):
    assert _ext.built_targets() == _build.targets(_build.parse_archs())  # the default: sm_80, sm_90a, PTX 80
    schemas = {name: str(getattr(_ops(), name).default._schema) for name in ("forward", "backward", "ring_band")}
    assert "float? hard_beta, bool pairwise_sigmoid, int chunk_rows, int chunk_cols" in schemas["forward"]
    assert "Tensor? g_row_lse_beta, Tensor? g_row_pair" in schemas["backward"]
    assert "float outer, float inner, int chunk_rows, int chunk_cols" in schemas["ring_band"]
    guide = "Tensor? guide_rows, Tensor? guide_cols, Tensor? guide_max, bool key_negatives"
    assert all(guide in schema for schema in schemas.values()), schemas
    # the loss options are core.ROLE_FIELDS (the backend calls the operators by these names)
    from contrastive_ops.core import ROLE_FIELDS

    forward = {arg.name: str(arg.type) for arg in _ops().forward.default._schema.arguments}
    for name, kind in ROLE_FIELDS:  # "Tensor?" is written Optional[Tensor] there
        expected = f"Optional[{kind[:-1]}]" if kind.endswith("?") else kind
        assert forward.get(name) == expected, (name, kind, forward.get(name))
    assert co.backend_status("cuda")[1] == "it runs on CUDA tensors only, these are on cpu"


def test_cpu_tensors_raise_a_clear_error_naming_the_fix(ext):
    with pytest.raises(co.BackendUnavailableError, match="backend='cuda' cannot run here: it runs on CUDA tensors"):
        co.info_nce(X, Y, backend="cuda")
    with pytest.raises(co.BackendUnavailableError, match=r"move them to a GPU \(tensor.cuda\(\)\) or use backend='chunked'"):
        ext.compute_terms(X, Y, None, 2.0, RoleSpec())


def test_float64_is_a_type_error_pointing_at_chunked(ext):
    with pytest.raises(TypeError, match="use backend='chunked' for float64"):
        ext.compute_terms(X.double(), Y.double(), None, 2.0, RoleSpec())
    with pytest.raises(TypeError, match="float64 inputs are not supported by backend='cuda'.*backend='chunked'"):
        _forward(X.double(), Y.double())


I64 = torch.arange(8)
GUIDE = {"guide_rows": torch.randn(8, 3), "guide_cols": torch.randn(8, 3), "guide_max": torch.zeros(8)}


def _guide(**changed):
    return {"query": X, "keys": Y, **GUIDE, **changed}



@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        ({"query": X.long()}, TypeError, "query must be float32, float16 or bfloat16, got Long"),
        ({"query": X[0]}, ValueError, r"query must be 2-D \[rows, features\], got shape \[4\]"),
        ({"query": X[:0]}, ValueError, "query must have at least one row and one feature"),
        ({"query": X, "keys": Y[:, :3]}, ValueError, "feature dims differ: query has 4, keys has 3"),
        ({"query": X, "keys": Y.half()}, TypeError, "keys is Half but query is Float"),
        ({"query": X, "keys": Y, "extra": torch.randn(3, 5)}, ValueError, "feature dims differ: query has 4, extra has 5"),
        ({"query": X, "keys": Y, "scale": torch.ones(2)}, ValueError, r"scale must hold one value, got shape \[2\]"),
        ({"query": X, "keys": Y, "scale": torch.tensor(2.0).double()}, TypeError, "scale must be Float, got Double"),
        ({"query": X, "keys": Y, "pos_index": I64.int()}, TypeError, "pos_index must be Long, got Int"),
        ({"query": X, "keys": Y, "pos_index": I64[:5]}, ValueError, r"pos_index must have shape \[8\], got \[5\]"),
        ({"query": X, "keys": Y, "pos_index": I64 + 1}, ValueError,
         r"pos_index values must be column indices in \[0, 8\) or -1 \(none\), got values in \[1, 8\]"),
        ({"query": X, "keys": Y, "extra": torch.randn(3, 4), "self_index": I64 - 2}, ValueError,
         r"self_index values must be column indices in \[0, 11\) or -1 \(none\), got values in \[-2, 5\]"),
        ({"query": X, "keys": Y, "row_labels": I64}, ValueError, "row_labels and col_labels go together"),
        ({"query": X, "keys": Y[:6], "row_labels": I64, "col_labels": I64}, ValueError, r"col_labels must have shape \[6\]"),
        ({"query": X, "keys": Y, "band_lo": torch.zeros(8)}, ValueError, "band_lo and band_hi go together"),
        ({"query": X, "keys": Y, "pairwise_sigmoid": True}, ValueError, "pairwise_sigmoid needs a bias"),
        ({"query": X, "keys": Y, "bias": torch.zeros(2), "pairwise_sigmoid": True}, ValueError, "bias must hold one value"),
        ({"query": X, "keys": Y, "hard_beta": -0.5}, ValueError, "hard_beta must be >= 0, got -0.5"),
        ({"query": X, "keys": Y, "hard_beta": 1.0, "column_terms": True}, ValueError, "does not combine with column_terms"),
        ({"query": X, "keys": Y, "chunks": (0, 16)}, ValueError, "chunk_rows and chunk_cols must be positive"),
        (_guide(guide_max=None), ValueError, r"guide_rows, guide_cols and guide_max go together \(2 of the three"),
        (_guide(guide_rows=torch.ones(8, 3, dtype=torch.long)), TypeError, "guide_rows must be floating point, got Long"),
        (_guide(guide_max=torch.zeros(8, dtype=torch.int32)), TypeError, "guide_max must be floating point, got Int"),
        (_guide(guide_rows=GUIDE["guide_rows"].double()), TypeError,
         "guide_rows is Double: backend='cuda' compares guide similarities in fp32.*backend='chunked'"),
        (_guide(guide_rows=torch.randn(3)), ValueError, r"guide_rows must be 2-D \[rows, features\], got shape \[3\]"),
        (_guide(guide_rows=torch.randn(5, 3)), ValueError,
         r"guide_rows must have one row per query row \(8\), got shape \[5, 3\]"),
        (_guide(extra=torch.randn(3, 4)), ValueError,
         r"guide_cols must have one row per column, keys then extra \(11\), got shape \[8, 3\]"),
        (_guide(guide_cols=torch.randn(8, 2)), ValueError, "guide feature dims differ: guide_rows has 3, guide_cols has 2"),
        (_guide(guide_max=torch.zeros(5)), ValueError, r"guide_max must have shape \[8\], got \[5\]"),
    ],
)
def test_operator_argument_checks(ext, kwargs, error, match):
    with pytest.raises(error, match=match):
        _forward(**kwargs)


def test_backward_and_ring_argument_checks(ext):
    f32 = torch.zeros(8)
    with pytest.raises(ValueError, match=r"g_row_lse must have shape \[8\], got \[3\]"):
        _ops().backward(torch.zeros(3), f32, None, None, None, None, f32, I64, None, None, None, X, Y, None,
                        torch.tensor(1.0), None, I64, None, None, None, None, None, None, None, None, True, False,
                        False, True, None, False, 16, 16)
    with pytest.raises(ValueError, match="hard_beta needs g_row_lse_beta and row_lse_beta"):
        _ops().backward(f32, f32, None, None, None, None, f32, I64, None, None, None, X, Y, None,
                        torch.tensor(1.0), None, I64, None, None, None, None, None, None, None, None, True, False,
                        False, True, 1.0, False, 16, 16)
    with pytest.raises(ValueError, match=r"guide_cols must have one row per column, keys then extra \(8\)"):
        _ops().backward(f32, f32, None, None, None, None, f32, I64, None, None, None, X, Y, None,
                        torch.tensor(1.0), None, I64, None, None, None, None, None, GUIDE["guide_rows"],
                        torch.randn(6, 3), GUIDE["guide_max"], True, False, False, True, None, False, 16, 16)
    with pytest.raises(ValueError, match="outer must be in"):
        _ops().ring_band(X, Y, None, torch.tensor(1.0), I64, None, None, None, None, None, None, True, True, 1.5, 0.0,
                         16, 16)
    with pytest.raises(ValueError, match="guide_rows, guide_cols and guide_max go together"):
        _ops().ring_band(X, Y, None, torch.tensor(1.0), I64, None, None, None, GUIDE["guide_rows"], None, None, True,
                         True, 0.5, 0.0, 16, 16)


def test_float64_guides_are_compared_as_fp32_copies(ext):
    """As on the Triton backend: the same terms as fp32 guides give (integer guides: exact products)."""
    guide = {"guide_rows": torch.randint(-2, 3, (8, 3)).float(), "guide_cols": torch.randint(-2, 3, (8, 3)).float(),
             "guide_max": torch.randint(-3, 4, (8,)).float() + 0.5}
    spec32 = RoleSpec(pos_index=I64, **guide)
    spec64 = RoleSpec(pos_index=I64, **{name: g.double() for name, g in guide.items()})
    for a, b in zip(ext.compute_terms(X, Y, None, 2.0, spec32, allow_cpu=True),
                    ext.compute_terms(X, Y, None, 2.0, spec64, allow_cpu=True)):
        assert (a is None and b is None) or torch.equal(a, b)


def test_fake_implementations_give_shapes_and_dtypes(ext):
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        q, k, e = (torch.randn(n, 12, device="cuda", dtype=torch.bfloat16) for n in (7, 5, 3))
        spec = RoleSpec(pos_index=torch.arange(5, device="cuda"), column_terms=True)
        terms = ext.compute_terms(q, k, e, 2.0, spec)
        assert [tuple(t.shape) for t in terms[:8]] == [(7,)] * 4 + [(5,)] * 4
        assert terms.row_lse_beta is None and terms.row_pair_loss is None
        assert terms.row_lse.dtype == torch.float32 and terms.row_den_count.dtype == torch.int64
        ring = ext.compute_terms(q, k, e, 2.0, RoleSpec(pos_index=torch.arange(7, device="cuda"), ring=(0.5, 0.1)))
        assert ring.row_lse.shape == (7,) and ring.col_lse is None
        hard = ext.compute_terms(q, k, None, 2.0, RoleSpec(pos_index=torch.arange(7, device="cuda"), hard_beta=0.5))
        assert hard.row_lse_beta.shape == (7,) and hard.row_pair_loss is None
        pairs = ext.compute_terms(q, k, None, 2.0, RoleSpec(pos_index=torch.arange(7, device="cuda"),
                                                             pairwise_sigmoid=True), bias=-1.0)
        assert pairs.row_pair_loss.shape == (7,) and pairs.row_lse_beta is None
        guide = {"guide_rows": torch.randn(7, 4, device="cuda", dtype=torch.bfloat16),
                 "guide_cols": torch.randn(8, 4, device="cuda"), "guide_max": torch.zeros(7, device="cuda")}
        guided = ext.compute_terms(q, k, e, 2.0, RoleSpec(pos_index=torch.arange(7, device="cuda"), ring=(0.5, 0.1),
                                                          **guide))
        assert guided.row_lse.shape == (7,) and guided.row_den_count.dtype == torch.int64


def test_every_role_runs_no_loss_is_refused(ext):
    """Every loss resolves to backend='cuda' on a GPU (no refusals remain), and auto keeps Triton first."""
    from contrastive_ops.backends import AUTO_ORDER_CUDA

    assert not hasattr(co.backends, "cuda_supports")
    assert AUTO_ORDER_CUDA[:2] == ("triton", "cuda")


def test_autograd_gives_every_input_a_gradient_of_its_shape(ext):
    # meta tensors: the fake implementations stand in for the kernels, autograd runs for real
    q, k, e = (torch.randn(n, 12, device="meta", requires_grad=True) for n in (7, 5, 3))
    scale = torch.tensor(3.0, device="meta", requires_grad=True)
    terms = ext.compute_terms(q, k, e, scale, RoleSpec(pos_index=torch.arange(5, device="meta"), column_terms=True))
    grads = torch.autograd.grad(terms.row_lse.sum() + terms.col_pos.sum(), [q, k, e, scale])
    assert [tuple(g.shape) for g in grads] == [(7, 12), (5, 12), (3, 12), ()]
    shared = ext.compute_terms(q, q, None, scale, RoleSpec(self_index=torch.arange(7, device="meta")))
    assert torch.autograd.grad(shared.row_lse.sum(), q)[0].shape == (7, 12)
    bias = torch.tensor(-1.0, device="meta", requires_grad=True)
    pairs = ext.compute_terms(q, k[:7] if k.shape[0] >= 7 else q, None, scale,
                              RoleSpec(pos_index=torch.arange(7, device="meta"), pairwise_sigmoid=True), bias=bias)
    assert [tuple(g.shape) for g in torch.autograd.grad(pairs.row_pair_loss.sum(), [q, scale, bias])] == [(7, 12), (), ()]
    guide = torch.randn(7, 4, device="meta", requires_grad=True)  # no gradient flows to a guide
    guided = ext.compute_terms(q, k, e, scale, RoleSpec(pos_index=torch.arange(7, device="meta"), column_terms=True,
                                                        guide_rows=guide, guide_cols=torch.randn(8, 4, device="meta"),
                                                        guide_max=torch.zeros(7, device="meta")))
    grads = torch.autograd.grad(guided.row_lse.sum() + guided.col_lse.sum(), [q, k, e, guide], allow_unused=True)
    assert [None if g is None else tuple(g.shape) for g in grads] == [(7, 12), (5, 12), (3, 12), None]


def test_info_reports_the_extension(ext):
    out = subprocess.run([sys.executable, "-m", "contrastive_ops.info"], capture_output=True, text=True, check=True,
                         cwd=REPO).stdout
    assert "CUDA extension (backend 'cuda'): " in out
    if not torch.cuda.is_available():
        assert "cannot run here: no CUDA GPU" in out
    if _ext.prebuilt():
        assert "built for " in out and "sm_90" in out


def _setup_env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in ("CUDA_HOME", "CUDA_PATH", "CONTRASTIVE_OPS_BUILD_CUDA")}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep)
                                  if p and not (Path(p) / "nvcc").exists())
    env.update(extra)
    return env


def test_setup_without_nvcc_warns_or_fails_when_forced():
    # setup.py evaluated without nvcc on PATH (no build: --version only)
    setup = [sys.executable, str(REPO / "setup.py"), "--version"]
    plain = subprocess.run(setup, check=False, capture_output=True, text=True, env=_setup_env(), cwd=REPO)
    assert plain.returncode == 0 and "0.1.0" in plain.stdout
    assert "building without the CUDA extension" in plain.stderr and "nvcc not found" in plain.stderr
    off = subprocess.run(setup, check=False, capture_output=True, text=True, env=_setup_env(CONTRASTIVE_OPS_BUILD_CUDA="0"), cwd=REPO)
    assert off.returncode == 0 and "CUDA extension" not in off.stderr
    forced = subprocess.run(setup, check=False, capture_output=True, text=True, env=_setup_env(CONTRASTIVE_OPS_BUILD_CUDA="1"),
                            cwd=REPO)
    assert forced.returncode != 0 and "CONTRASTIVE_OPS_BUILD_CUDA=1 but the CUDA extension cannot be built" in forced.stderr


@pytest.mark.parametrize("text,archs", [
    ("80;90", ["80", "90"]), ("9.0", ["90"]), ("sm_90a, 100", ["90a", "100"]), ("8.0;9.0", ["80", "90"]),
    ("80 90a", ["80", "90a"]), ("8.0;9.0+PTX", ["80", "90+PTX"]), ("80+PTX;90", ["80+PTX", "90"]),
    ("90;90+ptx", ["90+PTX"]),
])
def test_arch_list_parsing(text, archs):
    assert _build.parse_archs(text) == archs


@pytest.mark.parametrize("archs,targets", [
    (["80", "90"], ["sm_80", "sm_90", "compute_90"]), (["90a"], ["sm_90a"]),
    (["80", "90a"], ["sm_80", "sm_90a", "compute_80"]), (["80+PTX", "90"], ["sm_80", "sm_90", "compute_80", "compute_90"]),
])
def test_embedded_targets(archs, targets):
    assert _build.targets(archs) == targets


def test_arch_list_rejects_old_or_unreadable_targets():
    with pytest.raises(_build.BuildError, match="sm_75 is too old"):
        _build.parse_archs("75")
    with pytest.raises(_build.BuildError, match="cannot read 'hopper'"):
        _build.parse_archs("hopper")
    with pytest.raises(_build.BuildError, match="no portable PTX"):
        _build.parse_archs("90a+PTX")


@pytest.mark.skipif(_build.find_nvcc() is None, reason="nvcc not found")
@pytest.mark.parametrize("text", ["80", "90", "90a", "80;90", "8.0;9.0", "80;90a", "8.0;9.0+PTX"])
def test_the_built_target_report_compiles_for_any_arch_list(tmp_path, text):
    """csrc/runtime.cu (host code only) built with the extension's flags for ``text``, linked into a
    small program that prints ``built_archs()``: it must name exactly the embedded targets."""
    archs = _build.parse_archs(text)
    main = tmp_path / "main.cpp"
    main.write_text('#include <cstdio>\n#include "contrastive_cuda.h"\n'
                    'int main() { std::puts(contrastive_cuda::built_archs()); }\n')
    exe = tmp_path / "report"
    nvcc = str(_build.cuda_home() / "bin" / "nvcc")
    cmd = [nvcc, *_build.nvcc_flags(archs), "-I", str(_build.CSRC), str(_build.CSRC / "runtime.cu"), str(main), "-o", str(exe)]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    out = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout.split()
    assert out == _build.targets(archs)
