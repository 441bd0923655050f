"""AdaLN: a norm followed by modulation, as three custom ops on one kernel.

- ``fusion_passes::norm_modulate`` (adaln): ``y = N(x) * (1 + scale) + shift``.
- ``fusion_passes::residual_norm_modulate`` (residual_adaln): ``r = residual + gate * x;
  y = N(r) * (1 + scale) + shift``, returning ``(y, r)``.
- ``fusion_passes::norm_modulate_pair``: one norm, two modulations (SD3.5's dual AdaLN): one
  read of x, both outputs.

``N`` is LayerNorm or RMSNorm over the last dim with optional weight (and bias, LayerNorm only).
Every modulation operand (gate, scale, shift) is a list of one tensor, or of two when ``select``
is given (a per-token modulation choice): a boolean per row (broadcast to ``x.shape[:-1] + (1,)``)
choosing the first tensor where true, the second where false; each row loads only the chosen
tensor's row. ``rounding``
names where the unfused graph rounds the normalized value to the norm input's dtype ("none",
"before_weight", "after_affine"); statistics and modulation are fp32, outputs rounded once at the
store. The residual ``r`` is stored in ``residual_dtype`` and normalized as stored.

One file holds the whole story: the pure-torch reference (CPU, and CUDA operands the kernel does
not take), the one-pass Triton kernel, its launcher, and the custom ops.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import torch
import triton
import triton.language as tl

from fusion_passes.kernels.common import (
    SUPPORTED_DTYPES,
    broadcast_strides,
    broadcasts_to,
    check_devices,
    collapse_leading_dims,
    device_error,
    kernel_or_reference,
)
from fusion_passes.kernels.launch import KernelLaunch, NotEmittable, fused_op, hinted, static_size

# Widest row the kernel keeps in registers; wider rows fall back to the reference.
MAX_HIDDEN = 16384
# The leading dims but the last (B for 3-D x, B * F for 4-D x) index the grid's second axis,
# which CUDA caps at 65535.
MAX_GRID_Y = 65535

NORMS = ("layer", "rms")
ROUNDINGS = ("none", "before_weight", "after_affine")


@dataclasses.dataclass(frozen=True)
class NormModulate:
    """The operands and settings of one fused call; ``residual is None`` but for residual_adaln."""

    x: torch.Tensor
    residual: torch.Tensor | None
    gate: tuple[torch.Tensor, ...]
    weight: torch.Tensor | None
    bias: torch.Tensor | None
    scale: tuple[torch.Tensor, ...]
    shift: tuple[torch.Tensor, ...]
    select: torch.Tensor | None
    eps: float
    norm: str
    scale_plus_one: bool
    rounding: str
    residual_dtype: torch.dtype | None
    out_dtype: torch.dtype
    # A second modulation of the same normalized value (without a residual): one read of x, two outputs.
    scale2: tuple[torch.Tensor, ...] = ()
    shift2: tuple[torch.Tensor, ...] = ()
    out_dtype2: torch.dtype | None = None

    @property
    def norm_input_dtype(self) -> torch.dtype:
        """Dtype of the tensor the norm reads: the stored residual, else x."""
        return self.x.dtype if self.residual_dtype is None else self.residual_dtype

    def modulation(self) -> tuple[tuple[str, tuple[torch.Tensor, ...]], ...]:
        """(name, tensors) of every modulation operand that is present."""
        operands = (
            ("gate", self.gate), ("scale", self.scale), ("shift", self.shift), ("scale2", self.scale2), ("shift2", self.shift2)
        )
        return tuple((name, tensors) for name, tensors in operands if tensors)

    def named_operands(self) -> list[tuple[str, torch.Tensor | None]]:
        """Every tensor operand by its argument name (the else tensor of a selection as ``name (else)``)."""
        operands = [("x", self.x), ("residual", self.residual), ("weight", self.weight), ("bias", self.bias)]
        for name, tensors in self.modulation():
            operands += [(name if i == 0 else f"{name} (else)", tensor) for i, tensor in enumerate(tensors)]
        return [*operands, ("select", self.select)]

    @property
    def modulation_rows(self) -> int:
        """How many modulation rows each x row reads (every operand, both sets of a selection)."""
        return sum(len(tensors) for _, tensors in self.modulation())


def _chosen(tensors: tuple[torch.Tensor, ...], select: torch.Tensor | None) -> torch.Tensor | None:
    if not tensors:
        return None
    return torch.where(select, tensors[0], tensors[1]) if select is not None else tensors[0]


def reference(call: NormModulate) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Pure-torch ``(y, second)`` with fp32 math (fp64 for fp64 inputs) and the graph's roundings.

    ``second`` is the stored residual r (residual_adaln), the second modulation (a pair), or None.
    """
    work = torch.float64 if call.x.dtype == torch.float64 else torch.float32
    gate, scale, shift = (_chosen(tensors, call.select) for tensors in (call.gate, call.scale, call.shift))
    residual_out = None
    value = call.x.to(work)
    if call.residual is not None:
        value = call.residual.to(work) + (value if gate is None else gate.to(work) * value)
        residual_out = value.to(call.residual_dtype)
        value = residual_out.to(work)
    if call.norm == "layer":
        value = value - value.mean(-1, keepdim=True)
    value = value * torch.rsqrt(value.square().mean(-1, keepdim=True) + call.eps)
    if call.rounding == "before_weight":
        value = value.to(call.norm_input_dtype).to(work)
    if call.weight is not None:
        value = value * call.weight.to(work)
    if call.bias is not None:
        value = value + call.bias.to(work)
    if call.rounding == "after_affine":
        value = value.to(call.norm_input_dtype).to(work)
    if call.scale2:
        # The second modulation: returned in place of r (the pair op has no residual).
        residual_out = _modulate(value, call.scale2[0], call.shift2[0] if call.shift2 else None, call.scale_plus_one)
        residual_out = residual_out.to(call.out_dtype2)
    value = _modulate(value, scale, shift, call.scale_plus_one)
    y = value.to(call.out_dtype).contiguous()
    return y, None if residual_out is None else residual_out.contiguous()


