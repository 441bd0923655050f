"""The AdaLN Triton kernel (CPU interpreter without a GPU) and its custom ops, against fp64 references."""

import dataclasses
import re

import pytest
import torch
from helpers import KERNEL_TOLERANCE, relative_error
from conftest import DEVICE

from fusion_passes.kernels import adaln



def call(x, scale, shift=None, *, residual=None, gate=None, weight=None, bias=None, select=None, eps=1e-6,
         norm="layer", rounding="none", out_dtype=None):
    """A NormModulate with defaults; modulation operands given as tensors or (chosen, other) pairs."""
    def pair(value):
        return () if value is None else tuple(value) if isinstance(value, tuple) else (value,)

    return adaln.NormModulate(
        x=x, residual=residual, gate=pair(gate), weight=weight, bias=bias, scale=pair(scale), shift=pair(shift),
        select=select, eps=eps, norm=norm, scale_plus_one=True, rounding=rounding,
        residual_dtype=None if residual is None else residual.dtype, out_dtype=out_dtype or x.dtype,
    )


def fp64(c):
    """The same call on fp64 copies of every tensor: the reference the kernel is held to."""
    def up(value):
        if isinstance(value, tuple):
            return tuple(up(v) for v in value)
        return value.double() if isinstance(value, torch.Tensor) and value.is_floating_point() else value

    changes = {field.name: up(getattr(c, field.name)) for field in dataclasses.fields(c)}
    changes.update(out_dtype=torch.float64, residual_dtype=None if c.residual is None else torch.float64, rounding="none")
    return adaln.reference(adaln.NormModulate(**changes))



def modulation(batch, hidden, dtype, count=3):
    """``count`` [B, 1, C] chunk views of one [B, 6C] linear output, as DiTs produce them."""
    chunks = torch.randn(batch, 6 * hidden, dtype=dtype, device=DEVICE).chunk(6, dim=1)
    return [chunk[:, None] for chunk in chunks[:count]]


def poisoned(c):
    """Output buffers filled with NaN, so an element the kernel skips shows."""
    y = torch.full(c.x.shape, float("nan"), dtype=c.out_dtype, device=DEVICE)
    r = None if c.residual is None else torch.full(c.x.shape, float("nan"), dtype=c.residual_dtype, device=DEVICE)
    return y, r


def run_and_compare(c, dtype, config=None):
    y, r = adaln.norm_modulate_triton(c, config=config, out=poisoned(c))
    assert not y.isnan().any(), "kernel left output elements unwritten"
    ref_y, ref_r = fp64(c)
    assert relative_error(y, ref_y) < KERNEL_TOLERANCE[dtype]
    if c.residual is not None:
        assert not r.isnan().any()
        assert relative_error(r, ref_r) < KERNEL_TOLERANCE[dtype]


