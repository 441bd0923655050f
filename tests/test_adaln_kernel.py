"""The F1 Triton kernel (CPU interpreter without a GPU) and the custom op against fp64 references."""

import pytest
import torch
from conftest import DEVICE

from fusion_passes.kernels import adaln

TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 2e-3}


def reference(x, weight, bias, scale, shift, eps):
    """fp64 LN + modulation."""
    as64 = [None if t is None else t.double() for t in (x, weight, bias, scale, shift)]
    return adaln.layer_norm_modulate_reference(*as64, eps)


def relative_error(out, ref):
    return ((out.double() - ref).norm() / ref.norm()).item()


def chunked_modulation(batch, hidden, dtype, tokens_dim=True):
    """scale and shift as strided chunk views of one [B, 6C] linear output, as DiTs produce them."""
    shift, scale, _gate, *_ = torch.randn(batch, 6 * hidden, dtype=dtype, device=DEVICE).chunk(6, dim=1)
    return (scale[:, None], shift[:, None]) if tokens_dim else (scale, shift)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("hidden", [1, 37, 128, 300])
@pytest.mark.parametrize("affine", ["none", "weight", "weight_bias"])
def test_matches_fp64_reference_with_chunk_view_modulation(dtype, hidden, affine):
    x = torch.randn(2, 5, hidden, dtype=dtype, device=DEVICE) * 3 + 1
    weight = torch.randn(hidden, dtype=dtype, device=DEVICE) if affine != "none" else None
    bias = torch.randn(hidden, dtype=dtype, device=DEVICE) if affine == "weight_bias" else None
    scale, shift = chunked_modulation(2, hidden, dtype)
    assert not scale.is_contiguous()
    out = torch.full(x.shape, float("nan"), dtype=dtype, device=DEVICE)
    adaln.layer_norm_modulate_triton(x, weight, bias, scale, shift, 1e-6, out=out)
    assert not out.isnan().any(), "kernel left output elements unwritten"
    assert relative_error(out, reference(x, weight, bias, scale, shift, 1e-6)) < TOLERANCE[dtype]


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
    out = adaln.layer_norm_modulate_triton(x, None, None, scale, shift, 1e-5)
    assert relative_error(out, reference(x, None, None, scale, shift, 1e-5)) < 1e-5


def test_strided_x_and_mixed_dtypes():
    base = torch.randn(4, 9, 2 * 33, dtype=torch.bfloat16, device=DEVICE)
    x = base[..., ::2]  # last-dim stride 2
    scale, shift = chunked_modulation(4, 33, torch.float32)  # fp32 modulation, bf16 x
    out = adaln.layer_norm_modulate_triton(x, None, None, scale, shift, 1e-6)
    assert out.dtype == torch.float32
    assert relative_error(out, reference(x, None, None, scale, shift, 1e-6)) < TOLERANCE[torch.bfloat16]


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
    scale, shift = chunked_modulation(3, 24, torch.float32)
    out = torch.full(x.shape, float("nan"), device=DEVICE)
    adaln.layer_norm_modulate_triton(x, None, None, scale, shift, 1e-6, config=config, out=out)
    assert relative_error(out, reference(x, None, None, scale, shift, 1e-6)) < 1e-5


def test_empty_input():
    x = torch.randn(2, 0, 16, device=DEVICE)
    out = adaln.layer_norm_modulate_triton(x, None, None, torch.randn(16, device=DEVICE), None, 1e-6)
    assert out.shape == x.shape


UNSUPPORTED = {
    "float64 x": (dict(x=torch.randn(2, 4, 8, dtype=torch.float64)), "x dtype torch.float64"),
    "int scale": (dict(scale=torch.ones(8, dtype=torch.int32)), "scale dtype torch.int32"),
    "1-D x": (dict(x=torch.randn(8), scale=torch.randn(8), shift=torch.randn(8)), "x has 1 dims"),
    "5-D x": (dict(x=torch.randn(1, 1, 2, 4, 8)), "x has 5 dims"),
    "too wide": (
        dict(x=torch.randn(1, 1, adaln.MAX_HIDDEN + 1), scale=torch.randn(adaln.MAX_HIDDEN + 1), shift=None),
        f"hidden size {adaln.MAX_HIDDEN + 1} is outside",
    ),
    "weight shape": (dict(weight=torch.randn(4)), "weight shape (4,) is not (8,)"),
    "grid limit": (
        dict(x=torch.randn(adaln.MAX_GRID_Y + 1, 1, 1, 8)),
        f"first leading dim {adaln.MAX_GRID_Y + 1} exceeds the CUDA grid limit",
    ),
    "scale broadcasts x up": (dict(scale=torch.randn(3, 2, 4, 8)), "scale shape (3, 2, 4, 8) does not broadcast"),
}


@pytest.mark.parametrize("name", UNSUPPORTED)
def test_unsupported_operands_name_the_argument(name):
    overrides, message = UNSUPPORTED[name]
    operands = dict(x=torch.randn(2, 4, 8), weight=None, bias=None, scale=torch.randn(8), shift=torch.randn(8))
    operands.update(overrides)
    assert message in adaln.unsupported_reason(**operands)
    with pytest.raises(ValueError, match="layer_norm_modulate_triton: "):
        adaln.layer_norm_modulate_triton(**operands, eps=1e-6)


def test_out_argument_is_checked():
    x = torch.randn(2, 4, 8)
    with pytest.raises(ValueError, match=r"out: expected a contiguous torch.float32 tensor of shape \(2, 4, 8\)"):
        adaln.layer_norm_modulate_triton(x, None, None, torch.randn(8), None, 1e-6, out=torch.empty(2, 4, 9))


def test_cuda_registration_falls_back_to_the_reference_for_unsupported_operands():
    # Called directly (no dispatch), the CUDA kernel registration runs on any device.
    x = torch.randn(1, 2, adaln.MAX_HIDDEN + 1)
    scale = torch.randn(adaln.MAX_HIDDEN + 1)
    out = adaln._layer_norm_modulate_cuda(x, None, None, scale, None, 1e-6)
    torch.testing.assert_close(out, adaln.layer_norm_modulate_reference(x, None, None, scale, None, 1e-6))


OPCHECK_SAMPLES = {
    "no affine, chunk views": lambda: (torch.randn(2, 3, 16, device=DEVICE), None, None, *chunked_modulation(2, 16, torch.float32), 1e-6),
    "affine, bf16": lambda: (
        torch.randn(2, 3, 16, dtype=torch.bfloat16, device=DEVICE),
        torch.randn(16, dtype=torch.bfloat16, device=DEVICE),
        torch.randn(16, dtype=torch.bfloat16, device=DEVICE),
        torch.randn(2, 1, 16, dtype=torch.bfloat16, device=DEVICE),
        torch.randn(2, 1, 16, dtype=torch.bfloat16, device=DEVICE),
        1e-5,
    ),
    "no shift, fp32 modulation on fp16 x": lambda: (
        torch.randn(4, 16, dtype=torch.float16, device=DEVICE),
        None,
        None,
        torch.randn(16, device=DEVICE),
        None,
        1e-6,
    ),
}


@pytest.mark.parametrize("name", OPCHECK_SAMPLES)
def test_opcheck(name):
    torch.library.opcheck(torch.ops.fusion_passes.layer_norm_modulate.default, OPCHECK_SAMPLES[name]())
