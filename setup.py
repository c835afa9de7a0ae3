"""Build script for contrastive_ops.

``kernels/`` (Triton sources) is installed as the subpackage ``contrastive_ops.kernels``;
``csrc/`` holds the CUDA C++ extension sources (backend "cuda").
"""
from pathlib import Path

from setuptools import setup

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
    entry_points={"console_scripts": ["contrastive-ops-train = contrastive_ops.train.cli:main"]},
    extras_require={
        "test": [
            "pytest>=7",
            "pytest-benchmark>=4",
            "pytorch-metric-learning>=2.0",
        ],
        "train": ["tqdm", "scikit-learn", "matplotlib"],
        "triton": ["triton>=3.6"],
    },
)
