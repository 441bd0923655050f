"""AdaLN: LayerNorm followed by modulation, ``y = LN(x) * (1 + scale) + shift`` (SPEC.md F1).

One file holds the op's whole story: the pure-torch reference (CPU and unsupported cases), the
one-pass Triton kernel, its launcher, and the ``fusion_passes::layer_norm_modulate`` custom op.
"""

from __future__ import annotations

import dataclasses
import functools

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from fusion_passes.kernels.common import (
    SUPPORTED_DTYPES,
    broadcast_strides,
    broadcasts_to,
    collapse_leading_dims,
)

# Widest row the kernel keeps in registers; wider rows fall back to the reference.
MAX_HIDDEN = 16384
# The first of the three leading dims (x's first dim when x is 4-D) indexes the grid's second
# axis, which CUDA caps at 65535.
MAX_GRID_Y = 65535


def modulation_dtype(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor | None) -> torch.dtype:
    """Result dtype of ``LN(x) * (1 + scale) + shift``: LN keeps x's dtype, then type promotion."""
    dtype = torch.promote_types(x.dtype, scale.dtype)
    return dtype if shift is None else torch.promote_types(dtype, shift.dtype)


def layer_norm_modulate_reference(
    x: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    scale: torch.Tensor,
    shift: torch.Tensor | None,
    eps: float,
) -> torch.Tensor:
    """Pure-torch LN + modulation with fp32 math and one rounding at the end."""
    y = F.layer_norm(
        x.float(),
        x.shape[-1:],
        None if weight is None else weight.float(),
        None if bias is None else bias.float(),
        eps,
    )
    y = y * (1 + scale.float())
    if shift is not None:
        y = y + shift.float()
    return y.to(modulation_dtype(x, scale, shift)).contiguous()


def unsupported_reason(
    x: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    scale: torch.Tensor,
    shift: torch.Tensor | None,
) -> str | None:
    """Why the Triton kernel cannot run these operands, or None when it can (runs on every call)."""
    operands = (("x", x), ("weight", weight), ("bias", bias), ("scale", scale), ("shift", shift))
    for name, tensor in operands:
        if tensor is not None and tensor.dtype not in SUPPORTED_DTYPES:
            return f"{name} dtype {tensor.dtype} is not one of {sorted(map(str, SUPPORTED_DTYPES))}"
    if not 2 <= x.dim() <= 4:
        return f"x has {x.dim()} dims; the kernel takes 2 to 4"
    if (first := collapse_leading_dims(x.shape)[0]) > MAX_GRID_Y:
        return f"x's first leading dim {first} exceeds the CUDA grid limit {MAX_GRID_Y} for a {x.dim()}-D x"
    hidden = x.shape[-1]
    if not 1 <= hidden <= MAX_HIDDEN:
        return f"hidden size {hidden} is outside 1..{MAX_HIDDEN}"
    for name, tensor in operands[1:3]:
        if tensor is not None and tensor.shape != (hidden,):
            return f"{name} shape {tuple(tensor.shape)} is not ({hidden},)"
    for name, tensor in operands[3:]:
        if tensor is not None and not broadcasts_to(tensor.shape, x.shape):
            return f"{name} shape {tuple(tensor.shape)} does not broadcast to x shape {tuple(x.shape)}"
    return None


