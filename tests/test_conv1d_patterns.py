"""Causal conv1d pattern: graph before/after per spelling, numerics of the rewritten graph, near misses."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import pytest
import torch
import torch.nn.functional as F
import helpers
from graph_capture import Capture, capture
from helpers import assert_matches_fp64

import fusion_passes

B, C, L = 2, 8, 12
BF16 = torch.bfloat16


# --- The conv, as models write it -----------------------------------------------------------------


def transformers_causal_conv1d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """transformers' ``causal_conv1d_fn`` fallback (Qwen3-Next, gated delta net): weight ``[C, K]``."""
    seq_len = x.shape[-1]
    out = F.conv1d(x.to(weight.dtype), weight=weight.unsqueeze(1), bias=bias, padding=weight.shape[-1] - 1, groups=x.shape[1])
    return F.silu(out[:, :, :seq_len]).to(x.dtype)


def channel_last_conv(x_blc: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Token-major activations through transposes, no activation: ``[..., :L]`` on the conv of ``x.transpose(1, 2)``."""
    x = x_blc.transpose(1, 2)
    out = F.conv1d(x, weight[:, None, :], None, padding=weight.shape[-1] - 1, groups=x.shape[1])[..., : x.shape[-1]]
    return out.transpose(1, 2)


def silu_after_transpose_back(x_blc: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Token-major activations, the SiLU applied after the transpose back: ``F.silu(conv(x.transpose(1, 2))[..., :L].transpose(1, 2))``."""
    x = x_blc.transpose(1, 2)
    out = F.conv1d(x, weight[:, None, :], None, padding=weight.shape[-1] - 1, groups=x.shape[1])[..., : x.shape[-1]]
    return F.silu(out.transpose(1, 2))


class MambaStyleMixer(torch.nn.Module):
    """An ``nn.Conv1d(C, C, K, groups=C, padding=K - 1)`` module cut to L, then SiLU (Mamba-style blocks)."""

    def __init__(self, channels: int, width: int) -> None:
        super().__init__()
        self.conv1d = torch.nn.Conv1d(channels, channels, width, groups=channels, padding=width - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x ``[B, C, L]``."""
        return F.silu(self.conv1d(x)[..., : x.shape[-1]])


def randn(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Fresh random values (never zeros: they hide unwritten outputs)."""
    return torch.randn(*shape, dtype=dtype)


def conv_records(result: Capture) -> list[str]:
    """The pattern names of the conv fusions in a capture."""
    return [record.pattern for record in result.report.fused if record.fusion == "causal_conv1d"]


def conv_near_misses(result: Capture) -> list[str]:
    """The reasons of the conv near misses in a capture."""
    return [miss.reason for miss in result.report.near_misses if miss.fusion == "causal_conv1d"]


class GraphDiffTest(helpers.GraphDiffTest):
    """Each spelling's post-grad graph before and after the pass, pinned, with fp64 numerics."""

    def fused(self, result: Capture) -> list[str]:
        """The conv fusions' patterns."""
        return conv_records(result)

    def check(self, fn: Callable[..., Any], args: Sequence[Any], dtype: torch.dtype, expected: Any) -> Capture:
        """The shared check, from a fixed seed, and the output's dtype."""
        torch.manual_seed(0)
        result = super().check(fn, args, dtype, expected)
        assert result.output.dtype == dtype
        return result

    def test_transformers_fp32_with_bias(self) -> None:
        """fp32: conv, slice and the decomposed SiLU become one op; bias passed, no rounding before SiLU."""
        result = self.check(transformers_causal_conv1d, [randn(B, C, L), randn(C, 4), randn(C)], torch.float32,
                            ["conv1d+silu [channel-first, K=4]"])
        self.assertExpectedInline(result.before, """\
class <lambda>(torch.nn.Module):
    def forward(self, arg0_1: "f32[2, 8, 12]", arg1_1: "f32[8, 4]", arg2_1: "f32[8]"):
        unsqueeze: "f32[8, 1, 4]" = torch.ops.aten.unsqueeze.default(arg1_1, 1)
        convolution: "f32[2, 8, 15]" = torch.ops.aten.convolution.default(arg0_1, unsqueeze, arg2_1, [1], [3], [1], False, [0], 8)
        slice_1: "f32[2, 8, 12]" = torch.ops.aten.slice.Tensor(convolution, 2, 0, 12)
        neg: "f32[2, 8, 12]" = torch.ops.aten.neg.default(slice_1)
        exp: "f32[2, 8, 12]" = torch.ops.aten.exp.default(neg)
        add: "f32[2, 8, 12]" = torch.ops.aten.add.Tensor(exp, 1)
        div: "f32[2, 8, 12]" = torch.ops.aten.div.Tensor(slice_1, add)
        return (div,)
""")
        self.assertExpectedInline(result.after, """\
class <lambda>(torch.nn.Module):
    def forward(self, arg0_1: "f32[2, 8, 12]", arg1_1: "f32[8, 4]", arg2_1: "f32[8]"):
        unsqueeze: "f32[8, 1, 4]" = torch.ops.aten.unsqueeze.default(arg1_1, 1)
        select_int: "f32[8, 4]" = torch.ops.aten.select.int(unsqueeze, 1, 0)
        causal_conv1d_default: "f32[2, 8, 12]" = torch.ops.fusion_passes.causal_conv1d.default(arg0_1, select_int, arg2_1, 'silu', torch.float32, torch.float32)
        return (causal_conv1d_default,)
""")

    def test_transformers_bf16(self) -> None:
        """bf16: the conv's bf16 result is upcast for SiLU and cast back; the op rounds to bf16 before SiLU, as the graph does."""
        result = self.check(transformers_causal_conv1d, [randn(B, C, L, dtype=BF16), randn(C, 4, dtype=BF16), None], BF16,
                            ["conv1d+silu/upcast->cast [channel-first, K=4]"])
        self.assertExpectedInline(result.before, """\
class <lambda>(torch.nn.Module):
    def forward(self, arg0_1: "bf16[2, 8, 12]", arg1_1: "bf16[8, 4]"):
        unsqueeze: "bf16[8, 1, 4]" = torch.ops.aten.unsqueeze.default(arg1_1, 1)
        convolution: "bf16[2, 8, 15]" = torch.ops.aten.convolution.default(arg0_1, unsqueeze, None, [1], [3], [1], False, [0], 8)
        slice_1: "bf16[2, 8, 12]" = torch.ops.aten.slice.Tensor(convolution, 2, 0, 12)
        convert_element_type: "f32[2, 8, 12]" = torch.ops.prims.convert_element_type.default(slice_1, torch.float32)
        neg: "f32[2, 8, 12]" = torch.ops.aten.neg.default(convert_element_type)
        exp: "f32[2, 8, 12]" = torch.ops.aten.exp.default(neg)
        add: "f32[2, 8, 12]" = torch.ops.aten.add.Tensor(exp, 1)
        div: "f32[2, 8, 12]" = torch.ops.aten.div.Tensor(convert_element_type, add)
        convert_element_type_1: "bf16[2, 8, 12]" = torch.ops.prims.convert_element_type.default(div, torch.bfloat16)
        return (convert_element_type_1,)
""")
        self.assertExpectedInline(result.after, """\
class <lambda>(torch.nn.Module):
    def forward(self, arg0_1: "bf16[2, 8, 12]", arg1_1: "bf16[8, 4]"):
        unsqueeze: "bf16[8, 1, 4]" = torch.ops.aten.unsqueeze.default(arg1_1, 1)
        select_int: "bf16[8, 4]" = torch.ops.aten.select.int(unsqueeze, 1, 0)
        causal_conv1d_default: "bf16[2, 8, 12]" = torch.ops.fusion_passes.causal_conv1d.default(arg0_1, select_int, None, 'silu', torch.bfloat16, torch.bfloat16)
        return (causal_conv1d_default,)
""")

    def test_transformers_bf16_x_fp32_weight(self) -> None:
        """bf16 x, fp32 weight: ``x.to(w.dtype)`` is an exact upcast the op does itself; the trailing cast is its out dtype."""
        result = self.check(transformers_causal_conv1d, [randn(B, C, L, dtype=BF16), randn(C, 4), None], BF16,
                            ["conv1d+silu->cast [channel-first, K=4]"])
        self.assertExpectedInline(result.before, """\
class <lambda>(torch.nn.Module):
    def forward(self, arg0_1: "bf16[2, 8, 12]", arg1_1: "f32[8, 4]"):
        convert_element_type: "f32[2, 8, 12]" = torch.ops.prims.convert_element_type.default(arg0_1, torch.float32)
        unsqueeze: "f32[8, 1, 4]" = torch.ops.aten.unsqueeze.default(arg1_1, 1)
        convolution: "f32[2, 8, 15]" = torch.ops.aten.convolution.default(convert_element_type, unsqueeze, None, [1], [3], [1], False, [0], 8)
        slice_1: "f32[2, 8, 12]" = torch.ops.aten.slice.Tensor(convolution, 2, 0, 12)
        neg: "f32[2, 8, 12]" = torch.ops.aten.neg.default(slice_1)
        exp: "f32[2, 8, 12]" = torch.ops.aten.exp.default(neg)
        add: "f32[2, 8, 12]" = torch.ops.aten.add.Tensor(exp, 1)
        div: "f32[2, 8, 12]" = torch.ops.aten.div.Tensor(slice_1, add)
        convert_element_type_1: "bf16[2, 8, 12]" = torch.ops.prims.convert_element_type.default(div, torch.bfloat16)
        return (convert_element_type_1,)
""")
        self.assertExpectedInline(result.after, """\
class <lambda>(torch.nn.Module):
    def forward(self, arg0_1: "bf16[2, 8, 12]", arg1_1: "f32[8, 4]"):
        unsqueeze: "f32[8, 1, 4]" = torch.ops.aten.unsqueeze.default(arg1_1, 1)
        select_int: "f32[8, 4]" = torch.ops.aten.select.int(unsqueeze, 1, 0)
        causal_conv1d_default: "bf16[2, 8, 12]" = torch.ops.fusion_passes.causal_conv1d.default(arg0_1, select_int, None, 'silu', torch.float32, torch.bfloat16)
        return (causal_conv1d_default,)
""")

    def test_channel_last_without_activation(self) -> None:
        """Token-major x through transposes, K = 2: the op reads the transposed view and writes channel-last (the transpose back is a view of it)."""
        result = self.check(channel_last_conv, [randn(B, L, C), randn(C, 2)], torch.float32, ["conv1d [channel-last, K=2]"])
        self.assertExpectedInline(result.before, """\
class <lambda>(torch.nn.Module):
    def forward(self, arg0_1: "f32[2, 12, 8]", arg1_1: "f32[8, 2]"):
        permute: "f32[2, 8, 12]" = torch.ops.aten.permute.default(arg0_1, [0, 2, 1])
        unsqueeze: "f32[8, 1, 2]" = torch.ops.aten.unsqueeze.default(arg1_1, 1)
        convolution: "f32[2, 8, 13]" = torch.ops.aten.convolution.default(permute, unsqueeze, None, [1], [1], [1], False, [0], 8)
        slice_1: "f32[2, 8, 12]" = torch.ops.aten.slice.Tensor(convolution, 2, 0, 12)
        permute_1: "f32[2, 12, 8]" = torch.ops.aten.permute.default(slice_1, [0, 2, 1])
        return (permute_1,)
""")
        self.assertExpectedInline(result.after, """\
class <lambda>(torch.nn.Module):
    def forward(self, arg0_1: "f32[2, 12, 8]", arg1_1: "f32[8, 2]"):
        permute: "f32[2, 8, 12]" = torch.ops.aten.permute.default(arg0_1, [0, 2, 1])
        unsqueeze: "f32[8, 1, 2]" = torch.ops.aten.unsqueeze.default(arg1_1, 1)
        select_int: "f32[8, 2]" = torch.ops.aten.select.int(unsqueeze, 1, 0)
        causal_conv1d_default: "f32[2, 8, 12]" = torch.ops.fusion_passes.causal_conv1d.default(permute, select_int, None, 'none', torch.float32, torch.float32)
        permute_1: "f32[2, 12, 8]" = torch.ops.aten.permute.default(causal_conv1d_default, [0, 2, 1])
        return (permute_1,)
""")

    def test_channel_last_silu_after_transpose_back(self) -> None:
        """SiLU after the transpose back to [B, L, C]: absorbed into the op (pointwise, so it commutes with the transpose), which is then transposed the same way."""
        result = self.check(silu_after_transpose_back, [randn(B, L, C), randn(C, 4)], torch.float32,
                            ["conv1d+silu [channel-last, K=4]"])
        self.assertExpectedInline(result.before, """\
class <lambda>(torch.nn.Module):
    def forward(self, arg0_1: "f32[2, 12, 8]", arg1_1: "f32[8, 4]"):
        permute: "f32[2, 8, 12]" = torch.ops.aten.permute.default(arg0_1, [0, 2, 1])
        unsqueeze: "f32[8, 1, 4]" = torch.ops.aten.unsqueeze.default(arg1_1, 1)
        convolution: "f32[2, 8, 15]" = torch.ops.aten.convolution.default(permute, unsqueeze, None, [1], [3], [1], False, [0], 8)
        slice_1: "f32[2, 8, 12]" = torch.ops.aten.slice.Tensor(convolution, 2, 0, 12)
        permute_1: "f32[2, 12, 8]" = torch.ops.aten.permute.default(slice_1, [0, 2, 1])
        neg: "f32[2, 12, 8]" = torch.ops.aten.neg.default(permute_1)
        exp: "f32[2, 12, 8]" = torch.ops.aten.exp.default(neg)
        add: "f32[2, 12, 8]" = torch.ops.aten.add.Tensor(exp, 1)
        div: "f32[2, 12, 8]" = torch.ops.aten.div.Tensor(permute_1, add)
        return (div,)
""")
        self.assertExpectedInline(result.after, """\
class <lambda>(torch.nn.Module):
    def forward(self, arg0_1: "f32[2, 12, 8]", arg1_1: "f32[8, 4]"):
        permute: "f32[2, 8, 12]" = torch.ops.aten.permute.default(arg0_1, [0, 2, 1])
        unsqueeze: "f32[8, 1, 4]" = torch.ops.aten.unsqueeze.default(arg1_1, 1)
        select_int: "f32[8, 4]" = torch.ops.aten.select.int(unsqueeze, 1, 0)
        causal_conv1d_default: "f32[2, 8, 12]" = torch.ops.fusion_passes.causal_conv1d.default(permute, select_int, None, 'silu', torch.float32, torch.float32)
        permute_default: "f32[2, 12, 8]" = torch.ops.aten.permute.default(causal_conv1d_default, [0, 2, 1])
        return (permute_default,)
""")

    def test_channel_last_silu_after_transpose_back_bf16(self) -> None:
        """bf16: the SiLU runs on the upcast of the transposed bf16 conv and is cast back; the op rounds before SiLU, as the graph does."""
        result = self.check(silu_after_transpose_back, [randn(B, L, C, dtype=BF16), randn(C, 4, dtype=BF16)], BF16,
                            ["conv1d+silu/upcast->cast [channel-last, K=4]"])
        self.assertExpectedInline(result.after, """\
class <lambda>(torch.nn.Module):
    def forward(self, arg0_1: "bf16[2, 12, 8]", arg1_1: "bf16[8, 4]"):
        permute: "bf16[2, 8, 12]" = torch.ops.aten.permute.default(arg0_1, [0, 2, 1])
        unsqueeze: "bf16[8, 1, 4]" = torch.ops.aten.unsqueeze.default(arg1_1, 1)
        select_int: "bf16[8, 4]" = torch.ops.aten.select.int(unsqueeze, 1, 0)
        causal_conv1d_default: "bf16[2, 8, 12]" = torch.ops.fusion_passes.causal_conv1d.default(permute, select_int, None, 'silu', torch.bfloat16, torch.bfloat16)
        permute_default: "bf16[2, 12, 8]" = torch.ops.aten.permute.default(causal_conv1d_default, [0, 2, 1])
        return (permute_default,)
""")

    def test_conv1d_module_with_bias(self) -> None:
        """An ``nn.Conv1d`` module (weight ``[C, 1, K]``, bias), K = 3, then SiLU."""
        torch.manual_seed(0)
        module = MambaStyleMixer(C, 3)
        x = randn(B, C, L)
        with torch.no_grad():  # inference: a training graph saves the conv output for backward
            result = capture(module, x)
        self.assertEqual(conv_records(result), ["conv1d+silu [channel-first, K=3]"])
        with torch.no_grad():
            expected = module.double()(x.double())
        self.assertLess(((result.output.double() - expected).norm() / expected.norm()).item(), 1e-5)
        self.assertExpectedInline(result.before, """\
class <lambda>(torch.nn.Module):
    def forward(self, arg0_1: "f32[8, 1, 3]", arg1_1: "f32[8]", arg2_1: "f32[2, 8, 12]"):
        convolution: "f32[2, 8, 14]" = torch.ops.aten.convolution.default(arg2_1, arg0_1, arg1_1, [1], [2], [1], False, [0], 8)
        slice_1: "f32[2, 8, 12]" = torch.ops.aten.slice.Tensor(convolution, 2, 0, 12)
        neg: "f32[2, 8, 12]" = torch.ops.aten.neg.default(slice_1)
        exp: "f32[2, 8, 12]" = torch.ops.aten.exp.default(neg)
        add: "f32[2, 8, 12]" = torch.ops.aten.add.Tensor(exp, 1)
        div: "f32[2, 8, 12]" = torch.ops.aten.div.Tensor(slice_1, add)
        return (div,)
""")
        self.assertExpectedInline(result.after, """\
class <lambda>(torch.nn.Module):
    def forward(self, arg0_1: "f32[8, 1, 3]", arg1_1: "f32[8]", arg2_1: "f32[2, 8, 12]"):
        select_int: "f32[8, 3]" = torch.ops.aten.select.int(arg0_1, 1, 0)
        causal_conv1d_default: "f32[2, 8, 12]" = torch.ops.fusion_passes.causal_conv1d.default(arg2_1, select_int, arg1_1, 'silu', torch.float32, torch.float32)
        return (causal_conv1d_default,)
""")


@pytest.mark.parametrize("width", [2, 3, 4])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=["fp32", "bf16", "fp16"])
def test_every_width_and_dtype_fuses(width: int, dtype: torch.dtype) -> None:
    """K from 2 to 4 in every supported dtype: one fusion, fp64 parity."""
    args = [randn(B, C, L, dtype=dtype), randn(C, width, dtype=dtype), randn(C, dtype=dtype)]
    result = capture(transformers_causal_conv1d, *args)
    assert len(conv_records(result)) == 1
    assert result.output.dtype == dtype
    assert_matches_fp64(result, transformers_causal_conv1d, args, dtype)


def test_dynamic_length_fuses() -> None:
    """A symbolic L: the slice end is provably L, so the chain fuses and the op takes each call's L."""
    weight = randn(C, 4)
    compiled = torch.compile(transformers_causal_conv1d, backend="fusion_passes",
                             options={"fusion_passes": {"devices": ("cpu",)}})
    for length in (5, 17):
        x = randn(B, C, length)
        torch._dynamo.mark_dynamic(x, 2)
        torch.testing.assert_close(compiled(x, weight, None), transformers_causal_conv1d(x, weight, None), rtol=1e-5, atol=1e-5)
    assert fusion_passes.report().counts().get("causal_conv1d") == 1, fusion_passes.report().summary()


# --- Near misses: none of these may fire -----------------------------------------------------------


def conv_with(padding: int | None = None, dilation: int = 1, stride: int = 1, start: int = 0, stop: int | None = None,
              groups: int | None = None) -> Callable[..., torch.Tensor]:
    """A conv1d + slice + SiLU that differs from the causal depthwise form where an argument says."""

    def fn(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        width = weight.shape[-1]
        out = F.conv1d(x, weight, None, stride=stride, padding=width - 1 if padding is None else padding,
                       dilation=dilation, groups=x.shape[1] if groups is None else groups)
        return F.silu(out[..., start: x.shape[-1] if stop is None else stop])

    return fn


@pytest.mark.parametrize(
    "fn, weight_shape, reason",
    [
        (conv_with(padding=2), (C, 1, 4), "padding: expected [3] (K - 1: causal), got [2]"),
        # A dilated causal conv pads (K - 1) * dilation and cuts to L.
        (conv_with(padding=6, dilation=2), (C, 1, 4), "dilation: expected [1], got [2]"),
        (conv_with(stride=2, stop=4), (C, 1, 4), "stride: expected [1], got [2]"),
        (conv_with(start=3, stop=L + 3), (C, 1, 4), "not cut to its first L = 12 outputs"),
        (conv_with(stop=L - 1), (C, 1, 4), "not cut to its first L = 12 outputs"),
        (conv_with(groups=1), (C, C, 4), "weight: expected [C, 1, K] (depthwise, C = 8), got (8, 8, 4)"),
        (conv_with(groups=2), (C, C // 2, 4), "weight: expected [C, 1, K] (depthwise, C = 8), got (8, 4, 4)"),
        (conv_with(), (C, 1, 9), "weight: expected K in 2..8 taps, got 9"),
    ],
    ids=["padding", "dilation", "stride", "non-causal-slice", "short-slice", "groups-1", "groups-2", "too-wide"],
)
def test_near_miss_does_not_fuse(fn: Callable[..., torch.Tensor], weight_shape: tuple[int, ...], reason: str) -> None:
    """Not the causal depthwise form: no fusion, the reason names what differs; output unchanged."""
    x, weight = randn(B, C, L), randn(*weight_shape)
    result = capture(fn, x, weight)
    assert conv_records(result) == []
    reasons = conv_near_misses(result)
    assert reasons and all(reason in found for found in reasons), reasons
    torch.testing.assert_close(result.output, fn(x, weight), rtol=1e-5, atol=1e-5)


def test_convolution_used_elsewhere_does_not_fuse() -> None:
    """The padded conv output is also returned: its K - 1 extra outputs are needed, nothing fuses."""

    def fn(x: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = F.conv1d(x, weight.unsqueeze(1), None, padding=3, groups=C)
        return F.silu(out[..., :L]), out

    result = capture(fn, randn(B, C, L), randn(C, 4))
    assert conv_records(result) == []


def test_conv_output_used_elsewhere_fuses_without_activation() -> None:
    """The cut conv is also returned: the conv alone fuses (one op), the SiLU stays a separate use of it."""

    def fn(x: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = F.conv1d(x, weight.unsqueeze(1), None, padding=3, groups=C)[..., :L]
        return F.silu(out), out

    x, weight = randn(B, C, L), randn(C, 4)
    result = capture(fn, x, weight)
    assert conv_records(result) == ["conv1d [channel-first, K=4]"]
    for got, expected in zip(result.output, fn(x, weight)):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_transposed_conv_used_elsewhere_fuses_without_activation() -> None:
    """The transposed cut conv is also returned: the conv alone fuses, the SiLU after the transpose stays Inductor's."""

    def fn(x_blc: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x_blc.transpose(1, 2)
        out = F.conv1d(x, weight.unsqueeze(1), None, padding=3, groups=C)[..., :L].transpose(1, 2)
        return F.silu(out), out

    x, weight = randn(B, L, C), randn(C, 4)
    result = capture(fn, x, weight)
    assert conv_records(result) == ["conv1d [channel-last, K=4]"]
    for got, expected in zip(result.output, fn(x, weight)):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_near_miss_with_silu_after_transpose_back_names_the_whole_chain() -> None:
    """A non-causal padding with the SiLU after the transpose back: the conv + SiLU chain is the one near miss, with the
    reason (the conv alone, which the pass tries next, is the same chain: reported once)."""

    def fn(x_blc: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        x = x_blc.transpose(1, 2)
        return F.silu(F.conv1d(x, weight.unsqueeze(1), None, padding=2, groups=C)[..., :L].transpose(1, 2))

    x, weight = randn(B, L, C), randn(C, 4)
    result = capture(fn, x, weight)
    assert conv_records(result) == []
    misses = [(miss.pattern, miss.reason) for miss in result.report.near_misses if miss.fusion == "causal_conv1d"]
    reason = "padding: expected [3] (K - 1: causal), got [2]"
    assert misses == [("conv1d+silu", reason)], misses
    torch.testing.assert_close(result.output, fn(x, weight), rtol=1e-5, atol=1e-5)


def test_float64_does_not_fuse() -> None:
    """fp64 is not a kernel dtype: a near miss naming it."""
    result = capture(transformers_causal_conv1d, randn(B, C, L).double(), randn(C, 4).double(), None)
    assert conv_records(result) == []
    # In the user's terms, not the op's argument name (conv_dtype).
    assert conv_near_misses(result) == [
        "the dtype of the convolution's result before the activation: expected one of "
        "['torch.bfloat16', 'torch.float16', 'torch.float32'], got torch.float64"
    ]


def test_non_silu_activation_fuses_the_conv_only() -> None:
    """GELU after the conv is not the op's activation: the conv fuses alone, GELU stays Inductor's."""

    def fn(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return F.gelu(F.conv1d(x, weight.unsqueeze(1), None, padding=3, groups=C)[..., :L])

    x, weight = randn(B, C, L), randn(C, 4)
    result = capture(fn, x, weight)
    assert conv_records(result) == ["conv1d [channel-first, K=4]"]
    torch.testing.assert_close(result.output, fn(x, weight), rtol=1e-5, atol=1e-5)


def test_symbolic_width_does_not_fuse() -> None:
    """Every size symbolic (``dynamic=True``): K is a kernel constant, so a symbolic K is a near miss naming it."""
    compiled = torch.compile(transformers_causal_conv1d, backend="fusion_passes", dynamic=True,
                             options={"fusion_passes": {"devices": ("cpu",)}})
    x, weight = randn(B, C, L), randn(C, 4)
    torch.testing.assert_close(compiled(x, weight, None), transformers_causal_conv1d(x, weight, None), rtol=1e-5, atol=1e-5)
    (graph,) = fusion_passes.report().graphs
    assert graph.fused == []
    assert any("K is symbolic" in miss.reason for miss in graph.near_misses), fusion_passes.report().summary()


def test_training_graph_is_a_reported_near_miss() -> None:
    """With grad (a training graph), the conv output is saved for backward: no fusion, and a near miss says why."""
    torch.manual_seed(0)
    result = capture(MambaStyleMixer(C, 3), randn(B, C, L))
    assert conv_records(result) == []
    (reason,) = conv_near_misses(result)
    assert "is saved for backward (a training graph)" in reason and "torch.no_grad()" in reason, reason


def test_other_convolutions_are_not_candidates() -> None:
    """A full (non-depthwise) same-length conv1d and a conv2d (a patch embedding) are no near misses: nothing to report."""

    def fn(x: torch.Tensor, weight: torch.Tensor, image: torch.Tensor, kernel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return F.conv1d(x, weight, padding=1), F.conv2d(image, kernel)

    result = capture(fn, randn(B, C, L), randn(C, C, 3), randn(B, 3, 8, 8), randn(4, 3, 2, 2))
    assert conv_records(result) == [] and conv_near_misses(result) == []
