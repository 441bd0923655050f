"""Causal depthwise conv1d with optional SiLU (causal_conv1d): a dense op and a packed variable-length op.

Per channel ``c`` and token ``t`` of a sequence, with ``K`` taps:
``y[c, t] = act(bias[c] + sum_{j<K} w[c, j] * x[c, t - K + 1 + j])``, where positions before the
sequence's first token read its initial state (``K - 1`` values per channel) or zeros; fp32 math,
one rounding at the store.

- ``fusion_passes::causal_conv1d``: x ``[B, C, L]`` (any strides: the channel-last form is
  ``x_blc.transpose(1, 2)``), zeros before ``t = 0``. What the graph pass emits for
  ``F.conv1d(x, w[:, None, :], b, padding=K-1, groups=C)[..., :L]`` (+ SiLU); ``conv_dtype`` is the
  dtype the unfused graph rounds the convolution to before the activation.
- ``fusion_passes::causal_conv1d_varlen``: the serving form. Tokens of several sequences packed in
  x ``[C, total_tokens]`` (token-major memory is ``x_tc.t()``), ``cu_seqlens`` ``[S + 1]``
  cumulative starts, optional ``initial_states`` ``[S, C, K - 1]`` (used where the optional
  ``has_initial_state`` ``[S]`` is true, zeros elsewhere). Returns ``(out, final_states)``:
  ``out`` in x's layout, ``final_states`` ``[S, C, K - 1]`` the last ``K - 1`` inputs of each
  sequence (reaching into its initial state for sequences shorter than that) for the next step.
  Tokens outside every sequence (before ``cu_seqlens[0]``, after ``cu_seqlens[-1]``: padding) are
  left unwritten, as serving engines' kernels leave them.

Nothing here reads a device value on the host: the grid is (sequence, token block, channel
block) from sizes the host has (``max_seqlen`` bounds the token blocks; without it the grid is
sized from the total token count and programs loop over a sequence's blocks), so the launch can
be captured in a CUDA graph. Offsets are clamped to ``[0, total_tokens]`` in the kernel (bad
offsets cannot make it touch memory outside x); ``causal_conv1d_varlen(..., validate=True)``
checks them on the host instead, at the cost of a synchronization.

One file holds the whole story: the pure-torch reference (CPU, and CUDA operands the kernel does
not take), the Triton kernel (one for both ops), its launcher, and the custom ops.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import torch
import triton
import triton.language as tl

from fusion_passes.compat import assert_async
from fusion_passes.kernels.common import (
    SUPPORTED_DTYPES, check_devices, device_error, kernel_or_reference, needs_dispatcher, on_device_of,
)
from fusion_passes.kernels.launch import DirectLaunch, KernelLaunch, NotEmittable, fused_op, size_hint

ACTIVATIONS = ("none", "silu")
MIN_KERNEL_WIDTH = 2
MAX_KERNEL_WIDTH = 8
OFFSET_DTYPES = (torch.int32, torch.int64)
# The rounding codes of the kernel's ROUND_CONV: the convolution rounded to this dtype before
# the activation (float32: no rounding).
_ROUNDING_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
# CUDA caps grid dims 1 and 2 at 65535. The token-block dim is also capped so that the grid holds
# about TARGET_PROGRAMS programs, each looping over its sequence's remaining blocks (the next
# block's first taps re-read the last rows of the one before, from cache). On the H200 (run G, with
# and without max_seqlen) the launch with fewer programs was the faster in each of the four packings
# where the two differed: 0.377 vs 0.404 ms (32768 tokens), 0.124 vs 0.144, 0.264 vs 0.312, 0.241 vs 0.274.
MAX_GRID_YZ = 65535
TARGET_PROGRAMS = 1 << 16


@dataclasses.dataclass(frozen=True)
class CausalConv1d:
    """The operands and settings of one call: dense (``cu_seqlens is None``, x ``[B, C, L]``) or packed (x ``[C, T]``)."""

    x: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor | None
    activation: str
    conv_dtype: torch.dtype
    out_dtype: torch.dtype
    cu_seqlens: torch.Tensor | None = None
    initial_states: torch.Tensor | None = None
    has_initial_state: torch.Tensor | None = None
    max_seqlen: int | None = None

    @property
    def varlen(self) -> bool:
        """Whether x packs several sequences along its token dim."""
        return self.cu_seqlens is not None

    @property
    def channels(self) -> int:
        """C."""
        return self.x.shape[-2]

    @property
    def width(self) -> int:
        """K, the number of taps."""
        return self.weight.shape[1]

    @property
    def sequences(self) -> int:
        """S (packed) or B (dense)."""
        return self.cu_seqlens.shape[0] - 1 if self.cu_seqlens is not None else self.x.shape[0]

    @property
    def final_states_dtype(self) -> torch.dtype:
        """The dtype of the final states: the initial states', else x's."""
        return final_states_dtype(self.x, self.initial_states)

    def named_operands(self) -> list[tuple[str, torch.Tensor | None]]:
        """Every tensor operand by its argument name."""
        return [
            ("x", self.x), ("weight", self.weight), ("bias", self.bias), ("cu_seqlens", self.cu_seqlens),
            ("initial_states", self.initial_states), ("has_initial_state", self.has_initial_state),
        ]

    def empty_final_states(self) -> torch.Tensor:
        """An uninitialized ``[S, C, K - 1]`` final-states output."""
        return empty_final_states(self.x, self.weight, self.sequences, self.initial_states)


def final_states_dtype(x: torch.Tensor, initial_states: torch.Tensor | None) -> torch.dtype:
    """The dtype of the final states: the initial states', else x's."""
    return initial_states.dtype if initial_states is not None else x.dtype


def empty_final_states(x: torch.Tensor, weight: torch.Tensor, sequences: int, initial_states: torch.Tensor | None) -> torch.Tensor:
    """An uninitialized ``[S, C, K - 1]`` final-states output (``final_states_dtype``)."""
    shape = (sequences, x.shape[-2], weight.shape[1] - 1)
    return torch.empty(shape, dtype=final_states_dtype(x, initial_states), device=x.device)


def argument_error(call: CausalConv1d) -> str | None:
    """What is wrong with the call's shapes, dtypes and devices, or None (checked on every call)."""
    x, weight = call.x, call.weight
    expected_dims = 2 if call.varlen else 3
    layout = "[C, total_tokens]" if call.varlen else "[B, C, L]"
    if x.dim() != expected_dims:
        return f"x: expected {expected_dims} dims {layout}, got shape {tuple(x.shape)}"
    for name, tensor in (("x", x), ("weight", weight), ("bias", call.bias)):
        if tensor is not None and not tensor.is_floating_point():
            return f"{name}: expected a floating dtype, got {tensor.dtype}"
    channels = call.channels
    if weight.dim() != 2 or weight.shape[0] != channels:
        return f"weight: expected shape ({channels}, K), got {tuple(weight.shape)}"
    if not MIN_KERNEL_WIDTH <= call.width <= MAX_KERNEL_WIDTH:
        return f"weight: expected K in {MIN_KERNEL_WIDTH}..{MAX_KERNEL_WIDTH} taps, got {call.width}"
    if call.bias is not None and tuple(call.bias.shape) != (channels,):
        return f"bias: expected shape ({channels},), got {tuple(call.bias.shape)}"
    if call.activation not in ACTIVATIONS:
        return f"activation: expected one of {ACTIVATIONS}, got {call.activation!r}"
    if call.conv_dtype not in _ROUNDING_CODES:
        return f"conv_dtype: expected one of {sorted(map(str, _ROUNDING_CODES))}, got {call.conv_dtype}"
    if (error := device_error(call.named_operands())) is not None:
        return error
    if not call.varlen:
        if call.initial_states is not None or call.has_initial_state is not None or call.max_seqlen is not None:
            return "initial_states, has_initial_state, max_seqlen: expected None for the dense op"
        return None
    cu_seqlens = call.cu_seqlens
    if cu_seqlens.dim() != 1 or cu_seqlens.shape[0] < 1:
        return f"cu_seqlens: expected shape (num_seqs + 1,), got {tuple(cu_seqlens.shape)}"
    if cu_seqlens.dtype not in OFFSET_DTYPES:
        return f"cu_seqlens: expected dtype int32 or int64, got {cu_seqlens.dtype}"
    sequences = call.sequences
    if call.initial_states is not None:
        expected = (sequences, channels, call.width - 1)
        if tuple(call.initial_states.shape) != expected:
            return f"initial_states: expected shape {expected} (num_seqs, C, K - 1), got {tuple(call.initial_states.shape)}"
        if not call.initial_states.is_floating_point():
            return f"initial_states: expected a floating dtype, got {call.initial_states.dtype}"
    if call.has_initial_state is not None:
        if call.initial_states is None:
            return "has_initial_state: given without initial_states"
        if tuple(call.has_initial_state.shape) != (sequences,):
            return f"has_initial_state: expected shape ({sequences},), got {tuple(call.has_initial_state.shape)}"
        if call.has_initial_state.dtype != torch.bool:
            return f"has_initial_state: expected dtype torch.bool, got {call.has_initial_state.dtype}"
    if call.max_seqlen is not None and call.max_seqlen < 0:
        return f"max_seqlen: expected a non-negative int, got {call.max_seqlen}"
    return None