AFFINE = {"none": (), "weight": ("weight",), "weight_bias": ("weight", "bias")}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("hidden", [1, 37, 300])
@pytest.mark.parametrize(("norm", "affine"), [("layer", "none"), ("layer", "weight_bias"), ("rms", "none"), ("rms", "weight")])
def test_adaln_matches_fp64_with_chunk_view_modulation(dtype, hidden, norm, affine):
    x = torch.randn(2, 5, hidden, dtype=dtype, device=DEVICE) * 3 + 1
    params = {name: torch.randn(hidden, dtype=dtype, device=DEVICE) for name in AFFINE[affine]}
    shift, scale = modulation(2, hidden, dtype, count=2)
    assert not scale.is_contiguous()
    run_and_compare(call(x, scale, shift, norm=norm, **params), dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("gated", [True, False])
@pytest.mark.parametrize("norm", ["layer", "rms"])
def test_residual_adaln_matches_fp64_and_returns_the_residual(dtype, gated, norm):
    x, residual = (torch.randn(2, 7, 45, dtype=dtype, device=DEVICE) for _ in range(2))
    shift, scale, gate = modulation(2, 45, dtype)
    run_and_compare(call(x, scale, shift, residual=residual, gate=gate if gated else None, norm=norm), dtype)


# Both ways of reading modulation: held per program (both sets) and loaded per row (chosen set).
HOISTING = {"hoisted": adaln.LaunchConfig(2, 1, programs_per_sm=1), "per_row": adaln.LaunchConfig(2, 1, hoist=False)}


@pytest.mark.parametrize("config", list(HOISTING))
@pytest.mark.parametrize("residual", [False, True])
def test_select01_reads_the_chosen_set_per_row(residual, config):
    # Two modulation sets (timestep t and 0) from one [2B, 3C] linear output; rows pick per token.
    batch, tokens, hidden = 2, 9, 24
    sets = torch.randn(2 * batch, 3 * hidden, device=DEVICE).chunk(3, dim=1)
    shift, scale, gate = ((chunk[:batch, None], chunk[batch:, None]) for chunk in sets)
    select = torch.rand(batch, tokens, 1, device=DEVICE) > 0.5
    x = torch.randn(batch, tokens, hidden, device=DEVICE)
    extra = dict(residual=torch.randn_like(x), gate=gate) if residual else {}
    c = call(x, scale, shift, select=select, **extra)
    run_and_compare(c, torch.float32, config=HOISTING[config])
    # The same as materializing the choice first.
    chosen = {name: torch.where(select, *pair) for name, pair in (("scale", scale), ("shift", shift), ("gate", gate))}
    materialized = call(x, chosen["scale"], chosen["shift"], **({**extra, "gate": chosen["gate"]} if residual else {}))
    torch.testing.assert_close(
        adaln.norm_modulate_triton(c, config=HOISTING[config])[0], adaln.norm_modulate_triton(materialized)[0]
    )


@pytest.mark.parametrize("hoisted", [True, False])
def test_pair_writes_both_modulations_of_one_norm(hoisted):
    x = torch.randn(2, 7, 45, dtype=torch.bfloat16, device=DEVICE)
    if hoisted:
        shift, scale, _, shift2, scale2 = modulation(2, 45, torch.bfloat16, count=5)
    else:
        shift, scale, shift2, scale2 = (torch.randn(2, 7, 45, dtype=torch.bfloat16, device=DEVICE) for _ in range(4))
    c = dataclasses.replace(call(x, scale, shift), scale2=(scale2,), shift2=(shift2,), out_dtype2=torch.float32)
    out = poisoned(c)[:1] + (torch.full(x.shape, float("nan"), device=DEVICE),)
    y, y2 = adaln.norm_modulate_triton(c, config=HOISTING["hoisted" if hoisted else "per_row"], out=out)
    assert not y.isnan().any() and not y2.isnan().any()
    assert y2.dtype == torch.float32
    for out, single in ((y, call(x, scale, shift)), (y2, call(x, scale2, shift2))):
        assert relative_error(out, fp64(single)[0]) < KERNEL_TOLERANCE[torch.bfloat16]


@pytest.mark.parametrize("rounding", ["before_weight", "after_affine"])
def test_rounding_points_follow_the_unfused_graph(rounding):
    # The reference rounds where the graph casts (not after every half op, which Inductor skips too).
    x = torch.randn(3, 4, 32, dtype=torch.bfloat16, device=DEVICE)
    weight = torch.randn(32, dtype=torch.bfloat16, device=DEVICE)
    scale, shift = (torch.randn(3, 1, 32, dtype=torch.bfloat16, device=DEVICE) for _ in range(2))
    normed = x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + 1e-6)
    if rounding == "before_weight":  # the hand-written RMSNorm: .to(weight.dtype) * weight
        normed = normed.to(torch.bfloat16).float() * weight.float()
    else:  # F.rms_norm: rounded after the weight
        normed = (normed * weight.float()).to(torch.bfloat16)
    expected = (normed.float() * (1 + scale.float()) + shift.float()).to(torch.bfloat16)
    c = call(x, scale, shift, weight=weight, norm="rms", rounding=rounding)
    torch.testing.assert_close(adaln.reference(c)[0], expected, rtol=0, atol=0)
    run_and_compare(c, torch.bfloat16)


