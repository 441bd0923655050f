"""Spellings that once aborted the compile or returned garbage: Python numbers in a chain, a tensor
eps, operands on the meta device, and a family whose own code fails. A pass never ends a compile:
it fuses what its op can compute and reports the rest."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from expecttest import TestCase
from graph_capture import capture
from helpers import relative_error

import fusion_passes
from fusion_passes.adaln import ADALN

B, L, C = 2, 8, 32
TOLERANCE = 1e-5


def layer_norm(x: torch.Tensor) -> torch.Tensor:
    return F.layer_norm(x, x.shape[-1:], eps=1e-6)


def modulated_residual(r: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The sum is used again after its norm: the two-output residual chain."""
    return r, layer_norm(r) * (1 + scale) + shift



def randn(*shape: int) -> torch.Tensor:
    return torch.randn(shape)


# name -> (fn, fused counts, near-miss reasons (substrings) that must be reported)
SCALAR_SPELLINGS = {
    "norm * 0.5": (lambda x, s, t, res: layer_norm(x) * 0.5, {}, []),
    "norm * 2 + 1": (lambda x, s, t, res: layer_norm(x) * 2 + 1, {}, []),
    "norm * (1 + 0.5) + t": (lambda x, s, t, res: layer_norm(x) * (1 + 0.5) + t, {"adaln": 1}, []),
    "norm * (1 + s) + 0.3": (lambda x, s, t, res: layer_norm(x) * (1 + s) + 0.3, {"adaln": 1}, []),
    "t + (1 + s) * norm, int shift": (lambda x, s, t, res: 2 + (1 + s) * layer_norm(x), {"adaln": 1}, []),
    "res + 0.5 * h": (lambda x, s, t, res: modulated_residual(res + 0.5 * x, s, t), {"residual_adaln": 1}, []),
    "res + h * 0.5": (lambda x, s, t, res: modulated_residual(res + x * 0.5, s, t), {"residual_adaln": 1}, []),
    "res + 2 * h": (lambda x, s, t, res: modulated_residual(res + 2 * x, s, t), {"residual_adaln": 1}, []),
    "0.5 * res + h": (lambda x, s, t, res: modulated_residual(0.5 * res + x, s, t), {"residual_adaln": 1}, []),
    # A constant added to x is no residual stream: the norm part still fuses on its own.
    "x + 1": (lambda x, s, t, res: modulated_residual(x + 1, s, t), {"adaln": 1}, []),
}


@pytest.mark.parametrize("name", SCALAR_SPELLINGS)
def test_python_numbers_in_a_chain(name: str) -> None:
    fn, counts, reasons = SCALAR_SPELLINGS[name]
    args = [randn(B, L, C), randn(B, 1, C), randn(B, 1, C), randn(B, L, C)]
    result = capture(fn, *args)
    assert result.report.counts() == counts
    for reason in reasons:
        assert any(reason in miss.reason for miss in result.report.near_misses), result.report.near_misses
    outputs = result.output if isinstance(result.output, tuple) else (result.output,)
    expected = fn(*(arg.double() for arg in args))
    expected = expected if isinstance(expected, tuple) else (expected,)
    for out, ref in zip(outputs, expected, strict=True):
        assert relative_error(out, ref) < TOLERANCE