@triton.jit
def _layer_norm_modulate_kernel(
    x_ptr, weight_ptr, bias_ptr, scale_ptr, shift_ptr, out_ptr,
    dim1, dim2, hidden, eps,
    x_s0, x_s1, x_s2, x_sc,
    scale_s0, scale_s1, scale_s2, scale_sc,
    shift_s0, shift_s1, shift_s2, shift_sc,
    HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_SHIFT: tl.constexpr,
    MODULATION_PER_ROW: tl.constexpr,
    BLOCK_ROWS: tl.constexpr, BLOCK_HIDDEN: tl.constexpr, NUM_STAGES: tl.constexpr,
):
    # Grid: (programs over the rows of one i0, i0). Rows are the flattened leading dims (i0, i1, i2),
    # x's leading dims left-padded with 1 (so i0 is x's first dim only for 4-D x). Each operand
    # brings its own strides for them, so chunk views and broadcast (stride 0) modulation are read
    # in place. Modulation constant over (i1, i2) is loaded once per program, else once per row.
    i0 = tl.program_id(1).to(tl.int64)
    rows_per_batch = dim1 * dim2
    cols = tl.arange(0, BLOCK_HIDDEN)
    col_mask = cols < hidden
    if HAS_WEIGHT:
        weight = tl.load(weight_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)[None, :]
    if HAS_BIAS:
        bias = tl.load(bias_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)[None, :]
    if not MODULATION_PER_ROW:
        scale = tl.load(scale_ptr + i0 * scale_s0 + cols * scale_sc, mask=col_mask, other=0.0).to(tl.float32)[None, :]
        if HAS_SHIFT:
            shift = tl.load(shift_ptr + i0 * shift_s0 + cols * shift_sc, mask=col_mask, other=0.0).to(tl.float32)[None, :]

    n_blocks = tl.cdiv(rows_per_batch, BLOCK_ROWS)
    for block in tl.range(tl.program_id(0), n_blocks, tl.num_programs(0), num_stages=NUM_STAGES):
        rows = block * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS).to(tl.int64)
        mask = (rows < rows_per_batch)[:, None] & col_mask[None, :]
        i1 = rows // dim2
        i2 = rows % dim2

        x_offsets = (i0 * x_s0 + i1 * x_s1 + i2 * x_s2)[:, None] + cols[None, :] * x_sc
        x = tl.load(x_ptr + x_offsets, mask=mask, other=0.0, eviction_policy="evict_first").to(tl.float32)
        if MODULATION_PER_ROW:
            scale_offsets = (i0 * scale_s0 + i1 * scale_s1 + i2 * scale_s2)[:, None] + cols[None, :] * scale_sc
            scale = tl.load(scale_ptr + scale_offsets, mask=mask, other=0.0).to(tl.float32)
            if HAS_SHIFT:
                shift_offsets = (i0 * shift_s0 + i1 * shift_s1 + i2 * shift_s2)[:, None] + cols[None, :] * shift_sc
                shift = tl.load(shift_ptr + shift_offsets, mask=mask, other=0.0).to(tl.float32)

        mean = tl.sum(x, axis=1) / hidden
        centered = tl.where(mask, x - mean[:, None], 0.0)
        variance = tl.sum(centered * centered, axis=1) / hidden
        y = centered * (1.0 / tl.sqrt(variance + eps))[:, None]
        if HAS_WEIGHT:
            y = y * weight
        if HAS_BIAS:
            y = y + bias
        y = y * (1.0 + scale)
        if HAS_SHIFT:
            y = y + shift
        out_offsets = (i0 * rows_per_batch + rows)[:, None] * hidden + cols[None, :]
        tl.store(out_ptr + out_offsets, y.to(out_ptr.dtype.element_ty), mask=mask, eviction_policy="evict_first")


@dataclasses.dataclass(frozen=True)
class LaunchConfig:
    """How the kernel is launched; ``programs_per_sm == 0`` means one program per block of rows.

    Otherwise at most ``programs_per_sm`` programs per multiprocessor (over all batch elements)
    loop over the blocks of rows.
    """

    block_rows: int
    num_warps: int
    num_stages: int = 1
    programs_per_sm: int = 0


