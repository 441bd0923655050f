"""Rotary embedding (rope), optionally after a q/k RMSNorm, as one custom op.

``fusion_passes::rope`` takes one or more *streams* ``xs`` (each ``[*lead, D]``, e.g. ``[B, L, H, D]``)
and returns their concatenation along the lead dim ``cat_dim`` (the joint text + image sequence
of FLUX-like models; one stream for a plain q or k). Per stream, in fp32, rounded once at the store:

1. optionally RMSNorm: over ``D`` per head (``norm="head"``, weight ``[D]``) or over the last two
   dims (``norm="heads"``, all heads of a token before the head split, weight ``[H * D]``), with the
   stream's ``eps``. ``rounding`` reproduces where the unfused graph rounds the normalized value to
   the stream's dtype: before its weight, after it, both, or nowhere;
2. optionally the rotation of the first ``rotary_dim`` (R) dims; dims ``R..D`` pass through.
   Pairs are ``(2i, 2i + 1)`` (``interleaved``) or ``(i, i + R/2)``; for pair ``i`` with members
   ``a, b``: ``a' = a * cos_a - b * sin_a`` and ``b' = b * cos_b + a * sin_b``.

The coefficients come from the graph's own tables, read where the unfused graph reads them, so
every spelling is computed exactly: a table ``T`` (real, or complex where its real and imaginary
parts are cos and sin) broadcasts to ``[*lead, W]`` and a map ``(start, per_pair, per_member,
part)`` says which element serves pair ``i``, member ``j``: ``T[..., start + i * per_pair +
j * per_member]``, its real (``part=0``) or imaginary (``part=1``) part. Interleaved tables
repeated per pair are ``(0, 2, 1, 0)``, half-split ones ``(0, 1, R/2, 0)``, ``cos[..., 0::2]``
slices ``(0, 1, 0, 0)``, complex frequencies ``(0, 1, 0, 0)`` and ``(0, 1, 0, 1)``. A stream with
no table passes unrotated (tokens outside a rotated prefix or suffix).

One file holds the whole story: the pure-torch reference (CPU, and CUDA operands the kernel does
not take), the Triton kernel (several heads of one token per program, each table row loaded once
for all of them), its launcher, and the custom op.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Sequence
from typing import Any

import torch
import triton
import triton.language as tl

from fusion_passes.kernels.common import (
    SUPPORTED_DTYPES,
    LEADING_DIMS,
    broadcasts_to,
    check_devices,
    collapse_leading_dims,
    device_error,
)
from fusion_passes.kernels.launch import KernelLaunch, NotEmittable, fused_op, hinted, size_hint, static_size

NORMS = ("none", "head", "heads")
ROUNDINGS = ("none", "before_weight", "after_weight", "before_and_after_weight")
TABLE_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.complex64, torch.complex128)
# Widest head dim, and widest token (all heads, for norm="heads"), the kernel holds in registers.
MAX_HEAD_DIM = 512
MAX_TOKEN_WIDTH = 16384
MAP_LENGTH = 4


@dataclasses.dataclass(frozen=True)
class Stream:
    """One stream's operands: input, norm weight and eps, tables with their maps (None: unrotated)."""

    x: torch.Tensor
    weight: torch.Tensor | None
    eps: float
    cos: torch.Tensor | None
    sin: torch.Tensor | None
    cos_map: tuple[int, int, int, int]
    sin_map: tuple[int, int, int, int]


@dataclasses.dataclass(frozen=True)
class Rope:
    """The operands and settings of one fused call."""

    streams: tuple[Stream, ...]
    norm: str
    rounding: str
    rotary_dim: int
    interleaved: bool
    cat_dim: int
    out_dtype: torch.dtype

    def named_operands(self) -> list[tuple[str, torch.Tensor | None]]:
        """Every tensor operand by its argument name (``xs[s]``, ``weights[s]``, ``cos[s]``, ``sin[s]``)."""
        return [
            (f"{name}[{s}]", tensor)
            for s, stream in enumerate(self.streams)
            for name, tensor in (("xs", stream.x), ("weights", stream.weight), ("cos", stream.cos), ("sin", stream.sin))
        ]

    @property
    def out_shape(self) -> tuple[int, ...]:
        """The joint output's shape: the streams concatenated along ``cat_dim``."""
        shape = list(self.streams[0].x.shape)
        shape[self.cat_dim] = sum(stream.x.shape[self.cat_dim] for stream in self.streams)
        return tuple(shape)

    @property
    def round_before_weight(self) -> bool:
        """Whether the normalized value is rounded to the stream's dtype before the weight."""
        return self.rounding in ("before_weight", "before_and_after_weight")

    @property
    def round_after_weight(self) -> bool:
        """Whether the normalized, weighted value is rounded to the stream's dtype."""
        return self.rounding in ("after_weight", "before_and_after_weight")