class ScalarGraphDiffTest(TestCase):
    """A number the fused op can take becomes a 0-d float32 operand."""

    def test_constant_shift(self) -> None:
        result = capture(lambda x, s: layer_norm(x) * (1 + s) + 0.3, randn(B, L, C), randn(B, 1, C))
        self.assertExpectedInline(result.after, """\
class <lambda>(torch.nn.Module):
    def forward(self, arg0_1: "f32[2, 8, 32]", arg1_1: "f32[2, 1, 32]"):
        full_default: "f32[]" = torch.ops.aten.full.default([], 0.3, dtype = torch.float32, device = device(type='cpu'), pin_memory = False)
        norm_modulate_default: "f32[2, 8, 32]" = torch.ops.fusion_passes.norm_modulate.default(arg0_1, None, None, [arg1_1], [full_default], None, 1e-06, 'layer', True, 'none', torch.float32)
        return (norm_modulate_default,)
""")

    def test_constant_multiplier(self) -> None:
        result = capture(lambda x, t: layer_norm(x) * 1.5 + t, randn(B, L, C), randn(B, 1, C))
        self.assertExpectedInline(result.after, """\
class <lambda>(torch.nn.Module):
    def forward(self, arg0_1: "f32[2, 8, 32]", arg1_1: "f32[2, 1, 32]"):
        full_default: "f32[]" = torch.ops.aten.full.default([], 1.5, dtype = torch.float32, device = device(type='cpu'), pin_memory = False)
        norm_modulate_default: "f32[2, 8, 32]" = torch.ops.fusion_passes.norm_modulate.default(arg0_1, None, None, [full_default], [arg1_1], None, 1e-06, 'layer', False, 'none', torch.float32)
        return (norm_modulate_default,)
""")

    def test_constant_gate(self) -> None:
        fn = lambda res, h, s, t: modulated_residual(res + 0.5 * h, s, t)  # noqa: E731
        result = capture(fn, randn(B, L, C), randn(B, L, C), randn(B, 1, C), randn(B, 1, C))
        self.assertExpectedInline(result.after, """\
class <lambda>(torch.nn.Module):
    def forward(self, arg0_1: "f32[2, 8, 32]", arg1_1: "f32[2, 8, 32]", arg2_1: "f32[2, 1, 32]", arg3_1: "f32[2, 1, 32]"):
        full_default: "f32[]" = torch.ops.aten.full.default([], 0.5, dtype = torch.float32, device = device(type='cpu'), pin_memory = False)
        residual_norm_modulate_default = torch.ops.fusion_passes.residual_norm_modulate.default(arg1_1, arg0_1, [full_default], None, None, [arg2_1], [arg3_1], None, 1e-06, 'layer', True, 'none', torch.float32, torch.float32)
        getitem_2: "f32[2, 8, 32]" = residual_norm_modulate_default[0]
        getitem_3: "f32[2, 8, 32]" = residual_norm_modulate_default[1]
        return (getitem_3, getitem_2)
""")


def rms_norm_tensor_eps(x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)


def test_tensor_eps_in_adaln_is_a_near_miss() -> None:
    x, scale, shift, eps = randn(B, L, C), randn(B, 1, C), randn(B, 1, C), torch.tensor(1e-6)
    fn = lambda x, s, t, eps: rms_norm_tensor_eps(x, eps) * (1 + s) + t  # noqa: E731
    result = capture(fn, x, scale, shift, eps)
    assert result.report.counts() == {}
    assert any("eps is a tensor (an input of the compiled graph), not a number" in miss.reason for miss in result.report.near_misses)
    assert relative_error(result.output, fn(x, scale, shift, eps)) < TOLERANCE


def test_tensor_eps_in_a_qk_norm_is_not_absorbed() -> None:
    def qk_norm_rope(q, weight, eps, cos, sin):
        normed = rms_norm_tensor_eps(q, eps) * weight
        pairs = normed.reshape(*normed.shape[:-1], -1, 2).unbind(-1)
        rotated = torch.stack([-pairs[1], pairs[0]], dim=-1).flatten(3)
        return normed * cos + rotated * sin

    q, weight, eps = randn(B, L, 3, 16), randn(16), torch.tensor(1e-6)
    cos, sin = randn(1, L, 1, 16), randn(1, L, 1, 16)
    result = capture(qk_norm_rope, q, weight, eps, cos, sin)
    assert [record.pattern for record in result.report.fused] == [
        "rope[interleaved] (norm not absorbed: the norm's eps is a tensor (an input of the compiled graph), not a number)"
    ]
    assert relative_error(result.output, qk_norm_rope(q, weight, eps, cos, sin)) < TOLERANCE