@functools.cache
def launch_config(hidden: int) -> LaunchConfig:
    """The launch config for rows of ``hidden`` elements (swept on H200, docs/BENCHMARKS.md)."""
    block_hidden = triton.next_power_of_2(hidden)
    # Small rows share a program so each one still moves a few KiB.
    block_rows = max(1, min(16, 2048 // block_hidden))
    num_warps = min(max(block_hidden * block_rows // 1024, 1), 8)
    # About 16 resident warps per multiprocessor, each program pipelining its next rows' loads.
    return LaunchConfig(block_rows=block_rows, num_warps=num_warps, num_stages=3, programs_per_sm=16 // num_warps)


@functools.cache
def _multiprocessors(device: torch.device) -> int:
    # The CPU interpreter runs programs one at a time; one "multiprocessor" keeps its grid small.
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 1


def layer_norm_modulate_triton(
    x: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    scale: torch.Tensor,
    shift: torch.Tensor | None,
    eps: float,
    config: LaunchConfig | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Launch the one-pass kernel into ``out`` (new if None), after checking the operands."""
    reason = unsupported_reason(x, weight, bias, scale, shift)
    if reason is not None:
        raise ValueError(f"layer_norm_modulate_triton: {reason}")
    dtype = modulation_dtype(x, scale, shift)
    if out is not None and (out.shape != x.shape or out.dtype != dtype or not out.is_contiguous()):
        raise ValueError(
            f"out: expected a contiguous {dtype} tensor of shape {tuple(x.shape)}, "
            f"got {out.dtype} {tuple(out.shape)} with strides {out.stride()}"
        )
    return _launch(x, weight, bias, scale, shift, eps, config, out)


def _launch(
    x: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    scale: torch.Tensor,
    shift: torch.Tensor | None,
    eps: float,
    config: LaunchConfig | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    # Unchecked: the op's CUDA path checks once and comes here, keeping host overhead low.
    hidden = x.shape[-1]
    if out is None:
        out = torch.empty(x.shape, dtype=modulation_dtype(x, scale, shift), device=x.device)
    n_rows = out.numel() // hidden
    if n_rows == 0:
        return out
    leading = collapse_leading_dims(x.shape)
    x_strides = broadcast_strides(x, x.shape)
    scale_strides = broadcast_strides(scale, x.shape)
    shift_strides = broadcast_strides(shift, x.shape) if shift is not None else (0, 0, 0, 0)
    config = config or launch_config(hidden)
    n_programs = triton.cdiv(n_rows // leading[0], config.block_rows)
    if config.programs_per_sm:
        per_batch = triton.cdiv(config.programs_per_sm * _multiprocessors(x.device), leading[0])
        n_programs = min(n_programs, per_batch)
    modulation_per_row = any(strides[1] or strides[2] for strides in (scale_strides, shift_strides))
    _layer_norm_modulate_kernel[(n_programs, leading[0])](
        x, weight, bias, scale, shift, out,
        leading[1], leading[2], hidden, eps,
        *x_strides, *scale_strides, *shift_strides,
        HAS_WEIGHT=weight is not None, HAS_BIAS=bias is not None, HAS_SHIFT=shift is not None,
        MODULATION_PER_ROW=modulation_per_row,
        BLOCK_ROWS=config.block_rows, BLOCK_HIDDEN=triton.next_power_of_2(hidden),
        NUM_STAGES=config.num_stages, num_warps=config.num_warps,
    )
    return out


# ``LN(x) * (1 + scale) + shift`` over the last dim, scale/shift broadcast to x. The reference is
# the op's default (CPU) implementation; CUDA launches the kernel.
layer_norm_modulate = torch.library.custom_op("fusion_passes::layer_norm_modulate", mutates_args=())(
    layer_norm_modulate_reference
)


@layer_norm_modulate.register_fake
def _layer_norm_modulate_fake(x, weight, bias, scale, shift, eps):
    return torch.empty(x.shape, dtype=modulation_dtype(x, scale, shift), device=x.device)


@layer_norm_modulate.register_kernel("cuda")
def _layer_norm_modulate_cuda(x, weight, bias, scale, shift, eps):
    if unsupported_reason(x, weight, bias, scale, shift) is not None:
        return layer_norm_modulate_reference(x, weight, bias, scale, shift, eps)
    # Triton launches on the current device; x may live on another one.
    with torch.cuda.device(x.device):
        return _launch(x, weight, bias, scale, shift, eps)
