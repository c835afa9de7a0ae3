"""What the benchmarks run: every loss × implementation, its inputs and its useful work.

An implementation is one of this package's backends (``naive``, ``chunked``, ``triton``, ``cuda``)
or a peer (``compiled_naive`` = ``torch.compile`` of the naive backend, ``open_clip`` (``ClipLoss``,
``SigLipLoss``), ``inf_cl``, ``memeff``, ``siglip_kernel``), each an optional import that reports why
it is missing.

Useful work counts ``2·R·C·D`` flops per matmul pass over the ``R × C`` logits that the loss
needs: one pass forward, three backward (the recomputed logits, dQ, dK), so ``8·R·C·D`` for
forward+backward. The Ring's selection passes are not counted: they show up as a lower share.
"""
from __future__ import annotations

import functools
import importlib
import importlib.util
import math
import os
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

import contrastive_ops as co

OUR_BACKENDS = ("naive", "chunked", "triton", "cuda")
PEERS = ("compiled_naive", "open_clip", "sentence_transformers", "sentence_transformers_cached", "inf_cl", "memeff",
         "siglip_kernel")
# peers whose forward already computes every gradient (their backward only scales them): their
# fwd and bwd times are not what the names say, so only fwd_bwd is measured
GRADIENTS_IN_FORWARD = {"siglip_kernel": "siglip-kernel computes its gradients inside its forward: only fwd_bwd compares",
                        "sentence_transformers_cached": "GradCache's loss stage runs its backward mini-batch by "
                                                        "mini-batch inside the call: only fwd_bwd compares"}
MODES = ("fwd", "bwd", "fwd_bwd")
TIME_INTERPRETER = "CONTRASTIVE_OPS_BENCH_INTERPRETER"  # "1": time the triton backend in Triton's interpreter too
TEMPERATURE = 0.07
MNRL_SCALE = 20.0  # sentence-transformers' default scale (1/temperature) of MultipleNegativesRankingLoss
MNRL_MINI_BATCH = 32  # CachedMultipleNegativesRankingLoss's default mini_batch_size
SIGLIP_BIAS = -10.0  # SigLIP's initial bias; its scale here is the inputs' "scale" (1/TEMPERATURE)


@dataclass(frozen=True)
class Workload:
    loss: str
    logits_shape: Callable[[int], tuple]  # n -> (rows, cols) of the logit matrix
    call: Callable[[dict, str], torch.Tensor]  # (inputs, backend) -> loss
    peers: tuple = ()  # peers that compute this loss

    def flops(self, n: int, d: int, mode: str) -> float:
        rows, cols = self.logits_shape(n)
        passes = {"fwd": 1, "bwd": 3, "fwd_bwd": 4}[mode]
        return 2.0 * rows * cols * d * passes


