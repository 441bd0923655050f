"""Test setup: Triton's CPU interpreter where there is no GPU, fresh compiles, a clean report."""

import os
import sys
from pathlib import Path

import torch

# Must be set before any @triton.jit kernel is decorated, i.e. before fusion_passes is imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

import fusion_passes  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

# The examples and their model zoo (the tiny configs the model tests build) are imported by the tests.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))


@pytest.fixture(autouse=True)
def fresh_compile():
    """Every test compiles from scratch (cache hits skip post-grad passes) into an empty report."""
    torch._dynamo.reset()
    fusion_passes.reset_report()
    with torch._inductor.config.patch(force_disable_caches=True):
        yield
    torch._dynamo.reset()
