"""The diffusers models (tiny random configs) compiled with the backend on CPU.

Whole transformer and each repeated block alone (diffusers' ``compile_repeated_blocks``), fp32 and
bf16: the exact number of fusions of each kind, and outputs matching ``torch.compile`` alone.
"""

from __future__ import annotations

import collections

import pytest
import torch
from tiny_models import LLM_MODELS, MODELS
from torch._inductor.utils import run_and_get_code
from helpers import relative_error

import fusion_passes
from fusion_passes.report import FusionRecord

pytest.importorskip("diffusers")

CPU_OPTIONS = {"fusion_passes": {"devices": ("cpu",)}}
# Relative error of the backend's output against torch.compile alone (fp32 also against eager).
PARITY = {torch.float32: 1e-4, torch.bfloat16: 2e-2}


def kind(record: FusionRecord) -> str:
    """A fusion's kind: its family, with a rope call that absorbed its norm counted as "norm+rope"."""
    if record.fusion == "rope" and " -> rope[" in record.pattern:
        return "norm+rope"
    return record.fusion


def kinds(graph: fusion_passes.GraphReport) -> dict[str, int]:
    """Fusions of a graph by kind ("select01": a chain with a per-row modulation choice, counted again)."""
    counts = collections.Counter(kind(record) for record in graph.fused)
    counts["select01"] = sum("select01" in record.pattern for record in graph.fused)
    return {kind: count for kind, count in counts.items() if count}


# Whole transformer: every modulated norm fuses. residual_adaln where the norm's input is a residual sum used
# later; adaln where it is a graph input, the patch embedding, a cat, or a sum used only by the norm
# (the last block's, whose other use the model drops). Counts per model, as reasoned in the notes:
# - FLUX (2 double, 2 single): double blocks 2 x (img, txt) x (norm1, norm2); norm1 of the first
#   double block and of each single block (after a cat) are adaln, as is norm_out; the rest residual_adaln.
# - Qwen-Image (2 blocks): as FLUX's double blocks; the second block's text norm2 is dead code
#   (the model returns only the image stream) and its text norm1 input is used only there. The
#   edit model (zero_cond_t) chooses the image stream's modulation per token: select01 on those 4.
# - Wan (2 blocks): norm1 (modulated) and norm3 (after the ungated cross-attention residual);
#   norm2 is an unmodulated cross-attention norm.
# - HunyuanVideo (2 double, 2 single, refiner): as FLUX, except that the text stream enters the
#   first double block from the token refiner's residual sum; the refiner's norms are
#   unmodulated.
#
# RoPE: q and k of every self-attention fuse with their RMSNorm, one call per q or k:
# - FLUX: double blocks cat the normalized text and image streams before one rotation over the
#   joint sequence (two streams); single blocks rotate the normalized joint q, k.
# - Qwen-Image: each stream rotated with its own complex table, then cat (two streams).
# - Wan: RMSNorm over all heads before the head split, slice-assignment rotation.
# - HunyuanVideo: double blocks rotate the image stream and cat the normalized text unrotated;
#   single blocks rotate the image prefix of one normalized sequence (two streams each).
#
# Linear + tanh-GELU (linear_gelu): each block's FeedForward ("gelu-approximate") and each single
# block's proj_mlp + act_mlp fuse:
# - FLUX: 2 per double block (image and text streams), 1 per single block.
# - Qwen-Image: 2 per block, less the last block's text FeedForward (dead code, as its norm2).
# - Wan: 1 per block, plus the text embedder's Linear + GELU (PixArtAlphaTextProjection, "gelu_tanh").
# - HunyuanVideo: as FLUX (the token refiner's FeedForwards use SiLU).
WHOLE = {
    "flux": {"adaln": 5, "residual_adaln": 6, "norm+rope": 8, "linear_gelu": 6},
    "qwen_image": {"adaln": 4, "residual_adaln": 4, "norm+rope": 4, "linear_gelu": 3},
    "qwen_image_edit": {"adaln": 4, "residual_adaln": 4, "select01": 4, "norm+rope": 4, "linear_gelu": 3},
    "wan": {"adaln": 2, "residual_adaln": 3, "norm+rope": 4, "linear_gelu": 3},
    "wan_per_token": {"adaln": 2, "residual_adaln": 3, "norm+rope": 4, "linear_gelu": 3},
    "hunyuan_video": {"adaln": 4, "residual_adaln": 7, "norm+rope": 8, "linear_gelu": 6},
}