def make_inputs(n: int, d: int, dtype: torch.dtype, device: torch.device, seed: int) -> dict:
    """Unit-norm features (as a model's normalized outputs), labels with ~8 samples per class.
    Drawn on ``device`` itself (a CPU draw of 1M × 1024 takes seconds), so the same seed gives other
    numbers on another device type."""
    g = torch.Generator(device=device).manual_seed(seed)

    def feats():
        x = torch.nn.functional.normalize(torch.randn(n, d, generator=g, device=device), dim=1)
        return x.to(dtype=dtype).requires_grad_(True)

    return {"a": feats(), "b": feats(), "hard": feats(),
            "labels": torch.randint(0, max(n // 8, 1), (n,), generator=g, device=device),
            "scale": torch.tensor(1.0 / TEMPERATURE, device=device, dtype=torch.float32, requires_grad=True),
            "bias": torch.tensor(SIGLIP_BIAS, device=device, dtype=torch.float32, requires_grad=True)}


# in the order a time-limited run measures them: those compared with peers first
WORKLOADS = {
    "clip": Workload("clip", lambda n: (n, n),
                     lambda x, be: co.clip_loss(x["a"], x["b"], x["scale"], backend=be),
                     peers=("compiled_naive", "open_clip", "inf_cl", "memeff")),
    "info_nce": Workload("info_nce", lambda n: (n, n),
                         lambda x, be: co.info_nce(x["a"], x["b"], temperature=TEMPERATURE, backend=be),
                         peers=("compiled_naive", "inf_cl")),
    "siglip": Workload("siglip", lambda n: (n, n),
                       lambda x, be: co.siglip_loss(x["a"], x["b"], x["scale"], x["bias"], backend=be),
                       peers=("compiled_naive", "open_clip", "siglip_kernel")),
    "ring": Workload("ring", lambda n: (n, n),
                     lambda x, be: co.ring_info_nce(x["a"], x["b"], temperature=TEMPERATURE, backend=be),
                     peers=("compiled_naive",)),
    "info_nce_symmetric": Workload("info_nce_symmetric", lambda n: (n, n),
                                   lambda x, be: co.info_nce(x["a"], x["b"], temperature=TEMPERATURE, symmetric=True,
                                                             backend=be),
                                   peers=("compiled_naive",)),
    "nt_xent": Workload("nt_xent", lambda n: (2 * n, 2 * n),
                        lambda x, be: co.nt_xent(x["a"], x["b"], temperature=TEMPERATURE, backend=be),
                        peers=("compiled_naive",)),
    "supcon": Workload("supcon", lambda n: (n, n),
                       lambda x, be: co.supcon_loss(x["a"], x["labels"], temperature=TEMPERATURE, backend=be),
                       peers=("compiled_naive",)),
    "dcl": Workload("dcl", lambda n: (2 * n, 2 * n),
                    lambda x, be: co.dcl_loss(x["a"], x["b"], temperature=TEMPERATURE, backend=be),
                    peers=("compiled_naive",)),
    "info_nce_labels": Workload("info_nce_labels", lambda n: (n, n),
                                lambda x, be: co.info_nce(x["a"], x["b"], temperature=TEMPERATURE, symmetric=True,
                                                          labels=x["labels"], backend=be),
                                peers=("compiled_naive",)),
    "hard_negative": Workload("hard_negative", lambda n: (2 * n, 2 * n),
                              lambda x, be: co.hard_negative_nce(x["a"], x["b"], temperature=0.5, beta=1.0,
                                                                 tau_plus=0.1, backend=be),
                              peers=("compiled_naive",)),
    # sentence-transformers' MultipleNegativesRankingLoss with one hard-negative column: our rows are
    # info_nce with the hard negatives as extra columns (the compat class computes exactly this)
    "mnrl": Workload("mnrl", lambda n: (n, 2 * n),
                     lambda x, be: co.info_nce(x["a"], x["b"], x["hard"], temperature=1.0 / MNRL_SCALE, backend=be),
                     peers=("compiled_naive", "sentence_transformers", "sentence_transformers_cached")),
    "debiased": Workload("debiased", lambda n: (2 * n, 2 * n),
                         lambda x, be: co.debiased_nce(x["a"], x["b"], temperature=0.5, tau_plus=0.1, backend=be),
                         peers=("compiled_naive",)),
}


# ---------------------------------------------------------------------------------------------
# Peers
# ---------------------------------------------------------------------------------------------

_compiled = {}


def _compiled_naive(workload: Workload):
    """``torch.compile`` of the naive backend for this loss. Each loss compiles its own ``call``
    (dynamo caches per code object), with room for every dtype, size and grad mode of a sweep; if
    that room still runs out, the call fails (an error row) rather than timing eager code."""
    if workload.loss not in _compiled:
        import torch._dynamo.config
        import torch._functorch.config

        for name, value in (("recompile_limit", 256), ("cache_size_limit", 256), ("accumulated_recompile_limit", 4096),
                            ("accumulated_cache_size_limit", 4096), ("fail_on_recompile_limit_hit", True)):
            if hasattr(torch._dynamo.config, name):
                setattr(torch._dynamo.config, name, value)
        # the suite replays one backward several times ("bwd" mode): keep the saved buffers
        torch._functorch.config.donated_buffer = False
        # dynamic=False: kernels specialised to each size, as a user compiling for one batch size gets
        _compiled[workload.loss] = torch.compile(functools.partial(workload.call, be="naive"), dynamic=False)
    return _compiled[workload.loss]


def _open_clip_loss_module():
    try:
        return importlib.import_module("open_clip.loss")
    except Exception:  # noqa: BLE001  (open_clip's package import needs torchvision; load loss.py alone)
        spec = importlib.util.find_spec("open_clip")
        if spec is None or not spec.submodule_search_locations:
            return None
        import os

        path = os.path.join(next(iter(spec.submodule_search_locations)), "loss.py")
        file_spec = importlib.util.spec_from_file_location("_bench_open_clip_loss", path)
        module = importlib.util.module_from_spec(file_spec)
        file_spec.loader.exec_module(module)
        return module


def peer_status(peer: str, device: torch.device) -> tuple[bool, str]:
    """``(can_run, reason)`` of a peer on ``device``."""
    if peer == "compiled_naive":
        return True, "ok"
    if peer == "open_clip":
        ok = importlib.util.find_spec("open_clip") is not None
        return ok, "ok" if ok else "open_clip_torch is not installed"
    if peer.startswith("sentence_transformers"):
        ok = importlib.util.find_spec("sentence_transformers") is not None
        return ok, "ok" if ok else "sentence-transformers is not installed"
    module = {"inf_cl": "inf_cl", "memeff": "memeff", "siglip_kernel": "siglip_kernel"}[peer]
    if importlib.util.find_spec(module) is None:
        return False, f"{module} is not installed"
    if device.type != "cuda":
        return False, f"{module} runs on CUDA only"
    return True, "ok"


def inf_cl_head_dim(d: int) -> int:
    """inf-cl views each feature row as heads of ``head_dim`` ∈ {16, 32, …, 256} lanes whose dot
    products it sums: the largest such divisor of ``d`` gives the same logits with the fewest heads."""
    head_dim = math.gcd(d, 256)
    if head_dim < 16:
        raise ValueError(f"inf-cl needs a feature dimension divisible by 16, got d={d}")
    return head_dim


def inf_cl_loss(query: torch.Tensor, key: torch.Tensor, scale) -> torch.Tensor:
    """inf-cl's single-process loss, mean over rows. Its ``cal_inf_loss`` all-reduces the scale's
    gradient even without a process group (and fails there), so the single-GPU kernels are called
    through ``cal_flash_loss``, which is what ``cal_inf_loss`` runs without distributed anyway."""
    from inf_cl import cal_flash_loss

    return cal_flash_loss(query, key, scale=scale, head_dim=inf_cl_head_dim(query.shape[1])).mean()


def siglip_kernel_loss(x: dict, backend: str = "auto") -> torch.Tensor:
    """siglip-kernel's loss on the suite's inputs: it takes log(scale) (its "log temperature",
    multiplied in as exp) and the bias, and divides the summed pair losses by N like open_clip."""
    from siglip_kernel import fused_siglip_loss

    return fused_siglip_loss(x["a"], x["b"], x["scale"].log(), x["bias"], backend=backend)


def peer_call(peer: str, workload: Workload) -> Callable[[dict], torch.Tensor] | None:
    """A function of the inputs computing ``workload``'s loss with ``peer`` (None if it does not).

    Where a peer cannot take the suite's learnable scale (memeff's temperature is a float), it gets
    the same value as a constant, and so does less work (no scale gradient)."""
    if peer not in workload.peers:
        return None
    if peer == "compiled_naive":
        return _compiled_naive(workload)
    if peer == "open_clip":
        if workload.loss == "siglip":
            siglip = _open_clip_loss_module().SigLipLoss()
            return lambda x: siglip(x["a"], x["b"], x["scale"], x["bias"])
        loss = _open_clip_loss_module().ClipLoss()
        return lambda x: loss(x["a"], x["b"], x["scale"])
    if peer == "sentence_transformers":
        from sentence_transformers.sentence_transformer import losses

        mnrl = losses.MultipleNegativesRankingLoss(None, scale=MNRL_SCALE)
        return lambda x: mnrl.compute_loss_from_embeddings([x["a"], x["b"], x["hard"]], None)
    if peer == "sentence_transformers_cached":
        from sentence_transformers.sentence_transformer import losses

        # the loss stage of GradCache on given embeddings, as its training step runs it: rows in mini-batches,
        # each against every document, backward per mini-batch inside the call (the embeddings' .grad is
        # what GradCache then sends through the model); a leaf is returned, whose backward has nothing
        # left to do. (The constructor inspects the model's first module: a stand-in, no model runs.)
        cached = losses.CachedMultipleNegativesRankingLoss(torch.nn.Sequential(torch.nn.Identity()), scale=MNRL_SCALE,
                                                           mini_batch_size=MNRL_MINI_BATCH)
        return lambda x: cached.calculate_loss([[x["a"]], [x["b"]], [x["hard"]]], with_backward=True).requires_grad_()
    if peer == "inf_cl":
        if workload.loss == "clip":
            return lambda x: 0.5 * (inf_cl_loss(x["a"], x["b"], x["scale"]) + inf_cl_loss(x["b"], x["a"], x["scale"]))
        # info_nce normalizes its inputs (normalize=True); inf-cl users normalize before the call
        return lambda x: inf_cl_loss(F.normalize(x["a"], dim=1), F.normalize(x["b"], dim=1), 1.0 / TEMPERATURE)
    if peer == "memeff":
        from memeff import MemoryEfficientCLIPLoss

        # stable=False: the plain 1/temperature gradient scale, i.e. the gradient of the CLIP loss
        loss = MemoryEfficientCLIPLoss(temperature=TEMPERATURE, normalized_inputs=True, stable=False)
        return lambda x: loss(x["a"], x["b"])
    if peer == "siglip_kernel":
        return siglip_kernel_loss
    raise ValueError(f"unknown peer {peer!r}")


def probe(fn: Callable[[dict], torch.Tensor], device: torch.device) -> tuple[bool, str]:
    """Call ``fn`` once on tiny inputs: a backend that refuses this loss (the cuda extension has no
    label masking, for one) is reported once instead of failing at every point."""
    try:
        fn(make_inputs(8, 16, torch.float32, device, 0))
        return True, "ok"
    except Exception as exc:  # noqa: BLE001  (a refusal, or a backend broken on this device: a reason either way)
        prefix = "" if isinstance(exc, co.BackendUnavailableError) else f"fails on tiny inputs: {type(exc).__name__}: "
        return False, (prefix + (str(exc).strip().splitlines() or [""])[0])[:300]


def implementations(workload: Workload, device: torch.device, only: str | None = None):
    """``(name, callable or None, reason)`` for every backend and peer of ``workload`` on ``device``
    (only the implementation ``only``, if given: peers are costly to set up)."""
    out = []
    for backend in OUR_BACKENDS:
        if only is not None and backend != only:
            continue
        ok, why = co.backend_status(backend, device)
        # the interpreter's times say nothing of a GPU; timed only where asked (end-to-end checks of the tools)
        if ok and backend == "triton" and device.type != "cuda" and os.environ.get(TIME_INTERPRETER) != "1":
            ok, why = False, "Triton runs on CPU tensors only in its interpreter: not timed"
        fn = (lambda x, be=backend: workload.call(x, be)) if ok else None
        if ok and backend == "cuda":
            ok, why = probe(fn, device)
        out.append((backend, fn if ok else None, why))
    for peer in PEERS:
        if peer not in workload.peers or (only is not None and peer != only):
            continue
        ok, why = peer_status(peer, device)
        fn = None
        if ok:
            try:
                fn = peer_call(peer, workload)
            except Exception as exc:  # noqa: BLE001  (a peer that fails to import is a reason, not a crash)
                why = f"{peer} failed to load: {type(exc).__name__}: {exc}"[:300]
        out.append((peer, fn, why))
    return out