def _modulate(value: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor | None, plus_one: bool) -> torch.Tensor:
    scale = scale.to(value.dtype)
    value = value * (1 + scale if plus_one else scale)
    return value if shift is None else value + shift.to(value.dtype)


def unsupported_reason(call: NormModulate) -> str | None:
    """Why the Triton kernel cannot run ``call``, or None when it can (runs on every call)."""
    x = call.x
    for name, tensor in call.named_operands():
        if name != "select" and tensor is not None and tensor.dtype not in SUPPORTED_DTYPES:
            return f"{name} dtype {tensor.dtype} is not one of {sorted(map(str, SUPPORTED_DTYPES))}"
    for name, dtype in (("out_dtype", call.out_dtype), ("residual_dtype", call.residual_dtype), ("out_dtype2", call.out_dtype2)):
        if dtype is not None and dtype not in SUPPORTED_DTYPES:
            return f"{name} {dtype} is not one of {sorted(map(str, SUPPORTED_DTYPES))}"
    if not 2 <= x.dim() <= 4:
        return f"x has {x.dim()} dims; the kernel takes 2 to 4"
    leading = collapse_leading_dims(x.shape)
    if (slices := leading[0] * leading[1]) > MAX_GRID_Y:
        return f"x's leading dims before the last hold {slices} slices, over the CUDA grid limit {MAX_GRID_Y}"
    hidden = x.shape[-1]
    if not 1 <= hidden <= MAX_HIDDEN:
        return f"hidden size {hidden} is outside 1..{MAX_HIDDEN}"
    if (error := operand_error(call)) is not None:
        return error
    for name, pair in call.modulation():
        if len(pair) == 2 and pair[0].dtype != pair[1].dtype:
            return f"{name}'s two selectable tensors differ in dtype: {pair[0].dtype} and {pair[1].dtype}"
    if call.select is not None and not broadcasts_to(call.select.shape, (*x.shape[:-1], 1)):
        return f"select shape {tuple(call.select.shape)} does not broadcast to one value per row of x {tuple(x.shape)}"
    return None


def operand_error(call: NormModulate) -> str | None:
    """Operand shapes and dtypes no implementation computes (the op raises a ValueError naming them):
    a residual of another shape than x, a weight or bias that is not ``[hidden]``, a modulation that
    would broadcast x to a larger shape, a non-boolean select."""
    x = call.x
    if x.dim() == 0:
        return "x: expected at least one dim, got a 0-d tensor"
    hidden = x.shape[-1]
    if call.residual is not None and call.residual.shape != x.shape:
        return f"residual shape {tuple(call.residual.shape)} is not x's {tuple(x.shape)}"
    for name, tensor in (("weight", call.weight), ("bias", call.bias)):
        if tensor is not None and tensor.shape != (hidden,):
            return f"{name} shape {tuple(tensor.shape)} is not ({hidden},)"
    for name, pair in call.modulation():
        for tensor in pair:
            if not broadcasts_to(tensor.shape, x.shape):
                return f"{name} shape {tuple(tensor.shape)} does not broadcast to x shape {tuple(x.shape)}"
    if call.select is not None and call.select.dtype != torch.bool:
        return f"select dtype {call.select.dtype} is not torch.bool"
    return None


