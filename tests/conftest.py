import os
import random

import pytest
import torch

# Without a GPU, the triton backend runs its kernels in Triton's interpreter (numpy, one program
# at a time). Set before anything imports the kernels: Triton reads it when they are decorated.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from helpers import assert_close_rel  # noqa: F401  (its home is helpers.py; some tests import it from here)

import tools  # noqa: F401  (an installed ``kernels`` before the root's kernels/ folder: tools.source_tree)


def pytest_collection_modifyitems(items):
    """Tests marked ``long`` first (for every collected folder): pytest-xdist's workers take tests in this
    order, and a long one collected last would keep one worker busy after the others ran out of work."""
    items.sort(key=lambda item: item.get_closest_marker("long") is None)


@pytest.fixture
def seed():
    """A fresh seed every run (printed, so a failure can be replayed with torch.manual_seed)."""
    value = random.SystemRandom().randrange(2**31)
    torch.manual_seed(value)
    print(f"torch.manual_seed({value})")
    return value
