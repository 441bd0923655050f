"""The RoPE Triton kernel (CPU interpreter without a GPU), its reference and custom op, against an fp64 reference."""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Sequence
from typing import Any
from unittest import mock

import pytest
import torch
from helpers import KERNEL_TOLERANCE, relative_error
from conftest import DEVICE
from poisoning import poisoned_outputs

from fusion_passes.kernels import rope

# Triton's CPU interpreter converts fp32 to bf16 by truncation (``cast_impl`` in
# triton/runtime/interpreter.py passes no rounding mode); GPUs round to nearest even. The kernel's
# bf16 roundings are compared with a reference that truncates there too.
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
Map = tuple[int, int, int, int]
NO_MAP: Map = (0, 0, 0, 0)


@pytest.fixture(autouse=True)
def seed() -> None:
    """Fresh, seeded random inputs in every test."""
    torch.manual_seed(0)


# --- The fp64 reference, straight from the math -------------------------------------------------


def coefficients(table: torch.Tensor, table_map: Map, pair: torch.Tensor, member: torch.Tensor) -> torch.Tensor:
    """``T[..., start + pair * per_pair + member * per_member]`` (real or imaginary part), per column, in fp64."""
    start, per_pair, per_member, part = table_map
    values = table.imag if part == 1 else table.real
    return values[..., start + pair * per_pair + member * per_member].double()


def rounded(value: torch.Tensor, dtype: torch.dtype, truncate_bf16: bool) -> torch.Tensor:
    """``value`` (fp64) cast to ``dtype`` and back: to nearest, or (interpreter) bf16 by truncating fp32."""
    if dtype == torch.bfloat16 and truncate_bf16:
        return (value.float().view(torch.int32) & -(1 << 16)).view(torch.float32).double()
    return value.to(dtype).double()


def expected(call: rope.Rope, truncate_bf16: bool = False) -> torch.Tensor:
    """The call in fp64: per stream norm (with the call's roundings as explicit casts), weight, rotation; then cat.

    Column-wise, unlike ``rope.reference`` (pair-wise): rotated column ``c`` is member ``j`` of pair
    ``i``, with partner ``p``; ``out[c] = x[c] * cos_c - x[p] * sin_c`` for ``j = 0`` and ``+`` for ``j = 1``.
    """
    columns = torch.arange(call.rotary_dim, device=call.streams[0].x.device)
    half = call.rotary_dim // 2
    if call.interleaved:
        pair, member, partner = columns // 2, columns % 2, columns ^ 1
    else:
        pair, member, partner = columns % half, columns // half, (columns + half) % call.rotary_dim
    sign = 2.0 * member.double() - 1.0
    outputs = []
    for stream in call.streams:
        value = stream.x.double()
        if call.norm != "none":
            dims = (-1,) if call.norm == "head" else (-2, -1)
            value = value / torch.sqrt(value.pow(2).mean(dims, keepdim=True) + stream.eps)
            if call.rounding in ("before_weight", "before_and_after_weight"):
                value = rounded(value, stream.x.dtype, truncate_bf16)
            if stream.weight is not None:
                value = value * stream.weight.double().reshape(value.shape[-2:] if call.norm == "heads" else value.shape[-1:])
            if call.rounding in ("after_weight", "before_and_after_weight"):
                value = rounded(value, stream.x.dtype, truncate_bf16)
        if stream.cos is not None:
            cos = coefficients(stream.cos, stream.cos_map, pair, member)
            sin = coefficients(stream.sin, stream.sin_map, pair, member)
            rotated = value[..., : call.rotary_dim] * cos + sign * value[..., partner] * sin
            value = torch.cat([rotated, value[..., call.rotary_dim:]], dim=-1)
        outputs.append(value)
    return torch.cat(outputs, dim=call.cat_dim)


def rotated_by(x: torch.Tensor, angles: torch.Tensor, rotary_dim: int, interleaved: bool) -> torch.Tensor:
    """``x`` (fp64) with each pair, as a complex number, times ``exp(i * angle)``: what every table spelling encodes."""
    half = rotary_dim // 2
    if interleaved:
        a, b = x[..., :rotary_dim:2], x[..., 1:rotary_dim:2]
    else:
        a, b = x[..., :half], x[..., half:rotary_dim]
    turned = torch.complex(a, b) * torch.polar(torch.ones_like(angles), angles)
    if interleaved:
        rotated = torch.view_as_real(turned).flatten(-2)
    else:
        rotated = torch.cat([turned.real, turned.imag], dim=-1)
    return torch.cat([rotated, x[..., rotary_dim:]], dim=-1)



