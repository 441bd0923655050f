"""The diffusers models the fusions target (tiny random configs) compiled with the backend on CPU.

Whole transformer and each repeated block alone (diffusers' ``compile_repeated_blocks``), fp32 and
bf16: the exact number of fusions of each kind, and outputs matching ``torch.compile`` alone.
"""

from __future__ import annotations

import collections

import pytest
import torch
from tiny_models import LLM_MODELS, MODELS
from torch._inductor.utils import run_and_get_code

import fusion_passes
from fusion_passes.report import FusionRecord

pytest.importorskip("diffusers")

CPU_OPTIONS = {"fusion_passes": {"devices": ("cpu",)}}
# Relative error of the backend's output against torch.compile alone (fp32 also against eager).
PARITY = {torch.float32: 1e-4, torch.bfloat16: 2e-2}


def kind(record: FusionRecord) -> str:
    """A fusion's chain kind: F1 (adaln), F2 (residual_adaln), F4 (rope with its norm), F5 (rope alone)."""
    if record.fusion == "rope":
        return "F4" if " -> rope[" in record.pattern else "F5"
    return {"adaln": "F1", "residual_adaln": "F2"}[record.fusion]


def kinds(graph: fusion_passes.GraphReport) -> dict[str, int]:
    """Fusions of a graph by chain kind (F3: F1 or F2 with a per-row choice, counted again)."""
    counts = collections.Counter(kind(record) for record in graph.fused)
    counts["F3"] = sum("select01" in record.pattern for record in graph.fused)
    return {kind: count for kind, count in counts.items() if count}


# Whole transformer: every modulated norm fuses. F2 where the norm's input is a residual sum used
# later; F1 where it is a graph input, the patch embedding, a cat, or a sum used only by the norm
# (the last block's, whose other use the model drops). Counts per model, as reasoned in the notes:
# - FLUX (2 double, 2 single): double blocks 2 x (img, txt) x (norm1, norm2); norm1 of the first
#   double block and of each single block (after a cat) are F1, as is norm_out; the rest F2.
# - Qwen-Image (2 blocks): as FLUX's double blocks; the second block's text norm2 is dead code
#   (the model returns only the image stream) and its text norm1 input is used only there. The
#   edit model (zero_cond_t) chooses the image stream's modulation per token: F3 on those 4.
# - Wan (2 blocks): norm1 (modulated) and norm3 (after the ungated cross-attention residual);
#   norm2 is an unmodulated cross-attention norm.
# - HunyuanVideo (2 double, 2 single, refiner): as FLUX, except that the text stream enters the
#   first double block from the token refiner's residual sum (F2); the refiner's norms are
#   unmodulated.
#
# RoPE: q and k of every self-attention fuse with their RMSNorm (F4), one call per q or k:
# - FLUX: double blocks cat the normalized text and image streams before one rotation over the
#   joint sequence (two streams); single blocks rotate the normalized joint q, k.
# - Qwen-Image: each stream rotated with its own complex table, then cat (two streams).
# - Wan: RMSNorm over all heads before the head split, slice-assignment rotation.
# - HunyuanVideo: double blocks rotate the image stream and cat the normalized text unrotated;
#   single blocks rotate the image prefix of one normalized sequence (two streams each).
WHOLE = {
    "flux": {"F1": 5, "F2": 6, "F4": 8},
    "qwen_image": {"F1": 4, "F2": 4, "F4": 4},
    "qwen_image_edit": {"F1": 4, "F2": 4, "F3": 4, "F4": 4},
    "wan": {"F1": 2, "F2": 3, "F4": 4},
    "wan_per_token": {"F1": 2, "F2": 3, "F4": 4},
    "hunyuan_video": {"F1": 4, "F2": 7, "F4": 8},
}

# Each repeated block compiled alone: its input is a graph input, so each block's first norms are
# F1 and the norms after its attention residual F2; the rotations (RoPE tables now graph inputs)
# fuse as in the whole model. One entry per block class (HunyuanVideo's
# token refiner blocks have no modulated norm).
BLOCKS = {
    "flux": [{"F1": 2, "F2": 2, "F4": 2}, {"F1": 1, "F4": 2}],
    "qwen_image": [{"F1": 2, "F2": 2, "F4": 2}],
    "qwen_image_edit": [{"F1": 2, "F2": 2, "F3": 2, "F4": 2}],
    "wan": [{"F1": 1, "F2": 1, "F4": 2}],
    "wan_per_token": [{"F1": 1, "F2": 1, "F4": 2}],
    "hunyuan_video": [{"F1": 2, "F2": 2, "F4": 2}, {"F1": 1, "F4": 2}, {}],
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


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.double() - ref.double()).norm() / ref.double().norm()).item()


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
# attention): the linear-attention layer's causal conv + SiLU fuses (F6, channel-last: the model
# transposes token-major activations in and out). Its zero-centred RMSNorm ``norm(x) * (1 + w)``
# is F1/F2 to the AdaLN family (w a [C] weight): the norms after residual sums are F2 (3), the
# first layer's input norm and the final norm F1; so are the full attention layer's q/k norms
# (AdaLN runs first), whose partial half-split RoPE then fuses alone (F5, 2 calls).
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
