"""Tile configurations: short candidate lists tuned on first use per problem, or one pinned config.

The forward and the Ring selection of one loss call share a config, so they compute bit-identical
tile logits. The backward is another problem (its own candidates, :func:`backward_candidates`, and
its own cache key), except where the loss has a Ring band: the band's membership is decided on the
logits, so there the backward recomputes them with the forward's config. Choices are cached per
(shape bucket, dtype, options).

Pinning: ``with pin_config(TileConfig(...))`` or ``CONTRASTIVE_OPS_TRITON_CONFIG="BM,BN,BD[,warps,stages,radix_bits]"``.
Bounding the tuner: each list is ordered by the static model's ranking (``python -m benchmarks.static``:
the best-modeled configs of the headline workloads first), and the tuner tries the first
:data:`DEFAULT_CANDIDATES` of it; ``CONTRASTIVE_OPS_TRITON_CANDIDATES=k`` tries the first ``k`` (``1``: the
first, untimed; ``all``: every one; each candidate tried is one more compile of every kernel).
A tuned choice is kept on disk (:func:`tuning_cache_path`), keyed by the GPU, the torch and Triton
versions, the kernels' sources and the problem, so later processes do not tune (nor compile the
losing candidates) again.
Under ``TRITON_INTERPRET=1`` the default is :data:`INTERPRETER_CONFIG` (small tiles, so that CPU
tests cross several tile boundaries quickly).
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

# No Triton import at module level: the backend reads the pinned config while torch.compile traces
# it, and this module must import (and trace) without Triton.


@dataclass(frozen=True)
class TileConfig:
    block_m: int  # rows of Q per tile
    block_n: int  # columns (keys, then extra negatives) per tile
    block_d: int  # feature chunk of the dot products (capped at D rounded up to a power of two)
    num_warps: int = 4
    num_stages: int = 2
    radix_bits: int = 4  # Ring selection: bits decided per pass (32 / radix_bits passes over the tiles)

    def __post_init__(self):
        for name in ("block_m", "block_n", "block_d"):
            value = getattr(self, name)
            if value < 16 or value & (value - 1):
                raise ValueError(f"{name} must be a power of two >= 16 (tl.dot's minimum), got {value}")
        if self.radix_bits not in (1, 2, 4, 8):
            raise ValueError(f"radix_bits must be 1, 2, 4 or 8, got {self.radix_bits}")

    def block_d_for(self, d: int) -> int:
        return min(self.block_d, max(16, 1 << (d - 1).bit_length()))

    def kernel_kwargs(self, d: int) -> dict:
        return {"BLOCK_M": self.block_m, "BLOCK_N": self.block_n, "BLOCK_D": self.block_d_for(d),
                "num_warps": self.num_warps, "num_stages": self.num_stages}

    def as_list(self) -> list[int]:
        return [self.block_m, self.block_n, self.block_d, self.num_warps, self.num_stages, self.radix_bits]

    @classmethod
    def from_list(cls, values) -> TileConfig:
        return cls(*[int(v) for v in values])


#: Candidates for Hopper/Ampere-class GPUs (bf16/fp16 tensor cores; fp32 through tf32), the static
#: model's best first: 128 × 128 × 64 for clip, siglip and ring at D = 768 and 128, 64 × 64 × 128 for
#: info_nce at D = 128 (benchmarks/results/2026-12-03-static-headline-88c8d72.md, -calibrated-76935d1.md).
GPU_CONFIGS = (
    TileConfig(128, 128, 64, num_warps=8, num_stages=3),
    TileConfig(64, 64, 128, num_warps=4, num_stages=2),
    TileConfig(128, 64, 64, num_warps=4, num_stages=3),
    TileConfig(64, 128, 64, num_warps=4, num_stages=3),
    TileConfig(128, 128, 128, num_warps=8, num_stages=2),
    TileConfig(64, 64, 256, num_warps=8, num_stages=2),
)
#: Backward candidates when D fits one ``BLOCK_D`` (D <= 256: BLOCK_D = D rounded up to a power of
#: two, accumulators in registers); ``block_d`` here is replaced by that size.
BACKWARD_REGISTER_CONFIGS = (
    TileConfig(64, 64, 16, num_warps=4, num_stages=2),
    TileConfig(64, 128, 16, num_warps=8, num_stages=2),
    TileConfig(128, 64, 16, num_warps=8, num_stages=2),
    TileConfig(128, 128, 16, num_warps=8, num_stages=2),
)
#: Backward candidates for larger D: the dS-chunk kernel's tile (its products go to the GEMM library),
#: the static model's best first (clip, then siglip, at D = 768).
BACKWARD_CHUNK_CONFIGS = (
    TileConfig(128, 64, 64, num_warps=4, num_stages=3),
    TileConfig(64, 128, 64, num_warps=4, num_stages=3),
    TileConfig(128, 128, 64, num_warps=8, num_stages=3),
    TileConfig(128, 128, 128, num_warps=8, num_stages=2),
)
REGISTER_D_MAX = 256  # the largest D whose backward keeps [BLOCK, D] fp32 accumulators in registers


#: the largest D whose forward can hold a row block's ``[BLOCK_M, D]`` row-gradient accumulator
ROW_GRAD_D_MAX = 256


def row_grad_supported(flags: dict, d: int) -> bool:
    """Whether the forward can compute the rows' gradient products (``ROW_GRAD`` of
    ``contrastive_fwd``) for a problem with these switches: rows only (no column terms), plain softmax
    rows (no hard-negative or sigmoid terms), at most one positive per row (``pos_index``; several by
    labels would need a second product), and ``d <= 256``. A Ring band is fine: the forward then runs
    with the selection's config (same tile logits, bit for bit), and so does the backward's dC pass
    (or its dS chunks when that config's ``BLOCK_D`` is below D)."""
    return (d <= ROW_GRAD_D_MAX and not flags["COLUMN_TERMS"] and not flags["HARD_NEGATIVES"]
            and not flags["PAIRWISE_SIGMOID"] and not flags["HAS_LABELS"])


def backward_candidates(d: int) -> tuple[TileConfig, ...]:
    """The backward's tuning candidates for feature size ``d``."""
    if d <= REGISTER_D_MAX:
        block_d = max(16, 1 << (d - 1).bit_length())
        return tuple(TileConfig(c.block_m, c.block_n, block_d, c.num_warps, c.num_stages, c.radix_bits)
                     for c in BACKWARD_REGISTER_CONFIGS)
    return BACKWARD_CHUNK_CONFIGS


DS_CHUNK_BYTES = 64 * 2**20  # default bound of one dS chunk of the backward's chunk route


def _positive_int_env(name: str, what: str) -> int | None:
    """The environment variable ``name`` as a positive int, None where unset; else a ValueError."""
    spec = os.environ.get(name)
    if not spec:
        return None
    try:
        value = int(spec)
    except ValueError:
        value = 0
    if value <= 0:
        raise ValueError(f"{name} must be a positive {what}, got {spec!r}")
    return value


def ds_chunk_bytes() -> int:
    """Bytes of one dS chunk (rows × columns of the input dtype): ``CONTRASTIVE_OPS_DS_CHUNK_BYTES``,
    else 64 MiB. Smaller chunks cost more, shorter GEMMs; the memory never grows like N × M."""
    return _positive_int_env("CONTRASTIVE_OPS_DS_CHUNK_BYTES", "number of bytes") or DS_CHUNK_BYTES


PIPELINE_ENV = "CONTRASTIVE_OPS_TRITON_PIPELINE"


def pipelined(config: TileConfig, d: int) -> bool:
    """Whether the tile loops issue each tile's product one tile ahead (software pipelining: a tile's
    epilogue overlaps the next tile's MMA): where D fits one ``BLOCK_D`` chunk, unless
    ``CONTRASTIVE_OPS_TRITON_PIPELINE=0``. The logits are the same bits either way."""
    spec = os.environ.get(PIPELINE_ENV, "1")
    if spec not in ("0", "1"):
        raise ValueError(f"{PIPELINE_ENV} must be '0' or '1', got {spec!r}")
    return spec == "1" and d <= config.block_d_for(d)


def cosine_chunk_shape(n: int, m_total: int) -> tuple[int, int]:
    """``(rows, cols)`` of one chunk of fp32 cosines of the cuda backend (its GEMMs' output and its
    epilogues' input): at most :func:`ds_chunk_bytes` bytes (64 MiB: 4096 × 4096 by default), square
    where both sides allow, never larger than the problem."""
    import math

    budget = max(1, ds_chunk_bytes() // 4)
    rows = max(1, min(n, math.isqrt(budget)))
    cols = max(1, min(m_total, budget // rows))
    return rows, cols


# Under the interpreter every numpy op costs the same whatever its size: 2-bit radix passes are
# the cheapest there (on a GPU, 4 bits halve the tile recomputations).
INTERPRETER_CONFIG = TileConfig(16, 16, 16, num_warps=1, num_stages=1, radix_bits=2)

_pinned: list[TileConfig | None] = [None]
_tuned: dict[tuple, TileConfig] = {}


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@contextlib.contextmanager
def pin_config(config: TileConfig):
    """Run every Triton kernel of the core with ``config`` inside the block (no tuning)."""
    if not isinstance(config, TileConfig):
        raise TypeError(f"config must be a TileConfig, got {type(config).__name__}")
    saved = _pinned[0]
    _pinned[0] = config
    try:
        yield config
    finally:
        _pinned[0] = saved


def pinned_config() -> TileConfig | None:
    """The pinned config (context manager first, then the environment variable), or None."""
    if _pinned[0] is not None:
        return _pinned[0]
    spec = os.environ.get("CONTRASTIVE_OPS_TRITON_CONFIG")
    if spec:
        try:
            return TileConfig.from_list(spec.split(","))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"CONTRASTIVE_OPS_TRITON_CONFIG must be 'BM,BN,BD[,warps,stages,radix_bits]', got {spec!r}: {exc}")
    if interpreting():
        return INTERPRETER_CONFIG
    return None


SLOW_TUNING_MS = 100.0  # a forward slower than this is timed once per config, not by do_bench


def _time_config_ms(run, config) -> float:
    """Milliseconds of ``run(config)``: one compile-and-warm call, one event-timed call, and
    ``do_bench`` only when that call is fast. ``do_bench`` makes at least eight calls, minutes per
    config at N = 1M; on problems that large the configs differ far more than one call's noise."""
    import torch
    from triton.testing import do_bench

    run(config)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    run(config)
    end.record()
    end.synchronize()
    once = start.elapsed_time(end)
    if once > SLOW_TUNING_MS:
        return once
    return do_bench(lambda: run(config), warmup=5, rep=20)


DEFAULT_CANDIDATES = 2  # the tuner's candidates per list when CONTRASTIVE_OPS_TRITON_CANDIDATES is unset


def candidate_limit() -> int | None:
    """``CONTRASTIVE_OPS_TRITON_CANDIDATES`` as a positive int, None for ``all`` (every candidate), else
    :data:`DEFAULT_CANDIDATES`."""
    if os.environ.get("CONTRASTIVE_OPS_TRITON_CANDIDATES", "").strip().lower() == "all":
        return None
    return _positive_int_env("CONTRASTIVE_OPS_TRITON_CANDIDATES", "number of candidates (or 'all')") or \
        DEFAULT_CANDIDATES


def tuning_cache_path():
    """Where tuned choices are kept across processes: ``CONTRASTIVE_OPS_TUNING_CACHE`` (a file; ``off``:
    nowhere), else ``contrastive_ops/triton-tuning.json`` under ``$XDG_CACHE_HOME`` or ``~/.cache``."""
    from pathlib import Path

    spec = os.environ.get("CONTRASTIVE_OPS_TUNING_CACHE")
    if spec is not None and spec.strip().lower() in ("off", "0", "none", ""):
        return None
    if spec:
        return Path(spec).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "contrastive_ops" / "triton-tuning.json"


def _sources_digest() -> str:
    """A digest of the kernels' sources: a choice tuned on other kernels is not reused."""
    import hashlib
    from pathlib import Path

    digest = hashlib.sha256()
    for path in sorted(Path(__file__).parent.glob("*.py")):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _disk_key(key: tuple, candidates: tuple[TileConfig, ...]) -> str:
    import torch
    import triton

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    return " | ".join((device, f"torch {torch.__version__}", f"triton {triton.__version__}", _sources_digest(),
                       repr(key), repr([c.as_list() for c in candidates])))


def _load_choices(path) -> dict:
    import json

    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}  # missing or unreadable: tune again


def _store_choice(path, disk_key: str, config: TileConfig) -> None:
    """Add one choice to the file (written whole to a temporary file, then renamed over it)."""
    import json
    import tempfile

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        choices = _load_choices(path)
        choices[disk_key] = config.as_list()
        with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as tmp:
            json.dump(choices, tmp, indent=0)
        os.replace(tmp.name, path)
    except OSError:
        pass  # a read-only home: the choice stays in this process only


def tuned_config(key: tuple, run, candidates: tuple[TileConfig, ...] = GPU_CONFIGS) -> TileConfig:
    """The fastest of ``candidates`` (default :data:`GPU_CONFIGS`, the first
    :func:`candidate_limit` of them) for ``key``, timing ``run(config)`` once per key; a single
    candidate is taken untimed."""
    candidates = candidates[:candidate_limit()]
    if len(candidates) == 1:
        return candidates[0]
    if key not in _tuned:
        import triton

        path = tuning_cache_path()
        disk_key = None if path is None else _disk_key(key, candidates)
        if disk_key is not None:
            kept = _load_choices(path).get(disk_key)
            if kept is not None:
                _tuned[key] = TileConfig.from_list(kept)
                return _tuned[key]
        timings = {}
        for config in candidates:
            try:
                timings[config] = _time_config_ms(run, config)
            except triton.runtime.errors.OutOfResources:
                continue  # e.g. too much shared memory for this GPU
        if not timings:
            raise RuntimeError(f"no Triton tile config fits this GPU for problem {key}")
        _tuned[key] = min(timings, key=timings.get)
        if disk_key is not None:
            _store_choice(path, disk_key, _tuned[key])
    return _tuned[key]
