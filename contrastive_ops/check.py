"""``python -m contrastive_ops.check``: every loss on every backend that runs here, against float64.

For each public loss of :mod:`contrastive_ops.functional` (InfoNCE plain, symmetric and with extra
negatives, NT-Xent, CLIP, SupCon, DCL, Ring, hard-negative, debiased, SigLIP, GISTEmbed), each backend
that can run on the device and each dtype it takes, the command computes the per-anchor losses
(``reduction="none"``) and the gradients of their weighted sum (fixed random weights in [0.5, 1.5],
so every anchor's gradient counts) with respect to every feature input and to the tensor temperature,
``logit_scale`` or ``logit_bias`` where the loss takes one. It compares them with the reference: the
``naive`` backend on float64 copies of the very inputs the backend saw (already rounded to its dtype).

Shapes (odd, no tile multiple): ``N = 37`` rows, ``R = 23`` extra negatives, ``D = 24`` features on a
GPU; ``N = 19``, ``R = 7``, ``D = 16`` on a CPU (Triton's interpreter is slow). Inputs come from
``--seed`` (default 0).

Errors are norm-wise relative: ``max|x - ref| / max|ref|`` per tensor (the loss vector, each
gradient). A row passes when the losses and every gradient are finite and within their bounds, and a
second identical call gives bitwise-identical losses and gradients (determinism):

* float64 (naive, chunked): ``1e-10``;
* float32: ``1e-5``, or, where PyTorch's own fp32 error is larger (tf32 matmuls:
  ``torch.get_float32_matmul_precision() != "highest"``), ``2 × own + 1e-6``;
* float16/bfloat16: ``2 × own + floor``, at most twice PyTorch's own error in that dtype, with
  ``floor = 1e-3`` (losses, returned in fp32) or ``max(1e-3, eps/2)`` (gradients, returned in the
  dtype: rounding to it alone costs half an ulp).

"PyTorch's own error" is the naive backend's error in the same dtype against the same float64
reference; the naive rows in fp16/bf16 (and fp32 under tf32) are that yardstick and pass when finite
and deterministic.

Discontinuous selections are compared where every precision decides alike: the Ring band's
boundaries are drawn at least 0.05 logits apart for the values as rounded to fp32, fp16 and bf16 (which
needs rows of few candidates with wide cosines: the Ring case takes at most 64 rows and 32 extra
negatives, its features in a random subspace of at most 16 of the D dimensions), and GISTEmbed's guide
similarities sit far from its thresholds (class directions plus 1 % noise).

Backends: those :func:`contrastive_ops.available_backends` lists for the device. Without a GPU the
triton backend runs in Triton's interpreter (``TRITON_INTERPRET=1``, set here before the kernels
load), fp32 and fp16 only (the interpreter's bf16 ``tl.dot`` is wrong), and a built cuda extension
is checked through its CPU operators (``compute_terms(..., allow_cpu=True)``: the epilogues' arithmetic
in plain loops), shown as ``cuda (CPU ops)``. float64 runs on naive and chunked only.

Prints a markdown table (loss, backend, dtype, errors, bounds, verdict) and a summary line; exits
with 1 if any row fails, else 0. ``--json PATH`` writes the rows.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import math
import os
import sys
import time
from dataclasses import asdict, astuple, dataclass, field
from typing import Callable

import torch

import contrastive_ops as co

from . import __version__
from .backends import BACKENDS, available_backends, backend_status
from .core import ring_ranks

DTYPES = {"float64": torch.float64, "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
DTYPE_ALIASES = {"fp64": "float64", "fp32": "float32", "fp16": "float16", "bf16": "bfloat16", "half": "float16",
                 "double": "float64", "float": "float32"}
FLOAT64_BACKENDS = ("naive", "chunked")  # triton and cuda compute in fp32/fp16/bf16 only

FP64_REL = 1e-10
FP32_REL = 1e-5
FP32_FLOOR = 1e-6  # added to twice PyTorch's own error when that is the fp32 bound (tf32)
HALF_FLOOR = 1e-3
RING_MARGIN = 0.05  # logits at temperature 0.1: > 2x the logit error of bf16 (~0.02), >> fp32's
RING_TEMPERATURE, RING_OUTER, RING_INNER = 0.1, 0.3, 0.1
# More candidates per row, or cosines as narrow as in many dimensions, crowd a row's logits closer than
# RING_MARGIN: the Ring case takes at most this many rows and extra negatives, its features in a random
# subspace of at most RING_SPAN dimensions (every coordinate still nonzero)
RING_MAX_ROWS, RING_MAX_EXTRA, RING_SPAN = 64, 32, 16

BF16_INTERPRETER = "skipped: bf16 dot is wrong in Triton's interpreter"


@dataclass(frozen=True)
class Shapes:
    n: int  # rows (anchors, pairs, views)
    r: int  # extra negatives
    d: int  # features


GPU_SHAPES = Shapes(37, 23, 24)
CPU_SHAPES = Shapes(19, 7, 16)


# ---------------------------------------------------------------------------------------------
# The losses: each draws named float32 inputs (then rounded to the dtype under test) and calls
# the public function with reduction="none".
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Input:
    name: str
    value: torch.Tensor  # float32 draw, or integer labels
    grad: bool = True  # a gradient is compared (features, temperature, scale, bias)
    scalar: bool = False  # a tensor temperature/scale/bias: kept in fp32 below float64


@dataclass(frozen=True)
class Case:
    function: str  # the public function it calls
    make: Callable[[torch.Generator, Shapes], list[Input]]
    call: Callable[..., torch.Tensor]  # (tensors by name, backend) -> per-anchor losses
    separate: Callable[[list[Input]], list[Input]] | None = None  # redraws for a discontinuous selection


def _randn(gen, *shape, scale=1.0):
    return torch.randn(*shape, generator=gen) * scale


def _features(*names_rows, scale=1.0):
    """``make`` of named features, ``[N, D]`` (``"n"``) or ``[R, D]`` (``"r"``)."""

    def make(gen, s: Shapes):
        rows = {"n": s.n, "r": s.r}
        return [Input(name, _randn(gen, rows[r], s.d, scale=scale)) for name, r in names_rows]

    return make


def _with_temperature(make, value):
    def wrapped(gen, s):
        return make(gen, s) + [Input("temperature", torch.tensor(value), scalar=True)]

    return wrapped


def _labels(gen, n, classes):
    labels = torch.randint(0, classes, (n,), generator=gen)
    labels[0] = 10_000  # a singleton: an anchor without positives
    return labels


def _supcon_make(gen, s):
    return [Input("features", _randn(gen, s.n, s.d)), Input("labels", _labels(gen, s.n, 3), grad=False),
            Input("temperature", torch.tensor(0.1), scalar=True)]


def _clip_make(gen, s):
    return [Input("image_features", _randn(gen, s.n, s.d, scale=0.2)),
            Input("text_features", _randn(gen, s.n, s.d, scale=0.2)),
            Input("logit_scale", torch.tensor(14.3), scalar=True)]


def _siglip_make(gen, s):
    # unnormalized features of norm ~1 and a moderate scale: logits spread around 0, so that the
    # scale's gradient is no near-cancelling sum (which fp32 PyTorch itself would miss by 1e-5)
    return [Input("image_features", _randn(gen, s.n, s.d, scale=0.2)),
            Input("text_features", _randn(gen, s.n, s.d, scale=0.2)),
            Input("logit_scale", torch.tensor(5.0), scalar=True),
            Input("logit_bias", torch.tensor(-2.0), scalar=True)]


def _gist_make(gen, s):
    """Guide embeddings are 5 class directions plus 1 % noise (guide cosines ~1 or ~0, far from every
    threshold); a few anchors get a positive of another class."""
    guide_dim, classes = 8, 5

    def guide(labels):
        return torch.eye(guide_dim)[labels] + 0.01 * _randn(gen, len(labels), guide_dim)

    anchor_classes = torch.randint(0, classes, (s.n,), generator=gen)
    other = torch.rand(s.n, generator=gen) < 0.15
    positive_classes = torch.where(other, (anchor_classes + 1) % classes, anchor_classes)
    return [Input("anchor", _randn(gen, s.n, s.d)), Input("positive", _randn(gen, s.n, s.d)),
            Input("negative", _randn(gen, s.r, s.d)),
            Input("anchor_guide", guide(anchor_classes), grad=False),
            Input("positive_guide", guide(positive_classes), grad=False),
            Input("negative_guide", guide(torch.randint(0, classes, (s.r,), generator=gen)), grad=False),
            Input("temperature", torch.tensor(0.1), scalar=True)]


def _ring_make(gen, s: Shapes) -> list[Input]:
    """The Ring case's inputs: ``s`` capped at :data:`RING_MAX_ROWS` rows and :data:`RING_MAX_EXTRA` extra
    negatives, the features drawn in a random subspace of ``min(D, RING_SPAN)`` dimensions of the ``D``."""
    span = min(s.d, RING_SPAN)
    basis = torch.linalg.qr(_randn(gen, s.d, span))[0].T  # [span, D], orthonormal rows
    make = _with_temperature(_features(("query", "n"), ("key", "n"), ("negatives", "r")), RING_TEMPERATURE)
    inputs = make(gen, Shapes(min(s.n, RING_MAX_ROWS), min(s.r, RING_MAX_EXTRA), span))
    return [Input(x.name, x.value @ basis, x.grad, x.scalar) if x.value.dim() == 2 else x for x in inputs]


def _ring_separate(inputs: list[Input]) -> list[Input]:
    """Redraw query rows (in the span of the keys and negatives) until, for the values as drawn and as
    rounded to fp16 and bf16, both band boundaries of every row (ranks lo-1 | lo and hi-1 | hi of its
    descending candidates) are at least :data:`RING_MARGIN` logits apart, decided in float64 (row i of
    the query decides only row i's band)."""
    by_name = {x.name: x for x in inputs}
    query = by_name["query"].value.clone()
    gen = torch.Generator().manual_seed(12345)
    others = torch.cat([by_name["key"].value, by_name["negatives"].value])
    basis = torch.linalg.svd(others, full_matrices=False).Vh[:min(RING_SPAN, *others.shape)]  # their row space
    for _ in range(200):
        bad = torch.zeros(query.shape[0], dtype=torch.bool)
        for dtype in (torch.float32, torch.float16, torch.bfloat16):
            q, k, e = (torch.nn.functional.normalize(t.to(dtype).double(), dim=1)
                       for t in (query, by_name["key"].value, by_name["negatives"].value))
            n = q.shape[0]
            qk = q @ k.T / RING_TEMPERATURE
            off_diagonal = ~torch.eye(n, dtype=torch.bool)
            candidates = torch.cat([q @ e.T / RING_TEMPERATURE, qk[off_diagonal].view(n, n - 1)], dim=1)
            ordered = candidates.sort(dim=1, descending=True).values
            m = ordered.shape[1]
            lo, hi = (int(v) for v in ring_ranks(torch.tensor([m]), RING_OUTER, RING_INNER))
            for b in (lo, hi):
                if 0 < b < m and hi > lo:
                    bad |= (ordered[:, b - 1] - ordered[:, b]) < RING_MARGIN
        if not bad.any():
            return [Input(x.name, query, x.grad, x.scalar) if x.name == "query" else x for x in inputs]
        query[bad] = torch.randn(int(bad.sum()), basis.shape[0], generator=gen) @ basis
    raise RuntimeError("could not draw Ring inputs with separated band boundaries")


CASES: dict[str, Case] = {
    "info_nce": Case(
        "info_nce", _with_temperature(_features(("query", "n"), ("key", "n")), 0.07),
        lambda t, b: co.info_nce(t["query"], t["key"], temperature=t["temperature"], reduction="none", backend=b)),
    "info_nce_symmetric": Case(
        "info_nce", _with_temperature(_features(("query", "n"), ("key", "n")), 0.07),
        lambda t, b: co.info_nce(t["query"], t["key"], temperature=t["temperature"], symmetric=True,
                                 reduction="none", backend=b)),
    "info_nce_negatives": Case(
        "info_nce", _with_temperature(_features(("query", "n"), ("key", "n"), ("negatives", "r")), 0.2),
        lambda t, b: co.info_nce(t["query"], t["key"], t["negatives"], temperature=t["temperature"],
                                 reduction="none", backend=b)),
    "nt_xent": Case(
        "nt_xent", _with_temperature(_features(("z1", "n"), ("z2", "n")), 0.5),
        lambda t, b: co.nt_xent(t["z1"], t["z2"], temperature=t["temperature"], reduction="none", backend=b)),
    "clip_loss": Case(
        "clip_loss", _clip_make,
        lambda t, b: co.clip_loss(t["image_features"], t["text_features"], t["logit_scale"], reduction="none",
                                  backend=b)),
    "supcon_loss": Case(
        "supcon_loss", _supcon_make,
        lambda t, b: co.supcon_loss(t["features"], t["labels"], temperature=t["temperature"], reduction="none",
                                    backend=b)),
    "dcl_loss": Case(
        "dcl_loss", _with_temperature(_features(("z1", "n"), ("z2", "n")), 0.1),
        lambda t, b: co.dcl_loss(t["z1"], t["z2"], temperature=t["temperature"], reduction="none", backend=b)),
    "ring_info_nce": Case(
        "ring_info_nce", _ring_make,
        lambda t, b: co.ring_info_nce(t["query"], t["key"], t["negatives"], temperature=t["temperature"],
                                      outer=RING_OUTER, inner=RING_INNER, reduction="none", backend=b),
        separate=_ring_separate),
    "hard_negative_nce": Case(
        "hard_negative_nce", _with_temperature(_features(("z1", "n"), ("z2", "n")), 0.5),
        lambda t, b: co.hard_negative_nce(t["z1"], t["z2"], temperature=t["temperature"], beta=1.0, tau_plus=0.1,
                                          reduction="none", backend=b)),
    "debiased_nce": Case(
        "debiased_nce", _with_temperature(_features(("z1", "n"), ("z2", "n")), 0.5),
        lambda t, b: co.debiased_nce(t["z1"], t["z2"], temperature=t["temperature"], tau_plus=0.1,
                                     reduction="none", backend=b)),
    "siglip_loss": Case(
        "siglip_loss", _siglip_make,
        lambda t, b: co.siglip_loss(t["image_features"], t["text_features"], t["logit_scale"], t["logit_bias"],
                                    reduction="none", backend=b)),
    "gist_loss": Case(
        "gist_loss", _gist_make,
        lambda t, b: co.gist_loss(t["anchor"], t["positive"], t["negative"], anchor_guide=t["anchor_guide"],
                                  positive_guide=t["positive_guide"], negative_guide=t["negative_guide"],
                                  temperature=t["temperature"], margin_strategy="absolute", margin=0.1,
                                  reduction="none", backend=b)),
}
QUICK = ("info_nce_negatives", "clip_loss", "ring_info_nce")


# ---------------------------------------------------------------------------------------------
# Running one loss on one backend, and its errors
# ---------------------------------------------------------------------------------------------


@dataclass
class Row:
    loss: str
    backend: str  # as shown, e.g. "cuda (CPU ops)"
    dtype: str
    verdict: str  # "pass", "FAIL: ...", "skipped: ..."
    loss_err: float | None = None
    loss_bound: float | None = None  # None: the yardstick row (PyTorch's own error)
    grad_err: float | None = None  # the gradient nearest its bound
    grad_input: str | None = None
    grad_bound: float | None = None
    deterministic: bool | None = None
    details: list[str] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return self.verdict.startswith("FAIL")


def _prepare(inputs: list[Input], dtype: torch.dtype, device: torch.device) -> dict[str, torch.Tensor]:
    """Fresh leaves in ``dtype`` on ``device``: features and guides in the dtype, temperature/scale/bias
    in fp32 (float64 in a float64 run: an fp32 parameter beside fp16 activations, as in mixed
    precision), labels as they are."""
    out = {}
    for x in inputs:
        t = x.value
        if t.dtype.is_floating_point:
            t = t.to(torch.float32 if x.scalar and dtype != torch.float64 else dtype)
        t = t.to(device).detach().clone()
        out[x.name] = t.requires_grad_(x.grad and t.dtype.is_floating_point)
    return out


def _as_float64(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Float64 copies of the same values (already rounded to the dtype under test)."""
    return {name: t.detach().double().requires_grad_(t.requires_grad) if t.dtype.is_floating_point else t
            for name, t in tensors.items()}


def _evaluate(case: Case, tensors: dict[str, torch.Tensor], backend: str, weights):
    """``(per-anchor losses, {input: gradient}, raw results, weights)``: losses and gradients as float64
    on the CPU, the raw results as computed (for the bitwise comparison). ``weights``: the per-anchor
    weights of the gradients' sum, or a generator to draw them from (in [0.5, 1.5])."""
    out = case.call(tensors, backend)
    if isinstance(weights, torch.Generator):
        weights = 0.5 + torch.rand(out.shape, generator=weights, dtype=torch.float64)
    leaves = {name: t for name, t in tensors.items() if t.requires_grad}
    grads = torch.autograd.grad((out.double() * weights.to(out.device)).sum(), list(leaves.values()),
                                allow_unused=True, materialize_grads=True)
    raw = [out.detach()] + [g.detach() for g in grads]
    return out.detach().double().cpu(), {n: g.double().cpu() for n, g in zip(leaves, grads)}, raw, weights


def _rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    """``max|x - ref| / max|ref|`` (inf where x is not finite)."""
    if not torch.isfinite(x).all():
        return math.inf
    scale = max(ref.abs().max().item() if ref.numel() else 0.0, 1e-30)
    return (x - ref).abs().max().item() / scale if ref.numel() else 0.0


def _bound(dtype: torch.dtype, backend: str, own: float, is_grad: bool) -> float | None:
    """The error a backend may make in ``dtype`` (None: naive is the yardstick there)."""
    if dtype == torch.float64:
        return FP64_REL
    if dtype == torch.float32:
        tf32 = torch.get_float32_matmul_precision() != "highest"
        if backend == "naive":
            return None if tf32 else FP32_REL
        return max(FP32_REL, 2 * own + FP32_FLOOR)
    if backend == "naive":
        return None
    floor = max(HALF_FLOOR, torch.finfo(dtype).eps / 2) if is_grad else HALF_FLOOR
    return 2 * own + floor


@contextlib.contextmanager
def _cuda_cpu_ops():
    """Route ``backend="cuda"`` to the extension's CPU operators (``allow_cpu=True``) for the losses of
    :mod:`contrastive_ops.functional`, whose dispatch otherwise refuses CPU tensors for it. Restored on
    exit."""
    from . import functional
    from .backends import cuda

    real = functional.compute_terms

    def compute_terms(query, keys, extra, scale, spec, backend="auto", **bias):
        if backend == "cuda":
            return cuda.compute_terms(query, keys, extra, scale, spec, allow_cpu=True, **bias)
        return real(query, keys, extra, scale, spec, backend, **bias)

    functional.compute_terms = compute_terms
    try:
        yield
    finally:
        functional.compute_terms = real


def _failure(what: str | None, exc: Exception) -> str:
    first_line = str(exc).splitlines()[0] if str(exc) else ""
    return f"FAIL: {what + ': ' if what else ''}{type(exc).__name__}: {first_line}"[:200]


def _check_one(name: str, case: Case, backend: str, label: str, cpu_ops: bool, dtype_name: str, tensors: dict,
               reference, own, weights) -> Row:
    """One row: ``backend`` on fresh copies of ``tensors`` against ``reference`` (float64), bounded by
    ``own`` (naive's errors in this dtype), then a second call for determinism."""
    dtype = DTYPES[dtype_name]
    row = Row(name, label, dtype_name, "pass")
    route = _cuda_cpu_ops() if cpu_ops else contextlib.nullcontext()
    try:
        with route:
            runs = [_evaluate(case, {k: v.detach().clone().requires_grad_(v.requires_grad) for k, v in tensors.items()},
                              backend, weights) for _ in range(2)]
    except Exception as exc:  # noqa: BLE001  (a backend that raises is a failed row, not a crash)
        row.verdict = _failure(None, exc)
        return row
    (loss, grads, raw, _), (_, _, raw_again, _) = runs
    ref_loss, ref_grads = reference
    own_loss, own_grads = own
    row.loss_err = _rel_err(loss, ref_loss)
    row.loss_bound = _bound(dtype, backend, _rel_err(own_loss, ref_loss), is_grad=False)
    if row.loss_bound is not None and not row.loss_err <= row.loss_bound:
        row.details.append("loss")
    elif row.loss_bound is None and not math.isfinite(row.loss_err):
        row.details.append("loss not finite")
    worst = -1.0
    for input_name, g in grads.items():
        err = _rel_err(g, ref_grads[input_name])
        bound = _bound(dtype, backend, _rel_err(own_grads[input_name], ref_grads[input_name]), is_grad=True)
        ratio = err / bound if bound is not None else err
        if ratio > worst:
            worst = ratio
            row.grad_err, row.grad_input, row.grad_bound = err, input_name, bound
        if (bound is not None and not err <= bound) or not math.isfinite(err):
            row.details.append(f"d/d{input_name}")
    row.deterministic = all(a.shape == b.shape and torch.equal(a, b) for a, b in zip(raw, raw_again))
    if not row.deterministic:
        row.details.append("not deterministic")
    if row.details:
        row.verdict = "FAIL: " + ", ".join(row.details)
    return row


# ---------------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------------


def _use_interpreter_without_gpu() -> None:
    """Without a GPU, run the triton backend in Triton's interpreter: ``TRITON_INTERPRET=1`` must be in
    the environment before the kernels are decorated (their modules imported), so not once they are."""
    if torch.cuda.is_available() or importlib.util.find_spec("triton") is None:
        return
    if any(m.startswith("contrastive_ops.kernels.") and m != "contrastive_ops.kernels.config" for m in sys.modules):
        return
    os.environ.setdefault("TRITON_INTERPRET", "1")


def _backends_here(device: torch.device, wanted: list[str]) -> tuple[list[tuple[str, str, bool]], list[Row]]:
    """``([(backend, label, through the CPU operators)], skipped rows)`` for the wanted backends on
    ``device``."""
    runnable = set(available_backends(device))
    chosen, skipped = [], []
    for name in wanted:
        if name in runnable:
            chosen.append((name, name, False))
            continue
        why = backend_status(name, device)[1]
        if name == "cuda" and device.type == "cpu":
            from . import _ext

            if _ext.prebuilt():  # the extension's operators also run on CPU tensors
                chosen.append((name, "cuda (CPU ops)", True))
                continue
        skipped.append(Row("*", name, "*", f"skipped: cannot run here: {why}"))
    return chosen, skipped


def _dtypes_for(backend: str, dtypes: list[str], device: torch.device) -> tuple[list[str], list[Row]]:
    from .backends.triton import in_interpreter  # imports no Triton

    run, skipped = [], []
    for name in dtypes:
        if name == "float64" and backend not in FLOAT64_BACKENDS:
            continue  # by design: fp32/fp16/bf16 only (they raise a TypeError pointing at chunked)
        if name == "bfloat16" and backend == "triton" and device.type == "cpu" and in_interpreter():
            skipped.append(Row("*", backend, name, BF16_INTERPRETER))
            continue
        run.append(name)
    return run, skipped


def run_checks(device: torch.device, backends: list[str], dtypes: list[str], losses: list[str], seed: int = 0,
               shapes: Shapes | None = None) -> list[Row]:
    """Every (loss, backend, dtype) row, in that order, then the skipped ones; see the module docstring
    for what each row checks."""
    shapes = shapes or (GPU_SHAPES if device.type == "cuda" else CPU_SHAPES)
    chosen, skipped = _backends_here(device, backends)
    plan = []  # (backend, label, cpu_ops, dtypes)
    for backend, label, cpu_ops in chosen:
        run, skipped_dtypes = _dtypes_for(backend, dtypes, device)
        skipped.extend(skipped_dtypes)
        plan.append((backend, label, cpu_ops, run))
    rows: dict[tuple[str, str, str], Row] = {}
    for name in losses:
        case = CASES[name]
        gen = torch.Generator().manual_seed(seed * 1000 + sorted(CASES).index(name))
        inputs = case.make(gen, shapes)
        if case.separate is not None:
            inputs = case.separate(inputs)
        for dtype_name in dtypes:
            if not any(dtype_name in run for *_, run in plan):
                continue
            dtype = DTYPES[dtype_name]
            # the reference and PyTorch's own error in this dtype, shared by every backend
            ref_in = _as_float64(_prepare(inputs, dtype, torch.device("cpu")))
            try:
                ref_loss, ref_grads, _, weights = _evaluate(case, ref_in, "naive", gen)
                own_loss, own_grads, *_ = _evaluate(case, _prepare(inputs, dtype, device), "naive", weights)
            except Exception as exc:  # noqa: BLE001  (no reference: a failed row, the other losses still run)
                rows[(name, "naive", dtype_name)] = Row(name, "naive", dtype_name, _failure("reference", exc))
                continue
            for backend, label, cpu_ops, run in plan:
                if dtype_name in run:
                    rows[(name, label, dtype_name)] = _check_one(
                        name, case, backend, label, cpu_ops, dtype_name, _prepare(inputs, dtype, device),
                        (ref_loss, ref_grads), (own_loss, own_grads), weights)
    order = [label for _, label, *_ in plan]

    def position(row: Row):
        backend = order.index(row.backend) if row.backend in order else -1  # a failed reference comes first
        return losses.index(row.loss), backend, list(DTYPES).index(row.dtype)

    return sorted(rows.values(), key=position) + skipped


def _fmt(x: float | None) -> str:
    return "—" if x is None else f"{x:.1e}"


def table(rows: list[Row]) -> str:
    lines = ["| loss | backend | dtype | loss err | worst grad err | bound (loss / grad) | deterministic | verdict |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        grad = "—" if r.grad_err is None else f"{r.grad_err:.1e} (d/d{r.grad_input})"
        if r.loss_err is None:  # skipped, or the call raised
            bound = "—"
        elif r.loss_bound is None and r.grad_bound is None:
            bound = "yardstick"
        else:
            bound = f"{_fmt(r.loss_bound)} / {_fmt(r.grad_bound)}"
        det = "—" if r.deterministic is None else ("yes" if r.deterministic else "NO")
        lines.append(f"| {r.loss} | {r.backend} | {r.dtype} | {_fmt(r.loss_err)} | {grad} | {bound} | {det} "
                     f"| {r.verdict} |")
    return "\n".join(lines)


def _names(values: list[str] | None, allowed, what: str, parser, aliases=None) -> list[str] | None:
    """Comma- or space-separated names, checked against ``allowed`` (order kept, duplicates dropped)."""
    if values is None:
        return None
    out = []
    for value in values:
        for name in filter(None, value.split(",")):
            name = (aliases or {}).get(name, name)
            if name not in allowed:
                parser.error(f"unknown {what} {name!r}; choose from {', '.join(allowed)}")
            if name not in out:
                out.append(name)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m contrastive_ops.check",
                                     description="Check every loss on every backend here against float64.")
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None,
                        help="default: cuda when a GPU is available, else cpu")
    parser.add_argument("--backends", nargs="+", metavar="NAME", help=f"subset of {', '.join(BACKENDS)}")
    parser.add_argument("--dtypes", nargs="+", metavar="DTYPE", help=f"subset of {', '.join(DTYPES)}")
    parser.add_argument("--losses", nargs="+", metavar="LOSS", help=f"subset of {', '.join(CASES)}")
    parser.add_argument("--quick", action="store_true", help=f"only {', '.join(QUICK)} (unless --losses)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the inputs (default 0)")
    parser.add_argument("--json", metavar="PATH", help="also write the rows as JSON")
    parser.add_argument("--n", type=int, help="rows per input (default: 37 on a GPU, 19 on a CPU)")
    parser.add_argument("--extra", type=int, help="extra negatives (default: 23 on a GPU, 7 on a CPU)")
    parser.add_argument("--d", type=int, help="features per row (default: 24 on a GPU, 16 on a CPU)")
    parser.add_argument("--processes", type=int, metavar="N",
                        help="instead: every process-group loss on N processes (both exchanges) against one "
                             "process (contrastive_ops.check_processes); --backends may name one backend")
    args = parser.parse_args(argv)
    for name in ("n", "extra", "d"):  # the losses with extra negatives need at least one
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1, got {getattr(args, name)}")

    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA GPU is available")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.processes is not None:
        return _main_processes(args, device, parser)
    _use_interpreter_without_gpu()  # before anything imports the Triton kernels
    backends = _names(args.backends, BACKENDS, "backend", parser) or list(BACKENDS)
    dtypes = _names(args.dtypes, list(DTYPES), "dtype", parser, DTYPE_ALIASES) or list(DTYPES)
    losses = _names(args.losses, list(CASES), "loss", parser) or list(QUICK if args.quick else CASES)

    default = GPU_SHAPES if device.type == "cuda" else CPU_SHAPES
    shapes = Shapes(*(default_value if value is None else value
                      for value, default_value in zip((args.n, args.extra, args.d), astuple(default))))
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"contrastive_ops {__version__} check on {device.type} ({where}): N={shapes.n}, R={shapes.r}, "
          f"D={shapes.d}, seed {args.seed}", flush=True)
    start = time.perf_counter()
    rows = run_checks(device, backends, dtypes, losses, seed=args.seed, shapes=shapes)
    elapsed = time.perf_counter() - start
    print(table(rows))
    failed = [r for r in rows if r.failed]
    skipped = [r for r in rows if r.verdict.startswith("skipped")]
    passed = len(rows) - len(failed) - len(skipped)
    print(f"\n{passed} passed, {len(failed)} failed, {len(skipped)} skipped in {elapsed:.1f} s"
          + (": " + "; ".join(f"{r.loss}/{r.backend}/{r.dtype}" for r in failed) if failed else ""))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"version": __version__, "device": str(device), "seed": args.seed,
                       "shapes": asdict(shapes), "rows": [asdict(r) for r in rows]}, f, indent=1)
    return 1 if failed else 0


def _main_processes(args, device: torch.device, parser) -> int:
    from . import check_processes

    backends = _names(args.backends, BACKENDS, "backend", parser) or ["auto"]
    if len(backends) != 1:
        parser.error(f"--processes checks one backend at a time, got {backends}")
    if args.processes < 2:
        parser.error(f"--processes must be >= 2, got {args.processes}")
    print(f"contrastive_ops {__version__} check on {args.processes} processes ({device.type}), backend "
          f"{backends[0]}, seed {args.seed}", flush=True)
    start = time.perf_counter()
    try:
        rows = check_processes.run(args.processes, device, backends[0], args.seed)
    except ValueError as exc:
        parser.error(str(exc))
    print(check_processes.table(rows))
    failed = [r for r in rows if r.verdict.startswith("FAIL")]
    print(f"\n{len(rows) - len(failed)} passed, {len(failed)} failed in {time.perf_counter() - start:.1f} s"
          + (": " + "; ".join(r.case for r in failed) if failed else ""))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"version": __version__, "device": str(device), "processes": args.processes,
                       "seed": args.seed, "rows": [asdict(r) for r in rows]}, f, indent=1)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
