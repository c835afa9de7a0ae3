import os

import torch

# As in tests/conftest.py: without a GPU the triton backend runs in Triton's interpreter. Set before
# anything imports the kernels (Triton reads it when they are decorated).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