def _argument_error(call: NormModulate) -> str | None:
    # Errors in the settings and devices (not the operands' shapes): a wrong graph rewrite, never a
    # fallback case.
    if (error := device_error(call.named_operands())) is not None:
        return error
    if call.norm not in NORMS:
        return f"norm: expected one of {NORMS}, got {call.norm!r}"
    if call.rounding not in ROUNDINGS:
        return f"rounding: expected one of {ROUNDINGS}, got {call.rounding!r}"
    if call.norm == "rms" and call.bias is not None:
        return "bias: RMSNorm has no bias, got a tensor"
    if not call.scale:
        return "scale: expected one or two tensors, got none"
    if (call.residual is None) != (call.residual_dtype is None):
        return "residual_dtype: expected exactly when residual is given"
    if call.residual is None and call.gate:
        return "gate: expected only with a residual"
    if call.scale2 and (call.residual is not None or call.select is not None):
        return "scale2: a second modulation is supported without residual and select only"
    if bool(call.scale2) != (call.out_dtype2 is not None) or len(call.scale2) > 1 or len(call.shift2) > int(bool(call.scale2)):
        return "scale2: expected one tensor (shift2 at most one) exactly when out_dtype2 is given"
    expected = 1 if call.select is None else 2
    for name, tensors in call.modulation():
        if len(tensors) != expected:
            return f"{name}: expected {expected} tensor(s) ({'with' if expected == 2 else 'without'} select), got {len(tensors)}"
    return operand_error(call)


@triton.jit
def _modulation_row(ptr, base, sc, cols, col_mask):
    # One row of a modulation operand, for every x row of a program (it is constant over them).
    return tl.load(ptr + base + cols * sc, mask=col_mask, other=0.0).to(tl.float32)[None, :]


@triton.jit
def _modulation(
    ptr, else_ptr, base, else_base, s2, e2, sc, ec, row, else_row, i2, cols, mask, chosen,
    HAS_SELECT: tl.constexpr, HOISTED: tl.constexpr,
):
    # The modulation operand's value for each x row of the block. Hoisted: from the rows loaded
    # once per program (``row``, ``else_row``). Otherwise per x row, loading only the chosen
    # tensor's row (a pointer select, then one load).
    # One return statement: Triton checks every return's shape, even in a branch never compiled.
    if HOISTED:
        if HAS_SELECT:
            value = tl.where(chosen[:, None], row, else_row)
        else:
            value = row
    else:
        ptrs = ptr + (base + i2 * s2)[:, None] + cols[None, :] * sc
        if HAS_SELECT:
            ptrs = tl.where(chosen[:, None], ptrs, else_ptr + (else_base + i2 * e2)[:, None] + cols[None, :] * ec)
        value = tl.load(ptrs, mask=mask, other=0.0).to(tl.float32)
    return value


@triton.jit
def _apply_modulation(
    value, scale_ptr, scale_else_ptr, scale_base, scale_else_base, scale_s2, scale_e2, scale_sc, scale_ec,
    scale_row, scale_else_row, shift_ptr, shift_else_ptr, shift_base, shift_else_base, shift_s2, shift_e2,
    shift_sc, shift_ec, shift_row, shift_else_row, i2, cols, mask, chosen,
    SCALE_PLUS_ONE: tl.constexpr, HAS_SHIFT: tl.constexpr, HAS_SELECT: tl.constexpr, HOISTED: tl.constexpr,
):
    # value * (1 + scale) (or * scale) [+ shift], for the normalized rows of the block.
    scale = _modulation(
        scale_ptr, scale_else_ptr, scale_base, scale_else_base, scale_s2, scale_e2, scale_sc, scale_ec,
        scale_row, scale_else_row, i2, cols, mask, chosen, HAS_SELECT, HOISTED,
    )
    if SCALE_PLUS_ONE:
        scale = scale + 1.0
    value = value * scale
    if HAS_SHIFT:
        value = value + _modulation(
            shift_ptr, shift_else_ptr, shift_base, shift_else_base, shift_s2, shift_e2, shift_sc, shift_ec,
            shift_row, shift_else_row, i2, cols, mask, chosen, HAS_SELECT, HOISTED,
        )
    return value


