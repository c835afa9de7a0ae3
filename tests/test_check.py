"""``python -m contrastive_ops.check`` in-process: a passing run lists its rows and exits 0; a planted
error in one backend (a loss value, a gradient, a non-deterministic result) makes it exit 1 and names
the row."""
import json
import os

import pytest
import torch

import contrastive_ops as co
from contrastive_ops import _ext, check, functional
from contrastive_ops.backends import chunked, naive

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
_TRITON, _WHY = co.backend_status("triton", DEVICE)
needs_triton = pytest.mark.skipif(not _TRITON and os.environ.get("CONTRASTIVE_OPS_REQUIRE_TRITON") != "1",
                                  reason=f"triton backend: {_WHY}")


def _row(out: str, loss: str, backend: str, dtype: str) -> str:
    """The table line of one row (fails if it is not there)."""
    prefix = f"| {loss} | {backend} | {dtype} |"
    lines = [line for line in out.splitlines() if line.startswith(prefix)]
    assert len(lines) == 1, f"no single row {prefix!r} in:\n{out}"
    return lines[0]


def test_every_public_loss_is_checked():
    assert {case.function for case in check.CASES.values()} == set(functional.__all__)
    assert set(check.QUICK) <= set(check.CASES)


def test_quick_run_passes_and_lists_every_row(capsys, tmp_path):
    path = tmp_path / "rows.json"
    assert check.main(["--quick", "--backends", "naive", "chunked", "--json", str(path)]) == 0
    out = capsys.readouterr().out
    for loss in check.QUICK:
        for backend in ("naive", "chunked"):
            for dtype in ("float64", "float32", "float16", "bfloat16"):
                assert _row(out, loss, backend, dtype).endswith("| pass |")
    assert "0 failed" in out
    rows = json.loads(path.read_text())["rows"]
    assert len(rows) == len(check.QUICK) * 2 * 4
    assert all(r["verdict"] == "pass" and r["deterministic"] for r in rows)


@pytest.mark.parametrize("planted", ["loss", "gradient"])
def test_a_planted_error_fails_and_names_the_row(planted, capsys, monkeypatch):
    real = chunked.compute_terms

    def perturbed(*args, **kwargs):
        terms = real(*args, **kwargs)
        lse = terms.row_lse
        if planted == "loss":
            lse = lse * (1 + 1e-3)
        else:  # the same values, every gradient through row_lse 0.1 % too large
            lse = lse + 1e-3 * (lse - lse.detach())
        return terms._replace(row_lse=lse)

    monkeypatch.setattr(chunked, "compute_terms", perturbed)
    assert check.main(["--losses", "info_nce", "nt_xent", "--backends", "naive", "chunked",
                       "--dtypes", "float32"]) == 1
    out = capsys.readouterr().out
    for loss in ("info_nce", "nt_xent"):
        assert _row(out, loss, "naive", "float32").endswith("| pass |")
        line = _row(out, loss, "chunked", "float32")
        assert "FAIL" in line
        assert ("FAIL: loss" in line) == (planted == "loss")
        assert "d/dtemperature" in line or planted == "loss"
    assert "2 failed" in out and "info_nce/chunked/float32" in out.splitlines()[-1]


def test_a_nondeterministic_backend_fails(capsys, monkeypatch):
    real = chunked.compute_terms
    calls = []

    def drifting(*args, **kwargs):  # a different last bit on every call, far inside the error bound
        terms = real(*args, **kwargs)
        calls.append(None)
        return terms._replace(row_lse=terms.row_lse * (1 + 1e-7 * len(calls)))

    monkeypatch.setattr(chunked, "compute_terms", drifting)
    assert check.main(["--losses", "clip_loss", "--backends", "chunked", "--dtypes", "float32"]) == 1
    line = _row(capsys.readouterr().out, "clip_loss", "chunked", "float32")
    assert "| NO |" in line and "FAIL: not deterministic" in line


@pytest.mark.parametrize("broken", ["chunked", "naive"])
def test_a_backend_that_raises_is_a_failed_row(broken, capsys, monkeypatch):
    """A backend that raises fails its row; without a reference (naive raises) the loss's rows fail."""
    def raises(*args, **kwargs):
        raise RuntimeError("planted")

    monkeypatch.setattr(naive if broken == "naive" else chunked, "compute_terms", raises)
    assert check.main(["--losses", "supcon_loss", "dcl_loss", "--backends", "chunked", "--dtypes", "float64"]) == 1
    out = capsys.readouterr().out
    for loss in ("supcon_loss", "dcl_loss"):
        if broken == "chunked":
            assert "FAIL: RuntimeError: planted" in _row(out, loss, "chunked", "float64")
        else:
            assert "FAIL: reference: RuntimeError: planted" in _row(out, loss, "naive", "float64")


def test_unknown_names_are_refused(capsys):
    with pytest.raises(SystemExit) as exc:
        check.main(["--backends", "tpu"])
    assert exc.value.code == 2 and "unknown backend 'tpu'" in capsys.readouterr().err


@pytest.mark.interpreter
@needs_triton
def test_triton_rows(capsys):
    assert check.main(["--losses", "info_nce_negatives", "--backends", "naive", "triton"]) == 0
    out = capsys.readouterr().out
    for dtype in ("float32", "float16"):
        assert _row(out, "info_nce_negatives", "triton", dtype).endswith("| pass |")
    if DEVICE.type == "cpu":
        assert check.BF16_INTERPRETER in _row(out, "*", "triton", "bfloat16")
    else:
        assert _row(out, "info_nce_negatives", "triton", "bfloat16").endswith("| pass |")


@pytest.mark.skipif(not _ext.prebuilt() and os.environ.get("CONTRASTIVE_OPS_REQUIRE_CUDA_EXT") != "1",
                    reason="the CUDA extension is not built here")
def test_cuda_rows(capsys):
    """On a CPU the extension's CPU operators are checked, and the public route is left as it was."""
    assert check.main(["--losses", "siglip_loss", "--backends", "cuda"]) == 0
    out = capsys.readouterr().out
    label = "cuda (CPU ops)" if DEVICE.type == "cpu" else "cuda"
    for dtype in ("float32", "float16", "bfloat16"):
        assert _row(out, "siglip_loss", label, dtype).endswith("| pass |")
    assert "float64" not in out
    if DEVICE.type == "cpu":
        with pytest.raises(co.BackendUnavailableError):
            co.info_nce(torch.randn(3, 4), torch.randn(3, 4), backend="cuda")
