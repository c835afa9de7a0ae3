"""Build script for contrastive_ops.

``kernels/`` (Triton sources) is installed as the subpackage ``contrastive_ops.kernels``;
``csrc/`` holds the CUDA C++ extension sources (backend "cuda"), built here as
``contrastive_ops._cuda_ext`` when nvcc is found. Environment flags:

* ``CONTRASTIVE_OPS_BUILD_CUDA`` — unset: build the extension if nvcc and torch are found, else
  warn and install without it; ``1``: build it or fail; ``0``: never build it.
* ``CONTRASTIVE_OPS_CUDA_ARCHS`` — SM targets (default ``80;90a``); ``MAX_JOBS`` — parallel nvcc jobs.

The extension build imports torch, so install with ``pip install --no-build-isolation -e .`` into
an environment that already has torch (pip's isolated build environment has none; there the
extension is skipped with a warning, or the install fails when it is forced).
"""
import importlib.util
import os
import sys
import warnings
from pathlib import Path

from setuptools import setup

HERE = Path(__file__).resolve().parent
# The source root's kernels/ (installed as contrastive_ops.kernels) would shadow an installed ``kernels``
# distribution (Hugging Face's), whose setuptools plugin (an egg_info writer) setuptools imports while
# building. Nothing is imported from the root here (helpers are loaded by path), so it leaves sys.path.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]


def _build_helpers():
    """contrastive_ops/_build.py, loaded by path (the package itself imports torch)."""
    spec = importlib.util.spec_from_file_location("_contrastive_ops_build", HERE / "contrastive_ops" / "_build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _cuda_extension():
    """``(ext_modules, cmdclass)`` for the CUDA extension, or empty ones when it is not built."""
    flag = os.environ.get("CONTRASTIVE_OPS_BUILD_CUDA", "").strip().lower()
    if flag in ("0", "false", "no", "off"):
        return [], {}
    forced = flag in ("1", "true", "yes", "on")
    build = _build_helpers()

    def skip(reason):
        if forced:
            sys.exit(f"error: CONTRASTIVE_OPS_BUILD_CUDA=1 but the CUDA extension cannot be built: {reason}")
        warnings.warn(f"contrastive_ops: building without the CUDA extension (backend='cuda'): {reason}", stacklevel=2)
        return [], {}

    if build.find_nvcc() is None:
        return skip("nvcc not found (install the CUDA toolkit or set CUDA_HOME)")
    try:
        archs = build.parse_archs()
        build.cuda_home()
        from torch.utils.cpp_extension import BuildExtension, CppExtension
    except ImportError:
        return skip("torch is not importable here: install torch first, then pip install --no-build-isolation -e .")
    except build.BuildError as exc:
        return skip(str(exc))

    class BuildWithKernels(BuildExtension):
        """Compiles the .cu kernels with nvcc first, then the torch glue linked with them."""

        def build_extensions(self):
            objects = build.compile_kernels(Path(self.build_temp) / "contrastive_ops_cuda", archs)
            for ext in self.extensions:
                ext.extra_objects = [str(o) for o in objects] + list(ext.extra_objects or [])
            super().build_extensions()

    ext = CppExtension(
        name="contrastive_ops._cuda_ext",
        sources=[f"csrc/{name}" for name in build.CPP_SOURCES],
        include_dirs=build.include_dirs(),
        extra_compile_args={"cxx": ["-O2"]},
        extra_link_args=build.link_args(),
        depends=[f"csrc/{name}" for name in build.HEADERS + build.CU_SOURCES],
    )
    os.environ.setdefault("MAX_JOBS", str(build.max_jobs()))  # torch's ninja build reads it too
    return [ext], {"build_ext": BuildWithKernels.with_options(no_python_abi_suffix=False)}


ext_modules, cmdclass = _cuda_extension()

setup(
    name="contrastive_ops",
    version="0.1.0",
    description="Exact contrastive losses (InfoNCE, NT-Xent, CLIP, SupCon, DCL, Ring) computed in tiles",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    packages=[
        "contrastive_ops",
        "contrastive_ops.backends",
        "contrastive_ops.compat",
        "contrastive_ops.kernels",
        "contrastive_ops.train",
    ],
    package_dir={"contrastive_ops.kernels": "kernels"},
    install_requires=["torch>=2.4", "numpy"],
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    entry_points={"console_scripts": ["contrastive-ops-train = contrastive_ops.train.cli:main"]},
    extras_require={
        "test": [
            "pytest>=7",
            "pytest-benchmark>=4",
            "hypothesis>=6",  # tests/test_fuzz.py
            "pytest-xdist>=3",
            "pytorch-metric-learning>=2.0",
        ],
        "train": ["tqdm", "scikit-learn", "matplotlib"],
        "triton": ["triton>=3.6"],
    },
)
