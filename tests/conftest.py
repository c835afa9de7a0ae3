import os
import random

import pytest
import torch

# Without a GPU, the triton backend runs its kernels in Triton's interpreter (numpy, one program
# at a time). Set before anything imports the kernels: Triton reads it when they are decorated.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture
def seed():
    """A fresh seed every run (printed, so a failure can be replayed with torch.manual_seed)."""
    value = random.SystemRandom().randrange(2**31)
    torch.manual_seed(value)
    print(f"torch.manual_seed({value})")
    return value


def assert_close_rel(actual: torch.Tensor, expected: torch.Tensor, rel: float, what: str = "") -> None:
    """Norm-wise relative check: max|actual - expected| <= rel * max(max|expected|, 1e-30).

    On failure, reports the error, the scale and the first offending index; NaN/inf anywhere fails.
    """
    actual = actual.detach().double()
    expected = expected.detach().double()
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert torch.isfinite(actual).all(), f"{what}: non-finite values in result: {actual}"
    scale = max(expected.abs().max().item() if expected.numel() else 0.0, 1e-30)
    err = (actual - expected).abs()
    worst = err.max().item() if err.numel() else 0.0
    if worst > rel * scale:
        idx = tuple(int(i) for i in torch.nonzero(err == err.max())[0]) if err.dim() else ()
        raise AssertionError(
            f"{what}: max abs error {worst:.3e} > {rel:.1e} x scale {scale:.3e} "
            f"(at {idx}: got {actual[idx].item():.8g}, expected {expected[idx].item():.8g})"
        )