def make_call(
    xs: Sequence[torch.Tensor],
    weights: Sequence[torch.Tensor | None],
    eps: Sequence[float],
    cos: Sequence[torch.Tensor | None],
    sin: Sequence[torch.Tensor | None],
    cos_maps: Sequence[int],
    sin_maps: Sequence[int],
    norm: str,
    rounding: str,
    rotary_dim: int,
    interleaved: bool,
    cat_dim: int,
    out_dtype: torch.dtype,
) -> Rope:
    """rope: per stream optional RMSNorm then rotary embedding; streams joined along ``cat_dim``.

    The op's flat arguments as a checked ``Rope``; a ValueError names what is wrong.
    """
    count = len(xs)
    if count == 0:
        raise ValueError("xs: expected at least one stream, got none")
    for name, values, per_stream in (
        ("weights", weights, 1), ("eps", eps, 1), ("cos", cos, 1), ("sin", sin, 1),
        ("cos_maps", cos_maps, MAP_LENGTH), ("sin_maps", sin_maps, MAP_LENGTH),
    ):
        if len(values) != count * per_stream:
            raise ValueError(f"{name}: expected {count * per_stream} entries for {count} streams, got {len(values)}")
    streams = tuple(
        Stream(
            xs[s], weights[s], float(eps[s]), cos[s], sin[s],
            tuple(cos_maps[MAP_LENGTH * s: MAP_LENGTH * (s + 1)]),  # type: ignore[arg-type]
            tuple(sin_maps[MAP_LENGTH * s: MAP_LENGTH * (s + 1)]),  # type: ignore[arg-type]
        )
        for s in range(count)
    )
    dim = streams[0].x.dim()
    call = Rope(streams, norm, rounding, rotary_dim, interleaved, cat_dim % dim if dim else cat_dim, out_dtype)
    error = argument_error(call, cat_dim)
    if error is not None:
        raise ValueError(error)
    return call


def argument_error(call: Rope, cat_dim: int | None = None) -> str | None:
    """What is wrong with the call's settings and shapes (a wrong rewrite, never a fallback case)."""
    if call.norm not in NORMS:
        return f"norm: expected one of {NORMS}, got {call.norm!r}"
    if call.rounding not in ROUNDINGS:
        return f"rounding: expected one of {ROUNDINGS}, got {call.rounding!r}"
    if call.norm == "none" and call.rounding != "none":
        return f"rounding: expected 'none' without a norm, got {call.rounding!r}"
    first = call.streams[0].x
    if first.dim() < 2:
        return f"xs[0]: expected at least 2 dims, got shape {tuple(first.shape)}"
    if cat_dim is not None and not -first.dim() < cat_dim < first.dim() - 1 and cat_dim != -first.dim():
        return f"cat_dim: expected a lead dim of the {first.dim()}-dim streams, got {cat_dim}"
    if call.cat_dim == first.dim() - 1:
        return f"cat_dim: expected a lead dim of the {first.dim()}-dim streams, got the last dim"
    if (error := device_error(call.named_operands())) is not None:
        return error
    head_dim = first.shape[-1]
    if not (call.rotary_dim % 2 == 0 and 0 < call.rotary_dim <= head_dim):
        return f"rotary_dim: expected an even number in 2..{head_dim}, got {call.rotary_dim}"
    if call.norm == "heads" and first.dim() < 3:
        return f"norm: 'heads' needs a heads dim before the last, got shape {tuple(first.shape)}"
    for s, stream in enumerate(call.streams):
        x = stream.x
        same = [size for d, size in enumerate(x.shape) if d != call.cat_dim]
        expected = [size for d, size in enumerate(first.shape) if d != call.cat_dim]
        if x.dim() != first.dim() or same != expected:
            return f"xs[{s}]: expected shape {tuple(first.shape)} except along cat_dim {call.cat_dim}, got {tuple(x.shape)}"
        if call.norm == "none" and stream.weight is not None:
            return f"weights[{s}]: expected None without a norm, got a tensor"
        if stream.weight is not None:
            width = head_dim if call.norm == "head" else head_dim * x.shape[-2]
            if tuple(stream.weight.shape) != (width,):
                return f"weights[{s}]: expected shape ({width},) for norm {call.norm!r}, got {tuple(stream.weight.shape)}"
        if (stream.cos is None) != (stream.sin is None):
            return f"cos[{s}], sin[{s}]: expected both tables or neither"
        if stream.cos is None:
            continue
        for name, table, table_map in (("cos", stream.cos, stream.cos_map), ("sin", stream.sin, stream.sin_map)):
            error = _table_error(f"{name}[{s}]", table, table_map, x, call.rotary_dim)
            if error is not None:
                return error
    return None


