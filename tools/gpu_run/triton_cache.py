"""Triton kernels compiled ahead of time for a GPU machine, without a GPU.

On a fresh GPU machine every Triton kernel variant a run launches is compiled before its first
launch (seconds each, serially in the calling process). This module finds those variants on a CPU
and compiles them on the CPU, into a Triton cache folder that is copied to the GPU machine with the tree
(``python -m tools.gpu_run.first_run dry-run`` builds it; :func:`build` from Python):

    python -m tools.gpu_run.triton_cache precompile # on the GPU: compile what the cache lacks, in parallel

**Census.** The run's own loss calls execute on CPU tensors with Triton's driver replaced by one
that reports the GPU's target (``cuda``, sm_90, 132 SMs) and with Triton's ``jit_cache_hook``
recording each compile the JIT asks for and refusing it, so nothing is launched (the kernels'
outputs stay uninitialized: the census counts launches, it computes nothing). What the hook gets is
the JIT's own specialization data: argument types, constexprs, divisibility and alignment, options.

**Compile.** ``JITFunction.preload`` of each record compiles it for sm_90a exactly as the JIT would
and stores it under ``TRITON_CACHE_DIR``, keyed by Triton's version, the kernel source, the
specialization, the options and the cache-invalidating environment variables. A GPU machine with
the same Triton (3.6.0, the device machines' version) and the same environment finds every kernel
there; where a key differs (another Triton build, a ``TRITON_*`` variable), ``precompile`` compiles
the records on that machine's cores in parallel before the timings start.

The census depends on the shapes only through their divisibility by 16 (what the JIT specializes
on), so large benchmark points are counted at smaller stand-in sizes of the same class.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CACHE_DIR = REPO / ".triton-cache"  # git-ignored; copied to the GPU machine packed (see pack)
PLAN_FILE = "plan.json"  # in CACHE_DIR: the census and the measured compile seconds
TARGET_ARCH = 90  # H100 / H200 (Triton compiles sm_90a for it)
TARGET_SMS = 132  # their multiprocessor count: the symmetric forward launches min(row blocks, SMs) programs


def kernel_source_hash() -> str:
    """A digest of the Triton kernel sources: a cache made from other sources is stale."""
    digest = hashlib.sha256()
    for path in sorted((REPO / "kernels").glob("*.py")):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _fake_gpu_driver():
    """A Triton driver that answers the JIT's questions as an sm_90 device 0 with 132 SMs would, and
    whose launches do nothing (its "loaded" kernels have no module: each launch loads nothing again)."""
    import types

    import torch
    from triton.backends.compiler import GPUTarget
    from triton.backends.driver import DriverBase

    properties = {"max_shared_mem": 232448, "multiprocessor_count": TARGET_SMS, "max_num_regs": 65536,
                  "warpSize": 32}

    class CensusDriver(DriverBase):
        utils = types.SimpleNamespace(get_device_properties=lambda device: properties,
                                      load_binary=lambda name, kernel, shared, device: (None, None, 0, 0, 1024))

        @staticmethod
        def launcher_cls(src, metadata):
            return lambda *args, **kwargs: None

        @classmethod
        def is_active(cls):
            return True

        def map_python_to_cpp_type(self, ty):
            return ty

        def get_current_target(self):
            return GPUTarget("cuda", TARGET_ARCH, 32)

        def get_active_torch_device(self):
            return torch.device("cpu")

        def get_benchmarker(self):
            raise RuntimeError("the census driver times nothing")

        def get_current_device(self):
            return 0

        def get_current_stream(self, device=None):
            return 0

        def set_current_device(self, device):
            pass

    return CensusDriver()


@contextlib.contextmanager
def as_on_the_gpu(jit_cache_hook):
    """Inside the block the core's Triton calls on CPU tensors take the path they take on the target
    GPU, up to each kernel's compile: Triton's driver is the stand-in (sm_90, 132 SMs), the backend
    accepts CPU tensors without the interpreter's tile config, symmetric forwards launch the GPU's
    program count, the tuner holds to one candidate (as the first run does), and ``jit_cache_hook``
    sees every compile the JIT asks for (returning True refuses it)."""
    os.environ["TRITON_INTERPRET"] = "0"
    os.environ.setdefault("CONTRASTIVE_OPS_TRITON_CANDIDATES", "1")
    import triton
    from contrastive_ops.kernels import config
    from triton import knobs

    from contrastive_ops.backends import triton as triton_backend

    saved = (knobs.runtime.jit_cache_hook, config.interpreting, config.pinned_config,
             triton_backend._column_programs, triton.runtime.driver._active)
    triton.runtime.driver.set_active(_fake_gpu_driver())
    knobs.runtime.jit_cache_hook = jit_cache_hook
    config.interpreting = lambda: True
    config.pinned_config = lambda: None
    triton_backend._column_programs = lambda device: TARGET_SMS
    try:
        yield
    finally:
        (knobs.runtime.jit_cache_hook, config.interpreting, config.pinned_config,
         triton_backend._column_programs, triton.runtime.driver._active) = saved


def _run_points(points, on_error, label=None) -> None:
    """Each ``(step, call)``; a failure (the kernels' outputs are uninitialized, later torch code may
    object) goes to ``on_error`` and the next point runs."""
    for step, call in points:
        if label is not None:
            label(step)
        try:
            call()
        except Exception as exc:  # noqa: BLE001
            on_error(f"{step}: {type(exc).__name__}: {exc}"[:300])


class Census:
    """Records the kernel compiles that ``points`` would trigger on the target GPU, compiling nothing.

    ``records``: one dict per distinct compile (``kernel``, ``spec`` = Triton's specialization data,
    ``steps`` = the labels it was recorded under); ``errors``: the points that failed."""

    def __init__(self, points):
        self.records: dict[str, dict] = {}
        self.errors: list[str] = []
        self.label = ""
        with as_on_the_gpu(self._hook):
            _run_points(points, self.errors.append, label=self._set_label)

    def _set_label(self, step):
        self.label = step

    def _hook(self, *, key, repr, fn, compile, is_manual_warmup, already_compiled):
        spec = compile["specialization_data"]
        record = self.records.setdefault(spec, {"kernel": json.loads(spec)["name"], "spec": spec, "steps": []})
        if self.label not in record["steps"]:
            record["steps"].append(self.label)
        return True  # compile nothing now, launch nothing


def _jit_function(full_name: str):
    import importlib

    module, _, name = full_name.rpartition(".")
    return getattr(importlib.import_module(module), name)


def _as_tuples(value):
    """JSON's lists back to the tuples they were (a kernel's constexpr tuples, e.g. its ``ROLE``)."""
    if isinstance(value, list):
        return tuple(_as_tuples(v) for v in value)
    if isinstance(value, dict):
        return {k: _as_tuples(v) for k, v in value.items()}
    return value


def preload(full_name: str, spec: str):
    """``JITFunction.preload`` of one census record, its constexpr tuples restored as tuples: Triton 3.6's
    preload keeps them as the JSON lists they were serialized to, which gives the kernel another cache
    key than the one its JIT computes for the same launch (Triton 3.9 restores them itself)."""
    loads = json.loads

    def with_tuples(text, *args, **kwargs):
        obj = loads(text, *args, **kwargs)
        if isinstance(obj, dict) and "constant_vals" in obj:
            obj["constant_vals"] = [_as_tuples(v) for v in obj["constant_vals"]]
        return obj

    json.loads = with_tuples  # preload parses the record with json.loads
    try:
        return _jit_function(full_name).preload(spec)
    finally:
        json.loads = loads


def compile_records(records: list[dict], cache_dir: Path) -> None:
    """Compile each census record into ``cache_dir`` (binaries only), adding ``compile_s`` to it."""
    import triton

    os.environ["TRITON_CACHE_DIR"] = str(cache_dir)
    os.environ["TRITON_STORE_BINARY_ONLY"] = "1"
    saved = triton.runtime.driver._active  # a GPU-less machine has no default driver to reset to
    triton.runtime.driver.set_active(_fake_gpu_driver())
    try:
        for record in records:
            start = time.perf_counter()
            preload(record["kernel"], record["spec"])
            record["compile_s"] = round(time.perf_counter() - start, 3)
    finally:
        triton.runtime.driver._active = saved


def _check_environment() -> None:
    # TRITON_DEFAULT_FP_FUSION and the like are part of every cache key: the GPU run sets none
    keyed = sorted(k for k in os.environ if k.startswith(("TRITON_", "MLIR_", "LLVM_"))
                   and k not in ("TRITON_INTERPRET", "TRITON_CACHE_DIR", "TRITON_STORE_BINARY_ONLY"))
    if keyed:
        raise SystemExit(f"unset {', '.join(keyed)} first: they change Triton's cache keys")


def build(points, cache_dir: Path | None = None, workers: int | None = None, tag: dict | None = None) -> dict:
    """Census of ``points`` (``(step, callable)`` pairs: each callable makes one loss call with its
    backward on CPU tensors), then every distinct compile into ``cache_dir``, emptied first. Writes and returns the
    plan: ``{"triton", "sources", "target", "records": [...]}``."""
    import triton

    _check_environment()
    if not triton.__version__.startswith("3.6"):
        raise SystemExit(f"the census needs Triton 3.6 (the GPU machines' version), this is {triton.__version__}: "
                         "run it as bash tools/gpu_run/session.sh first --dry-run")
    cache_dir = CACHE_DIR if cache_dir is None else cache_dir
    census = Census(points)
    errors = census.errors
    records = list(census.records.values())
    # an empty folder: every record compiles, so its compile time is measured (not a cache hit)
    shutil.rmtree(cache_dir, ignore_errors=True)
    cache_dir.mkdir(parents=True)
    workers = workers or min(len(records), os.cpu_count() or 1) or 1
    shares = [records[i::workers] for i in range(workers)]
    if workers > 1:
        import concurrent.futures
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")  # a clean Triton state per worker
        with concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx) as pool:
            done = list(pool.map(_compile_share, shares, [str(cache_dir)] * workers))
        records = [r for share in done for r in share]
    else:
        compile_records(records, cache_dir)
    plan = {"triton": triton.__version__, "sources": kernel_source_hash(), "target": f"cuda sm_{TARGET_ARCH}",
            "compile_workers": workers, "census_errors": errors, **(tag or {}),
            "records": sorted(records, key=lambda r: (r["kernel"], r["spec"]))}
    (cache_dir / PLAN_FILE).write_text(json.dumps(plan, indent=1))
    return plan


def _compile_share(records, cache_dir):
    compile_records(records, Path(cache_dir))
    return records


def _forget_compiled() -> None:
    """Empty the in-process kernel caches of the core's Triton kernels (what this process compiled or
    preloaded), so that the next launches go to the on-disk cache."""
    import importlib
    import pkgutil

    import contrastive_ops.kernels as package
    from triton.runtime.jit import JITFunction

    for info in pkgutil.iter_modules(package.__path__):
        for value in vars(importlib.import_module(f"{package.__name__}.{info.name}")).values():
            if isinstance(value, JITFunction):
                value.device_caches.clear()


def verify(points, cache_dir: Path | None = None) -> tuple[int, int]:
    """Run ``points`` through Triton's own JIT path (no hook; the stand-in driver launches nothing)
    with ``cache_dir`` as its cache: ``(kernels the JIT found there, kernels it compiled)``. Every
    kernel found means the JIT's key equals the one the ahead-of-time compile stored."""
    cache_dir = CACHE_DIR if cache_dir is None else cache_dir
    os.environ["TRITON_CACHE_DIR"] = str(cache_dir)
    _forget_compiled()
    before = {p.name for p in cache_dir.iterdir() if p.is_dir()}
    seen = set()

    def count(*, key, **kwargs):  # returns None: the JIT goes on to compile, or to find it on disk
        seen.add(str(key))

    with as_on_the_gpu(count):
        _run_points(points, lambda message: print(f"key check: {message}"))
    compiled = len({p.name for p in cache_dir.iterdir() if p.is_dir()} - before)
    return len(seen) - compiled, compiled


