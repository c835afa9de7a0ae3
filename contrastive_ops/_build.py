"""Building the CUDA extension (``csrc/``): shared by ``setup.py`` and the JIT path of the loader.

Standard library only, and loaded by file path from ``setup.py``, so that it runs without torch and
without importing the package. The ``.cu`` kernels are compiled here with nvcc into objects; the
torch glue (``csrc/ops.cpp``) is compiled by torch's C++ extension tooling and linked with them and
the CUDA runtime. torch's own ``CUDAExtension`` is not used: it links ``c10_cuda``/``torch_cuda``,
which the CPU build of torch lacks, and the kernels need no torch headers (DESIGN.md §7).

Environment:

* ``CONTRASTIVE_OPS_CUDA_ARCHS`` — SM targets, ``;``/``,``/space separated, e.g. ``"80;90a"``
  (the default), ``"90"``, ``"9.0"``, ``"90a"``, ``"sm_90"``, ``"8.0;9.0+PTX"``; 80 or newer (bf16
  tensor cores). PTX of the newest plain target is embedded too, for GPUs newer than every target;
  ``+PTX`` after a target embeds its PTX as well (torch's ``TORCH_CUDA_ARCH_LIST`` syntax).
* ``MAX_JOBS`` — parallel nvcc jobs (default: the CPU count, capped at one job per 4 GiB of memory).
* ``CUDA_HOME`` / ``CUDA_PATH`` — the toolkit, when nvcc on ``PATH`` is a wrapper outside it.
"""
from __future__ import annotations

import concurrent.futures
import hashlib
import os
import re
import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CSRC = REPO / "csrc"
# Ampere machine code (and its PTX, for newer GPUs) and Hopper's arch-specific sm_90a (wgmma, TMA:
# what cuBLAS and CUTLASS-class kernels use there); nvcc 12.0 or newer has it
DEFAULT_ARCHS = "80;90a"
CU_SOURCES = ("epilogue.cu", "fused_sm90.cu", "runtime.cu")
CPP_SOURCES = ("ops.cpp",)
HEADERS = ("contrastive_cuda.h", "epilogue.h", "epilogue_cpu.h")


class BuildError(RuntimeError):
    """The extension cannot be built here; the message says why."""


def find_nvcc() -> str | None:
    """The nvcc executable: ``$CUDA_HOME/bin/nvcc`` if set, else the first one on ``PATH``."""
    for var in ("CUDA_HOME", "CUDA_PATH"):
        home = os.environ.get(var)
        if home and (Path(home) / "bin" / "nvcc").is_file():
            return str(Path(home) / "bin" / "nvcc")
    return shutil.which("nvcc")


def _is_toolkit(path: Path) -> bool:
    return (path / "include" / "cuda_runtime.h").is_file() and _lib_dir(path) is not None


def _lib_dir(home: Path) -> Path | None:
    for sub in ("lib64", "lib", "targets/x86_64-linux/lib", "targets/sbsa-linux/lib"):
        if any((home / sub).glob("libcudart.so*")):
            return home / sub
    return None


def cuda_home() -> Path:
    """The CUDA toolkit root (with ``include/cuda_runtime.h`` and ``libcudart``).

    ``nvcc`` on ``PATH`` may be a wrapper script (``/usr/local/bin/nvcc`` exec'ing the real one), so
    beside ``bin/..`` of it the usual locations are tried."""
    nvcc = find_nvcc()
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")]
    if nvcc:
        candidates.append(str(Path(os.path.realpath(nvcc)).parents[1]))
    candidates += ["/usr/local/cuda"] + sorted(str(p) for p in Path("/usr/local").glob("cuda-*"))[::-1]
    for cand in candidates:
        if cand and _is_toolkit(Path(cand)):
            return Path(cand)
    raise BuildError(
        "no CUDA toolkit found (looked for include/cuda_runtime.h and libcudart beside nvcc, in $CUDA_HOME "
        "and /usr/local/cuda*): install the CUDA toolkit or set CUDA_HOME"
    )


def nvcc_version() -> str:
    nvcc = find_nvcc()
    if nvcc is None:
        return "not found"
    out = subprocess.run([nvcc, "--version"], capture_output=True, text=True, check=False).stdout
    match = re.search(r"release ([\d.]+)", out)
    return match.group(1) if match else "unknown"