def _table_error(name: str, table: torch.Tensor, table_map: tuple[int, ...], x: torch.Tensor, rotary_dim: int) -> str | None:
    if table.dim() < 1 or not broadcasts_to(table.shape[:-1], x.shape[:-1]):
        return f"{name}: shape {tuple(table.shape)} does not broadcast to x's lead dims {tuple(x.shape[:-1])} plus a last dim"
    start, per_pair, per_member, part = table_map
    if part not in (0, 1) or (part == 1 and not table.is_complex()):
        return f"{name}: map part {part} is not 0 (real) or 1 (imaginary part of a complex table)"
    half = rotary_dim // 2
    corners = [start + i * per_pair + j * per_member for i in (0, half - 1) for j in (0, 1)]
    if min(corners) < 0 or max(corners) >= table.shape[-1]:
        return f"{name}: map {table_map} reads outside the table's last dim of {table.shape[-1]} for rotary_dim {rotary_dim}"
    return None


def unsupported_reason(call: Rope) -> str | None:
    """Why the Triton kernel cannot run ``call``, or None when it can (checked on every call)."""
    for s, stream in enumerate(call.streams):
        if stream.x.dtype not in SUPPORTED_DTYPES:
            return f"xs[{s}] dtype {stream.x.dtype} is not one of {sorted(map(str, SUPPORTED_DTYPES))}"
        if stream.weight is not None and stream.weight.dtype not in SUPPORTED_DTYPES:
            return f"weights[{s}] dtype {stream.weight.dtype} is not one of {sorted(map(str, SUPPORTED_DTYPES))}"
        for name, table in (("cos", stream.cos), ("sin", stream.sin)):
            if table is not None and table.dtype not in TABLE_DTYPES:
                return f"{name}[{s}] dtype {table.dtype} is not one of {sorted(map(str, TABLE_DTYPES))}"
        if stream.x.dim() > LEADING_DIMS + 1:
            return f"xs[{s}] has {stream.x.dim()} dims; the kernel takes 2 to {LEADING_DIMS + 1}"
    if call.out_dtype not in SUPPORTED_DTYPES:
        return f"out_dtype {call.out_dtype} is not one of {sorted(map(str, SUPPORTED_DTYPES))}"
    x = call.streams[0].x
    if x.shape[-1] > MAX_HEAD_DIM:
        return f"head dim {x.shape[-1]} is over {MAX_HEAD_DIM}"
    if call.norm == "heads" and x.shape[-1] * x.shape[-2] > MAX_TOKEN_WIDTH:
        return f"a token's {x.shape[-2]} heads of {x.shape[-1]} are over {MAX_TOKEN_WIDTH} elements"
    return None


# --- Reference -----------------------------------------------------------------------------------