@triton.jit
def _norm_modulate_kernel(
    x_ptr, residual_ptr, gate_ptr, gate_else_ptr, weight_ptr, bias_ptr,
    scale_ptr, scale_else_ptr, shift_ptr, shift_else_ptr, select_ptr, scale2_ptr, shift2_ptr,
    out_ptr, residual_out_ptr, out2_ptr,
    dim1, dim2, hidden,
    x_s0, x_s1, x_s2, x_sc,
    res_s0, res_s1, res_s2, res_sc,
    gate_s0, gate_s1, gate_s2, gate_sc, gate_e0, gate_e1, gate_e2, gate_ec,
    scale_s0, scale_s1, scale_s2, scale_sc, scale_e0, scale_e1, scale_e2, scale_ec,
    shift_s0, shift_s1, shift_s2, shift_sc, shift_e0, shift_e1, shift_e2, shift_ec,
    select_s0, select_s1, select_s2,
    scale2_s0, scale2_s1, scale2_s2, scale2_sc, shift2_s0, shift2_s1, shift2_s2, shift2_sc,
    EPS: tl.constexpr, IS_RMS: tl.constexpr, HAS_RESIDUAL: tl.constexpr, HAS_GATE: tl.constexpr,
    HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr,
    ROUND_BEFORE_WEIGHT: tl.constexpr, ROUND_AFTER_AFFINE: tl.constexpr,
    SCALE_PLUS_ONE: tl.constexpr, HAS_SHIFT: tl.constexpr, HAS_SELECT: tl.constexpr, HOISTED: tl.constexpr,
    HAS_SECOND: tl.constexpr, HAS_SHIFT2: tl.constexpr,
    BLOCK_ROWS: tl.constexpr, BLOCK_HIDDEN: tl.constexpr, NUM_STAGES: tl.constexpr,
):
    # Rows are indexed by three leading dims (i0, i1, i2): x's leading dims left-padded with 1.
    # Grid: (programs per slice, slice), a slice being one (i0, i1); each program loops over
    # blocks of the slice's rows (i2), keeping each row in registers: one read of every input,
    # one write of every output. Each operand brings its own strides, so chunk views and broadcast
    # (stride 0) operands are read in place; modulation constant over i2 (``[B, 1, C]``, per
    # frame) is HOISTED: loaded once per program, not once per row. HAS_SECOND: a second
    # modulation of the same normalized row goes to out2.
    slice_id = tl.program_id(1).to(tl.int64)
    i0 = slice_id // dim1
    i1 = slice_id % dim1
    cols = tl.arange(0, BLOCK_HIDDEN)
    col_mask = cols < hidden
    if HAS_WEIGHT:
        weight = tl.load(weight_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)[None, :]
    if HAS_BIAS:
        bias = tl.load(bias_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)[None, :]
    if HAS_RESIDUAL:
        norm_dtype = residual_out_ptr.dtype.element_ty
    else:
        norm_dtype = x_ptr.dtype.element_ty
    gate_base, gate_else_base = i0 * gate_s0 + i1 * gate_s1, i0 * gate_e0 + i1 * gate_e1
    scale_base, scale_else_base = i0 * scale_s0 + i1 * scale_s1, i0 * scale_e0 + i1 * scale_e1
    shift_base, shift_else_base = i0 * shift_s0 + i1 * shift_s1, i0 * shift_e0 + i1 * shift_e1
    scale2_base, shift2_base = i0 * scale2_s0 + i1 * scale2_s1, i0 * shift2_s0 + i1 * shift2_s1
    # Placeholders where nothing is hoisted (HOISTED and the HAS_* flags are compile-time).
    gate_row = 0.0
    gate_else_row = 0.0
    scale_row = 0.0
    scale_else_row = 0.0
    shift_row = 0.0
    shift_else_row = 0.0
    scale2_row = 0.0
    shift2_row = 0.0
    if HOISTED:
        scale_row = _modulation_row(scale_ptr, scale_base, scale_sc, cols, col_mask)
        scale_else_row = _modulation_row(scale_else_ptr, scale_else_base, scale_ec, cols, col_mask)
        if HAS_SHIFT:
            shift_row = _modulation_row(shift_ptr, shift_base, shift_sc, cols, col_mask)
            shift_else_row = _modulation_row(shift_else_ptr, shift_else_base, shift_ec, cols, col_mask)
        if HAS_GATE:
            gate_row = _modulation_row(gate_ptr, gate_base, gate_sc, cols, col_mask)
            gate_else_row = _modulation_row(gate_else_ptr, gate_else_base, gate_ec, cols, col_mask)
        if HAS_SECOND:
            scale2_row = _modulation_row(scale2_ptr, scale2_base, scale2_sc, cols, col_mask)
            if HAS_SHIFT2:
                shift2_row = _modulation_row(shift2_ptr, shift2_base, shift2_sc, cols, col_mask)

    n_blocks = tl.cdiv(dim2, BLOCK_ROWS)
    for block in tl.range(tl.program_id(0), n_blocks, tl.num_programs(0), num_stages=NUM_STAGES):
        i2 = block * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS).to(tl.int64)
        row_mask = i2 < dim2
        mask = row_mask[:, None] & col_mask[None, :]
        chosen = row_mask
        if HAS_SELECT:
            chosen = tl.load(select_ptr + i0 * select_s0 + i1 * select_s1 + i2 * select_s2, mask=row_mask, other=0) != 0

        x_offsets = (i0 * x_s0 + i1 * x_s1 + i2 * x_s2)[:, None] + cols[None, :] * x_sc
        value = tl.load(x_ptr + x_offsets, mask=mask, other=0.0, eviction_policy="evict_first").to(tl.float32)
        out_offsets = (slice_id * dim2 + i2)[:, None] * hidden + cols[None, :]
        if HAS_RESIDUAL:
            res_offsets = (i0 * res_s0 + i1 * res_s1 + i2 * res_s2)[:, None] + cols[None, :] * res_sc
            residual = tl.load(residual_ptr + res_offsets, mask=mask, other=0.0, eviction_policy="evict_first")
            if HAS_GATE:
                value = value * _modulation(
                    gate_ptr, gate_else_ptr, gate_base, gate_else_base, gate_s2, gate_e2, gate_sc, gate_ec,
                    gate_row, gate_else_row, i2, cols, mask, chosen, HAS_SELECT, HOISTED,
                )
            # The graph stores r, then normalizes the stored (rounded) value.
            stored = (residual.to(tl.float32) + value).to(norm_dtype)
            tl.store(residual_out_ptr + out_offsets, stored, mask=mask, eviction_policy="evict_first")
            value = stored.to(tl.float32)

        if not IS_RMS:
            mean = tl.sum(value, axis=1) / hidden
            value = tl.where(mask, value - mean[:, None], 0.0)
        mean_square = tl.sum(value * value, axis=1) / hidden
        value = value * (1.0 / tl.sqrt(mean_square + EPS))[:, None]
        if ROUND_BEFORE_WEIGHT:
            value = value.to(norm_dtype).to(tl.float32)
        if HAS_WEIGHT:
            value = value * weight
        if HAS_BIAS:
            value = value + bias
        if ROUND_AFTER_AFFINE:
            value = value.to(norm_dtype).to(tl.float32)
        if HAS_SECOND:
            second = _apply_modulation(
                value, scale2_ptr, scale2_ptr, scale2_base, scale2_base, scale2_s2, scale2_s2, scale2_sc, scale2_sc,
                scale2_row, scale2_row, shift2_ptr, shift2_ptr, shift2_base, shift2_base, shift2_s2, shift2_s2,
                shift2_sc, shift2_sc, shift2_row, shift2_row, i2, cols, mask, chosen,
                SCALE_PLUS_ONE, HAS_SHIFT2, False, HOISTED,
            )
            tl.store(out2_ptr + out_offsets, second.to(out2_ptr.dtype.element_ty), mask=mask, eviction_policy="evict_first")
        value = _apply_modulation(
            value, scale_ptr, scale_else_ptr, scale_base, scale_else_base, scale_s2, scale_e2, scale_sc, scale_ec,
            scale_row, scale_else_row, shift_ptr, shift_else_ptr, shift_base, shift_else_base, shift_s2, shift_e2,
            shift_sc, shift_ec, shift_row, shift_else_row, i2, cols, mask, chosen,
            SCALE_PLUS_ONE, HAS_SHIFT, HAS_SELECT, HOISTED,
        )
        tl.store(out_ptr + out_offsets, value.to(out_ptr.dtype.element_ty), mask=mask, eviction_policy="evict_first")


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
    # Load modulation constant over rows once per program (else once per row, from L2).
    hoist: bool = True


