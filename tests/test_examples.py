"""The example scripts at their tiny size in fp32: each completes, prints the report with the expected
fusions, and its output matches torch.compile alone (exit status 0).

The scripts run in this process (``main(argv)``): torch, diffusers and the passes are set up once,
and kernels compiled for one example are reused by the next (the pipelines run the same tiny
transformers as the model scripts before them). Inductor's caches stay as a user has them; each
script keeps its own backend compile from the FX graph cache, so the passes always run. Marked
``examples``: ``-m "not examples"`` deselects them (each compiles its tiny model twice: on a
2-core machine about 2 minutes of CPU time in all with a warm Inductor cache, 8 with a cold one).
"""

from __future__ import annotations

import importlib

import pytest
import torch

import fusion_passes

pytest.importorskip("diffusers")
pytest.importorskip("transformers")
pytestmark = pytest.mark.examples

TINY = ["--size", "tiny", "--dtype", "float32"]

# Fusions at the tiny size: one block of each kind, whole model (compile_*) or each block class
# compiled once (pipeline_*, compile_repeated_blocks). Per block, as in the model tests: the first
# norms of a block read its input (adaln), the norms after its attention residual sum the residual
# (residual_adaln), and each self-attention's q and k fuse with their RMSNorm (rope). The whole
# models add their output norm (adaln), and HunyuanVideo's text stream enters from the token
# refiner's residual sum. Qwen-Image's block drops its last text-stream norm (the model returns the
# image stream only), and so does its text FeedForward; each other FeedForward (and FLUX's and
# HunyuanVideo's single-block MLP) fuses its Linear + tanh-GELU (linear_gelu), as does Wan's text
# embedder in the whole model. Qwen3-Next: see the model tests.
EXAMPLES = {
    "compile_flux": ([], {"residual_adaln": 2, "adaln": 4, "rope": 4, "linear_gelu": 3}),
    "pipeline_flux": ([], {"residual_adaln": 2, "adaln": 3, "rope": 4, "linear_gelu": 3}),
    "compile_qwen_image --edit": (["--edit"], {"residual_adaln": 1, "adaln": 3, "rope": 2, "linear_gelu": 1}),
    "compile_wan": ([], {"residual_adaln": 1, "adaln": 2, "rope": 2, "linear_gelu": 2}),
    "pipeline_wan": ([], {"residual_adaln": 1, "adaln": 1, "rope": 2, "linear_gelu": 1}),
    "compile_hunyuan_video": ([], {"residual_adaln": 3, "adaln": 3, "rope": 4, "linear_gelu": 3}),
    "compile_qwen3_next": ([], {"causal_conv1d": 1, "adaln": 4, "residual_adaln": 3, "rope": 2}),
}


@pytest.fixture
def inductor_caches():
    """Inductor's caches as a user has them (the suite disables them for every other test)."""
    with torch._inductor.config.patch(force_disable_caches=False):
        yield


@pytest.mark.usefixtures("inductor_caches")
@pytest.mark.parametrize("name", list(EXAMPLES))
def test_example(name, capsys):
    argv, counts = EXAMPLES[name]
    script = importlib.import_module(name.split()[0])
    assert script.main(TINY + argv) == 0
    out = capsys.readouterr().out
    assert "-> MATCH" in out, out
    report = fusion_passes.report()
    assert report.summary() in out
    if not torch.cuda.is_available():  # on CUDA the size rule leaves these tiny shapes to Inductor
        assert report.counts() == counts, out
        # The edit model's image-stream norms choose their modulation per token.
        assert out.count("+select01") == (2 if "--edit" in argv else 0), out