def parse_archs(text: str | None = None) -> list[str]:
    """``"80;90"``-style targets as ``["80", "90"]`` (``"90a"`` keeps its suffix, ``"9.0+PTX"``
    becomes ``"90+PTX"``)."""
    text = os.environ.get("CONTRASTIVE_OPS_CUDA_ARCHS", DEFAULT_ARCHS) if text is None else text
    archs = []
    for item in re.split(r"[;,\s]+", text.strip()):
        if not item:
            continue
        match = re.fullmatch(r"(?:sm_|compute_)?(\d+)\.?(\d)?([af]?)(\+PTX)?", item, flags=re.IGNORECASE)
        if not match:
            raise BuildError(f"CONTRASTIVE_OPS_CUDA_ARCHS: cannot read {item!r} (expected e.g. '80;90' or '9.0')")
        arch = match.group(1) + (match.group(2) or "") + match.group(3).lower()
        if int(re.sub(r"\D", "", arch)) < 80:
            raise BuildError(f"CONTRASTIVE_OPS_CUDA_ARCHS: sm_{arch} is too old: the kernels need sm_80 or newer")
        if match.group(4):
            if arch[-1].isalpha():
                raise BuildError(f"CONTRASTIVE_OPS_CUDA_ARCHS: {item!r}: sm_{arch} code runs on sm_{arch[:-1]} only, "
                                 "so it has no portable PTX; use e.g. '90a;90+PTX'")
            arch += "+PTX"
        plain = arch.removesuffix("+PTX")
        if arch.endswith("+PTX") and plain in archs:
            archs[archs.index(plain)] = arch
        elif arch not in archs and f"{plain}+PTX" not in archs:
            archs.append(arch)
    if not archs:
        raise BuildError("CONTRASTIVE_OPS_CUDA_ARCHS is empty")
    return archs


def targets(archs: list[str]) -> list[str]:
    """What nvcc embeds for ``archs``: ``sm_XX`` machine code per target and ``compute_XX`` PTX for
    the ``+PTX`` ones and the newest plain one, e.g. ``["sm_80", "sm_90", "compute_90"]``."""
    codes = [f"sm_{a.removesuffix('+PTX')}" for a in archs]
    ptx = [a.removesuffix("+PTX") for a in archs if a.endswith("+PTX")]
    portable = [a for a in archs if a.removesuffix("+PTX").isdigit()]  # "90a" code runs on sm_90 only: no PTX
    if portable:
        ptx.append(max(portable, key=lambda a: int(a.removesuffix("+PTX"))).removesuffix("+PTX"))
    return codes + [f"compute_{a}" for a in dict.fromkeys(ptx)]


def nvcc_flags(archs: list[str]) -> list[str]:
    flags = ["-O3", "-std=c++17", "-Xcompiler", "-fPIC", "--expt-relaxed-constexpr", "-lineinfo"]
    for target in targets(archs):
        arch = target.split("_")[1]
        flags += ["-gencode", f"arch=compute_{arch},code={target}"]
    # the built-target report of the library (built_archs()): spaces, since nvcc splits option values at commas
    flags.append(f'-DCONTRASTIVE_BUILT_TARGETS="{" ".join(targets(archs))}"')
    return flags


def max_jobs() -> int:
    """Parallel nvcc jobs: ``MAX_JOBS``, else the CPUs, at most one per 4 GiB of memory."""
    if os.environ.get("MAX_JOBS"):
        return max(1, int(os.environ["MAX_JOBS"]))
    cpus = os.cpu_count() or 1
    try:
        mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        mem_gib = 8.0
    return max(1, min(cpus, int(mem_gib // 4)))


def compile_kernels(build_dir: Path, archs: list[str] | None = None, verbose: bool = True) -> list[Path]:
    """Compile ``csrc/*.cu`` with nvcc into objects under ``build_dir`` (reused while the sources,
    headers and flags are unchanged); returns their paths. A compile error raises BuildError with
    nvcc's output."""
    nvcc = find_nvcc()
    if nvcc is None:
        raise BuildError("nvcc not found: install the CUDA toolkit (or put its bin/ on PATH, or set CUDA_HOME)")
    home = cuda_home()
    nvcc = str(home / "bin" / "nvcc") if (home / "bin" / "nvcc").is_file() else nvcc
    archs = parse_archs() if archs is None else archs
    flags = nvcc_flags(archs) + ["-I", str(CSRC)]
    build_dir = Path(build_dir)
    build_dir.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256(" ".join(flags).encode())
    for name in HEADERS:
        digest.update((CSRC / name).read_bytes())

    def one(name: str) -> Path:
        src = CSRC / name
        key = digest.copy()
        key.update(src.read_bytes())
        obj = build_dir / f"{src.stem}.{key.hexdigest()[:12]}.o"
        if obj.is_file():
            return obj
        cmd = [nvcc, *flags, "-c", str(src), "-o", str(obj) + ".tmp"]
        if verbose:
            print(" ".join(cmd), flush=True)
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise BuildError(f"nvcc failed on {src.name}:\n{proc.stdout}{proc.stderr}")
        os.replace(str(obj) + ".tmp", obj)
        return obj

    with concurrent.futures.ThreadPoolExecutor(max_workers=min(max_jobs(), len(CU_SOURCES))) as pool:
        return list(pool.map(one, CU_SOURCES))


def link_args() -> list[str]:
    """Linker flags for the CUDA runtime. Dynamic, so the process shares torch's runtime (its
    ``libcudart.so`` is found by soname once torch is loaded); the rpath serves machines where torch
    is a CPU build (the extension loads there too, for its argument checks)."""
    lib = _lib_dir(cuda_home())
    return [f"-L{lib}", "-lcudart", f"-Wl,-rpath,{lib}"]


def include_dirs() -> list[str]:
    return [str(CSRC)]
