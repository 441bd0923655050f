"""The causal depthwise conv1d Triton kernel (CPU interpreter without a GPU), its reference and custom ops, against an fp64 reference."""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable, Sequence
from typing import Any
from unittest import mock

import pytest
import torch
from helpers import KERNEL_TOLERANCE, relative_error
from conftest import DEVICE
from poisoning import poisoned_outputs

from fusion_passes.kernels import conv1d

DTYPES = list(KERNEL_TOLERANCE)
# Triton's CPU interpreter converts fp32 to bf16 by truncation (``cast_impl`` in
# triton/runtime/interpreter.py passes no rounding mode); GPUs round to nearest even. The kernel's
# conv_dtype rounding is compared with a reference that truncates there too.
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
CHANNELS = 37  # odd: the last channel block is partial under every power-of-two block


@pytest.fixture(autouse=True)
def seed() -> None:
    """Fresh, seeded random inputs in every test."""
    torch.manual_seed(0)


# --- The fp64 reference, straight from the math -------------------------------------------------


def rounded(value: torch.Tensor, dtype: torch.dtype, truncate_bf16: bool) -> torch.Tensor:
    """``value`` (fp64) as the kernel's fp32 accumulator cast to ``dtype`` and back: to nearest, or (interpreter) bf16 by truncating."""
    value = value.float()
    if dtype == torch.bfloat16 and truncate_bf16:
        return (value.view(torch.int32) & -(1 << 16)).view(torch.float32).double()
    return value.to(dtype).double()


def inputs_at(x: torch.Tensor, state: torch.Tensor | None, positions: torch.Tensor) -> torch.Tensor:
    """``x[c, p]`` (fp64 [C, n]) at sequence positions ``p``; ``p < 0`` reads ``state[c, K - 1 + p]``, or 0 without a state."""
    zeros = x.new_zeros(x.shape[0], positions.numel())
    from_x = x[:, positions.clamp(0, x.shape[1] - 1)] if x.shape[1] else zeros
    from_state = state[:, (state.shape[1] + positions).clamp(0, state.shape[1] - 1)] if state is not None else zeros
    return torch.where(positions >= 0, from_x, from_state)


def convolved(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, activation: str, state: torch.Tensor | None = None,
    conv_dtype: torch.dtype = torch.float32, truncate_bf16: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One sequence ``x [C, n]`` in fp64: ``y[c, t] = act(bias[c] + sum_j w[c, j] * x[c, t - K + 1 + j])`` and its final states.

    The final states ``[C, K - 1]`` are the inputs at positions ``n - K + 1 .. n - 1`` (into ``state``
    or zeros for a sequence shorter than ``K - 1``).
    """
    x, weight = x.double(), weight.double()
    state = state.double() if state is not None else None
    width, length = weight.shape[1], x.shape[1]
    tokens = torch.arange(length, device=x.device)
    y = sum((weight[:, j, None] * inputs_at(x, state, tokens - (width - 1) + j) for j in range(width)),
            x.new_zeros(x.shape[0], length))
    if bias is not None:
        y = y + bias.double()[:, None]
    if conv_dtype != torch.float32:
        y = rounded(y, conv_dtype, truncate_bf16)
    if activation == "silu":
        y = y * torch.sigmoid(y)
    final = inputs_at(x, state, torch.arange(width - 1, device=x.device) + length - (width - 1))
    return y, final


def expected_dense(call: conv1d.CausalConv1d, truncate_bf16: bool = False) -> torch.Tensor:
    """The dense call in fp64, one batch row at a time (zeros before t = 0), with its conv_dtype rounding."""
    rows = [convolved(row, call.weight, call.bias, call.activation, None, call.conv_dtype, truncate_bf16)[0] for row in call.x]
    return torch.stack(rows) if rows else call.x.new_zeros(call.x.shape, dtype=torch.float64)


def torch_conv1d(call: conv1d.CausalConv1d) -> torch.Tensor:
    """The unfused graph the dense op stands for, in fp64: ``F.conv1d(x, w[:, None, :], b, padding=K-1, groups=C)[..., :L]``."""
    x, weight = call.x.double(), call.weight.double()
    bias = call.bias.double() if call.bias is not None else None
    y = torch.nn.functional.conv1d(x, weight[:, None, :], bias, padding=call.width - 1, groups=call.channels)[..., : x.shape[-1]]
    return torch.nn.functional.silu(y) if call.activation == "silu" else y


def spans(call: conv1d.CausalConv1d) -> list[tuple[int, int]]:
    """Each packed sequence's ``[start, end)``, offsets clamped to ``[0, total_tokens]`` (an end before its start: empty)."""
    total, offsets = call.x.shape[1], call.cu_seqlens.tolist()
    result = []
    for s in range(call.sequences):
        start = min(max(offsets[s], 0), total)
        result.append((start, min(max(offsets[s + 1], start), total)))
    return result


def expected_varlen(call: conv1d.CausalConv1d) -> tuple[torch.Tensor, torch.Tensor]:
    """The packed call in fp64: ``(out, final_states)``; out is NaN (don't care) at tokens in no sequence or in several."""
    channels, total = call.x.shape
    out = torch.full((channels, total), float("nan"), dtype=torch.float64, device=call.x.device)
    cover = torch.zeros(total, dtype=torch.int64, device=call.x.device)
    flags = call.has_initial_state.tolist() if call.has_initial_state is not None else [True] * call.sequences
    finals = []
    for s, (start, end) in enumerate(spans(call)):
        state = call.initial_states[s] if call.initial_states is not None and flags[s] else None
        y, final = convolved(call.x[:, start:end], call.weight, call.bias, call.activation, state)
        out[:, start:end] = y
        cover[start:end] += 1
        finals.append(final)
    out[:, cover != 1] = float("nan")
    final = torch.stack(finals) if finals else out.new_zeros(0, channels, call.width - 1)
    return out, final



def assert_matches(out: torch.Tensor, ref: torch.Tensor, tolerance: float) -> None:
    """``out`` within ``tolerance`` of the fp64 ``ref``, norm-relative and per element (NaN fails); NaN in ``ref``: don't care."""
    assert out.shape == ref.shape
    keep = ~ref.isnan()
    out, ref = out.double()[keep], ref[keep]
    if not ref.numel():
        return
    assert not out.isnan().any(), "NaN where the result is defined (an unwritten element?)"
    if ref.norm() > 0:
        assert relative_error(out, ref) < tolerance
    torch.testing.assert_close(out, ref, rtol=tolerance, atol=tolerance)


# --- Building calls -----------------------------------------------------------------------------

X_LAYOUTS = ("channel-first", "channel-last", "chunk of channel-first", "chunk of channel-last", "every other token")


def dense_x(batch: int, channels: int, length: int, dtype: torch.dtype = torch.float32, layout: str = "channel-first") -> torch.Tensor:
    """A random x ``[B, C, L]``: contiguous, ``[B, L, C]`` transposed, a chunk of a 3C-wide tensor either way, or token stride 2."""
    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, dtype=dtype, device=DEVICE)

    if layout == "channel-first":
        return randn(batch, channels, length)
    if layout == "channel-last":
        return randn(batch, length, channels).transpose(1, 2)
    if layout == "chunk of channel-first":
        return randn(batch, 3 * channels, length).chunk(3, dim=1)[1]
    if layout == "chunk of channel-last":  # the conv input of a Mamba in_proj split
        return randn(batch, length, 3 * channels).chunk(3, dim=2)[1].transpose(1, 2)
    assert layout == "every other token"
    return randn(batch, channels, 2 * length)[..., ::2]