def pack(cache_dir: Path | None = None) -> Path:
    """The cache folder as one gzipped tar beside it (``.triton-cache.tgz``: cubins shrink about 4×),
    which is what travels; ``tools/gpu_run/session.sh first`` unpacks it there."""
    import tarfile

    cache_dir = CACHE_DIR if cache_dir is None else cache_dir
    packed = cache_dir.with_name(cache_dir.name + ".tgz")
    with tarfile.open(packed, "w:gz") as tar:
        tar.add(cache_dir, arcname=cache_dir.name)
    return packed


def load_plan(cache_dir: Path | None = None) -> dict | None:
    path = (CACHE_DIR if cache_dir is None else cache_dir) / PLAN_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def precompile(cache_dir: Path, deadline_s: float, workers: int) -> str:
    """On the GPU machine: ``preload`` every record of the plan (a cache hit takes milliseconds, a
    miss compiles), ``workers`` processes at once, until ``deadline_s`` seconds have passed. Returns
    a one-line account (hits, compiles, left)."""
    import concurrent.futures
    import multiprocessing

    plan = load_plan(cache_dir)
    if plan is None:
        return f"no {PLAN_FILE} in {cache_dir}: every kernel compiles at its first launch"
    os.environ["TRITON_CACHE_DIR"] = str(cache_dir)
    before = {p.name for p in cache_dir.iterdir() if p.is_dir()}
    records = plan["records"]
    start = time.monotonic()
    ctx = multiprocessing.get_context("spawn")
    done = failed = 0
    pool = concurrent.futures.ProcessPoolExecutor(max(1, workers), mp_context=ctx)
    futures = [pool.submit(_preload_one, r["kernel"], r["spec"]) for r in records]
    try:
        for future in concurrent.futures.as_completed(futures, timeout=max(1.0, deadline_s)):
            done += 1
            if future.exception() is not None:  # e.g. too much shared memory: the JIT will say so at launch
                failed += 1
                print(f"precompile: {type(future.exception()).__name__}: {future.exception()}"[:300])
    except concurrent.futures.TimeoutError:
        pass  # what is left compiles at its first launch
    pool.shutdown(wait=False, cancel_futures=True)
    compiled = len({p.name for p in cache_dir.iterdir() if p.is_dir()} - before)
    return (f"{len(records)} kernels in the plan (made with Triton {plan['triton']}, sources {plan['sources']}; "
            f"these sources {kernel_source_hash()}): {done - failed - compiled} found in the cache, {compiled} "
            f"compiled here, {failed} failed, {len(records) - done} left to the JIT, in {time.monotonic() - start:.0f} s")


def _preload_one(kernel, spec):
    preload(kernel, spec)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("precompile", help="on the GPU machine: compile what the cache lacks")
    p.add_argument("--cache-dir", default=str(CACHE_DIR))
    p.add_argument("--deadline-s", type=float, default=120.0)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args(argv)
    print("Triton cache:", precompile(Path(args.cache_dir), args.deadline_s, args.workers))
    return 0


def summary(plan: dict) -> str:
    seconds = sum(r["compile_s"] for r in plan["records"])
    lines = [(f"{len(plan['records'])} kernel compiles for {plan['target']} with Triton {plan['triton']} "
             f"({seconds:.0f} s of compiling measured here, on {plan['compile_workers']} processes)")]
    lines += [f"census error (counts may be short): {e}" for e in dict.fromkeys(plan["census_errors"])]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
