"""Run sentence-transformers' own loss tests against the compat classes: the import line swapped.

    python tools/st_peer_tests.py PATH_TO_A_SENTENCE_TRANSFORMERS_CHECKOUT [--out results.md]

The checkout's ``tests/`` are copied twice into a temporary folder. In the second copy the loss test
files import their loss classes from a module that re-exports the installed
``sentence_transformers.sentence_transformer.losses`` with :mod:`contrastive_ops.compat.sentence_transformers`'s
classes in place of the peer's (nothing else in the files changes). Both copies run under pytest,
and a table gives each test's outcome with the peer's classes and with ours, so that a test failing
only with ours stands out from one that fails for both (a test of a newer sentence-transformers than
the installed one, or one needing a download).

Offline: the hub's ``stsb-bert-tiny`` fixture is replaced by a BERT of its shape (2 layers, 128 wide,
dropout 0.1) with random weights, built locally (``tests/tiny_models.py``), whose word-level vocabulary is every word in the copied test files;
other hub fixtures fail in both runs (``HF_HUB_OFFLINE=1``) and are listed as such.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
LOSS_TESTS = ["test_gist_embed.py", "test_cached_gist_embed.py", "test_cmnrl.py", "test_cached_mnsrl.py",
              "test_gradcache.py"]
PEER_IMPORT = re.compile(r"from sentence_transformers\.sentence_transformer\.losses import\b")

SWAPPED = '''"""The installed sentence-transformers losses, with contrastive_ops' compat classes in place of theirs."""
from sentence_transformers.sentence_transformer.losses import *  # noqa: F403
from sentence_transformers.sentence_transformer.losses import __all__  # noqa: F401
from contrastive_ops.compat.sentence_transformers import __all__ as _ours
from contrastive_ops.compat import sentence_transformers as _compat

globals().update({name: getattr(_compat, name) for name in _ours if name[0].isupper()})
'''

CONFTEST = '''
# --- offline stand-in for the hub's stsb-bert-tiny (tools/st_peer_tests.py) ---
import re as _re
import sys as _sys
from pathlib import Path as _Path

import pytest as _pytest

_sys.path.insert(0, {tests_dir!r})


@_pytest.fixture(scope="session")
def _stsb_bert_tiny_model(tmp_path_factory):
    import torch
    from tiny_models import tiny_bert

    root = _Path(__file__).resolve().parent
    words = sorted({{w.lower() for f in root.rglob("*.py") for w in _re.findall(r"[A-Za-z]+", f.read_text())}})
    torch.manual_seed(0)
    # the hub model's shape: 2 layers, 128 wide, dropout 0.1
    return tiny_bert(tmp_path_factory.mktemp("stsb-bert-tiny"), words, 128, dtype=torch.float32, layers=2,
                     dropout=0.1)
'''


def _prepare(checkout: Path, root: Path, swap: bool) -> None:
    shutil.copytree(checkout / "tests", root / "tests")
    with open(root / "tests" / "conftest.py", "a") as f:
        f.write(CONFTEST.format(tests_dir=str(HERE / "tests")))
    if not swap:
        return
    (root / "swapped_losses.py").write_text(SWAPPED)
    for name in LOSS_TESTS:
        path = root / "tests" / "sentence_transformer" / "losses" / name
        if path.exists():
            path.write_text(PEER_IMPORT.sub("from swapped_losses import", path.read_text()))


def _run(root: Path) -> dict:
    files = [f"tests/sentence_transformer/losses/{n}" for n in LOSS_TESTS
             if (root / "tests" / "sentence_transformer" / "losses" / n).exists()]
    report = root / "junit.xml"
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", CUDA_VISIBLE_DEVICES="")
    subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=",
                    f"--junitxml={report}", *files], cwd=root, env=env, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, check=False)
    outcomes = {}
    for case in ET.parse(report).getroot().iter("testcase"):
        test = f"{case.get('classname', '').split('.')[-1]}::{case.get('name')}"
        kinds = [child.tag for child in case]
        outcome = ("error" if "error" in kinds else "failed" if "failure" in kinds
                   else "skipped" if "skipped" in kinds else "passed")
        message = next((child.get("message", "") for child in case if child.tag in ("error", "failure")), "")
        outcomes[test] = (outcome, message.splitlines()[0][:120] if message else "")
    return outcomes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkout", type=Path, help="a sentence-transformers source checkout (its tests/)")
    parser.add_argument("--out", type=Path, help="write the table here (markdown) as well")
    parser.add_argument("--source", default=None, help="where the checkout's tests come from (for the header)")
    args = parser.parse_args()
    import sentence_transformers

    with tempfile.TemporaryDirectory() as tmp:
        runs = {}
        for label, swap in (("peer", False), ("ours", True)):
            root = Path(tmp) / label
            root.mkdir()
            _prepare(args.checkout, root, swap)
            runs[label] = _run(root)
    tests = sorted(set(runs["peer"]) | set(runs["ours"]))
    import contrastive_ops

    commit = subprocess.run(["git", "-C", str(HERE), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, check=False).stdout.strip() or "unknown"
    header = (f"sentence-transformers {sentence_transformers.__version__} installed, contrastive_ops "
              f"{contrastive_ops.__version__} at {commit}; tests from {args.source or args.checkout}")
    lines = [header,
             "", "| test | peer's classes | contrastive_ops' classes | note |", "|---|---|---|---|"]
    counts: dict = {}
    for test in tests:
        peer, ours = runs["peer"].get(test, ("absent", "")), runs["ours"].get(test, ("absent", ""))
        counts[(peer[0], ours[0])] = counts.get((peer[0], ours[0]), 0) + 1
        note = ours[1] if ours[0] != peer[0] else (peer[1] if peer[0] != "passed" else "")
        lines.append(f"| `{test}` | {peer[0]} | {ours[0]} | {note.replace('|', '/')} |")
    lines += ["", "peer → ours: " + ", ".join(f"{a} → {b}: {n}" for (a, b), n in sorted(counts.items()))]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