WEIGHT_LAYOUTS = ("contiguous", "transposed [K, C]", "every other tap")


def random_weight(channels: int, width: int, dtype: torch.dtype = torch.float32, layout: str = "contiguous") -> torch.Tensor:
    """A random weight ``[C, K]``: contiguous, a ``[K, C]`` transposed, or every other column of ``[C, 2K]``."""
    if layout == "contiguous":
        return torch.randn(channels, width, dtype=dtype, device=DEVICE)
    if layout == "transposed [K, C]":
        return torch.randn(width, channels, dtype=dtype, device=DEVICE).t()
    assert layout == "every other tap"
    return torch.randn(channels, 2 * width, dtype=dtype, device=DEVICE)[:, ::2]


def dense_call(
    x: torch.Tensor, width: int = 4, *, weight_dtype: torch.dtype | None = None, bias_dtype: torch.dtype | None = None,
    bias: bool = True, activation: str = "silu", conv_dtype: torch.dtype = torch.float32, out_dtype: torch.dtype | None = None,
    weight_layout: str = "contiguous",
) -> conv1d.CausalConv1d:
    """A dense call on ``x`` with a random weight and (every third element of a wider tensor) bias; dtypes default to x's."""
    channels = x.shape[1]
    weight = random_weight(channels, width, weight_dtype or x.dtype, weight_layout)
    b = torch.randn(3 * channels, dtype=bias_dtype or x.dtype, device=DEVICE)[1::3] if bias else None
    return conv1d.CausalConv1d(x, weight, b, activation, conv_dtype, out_dtype or x.dtype)


PACKED_LAYOUTS = ("channel-first", "token-major", "chunk of token-major")


def packed_x(channels: int, total: int, dtype: torch.dtype, layout: str) -> torch.Tensor:
    """A random packed x ``[C, T]``: contiguous, token-major ``[T, C]`` memory as ``.t()``, or a chunk of ``[T, 3C]``."""
    if layout == "channel-first":
        return torch.randn(channels, total, dtype=dtype, device=DEVICE)
    if layout == "token-major":
        return torch.randn(total, channels, dtype=dtype, device=DEVICE).t()
    assert layout == "chunk of token-major"
    return torch.randn(total, 3 * channels, dtype=dtype, device=DEVICE)[:, channels: 2 * channels].t()


def packing(width: int) -> tuple[list[int], list[bool]]:
    """Sequence lengths and state flags, shuffled: empty and shorter-than-K-1 sequences with and without a state, one
    token, exactly K-1 tokens, and one over a token block."""
    lengths = [0, 1, max(0, width - 2), 0, max(0, width - 2), width - 1, 2 * width + 25]
    flags = [True, True, True, False, False, True, False]
    order = torch.randperm(len(lengths)).tolist()
    return [lengths[i] for i in order], [flags[i] for i in order]


STATES = ("no states", "states", "states and flags")


def varlen_call(
    lengths: Sequence[int] | None = None, *, width: int = 4, channels: int = CHANNELS, dtype: torch.dtype = torch.float32,
    states: str = "states and flags", state_dtype: torch.dtype | None = None, layout: str = "channel-first",
    offsets_dtype: torch.dtype = torch.int32, bias: bool = True, activation: str = "silu", max_seqlen: str | int | None = "longest",
    flags: Sequence[bool] | None = None, pad: tuple[int, int] = (0, 0),
) -> conv1d.CausalConv1d:
    """A packed call: sequences of ``lengths`` (default: ``packing(width)``) after ``pad[0]`` and before ``pad[1]`` unused tokens."""
    if lengths is None:
        lengths, flags = packing(width)
    count = len(lengths)
    offsets = torch.tensor([0, *lengths], device=DEVICE).cumsum(0) + pad[0]
    x = packed_x(channels, pad[0] + sum(lengths) + pad[1], dtype, layout)
    weight = torch.randn(channels, width, dtype=dtype, device=DEVICE)
    b = torch.randn(channels, dtype=dtype, device=DEVICE) if bias else None
    initial = None if states == "no states" else torch.randn(count, channels, width - 1, dtype=state_dtype or dtype, device=DEVICE)
    has_initial = None
    if states == "states and flags":
        flags = flags if flags is not None else [i % 2 == 0 for i in range(count)]
        has_initial = torch.tensor(flags, dtype=torch.bool, device=DEVICE)
    longest = max(lengths, default=0)
    return conv1d.CausalConv1d(
        x, weight, b, activation, torch.float32, x.dtype, offsets.to(offsets_dtype), initial, has_initial,
        longest if max_seqlen == "longest" else max_seqlen,
    )