def meta(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.empty(shape, dtype=dtype, device="meta")


ops = torch.ops.fusion_passes
x = randn(2, 4, 8)
MIXED_DEVICE_CALLS = {
    "norm_modulate scale": (
        lambda: ops.norm_modulate(x, None, None, [meta(2, 1, 8)], [], None, 1e-6, "layer", True, "none", torch.float32),
        r"scale: expected device cpu \(x's\), got meta",
    ),
    "norm_modulate x": (
        lambda: ops.norm_modulate(meta(2, 4, 8), None, None, [x[:, :1]], [], None, 1e-6, "layer", True, "none", torch.float32),
        r"scale: expected device meta \(x's\), got cpu",
    ),
    "residual_norm_modulate residual": (
        lambda: ops.residual_norm_modulate(
            meta(2, 4, 8), x, [], None, None, [x[:, :1]], [], None, 1e-6, "layer", True, "none", torch.float32, torch.float32
        ),
        r"residual: expected device cpu \(x's\), got meta",
    ),
    "norm_modulate_pair shift2": (
        lambda: ops.norm_modulate_pair(
            x, None, None, [x[:, :1]], [x[:, :1]], [x[:, :1]], [meta(2, 1, 8)], 1e-6, "layer", True, "none",
            torch.float32, torch.float32,
        ),
        r"shift2: expected device cpu \(x's\), got meta",
    ),
    "rope cos": (
        lambda: ops.rope(
            [randn(1, 4, 2, 8)], [None], [0.0], [meta(4, 1, 8)], [randn(4, 1, 8)], [0, 2, 1, 0], [0, 2, 1, 0],
            "none", "none", 8, True, 1, torch.float32,
        ),
        r"cos\[0\]: expected device cpu \(xs\[0\]'s\), got meta",
    ),
    "rope weight": (
        lambda: ops.rope(
            [randn(1, 4, 2, 8)], [meta(8)], [1e-6], [None], [None], [0] * 4, [0] * 4, "head", "none", 8, True, 1,
            torch.float32,
        ),
        r"weights\[0\]: expected device cpu \(xs\[0\]'s\), got meta",
    ),
    "causal_conv1d weight": (
        lambda: ops.causal_conv1d(randn(1, 4, 10), meta(4, 3), None, "silu", torch.float32, torch.float32),
        r"weight: expected device cpu \(x's\), got meta",
    ),
    "causal_conv1d_varlen weight": (
        lambda: fusion_passes.causal_conv1d_varlen(randn(4, 10), meta(4, 3), torch.tensor([0, 10], dtype=torch.int32)),
        r"weight: expected device cpu \(x's\), got meta",
    ),
}


@pytest.mark.parametrize("name", MIXED_DEVICE_CALLS)
def test_mixed_devices_raise_instead_of_returning_garbage(name: str) -> None:
    call, message = MIXED_DEVICE_CALLS[name]
    with pytest.raises(ValueError, match=message):
        call()


def test_all_meta_operands_still_infer_shapes() -> None:
    out = ops.norm_modulate(meta(2, 4, 8), None, None, [meta(2, 1, 8)], [], None, 1e-6, "layer", True, "none", torch.bfloat16)
    assert out.device.type == "meta" and out.shape == (2, 4, 8) and out.dtype == torch.bfloat16


@pytest.mark.parametrize("stage", ["legality", "replacement"])
def test_a_failing_family_leaves_the_chain_to_inductor(stage: str) -> None:
    def broken(chain):
        raise RuntimeError("planted failure")

    setattr(ADALN, stage, broken)  # on the instance: hides the class's method until deleted
    try:
        fn = lambda x, s, t: layer_norm(x) * (1 + s) + t  # noqa: E731
        args = [randn(B, L, C), randn(B, 1, C), randn(B, 1, C)]
        result = capture(fn, *args)
    finally:
        delattr(ADALN, stage)
    assert result.report.counts() == {}
    stage_name = "check" if stage == "legality" else "rewrite"
    assert any(
        miss.reason.startswith(f"the fusion's {stage_name} failed on this chain (RuntimeError: planted failure)")
        for miss in result.report.near_misses
    ), result.report.near_misses
    assert relative_error(result.output, fn(*args)) < TOLERANCE


def test_complex128_rope_with_an_fp64_result_computes_in_fp64() -> None:
    # Computed in fp32 before (relative error ~4e-8 where eager is exact).
    def rope(x, freqs):
        rotated = torch.view_as_complex(x.double().reshape(*x.shape[:-1], -1, 2)) * freqs
        return torch.view_as_real(rotated).flatten(3)

    x = randn(1, 6, 2, 16)
    freqs = torch.polar(torch.ones(6, 1, 8, dtype=torch.float64), torch.randn(6, 1, 8, dtype=torch.float64))
    result = capture(rope, x, freqs)
    assert result.report.counts() == {"rope": 1}
    assert result.output.dtype == torch.float64
    assert relative_error(result.output, rope(x, freqs)) < 1e-13