MODULATION_SHAPES = {
    "vector [C]": ((3, 7, 40), (40,)),
    "[1, C]": ((3, 7, 40), (1, 40)),
    "per-batch [B, 1, C]": ((3, 7, 40), (3, 1, 40)),
    "per-token [B, L, C]": ((3, 7, 40), (3, 7, 40)),
    "2-D x [N, C]": ((11, 40), (11, 40)),
    "per-frame [B, F, 1, C]": ((2, 3, 5, 40), (2, 3, 1, 40)),
    "4-D x, per-batch": ((2, 3, 5, 40), (2, 1, 1, 40)),
}


@pytest.mark.parametrize("name", MODULATION_SHAPES)
@pytest.mark.parametrize("with_shift", [True, False])
def test_every_modulation_broadcast(name, with_shift):
    x_shape, modulation_shape = MODULATION_SHAPES[name]
    x = torch.randn(x_shape, device=DEVICE)
    scale = torch.randn(modulation_shape, device=DEVICE)
    shift = torch.randn(modulation_shape, device=DEVICE) if with_shift else None
    run_and_compare(call(x, scale, shift), torch.float32)


def test_strided_x_and_residual_and_mixed_dtypes():
    base = torch.randn(4, 9, 2 * 33, dtype=torch.bfloat16, device=DEVICE)
    x = base[..., ::2]  # last-dim stride 2
    residual = torch.randn(4, 33, 9, dtype=torch.bfloat16, device=DEVICE).transpose(1, 2)
    shift, scale, gate = modulation(4, 33, torch.float32)  # fp32 modulation, bf16 x
    c = call(x, scale, shift, residual=residual, gate=gate, out_dtype=torch.float32)
    y, r = adaln.norm_modulate_triton(c)
    assert (y.dtype, r.dtype) == (torch.float32, torch.bfloat16)
    ref_y, ref_r = fp64(c)
    assert relative_error(y, ref_y) < KERNEL_TOLERANCE[torch.bfloat16]
    assert relative_error(r, ref_r) < KERNEL_TOLERANCE[torch.bfloat16]


@pytest.mark.parametrize(
    "config",
    [
        adaln.LaunchConfig(block_rows=1, num_warps=1),
        adaln.LaunchConfig(block_rows=4, num_warps=2, num_stages=2, programs_per_sm=1),
        adaln.LaunchConfig(block_rows=2, num_warps=4, num_stages=3, programs_per_sm=3),
    ],
)
def test_launch_configs_cover_every_row(config):
    # Odd row counts leave partial blocks; few programs make each loop over several blocks.
    x = torch.randn(3, 13, 24, device=DEVICE)
    shift, scale, gate = modulation(3, 24, torch.float32)
    run_and_compare(call(x, scale, shift, residual=torch.randn_like(x), gate=gate), torch.float32, config=config)


def test_default_launch_holds_at_most_two_modulation_rows_per_program():
    assert adaln.launch_config(3072, 2).hoist and adaln.launch_config(3072, 2).programs_per_sm
    for rows in (3, 4):  # residual_adaln; select01 and pairs
        assert not adaln.launch_config(3072, rows).hoist and adaln.launch_config(3072, rows).programs_per_sm == 0


def test_empty_input():
    x = torch.randn(2, 0, 16, device=DEVICE)
    y, _ = adaln.norm_modulate_triton(call(x, torch.randn(16, device=DEVICE)))
    assert y.shape == x.shape


