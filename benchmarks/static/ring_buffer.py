"""How the Ring's bracketed selection fills its buffer and how often its search reads them, on random unit
vectors: the inputs the static model's Ring launches take (every figure from running the selection's own
search kernel, in Triton's interpreter on the CPU, on entries built here)."""
from __future__ import annotations

import functools
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import torch

#: Rows simulated per shape (each against every column).
ROWS = 64


@functools.cache
def buffer_search(columns: int, outer: float, inner: float, d: int = 128, rows: int = ROWS, seed: int = 0) -> dict:
    """``fill`` (mean entries filled per row, and ``fill_max``), ``passes`` (mean reads of a row's buffer by
    ``kernels.ring_select._buffer_search_kernel``: its span pass, search steps and final pass, both ranks; and
    ``passes_max``), ``entries``, ``resolved`` (the share of rows the search resolved) for ``rows`` random unit
    rows against ``columns`` random unit columns in ``d`` dimensions, every column a candidate. Runs the
    kernel in Triton's interpreter, in a process of its own (a few seconds)."""
    args = json.dumps([columns, outer, inner, d, rows, seed])
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-m", "benchmarks.static.ring_buffer", args], cwd=root, env=env,
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def _measure(columns: int, outer: float, inner: float, d: int, rows: int, seed: int) -> dict:
    """:func:`buffer_search` in this process (``TRITON_INTERPRET=1``)."""
    from contrastive_ops.kernels import ring_select as rs

    from contrastive_ops.core import ring_ranks

    g = torch.Generator().manual_seed(seed)
    q = torch.nn.functional.normalize(torch.randn(rows, d, generator=g), dim=1)
    k = torch.nn.functional.normalize(torch.randn(columns, d, generator=g), dim=1)
    halves = q @ k.T
    count = torch.full((rows,), columns, dtype=torch.int64)
    lo, hi = ring_ranks(count, outer, inner)
    s = min(columns, rs.SAMPLE_COLUMNS)
    ordered = halves[:, torch.arange(s) * columns // s].sort(dim=1, descending=True).values
    spans = torch.cat([rs.sample_spans(ordered, count, lo), rs.sample_spans(ordered, count, hi - 1)]).contiguous()
    entries = rs.buffer_length(columns, outer, inner)
    inside = (((halves >= spans[0, :, None]) & (halves < spans[1, :, None]))
              | ((halves >= spans[2, :, None]) & (halves < spans[3, :, None])))
    filled = inside.sum(dim=1)
    scratch = torch.zeros(rows, entries)
    for i in range(rows):  # in column order, as the gathering pass writes them
        taken = halves[i][inside[i]][:entries]
        scratch[i, :taken.numel()] = taken
    counts = torch.stack([(halves >= spans[1, :, None]).sum(dim=1), (halves >= spans[3, :, None]).sum(dim=1),
                          filled]).to(torch.int32).contiguous()
    ranks = torch.stack([lo, hi - 1]).to(torch.int32).contiguous()
    found = torch.empty(3, rows)
    passes = torch.zeros(rows, dtype=torch.int32)
    rs.search_buffer(scratch, counts, spans, ranks, found, 0, rows, entries, passes=passes)
    exact = halves.sort(dim=1, descending=True).values
    resolved = found[2] > 0
    assert torch.equal(found[0][resolved], exact[resolved, lo[resolved]])
    assert torch.equal(found[1][resolved], exact[resolved, hi[resolved] - 1])
    return {"fill": filled.double().mean().item(), "fill_max": int(filled.max()), "entries": entries,
            "passes": passes[resolved].double().mean().item() if resolved.any() else math.nan,
            "passes_max": int(passes.max()), "resolved": resolved.double().mean().item()}


if __name__ == "__main__":
    print(json.dumps(_measure(*json.loads(sys.argv[1]))))