# --- Building calls -----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Tables:
    """One stream's cos and sin tables with the maps that read them."""

    cos: torch.Tensor
    sin: torch.Tensor
    cos_map: Map
    sin_map: Map


# Spellings of one rotation by ``angles`` [*lead, R/2], as models write their tables.
REAL_SPELLINGS = ("flux repeat_interleave", "half-split cat", "wan 0::2 slice")
COMPLEX_SPELLINGS = {"complex64": torch.complex64, "complex128": torch.complex128}
SPELLINGS = (*REAL_SPELLINGS, *COMPLEX_SPELLINGS)


def spelled(spelling: str, angles: torch.Tensor, dtype: torch.dtype = torch.float32) -> Tables:
    """The tables of ``spelling`` for a rotation by ``angles`` (fp64, [*lead, R/2]), real ones in ``dtype``."""
    half = angles.shape[-1]
    if spelling in COMPLEX_SPELLINGS:
        freqs = torch.polar(torch.ones_like(angles), angles).to(COMPLEX_SPELLINGS[spelling])
        return Tables(freqs, freqs, (0, 1, 0, 0), (0, 1, 0, 1))
    cos, sin = angles.cos().to(dtype), angles.sin().to(dtype)
    if spelling == "flux repeat_interleave":  # [.., R]: pair i at 2i and 2i + 1
        return Tables(cos.repeat_interleave(2, -1), sin.repeat_interleave(2, -1), (0, 2, 1, 0), (0, 2, 1, 0))
    if spelling == "half-split cat":  # [.., R]: pair i at i and i + R/2
        return Tables(torch.cat([cos, cos], -1), torch.cat([sin, sin], -1), (0, 1, half, 0), (0, 1, half, 0))
    assert spelling == "wan 0::2 slice"  # a stride-2 view of a repeated table, one element per pair
    cos_slice, sin_slice = cos.repeat_interleave(2, -1)[..., 0::2], sin.repeat_interleave(2, -1)[..., 0::2]
    assert cos_slice.stride(-1) == 2
    return Tables(cos_slice, sin_slice, (0, 1, 0, 0), (0, 1, 0, 0))


def independent_tables(lead: Sequence[int], rotary_dim: int, dtype: torch.dtype = torch.float32) -> Tables:
    """Unrelated random cos and sin (members a and b read different values), read at an offset and backwards."""
    half = rotary_dim // 2
    cos = torch.randn(*lead, rotary_dim + 3, dtype=dtype, device=DEVICE)
    sin = torch.randn(*lead, rotary_dim, dtype=dtype, device=DEVICE)
    return Tables(cos, sin, (3, 1, half, 0), (half, 1, -half, 0))


def random_angles(*lead: int, half: int) -> torch.Tensor:
    """Random fp64 rotation angles [*lead, half] in [0, 2 pi)."""
    return torch.rand(*lead, half, dtype=torch.float64, device=DEVICE) * 2 * math.pi


def make(
    xs: Sequence[torch.Tensor],
    tables: Sequence[Tables | None],
    *,
    norm: str = "none",
    weights: Sequence[torch.Tensor | None] | None = None,
    eps: Sequence[float] | None = None,
    rounding: str = "none",
    rotary_dim: int | None = None,
    interleaved: bool = True,
    cat_dim: int = 1,
    out_dtype: torch.dtype | None = None,
) -> rope.Rope:
    """``rope.make_call`` with per-stream ``Tables`` (None: unrotated) and defaults."""
    count = len(xs)
    return rope.make_call(
        xs, list(weights or [None] * count), list(eps or [1e-6] * count),
        [t and t.cos for t in tables], [t and t.sin for t in tables],
        [v for t in tables for v in (t.cos_map if t else NO_MAP)], [v for t in tables for v in (t.sin_map if t else NO_MAP)],
        norm, rounding, rotary_dim or xs[0].shape[-1], interleaved, cat_dim, out_dtype or xs[0].dtype,
    )


def op_args(call: rope.Rope) -> tuple[Any, ...]:
    """The custom op's flat arguments for ``call``."""
    streams = call.streams
    return (
        [s.x for s in streams], [s.weight for s in streams], [s.eps for s in streams],
        [s.cos for s in streams], [s.sin for s in streams],
        [v for s in streams for v in s.cos_map], [v for s in streams for v in s.sin_map],
        call.norm, call.rounding, call.rotary_dim, call.interleaved, call.cat_dim, call.out_dtype,
    )