UNSUPPORTED = {
    "float64 x": (dict(x=torch.randn(2, 4, 8, dtype=torch.float64)), "x dtype torch.float64"),
    "int scale": (dict(scale=(torch.ones(8, dtype=torch.int32),)), "scale dtype torch.int32"),
    "1-D x": (dict(x=torch.randn(8)), "x has 1 dims"),
    "5-D x": (dict(x=torch.randn(1, 1, 2, 4, 8)), "x has 5 dims"),
    "too wide": (
        dict(x=torch.randn(1, 1, adaln.MAX_HIDDEN + 1), scale=(torch.randn(adaln.MAX_HIDDEN + 1),), shift=()),
        f"hidden size {adaln.MAX_HIDDEN + 1} is outside",
    ),
    "weight shape": (dict(weight=torch.randn(4)), "weight shape (4,) is not (8,)"),
    "grid limit": (
        dict(x=torch.randn(adaln.MAX_GRID_Y + 1, 1, 1, 8)),
        f"hold {adaln.MAX_GRID_Y + 1} slices, over the CUDA grid limit",
    ),
    "scale broadcasts x up": (dict(scale=(torch.randn(3, 2, 4, 8),)), "scale shape (3, 2, 4, 8) does not broadcast"),
    "residual shape": (
        dict(residual=torch.randn(2, 1, 8), residual_dtype=torch.float32),
        "residual shape (2, 1, 8) is not x's (2, 4, 8)",
    ),
    "per-element select": (
        dict(select=torch.ones(2, 4, 8, dtype=torch.bool), scale=(torch.randn(8), torch.randn(8)), shift=()),
        "select shape (2, 4, 8) does not broadcast to one value per row",
    ),
    "integer select": (
        dict(select=torch.ones(2, 4, 1, dtype=torch.int32), scale=(torch.randn(8), torch.randn(8)), shift=()),
        "select dtype torch.int32 is not torch.bool",
    ),
    "select sets of two dtypes": (
        dict(select=torch.ones(2, 4, 1, dtype=torch.bool), scale=(torch.randn(8), torch.randn(8).half()), shift=()),
        "scale's two selectable tensors differ in dtype",
    ),
}


# Operands the kernel does not take but the reference computes.
REFERENCE_COMPUTES = {"float64 x", "1-D x", "5-D x", "too wide", "grid limit", "per-element select"}
# Operands no implementation computes.
OPERAND_ERRORS = {"weight shape", "scale broadcasts x up", "residual shape", "integer select"}


def default_call(**overrides):
    base = dict(
        x=torch.randn(2, 4, 8), residual=None, gate=(), weight=None, bias=None, scale=(torch.randn(8),),
        shift=(torch.randn(8),), select=None, eps=1e-6, norm="layer", scale_plus_one=True, rounding="none",
        residual_dtype=None, out_dtype=torch.float32,
    )
    return adaln.NormModulate(**{**base, **overrides})


@pytest.mark.parametrize("name", UNSUPPORTED)
def test_unsupported_operands_name_the_argument(name):
    overrides, message = UNSUPPORTED[name]
    c = default_call(**overrides)
    assert message in adaln.unsupported_reason(c)
    with pytest.raises(ValueError, match="norm_modulate_triton: "):
        adaln.norm_modulate_triton(c)
    # The op computes the valid ones with the reference instead.
    if name in REFERENCE_COMPUTES:
        torch.testing.assert_close(adaln._run(c)[0], adaln.reference(c)[0])
    # And raises a ValueError naming those no implementation computes.
    if name in OPERAND_ERRORS:
        with pytest.raises(ValueError, match=re.escape(message)):
            adaln._run(c)


def test_a_modulation_broadcasting_x_up_is_an_error_not_a_larger_output():
    # The op once returned the broadcast [3, 2, 4, 8] where its fake declared x's [2, 4, 8].
    x, scale = torch.randn(2, 4, 8), torch.randn(3, 2, 4, 8)
    with pytest.raises(ValueError, match=re.escape("scale shape (3, 2, 4, 8) does not broadcast to x shape (2, 4, 8)")):
        torch.ops.fusion_passes.norm_modulate(x, None, None, [scale], [], None, 1e-6, "layer", True, "none", torch.float32)


