"""tools.source_tree: from the repository root, ``import kernels`` finds an installed ``kernels``
distribution (transformers imports Hugging Face's when present), not the root's ``kernels/`` folder."""
import importlib.metadata
import importlib.util
from pathlib import Path

from tools.source_tree import prefer_installed_kernels

ROOT = Path(__file__).resolve().parents[2]


def test_kernels_resolves_to_the_installed_distribution():
    spec = importlib.util.find_spec("kernels")
    try:
        dist = importlib.metadata.distribution("kernels")
    except importlib.metadata.PackageNotFoundError:
        assert prefer_installed_kernels() is False
        assert spec is None or Path(spec.origin).resolve().parent == ROOT / "kernels"  # the folder, if on sys.path
        return
    assert prefer_installed_kernels() is True
    assert Path(spec.origin).resolve() == Path(dist.locate_file("kernels/__init__.py")).resolve()
    assert Path(spec.origin).resolve().parent != ROOT / "kernels"