def weight_for(norm: str, x: torch.Tensor) -> torch.Tensor:
    """A random norm weight: [D] per head, [H * D] across heads."""
    width = x.shape[-1] * (x.shape[-2] if norm == "heads" else 1)
    return torch.randn(width, dtype=x.dtype, device=DEVICE)


# --- Running and comparing ----------------------------------------------------------------------


def run_kernel(call: rope.Rope, config: rope.LaunchConfig | None = None) -> torch.Tensor:
    """``rope_triton`` into a NaN-filled output; checks every element was written."""
    with poisoned_outputs(rope):
        out = rope.rope_triton(call, config)
    assert out.shape == call.out_shape and out.dtype == call.out_dtype and out.is_contiguous()
    assert not out.isnan().any(), "kernel left output elements unwritten"
    return out


def check(call: rope.Rope, config: rope.LaunchConfig | None = None, tolerance: float | None = None) -> None:
    """The kernel and ``rope.reference`` both within the out dtype's tolerance of the fp64 reference."""
    tolerance = tolerance or KERNEL_TOLERANCE[call.out_dtype]
    assert relative_error(run_kernel(call, config), expected(call, truncate_bf16=INTERPRETED)) < tolerance
    assert relative_error(rope.reference(call), expected(call)) < tolerance


# --- Numerics -----------------------------------------------------------------------------------

# (L, H, D, R): odd head dims, one head, one token, partial rotation down to one pair.
SHAPES = {"L7 H3 D34 R34": (7, 3, 34, 34), "L1 H5 D10 R6": (1, 5, 10, 6), "L4 H1 D6 R2": (4, 1, 6, 2)}
NORMS = {"none": ("none", False), "head": ("head", False), "head+weight": ("head", True),
         "heads": ("heads", False), "heads+weight": ("heads", True)}


@pytest.mark.parametrize("dtype", list(KERNEL_TOLERANCE))
@pytest.mark.parametrize("norm_name", NORMS)
@pytest.mark.parametrize("interleaved", [True, False], ids=["interleaved", "half-split"])
@pytest.mark.parametrize("shape", SHAPES)
def test_matches_fp64(dtype: torch.dtype, norm_name: str, interleaved: bool, shape: str) -> None:
    """Kernel and reference match fp64 for every x dtype, norm, pairing, odd and partial sizes."""
    length, heads, head_dim, rotary_dim = SHAPES[shape]
    norm, with_weight = NORMS[norm_name]
    x = (torch.randn(2, length, heads, head_dim, device=DEVICE) * 2 + 0.5).to(dtype)
    c = make(
        [x], [independent_tables((1, length, 1), rotary_dim)], norm=norm, rotary_dim=rotary_dim,
        weights=[weight_for(norm, x) if with_weight else None], interleaved=interleaved,
    )
    check(c)