# Each repeated block compiled alone: its input is a graph input, so each block's first norms are
# adaln and the norms after its attention residual residual_adaln; the rotations (RoPE tables now graph inputs)
# and the Linear + GELUs fuse as in the whole model (a Qwen-Image block alone returns its text
# stream, so both of its FeedForwards fuse; Wan's text embedder is outside the blocks). One entry
# per block class (HunyuanVideo's token refiner blocks have no modulated norm).
BLOCKS = {
    "flux": [{"adaln": 2, "residual_adaln": 2, "norm+rope": 2, "linear_gelu": 2}, {"adaln": 1, "norm+rope": 2, "linear_gelu": 1}],
    "qwen_image": [{"adaln": 2, "residual_adaln": 2, "norm+rope": 2, "linear_gelu": 2}],
    "qwen_image_edit": [{"adaln": 2, "residual_adaln": 2, "select01": 2, "norm+rope": 2, "linear_gelu": 2}],
    "wan": [{"adaln": 1, "residual_adaln": 1, "norm+rope": 2, "linear_gelu": 1}],
    "wan_per_token": [{"adaln": 1, "residual_adaln": 1, "norm+rope": 2, "linear_gelu": 1}],
    "hunyuan_video": [
        {"adaln": 2, "residual_adaln": 2, "norm+rope": 2, "linear_gelu": 2}, {"adaln": 1, "norm+rope": 2, "linear_gelu": 1}, {}
    ],
}


@pytest.fixture(autouse=True)
def keep_kernel_cache():
    # Post-grad passes must run (no FX graph or AOT cache hits), but the compiled C++ kernels may
    # be reused between compiles, which keeps these tests affordable.
    with (
        torch._inductor.config.patch(force_disable_caches=False, fx_graph_cache=False),
        torch._functorch.config.patch(enable_autograd_cache=False),
    ):
        yield



def complex_fallbacks(code: str) -> list[str]:
    """Lines of Inductor's generated code that run complex math as eager kernels (complex tables
    may still be inputs: the fused op reads them as they are)."""
    return [line for line in code.splitlines() if "view_as_complex" in line or "view_as_real" in line]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("name", list(MODELS))
def test_whole_transformer(name, dtype):
    model, inputs = MODELS[name](dtype)
    with torch.no_grad():
        baseline, baseline_code = run_and_get_code(lambda: torch.compile(model)(**inputs, return_dict=False)[0])
        torch._dynamo.reset()
        fused, code = run_and_get_code(
            lambda: torch.compile(model, backend="fusion_passes", options=CPU_OPTIONS)(**inputs, return_dict=False)[0]
        )
        eager = model(**inputs, return_dict=False)[0] if dtype == torch.float32 else None
    report = fusion_passes.report()
    assert len(report.graphs) == 1
    assert kinds(report.graphs[0]) == WHOLE[name], report.summary()
    # Qwen-Image's complex RoPE runs as eager complex kernels under Inductor alone; fused, none is left.
    assert bool(complex_fallbacks("".join(baseline_code))) == name.startswith("qwen_image")
    assert complex_fallbacks("".join(code)) == []
    assert relative_error(fused, baseline) < PARITY[dtype]
    if eager is not None:
        assert relative_error(fused, eager) < PARITY[dtype]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("name", list(MODELS))
def test_repeated_blocks(name, dtype):
    model, inputs = MODELS[name](dtype)
    with torch.no_grad():
        eager = model(**inputs, return_dict=False)[0]
        model.compile_repeated_blocks(backend="fusion_passes", options=CPU_OPTIONS)
        fused = model(**inputs, return_dict=False)[0]
    report = fusion_passes.report()
    # One graph per block class (a class may recompile once per torch version's guards).
    found = {tuple(sorted(kinds(graph).items())) for graph in report.graphs}
    assert found == {tuple(sorted(counts.items())) for counts in BLOCKS[name]}, report.summary()
    assert relative_error(fused, eager) < PARITY[dtype] * (3 if dtype == torch.bfloat16 else 1)


# transformers LLMs (tiny configs), whole model. Qwen3-Next, 2 layers (gated delta net, full
# attention): the linear-attention layer's causal conv + SiLU fuses (causal_conv1d, channel-last: the model
# transposes token-major activations in and out). Its zero-centred RMSNorm ``norm(x) * (1 + w)``
# is adaln/residual_adaln to the AdaLN family (w a [C] weight): the norms after residual sums are residual_adaln (3), the
# first layer's input norm and the final norm adaln; so are the full attention layer's q/k norms
# (AdaLN runs first), whose partial half-split RoPE then fuses alone (rope, 2 calls).
LLM_WHOLE = {
    "qwen3_next": {"causal_conv1d": 1, "adaln": 4, "residual_adaln": 3, "rope": 2},
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("name", list(LLM_MODELS))
def test_llm_whole_model(name, dtype):
    pytest.importorskip("transformers")
    model, inputs = LLM_MODELS[name](dtype)
    with torch.no_grad():
        baseline = torch.compile(model)(**inputs).last_hidden_state
        torch._dynamo.reset()
        fused = torch.compile(model, backend="fusion_passes", options=CPU_OPTIONS)(**inputs).last_hidden_state
        eager = model(**inputs).last_hidden_state if dtype == torch.float32 else None
    report = fusion_passes.report()
    assert len(report.graphs) == 1
    assert report.counts() == LLM_WHOLE[name], report.summary()
    assert relative_error(fused, baseline) < PARITY[dtype]
    if eager is not None:
        assert relative_error(fused, eager) < PARITY[dtype]