def unsupported_reason(call: CausalConv1d) -> str | None:
    """Why the Triton kernel cannot run ``call`` (the reference then does), or None."""
    for name, tensor in (("x", call.x), ("weight", call.weight), ("bias", call.bias), ("initial_states", call.initial_states)):
        if tensor is not None and tensor.dtype not in SUPPORTED_DTYPES:
            return f"{name} dtype {tensor.dtype} is not one of {sorted(map(str, SUPPORTED_DTYPES))}"
    if call.out_dtype not in SUPPORTED_DTYPES:
        return f"out_dtype {call.out_dtype} is not one of {sorted(map(str, SUPPORTED_DTYPES))}"
    return None


def output_like(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """An uninitialized output of x's shape in x's layout: channel-last where x's channels are its
    innermost dim (so a transpose back to ``[..., L, C]`` is a view), else contiguous."""
    if x.dim() >= 2 and x.stride(-2) < x.stride(-1):
        # (One allocation of the strides, not a transposed view: this runs on every eager call.)
        strides, size = [1, x.shape[-2]], x.shape[-2] * x.shape[-1]
        for extent in reversed(x.shape[:-2]):
            strides.insert(0, size)
            size *= extent
        return torch.empty_strided(x.shape, strides, dtype=dtype, device=x.device)
    return torch.empty(x.shape, dtype=dtype, device=x.device)


# --- Reference -----------------------------------------------------------------------------------


def _convolve(window: torch.Tensor, call: CausalConv1d, work: torch.dtype) -> torch.Tensor:
    # window [..., C, K - 1 + n]: the n outputs, with the call's rounding and activation.
    width, length = call.width, window.shape[-1] - call.width + 1
    weight = call.weight.to(work)
    value = sum(weight[:, j, None] * window[..., j: j + length] for j in range(width))
    if call.bias is not None:
        value = value + call.bias.to(work)[:, None]
    value = value.to(call.conv_dtype).to(work) if work == torch.float32 else value
    if call.activation == "silu":
        value = torch.nn.functional.silu(value)
    return value


def reference(call: CausalConv1d) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Pure-torch ``(out, final_states)`` (final states None for the dense op), fp32 math (fp64 for fp64 x)."""
    work = torch.float64 if call.x.dtype == torch.float64 else torch.float32
    history = call.width - 1
    out = output_like(call.x, call.out_dtype)
    if not call.varlen:
        window = torch.nn.functional.pad(call.x.to(work), (history, 0))
        out.copy_(_convolve(window, call, work))
        return out, None
    total = call.x.shape[1]
    final = call.empty_final_states()
    offsets = call.cu_seqlens.clamp(0, total).tolist()
    flags = call.has_initial_state.tolist() if call.has_initial_state is not None else [True] * call.sequences
    for s in range(call.sequences):
        start = offsets[s]
        end = max(start, offsets[s + 1])
        if call.initial_states is not None and flags[s]:
            state = call.initial_states[s].to(work)
        else:
            state = call.x.new_zeros((call.channels, history), dtype=work)
        window = torch.cat([state, call.x[:, start:end].to(work)], dim=1)
        out[:, start:end] = _convolve(window, call, work)
        final[s] = window[:, window.shape[1] - history:]
    return out, final


# --- Kernel --------------------------------------------------------------------------------------


@triton.jit
def _offsets(channels, positions, channel_stride, token_stride, INT64: tl.constexpr):
    # [channels, positions] element offsets; int64 only where a tensor's extent needs it.
    if INT64:
        offsets = channels[:, None].to(tl.int64) * channel_stride + positions[None, :].to(tl.int64) * token_stride
    else:
        offsets = channels[:, None] * channel_stride + positions[None, :] * token_stride
    return offsets


@triton.jit
def _state_values(init_seq, channels, init_channel_mask, positions, valid, sic, sik, HISTORY: tl.constexpr):
    # The initial state at negative sequence positions (zeros elsewhere, and without a state), fp32.
    mask = init_channel_mask[:, None] & (valid & (positions < 0))[None, :]
    offsets = channels[:, None] * sic + (HISTORY + positions)[None, :] * sik
    return tl.load(init_seq + offsets, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _causal_conv1d_kernel(
    x_ptr, weight_ptr, bias_ptr, out_ptr, cu_seqlens_ptr, init_ptr, has_init_ptr, final_ptr,
    channels, length,
    sxs, sxc, sxt, sos, soc, sot, swc, swk, sb, scu, sflag,
    sis, sic, sik, sfs, sfc, sfk,
    WIDTH: tl.constexpr, VARLEN: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_INIT: tl.constexpr,
    HAS_INIT_FLAGS: tl.constexpr, SILU: tl.constexpr, ROUND_CONV: tl.constexpr, INT64: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_K: tl.constexpr,
):
    # One program: BLOCK_C channels of one sequence, token blocks pid1, pid1 + grid1, ... of it.
    # ``length``: every sequence's length (dense) or the total token count (packed, for clamping).
    # A tap reads the block's tile shifted back by K - 1 - j tokens (a cache hit after the first);
    # only blocks reaching before the sequence's start read its initial state.
    HISTORY: tl.constexpr = WIDTH - 1
    seq = tl.program_id(0)
    if VARLEN:
        start = tl.minimum(tl.maximum(tl.load(cu_seqlens_ptr + seq * scu), 0), length)
        end = tl.minimum(tl.maximum(tl.load(cu_seqlens_ptr + (seq + 1) * scu), start), length)
        seq_len = (end - start).to(tl.int32)
        x_seq = x_ptr + start.to(tl.int64) * sxt
        out_seq = out_ptr + start.to(tl.int64) * sot
    else:
        seq_len = length
        x_seq = x_ptr + seq.to(tl.int64) * sxs
        out_seq = out_ptr + seq.to(tl.int64) * sos
    channels_ = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
    channel_mask = channels_ < channels
    init_seq = init_ptr  # None without initial states
    if HAS_INIT:
        init_seq = init_ptr + seq.to(tl.int64) * sis
    # The channels whose initial state is read: none for a sequence flagged to start from zeros.
    init_channel_mask = channel_mask
    if HAS_INIT_FLAGS:
        # (A where, not `channel_mask & flag`: Triton 3.9's interpreter makes a vector & scalar mask uint8.)
        init_channel_mask = tl.where(tl.load(has_init_ptr + seq * sflag) != 0, channel_mask, False)
    bias = tl.zeros([BLOCK_C], dtype=tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + channels_ * sb, mask=channel_mask, other=0.0).to(tl.float32)
    for token_block in range(tl.program_id(1), tl.cdiv(seq_len, BLOCK_L), tl.num_programs(1)):
        tokens = token_block * BLOCK_L + tl.arange(0, BLOCK_L)
        valid = tokens < seq_len
        x_tile = x_seq + _offsets(channels_, tokens, sxc, sxt, INT64)
        acc = tl.zeros([BLOCK_C, BLOCK_L], dtype=tl.float32) + bias[:, None]
        for j in tl.static_range(WIDTH):
            tap = tl.load(weight_ptr + channels_ * swc + j * swk, mask=channel_mask, other=0.0).to(tl.float32)
            shift = HISTORY - j
            in_x = valid & (tokens >= shift)
            value = tl.load(x_tile - shift * sxt, mask=channel_mask[:, None] & in_x[None, :], other=0.0).to(tl.float32)
            if HAS_INIT:
                if token_block * BLOCK_L < shift:
                    value += _state_values(init_seq, channels_, init_channel_mask, tokens - shift, valid, sic, sik,
                                           HISTORY)
            acc += tap[:, None] * value
        if ROUND_CONV == 1:
            acc = acc.to(tl.float16).to(tl.float32)
        elif ROUND_CONV == 2:
            acc = acc.to(tl.bfloat16).to(tl.float32)
        if SILU:
            acc = acc * tl.sigmoid(acc)
        mask = channel_mask[:, None] & valid[None, :]
        tl.store(out_seq + _offsets(channels_, tokens, soc, sot, INT64), acc.to(out_ptr.dtype.element_ty), mask=mask)
    if VARLEN and tl.program_id(1) == 0:
        # The final states: inputs at positions seq_len - K + 1 .. seq_len - 1.
        slots = tl.arange(0, BLOCK_K)
        positions = seq_len - HISTORY + slots
        in_state = slots < HISTORY
        mask = channel_mask[:, None] & (in_state & (positions >= 0))[None, :]
        states = tl.load(x_seq + _offsets(channels_, positions, sxc, sxt, INT64), mask=mask, other=0.0).to(tl.float32)
        if HAS_INIT:
            states += _state_values(init_seq, channels_, init_channel_mask, positions, in_state, sic, sik, HISTORY)
        final = final_ptr + seq.to(tl.int64) * sfs + channels_[:, None] * sfc + slots[None, :] * sfk
        tl.store(final, states.to(final_ptr.dtype.element_ty), mask=channel_mask[:, None] & in_state[None, :])


@dataclasses.dataclass(frozen=True)
class LaunchConfig:
    """Channels and tokens per program tile, and warps."""

    block_channels: int
    block_tokens: int
    num_warps: int


# Elements of one program's tile; the tile is long along x's contiguous dim (vector loads), up to
# 256 channel-first and 128 channel-last elements. Swept on an H200 (docs/BENCHMARKS.md run G, bf16,
# C = 8192): 8 x 256 channel-first is the best of 18 configs at L = 32768 and within 1.3% at 4096;
# 128 x 16 channel-last beats 256 x 8 by 6-7% at both lengths.
TILE_ELEMENTS = 2048
CONTIGUOUS_BLOCK = {False: 256, True: 128}
ELEMENTS_PER_WARP = 512


def launch_config(channels: int, max_tokens: int, channel_last: bool) -> LaunchConfig:
    """A tile about TILE_ELEMENTS big, up to CONTIGUOUS_BLOCK[channel_last] long along the contiguous dim."""
    # Cached by powers of two: a server's token counts change every step.
    return _launch_config(triton.next_power_of_2(max(1, channels)), triton.next_power_of_2(max(1, max_tokens)), channel_last)


@functools.cache
def _launch_config(channels_pow2: int, tokens_pow2: int, channel_last: bool) -> LaunchConfig:
    if channel_last:
        block_channels = min(CONTIGUOUS_BLOCK[True], channels_pow2)
        block_tokens = min(tokens_pow2, max(1, TILE_ELEMENTS // block_channels))
    else:
        block_tokens = min(CONTIGUOUS_BLOCK[False], tokens_pow2)
        block_channels = min(channels_pow2, max(1, TILE_ELEMENTS // block_tokens))
    num_warps = min(8, max(1, block_channels * block_tokens // ELEMENTS_PER_WARP))
    return LaunchConfig(block_channels, block_tokens, num_warps)


def _needs_int64(*tensors: torch.Tensor) -> bool:
    # Whether an element offset within one sequence of these tensors may pass int32 (always, for
    # symbolic sizes: a compiled graph's launch must hold for every size it will see).
    if any(not isinstance(size, int) for t in tensors for size in (*t.shape, *t.stride())):
        return True
    return any(sum((size - 1) * abs(stride) for size, stride in zip(t.shape, t.stride())) >= 2**31 for t in tensors)


def kernel_launch(
    call: CausalConv1d, out: torch.Tensor, final: torch.Tensor | None, config: LaunchConfig | None = None
) -> KernelLaunch | None:
    """The launch computing ``call`` into ``out`` (and ``final``); None where there is nothing to do.

    A function of shapes, strides, dtypes and the device only: a compiled graph plans it once
    (a symbolic length sizes the tiles by its compile-time value; the kernel masks any length).
    """
    x, weight, bias = call.x, call.weight, call.bias
    history = call.width - 1
    if call.varlen:
        total = x.shape[1]
        # Dense-only batch strides are 0: every packed sequence starts in x at its offset.
        x_strides, out_strides = (0, *x.stride()), (0, *out.stride())
        max_tokens = total if call.max_seqlen is None else torch.sym_min(call.max_seqlen, total)
        length = total
    else:
        x_strides, out_strides = x.stride(), out.stride()
        max_tokens = length = x.shape[2]
    if _nothing_to_do(call.sequences, out, final):
        return None
    channel_last = x.stride(-2) == 1 and x.shape[-1] > 1
    config = config or launch_config(call.channels, size_hint(max_tokens), channel_last)
    grid = _grid(call.sequences, call.channels, max_tokens, config)
    init, flags = call.initial_states, call.has_initial_state
    init_strides = init.stride() if init is not None else (0, 0, 0)
    final_strides = final.stride() if final is not None else (0, 0, 0)
    arguments = dict(zip(_CONV1D_ARGUMENT_NAMES, (
        x, weight, bias, out, call.cu_seqlens, init, flags.view(torch.uint8) if flags is not None else None, final,
        call.channels, length,
        *x_strides, *out_strides, *weight.stride(), bias.stride(0) if bias is not None else 0,
        call.cu_seqlens.stride(0) if call.varlen else 0, flags.stride(0) if flags is not None else 0,
        *init_strides, *final_strides,
    ), strict=True))
    arguments.update(
        WIDTH=call.width, VARLEN=call.varlen, HAS_BIAS=bias is not None, HAS_INIT=init is not None,
        HAS_INIT_FLAGS=flags is not None, SILU=call.activation == "silu",
        ROUND_CONV=_ROUNDING_CODES[call.conv_dtype], INT64=_needs_int64(x, out),
        BLOCK_C=config.block_channels, BLOCK_L=config.block_tokens,
        BLOCK_K=triton.next_power_of_2(max(history, 1)),
        num_warps=config.num_warps,
    )
    outputs = ("out_ptr",) + (("final_ptr",) if final is not None else ())
    return KernelLaunch(_causal_conv1d_kernel, grid, arguments, outputs)


def _nothing_to_do(sequences: int, out: torch.Tensor, final: torch.Tensor | None) -> bool:
    return sequences == 0 or (out.numel() == 0 and (final is None or final.numel() == 0))


def _grid(sequences: int, channels: int, max_tokens: int, config: LaunchConfig) -> tuple[int, int, int]:
    # (sequence, token block, channel block); programs loop over token blocks past the target count.
    channel_blocks = triton.cdiv(channels, config.block_channels)
    if channel_blocks > MAX_GRID_YZ:
        raise ValueError(f"channels: {channels} need {channel_blocks} channel blocks, over the grid's {MAX_GRID_YZ}")
    # (torch.sym_min/max only for symbolic sizes: they cost microseconds on every eager call.)
    minimum, maximum = (min, max) if isinstance(max_tokens, int) else (torch.sym_min, torch.sym_max)
    token_blocks = maximum(1, triton.cdiv(max_tokens, config.block_tokens))
    token_blocks = minimum(token_blocks, max(1, TARGET_PROGRAMS // (size_hint(sequences) * channel_blocks)))
    return sequences, minimum(token_blocks, MAX_GRID_YZ), channel_blocks


_CONV1D_ARGUMENT_NAMES = (
    "x_ptr", "weight_ptr", "bias_ptr", "out_ptr", "cu_seqlens_ptr", "init_ptr", "has_init_ptr", "final_ptr",
    "channels", "length", "sxs", "sxc", "sxt", "sos", "soc", "sot", "swc", "swk", "sb", "scu", "sflag",
    "sis", "sic", "sik", "sfs", "sfc", "sfk",
)


def _launch(call: CausalConv1d, config: LaunchConfig | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    out = output_like(call.x, call.out_dtype)
    final = call.empty_final_states() if call.varlen else None
    launch = kernel_launch(call, out, final, config)
    if launch is not None:
        launch.run()
    return out, final


def _emit(call: CausalConv1d) -> tuple[torch.Tensor, torch.Tensor | None]:
    # The launch planned at compile time in the graph being traced.
    if call.x.device.type != "cuda":
        raise NotEmittable(f"x is on {call.x.device}; only CUDA has the kernel")
    reason = argument_error(call) or unsupported_reason(call)
    if reason is not None:
        raise NotEmittable(reason)
    out = output_like(call.x, call.out_dtype)
    final = call.empty_final_states() if call.varlen else None
    launch = kernel_launch(call, out, final)
    if launch is None:
        return out, final
    written = launch.emit()
    return written["out_ptr"], written.get("final_ptr")


def causal_conv1d_triton(call: CausalConv1d, config: LaunchConfig | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Run the kernel on ``call``; a ValueError says why it cannot."""
    reason = argument_error(call) or unsupported_reason(call)
    if reason is not None:
        raise ValueError(f"causal_conv1d_triton: {reason}")
    return _launch(call, config)


def _run(call: CausalConv1d) -> tuple[torch.Tensor, torch.Tensor | None]:
    return kernel_or_reference(call, call.x, argument_error, unsupported_reason, reference, _launch)


# --- Custom ops ----------------------------------------------------------------------------------


# Each op is declared by the function making its arguments one call (its schema comes from the
# signature); the op's body, fake and emitter all read the call.


def _fake_outputs(call: CausalConv1d) -> tuple[torch.Tensor, torch.Tensor | None]:
    # The outputs' metadata, after the same device check as the real op (a meta operand among real
    # ones reaches the fake).
    check_devices(call.named_operands())
    return output_like(call.x, call.out_dtype), call.empty_final_states() if call.varlen else None


def _dense_call(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, activation: str, conv_dtype: torch.dtype,
    out_dtype: torch.dtype,
) -> CausalConv1d:
    """causal_conv1d, dense: x ``[B, C, L]``, weight ``[C, K]``; zeros before the first token; output in x's layout."""
    return CausalConv1d(x, weight, bias, activation, conv_dtype, out_dtype)


def _packed_call(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, cu_seqlens: torch.Tensor,
    initial_states: torch.Tensor | None, has_initial_state: torch.Tensor | None, activation: str, max_seqlen: int | None,
) -> CausalConv1d:
    """causal_conv1d, packed: x ``[C, T]``, offsets ``[S + 1]``; returns ``(out, final_states [S, C, K - 1])``."""
    return CausalConv1d(x, weight, bias, activation, torch.float32, x.dtype, cu_seqlens, initial_states,
                        has_initial_state, max_seqlen)


causal_conv1d = fused_op(
    "fusion_passes::causal_conv1d", _dense_call, _run, _fake_outputs, _emit, torch.Tensor, first_output_only=True
)
causal_conv1d_varlen_op = fused_op(
    "fusion_passes::causal_conv1d_varlen", _packed_call, _run, _fake_outputs, _emit, tuple[torch.Tensor, torch.Tensor]
)


def validate_offsets(cu_seqlens: torch.Tensor, total_tokens: int, max_seqlen: int | None) -> None:
    """Raise ValueError unless the offsets start >= 0, never decrease, end <= total_tokens and
    no sequence is longer than ``max_seqlen`` (reads the offsets on the host: a synchronization)."""
    offsets = cu_seqlens.tolist()
    if offsets[0] < 0:
        raise ValueError(f"cu_seqlens: expected offsets >= 0, got cu_seqlens[0] = {offsets[0]}")
    for s in range(len(offsets) - 1):
        if offsets[s + 1] < offsets[s]:
            raise ValueError(f"cu_seqlens: offsets decrease at sequence {s}: {offsets[s]} -> {offsets[s + 1]}")
        if max_seqlen is not None and offsets[s + 1] - offsets[s] > max_seqlen:
            raise ValueError(f"cu_seqlens: sequence {s} has {offsets[s + 1] - offsets[s]} tokens, over max_seqlen {max_seqlen}")
    if offsets[-1] > total_tokens:
        raise ValueError(f"cu_seqlens: the last offset {offsets[-1]} overruns x's {total_tokens} tokens")


def assert_offsets_async(cu_seqlens: torch.Tensor, total_tokens: int, max_seqlen: int | None) -> None:
    """``validate_offsets``'s checks as asserts on the device, for compiled graphs: no host
    synchronization; a failing check stops the program at run time with the message (on CUDA, as a
    device-side assert)."""
    offsets = cu_seqlens.to(torch.int64)
    lengths = offsets[1:] - offsets[:-1]
    assert_async(offsets[0] >= 0, "cu_seqlens: expected offsets >= 0")
    assert_async((lengths >= 0).all(), "cu_seqlens: expected offsets that never decrease")
    assert_async(offsets[-1] <= total_tokens, f"cu_seqlens: the last offset overruns x's {total_tokens} tokens")
    if max_seqlen is not None:
        assert_async((lengths <= max_seqlen).all(), f"cu_seqlens: a sequence is longer than max_seqlen {max_seqlen}")


def causal_conv1d_varlen(
    x: torch.Tensor,
    weight: torch.Tensor,
    cu_seqlens: torch.Tensor,
    bias: torch.Tensor | None = None,
    initial_states: torch.Tensor | None = None,
    has_initial_state: torch.Tensor | None = None,
    activation: str | None = "silu",
    max_seqlen: int | None = None,
    validate: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Causal depthwise conv1d over packed sequences; returns ``(out, final_states)``.

    Forward only (no autograd). ``x`` is ``[C, total_tokens]`` (pass token-major ``[total_tokens, C]``
    memory as ``x_tc.t()``);
    ``out`` has x's layout. ``max_seqlen`` (the longest sequence, if the caller knows it) sizes the
    grid; ``validate=True`` checks the offsets on the host first (off by default: it synchronizes;
    inside a compiled graph the checks are device-side asserts instead).
    """
    if activation not in (None, "silu"):
        raise ValueError(f"activation: expected None or 'silu', got {activation!r}")
    if validate:
        call = CausalConv1d(x, weight, bias, activation or "none", torch.float32, x.dtype, cu_seqlens, initial_states,
                            has_initial_state, max_seqlen)
        error = argument_error(call)
        if error is not None:
            raise ValueError(error)
        if torch.compiler.is_compiling():
            assert_offsets_async(cu_seqlens, x.shape[-1], max_seqlen)
        else:
            validate_offsets(cu_seqlens, x.shape[-1], max_seqlen)
    arguments = (x, weight, bias, cu_seqlens, initial_states, has_initial_state, activation or "none", max_seqlen)
    if needs_dispatcher(arguments[:6]):
        return causal_conv1d_varlen_op(*arguments)
    # A serving loop calls this eagerly: straight to the implementation the op would run, planned
    # once per operand layout.
    return _eager_packed(arguments)


# --- Eager packed calls ------------------------------------------------------------------------


@dataclasses.dataclass
class _PackedPlan:
    """What an eager packed call's checks and launch depend on, apart from its token count."""

    error: str | None
    on_kernel: bool  # else the reference computes it
    launches: dict[tuple[LaunchConfig, bool], DirectLaunch] = dataclasses.field(default_factory=dict)
    # Per token count (and x's strides, max_seqlen): the outputs' layout, the grid and the launch.
    sized: dict[tuple[object, ...], _SizedLaunch] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class _SizedLaunch:
    """An eager packed call's outputs and launch for one token count."""

    out_shape: tuple[int, ...]
    out_strides: tuple[int, ...]
    final_shape: tuple[int, ...]
    final_dtype: torch.dtype
    grid: tuple[int, int, int]
    launch: DirectLaunch | None  # None: nothing to compute


# The launch arguments that change from call to call of one layout; the rest are planned.
_PACKED_RUNTIME_ARGUMENTS = ("x_ptr", "weight_ptr", "bias_ptr", "out_ptr", "cu_seqlens_ptr", "init_ptr", "has_init_ptr",
                             "final_ptr", "length", "sxc", "sxt", "soc", "sot")
_PACKED_PLANS: dict[tuple[object, ...], _PackedPlan] = {}
_MAX_PACKED_PLANS = 4096


def _operand_layout(tensor: torch.Tensor | None) -> tuple[object, ...] | None:
    return None if tensor is None else (tensor.shape, tensor.stride(), tensor.dtype, tensor.device)


def _eager_packed(arguments: tuple[object, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    # The op's implementation for its ``arguments`` (in the op's order), with its checks and launch plan
    # looked up by the operands' layout (everything but the token count, which changes on every
    # serving step).
    x, weight, bias, cu_seqlens, initial_states, has_initial_state, activation, max_seqlen = arguments
    if x.dim() != 2:
        return _run(_packed_call(*arguments))
    key = (
        x.shape[0], x.stride(0) < x.stride(1), x.dtype, x.device, _operand_layout(weight), _operand_layout(bias),
        _operand_layout(cu_seqlens), _operand_layout(initial_states), _operand_layout(has_initial_state), activation,
        max_seqlen if max_seqlen is None else max_seqlen >= 0,
    )
    plan = _PACKED_PLANS.get(key)
    if plan is None:
        call = _packed_call(*arguments)
        error = argument_error(call)
        plan = _PackedPlan(error, error is None and x.device.type == "cuda" and unsupported_reason(call) is None)
        _bounded_insert(_PACKED_PLANS, key, plan)
    if plan.error is not None:
        raise ValueError(plan.error)
    if not plan.on_kernel:
        return reference(_packed_call(*arguments))
    return on_device_of(x, _launch_packed, plan, arguments)


def _bounded_insert(cache: dict[Any, Any], key: Any, value: Any) -> None:
    # A serving loop's token counts are unbounded; so is the set of layouts a program may pass.
    if len(cache) >= _MAX_PACKED_PLANS:
        cache.clear()
    cache[key] = value


def _launch_packed(plan: _PackedPlan, arguments: tuple[object, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    x, weight, bias, cu_seqlens, initial_states, has_initial_state, _, max_seqlen = arguments
    total = x.shape[1]
    x_strides = x.stride()
    sized = plan.sized.get((total, x_strides, max_seqlen))
    if sized is None:
        sized = _size_launch(plan, arguments)
        _bounded_insert(plan.sized, (total, x_strides, max_seqlen), sized)
    out = torch.empty_strided(sized.out_shape, sized.out_strides, dtype=x.dtype, device=x.device)
    final = torch.empty(sized.final_shape, dtype=sized.final_dtype, device=x.device)
    if sized.launch is not None:
        flags = has_initial_state.view(torch.uint8) if has_initial_state is not None else None
        sized.launch.launch(
            sized.grid,
            (x, weight, bias, out, cu_seqlens, initial_states, flags, final, total, *x_strides, *sized.out_strides),
        )
    return out, final


def _size_launch(plan: _PackedPlan, arguments: tuple[object, ...]) -> _SizedLaunch:
    # The outputs' layout, grid and launch of an eager packed call at its token count.
    x, weight, _, cu_seqlens, initial_states, _, _, max_seqlen = arguments
    channels, total = x.shape
    sequences = cu_seqlens.shape[0] - 1
    out = output_like(x, x.dtype)
    final = empty_final_states(x, weight, sequences, initial_states)
    max_tokens = total if max_seqlen is None else min(max_seqlen, total)
    config = launch_config(channels, max_tokens, x.stride(0) == 1 and total > 1)
    launch = None
    if not _nothing_to_do(sequences, out, final):
        int64 = _needs_int64(x, out)
        launch = plan.launches.get((config, int64))
        if launch is None:
            planned = kernel_launch(_packed_call(*arguments), out, final, config)
            launch = plan.launches[config, int64] = DirectLaunch(planned.kernel, planned.arguments, _PACKED_RUNTIME_ARGUMENTS)
    return _SizedLaunch(tuple(out.shape), out.stride(), tuple(final.shape), final.dtype,
                        _grid(sequences, channels, max_tokens, config), launch)
