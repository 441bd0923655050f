"""Test setup: Triton's CPU interpreter where there is no GPU, fresh compiles, a clean report."""

import os

import torch

# Must be set before any @triton.jit kernel is decorated, i.e. before fusion_passes is imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

import fusion_passes  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(autouse=True)
def fresh_compile():
    """Every test compiles from scratch (cache hits skip post-grad passes) into an empty report."""
    torch._dynamo.reset()
    fusion_passes.reset_report()
    with torch._inductor.config.patch(force_disable_caches=True):
        yield
    torch._dynamo.reset()