def _coefficients(table: torch.Tensor, table_map: tuple[int, ...], half: int, work: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    # The table's coefficient for members a and b of every pair: two [*lead_T, half] tensors.
    start, per_pair, per_member, part = table_map
    values = torch.view_as_real(table)[..., part] if table.is_complex() else table
    first = start + per_pair * torch.arange(half, device=table.device)
    return values[..., first].to(work), values[..., first + per_member].to(work)


def reference(call: Rope) -> torch.Tensor:
    """Pure-torch output with fp32 math (fp64 for fp64 streams, results or tables) and the graph's
    roundings of the normalized value."""
    # fp64 wherever the graph computes in it: fp64 streams, an fp64 result, fp64 or complex128 tables.
    wide = {torch.float64, torch.complex128}
    tables = [table for stream in call.streams for table in (stream.cos, stream.sin) if table is not None]
    work = torch.float64 if any(t.dtype in wide for t in [*(s.x for s in call.streams), *tables]) or (
        call.out_dtype == torch.float64
    ) else torch.float32
    half = call.rotary_dim // 2
    pairs = torch.arange(half, device=call.streams[0].x.device)
    first = 2 * pairs if call.interleaved else pairs
    second = first + 1 if call.interleaved else pairs + half
    outputs = []
    for stream in call.streams:
        value = stream.x.to(work)
        if call.norm != "none":
            dims = (-1,) if call.norm == "head" else (-2, -1)
            value = value * torch.rsqrt(value.square().mean(dims, keepdim=True) + stream.eps)
            if call.round_before_weight:
                value = value.to(stream.x.dtype).to(work)
            if stream.weight is not None:
                value = value * stream.weight.to(work).reshape(value.shape[-2:] if call.norm == "heads" else (-1,))
            if call.round_after_weight:
                value = value.to(stream.x.dtype).to(work)
        if stream.cos is not None:
            cos_a, cos_b = _coefficients(stream.cos, stream.cos_map, half, work)
            sin_a, sin_b = _coefficients(stream.sin, stream.sin_map, half, work)
            a, b = value[..., first], value[..., second]
            value = value.clone()
            value[..., first] = a * cos_a - b * sin_a
            value[..., second] = b * cos_b + a * sin_b
        outputs.append(value.to(call.out_dtype))
    return torch.cat(outputs, dim=call.cat_dim).contiguous()


# --- Kernel --------------------------------------------------------------------------------------


@triton.jit
def _round_to(value, like_ptr):
    return value.to(like_ptr.dtype.element_ty).to(tl.float32)


@triton.jit
def _normalized(value, rstd, weight_row, cols, mask, HAS_WEIGHT: tl.constexpr, ROUND_BEFORE_WEIGHT: tl.constexpr,
                ROUND_AFTER_WEIGHT: tl.constexpr, like_ptr):
    # One tile of columns normalized, with the graph's roundings to the input dtype.
    value = value * rstd[:, None]
    if ROUND_BEFORE_WEIGHT:
        value = _round_to(value, like_ptr)
    if HAS_WEIGHT:
        value = value * tl.load(weight_row + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    if ROUND_AFTER_WEIGHT:
        value = _round_to(value, like_ptr)
    return value


@triton.jit
def _table(ptr, row_offset, head_offsets, cols, col_mask, PER_HEAD: tl.constexpr):
    # Table elements at ``cols`` for the program's token: [1, N], or [BLOCK_H, N] where the table
    # varies over the program's heads (masked-off heads have offset -1).
    if PER_HEAD:
        offsets = row_offset + head_offsets[:, None] + cols[None, :]
        mask = (head_offsets[:, None] >= 0) & col_mask[None, :]
    else:
        offsets = row_offset + cols[None, :]
        mask = col_mask[None, :]
    return tl.load(ptr + offsets, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _rope_kernel(
    x_ptr, out_ptr, weight_ptr, cos_ptr, sin_ptr,
    n1, n2, head_blocks, out_start,
    sx0, sx1, sx2, sxd, so0, so1, so2, sod,
    sc0, sc1, sc2, cos_base, cos_pair, cos_member,
    ss0, ss1, ss2, sin_base, sin_pair, sin_member,
    weight_stride, weight_head_stride,
    EPS: tl.constexpr, INV_WIDTH: tl.constexpr, HEAD_DIM: tl.constexpr, HALF: tl.constexpr, INTERLEAVED: tl.constexpr,
    NORM: tl.constexpr, HAS_WEIGHT: tl.constexpr, ROUND_BEFORE_WEIGHT: tl.constexpr, ROUND_AFTER_WEIGHT: tl.constexpr,
    HAS_ROPE: tl.constexpr, TABLE_PER_HEAD: tl.constexpr,
    BLOCK_H: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_T: tl.constexpr,
):
    # One program: BLOCK_H heads (the last lead dim, n2) of one (i0, i1). NORM: 0 none, 1 per
    # head, 2 over all heads (then BLOCK_H >= n2). Columns: 2 * HALF rotated, then HEAD_DIM -
    # 2 * HALF passed through. Interleaved pairs stay one contiguous tile ("first", vector loads
    # and stores) split into members only around the rotation; half-split pairs are two tiles.
    pid = tl.program_id(0)
    row = pid // head_blocks
    i0 = (row // n1).to(tl.int64)
    i1 = (row % n1).to(tl.int64)
    heads = (pid % head_blocks) * BLOCK_H + tl.arange(0, BLOCK_H)
    head_mask = heads < n2
    x_row = x_ptr + i0 * sx0 + i1 * sx1 + heads[:, None].to(tl.int64) * sx2
    # out_start: where this stream's slice of the joint output begins.
    out_row = out_ptr + out_start + i0 * so0 + i1 * so1 + heads[:, None].to(tl.int64) * so2
    w_row = weight_ptr  # None without a norm weight
    if HAS_WEIGHT:
        w_row = weight_ptr + heads[:, None] * weight_head_stride
    if INTERLEAVED:
        first_cols = tl.arange(0, 2 * BLOCK_P)
        first_valid = first_cols < 2 * HALF
    else:
        first_cols = tl.arange(0, BLOCK_P)
        first_valid = first_cols < HALF
        second_cols = first_cols + HALF
    first_mask = head_mask[:, None] & first_valid[None, :]
    first = tl.load(x_row + first_cols[None, :] * sxd, mask=first_mask, other=0.0).to(tl.float32)
    if not INTERLEAVED:
        second = tl.load(x_row + second_cols[None, :] * sxd, mask=first_mask, other=0.0).to(tl.float32)
    HAS_PASS: tl.constexpr = HEAD_DIM > 2 * HALF
    if HAS_PASS:
        pass_cols = 2 * HALF + tl.arange(0, BLOCK_T)
        pass_mask = head_mask[:, None] & (pass_cols < HEAD_DIM)[None, :]
        passed = tl.load(x_row + pass_cols[None, :] * sxd, mask=pass_mask, other=0.0).to(tl.float32)
    if NORM > 0:
        squares = tl.sum(first * first, axis=1)
        if not INTERLEAVED:
            squares += tl.sum(second * second, axis=1)
        if HAS_PASS:
            squares += tl.sum(passed * passed, axis=1)
        if NORM == 2:
            squares = tl.zeros_like(squares) + tl.sum(squares, axis=0)
        rstd = tl.rsqrt(squares * INV_WIDTH + EPS)
        first = _normalized(first, rstd, w_row, first_cols * weight_stride, first_mask, HAS_WEIGHT, ROUND_BEFORE_WEIGHT, ROUND_AFTER_WEIGHT, x_ptr)
        if not INTERLEAVED:
            second = _normalized(second, rstd, w_row, second_cols * weight_stride, first_mask, HAS_WEIGHT, ROUND_BEFORE_WEIGHT, ROUND_AFTER_WEIGHT, x_ptr)
        if HAS_PASS:
            passed = _normalized(passed, rstd, w_row, pass_cols * weight_stride, pass_mask, HAS_WEIGHT, ROUND_BEFORE_WEIGHT, ROUND_AFTER_WEIGHT, x_ptr)
    if HAS_ROPE:
        cos_row = i0 * sc0 + i1 * sc1 + cos_base
        sin_row = i0 * ss0 + i1 * ss1 + sin_base
        cos_heads = tl.where(head_mask, heads.to(tl.int64) * sc2, -1)
        sin_heads = tl.where(head_mask, heads.to(tl.int64) * ss2, -1)
        if INTERLEAVED:
            # Tables read at each rotated column's (pair, member) element, in x's tile layout.
            pair, member = first_cols // 2, first_cols % 2
            cos = _table(cos_ptr, cos_row, cos_heads, pair * cos_pair + member * cos_member, first_valid, TABLE_PER_HEAD)
            sin = _table(sin_ptr, sin_row, sin_heads, pair * sin_pair + member * sin_member, first_valid, TABLE_PER_HEAD)
            a, b = tl.split(tl.reshape(first, [BLOCK_H, BLOCK_P, 2]))
            cos_a, cos_b = tl.split(tl.reshape(cos, [cos.shape[0], BLOCK_P, 2]))
            sin_a, sin_b = tl.split(tl.reshape(sin, [sin.shape[0], BLOCK_P, 2]))
            first = tl.reshape(tl.join(a * cos_a - b * sin_a, b * cos_b + a * sin_b), [BLOCK_H, 2 * BLOCK_P])
        else:
            cos_a = _table(cos_ptr, cos_row, cos_heads, first_cols * cos_pair, first_valid, TABLE_PER_HEAD)
            cos_b = _table(cos_ptr, cos_row, cos_heads, first_cols * cos_pair + cos_member, first_valid, TABLE_PER_HEAD)
            sin_a = _table(sin_ptr, sin_row, sin_heads, first_cols * sin_pair, first_valid, TABLE_PER_HEAD)
            sin_b = _table(sin_ptr, sin_row, sin_heads, first_cols * sin_pair + sin_member, first_valid, TABLE_PER_HEAD)
            first, second = first * cos_a - second * sin_a, second * cos_b + first * sin_b
    out_type = out_ptr.dtype.element_ty
    tl.store(out_row + first_cols[None, :] * sod, first.to(out_type), mask=first_mask)
    if not INTERLEAVED:
        tl.store(out_row + second_cols[None, :] * sod, second.to(out_type), mask=first_mask)
    if HAS_PASS:
        tl.store(out_row + pass_cols[None, :] * sod, passed.to(out_type), mask=pass_mask)


@dataclasses.dataclass(frozen=True)
class LaunchConfig:
    """Heads per program and warps."""

    block_heads: int
    num_warps: int


# Elements of x one program moves, and per warp. Swept on an H200 (docs/BENCHMARKS.md, bf16, D=128):
# 8 heads in 2 warps at 24 heads (4 in 1 warp where 8 does not divide the heads, as at 12) are
# within 4% of the best config at both benchmarked shapes; one head per program is 3.4-4.3x slower. A
# norm over all heads holds every head of a token, best with 1024 elements per warp.
TARGET_PROGRAM_ELEMENTS = 1024
ELEMENTS_PER_WARP = 512
ELEMENTS_PER_WARP_ACROSS_HEADS = 1024


@functools.cache
def launch_config(heads: int, head_dim: int, across_heads: bool) -> LaunchConfig:
    """Heads per program: all of them for a norm across heads, else a power of two near the
    target that divides ``heads`` where one does (no masked-off heads)."""
    block_dim = triton.next_power_of_2(head_dim)
    if across_heads:
        block_heads = triton.next_power_of_2(heads)
        per_warp = ELEMENTS_PER_WARP_ACROSS_HEADS
    else:
        target = max(1, TARGET_PROGRAM_ELEMENTS // block_dim)
        block_heads = min(triton.next_power_of_2(heads), target)
        # The largest power of two dividing ``heads`` (at most block_heads), if near the target.
        divisor = min(heads & -heads, block_heads)
        if heads % block_heads and divisor >= max(1, target // 4):
            block_heads = divisor
        per_warp = ELEMENTS_PER_WARP
    num_warps = min(8, max(1, block_heads * block_dim // per_warp))
    return LaunchConfig(block_heads, num_warps)


def _lead_strides(tensor: torch.Tensor, lead: tuple[int, ...]) -> list[int]:
    # Strides of ``tensor``'s dims but the last, broadcast to ``lead`` (0 where broadcast), padded.
    strides = [0 if size == 1 else stride for size, stride in zip(tensor.shape[:-1], tensor.stride()[:-1])]
    return [0] * (len(lead) - len(strides)) + strides


def _table_args(table: torch.Tensor, table_map: tuple[int, ...], lead: tuple[int, ...]) -> tuple[torch.Tensor, list[int]]:
    # (real tensor, lead strides + [base, per pair, per member]) in elements of the real view.
    start, per_pair, per_member, part = table_map
    real = torch.view_as_real(table) if table.is_complex() else table
    # Strides of the real view: a complex element is two of its elements.
    strides = real.stride()[: table.dim()]
    width_stride = strides[-1]
    lead_strides = [0 if size == 1 else stride for size, stride in zip(table.shape[:-1], strides[:-1])]
    lead_strides = [0] * (len(lead) - len(lead_strides)) + lead_strides
    return real, lead_strides + [start * width_stride + part, per_pair * width_stride, per_member * width_stride]


def stream_launch(
    call: Rope, stream: Stream, out: torch.Tensor, start: Any, config: LaunchConfig | None = None
) -> KernelLaunch | None:
    """The launch writing ``stream`` into ``out`` from element ``start`` on (None for an empty stream).

    A function of shapes, strides, dtypes and the device only: a compiled graph plans it once.
    """
    x = stream.x
    if x.numel() == 0:
        return None
    lead = collapse_leading_dims(x.shape)
    x_strides = _lead_strides(x, lead) if x.dim() > 1 else []
    out_strides = _lead_strides(out, lead)
    head_dim = static_size(x.shape[-1])
    rope = stream.cos is not None
    if rope:
        cos, cos_args = _table_args(stream.cos, stream.cos_map, lead)
        sin, sin_args = _table_args(stream.sin, stream.sin_map, lead)
    else:
        cos = sin = x
        cos_args = sin_args = [0] * (LEADING_DIMS + 3)
    # The program's heads are a lead dim the tables broadcast over (each table row then loads
    # once for all of them): the heads of [B, L, H, D] or of [B, H, L, D]. A norm over all heads
    # keeps the dim before the last. (Chosen by compile-time sizes: any choice is correct.)
    order = [0, 1, 2]
    if call.norm != "heads":
        shared = [d for d in range(LEADING_DIMS) if size_hint(lead[d]) > 1 and cos_args[d] == 0 and sin_args[d] == 0]
        if shared:
            block_dim = max(shared, key=lambda d: size_hint(lead[d]))
            order = [d for d in order if d != block_dim] + [block_dim]
    lead = tuple(lead[d] for d in order)
    x_strides, out_strides = [x_strides[d] for d in order], [out_strides[d] for d in order]
    cos_args = [cos_args[d] for d in order] + cos_args[LEADING_DIMS:]
    sin_args = [sin_args[d] for d in order] + sin_args[LEADING_DIMS:]
    heads = static_size(lead[2])
    config = config or launch_config(heads, head_dim, call.norm == "heads")
    if call.norm == "heads" and config.block_heads < heads:
        raise ValueError(f"config: norm 'heads' needs block_heads >= {heads}, got {config.block_heads}")
    head_blocks = triton.cdiv(heads, config.block_heads)
    half = call.rotary_dim // 2
    width = head_dim * (heads if call.norm == "heads" else 1)
    weight = stream.weight
    arguments = dict(zip(_ROPE_ARGUMENT_NAMES, (
        x, out, weight, cos, sin,
        lead[1], heads, head_blocks, start,
        *x_strides, x.stride(-1), *out_strides, out.stride(-1),
        *cos_args, *sin_args,
        weight.stride(0) if weight is not None else 0,
        head_dim * weight.stride(0) if weight is not None and call.norm == "heads" else 0,
    ), strict=True))
    arguments.update(
        EPS=stream.eps, INV_WIDTH=1.0 / width, HEAD_DIM=head_dim, HALF=half, INTERLEAVED=call.interleaved,
        NORM=NORMS.index(call.norm), HAS_WEIGHT=weight is not None,
        ROUND_BEFORE_WEIGHT=call.norm != "none" and call.round_before_weight,
        ROUND_AFTER_WEIGHT=call.norm != "none" and call.round_after_weight,
        HAS_ROPE=rope, TABLE_PER_HEAD=rope and (cos_args[2] != 0 or sin_args[2] != 0),
        BLOCK_H=config.block_heads, BLOCK_P=triton.next_power_of_2(half),
        BLOCK_T=triton.next_power_of_2(max(head_dim - 2 * half, 1)),
        num_warps=config.num_warps,
    )
    return KernelLaunch(_rope_kernel, (lead[0] * lead[1] * head_blocks,), arguments, ("out_ptr",))


_ROPE_ARGUMENT_NAMES = (
    "x_ptr", "out_ptr", "weight_ptr", "cos_ptr", "sin_ptr", "n1", "n2", "head_blocks", "out_start",
    "sx0", "sx1", "sx2", "sxd", "so0", "so1", "so2", "sod",
    "sc0", "sc1", "sc2", "cos_base", "cos_pair", "cos_member",
    "ss0", "ss1", "ss2", "sin_base", "sin_pair", "sin_member",
    "weight_stride", "weight_head_stride",
)


def _stream_starts(call: Rope, out: torch.Tensor) -> list[Any]:
    # Where each stream's slice of the joint output begins, in elements.
    starts, offset = [], 0
    for stream in call.streams:
        starts.append(offset * out.stride(call.cat_dim))
        offset = offset + stream.x.shape[call.cat_dim]
    return starts


def rope_triton(call: Rope, config: LaunchConfig | None = None) -> torch.Tensor:
    """Run the kernel on ``call`` (one launch per stream, each into its slice of the output)."""
    reason = argument_error(call) or unsupported_reason(call)
    if reason is not None:
        raise ValueError(f"rope_triton: {reason}")
    return _launch(call, config)


def _launch(call: Rope, config: LaunchConfig | None = None) -> torch.Tensor:
    out = torch.empty(call.out_shape, dtype=call.out_dtype, device=call.streams[0].x.device)
    for stream, start in zip(call.streams, _stream_starts(call, out), strict=True):
        launch = stream_launch(call, stream, out, start, config)
        if launch is not None:
            launch.run()
    return out


def _emit(call: Rope) -> torch.Tensor:
    # The launches planned at compile time in the graph being traced, one per stream, each
    # writing its slice of the joint output (threaded through as the tensor it returns).
    first = call.streams[0].x
    if first.device.type != "cuda":
        raise NotEmittable(f"xs[0] is on {first.device}; only CUDA has the kernel")
    hinted_call = dataclasses.replace(call, streams=tuple(
        dataclasses.replace(stream, x=hinted(stream.x), weight=hinted(stream.weight), cos=hinted(stream.cos), sin=hinted(stream.sin))
        for stream in call.streams
    ))
    reason = unsupported_reason(hinted_call)
    if reason is not None:
        raise NotEmittable(reason)
    out = torch.empty(call.out_shape, dtype=call.out_dtype, device=first.device)
    for stream, start in zip(call.streams, _stream_starts(call, out), strict=True):
        launch = stream_launch(call, stream, out, start)
        if launch is not None:
            out = launch.emit()["out_ptr"]
    return out


def _run(call: Rope) -> torch.Tensor:
    # The checked call on every device: the kernel on CUDA where it takes the call, else the reference.
    first = call.streams[0].x
    if first.device.type != "cuda" or unsupported_reason(call) is not None:
        return reference(call)
    with torch.cuda.device(first.device):
        return _launch(call)


# The op is declared by ``make_call`` (its schema comes from the signature); its body and emitter
# read the checked call.
rope = fused_op("fusion_passes::rope", make_call, _run, None, _emit, torch.Tensor)
_ROPE_SIGNATURE = inspect.signature(make_call)


@rope.register_fake
def _fake_output(*arguments: Any, **named: Any) -> torch.Tensor:
    # The joint output's metadata after the device check only, as the other ops' fakes: the call's
    # shape checks run where the op runs or is emitted.
    bound = _ROPE_SIGNATURE.bind(*arguments, **named).arguments
    xs, cat_dim = bound["xs"], bound["cat_dim"]
    if not xs:
        raise ValueError("xs: expected at least one stream, got none")
    check_devices([(f"{name}[{s}]", tensor) for name in ("xs", "weights", "cos", "sin") for s, tensor in enumerate(bound[name])])
    shape = list(xs[0].shape)
    shape[cat_dim] = sum(x.shape[cat_dim] for x in xs)
    return xs[0].new_empty(shape, dtype=bound["out_dtype"])