def public_varlen(call: conv1d.CausalConv1d, validate: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``conv1d.causal_conv1d_varlen`` on the packed call's operands."""
    return conv1d.causal_conv1d_varlen(
        call.x, call.weight, call.cu_seqlens, bias=call.bias, initial_states=call.initial_states,
        has_initial_state=call.has_initial_state, activation=call.activation, max_seqlen=call.max_seqlen, validate=validate,
    )


# --- Running and comparing ----------------------------------------------------------------------


def run_kernel(call: conv1d.CausalConv1d, config: conv1d.LaunchConfig | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``causal_conv1d_triton`` into NaN-filled outputs; checks their shapes and dtypes."""
    with poisoned_outputs(conv1d):
        out, final = conv1d.causal_conv1d_triton(call, config)
    assert out.shape == call.x.shape and out.dtype == call.out_dtype and out.device == call.x.device
    if call.varlen:
        assert final.shape == (call.sequences, call.channels, call.width - 1) and final.dtype == call.final_states_dtype
    else:
        assert final is None
    return out, final


def check_dense(call: conv1d.CausalConv1d, config: conv1d.LaunchConfig | None = None, tolerance: float | None = None) -> None:
    """The kernel and ``conv1d.reference`` both within the out dtype's tolerance of the fp64 reference."""
    tolerance = tolerance or KERNEL_TOLERANCE[call.out_dtype]
    assert_matches(run_kernel(call, config)[0], expected_dense(call, truncate_bf16=INTERPRETED), tolerance)
    assert_matches(conv1d.reference(call)[0], expected_dense(call), tolerance)


def check_varlen(call: conv1d.CausalConv1d, config: conv1d.LaunchConfig | None = None) -> None:
    """Kernel and ``conv1d.reference``: out and final states within their dtypes' tolerances of the fp64 reference."""
    out_ref, final_ref = expected_varlen(call)
    for out, final in (run_kernel(call, config), conv1d.reference(call)):
        assert final.dtype == call.final_states_dtype
        assert_matches(out, out_ref, KERNEL_TOLERANCE[call.out_dtype])
        assert_matches(final, final_ref, KERNEL_TOLERANCE[final.dtype])


class _GridSpy:
    """The kernel, recording the grid of every launch."""

    def __init__(self, kernel: Any) -> None:
        self.kernel, self.grids = kernel, []

    def __getitem__(self, grid: tuple[int, ...]) -> Any:
        self.grids.append(tuple(grid))
        return self.kernel[grid]


# --- Dense numerics -----------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no bias"])
@pytest.mark.parametrize("activation", conv1d.ACTIVATIONS)
@pytest.mark.parametrize("width", [2, 3, 4, 8])
def test_dense_matches_fp64(dtype: torch.dtype, bias: bool, activation: str, width: int) -> None:
    """Kernel and reference match the fp64 math (itself equal to F.conv1d, padded and cut) for every K, activation, dtype."""
    c = dense_call(dense_x(2, CHANNELS, 11, dtype), width, bias=bias, activation=activation)
    torch.testing.assert_close(expected_dense(c), torch_conv1d(c), rtol=1e-12, atol=1e-12)
    check_dense(c)


@pytest.mark.parametrize("layout", ["channel-first", "channel-last"])
@pytest.mark.parametrize(("batch", "channels", "length"), [(1, CHANNELS, 1), (2, CHANNELS, 5), (2, CHANNELS, 300), (3, 1, 7),
                                                           (1, 300, 9)], ids=str)
def test_dense_sizes(layout: str, batch: int, channels: int, length: int) -> None:
    """One token, fewer tokens than taps, several token blocks (L=300), one channel, several channel blocks (C=300)."""
    check_dense(dense_call(dense_x(batch, channels, length, torch.bfloat16, layout), 4))


MIXED_DTYPES = [  # (x, weight, bias, out)
    (torch.bfloat16, torch.float32, torch.float32, torch.bfloat16),
    (torch.float16, torch.bfloat16, torch.float32, torch.float32),
    (torch.float32, torch.bfloat16, torch.float16, torch.bfloat16),
    (torch.bfloat16, torch.float16, torch.bfloat16, torch.float16),
    (torch.float32, torch.float32, torch.bfloat16, torch.float16),
]


@pytest.mark.parametrize(("x_dtype", "weight_dtype", "bias_dtype", "out_dtype"), MIXED_DTYPES, ids=str)
def test_dense_mixed_dtypes(x_dtype: torch.dtype, weight_dtype: torch.dtype, bias_dtype: torch.dtype, out_dtype: torch.dtype) -> None:
    """x, weight and bias of different dtypes (e.g. bf16 x with fp32 weight) and an out dtype of its own."""
    check_dense(dense_call(dense_x(2, CHANNELS, 9, x_dtype), 4, weight_dtype=weight_dtype, bias_dtype=bias_dtype, out_dtype=out_dtype))


@pytest.mark.parametrize("weight_layout", WEIGHT_LAYOUTS)
@pytest.mark.parametrize("layout", X_LAYOUTS)
def test_dense_strided_views(weight_layout: str, layout: str) -> None:
    """x as chunk views and strided tokens, weight as non-contiguous views, bias strided: read through their strides."""
    x = dense_x(2, CHANNELS, 13, torch.float32, layout)
    assert x.is_contiguous() == (layout == "channel-first")
    c = dense_call(x, 3, weight_layout=weight_layout)
    assert c.weight.is_contiguous() == (weight_layout == "contiguous") and not c.bias.is_contiguous()
    check_dense(c)


OUTPUT_LAYOUTS: dict[str, tuple[Callable[[], conv1d.CausalConv1d], bool]] = {  # name: (call, channel-last out)
    "dense channel-first": (lambda: dense_call(dense_x(2, CHANNELS, 9)), False),
    "dense channel-last": (lambda: dense_call(dense_x(2, CHANNELS, 9, layout="channel-last")), True),
    "dense channel-last, one token": (lambda: dense_call(dense_x(2, CHANNELS, 1, layout="channel-last")), True),
    "dense chunk of channel-last": (lambda: dense_call(dense_x(2, CHANNELS, 9, layout="chunk of channel-last")), True),
    "dense every other token": (lambda: dense_call(dense_x(2, CHANNELS, 9, layout="every other token")), False),
    "packed [C, T]": (lambda: varlen_call(layout="channel-first"), False),
    "packed token-major": (lambda: varlen_call(layout="token-major"), True),
    "packed chunk of token-major": (lambda: varlen_call(layout="chunk of token-major"), True),
}


@pytest.mark.parametrize("name", OUTPUT_LAYOUTS)
def test_output_layout_follows_x(name: str) -> None:
    """Channel-last x gives a fresh channel-last out (its transpose back to [.., L, C] is contiguous), else contiguous."""
    make, channel_last = OUTPUT_LAYOUTS[name]
    c = make()
    outs = [run_kernel(c)[0], conv1d.reference(c)[0]]
    if c.varlen:
        outs.append(public_varlen(c)[0])
    else:
        outs.append(torch.ops.fusion_passes.causal_conv1d(c.x, c.weight, c.bias, c.activation, c.conv_dtype, c.out_dtype))
    for out in outs:
        assert out.transpose(-1, -2).is_contiguous() if channel_last else out.is_contiguous()
        assert out.data_ptr() != c.x.data_ptr()


def exact_operands(batch: int, length: int, width: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """bf16 x, fp32 weight and bias on coarse dyadic grids: the fp32 convolution is exact in any order, with more bits than bf16."""
    x = (torch.randint(-128, 129, (batch, CHANNELS, length), device=DEVICE) / 64).to(torch.bfloat16)
    weight = torch.randint(-1024, 1025, (CHANNELS, width), device=DEVICE) / 512
    bias = torch.randint(-1024, 1025, (CHANNELS,), device=DEVICE) / 512
    return x, weight, bias


@pytest.mark.parametrize("out_dtype", ["fp32", "conv dtype"])
@pytest.mark.parametrize("activation", conv1d.ACTIVATIONS)
@pytest.mark.parametrize("conv_dtype", [torch.bfloat16, torch.float16])
def test_conv_dtype_rounds_before_the_activation(out_dtype: str, activation: str, conv_dtype: torch.dtype) -> None:
    """conv_dtype rounds the convolution before the SiLU, as an explicit cast in fp64 (the interpreter truncates to bf16)."""
    x, weight, bias = exact_operands(2, 20, 4)
    c = conv1d.CausalConv1d(x, weight, bias, activation, conv_dtype, torch.float32 if out_dtype == "fp32" else conv_dtype)
    tolerance = 1e-6 if out_dtype == "fp32" else KERNEL_TOLERANCE[conv_dtype]
    check_dense(c, tolerance=tolerance)
    # The test tells rounding from not rounding: the unrounded convolution is further off than the tolerance.
    assert relative_error(expected_dense(dataclasses.replace(c, conv_dtype=torch.float32)), expected_dense(c)) > 1e-4


# --- Launch configs -----------------------------------------------------------------------------

CONFIGS = [conv1d.LaunchConfig(8, 16, 1), conv1d.LaunchConfig(16, 4, 2), conv1d.LaunchConfig(64, 128, 4),
           conv1d.LaunchConfig(1, 32, 1), conv1d.LaunchConfig(32, 1, 1)]


@pytest.mark.parametrize("config", CONFIGS, ids=str)
def test_dense_launch_configs(config: conv1d.LaunchConfig) -> None:
    """Explicit tiles with partial channel blocks (C=19) and partial token blocks (L=21), one channel or token per program."""
    check_dense(dense_call(dense_x(1, 19, 21, torch.float32, "channel-last"), 4), config)


def test_dense_programs_loop_over_token_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """With the grid's token dim capped below the token blocks, each program loops over its blocks (every token written)."""
    monkeypatch.setattr(conv1d, "MAX_GRID_YZ", 2)
    spy = _GridSpy(conv1d._causal_conv1d_kernel)
    monkeypatch.setattr(conv1d, "_causal_conv1d_kernel", spy)
    check_dense(dense_call(dense_x(2, CHANNELS, 70), 4), conv1d.LaunchConfig(32, 8, 1))
    assert spy.grids == [(2, 2, 2)]  # 9 token blocks of 8 over 2 programs


def test_too_many_channel_blocks_is_a_value_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """More channel blocks than the grid's dim 2 holds is a ValueError that says so."""
    monkeypatch.setattr(conv1d, "MAX_GRID_YZ", 2)
    with pytest.raises(ValueError, match="channels: 37 need 5 channel blocks, over the grid's 2"):
        conv1d.causal_conv1d_triton(dense_call(dense_x(1, CHANNELS, 5)), conv1d.LaunchConfig(8, 16, 1))


@pytest.mark.parametrize("channel_last", [False, True], ids=["channel-first", "channel-last"])
@pytest.mark.parametrize("tokens", [0, 1, 70, 4096])
@pytest.mark.parametrize("channels", [1, CHANNELS, 4096])
def test_launch_config_tiles(channel_last: bool, tokens: int, channels: int) -> None:
    """Power-of-two tiles of at most TILE_ELEMENTS, at most CONTIGUOUS_BLOCK along x's contiguous dim, no larger than needed."""
    config = conv1d.launch_config(channels, tokens, channel_last)
    for block in (config.block_channels, config.block_tokens):
        assert block >= 1 and block & (block - 1) == 0
    assert config.block_channels * config.block_tokens <= conv1d.TILE_ELEMENTS
    assert (config.block_channels if channel_last else config.block_tokens) <= conv1d.CONTIGUOUS_BLOCK[channel_last]
    assert config.block_channels < 2 * channels and config.block_tokens < 2 * max(tokens, 1)
    assert config.num_warps in (1, 2, 4, 8)


# --- Packed variable-length numerics ------------------------------------------------------------


@pytest.mark.parametrize("states", STATES)
@pytest.mark.parametrize("width", [2, 3, 4, 8])
def test_varlen_matches_fp64(states: str, width: int) -> None:
    """Packed empty, one-token, short and multi-block sequences, with no states, states, or per-sequence flags, every K."""
    check_varlen(varlen_call(width=width, states=states))


@pytest.mark.parametrize("states", STATES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_varlen_half_dtypes(states: str, dtype: torch.dtype) -> None:
    """bf16 and fp16 packed x, weight, bias and states (out and final states in those dtypes)."""
    check_varlen(varlen_call(dtype=dtype, states=states))


@pytest.mark.parametrize("max_seqlen", ["longest", None], ids=["max_seqlen", "no max_seqlen"])
@pytest.mark.parametrize("layout", PACKED_LAYOUTS)
def test_varlen_layouts(max_seqlen: str | None, layout: str) -> None:
    """x [C, T] contiguous, token-major or a chunk view, with max_seqlen given or not (int64 offsets)."""
    check_varlen(varlen_call(dtype=torch.bfloat16, layout=layout, offsets_dtype=torch.int64, max_seqlen=max_seqlen))


@pytest.mark.parametrize("activation", conv1d.ACTIVATIONS)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no bias"])
def test_varlen_bias_and_activation(activation: str, bias: bool) -> None:
    """Packed with and without bias and SiLU."""
    check_varlen(varlen_call(width=3, bias=bias, activation=activation))


@pytest.mark.parametrize("pad", [(3, 0), (0, 4), (2, 5)], ids=str)
def test_varlen_unused_tokens_around_the_sequences(pad: tuple[int, int]) -> None:
    """Offsets starting after token 0 or ending before the last token: the sequences are right (the rest is not defined)."""
    check_varlen(varlen_call(pad=pad))


@pytest.mark.parametrize("config", CONFIGS, ids=str)
def test_varlen_launch_configs(config: conv1d.LaunchConfig) -> None:
    """Explicit tiles: partial channel blocks (C=9), several and partial token blocks per sequence, final states per channel block."""
    check_varlen(varlen_call([5, 0, 11, 2, 1], channels=9, layout="token-major", flags=[True, False, True, True, False]), config)


LOOPS = {  # name: (TARGET_PROGRAMS as a multiple of sequences * channel blocks, max_seqlen)
    "one token block per sequence": (1, None),
    "three token blocks per sequence": (3, None),
    "max_seqlen under the longest": (None, 4),
}


@pytest.mark.parametrize("name", LOOPS)
def test_varlen_programs_loop_over_token_blocks(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Fewer token-block programs than a sequence's blocks (few target programs, or a small max_seqlen): each loops."""
    multiple, max_seqlen = LOOPS[name]
    lengths, flags = [5, 0, 13, 2, 1], [True, False, True, True, False]
    config = conv1d.LaunchConfig(8, 4, 1)  # 3 channel blocks of C=19, 4 token blocks of the 13-token sequence
    if multiple is not None:
        monkeypatch.setattr(conv1d, "TARGET_PROGRAMS", multiple * len(lengths) * 3)
    spy = _GridSpy(conv1d._causal_conv1d_kernel)
    monkeypatch.setattr(conv1d, "_causal_conv1d_kernel", spy)
    check_varlen(varlen_call(lengths, channels=19, flags=flags, max_seqlen=max_seqlen), config)
    assert spy.grids == [(len(lengths), multiple or 1, 3)]


FINAL_DTYPES = [  # (x dtype, initial states dtype or None: no initial states)
    (torch.bfloat16, None), (torch.float16, None), (torch.float32, None), (torch.bfloat16, torch.bfloat16),
    (torch.bfloat16, torch.float32), (torch.float32, torch.bfloat16), (torch.float16, torch.bfloat16), (torch.float32, torch.float16),
]


@pytest.mark.parametrize(("x_dtype", "state_dtype"), FINAL_DTYPES, ids=str)
def test_final_states_dtype(x_dtype: torch.dtype, state_dtype: torch.dtype | None) -> None:
    """Final states take the initial states' dtype, else x's: kernel, reference and public op."""
    c = varlen_call([0, 1, 2, 6], dtype=x_dtype, states="no states" if state_dtype is None else "states and flags",
                    state_dtype=state_dtype, flags=[True, True, False, True])
    dtype = state_dtype or x_dtype
    assert c.final_states_dtype == dtype
    check_varlen(c)
    out, final = public_varlen(c)
    assert out.dtype == x_dtype and final.dtype == dtype


EMPTY = {  # name: (cu_seqlens, total tokens, max_seqlen)
    "no tokens, two empty sequences": ([0, 0, 0], 0, "longest"),
    "no tokens, no max_seqlen": ([0, 0, 0], 0, None),
    "no sequences, no tokens": ([0], 0, None),
    "no sequences, unused tokens, max_seqlen 0": ([0], 4, 0),
    "no sequences, unused tokens, no max_seqlen": ([0], 4, None),
}


@pytest.mark.parametrize("name", EMPTY)
def test_varlen_empty(name: str) -> None:
    """No tokens (final states = the flagged initial states, else zeros) or no sequences at all: runs, right shapes."""
    offsets, total, max_seqlen = EMPTY[name]
    count = len(offsets) - 1
    x = torch.randn(CHANNELS, total, device=DEVICE)
    c = conv1d.CausalConv1d(
        x, torch.randn(CHANNELS, 4, device=DEVICE), torch.randn(CHANNELS, device=DEVICE), "silu", torch.float32, x.dtype,
        torch.tensor(offsets, dtype=torch.int32, device=DEVICE), torch.randn(count, CHANNELS, 3, device=DEVICE),
        torch.arange(count, device=DEVICE) % 2 == 0, max(offsets) if max_seqlen == "longest" else max_seqlen,
    )
    check_varlen(c)
    out, final = public_varlen(c)
    assert out.shape == x.shape and final.shape == (count, CHANNELS, 3)
    if count:
        torch.testing.assert_close(final[0], c.initial_states[0], rtol=0, atol=0)
        assert not final[1].any()


def interleaved(values: torch.Tensor, filler: torch.Tensor) -> torch.Tensor:
    """``values`` as a stride-2 view, ``filler`` in the gaps (a kernel that ignores the stride reads it)."""
    view = torch.stack([values, filler], dim=-1).flatten()[::2]
    assert view.stride() == (2,) and torch.equal(view, values)
    return view


STRIDED_OPERANDS: dict[str, Callable[[conv1d.CausalConv1d], dict[str, torch.Tensor]]] = {
    "cu_seqlens every other element": lambda c: dict(cu_seqlens=interleaved(c.cu_seqlens, c.cu_seqlens.flip(0))),
    "has_initial_state every other element": lambda c: dict(has_initial_state=interleaved(c.has_initial_state, ~c.has_initial_state)),
    "initial_states [S, K-1, C] transposed": lambda c: dict(initial_states=c.initial_states.transpose(1, 2).contiguous().transpose(1, 2)),
    "initial_states a slice of a wider cache": lambda c: dict(
        initial_states=torch.cat([torch.randn_like(c.initial_states), c.initial_states], dim=2)[..., c.width - 1:],
    ),
}


@pytest.mark.parametrize("name", STRIDED_OPERANDS)
def test_varlen_strided_operands(name: str) -> None:
    """Offsets, flags and initial states as non-contiguous views are read through their strides."""
    c = varlen_call()
    changes = STRIDED_OPERANDS[name](c)
    assert not any(t.is_contiguous() for t in changes.values())
    check_varlen(dataclasses.replace(c, **changes))


CLAMPED = {  # name: (cu_seqlens, offsets dtype, max_seqlen), over 10 tokens
    "negative first offset": ([-3, 4, 10], torch.int32, None),
    "last offset past the end": ([0, 4, 50], torch.int32, None),
    "decreasing offsets (overlapping sequences)": ([0, 5, 3, 10], torch.int32, None),
    "decreasing last offset (an empty sequence)": ([0, 6, 2], torch.int32, None),
    "int64 offsets far outside": ([-(2**40), 3, 2**40], torch.int64, None),
    "a sequence over max_seqlen": ([0, 9, 10], torch.int32, 2),
}


@pytest.mark.parametrize("name", CLAMPED)
def test_bad_offsets_are_clamped_without_validate(name: str) -> None:
    """Offsets outside [0, T] or decreasing, unvalidated, are clamped by the kernel (no crash, no read outside x)."""
    offsets, dtype, max_seqlen = CLAMPED[name]
    count = len(offsets) - 1
    c = dataclasses.replace(
        varlen_call([10] + [0] * (count - 1), flags=[True, False, True][:count]),
        cu_seqlens=torch.tensor(offsets, dtype=dtype, device=DEVICE), max_seqlen=max_seqlen,
    )
    check_varlen(c)
    out_ref, final_ref = expected_varlen(c)
    out, final = public_varlen(c)
    assert_matches(out, out_ref, KERNEL_TOLERANCE[torch.float32])
    assert_matches(final, final_ref, KERNEL_TOLERANCE[torch.float32])


# --- The public packed function and the custom ops ----------------------------------------------


@pytest.mark.parametrize("validate", [False, True], ids=["unvalidated", "validated"])
@pytest.mark.parametrize("layout", ["channel-first", "token-major"])
@pytest.mark.parametrize("states", STATES)
def test_public_varlen_matches_fp64(validate: bool, layout: str, states: str) -> None:
    """causal_conv1d_varlen (the reference off CUDA, the kernel on CUDA) computes the packed call."""
    c = varlen_call(dtype=torch.float16, states=states, layout=layout, offsets_dtype=torch.int64)
    out_ref, final_ref = expected_varlen(c)
    out, final = public_varlen(c, validate=validate)
    assert_matches(out, out_ref, KERNEL_TOLERANCE[torch.float16])
    assert_matches(final, final_ref, KERNEL_TOLERANCE[torch.float16])


def test_public_varlen_activation_defaults_to_silu_and_none_is_none() -> None:
    """activation defaults to "silu"; activation=None is no activation."""
    c = varlen_call(width=3)
    silu = conv1d.causal_conv1d_varlen(c.x, c.weight, c.cu_seqlens, bias=c.bias)
    plain = conv1d.causal_conv1d_varlen(c.x, c.weight, c.cu_seqlens, bias=c.bias, activation=None)
    assert_matches(silu[0], expected_varlen(dataclasses.replace(c, initial_states=None, has_initial_state=None))[0], 1e-5)
    assert_matches(plain[0], expected_varlen(dataclasses.replace(c, initial_states=None, has_initial_state=None,
                                                                 activation="none"))[0], 1e-5)


def test_validate_inside_a_compiled_graph_checks_on_the_device() -> None:
    """validate=True under torch.compile(fullgraph=True): no data-dependent guard error; the checks
    become device-side asserts naming cu_seqlens."""
    def convolve(x: torch.Tensor, weight: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
        return conv1d.causal_conv1d_varlen(x, weight, cu_seqlens, validate=True)[0]

    torch._dynamo.reset()
    x, weight = torch.randn(8, 20), torch.randn(8, 4)
    compiled = torch.compile(convolve, fullgraph=True)
    good = torch.tensor([0, 5, 20], dtype=torch.int32)
    torch.testing.assert_close(compiled(x, weight, good), convolve(x, weight, good))
    with pytest.raises(RuntimeError, match="cu_seqlens: expected offsets that never decrease"):
        compiled(x, weight, torch.tensor([0, 12, 5], dtype=torch.int32))


def test_public_varlen_skips_the_dispatcher_only_for_plain_eager_calls() -> None:
    """A plain eager call runs the implementation directly (the dispatcher costs ~100 us of host
    time); a call autograd would record, or one under a dispatch mode, goes through the custom op."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Recording(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            ops.append(str(func))
            return func(*args, **(kwargs or {}))

    c = varlen_call(width=3)
    with mock.patch.object(conv1d, "causal_conv1d_varlen_op", wraps=conv1d.causal_conv1d_varlen_op) as op:
        direct = conv1d.causal_conv1d_varlen(c.x, c.weight, c.cu_seqlens, bias=c.bias)
        assert not op.called
        weight = c.weight.detach().requires_grad_(True)
        recorded = conv1d.causal_conv1d_varlen(c.x, weight, c.cu_seqlens, bias=c.bias)
        assert op.call_count == 1
        ops: list[str] = []
        with Recording():
            conv1d.causal_conv1d_varlen(c.x, c.weight, c.cu_seqlens, bias=c.bias)
        assert op.call_count == 2 and "fusion_passes.causal_conv1d_varlen.default" in ops
    assert torch.equal(direct[0], recorded[0].detach())
    with pytest.raises(ValueError, match=r"bias: expected shape"):
        conv1d.causal_conv1d_varlen(c.x, c.weight, c.cu_seqlens, bias=c.bias[:-1])


@pytest.mark.parametrize("form", ["dense", "packed"])
def test_ops_run_the_kernel_on_cuda_only(form: str) -> None:
    """The custom ops launch the kernel for CUDA operands and run the reference elsewhere; both compute the call."""
    with mock.patch.object(conv1d, "_launch", wraps=conv1d._launch) as launch:
        if form == "dense":
            c = dense_call(dense_x(2, CHANNELS, 9, torch.bfloat16), 4)
            out = torch.ops.fusion_passes.causal_conv1d(c.x, c.weight, c.bias, c.activation, c.conv_dtype, c.out_dtype)
            assert_matches(out, expected_dense(c), KERNEL_TOLERANCE[torch.bfloat16])
        else:
            c = varlen_call(dtype=torch.bfloat16)
            out, final = torch.ops.fusion_passes.causal_conv1d_varlen(
                c.x, c.weight, c.bias, c.cu_seqlens, c.initial_states, c.has_initial_state, c.activation, c.max_seqlen,
            )
            out_ref, final_ref = expected_varlen(c)
            assert_matches(out, out_ref, KERNEL_TOLERANCE[torch.bfloat16])
            assert_matches(final, final_ref, KERNEL_TOLERANCE[torch.bfloat16])
    assert launch.called == (DEVICE == "cuda")


DENSE_OPCHECK: dict[str, Callable[[], conv1d.CausalConv1d]] = {
    "bf16 x, fp32 weight, bias, silu, conv bf16": lambda: dense_call(
        dense_x(2, 5, 7, torch.bfloat16), 4, weight_dtype=torch.float32, bias_dtype=torch.float32, conv_dtype=torch.bfloat16,
    ),
    "fp32, no bias, no activation, fp16 out": lambda: dense_call(
        dense_x(1, 6, 5), 3, bias=False, activation="none", out_dtype=torch.float16,
    ),
    "channel-last fp16, K=2": lambda: dense_call(dense_x(2, 5, 6, torch.float16, "channel-last"), 2),
}


@pytest.mark.parametrize("name", DENSE_OPCHECK)
def test_opcheck_dense(name: str) -> None:
    """causal_conv1d's schema, fake impl (shape, dtype, layout) and registrations agree with its real impl."""
    c = DENSE_OPCHECK[name]()
    torch.library.opcheck(torch.ops.fusion_passes.causal_conv1d.default,
                          (c.x, c.weight, c.bias, c.activation, c.conv_dtype, c.out_dtype))


VARLEN_OPCHECK: dict[str, Callable[[], conv1d.CausalConv1d]] = {
    "fp32, int32 offsets, no states, no max_seqlen": lambda: varlen_call(
        [3, 0, 5], channels=5, states="no states", max_seqlen=None,
    ),
    "bf16 token-major, int64 offsets, fp32 states with flags": lambda: varlen_call(
        [4, 1, 6], channels=5, dtype=torch.bfloat16, state_dtype=torch.float32, layout="token-major", offsets_dtype=torch.int64,
    ),
    "fp16, no bias, states without flags, K=2": lambda: varlen_call(
        [2, 0, 1, 4], width=2, channels=6, dtype=torch.float16, states="states", bias=False, activation="none",
    ),
}


@pytest.mark.parametrize("name", VARLEN_OPCHECK)
def test_opcheck_varlen(name: str) -> None:
    """causal_conv1d_varlen's schema, fake impl and registrations agree with its real impl (bias and states None too)."""
    c = VARLEN_OPCHECK[name]()
    torch.library.opcheck(torch.ops.fusion_passes.causal_conv1d_varlen.default,
                          (c.x, c.weight, c.bias, c.cu_seqlens, c.initial_states, c.has_initial_state, c.activation, c.max_seqlen))


# --- Bad input ----------------------------------------------------------------------------------


def dense_args(**overrides: Any) -> dict[str, Any]:
    """The dense op's arguments for a valid x [2, 4, 6] with K=3, then ``overrides``."""
    args = dict(x=torch.randn(2, 4, 6, device=DEVICE), weight=torch.randn(4, 3, device=DEVICE), bias=torch.randn(4, device=DEVICE),
                activation="silu", conv_dtype=torch.float32, out_dtype=torch.float32)
    return {**args, **overrides}


def meta(*shape: int) -> torch.Tensor:
    """A meta tensor (another device than x's)."""
    return torch.empty(*shape, device="meta")


DENSE_ERRORS: dict[str, tuple[Callable[[], dict[str, Any]], str]] = {
    "2-D x": (lambda: dict(x=torch.randn(4, 6, device=DEVICE)), r"x: expected 3 dims \[B, C, L\], got shape \(4, 6\)"),
    "4-D x": (lambda: dict(x=torch.randn(1, 2, 4, 6, device=DEVICE)), r"x: expected 3 dims \[B, C, L\], got shape \(1, 2, 4, 6\)"),
    "integer x": (lambda: dict(x=torch.ones(2, 4, 6, dtype=torch.int32, device=DEVICE)), r"x: expected a floating dtype, got torch.int32"),
    "weight channels": (lambda: dict(weight=torch.randn(5, 3, device=DEVICE)), r"weight: expected shape \(4, K\), got \(5, 3\)"),
    "weight [C, 1, K] as F.conv1d takes it": (
        lambda: dict(weight=torch.randn(4, 1, 3, device=DEVICE)), r"weight: expected shape \(4, K\), got \(4, 1, 3\)",
    ),
    "K=1": (lambda: dict(weight=torch.randn(4, 1, device=DEVICE)), r"weight: expected K in 2\.\.8 taps, got 1"),
    "K=9": (lambda: dict(weight=torch.randn(4, 9, device=DEVICE)), r"weight: expected K in 2\.\.8 taps, got 9"),
    "bias channels": (lambda: dict(bias=torch.randn(5, device=DEVICE)), r"bias: expected shape \(4,\), got \(5,\)"),
    "bias [C, 1]": (lambda: dict(bias=torch.randn(4, 1, device=DEVICE)), r"bias: expected shape \(4,\), got \(4, 1\)"),
    "activation": (lambda: dict(activation="relu"), r"activation: expected one of \('none', 'silu'\), got 'relu'"),
    "conv_dtype": (lambda: dict(conv_dtype=torch.float64), r"conv_dtype: expected one of .*, got torch.float64"),
    "weight device": (lambda: dict(weight=meta(4, 3)), r"weight: expected device .+ \(x's\), got meta"),
    "bias device": (lambda: dict(bias=meta(4)), r"bias: expected device .+ \(x's\), got meta"),
}


def on_meta(args: dict[str, Any]) -> bool:
    """Whether an operand is on the meta device (the op's dispatcher would pick the fake impl)."""
    return any(isinstance(t, torch.Tensor) and t.is_meta for t in args.values())


@pytest.mark.parametrize("name", DENSE_ERRORS)
def test_dense_bad_arguments_name_the_argument(name: str) -> None:
    """causal_conv1d_triton and the dense op raise a ValueError naming the bad argument."""
    overrides, message = DENSE_ERRORS[name]
    args = dense_args(**overrides())
    with pytest.raises(ValueError, match="causal_conv1d_triton: " + message):
        conv1d.causal_conv1d_triton(conv1d.CausalConv1d(**args))
    if not on_meta(args):
        with pytest.raises(ValueError, match=message):
            torch.ops.fusion_passes.causal_conv1d(*args.values())


@pytest.mark.parametrize("field", ["initial_states", "has_initial_state", "max_seqlen"])
def test_dense_refuses_packed_only_arguments(field: str) -> None:
    """Initial states, flags or max_seqlen on a dense call are a ValueError."""
    value = {"initial_states": torch.randn(2, 4, 2, device=DEVICE), "has_initial_state": torch.ones(2, dtype=torch.bool, device=DEVICE),
             "max_seqlen": 6}[field]
    c = conv1d.CausalConv1d(**dense_args(), **{field: value})
    with pytest.raises(ValueError, match="causal_conv1d_triton: initial_states, has_initial_state, max_seqlen: expected None"):
        conv1d.causal_conv1d_triton(c)


def varlen_args(**overrides: Any) -> dict[str, Any]:
    """``causal_conv1d_varlen`` keyword arguments: x [4, 10], K=3, three sequences (5, 2, 3 tokens) with states, then ``overrides``."""
    args = dict(
        x=torch.randn(4, 10, device=DEVICE), weight=torch.randn(4, 3, device=DEVICE),
        cu_seqlens=torch.tensor([0, 5, 7, 10], dtype=torch.int32, device=DEVICE), bias=torch.randn(4, device=DEVICE),
        initial_states=torch.randn(3, 4, 2, device=DEVICE), has_initial_state=torch.tensor([True, False, True], device=DEVICE),
        activation="silu", max_seqlen=5,
    )
    return {**args, **overrides}


def packed(args: dict[str, Any]) -> conv1d.CausalConv1d:
    """The packed call of ``causal_conv1d_varlen`` keyword arguments."""
    return conv1d.CausalConv1d(args["x"], args["weight"], args["bias"], args["activation"], torch.float32, args["x"].dtype,
                               args["cu_seqlens"], args["initial_states"], args["has_initial_state"], args["max_seqlen"])


VARLEN_ERRORS: dict[str, tuple[Callable[[], dict[str, Any]], str]] = {
    "3-D x": (lambda: dict(x=torch.randn(1, 4, 10, device=DEVICE)), r"x: expected 2 dims \[C, total_tokens\], got shape \(1, 4, 10\)"),
    "weight channels": (lambda: dict(weight=torch.randn(5, 3, device=DEVICE)), r"weight: expected shape \(4, K\), got \(5, 3\)"),
    "K=1": (lambda: dict(weight=torch.randn(4, 1, device=DEVICE)), r"weight: expected K in 2\.\.8 taps, got 1"),
    "K=9": (lambda: dict(weight=torch.randn(4, 9, device=DEVICE)), r"weight: expected K in 2\.\.8 taps, got 9"),
    "bias channels": (lambda: dict(bias=torch.randn(3, device=DEVICE)), r"bias: expected shape \(4,\), got \(3,\)"),
    # The op takes 'none'; the public function's own value for no activation is None.
    "activation": (lambda: dict(activation="gelu"), r"activation: expected (one of \('none', 'silu'\)|None or 'silu'), got 'gelu'"),
    "integer weight": (lambda: dict(weight=torch.ones(4, 3, dtype=torch.int32, device=DEVICE)), "weight: expected a floating dtype, got torch.int32"),
    "integer bias": (lambda: dict(bias=torch.ones(4, dtype=torch.int64, device=DEVICE)), "bias: expected a floating dtype, got torch.int64"),
    "float cu_seqlens": (
        lambda: dict(cu_seqlens=torch.tensor([0.0, 5, 7, 10], device=DEVICE)), "cu_seqlens: expected dtype int32 or int64, got torch.float32",
    ),
    "int16 cu_seqlens": (
        lambda: dict(cu_seqlens=torch.tensor([0, 5, 7, 10], dtype=torch.int16, device=DEVICE)),
        "cu_seqlens: expected dtype int32 or int64, got torch.int16",
    ),
    "2-D cu_seqlens": (
        lambda: dict(cu_seqlens=torch.tensor([[0, 5], [7, 10]], dtype=torch.int32, device=DEVICE)),
        r"cu_seqlens: expected shape \(num_seqs \+ 1,\), got \(2, 2\)",
    ),
    "empty cu_seqlens": (
        lambda: dict(cu_seqlens=torch.zeros(0, dtype=torch.int32, device=DEVICE)), r"cu_seqlens: expected shape \(num_seqs \+ 1,\), got \(0,\)",
    ),
    "initial_states K": (
        lambda: dict(initial_states=torch.randn(3, 4, 3, device=DEVICE)),
        r"initial_states: expected shape \(3, 4, 2\) \(num_seqs, C, K - 1\), got \(3, 4, 3\)",
    ),
    "initial_states count": (
        lambda: dict(initial_states=torch.randn(2, 4, 2, device=DEVICE)), r"initial_states: expected shape \(3, 4, 2\)",
    ),
    "initial_states dtype": (
        lambda: dict(initial_states=torch.ones(3, 4, 2, dtype=torch.int32, device=DEVICE)),
        r"initial_states: expected a floating dtype, got torch.int32",
    ),
    "flags without states": (lambda: dict(initial_states=None), "has_initial_state: given without initial_states"),
    "flags dtype": (
        lambda: dict(has_initial_state=torch.tensor([1, 0, 1], dtype=torch.int32, device=DEVICE)),
        "has_initial_state: expected dtype torch.bool, got torch.int32",
    ),
    "flags shape": (
        lambda: dict(has_initial_state=torch.ones(4, dtype=torch.bool, device=DEVICE)), r"has_initial_state: expected shape \(3,\), got \(4,\)",
    ),
    "negative max_seqlen": (lambda: dict(max_seqlen=-1), "max_seqlen: expected a non-negative int, got -1"),
    "cu_seqlens device": (
        lambda: dict(cu_seqlens=torch.empty(4, dtype=torch.int32, device="meta")), r"cu_seqlens: expected device .+ \(x's\), got meta",
    ),
    "initial_states device": (lambda: dict(initial_states=meta(3, 4, 2)), r"initial_states: expected device .+ \(x's\), got meta"),
}


@pytest.mark.parametrize("validate", [False, True], ids=["unvalidated", "validated"])
@pytest.mark.parametrize("name", VARLEN_ERRORS)
def test_varlen_bad_arguments_name_the_argument(name: str, validate: bool) -> None:
    """causal_conv1d_triton and causal_conv1d_varlen (validating the offsets or not) raise a ValueError naming the argument."""
    overrides, message = VARLEN_ERRORS[name]
    args = varlen_args(**overrides())
    with pytest.raises(ValueError, match="causal_conv1d_triton: " + message):
        conv1d.causal_conv1d_triton(packed(args))
    if not on_meta(args):
        with pytest.raises(ValueError, match=message):
            conv1d.causal_conv1d_varlen(**args, validate=validate)


def test_public_activation_error_lists_the_public_values() -> None:
    with pytest.raises(ValueError, match=r"^activation: expected None or 'silu', got 'relu'$"):
        conv1d.causal_conv1d_varlen(**varlen_args(activation="relu"))


OFFSET_ERRORS = {  # name: (cu_seqlens over 10 tokens, max_seqlen, message)
    "negative first offset": ([-1, 5, 7, 10], None, r"cu_seqlens: expected offsets >= 0, got cu_seqlens\[0\] = -1"),
    "decreasing": ([0, 5, 3, 10], None, "cu_seqlens: offsets decrease at sequence 1: 5 -> 3"),
    "last offset past the end": ([0, 5, 7, 12], None, "cu_seqlens: the last offset 12 overruns x's 10 tokens"),
    "a sequence over max_seqlen": ([0, 2, 7, 10], 4, "cu_seqlens: sequence 1 has 5 tokens, over max_seqlen 4"),
}


@pytest.mark.parametrize("offsets_dtype", conv1d.OFFSET_DTYPES, ids=str)
@pytest.mark.parametrize("name", OFFSET_ERRORS)
def test_validate_rejects_bad_offsets(name: str, offsets_dtype: torch.dtype) -> None:
    """validate=True raises a ValueError naming the bad offset; unvalidated, the same offsets run."""
    offsets, max_seqlen, message = OFFSET_ERRORS[name]
    args = varlen_args(cu_seqlens=torch.tensor(offsets, dtype=offsets_dtype, device=DEVICE), max_seqlen=max_seqlen)
    with pytest.raises(ValueError, match=message):
        conv1d.causal_conv1d_varlen(**args, validate=True)
    out, final = conv1d.causal_conv1d_varlen(**args)
    assert out.shape == (4, 10) and final.shape == (3, 4, 2)
    assert not final.isnan().any()


# --- Operands the kernel does not take ----------------------------------------------------------

UNSUPPORTED: dict[str, tuple[Callable[[], dict[str, Any]], str, float]] = {  # name: (overrides, reason, tolerance)
    "float64 x": (lambda: dict(x=torch.randn(2, 4, 6, dtype=torch.float64, device=DEVICE)), "x dtype torch.float64", 1e-5),
    "float64 x and out": (
        lambda: dict(x=torch.randn(2, 4, 6, dtype=torch.float64, device=DEVICE), out_dtype=torch.float64), "x dtype torch.float64", 1e-12,
    ),
    "float64 weight": (lambda: dict(weight=torch.randn(4, 3, dtype=torch.float64, device=DEVICE)), "weight dtype torch.float64", 1e-5),
    "float64 bias": (lambda: dict(bias=torch.randn(4, dtype=torch.float64, device=DEVICE)), "bias dtype torch.float64", 1e-5),
    "float64 out": (lambda: dict(out_dtype=torch.float64), "out_dtype torch.float64", 1e-5),
}


@pytest.mark.parametrize("name", UNSUPPORTED)
def test_unsupported_dtypes_fall_back_to_the_reference(name: str) -> None:
    """fp64 operands: a reason, a ValueError from causal_conv1d_triton, the right values from the dense op (the reference)."""
    overrides, reason, tolerance = UNSUPPORTED[name]
    args = dense_args(**overrides())
    c = conv1d.CausalConv1d(**args)
    assert reason in conv1d.unsupported_reason(c)
    with pytest.raises(ValueError, match="causal_conv1d_triton: " + re.escape(reason)):
        conv1d.causal_conv1d_triton(c)
    with mock.patch.object(conv1d, "_launch", side_effect=AssertionError("the kernel ran")):
        out = torch.ops.fusion_passes.causal_conv1d(*args.values())
    assert out.dtype == c.out_dtype
    assert_matches(out, expected_dense(c), tolerance)


@pytest.mark.parametrize("state_dtype", [None, torch.float32, torch.float64], ids=str)
def test_unsupported_packed_float64_x_falls_back_to_the_reference(state_dtype: torch.dtype | None) -> None:
    """fp64 packed x (with no, fp32 or fp64 states): a reason, and the right out and final states from causal_conv1d_varlen."""
    c = varlen_call(dtype=torch.float64, states="no states" if state_dtype is None else "states and flags", state_dtype=state_dtype)
    assert "x dtype torch.float64" in conv1d.unsupported_reason(c)
    with mock.patch.object(conv1d, "_launch", side_effect=AssertionError("the kernel ran")):
        out, final = public_varlen(c, validate=True)
    out_ref, final_ref = expected_varlen(c)
    assert out.dtype == torch.float64 and final.dtype == c.final_states_dtype
    assert_matches(out, out_ref, 1e-12)
    assert_matches(final, final_ref, 1e-12 if final.dtype == torch.float64 else 1e-6)