# Modulation rows (over all operands and selectable sets) a program may hold in registers.
MAX_HOISTED_ROWS = 2


@functools.cache
def launch_config(hidden: int, modulation_rows: int) -> LaunchConfig:
    """The launch config for rows of ``hidden`` elements and ``modulation_rows`` modulation operands.

    Swept on H100 and H200 (docs/BENCHMARKS.md).
    """
    block_hidden = triton.next_power_of_2(hidden)
    # Small rows share a program so each one still moves a few KiB.
    block_rows = max(1, min(16, 2048 // block_hidden))
    num_warps = min(max(block_hidden * block_rows // 1024, 1), 8)
    if modulation_rows <= MAX_HOISTED_ROWS:
        # Plain adaln: about 16 resident warps per multiprocessor loop over the rows, holding scale
        # and shift in registers and pipelining the next rows' loads (fastest on H200).
        return LaunchConfig(block_rows, num_warps, num_stages=3, programs_per_sm=16 // num_warps)
    # Residual, per-token choice and pairs: holding 3 or 4 rows costs occupancy (a per-token choice
    # up to 1.5x slower); one program per block of rows reading the modulation rows from L2 is
    # within 5% of the best swept config.
    return LaunchConfig(block_rows, num_warps, num_stages=1, programs_per_sm=0, hoist=False)


# A graph traced for CUDA on a machine without a GPU (tests) is planned for an H200.
PLANNING_MULTIPROCESSORS = 132


def multiprocessors(device: torch.device) -> int:
    """Multiprocessors of ``device``; 1 where programs run one at a time (the CPU interpreter)."""
    if device.type != "cuda":
        return 1
    if not torch.cuda.is_available():
        return PLANNING_MULTIPROCESSORS
    return _cuda_multiprocessors(device.index if device.index is not None else torch.cuda.current_device())


@functools.cache
def _cuda_multiprocessors(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


_NO_STRIDES = (0, 0, 0, 0)


def _pair_args(
    tensors: tuple[torch.Tensor, ...], shape: torch.Size
) -> tuple[tuple[torch.Tensor | None, torch.Tensor | None], tuple[int, ...]]:
    # ((tensor, else tensor), strides + else strides) of a modulation operand; without a selection
    # both are the one tensor; an absent operand passes no pointer and zero strides.
    if not tensors:
        return (None, None), _NO_STRIDES + _NO_STRIDES
    first, second = tensors[0], tensors[-1]
    return (first, second), broadcast_strides(first, shape) + broadcast_strides(second, shape)


def empty_outputs(call: NormModulate) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Uninitialized ``(y, second)`` for ``call``: contiguous, x's shape, the call's dtypes."""
    x = call.x
    second_dtype = call.residual_dtype if call.residual is not None else call.out_dtype2
    second = None if second_dtype is None else torch.empty(x.shape, dtype=second_dtype, device=x.device)
    return torch.empty(x.shape, dtype=call.out_dtype, device=x.device), second


def kernel_launch(
    call: NormModulate, out: tuple[torch.Tensor, torch.Tensor | None], config: LaunchConfig | None = None
) -> KernelLaunch | None:
    """The launch computing ``call`` into ``out`` (None where x has no rows).

    A function of shapes, strides, dtypes and the device only: a compiled graph plans it once.
    """
    x = call.x
    hidden = static_size(x.shape[-1])
    # The second output is r (residual_adaln) or the second modulation (pair), never both.
    out, second = out
    residual_out, out2 = (second, None) if call.residual is not None else (None, second)
    leading = collapse_leading_dims(x.shape)
    if leading[0] * leading[1] * leading[2] == 0:
        return None
    (gate, gate_else), gate_strides = _pair_args(call.gate, x.shape)
    (scale, scale_else), scale_strides = _pair_args(call.scale, x.shape)
    (shift, shift_else), shift_strides = _pair_args(call.shift, x.shape)
    (scale2, _), scale2_strides = _pair_args(call.scale2, x.shape)
    (shift2, _), shift2_strides = _pair_args(call.shift2, x.shape)
    residual_strides = broadcast_strides(call.residual, x.shape) if call.residual is not None else _NO_STRIDES
    select_strides = broadcast_strides(call.select, x.shape)[:3] if call.select is not None else (0, 0, 0)
    config = config or launch_config(hidden, call.modulation_rows)
    slices = leading[0] * leading[1]
    n_programs = triton.cdiv(leading[2], config.block_rows)
    if config.programs_per_sm:
        n_programs = torch.sym_min(n_programs, triton.cdiv(config.programs_per_sm * multiprocessors(x.device), slices))
    # Modulation constant over the last leading dim is loaded once per program.
    hoisted = config.hoist and all(
        strides[2] == 0
        for pair_strides in (gate_strides, scale_strides, shift_strides, scale2_strides, shift2_strides)
        for strides in (pair_strides[:4], pair_strides[4:])
    )
    pointers = dict(
        x_ptr=x, residual_ptr=call.residual, gate_ptr=gate, gate_else_ptr=gate_else, weight_ptr=call.weight,
        bias_ptr=call.bias, scale_ptr=scale, scale_else_ptr=scale_else, shift_ptr=shift, shift_else_ptr=shift_else,
        select_ptr=call.select, scale2_ptr=scale2, shift2_ptr=shift2, out_ptr=out, residual_out_ptr=residual_out,
        out2_ptr=out2,
    )
    strides = dict(zip(_STRIDE_NAMES, (
        *broadcast_strides(x, x.shape), *residual_strides, *gate_strides, *scale_strides, *shift_strides,
        *select_strides, *scale2_strides[:4], *shift2_strides[:4],
    ), strict=True))
    arguments = dict(
        # An absent operand is None (a constexpr of the compiled kernel), not a stand-in tensor: in a
        # compiled graph every tensor argument is an input of the kernel node, and Inductor wrote a
        # copy of a computed x for each argument it stood in for (docs/BENCHMARKS.md).
        **pointers,
        dim1=leading[1], dim2=leading[2], hidden=hidden, EPS=call.eps, **strides,
        IS_RMS=call.norm == "rms", HAS_RESIDUAL=call.residual is not None, HAS_GATE=bool(call.gate),
        HAS_WEIGHT=call.weight is not None, HAS_BIAS=call.bias is not None,
        ROUND_BEFORE_WEIGHT=call.rounding == "before_weight", ROUND_AFTER_AFFINE=call.rounding == "after_affine",
        SCALE_PLUS_ONE=call.scale_plus_one, HAS_SHIFT=bool(call.shift), HAS_SELECT=call.select is not None,
        HOISTED=hoisted, HAS_SECOND=bool(call.scale2), HAS_SHIFT2=bool(call.shift2), BLOCK_ROWS=config.block_rows,
        BLOCK_HIDDEN=triton.next_power_of_2(hidden), NUM_STAGES=config.num_stages, num_warps=config.num_warps,
    )
    outputs = ("out_ptr",) + (("residual_out_ptr",) if residual_out is not None else ()) + (
        ("out2_ptr",) if out2 is not None else ()
    )
    return KernelLaunch(_norm_modulate_kernel, (n_programs, slices), arguments, outputs)


_STRIDE_NAMES = (
    "x_s0", "x_s1", "x_s2", "x_sc", "res_s0", "res_s1", "res_s2", "res_sc",
    "gate_s0", "gate_s1", "gate_s2", "gate_sc", "gate_e0", "gate_e1", "gate_e2", "gate_ec",
    "scale_s0", "scale_s1", "scale_s2", "scale_sc", "scale_e0", "scale_e1", "scale_e2", "scale_ec",
    "shift_s0", "shift_s1", "shift_s2", "shift_sc", "shift_e0", "shift_e1", "shift_e2", "shift_ec",
    "select_s0", "select_s1", "select_s2",
    "scale2_s0", "scale2_s1", "scale2_s2", "scale2_sc", "shift2_s0", "shift2_s1", "shift2_s2", "shift2_sc",
)


def _launch(
    call: NormModulate, config: LaunchConfig | None = None, out: tuple[torch.Tensor, torch.Tensor | None] | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    # Unchecked: the ops' CUDA path checks once and comes here.
    out = out or empty_outputs(call)
    launch = kernel_launch(call, out, config)
    if launch is not None:
        launch.run()
    return out


def emit_launch(call: NormModulate) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(y, second)`` computed by the kernel launched from the compiled graph being traced."""
    out = empty_outputs(call)
    launch = kernel_launch(call, out)
    if launch is None:
        return out
    written = launch.emit()
    return written["out_ptr"], written.get("residual_out_ptr", written.get("out2_ptr"))


def norm_modulate_triton(
    call: NormModulate, config: LaunchConfig | None = None, out: tuple[torch.Tensor, torch.Tensor | None] | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Run the one-pass kernel on ``call`` after checking it; returns ``(y, second)``.

    ``second`` is r for residual_adaln, the second modulation for a pair, else None. ``out``, if given, is
    ``(y, second)`` to write into: contiguous, x's shape, the call's dtypes.
    """
    reason = _argument_error(call) or unsupported_reason(call)
    if reason is not None:
        raise ValueError(f"norm_modulate_triton: {reason}")
    if out is not None:
        second_dtype = call.residual_dtype if call.residual is not None else call.out_dtype2
        expected = ((call.out_dtype, "out[0]"),) + (((second_dtype, "out[1]"),) if second_dtype is not None else ())
        for (dtype, name), tensor in zip(expected, out, strict=False):
            if tensor is None or tensor.shape != call.x.shape or tensor.dtype != dtype or not tensor.is_contiguous():
                got = "None" if tensor is None else f"{tensor.dtype} {tuple(tensor.shape)} with strides {tensor.stride()}"
                raise ValueError(f"{name}: expected a contiguous {dtype} tensor of shape {tuple(call.x.shape)}, got {got}")
    return _launch(call, config, out)


def _emit(call: NormModulate) -> tuple[torch.Tensor, torch.Tensor | None]:
    # The op's launch planned at compile time, in the graph being traced (a symbolic hidden size is
    # specialized); NotEmittable where the kernel does not take the call.
    if call.x.device.type != "cuda":
        raise NotEmittable(f"x is on {call.x.device}; only CUDA has the kernel")
    # Shapes are checked at their compile-time sizes (no guards).
    hinted_call = dataclasses.replace(
        call, x=hinted(call.x), residual=hinted(call.residual), select=hinted(call.select),
        weight=hinted(call.weight), bias=hinted(call.bias),
        **{name: tuple(hinted(tensor) for tensor in tensors) for name, tensors in call.modulation()},
    )
    reason = device_error(call.named_operands()) or _argument_error(hinted_call) or unsupported_reason(hinted_call)
    if reason is not None:
        raise NotEmittable(reason)
    return emit_launch(call)


def _run(call: NormModulate) -> tuple[torch.Tensor, torch.Tensor | None]:
    # (y, r or the second modulation or None), on every device.
    return kernel_or_reference(call, call.x, _argument_error, unsupported_reason, reference, _launch)


# Each op is declared by the function making its arguments one call (its schema comes from the
# signature); the op's body, fake and emitter all read the call.


def _fake_outputs(call: NormModulate) -> tuple[torch.Tensor, torch.Tensor | None]:
    # The outputs' metadata, after the same device check as the real op (a meta operand among real
    # ones reaches the fake).
    check_devices(call.named_operands())
    return empty_outputs(call)


def _single_call(
    x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, scale: Sequence[torch.Tensor],
    shift: Sequence[torch.Tensor], select: torch.Tensor | None, eps: float, norm: str, scale_plus_one: bool, rounding: str,
    out_dtype: torch.dtype,
) -> NormModulate:
    """adaln: ``N(x) * (1 + scale) + shift`` (or ``* scale`` without ``scale_plus_one``)."""
    return NormModulate(
        x, None, (), weight, bias, tuple(scale), tuple(shift), select, eps, norm, scale_plus_one, rounding, None, out_dtype
    )


def _residual_call(
    residual: torch.Tensor, x: torch.Tensor, gate: Sequence[torch.Tensor], weight: torch.Tensor | None,
    bias: torch.Tensor | None, scale: Sequence[torch.Tensor], shift: Sequence[torch.Tensor], select: torch.Tensor | None,
    eps: float, norm: str, scale_plus_one: bool, rounding: str, residual_dtype: torch.dtype, out_dtype: torch.dtype,
) -> NormModulate:
    """residual_adaln: ``r = residual + gate * x`` then adaln on ``r``; returns ``(y, r)``."""
    return NormModulate(
        x, residual, tuple(gate), weight, bias, tuple(scale), tuple(shift), select, eps, norm, scale_plus_one,
        rounding, residual_dtype, out_dtype,
    )


def _pair_call(
    x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, scale: Sequence[torch.Tensor],
    shift: Sequence[torch.Tensor], scale2: Sequence[torch.Tensor], shift2: Sequence[torch.Tensor], eps: float, norm: str,
    scale_plus_one: bool, rounding: str, out_dtype: torch.dtype, out_dtype2: torch.dtype,
) -> NormModulate:
    """adaln twice on one norm: ``n = N(x)``; ``(n * (1 + scale) + shift, n * (1 + scale2) + shift2)``."""
    return NormModulate(
        x, None, (), weight, bias, tuple(scale), tuple(shift), None, eps, norm, scale_plus_one, rounding, None,
        out_dtype, tuple(scale2), tuple(shift2), out_dtype2,
    )


norm_modulate = fused_op(
    "fusion_passes::norm_modulate", _single_call, _run, _fake_outputs, _emit, torch.Tensor, first_output_only=True
)
residual_norm_modulate = fused_op(
    "fusion_passes::residual_norm_modulate", _residual_call, _run, _fake_outputs, _emit, tuple[torch.Tensor, torch.Tensor]
)
norm_modulate_pair = fused_op(
    "fusion_passes::norm_modulate_pair", _pair_call, _run, _fake_outputs, _emit, tuple[torch.Tensor, torch.Tensor]
)