BAD_SETTINGS = {
    "norm": (dict(norm="batch"), "norm: expected one of ('layer', 'rms'), got 'batch'"),
    "rounding": (dict(rounding="late"), "rounding: expected one of"),
    "rms with bias": (dict(norm="rms", bias=torch.randn(8)), "bias: RMSNorm has no bias"),
    "no scale": (dict(scale=()), "scale: expected one or two tensors, got none"),
    "select without pairs": (dict(select=torch.ones(2, 4, 1, dtype=torch.bool)), "scale: expected 2 tensor(s) (with select), got 1"),
    "gate without residual": (dict(gate=(torch.randn(8),)), "gate: expected only with a residual"),
    "second modulation with a residual": (
        dict(residual=torch.randn(2, 4, 8), residual_dtype=torch.float32, scale2=(torch.randn(8),), out_dtype2=torch.float32),
        "scale2: a second modulation is supported without residual and select only",
    ),
    "second modulation without its dtype": (dict(scale2=(torch.randn(8),)), "scale2: expected one tensor"),
    "residual without dtype": (dict(residual=torch.randn(2, 4, 8)), "residual_dtype: expected exactly when residual is given"),
}


@pytest.mark.parametrize("name", BAD_SETTINGS)
def test_bad_settings_raise_and_name_the_argument(name):
    overrides, message = BAD_SETTINGS[name]
    c = default_call(**overrides)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        adaln.norm_modulate_triton(c)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        adaln._run(c)


def test_out_argument_is_checked():
    c = default_call()
    with pytest.raises(ValueError, match=r"out\[0\]: expected a contiguous torch.float32 tensor of shape \(2, 4, 8\)"):
        adaln.norm_modulate_triton(c, out=(torch.empty(2, 4, 9), None))


def f1_sample(dtype=torch.float32, **kwargs):
    x = torch.randn(2, 3, 16, dtype=dtype, device=DEVICE)
    shift, scale = modulation(2, 16, dtype, count=2)
    settings = dict(eps=1e-6, norm="layer", scale_plus_one=True, rounding="none", out_dtype=dtype)
    args = dict(x=x, weight=None, bias=None, scale=[scale], shift=[shift], select=None, **settings)
    args.update(kwargs)
    return args


OPCHECK_SAMPLES = {
    "pair": (
        torch.ops.fusion_passes.norm_modulate_pair.default,
        lambda: dict(
            **{key: value for key, value in f1_sample().items() if key != "select"},
            scale2=[torch.randn(2, 1, 16, device=DEVICE)], shift2=[torch.randn(2, 1, 16, device=DEVICE)],
            out_dtype2=torch.float32,
        ),
    ),
    "adaln chunk views": (torch.ops.fusion_passes.norm_modulate.default, lambda: f1_sample()),
    "adaln rms, bf16, weight, rounding": (
        torch.ops.fusion_passes.norm_modulate.default,
        lambda: f1_sample(torch.bfloat16, norm="rms", weight=torch.randn(16, dtype=torch.bfloat16, device=DEVICE), rounding="before_weight"),
    ),
    "adaln no shift, fp32 modulation on fp16 x": (
        torch.ops.fusion_passes.norm_modulate.default,
        lambda: f1_sample(torch.float16, scale=[torch.randn(16, device=DEVICE)], shift=[], out_dtype=torch.float32),
    ),
    "adaln select": (
        torch.ops.fusion_passes.norm_modulate.default,
        lambda: f1_sample(
            select=torch.rand(2, 3, 1, device=DEVICE) > 0.5,
            scale=[torch.randn(2, 1, 16, device=DEVICE), torch.randn(2, 1, 16, device=DEVICE)],
            shift=[torch.randn(2, 1, 16, device=DEVICE), torch.randn(2, 1, 16, device=DEVICE)],
        ),
    ),
    "residual_adaln gated": (
        torch.ops.fusion_passes.residual_norm_modulate.default,
        lambda: dict(
            residual=torch.randn(2, 3, 16, device=DEVICE), **{
                key: value for key, value in f1_sample().items() if key != "out_dtype"
            }, gate=[torch.randn(2, 1, 16, device=DEVICE)], residual_dtype=torch.float32, out_dtype=torch.float32,
        ),
    ),
}


@pytest.mark.parametrize("name", OPCHECK_SAMPLES)
def test_opcheck(name):
    op, sample = OPCHECK_SAMPLES[name]
    kwargs = sample()
    names = [argument.name for argument in op._schema.arguments]
    torch.library.opcheck(op, tuple(kwargs[name] for name in names))
