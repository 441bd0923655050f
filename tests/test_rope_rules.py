"""The RoPE family's CUDA decisions (size rule, kernel limits), checked on fake CUDA graphs on CPU."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F

from fusion_passes import FusionConfig, GraphReport
from fusion_passes.family import PassRun
from fusion_passes.patterns import trace_post_grad
from fusion_passes.rope import ROPE


def interleaved_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """FLUX's rotation: real tables repeated per pair."""
    real, imaginary = x.reshape(*x.shape[:-1], -1, 2).unbind(-1)
    rotated = torch.stack([-imaginary, real], dim=-1).flatten(3)
    return (x.float() * cos + rotated.float() * sin).to(x.dtype)


def normed_rope(x: torch.Tensor, weight: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """norm+rope as FLUX writes it: per-head RMSNorm, then the rotation."""
    return interleaved_rope(F.rms_norm(x, x.shape[-1:], weight, 1e-6), cos, sin)


def cast_free_normed_rope(x: torch.Tensor, weight: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """norm+rope computed in x's own dtype (no upcast, no rounding), as an fp64 model would."""
    x = F.rms_norm(x, x.shape[-1:], weight, 1e-6)
    real, imaginary = x.reshape(*x.shape[:-1], -1, 2).unbind(-1)
    return x * cos + torch.stack([-imaginary, real], dim=-1).flatten(3) * sin


def complex_rope(x: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """Qwen-Image's rotation (rope here: no norm)."""
    rotated = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2)) * freqs
    return torch.view_as_real(rotated).flatten(3).type_as(x)


def joint_normed_rope(
    text: torch.Tensor, image: torch.Tensor, text_weight: torch.Tensor, image_weight: torch.Tensor,
    cos: torch.Tensor, sin: torch.Tensor,
) -> torch.Tensor:
    """FLUX's double block: each stream normalized with its own weight, cat, one rotation."""
    joint = torch.cat([F.rms_norm(text, text.shape[-1:], text_weight, 1e-6), F.rms_norm(image, image.shape[-1:], image_weight, 1e-6)], dim=1)
    return interleaved_rope(joint, cos, sin)


def rewrite_on_fake_cuda(fn: Callable[..., torch.Tensor], *shapes: tuple[tuple[int, ...], torch.dtype]) -> GraphReport:
    """Trace ``fn`` on fake CUDA tensors as a post-grad graph and run the family on it."""
    with torch._subclasses.fake_tensor.FakeTensorMode():
        args = [torch.empty(shape, dtype=dtype, device="cuda") for shape, dtype in shapes]
        graph = trace_post_grad(fn, args).graph
    report = GraphReport(graph_id="fake")
    run = PassRun(FusionConfig(devices=("cuda",)), report)
    ROPE.apply(graph, run)
    ROPE.explain_unfused(graph, run)
    return report


BF16, FP32, C64 = torch.bfloat16, torch.float32, torch.complex64


def normed_shapes(tokens: int, heads: int, head_dim: int, dtype: torch.dtype = BF16) -> list[tuple[tuple[int, ...], torch.dtype]]:
    table = ((1, tokens, 1, head_dim), FP32)
    return [((1, tokens, heads, head_dim), dtype), ((head_dim,), dtype), table, table]


@pytest.mark.parametrize(
    ("tokens", "fused"),
    [(4608, True), (256, True), (64, False)],
    ids=["spec-shape", "256-tokens", "64-tokens"],
)
def test_normed_real_rope_fuses_from_the_measured_break_even(tokens: int, fused: bool) -> None:
    """norm+rope with real tables: fused from 2^19 elements (256 x 24 x 128 won 1.35x, 64 x 24 x 128 lost)."""
    report = rewrite_on_fake_cuda(normed_rope, *normed_shapes(tokens, 24, 128))
    assert len(report.fused) == int(fused)
    if not fused:
        assert "below the measured CUDA break-even" in report.near_misses[0].reason


def test_real_rope_without_a_norm_is_left_to_inductor() -> None:
    """rope with real tables: Inductor's kernel measured faster at every size; the reason says so."""
    table = ((1, 4608, 1, 128), FP32)
    report = rewrite_on_fake_cuda(interleaved_rope, ((1, 4608, 24, 128), BF16), table, table)
    assert report.fused == []
    assert "no norm absorbed: Inductor's own kernel" in report.near_misses[0].reason


def test_complex_rope_fuses_at_any_size() -> None:
    """Inductor runs complex math as eager kernels: a complex rotation fuses even when tiny."""
    report = rewrite_on_fake_cuda(complex_rope, ((1, 8, 2, 16), BF16), ((8, 1, 8), C64))
    assert [record.pattern for record in report.fused] == ["rope[complex]"]


@pytest.mark.parametrize(
    ("fn", "shapes", "reason"),
    [
        (normed_rope, normed_shapes(4096, 2, 1024), "head dim 1024 is over 512"),
        (cast_free_normed_rope, [((1, 4096, 24, 128), torch.float64), ((128,), torch.float64)]
         + [((1, 4096, 1, 128), torch.float64)] * 2, "stream 0's input dtype torch.float64"),
    ],
    ids=["head-dim-1024", "float64"],
)
def test_chains_the_kernel_does_not_take_stay_unfused(fn, shapes, reason: str) -> None:
    """On CUDA a chain outside the kernel's limits is a near miss naming the limit."""
    report = rewrite_on_fake_cuda(fn, *shapes)
    assert report.fused == []
    assert reason in report.near_misses[0].reason