@pytest.mark.parametrize("rounding", rope.ROUNDINGS)
@pytest.mark.parametrize("norm", ["head", "heads"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_rounding_points(rounding: str, norm: str, dtype: torch.dtype) -> None:
    """Each rounding mode rounds the normalized value where the fp64 reference casts (fp32 out: rounding dominates)."""
    x = torch.randn(2, 5, 3, 16, device=DEVICE).to(dtype)
    weight = (torch.rand(x.shape[-1] * (3 if norm == "heads" else 1), device=DEVICE) * 3).to(dtype)
    c = make([x], [independent_tables((1, 5, 1), 12)], norm=norm, weights=[weight], rounding=rounding,
             rotary_dim=12, out_dtype=torch.float32)
    check(c, tolerance=1e-5)
    # The test tells the modes apart: other rounding points are further off than the tolerance.
    for other in rope.ROUNDINGS:
        if other != rounding:
            assert relative_error(expected(dataclasses.replace(c, rounding=other)), expected(c)) > 1e-4


@pytest.mark.parametrize("spelling", SPELLINGS)
@pytest.mark.parametrize("interleaved", [True, False], ids=["interleaved", "half-split"])
@pytest.mark.parametrize("rotary_dim", [10, 6])
def test_table_spellings(spelling: str, interleaved: bool, rotary_dim: int) -> None:
    """Every table spelling (FLUX, half-split, Wan slice, complex64/128) is the rotation by its angles, fused."""
    x = torch.randn(2, 5, 3, 10, dtype=torch.bfloat16, device=DEVICE)
    angles = random_angles(1, 5, 1, half=rotary_dim // 2)
    c = make([x], [spelled(spelling, angles)], rotary_dim=rotary_dim, interleaved=interleaved, out_dtype=torch.float32)
    check(c)
    torch.testing.assert_close(expected(c), rotated_by(x.double(), angles, rotary_dim, interleaved), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("table_dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize(("x_dtype", "out_dtype"), [(torch.bfloat16, torch.float32), (torch.float32, torch.float16)])
def test_table_weight_and_out_dtypes(table_dtype: torch.dtype, x_dtype: torch.dtype, out_dtype: torch.dtype) -> None:
    """Tables of every real dtype, a weight of another dtype than x, and an out dtype of its own."""
    x = torch.randn(2, 4, 3, 10, dtype=x_dtype, device=DEVICE)
    weight = torch.randn(10, dtype=torch.float32 if x_dtype != torch.float32 else torch.bfloat16, device=DEVICE)
    c = make([x], [spelled("flux repeat_interleave", random_angles(1, 4, 1, half=5), table_dtype)],
             norm="head", weights=[weight], rounding="after_weight", out_dtype=out_dtype)
    check(c)


def gathered_angles(batch: int, length: int, half: int) -> torch.Tensor:
    """Angles [B, L, 1, R/2] gathered from a [positions, R/2] table by per-batch position ids."""
    positions = torch.randint(0, 16, (batch, length), device=DEVICE)
    return random_angles(16, half=half)[positions][:, :, None]


# name: (x shape, angles [*table lead, R/2] for that x), with distinct B, L, H (a swapped dim shows) and R = 6.
B, L, H, D = 2, 4, 3, 10
LAYOUTS: dict[str, tuple[tuple[int, ...], Callable[[], torch.Tensor]]] = {
    "[1, L, 1, W]": ((B, L, H, D), lambda: random_angles(1, L, 1, half=3)),
    "per batch [B, L, 1, W] by position ids": ((B, L, H, D), lambda: gathered_angles(B, L, 3)),
    "per head [1, L, H, W], B=1": ((1, L, H, D), lambda: random_angles(1, L, H, half=3)),
    "per head [1, L, H, W], B=2": ((B, L, H, D), lambda: random_angles(1, L, H, half=3)),
    "per batch and head [B, L, H, W]": ((B, L, H, D), lambda: random_angles(B, L, H, half=3)),
    "[B, H, L, D] with [1, 1, L, W]": ((B, H, L, D), lambda: random_angles(1, 1, L, half=3)),
    "3-D [L, H, D] with [L, 1, W]": ((L, H, D), lambda: random_angles(L, 1, half=3)),
    "2-D [N, D] with [N, W]": ((5, D), lambda: random_angles(5, half=3)),
    "one row [W]": ((B, L, H, D), lambda: random_angles(half=3)),
}


def strided_x(shape: tuple[int, ...], layout: str) -> torch.Tensor:
    """A random x of ``shape``: contiguous, transposed, a chunk of a wider tensor, or with last-dim stride 2."""
    if layout == "contiguous":
        return torch.randn(shape, device=DEVICE)
    if layout == "transposed":  # .transpose(1, 2) of [B, H, L, D] (rows of a 2-D x)
        dims = (-3, -2) if len(shape) > 2 else (0, 1)
        stored = list(shape)
        stored[dims[0]], stored[dims[1]] = stored[dims[1]], stored[dims[0]]
        return torch.randn(stored, device=DEVICE).transpose(*dims)
    if layout == "chunk":  # q of a fused qkv projection
        return torch.randn(*shape[:-1], 3 * shape[-1], device=DEVICE).chunk(3, dim=-1)[1]
    assert layout == "last-dim stride 2"
    return torch.randn(*shape[:-1], 2 * shape[-1], device=DEVICE)[..., ::2]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("x_layout", ["contiguous", "transposed", "chunk", "last-dim stride 2"])
@pytest.mark.parametrize("interleaved", [True, False], ids=["interleaved", "half-split"])
def test_table_broadcasts_and_x_strides(layout: str, x_layout: str, interleaved: bool) -> None:
    """Tables per batch, per head, per token, [B, H, L, D] layouts, 2-D and 3-D x; strided x views."""
    shape, angles = LAYOUTS[layout]
    x = strided_x(shape, x_layout)
    assert x.is_contiguous() == (x_layout == "contiguous")
    tables = spelled("flux repeat_interleave" if interleaved else "half-split cat", angles())
    check(make([x], [tables], norm="head", rotary_dim=6, interleaved=interleaved, cat_dim=0))


# --- Streams ------------------------------------------------------------------------------------


def joint_flux_streams() -> rope.Rope:
    """FLUX: text and image q normalized with their own weights and eps, tables sliced from one joint table."""
    text, image = (torch.randn(2, length, 3, 10, dtype=torch.bfloat16, device=DEVICE) * 0.3 for length in (3, 5))
    joint = spelled("flux repeat_interleave", random_angles(1, 8, 1, half=5))
    sliced = [Tables(joint.cos[:, part], joint.sin[:, part], joint.cos_map, joint.sin_map) for part in (slice(0, 3), slice(3, 8))]
    return make([text, image], sliced, norm="head", weights=[weight_for("head", text), weight_for("head", image)],
                eps=[1e-6, 0.5], rounding="before_weight")


def three_streams_one_unrotated() -> rope.Rope:
    """HunyuanVideo-like: image, text (unrotated) and image tokens, each normed across heads with its own weight."""
    xs = [torch.randn(2, length, 3, 10, device=DEVICE) for length in (2, 4, 3)]
    tables = [spelled("half-split cat", random_angles(1, 2, 1, half=4)), None,
              spelled("half-split cat", random_angles(1, 3, 1, half=4))]
    return make(xs, tables, norm="heads", weights=[weight_for("heads", x) for x in xs], eps=[1e-6, 1e-3, 0.5],
                rotary_dim=8, interleaved=False)


def heads_first_streams() -> rope.Rope:
    """Qwen-Image-like: [B, H, L, D] streams, each with its slice of a complex table, joined along L (cat_dim -2 = 2)."""
    xs = [torch.randn(2, 3, length, 10, dtype=torch.float16, device=DEVICE) for length in (4, 2)]
    freqs = spelled("complex64", random_angles(1, 1, 9, half=5)).cos
    tables = [Tables(part, part, (0, 1, 0, 0), (0, 1, 0, 1)) for part in (freqs[:, :, 1:5], freqs[:, :, 7:])]
    return make(xs, tables, cat_dim=-2)


STREAMS = {"flux joint": joint_flux_streams, "three, one unrotated": three_streams_one_unrotated,
           "[B, H, L, D] along L": heads_first_streams}


@pytest.mark.parametrize("name", STREAMS)
def test_streams(name: str) -> None:
    """Several streams of different lengths, per-stream weights, eps and tables, joined along cat_dim."""
    c = STREAMS[name]()
    assert len(c.streams) > 1 and len({s.x.shape[c.cat_dim] for s in c.streams}) > 1
    check(c)


@pytest.mark.parametrize("lengths", [(0, 4), (4, 0), (0,)])
def test_empty_stream(lengths: tuple[int, ...]) -> None:
    """A stream with no tokens writes nothing and leaves its neighbours right."""
    xs = [torch.randn(2, length, 3, 8, device=DEVICE) for length in lengths]
    tables = [spelled("complex128", random_angles(1, x.shape[1], 1, half=4)) for x in xs]
    c = make(xs, tables, norm="heads", weights=[weight_for("heads", x) for x in xs])
    out = run_kernel(c)
    assert out.shape == (2, sum(lengths), 3, 8)
    if out.numel():
        check(c)


# --- Launch configs -----------------------------------------------------------------------------

HEADS = 5
CONFIGS = [rope.LaunchConfig(1, 1), rope.LaunchConfig(2, 4), rope.LaunchConfig(4, 1), rope.LaunchConfig(8, 1),
           rope.LaunchConfig(16, 4)]
# A norm over all heads needs them in one program (see test_norm_across_heads_refuses_split_heads).
CONFIG_CASES = [(config, norm) for norm in rope.NORMS for config in CONFIGS if norm != "heads" or config.block_heads >= HEADS]


@pytest.mark.parametrize(("config", "norm"), CONFIG_CASES, ids=str)
@pytest.mark.parametrize("per_head", [False, True], ids=["shared tables", "per-head tables"])
def test_launch_configs_cover_every_head(config: rope.LaunchConfig, norm: str, per_head: bool) -> None:
    """Any heads per program (masked heads past H=5 included) and warps give the fp64 result."""
    x = torch.randn(1, 3, HEADS, 10, device=DEVICE)
    angles = random_angles(1, 3, HEADS if per_head else 1, half=3)
    c = make([x], [spelled("wan 0::2 slice", angles)], norm=norm, rotary_dim=6, interleaved=not per_head)
    check(c, config=config)


def test_norm_across_heads_refuses_split_heads() -> None:
    """A norm over all heads with fewer heads per program than H is a ValueError naming the config."""
    x = torch.randn(1, 3, 5, 10, device=DEVICE)
    c = make([x], [spelled("wan 0::2 slice", random_angles(1, 3, 1, half=5))], norm="heads")
    with pytest.raises(ValueError, match=r"config: norm 'heads' needs block_heads >= 5, got 4"):
        rope.rope_triton(c, rope.LaunchConfig(4, 1))


@pytest.mark.parametrize("heads", [1, 3, 5, 12, 24, 32, 40])
@pytest.mark.parametrize("head_dim", [34, 128, 512])
def test_launch_config_across_heads_holds_every_head(heads: int, head_dim: int) -> None:
    """norm 'heads' gets all heads in one program, and a power-of-two count of warps up to 8."""
    config = rope.launch_config(heads, head_dim, True)
    assert heads <= config.block_heads < 2 * heads
    assert config.num_warps in (1, 2, 4, 8)


# (heads, head_dim): block_heads the docstring promises, a power of two near the target that
# divides the heads where one does (TARGET_PROGRAM_ELEMENTS // block_dim, at least a quarter of it).
PER_HEAD_CONFIGS = {
    (24, 128): 8, (12, 128): 4, (16, 64): 16, (32, 34): 16, (40, 128): 8, (1, 128): 1,
    (5, 34): 8,  # no power of two from 4 to 16 divides 5: masked heads
    (12, 64): 4,  # GPT-2 / ViT-B: 4 divides 12 (target 16)
    (6, 128): 2,  # 2 divides 6 (target 8)
}
@pytest.mark.parametrize(
    ("heads", "head_dim"), list(PER_HEAD_CONFIGS),
)
def test_launch_config_per_head_divides_heads_where_it_can(heads: int, head_dim: int) -> None:
    """norm 'head'/none gets a power-of-two divisor of H near the target where one exists (no masked heads)."""
    config = rope.launch_config(heads, head_dim, False)
    assert config.block_heads == PER_HEAD_CONFIGS[heads, head_dim]
    assert config.num_warps in (1, 2, 4, 8)


# --- The custom op ------------------------------------------------------------------------------

OPCHECK_SAMPLES = {
    "one stream, bf16, flux tables, partial": lambda: make(
        [torch.randn(2, 3, 4, 10, dtype=torch.bfloat16, device=DEVICE)],
        [spelled("flux repeat_interleave", random_angles(1, 3, 1, half=3))], rotary_dim=6,
    ),
    "two streams, norm head, weights, rounding": lambda: joint_flux_streams(),
    "complex table, norm heads, half-split": lambda: make(
        [torch.randn(2, 3, 4, 8, device=DEVICE)], [spelled("complex64", random_angles(1, 3, 1, half=4))],
        norm="heads", weights=[torch.randn(32, device=DEVICE)], interleaved=False,
    ),
}


@pytest.mark.parametrize("name", OPCHECK_SAMPLES)
def test_opcheck(name: str) -> None:
    """The custom op's schema, fake impl and autograd registration agree with its real impl."""
    torch.library.opcheck(torch.ops.fusion_passes.rope.default, op_args(OPCHECK_SAMPLES[name]()))


def test_op_matches_fp64() -> None:
    """The op (reference on CPU, kernel on CUDA) computes the call."""
    c = three_streams_one_unrotated()
    assert relative_error(torch.ops.fusion_passes.rope(*op_args(c)), expected(c)) < KERNEL_TOLERANCE[torch.float32]


# --- Bad input ----------------------------------------------------------------------------------


def default_args(**overrides: Any) -> dict[str, Any]:
    """``make_call`` keyword arguments for one valid [2, 4, 3, 8] stream with [1, 4, 1, 8] tables, then ``overrides``."""
    tables = spelled("flux repeat_interleave", random_angles(1, 4, 1, half=4))
    args = dict(
        xs=[torch.randn(2, 4, 3, 8, device=DEVICE)], weights=[None], eps=[1e-6], cos=[tables.cos], sin=[tables.sin],
        cos_maps=list(tables.cos_map), sin_maps=list(tables.sin_map), norm="none", rounding="none", rotary_dim=8,
        interleaved=True, cat_dim=1, out_dtype=torch.float32,
    )
    return {**args, **overrides}


def two_streams(second: torch.Tensor) -> dict[str, Any]:
    """Overrides for a second, unrotated stream."""
    return dict(xs=[torch.randn(2, 4, 3, 8, device=DEVICE), second], weights=[None] * 2, eps=[1e-6] * 2,
                cos=[None] * 2, sin=[None] * 2, cos_maps=[0] * 8, sin_maps=[0] * 8)


BAD_ARGUMENTS: dict[str, tuple[Callable[[], dict[str, Any]], str]] = {
    "no streams": (lambda: dict(xs=[]), "xs: expected at least one stream, got none"),
    "weights length": (lambda: dict(weights=[None, None]), "weights: expected 1 entries for 1 streams, got 2"),
    "eps length": (lambda: dict(eps=[]), "eps: expected 1 entries"),
    "cos length": (lambda: dict(cos=[None, None]), "cos: expected 1 entries"),
    "sin_maps length": (lambda: dict(sin_maps=[0, 2, 1]), "sin_maps: expected 4 entries for 1 streams, got 3"),
    "norm": (lambda: dict(norm="layer"), "norm: expected one of"),
    "rounding": (lambda: dict(norm="head", rounding="late"), "rounding: expected one of"),
    "rounding without norm": (lambda: dict(rounding="after_weight"), "rounding: expected 'none' without a norm"),
    "1-D x": (lambda: dict(xs=[torch.randn(8, device=DEVICE)], cos=[None], sin=[None]), r"xs\[0\]: expected at least 2 dims"),
    "cat_dim last": (lambda: dict(cat_dim=3), "cat_dim: expected a lead dim of the 4-dim streams, got 3"),
    "cat_dim -1": (lambda: dict(cat_dim=-1), "cat_dim: expected a lead dim of the 4-dim streams, got the last dim"),
    "cat_dim past the dims": (lambda: dict(cat_dim=4), "cat_dim: expected a lead dim"),
    "cat_dim before the dims": (lambda: dict(cat_dim=-5), "cat_dim: expected a lead dim"),
    "rotary_dim odd": (lambda: dict(rotary_dim=5), r"rotary_dim: expected an even number in 2\.\.8, got 5"),
    "rotary_dim 0": (lambda: dict(rotary_dim=0), "rotary_dim: expected an even number"),
    "rotary_dim over D": (lambda: dict(rotary_dim=10), "rotary_dim: expected an even number"),
    "norm heads on 2-D x": (
        lambda: dict(xs=[torch.randn(4, 8, device=DEVICE)], cos=[None], sin=[None], cat_dim=0, norm="heads"),
        "norm: 'heads' needs a heads dim",
    ),
    "xs[1] other heads": (lambda: two_streams(torch.randn(2, 4, 5, 8, device=DEVICE)), r"xs\[1\]: expected shape"),
    "xs[1] other dims": (lambda: two_streams(torch.randn(2, 4, 8, device=DEVICE)), r"xs\[1\]: expected shape"),
    "xs[1] device": (lambda: two_streams(torch.randn(2, 4, 3, 8, device="meta")), r"xs\[1\]: expected device"),
    "weight without norm": (lambda: dict(weights=[torch.randn(8, device=DEVICE)]), r"weights\[0\]: expected None without a norm"),
    "weight [H * D] for norm head": (
        lambda: dict(norm="head", weights=[torch.randn(24, device=DEVICE)]),
        r"weights\[0\]: expected shape \(8,\) for norm 'head', got \(24,\)",
    ),
    "weight [D] for norm heads": (
        lambda: dict(norm="heads", weights=[torch.randn(8, device=DEVICE)]), r"weights\[0\]: expected shape \(24,\)",
    ),
    "cos without sin": (lambda: dict(sin=[None]), r"cos\[0\], sin\[0\]: expected both tables or neither"),
    "table over another length": (
        lambda: dict(cos=[torch.randn(1, 5, 1, 8, device=DEVICE)]), r"cos\[0\]: shape \(1, 5, 1, 8\) does not broadcast",
    ),
    "0-d table": (lambda: dict(sin=[torch.tensor(1.0, device=DEVICE)]), r"sin\[0\]: shape \(\) does not broadcast"),
    "table device": (lambda: dict(sin=[torch.randn(1, 4, 1, 8, device="meta")]), r"sin\[0\]: expected device"),
    "map past the end": (
        lambda: dict(cos_maps=[1, 2, 1, 0]), r"cos\[0\]: map \(1, 2, 1, 0\) reads outside the table's last dim of 8",
    ),
    "map before the start": (lambda: dict(sin_maps=[0, 2, -1, 0]), r"sin\[0\]: map \(0, 2, -1, 0\) reads outside"),
    "part 1 of a real table": (lambda: dict(sin_maps=[0, 2, 1, 1]), r"sin\[0\]: map part 1 is not 0"),
    "part 2 of a complex table": (
        lambda: dict(cos=[torch.randn(1, 4, 1, 4, dtype=torch.complex64, device=DEVICE)], cos_maps=[0, 1, 0, 2]),
        r"cos\[0\]: map part 2 is not 0",
    ),
}


# Checked by ``make_call`` alone: list lengths, and cat_dim before it is taken modulo the dims.
MAKE_CALL_ONLY = {"no streams", "weights length", "eps length", "cos length", "sin_maps length", "cat_dim last",
                  "cat_dim past the dims", "cat_dim before the dims"}


@pytest.mark.parametrize("name", BAD_ARGUMENTS)
def test_bad_arguments_name_the_argument(name: str) -> None:
    """``make_call``, the op and ``rope_triton`` (on a ``Rope`` built unchecked) raise a ValueError naming the argument."""
    overrides, message = BAD_ARGUMENTS[name]
    args = default_args(**overrides())
    with pytest.raises(ValueError, match=message):
        rope.make_call(**args)
    if not any(isinstance(t, torch.Tensor) and t.is_meta for value in args.values() if isinstance(value, list) for t in value):
        with pytest.raises(ValueError, match=message):
            torch.ops.fusion_passes.rope(*args.values())
    if name not in MAKE_CALL_ONLY:
        with mock.patch.object(rope, "argument_error", lambda *_: None):
            unchecked = rope.make_call(**args)
        with pytest.raises(ValueError, match="rope_triton: " + message):
            rope.rope_triton(unchecked)


UNSUPPORTED: dict[str, tuple[Callable[[], dict[str, Any]], str]] = {
    "float64 x": (lambda: dict(xs=[torch.randn(2, 4, 3, 8, dtype=torch.float64, device=DEVICE)]), "xs[0] dtype torch.float64"),
    "float64 weight": (
        lambda: dict(norm="head", weights=[torch.randn(8, dtype=torch.float64, device=DEVICE)]), "weights[0] dtype torch.float64",
    ),
    "integer table": (lambda: dict(cos=[torch.ones(1, 4, 1, 8, dtype=torch.int32, device=DEVICE)]), "cos[0] dtype torch.int32"),
    "float64 out": (lambda: dict(out_dtype=torch.float64), "out_dtype torch.float64"),
    "5-D x": (
        lambda: dict(xs=[torch.randn(2, 2, 4, 3, 8, device=DEVICE)], cat_dim=2), "xs[0] has 5 dims; the kernel takes 2 to 4",
    ),
    "head dim over MAX_HEAD_DIM": (
        lambda: dict(xs=[torch.randn(1, 4, 1, rope.MAX_HEAD_DIM + 2, device=DEVICE)], rotary_dim=8),
        f"head dim {rope.MAX_HEAD_DIM + 2} is over {rope.MAX_HEAD_DIM}",
    ),
    "norm heads over MAX_TOKEN_WIDTH": (
        lambda: dict(xs=[torch.randn(1, 4, rope.MAX_TOKEN_WIDTH // 64 + 1, 64, device=DEVICE)], norm="heads", rotary_dim=8),
        f"a token's {rope.MAX_TOKEN_WIDTH // 64 + 1} heads of 64 are over {rope.MAX_TOKEN_WIDTH}",
    ),
}


@pytest.mark.parametrize("name", UNSUPPORTED)
def test_unsupported_operands_fall_back_to_the_reference(name: str) -> None:
    """Operands the kernel does not take: a reason, a ValueError from ``rope_triton``, the reference from the op."""
    overrides, message = UNSUPPORTED[name]
    args = default_args(**overrides())
    c = rope.make_call(**args)
    assert message in rope.unsupported_reason(c)
    with pytest.raises(ValueError, match="rope_triton: "):
        rope.rope_triton(c)
    out = torch.ops.fusion_passes.rope(*args.values())
    torch.testing.assert_close(out, rope.reference(c))
    assert relative_error(out, expected(c)) < 1e-5


@pytest.mark.parametrize("norm", ["head", "heads"])
def test_strided_weight(norm: str) -> None:
    """A norm weight that is a strided view (every other element of a wider tensor) is read through its stride."""
    x = torch.randn(2, 3, 4, 8, device=DEVICE)
    weight = torch.randn(2 * weight_for(norm, x).numel(), device=DEVICE)[::2]
    check(make([x], [None], norm=norm, weights=[weight]))
