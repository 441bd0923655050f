"""RoPE patterns: graph before/after per spelling, numerics of the rewritten graph, near misses."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F
import helpers
from graph_capture import Capture, capture
from helpers import assert_matches_fp64, relative_error

import fusion_passes

B, L, H, D = 2, 6, 3, 16
TEXT = 4  # text tokens of the joint-sequence spellings
ROTARY = 8  # rotated dims of the partial rotary spelling
BF16 = torch.bfloat16


# --- Rotations, as models write them --------------------------------------------------------------


def interleaved_pairs(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """FLUX's pair members (x_real, x_imag) = (x[..., 2i], x[..., 2i + 1])."""
    return x.reshape(*x.shape[:-1], -1, 2).unbind(-1)


def interleaved_rotation(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """diffusers ``apply_rotary_emb`` (use_real_unbind_dim=-1) with tables already broadcastable to x."""
    x_real, x_imag = interleaved_pairs(x)
    x_rotated = torch.stack([-x_imag, x_real], dim=-1).flatten(3)
    return (x.float() * cos + x_rotated.float() * sin).to(x.dtype)


def flux_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """FLUX (sequence_dim=1): interleaved pairs, [L, D] tables, x [B, L, H, D]."""
    return interleaved_rotation(x, cos[None, :, None, :], sin[None, :, None, :])


def unbind_dim_2_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """diffusers ``apply_rotary_emb`` with use_real_unbind_dim=-2 (CogView4, Cosmos): half-split pairs."""
    cos, sin = cos[None, :, None, :], sin[None, :, None, :]
    x_real, x_imag = x.reshape(*x.shape[:-1], 2, -1).unbind(-2)
    x_rotated = torch.cat([-x_imag, x_real], dim=-1)
    return (x.float() * cos + x_rotated.float() * sin).to(x.dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """HF transformers' ``rotate_half``."""
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2 :]
    return torch.cat((-x2, x1), dim=-1)


def llm_rope(q: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
    """HF ``apply_rotary_pos_emb`` on [B, H, L, D], tables [max positions, D] gathered by position ids."""
    cos = cos[position_ids].unsqueeze(1)
    sin = sin[position_ids].unsqueeze(1)
    return q * cos + rotate_half(q) * sin


def qwen_rope(x: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """diffusers ``apply_rotary_emb_qwen`` (use_real=False): complex frequencies [L, D / 2], x [B, L, H, D]."""
    x_rotated = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))
    return torch.view_as_real(x_rotated * freqs.unsqueeze(1)).flatten(3).type_as(x)


def wan_rope(x: torch.Tensor, freqs_cos: torch.Tensor, freqs_sin: torch.Tensor) -> torch.Tensor:
    """Wan's nested ``apply_rotary_emb``: slice assignment into ``empty_like``, tables [1, L, 1, D] repeated per pair."""
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    cos = freqs_cos[..., 0::2]
    sin = freqs_sin[..., 1::2]
    out = torch.empty_like(x)
    out[..., 0::2] = x1 * cos - x2 * sin
    out[..., 1::2] = x1 * sin + x2 * cos
    return out.type_as(x)


def partial_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Partial rotary (GPT-NeoX, Phi): rotate_half on the first R dims (tables [L, R]), the rest passed through."""
    rotary = cos.shape[-1]
    x_rot, x_pass = x[..., :rotary], x[..., rotary:]
    cos, sin = cos[None, :, None, :], sin[None, :, None, :]
    return torch.cat([x_rot * cos + rotate_half(x_rot) * sin, x_pass], dim=-1)


# --- Norms, as models write them ----------------------------------------------------------------------


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """``torch.nn.RMSNorm(D)`` / ``F.rms_norm`` over the last dim."""
    return F.rms_norm(x, x.shape[-1:], weight, eps)


def diffusers_rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """diffusers' hand-written ``RMSNorm``: fp32 statistics, rounded to a half weight's dtype before it."""
    variance = x.to(torch.float32).pow(2).mean(-1, keepdim=True)
    x = x * torch.rsqrt(variance + eps)
    if weight.dtype in (torch.float16, torch.bfloat16):
        x = x.to(weight.dtype)
    return x * weight


# --- Norm + rotation and joint sequences -------------------------------------------------------


def rms_norm_flux_rope(x: torch.Tensor, weight: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """FLUX's q path: per-head ``F.rms_norm``, then the interleaved rotation."""
    return flux_rope(rms_norm(x, weight), cos, sin)


def diffusers_rms_norm_qwen_rope(x: torch.Tensor, weight: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """Qwen-Image's q path: diffusers' RMSNorm (half weight), then the complex rotation."""
    return qwen_rope(diffusers_rms_norm(x, weight), freqs)


def across_heads_wan_rope(x: torch.Tensor, weight: torch.Tensor, freqs_cos: torch.Tensor, freqs_sin: torch.Tensor) -> torch.Tensor:
    """Wan's q path: RMSNorm over all heads of x [B, L, H * D], ``unflatten(2, (H, -1))``, slice-assignment rotation."""
    return wan_rope(rms_norm(x, weight).unflatten(2, (H, -1)), freqs_cos, freqs_sin)


def heads_first_rope(x: torch.Tensor, weight: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """[B, H, L, D] layout: x [B, L, H * D] viewed and transposed, per-head norm, tables [1, 1, L, D]."""
    batch, tokens, _ = x.shape
    return interleaved_rotation(rms_norm(x.view(batch, tokens, H, D).transpose(1, 2), weight), cos, sin)


def flux_joint_rope(
    text: torch.Tensor, image: torch.Tensor, text_weight: torch.Tensor, image_weight: torch.Tensor,
    cos: torch.Tensor, sin: torch.Tensor,
) -> torch.Tensor:
    """FLUX double block: text and image normalized with their own weights and eps, cat along L, one joint table."""
    joint = torch.cat([rms_norm(text, text_weight, 1e-6), rms_norm(image, image_weight, 1e-5)], dim=1)
    return flux_rope(joint, cos, sin)


def qwen_joint_rope(
    text: torch.Tensor, image: torch.Tensor, text_weight: torch.Tensor, image_weight: torch.Tensor,
    text_freqs: torch.Tensor, image_freqs: torch.Tensor,
) -> torch.Tensor:
    """Qwen-Image: each stream normalized and rotated with its own frequencies, then cat along L."""
    text = qwen_rope(diffusers_rms_norm(text, text_weight), text_freqs)
    image = qwen_rope(diffusers_rms_norm(image, image_weight), image_freqs)
    return torch.cat([text, image], dim=1)


def hunyuan_double_rope(
    image: torch.Tensor, text: torch.Tensor, image_weight: torch.Tensor, text_weight: torch.Tensor,
    cos: torch.Tensor, sin: torch.Tensor,
) -> torch.Tensor:
    """HunyuanVideo double block: rotated, normalized image tokens, then normalized text tokens (unrotated)."""
    return torch.cat([flux_rope(rms_norm(image, image_weight), cos, sin), rms_norm(text, text_weight)], dim=1)


def hunyuan_single_rope(x: torch.Tensor, weight: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """HunyuanVideo single block: one normalized image + text sequence, image prefix rotated, last TEXT tokens not."""
    q = rms_norm(x, weight)
    return torch.cat([flux_rope(q[:, :-TEXT], cos, sin), q[:, -TEXT:]], dim=1)


def heads_first_joint_rope(
    text: torch.Tensor, image: torch.Tensor, text_weight: torch.Tensor, image_weight: torch.Tensor,
    cos: torch.Tensor, sin: torch.Tensor, norm: Callable[..., torch.Tensor] = diffusers_rms_norm,
) -> torch.Tensor:
    """Older diffusers FLUX / SD3 layout: streams [B, H, L, D] (view + transpose), normalized, cat along dim 2."""
    text = norm(text.view(B, TEXT, H, D).transpose(1, 2), text_weight)
    image = norm(image.view(B, L, H, D).transpose(1, 2), image_weight)
    return interleaved_rotation(torch.cat([text, image], dim=2), cos[None, None], sin[None, None])


def gqa_rope(
    q: torch.Tensor, k: torch.Tensor, q_weight: torch.Tensor, k_weight: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """GQA: q with 4 heads and k with 2 through the same norm + rotation function."""
    return rms_norm_flux_rope(q, q_weight, cos, sin), rms_norm_flux_rope(k, k_weight, cos, sin)


# --- Inputs and checks -------------------------------------------------------------------------------


def randn(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Standard normal values of ``shape``."""
    return torch.randn(shape, dtype=dtype)


def real_tables(tokens: int = L, dim: int = D, interleaved: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 cos and sin tables [tokens, dim] of distinct angles, repeated per pair or per half."""
    angles = torch.rand(tokens, dim // 2) * 6.0
    angles = angles.repeat_interleave(2, dim=-1) if interleaved else torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


def complex_freqs(tokens: int = L, dtype: torch.dtype = torch.complex64) -> torch.Tensor:
    """Unit complex frequencies [tokens, D / 2]."""
    return torch.polar(torch.ones(tokens, D // 2, dtype=torch.float64), torch.rand(tokens, D // 2, dtype=torch.float64) * 6.0).to(dtype)


def rope_records(result: Capture) -> list[str]:
    """The patterns of the rope family's fusions."""
    return [record.pattern for record in result.report.fused if record.fusion == "rope"]


def rope_misses(result: Capture) -> list[str]:
    """The reasons of the rope family's near misses."""
    return [miss.reason for miss in result.report.near_misses if miss.fusion == "rope"]


ROPE_CALL = re.compile(
    r"fusion_passes\.rope\.default\(.*, '(?P<norm>\w+)', '(?P<rounding>\w+)', (?P<rotary_dim>\d+), "
    r"(?P<interleaved>True|False), (?P<cat_dim>-?\d+), torch\.(?P<out_dtype>\w+)\)$"
)


def rope_settings(result: Capture) -> list[tuple[str, str, int, bool, int, str]]:
    """(norm, rounding, rotary_dim, interleaved, cat_dim, out_dtype) of every fused call in the rewritten graph."""
    found = []
    for line in result.after.splitlines():
        match = ROPE_CALL.search(line)
        if match is not None:
            found.append((
                match["norm"], match["rounding"], int(match["rotary_dim"]), match["interleaved"] == "True",
                int(match["cat_dim"]), match["out_dtype"],
            ))
    return found


@pytest.fixture(autouse=True)
def seed() -> None:
    """Fresh, seeded random inputs in every test."""
    torch.manual_seed(0)


# --- Graph diffs ------------------------------------------------------------------------------------


class GraphDiffTest(helpers.GraphDiffTest):
    """Each spelling's post-grad graph before and after the pass, pinned, with fp64 numerics."""

    def fused(self, result: Capture) -> list[str]:
        """The rope fusions' patterns."""
        return rope_records(result)

    def test_rope_flux_interleaved_fp32(self) -> None:
        """FLUX's real interleaved rotation: maps (0, 2, 1, 0), no norm, out fp32."""
        result = self.check(flux_rope, [randn(B, L, H, D), *real_tables()], torch.float32, ["rope[interleaved]"])
        self.assertExpectedInline(result.before, """\
class <lambda>(torch.nn.Module):
    def forward(self, arg0_1: "f32[6, 16]", arg1_1: "f32[6, 16]", arg2_1: "f32[2, 6, 3, 16]"):
        view: "f32[2, 6, 3, 8, 2]" = torch.ops.aten.reshape.default(arg2_1, [2, 6, 3, -1, 2])
        unbind = torch.ops.aten.unbind.int(view, -1)
        getitem: "f32[2, 6, 3, 8]" = unbind[0]
        getitem_1: "f32[2, 6, 3, 8]" = unbind[1]
        unsqueeze: "f32[1, 6, 16]" = torch.ops.aten.unsqueeze.default(arg0_1, 0)
        unsqueeze_1: "f32[1, 6, 1, 16]" = torch.ops.aten.unsqueeze.default(unsqueeze, 2)
        mul: "f32[2, 6, 3, 16]" = torch.ops.aten.mul.Tensor(arg2_1, unsqueeze_1)
        neg: "f32[2, 6, 3, 8]" = torch.ops.aten.neg.default(getitem_1)
        unsqueeze_4: "f32[2, 6, 3, 8, 1]" = torch.ops.aten.unsqueeze.default(neg, 4)
        unsqueeze_5: "f32[2, 6, 3, 8, 1]" = torch.ops.aten.unsqueeze.default(getitem, 4)
        cat: "f32[2, 6, 3, 8, 2]" = torch.ops.aten.cat.default([unsqueeze_4, unsqueeze_5], -1)
        view_1: "f32[2, 6, 3, 16]" = torch.ops.aten.reshape.default(cat, [2, 6, 3, 16])
        unsqueeze_2: "f32[1, 6, 16]" = torch.ops.aten.unsqueeze.default(arg1_1, 0)
        unsqueeze_3: "f32[1, 6, 1, 16]" = torch.ops.aten.unsqueeze.default(unsqueeze_2, 2)
        mul_1: "f32[2, 6, 3, 16]" = torch.ops.aten.mul.Tensor(view_1, unsqueeze_3)
        add: "f32[2, 6, 3, 16]" = torch.ops.aten.add.Tensor(mul, mul_1)
        return (add,)
""")
        self.assertExpectedInline(result.after, """\
class <lambda>(torch.nn.Module):
    def forward(self, arg0_1: "f32[6, 16]", arg1_1: "f32[6, 16]", arg2_1: "f32[2, 6, 3, 16]"):
        unsqueeze: "f32[1, 6, 16]" = torch.ops.aten.unsqueeze.default(arg0_1, 0)
        unsqueeze_1: "f32[1, 6, 1, 16]" = torch.ops.aten.unsqueeze.default(unsqueeze, 2)
        unsqueeze_2: "f32[1, 6, 16]" = torch.ops.aten.unsqueeze.default(arg1_1, 0)
        unsqueeze_3: "f32[1, 6, 1, 16]" = torch.ops.aten.unsqueeze.default(unsqueeze_2, 2)
        rope_default: "f32[2, 6, 3, 16]" = torch.ops.fusion_passes.rope.default([arg2_1], [None], [0.0], [unsqueeze_1], [unsqueeze_3], [0, 2, 1, 0], [0, 2, 1, 0], 'none', 'none', 16, True, 0, torch.float32)
        return (rope_default,)
""")

    def test_rope_flux_interleaved_bf16(self) -> None:
        """bf16 x with fp32 tables: the op reads the fp32 tables and writes bf16 once."""
        result = self.check(flux_rope, [randn(B, L, H, D, dtype=BF16), *real_tables()], BF16, ["rope[interleaved]"])
        self.assertExpectedInline(result.before, """\
class <lambda>(torch.nn.Module):
    def forward(self, arg0_1: "f32[6, 16]", arg1_1: "f32[6, 16]", arg2_1: "bf16[2, 6, 3, 16]"):
        view: "bf16[2, 6, 3, 8, 2]" = torch.ops.aten.reshape.default(arg2_1, [2, 6, 3, -1, 2])
        unbind = torch.ops.aten.unbind.int(view, -1)
        getitem: "bf16[2, 6, 3, 8]" = unbind[0]
        getitem_1: "bf16[2, 6, 3, 8]" = unbind[1]
        convert_element_type: "f32[2, 6, 3, 16]" = torch.ops.prims.convert_element_type.default(arg2_1, torch.float32)
        unsqueeze: "f32[1, 6, 16]" = torch.ops.aten.unsqueeze.default(arg0_1, 0)
        unsqueeze_1: "f32[1, 6, 1, 16]" = torch.ops.aten.unsqueeze.default(unsqueeze, 2)
        mul: "f32[2, 6, 3, 16]" = torch.ops.aten.mul.Tensor(convert_element_type, unsqueeze_1)
        neg: "bf16[2, 6, 3, 8]" = torch.ops.aten.neg.default(getitem_1)
        unsqueeze_4: "bf16[2, 6, 3, 8, 1]" = torch.ops.aten.unsqueeze.default(neg, 4)
        unsqueeze_5: "bf16[2, 6, 3, 8, 1]" = torch.ops.aten.unsqueeze.default(getitem, 4)
        cat: "bf16[2, 6, 3, 8, 2]" = torch.ops.aten.cat.default([unsqueeze_4, unsqueeze_5], -1)
        view_1: "bf16[2, 6, 3, 16]" = torch.ops.aten.reshape.default(cat, [2, 6, 3, 16])
        convert_element_type_1: "f32[2, 6, 3, 16]" = torch.ops.prims.convert_element_type.default(view_1, torch.float32)
        unsqueeze_2: "f32[1, 6, 16]" = torch.ops.aten.unsqueeze.default(arg1_1, 0)
        unsqueeze_3: "f32[1, 6, 1, 16]" = torch.ops.aten.unsqueeze.default(unsqueeze_2, 2)
        mul_1: "f32[2, 6, 3, 16]" = torch.ops.aten.mul.Tensor(convert_element_type_1, unsqueeze_3)
        add: "f32[2, 6, 3, 16]" = torch.ops.aten.add.Tensor(mul, mul_1)
        convert_element_type_2: "bf16[2, 6, 3, 16]" = torch.ops.prims.convert_element_type.default(add, torch.bfloat16)
        return (convert_element_type_2,)
""")
        self.assertExpectedInline(result.after, """\
class <lambda>(torch.nn.Module):
    def forward(self, arg0_1: "f32[6, 16]", arg1_1: "f32[6, 16]", arg2_1: "bf16[2, 6, 3, 16]"):
        unsqueeze: "f32[1, 6, 16]" = torch.ops.aten.unsqueeze.default(arg0_1, 0)
        unsqueeze_1: "f32[1, 6, 1, 16]" = torch.ops.aten.unsqueeze.default(unsqueeze, 2)
        unsqueeze_2: "f32[1, 6, 16]" = torch.ops.aten.unsqueeze.default(arg1_1, 0)
        unsqueeze_3: "f32[1, 6, 1, 16]" = torch.ops.aten.unsqueeze.default(unsqueeze_2, 2)
        rope_default: "bf16[2, 6, 3, 16]" = torch.ops.fusion_passes.rope.default([arg2_1], [None], [0.0], [unsqueeze_1], [unsqueeze_3], [0, 2, 1, 0], [0, 2, 1, 0], 'none', 'none', 16, True, 0, torch.bfloat16)
        return (rope_default,)
""")

    def test_rope_unbind_dim_2_half_split(self) -> None:
        """``reshape(..., 2, -1).unbind(-2)`` and ``cat([-x_imag, x_real])``: half-split pairs, maps (0, 1, D/2, 0)."""
        args = [randn(B, L, H, D), *real_tables(interleaved=False)]
        result = self.check(unbind_dim_2_rope, args, torch.float32, ["rope[half-split]"])
        self.assertExpectedInline(result.before, """\
class <lambda>(torch.nn.Module):
    def forward(self, arg0_1: "f32[6, 16]", arg1_1: "f32[6, 16]", arg2_1: "f32[2, 6, 3, 16]"):
        view: "f32[2, 6, 3, 2, 8]" = torch.ops.aten.reshape.default(arg2_1, [2, 6, 3, 2, -1])
        unbind = torch.ops.aten.unbind.int(view, -2)
        getitem: "f32[2, 6, 3, 8]" = unbind[0]
        getitem_1: "f32[2, 6, 3, 8]" = unbind[1]
        unsqueeze: "f32[1, 6, 16]" = torch.ops.aten.unsqueeze.default(arg0_1, 0)
        unsqueeze_1: "f32[1, 6, 1, 16]" = torch.ops.aten.unsqueeze.default(unsqueeze, 2)
        mul: "f32[2, 6, 3, 16]" = torch.ops.aten.mul.Tensor(arg2_1, unsqueeze_1)
        neg: "f32[2, 6, 3, 8]" = torch.ops.aten.neg.default(getitem_1)
        cat: "f32[2, 6, 3, 16]" = torch.ops.aten.cat.default([neg, getitem], -1)
        unsqueeze_2: "f32[1, 6, 16]" = torch.ops.aten.unsqueeze.default(arg1_1, 0)
        unsqueeze_3: "f32[1, 6, 1, 16]" = torch.ops.aten.unsqueeze.default(unsqueeze_2, 2)
        mul_1: "f32[2, 6, 3, 16]" = torch.ops.aten.mul.Tensor(cat, unsqueeze_3)
        add: "f32[2, 6, 3, 16]" = torch.ops.aten.add.Tensor(mul, mul_1)
        return (add,)
""")
        self.assertExpectedInline(result.after, """\
class <lambda>(torch.nn.Module):
    def forward(self, arg0_1: "f32[6, 16]", arg1_1: "f32[6, 16]", arg2_1: "f32[2, 6, 3, 16]"):
        unsqueeze: "f32[1, 6, 16]" = torch.ops.aten.unsqueeze.default(arg0_1, 0)
        unsqueeze_1: "f32[1, 6, 1, 16]" = torch.ops.aten.unsqueeze.default(unsqueeze, 2)
        unsqueeze_2: "f32[1, 6, 16]" = torch.ops.aten.unsqueeze.default(arg1_1, 0)
        unsqueeze_3: "f32[1, 6, 1, 16]" = torch.ops.aten.unsqueeze.default(unsqueeze_2, 2)
        rope_default: "f32[2, 6, 3, 16]" = torch.ops.fusion_passes.rope.default([arg2_1], [None], [0.0], [unsqueeze_1], [unsqueeze_3], [0, 1, 8, 0], [0, 1, 8, 0], 'none', 'none', 16, False, 0, torch.float32)
        return (rope_default,)
""")

    def test_rope_llm_rotate_half_with_position_ids(self) -> None:
        """HF rotate_half on [B, H, L, D]: the gathered [B, 1, L, D] tables are the op's tables, the gathers stay."""
        args = [randn(B, H, L, D), *real_tables(10, interleaved=False), torch.randint(0, 10, (B, L))]
        result = self.check(llm_rope, args, torch.float32, ["rope[half-split]"])
        self.assertExpectedInline(result.before, """\
class <lambda>(torch.nn.Module):
    def forward(self, arg0_1: "f32[10, 16]", arg1_1: "i64[2, 6]", arg2_1: "f32[10, 16]", arg3_1: "f32[2, 3, 6, 16]"):
        index: "f32[2, 6, 16]" = torch.ops.aten.index.Tensor(arg0_1, [arg1_1])
        unsqueeze: "f32[2, 1, 6, 16]" = torch.ops.aten.unsqueeze.default(index, 1)
        mul: "f32[2, 3, 6, 16]" = torch.ops.aten.mul.Tensor(arg3_1, unsqueeze)
        slice_2: "f32[2, 3, 6, 8]" = torch.ops.aten.slice.Tensor(arg3_1, 3, 8, 9223372036854775807)
        neg: "f32[2, 3, 6, 8]" = torch.ops.aten.neg.default(slice_2)
        slice_1: "f32[2, 3, 6, 8]" = torch.ops.aten.slice.Tensor(arg3_1, 3, 0, 8)
        cat: "f32[2, 3, 6, 16]" = torch.ops.aten.cat.default([neg, slice_1], -1)
        index_1: "f32[2, 6, 16]" = torch.ops.aten.index.Tensor(arg2_1, [arg1_1])
        unsqueeze_1: "f32[2, 1, 6, 16]" = torch.ops.aten.unsqueeze.default(index_1, 1)
        mul_1: "f32[2, 3, 6, 16]" = torch.ops.aten.mul.Tensor(cat, unsqueeze_1)
        add: "f32[2, 3, 6, 16]" = torch.ops.aten.add.Tensor(mul, mul_1)
        return (add,)
""")
        self.assertExpectedInline(result.after, """\
class <lambda>(torch.nn.Module):
    def forward(self, arg0_1: "f32[10, 16]", arg1_1: "i64[2, 6]", arg2_1: "f32[10, 16]", arg3_1: "f32[2, 3, 6, 16]"):
        index: "f32[2, 6, 16]" = torch.ops.aten.index.Tensor(arg0_1, [arg1_1])
        unsqueeze: "f32[2, 1, 6, 16]" = torch.ops.aten.unsqueeze.default(index, 1)
        index_1: "f32[2, 6, 16]" = torch.ops.aten.index.Tensor(arg2_1, [arg1_1])
        unsqueeze_1: "f32[2, 1, 6, 16]" = torch.ops.aten.unsqueeze.default(index_1, 1)
        rope_default: "f32[2, 3, 6, 16]" = torch.ops.fusion_passes.rope.default([arg3_1], [None], [0.0], [unsqueeze], [unsqueeze_1], [0, 1, 8, 0], [0, 1, 8, 0], 'none', 'none', 16, False, 0, torch.float32)
        return (rope_default,)
""")

    def test_rope_qwen_complex64(self) -> None:
        """Complex frequencies: one c64 table read as real part (cos) and imaginary part (sin)."""
        result = self.check(qwen_rope, [randn(B, L, H, D), complex_freqs()], torch.float32, ["rope[complex]"])
        self.assertExpectedInline(result.before, """\
class <lambda>(torch.nn.Module):
    def forward(self, arg0_1: "f32[2, 6, 3, 16]", arg1_1: "c64[6, 8]"):
        view: "f32[2, 6, 3, 8, 2]" = torch.ops.aten.reshape.default(arg0_1, [2, 6, 3, -1, 2])
        view_as_complex: "c64[2, 6, 3, 8]" = torch.ops.aten.view_as_complex.default(view)
        unsqueeze: "c64[6, 1, 8]" = torch.ops.aten.unsqueeze.default(arg1_1, 1)
        mul: "c64[2, 6, 3, 8]" = torch.ops.aten.mul.Tensor(view_as_complex, unsqueeze)
        view_as_real: "f32[2, 6, 3, 8, 2]" = torch.ops.aten.view_as_real.default(mul)
        view_1: "f32[2, 6, 3, 16]" = torch.ops.aten.reshape.default(view_as_real, [2, 6, 3, 16])
        return (view_1,)
""")
        self.assertExpectedInline(result.after, """\
class <lambda>(torch.nn.Module):
    def forward(self, arg0_1: "f32[2, 6, 3, 16]", arg1_1: "c64[6, 8]"):
        unsqueeze: "c64[6, 1, 8]" = torch.ops.aten.unsqueeze.default(arg1_1, 1)
        rope_default: "f32[2, 6, 3, 16]" = torch.ops.fusion_passes.rope.default([arg0_1], [None], [0.0], [unsqueeze], [unsqueeze], [0, 1, 0, 0], [0, 1, 0, 1], 'none', 'none', 16, True, 0, torch.float32)
        return (rope_default,)
""")

    def test_rope_qwen_complex128(self) -> None:
        """complex128 frequencies with fp32 x: the product is complex128, the op still writes fp32."""
        args = [randn(B, L, H, D), complex_freqs(dtype=torch.complex128)]
        result = self.check(qwen_rope, args, torch.float32, ["rope[complex]"])
        self.assertExpectedInline(result.before, """\
class <lambda>(torch.nn.Module):
    def forward(self, arg0_1: "f32[2, 6, 3, 16]", arg1_1: "c128[6, 8]"):
        view: "f32[2, 6, 3, 8, 2]" = torch.ops.aten.reshape.default(arg0_1, [2, 6, 3, -1, 2])
        view_as_complex: "c64[2, 6, 3, 8]" = torch.ops.aten.view_as_complex.default(view)
        unsqueeze: "c128[6, 1, 8]" = torch.ops.aten.unsqueeze.default(arg1_1, 1)
        mul: "c128[2, 6, 3, 8]" = torch.ops.aten.mul.Tensor(view_as_complex, unsqueeze)
        view_as_real: "f64[2, 6, 3, 8, 2]" = torch.ops.aten.view_as_real.default(mul)
        view_1: "f64[2, 6, 3, 16]" = torch.ops.aten.reshape.default(view_as_real, [2, 6, 3, 16])
        convert_element_type: "f32[2, 6, 3, 16]" = torch.ops.prims.convert_element_type.default(view_1, torch.float32)
        return (convert_element_type,)
""")
        self.assertExpectedInline(result.after, """\
class <lambda>(torch.nn.Module):
    def forward(self, arg0_1: "f32[2, 6, 3, 16]", arg1_1: "c128[6, 8]"):
        unsqueeze: "c128[6, 1, 8]" = torch.ops.aten.unsqueeze.default(arg1_1, 1)
        rope_default: "f32[2, 6, 3, 16]" = torch.ops.fusion_passes.rope.default([arg0_1], [None], [0.0], [unsqueeze], [unsqueeze], [0, 1, 0, 0], [0, 1, 0, 1], 'none', 'none', 16, True, 0, torch.float32)
        return (rope_default,)
""")

    def test_rope_wan_slice_assignment_bf16(self) -> None:
        """Wan's ``out[..., 0::2] = ...`` into ``empty_like``: the strided table slices are the op's tables."""
        cos, sin = real_tables()
        args = [randn(B, L, H, D, dtype=BF16), cos[None, :, None], sin[None, :, None]]
        result = self.check(wan_rope, args, BF16, ["rope[interleaved, slice assignment]"])
        self.assertExpectedInline(result.before, """\
class <lambda>(torch.nn.Module):
    def forward(self, arg0_1: "bf16[2, 6, 3, 16]", arg1_1: "f32[1, 6, 1, 16]", arg2_1: "f32[1, 6, 1, 16]"):
        view: "bf16[2, 6, 3, 8, 2]" = torch.ops.aten.reshape.default(arg0_1, [2, 6, 3, 8, 2])
        unbind = torch.ops.aten.unbind.int(view, -1)
        getitem: "bf16[2, 6, 3, 8]" = unbind[0]
        getitem_1: "bf16[2, 6, 3, 8]" = unbind[1]
        empty: "bf16[2, 6, 3, 16]" = torch.ops.aten.empty.memory_format([2, 6, 3, 16], dtype = torch.bfloat16, layout = torch.strided, device = device(type='cpu'), pin_memory = False)
        slice_3: "bf16[2, 6, 3, 8]" = torch.ops.aten.slice.Tensor(empty, 3, 0, 9223372036854775807, 2)
        slice_1: "f32[1, 6, 1, 8]" = torch.ops.aten.slice.Tensor(arg1_1, 3, 0, 9223372036854775807, 2)
        mul: "f32[2, 6, 3, 8]" = torch.ops.aten.mul.Tensor(getitem, slice_1)
        slice_2: "f32[1, 6, 1, 8]" = torch.ops.aten.slice.Tensor(arg2_1, 3, 1, 9223372036854775807, 2)
        mul_1: "f32[2, 6, 3, 8]" = torch.ops.aten.mul.Tensor(getitem_1, slice_2)
        sub: "f32[2, 6, 3, 8]" = torch.ops.aten.sub.Tensor(mul, mul_1)
        copy: "bf16[2, 6, 3, 8]" = torch.ops.aten.copy.default(slice_3, sub)
        slice_scatter: "bf16[2, 6, 3, 16]" = torch.ops.aten.slice_scatter.default(empty, copy, 3, 0, 9223372036854775807, 2)
        slice_6: "bf16[2, 6, 3, 8]" = torch.ops.aten.slice.Tensor(slice_scatter, 3, 1, 9223372036854775807, 2)
        mul_2: "f32[2, 6, 3, 8]" = torch.ops.aten.mul.Tensor(getitem, slice_2)
        mul_3: "f32[2, 6, 3, 8]" = torch.ops.aten.mul.Tensor(getitem_1, slice_1)
        add: "f32[2, 6, 3, 8]" = torch.ops.aten.add.Tensor(mul_2, mul_3)
        copy_1: "bf16[2, 6, 3, 8]" = torch.ops.aten.copy.default(slice_6, add)
        slice_scatter_1: "bf16[2, 6, 3, 16]" = torch.ops.aten.slice_scatter.default(slice_scatter, copy_1, 3, 1, 9223372036854775807, 2)
        return (slice_scatter_1,)
""")
        self.assertExpectedInline(result.after, """\
class <lambda>(torch.nn.Module):
    def forward(self, arg0_1: "bf16[2, 6, 3, 16]", arg1_1: "f32[1, 6, 1, 16]", arg2_1: "f32[1, 6, 1, 16]"):
        slice_1: "f32[1, 6, 1, 8]" = torch.ops.aten.slice.Tensor(arg1_1, 3, 0, 9223372036854775807, 2)
        slice_2: "f32[1, 6, 1, 8]" = torch.ops.aten.slice.Tensor(arg2_1, 3, 1, 9223372036854775807, 2)
        rope_default: "bf16[2, 6, 3, 16]" = torch.ops.fusion_passes.rope.default([arg0_1], [None], [0.0], [slice_1], [slice_2], [0, 1, 0, 0], [0, 1, 0, 0], 'none', 'none', 16, True, 0, torch.bfloat16)
        return (rope_default,)
""")

    def test_rope_partial_rotary(self) -> None:
        """``cat([rope(x[..., :R]), x[..., R:]], -1)``: rotary_dim R, the other dims pass through."""
        args = [randn(B, L, H, D), *real_tables(dim=ROTARY, interleaved=False)]
        result = self.check(partial_rope, args, torch.float32, ["rope[half-split partial]"])
        self.assertExpectedInline(result.before, """\
class <lambda>(torch.nn.Module):
    def forward(self, arg0_1: "f32[6, 8]", arg1_1: "f32[2, 6, 3, 16]", arg2_1: "f32[6, 8]"):
        slice_1: "f32[2, 6, 3, 8]" = torch.ops.aten.slice.Tensor(arg1_1, 3, 0, 8)
        unsqueeze: "f32[1, 6, 8]" = torch.ops.aten.unsqueeze.default(arg0_1, 0)
        unsqueeze_1: "f32[1, 6, 1, 8]" = torch.ops.aten.unsqueeze.default(unsqueeze, 2)
        mul: "f32[2, 6, 3, 8]" = torch.ops.aten.mul.Tensor(slice_1, unsqueeze_1)
        slice_4: "f32[2, 6, 3, 4]" = torch.ops.aten.slice.Tensor(slice_1, 3, 4, 9223372036854775807)
        neg: "f32[2, 6, 3, 4]" = torch.ops.aten.neg.default(slice_4)
        slice_3: "f32[2, 6, 3, 4]" = torch.ops.aten.slice.Tensor(slice_1, 3, 0, 4)
        cat: "f32[2, 6, 3, 8]" = torch.ops.aten.cat.default([neg, slice_3], -1)
        unsqueeze_2: "f32[1, 6, 8]" = torch.ops.aten.unsqueeze.default(arg2_1, 0)
        unsqueeze_3: "f32[1, 6, 1, 8]" = torch.ops.aten.unsqueeze.default(unsqueeze_2, 2)
        mul_1: "f32[2, 6, 3, 8]" = torch.ops.aten.mul.Tensor(cat, unsqueeze_3)
        add: "f32[2, 6, 3, 8]" = torch.ops.aten.add.Tensor(mul, mul_1)
        slice_2: "f32[2, 6, 3, 8]" = torch.ops.aten.slice.Tensor(arg1_1, 3, 8, 9223372036854775807)
        cat_1: "f32[2, 6, 3, 16]" = torch.ops.aten.cat.default([add, slice_2], -1)
        return (cat_1,)
""")
        self.assertExpectedInline(result.after, """\
class <lambda>(torch.nn.Module):
    def forward(self, arg0_1: "f32[6, 8]", arg1_1: "f32[2, 6, 3, 16]", arg2_1: "f32[6, 8]"):
        unsqueeze: "f32[1, 6, 8]" = torch.ops.aten.unsqueeze.default(arg0_1, 0)
        unsqueeze_1: "f32[1, 6, 1, 8]" = torch.ops.aten.unsqueeze.default(unsqueeze, 2)
        unsqueeze_2: "f32[1, 6, 8]" = torch.ops.aten.unsqueeze.default(arg2_1, 0)
        unsqueeze_3: "f32[1, 6, 1, 8]" = torch.ops.aten.unsqueeze.default(unsqueeze_2, 2)
        rope_default: "f32[2, 6, 3, 16]" = torch.ops.fusion_passes.rope.default([arg1_1], [None], [0.0], [unsqueeze_1], [unsqueeze_3], [0, 1, 4, 0], [0, 1, 4, 0], 'none', 'none', 8, False, 0, torch.float32)
        return (rope_default,)
""")

    def test_norm_rope_rms_norm_then_flux_rope_bf16(self) -> None:
        """Per-head ``F.rms_norm`` absorbed: norm 'head', rounded after the weight, the graph's eps."""
        args = [randn(B, L, H, D, dtype=BF16), randn(D, dtype=BF16), *real_tables()]
        result = self.check(rms_norm_flux_rope, args, BF16, ["rms_norm[weight]/half over each head -> rope[interleaved]"])
        self.assertExpectedInline(result.before, """\
class <lambda>(torch.nn.Module):
    def forward(self, arg0_1: "bf16[2, 6, 3, 16]", arg1_1: "bf16[16]", arg2_1: "f32[6, 16]", arg3_1: "f32[6, 16]"):
        convert_element_type: "f32[2, 6, 3, 16]" = torch.ops.prims.convert_element_type.default(arg0_1, torch.float32)
        pow_1: "f32[2, 6, 3, 16]" = torch.ops.aten.pow.Tensor_Scalar(convert_element_type, 2)
        mean: "f32[2, 6, 3, 1]" = torch.ops.aten.mean.dim(pow_1, [3], True)
        add: "f32[2, 6, 3, 1]" = torch.ops.aten.add.Scalar(mean, 9.999999974752427e-07)
        rsqrt: "f32[2, 6, 3, 1]" = torch.ops.aten.rsqrt.default(add)
        mul: "f32[2, 6, 3, 16]" = torch.ops.aten.mul.Tensor(convert_element_type, rsqrt)
        mul_1: "f32[2, 6, 3, 16]" = torch.ops.aten.mul.Tensor(mul, arg1_1)
        convert_element_type_1: "bf16[2, 6, 3, 16]" = torch.ops.prims.convert_element_type.default(mul_1, torch.bfloat16)
        view: "bf16[2, 6, 3, 8, 2]" = torch.ops.aten.reshape.default(convert_element_type_1, [2, 6, 3, -1, 2])
        unbind = torch.ops.aten.unbind.int(view, -1)
        getitem: "bf16[2, 6, 3, 8]" = unbind[0]
        getitem_1: "bf16[2, 6, 3, 8]" = unbind[1]
        convert_element_type_2: "f32[2, 6, 3, 16]" = torch.ops.prims.convert_element_type.default(convert_element_type_1, torch.float32)
        unsqueeze: "f32[1, 6, 16]" = torch.ops.aten.unsqueeze.default(arg2_1, 0)
        unsqueeze_1: "f32[1, 6, 1, 16]" = torch.ops.aten.unsqueeze.default(unsqueeze, 2)
        mul_2: "f32[2, 6, 3, 16]" = torch.ops.aten.mul.Tensor(convert_element_type_2, unsqueeze_1)
        neg: "bf16[2, 6, 3, 8]" = torch.ops.aten.neg.default(getitem_1)
        unsqueeze_4: "bf16[2, 6, 3, 8, 1]" = torch.ops.aten.unsqueeze.default(neg, 4)
        unsqueeze_5: "bf16[2, 6, 3, 8, 1]" = torch.ops.aten.unsqueeze.default(getitem, 4)
        cat: "bf16[2, 6, 3, 8, 2]" = torch.ops.aten.cat.default([unsqueeze_4, unsqueeze_5], -1)
        view_1: "bf16[2, 6, 3, 16]" = torch.ops.aten.reshape.default(cat, [2, 6, 3, 16])
        convert_element_type_3: "f32[2, 6, 3, 16]" = torch.ops.prims.convert_element_type.default(view_1, torch.float32)
        unsqueeze_2: "f32[1, 6, 16]" = torch.ops.aten.unsqueeze.default(arg3_1, 0)
        unsqueeze_3: "f32[1, 6, 1, 16]" = torch.ops.aten.unsqueeze.default(unsqueeze_2, 2)
        mul_3: "f32[2, 6, 3, 16]" = torch.ops.aten.mul.Tensor(convert_element_type_3, unsqueeze_3)
        add_1: "f32[2, 6, 3, 16]" = torch.ops.aten.add.Tensor(mul_2, mul_3)
        convert_element_type_4: "bf16[2, 6, 3, 16]" = torch.ops.prims.convert_element_type.default(add_1, torch.bfloat16)
        return (convert_element_type_4,)
""")
        self.assertExpectedInline(result.after, """\
class <lambda>(torch.nn.Module):
    def forward(self, arg0_1: "bf16[2, 6, 3, 16]", arg1_1: "bf16[16]", arg2_1: "f32[6, 16]", arg3_1: "f32[6, 16]"):
        unsqueeze: "f32[1, 6, 16]" = torch.ops.aten.unsqueeze.default(arg2_1, 0)
        unsqueeze_1: "f32[1, 6, 1, 16]" = torch.ops.aten.unsqueeze.default(unsqueeze, 2)
        unsqueeze_2: "f32[1, 6, 16]" = torch.ops.aten.unsqueeze.default(arg3_1, 0)
        unsqueeze_3: "f32[1, 6, 1, 16]" = torch.ops.aten.unsqueeze.default(unsqueeze_2, 2)
        rope_default: "bf16[2, 6, 3, 16]" = torch.ops.fusion_passes.rope.default([arg0_1], [arg1_1], [9.999999974752427e-07], [unsqueeze_1], [unsqueeze_3], [0, 2, 1, 0], [0, 2, 1, 0], 'head', 'after_weight', 16, True, 0, torch.bfloat16)
        return (rope_default,)
""")

    def test_norm_rope_diffusers_rms_norm_then_complex_rope_bf16(self) -> None:
        """diffusers' RMSNorm with a bf16 weight absorbed: rounding 'before_and_after_weight'."""
        args = [randn(B, L, H, D, dtype=BF16), randn(D, dtype=BF16), complex_freqs()]
        pattern = "rms_norm[weight,fp32 statistics]/half over each head -> rope[complex]"
        result = self.check(diffusers_rms_norm_qwen_rope, args, BF16, [pattern])
        self.assertExpectedInline(result.before, """\
class <lambda>(torch.nn.Module):
    def forward(self, arg0_1: "bf16[2, 6, 3, 16]", arg1_1: "bf16[16]", arg2_1: "c64[6, 8]"):
        convert_element_type: "f32[2, 6, 3, 16]" = torch.ops.prims.convert_element_type.default(arg0_1, torch.float32)
        pow_1: "f32[2, 6, 3, 16]" = torch.ops.aten.pow.Tensor_Scalar(convert_element_type, 2)
        mean: "f32[2, 6, 3, 1]" = torch.ops.aten.mean.dim(pow_1, [-1], True)
        add: "f32[2, 6, 3, 1]" = torch.ops.aten.add.Tensor(mean, 1e-06)
        rsqrt: "f32[2, 6, 3, 1]" = torch.ops.aten.rsqrt.default(add)
        mul: "f32[2, 6, 3, 16]" = torch.ops.aten.mul.Tensor(arg0_1, rsqrt)
        convert_element_type_1: "bf16[2, 6, 3, 16]" = torch.ops.prims.convert_element_type.default(mul, torch.bfloat16)
        mul_1: "bf16[2, 6, 3, 16]" = torch.ops.aten.mul.Tensor(convert_element_type_1, arg1_1)
        convert_element_type_2: "f32[2, 6, 3, 16]" = torch.ops.prims.convert_element_type.default(mul_1, torch.float32)
        view: "f32[2, 6, 3, 8, 2]" = torch.ops.aten.reshape.default(convert_element_type_2, [2, 6, 3, -1, 2])
        view_as_complex: "c64[2, 6, 3, 8]" = torch.ops.aten.view_as_complex.default(view)
        unsqueeze: "c64[6, 1, 8]" = torch.ops.aten.unsqueeze.default(arg2_1, 1)
        mul_2: "c64[2, 6, 3, 8]" = torch.ops.aten.mul.Tensor(view_as_complex, unsqueeze)
        view_as_real: "f32[2, 6, 3, 8, 2]" = torch.ops.aten.view_as_real.default(mul_2)
        view_1: "f32[2, 6, 3, 16]" = torch.ops.aten.reshape.default(view_as_real, [2, 6, 3, 16])
        convert_element_type_3: "bf16[2, 6, 3, 16]" = torch.ops.prims.convert_element_type.default(view_1, torch.bfloat16)
        return (convert_element_type_3,)
""")
        self.assertExpectedInline(result.after, """\
class <lambda>(torch.nn.Module):
    def forward(self, arg0_1: "bf16[2, 6, 3, 16]", arg1_1: "bf16[16]", arg2_1: "c64[6, 8]"):
        unsqueeze: "c64[6, 1, 8]" = torch.ops.aten.unsqueeze.default(arg2_1, 1)
        rope_default: "bf16[2, 6, 3, 16]" = torch.ops.fusion_passes.rope.default([arg0_1], [arg1_1], [1e-06], [unsqueeze], [unsqueeze], [0, 1, 0, 0], [0, 1, 0, 1], 'head', 'before_and_after_weight', 16, True, 0, torch.bfloat16)
        return (rope_default,)
""")

    def test_norm_rope_rms_norm_across_heads_then_wan_rope_bf16(self) -> None:
        """RMSNorm over H * D, unflatten, Wan rotation: norm 'heads' on the [B, L, H, D] view, weight [H * D]."""
        cos, sin = real_tables()
        args = [randn(B, L, H * D, dtype=BF16), randn(H * D, dtype=BF16), cos[None, :, None], sin[None, :, None]]
        pattern = "rms_norm[weight]/half over all heads -> rope[interleaved, slice assignment]"
        result = self.check(across_heads_wan_rope, args, BF16, [pattern])
        self.assertExpectedInline(result.before, """\
class <lambda>(torch.nn.Module):
    def forward(self, arg0_1: "bf16[2, 6, 48]", arg1_1: "bf16[48]", arg2_1: "f32[1, 6, 1, 16]", arg3_1: "f32[1, 6, 1, 16]"):
        convert_element_type: "f32[2, 6, 48]" = torch.ops.prims.convert_element_type.default(arg0_1, torch.float32)
        pow_1: "f32[2, 6, 48]" = torch.ops.aten.pow.Tensor_Scalar(convert_element_type, 2)
        mean: "f32[2, 6, 1]" = torch.ops.aten.mean.dim(pow_1, [2], True)
        add: "f32[2, 6, 1]" = torch.ops.aten.add.Scalar(mean, 9.999999974752427e-07)
        rsqrt: "f32[2, 6, 1]" = torch.ops.aten.rsqrt.default(add)
        mul: "f32[2, 6, 48]" = torch.ops.aten.mul.Tensor(convert_element_type, rsqrt)
        mul_1: "f32[2, 6, 48]" = torch.ops.aten.mul.Tensor(mul, arg1_1)
        convert_element_type_1: "bf16[2, 6, 48]" = torch.ops.prims.convert_element_type.default(mul_1, torch.bfloat16)
        view: "bf16[2, 6, 3, 16]" = torch.ops.aten.reshape.default(convert_element_type_1, [2, 6, 3, 16])
        view_1: "bf16[2, 6, 3, 8, 2]" = torch.ops.aten.reshape.default(view, [2, 6, 3, 8, 2])
        unbind = torch.ops.aten.unbind.int(view_1, -1)
        getitem: "bf16[2, 6, 3, 8]" = unbind[0]
        getitem_1: "bf16[2, 6, 3, 8]" = unbind[1]
        empty: "bf16[2, 6, 3, 16]" = torch.ops.aten.empty.memory_format([2, 6, 3, 16], dtype = torch.bfloat16, layout = torch.strided, device = device(type='cpu'), pin_memory = False)
        slice_3: "bf16[2, 6, 3, 8]" = torch.ops.aten.slice.Tensor(empty, 3, 0, 9223372036854775807, 2)
        slice_1: "f32[1, 6, 1, 8]" = torch.ops.aten.slice.Tensor(arg2_1, 3, 0, 9223372036854775807, 2)
        mul_2: "f32[2, 6, 3, 8]" = torch.ops.aten.mul.Tensor(getitem, slice_1)
        slice_2: "f32[1, 6, 1, 8]" = torch.ops.aten.slice.Tensor(arg3_1, 3, 1, 9223372036854775807, 2)
        mul_3: "f32[2, 6, 3, 8]" = torch.ops.aten.mul.Tensor(getitem_1, slice_2)
        sub: "f32[2, 6, 3, 8]" = torch.ops.aten.sub.Tensor(mul_2, mul_3)
        copy: "bf16[2, 6, 3, 8]" = torch.ops.aten.copy.default(slice_3, sub)
        slice_scatter: "bf16[2, 6, 3, 16]" = torch.ops.aten.slice_scatter.default(empty, copy, 3, 0, 9223372036854775807, 2)
        slice_6: "bf16[2, 6, 3, 8]" = torch.ops.aten.slice.Tensor(slice_scatter, 3, 1, 9223372036854775807, 2)
        mul_4: "f32[2, 6, 3, 8]" = torch.ops.aten.mul.Tensor(getitem, slice_2)
        mul_5: "f32[2, 6, 3, 8]" = torch.ops.aten.mul.Tensor(getitem_1, slice_1)
        add_1: "f32[2, 6, 3, 8]" = torch.ops.aten.add.Tensor(mul_4, mul_5)
        copy_1: "bf16[2, 6, 3, 8]" = torch.ops.aten.copy.default(slice_6, add_1)
        slice_scatter_1: "bf16[2, 6, 3, 16]" = torch.ops.aten.slice_scatter.default(slice_scatter, copy_1, 3, 1, 9223372036854775807, 2)
        return (slice_scatter_1,)
""")
        self.assertExpectedInline(result.after, """\
class <lambda>(torch.nn.Module):
    def forward(self, arg0_1: "bf16[2, 6, 48]", arg1_1: "bf16[48]", arg2_1: "f32[1, 6, 1, 16]", arg3_1: "f32[1, 6, 1, 16]"):
        slice_1: "f32[1, 6, 1, 8]" = torch.ops.aten.slice.Tensor(arg2_1, 3, 0, 9223372036854775807, 2)
        slice_2: "f32[1, 6, 1, 8]" = torch.ops.aten.slice.Tensor(arg3_1, 3, 1, 9223372036854775807, 2)
        reshape_default: "bf16[2, 6, 3, 16]" = torch.ops.aten.reshape.default(arg0_1, [2, 6, 3, 16])
        rope_default: "bf16[2, 6, 3, 16]" = torch.ops.fusion_passes.rope.default([reshape_default], [arg1_1], [9.999999974752427e-07], [slice_1], [slice_2], [0, 1, 0, 0], [0, 1, 0, 0], 'heads', 'after_weight', 16, True, 0, torch.bfloat16)
        return (rope_default,)
""")

    def test_norm_rope_heads_first_layout(self) -> None:
        """[B, H, L, D] from view + transpose: the op reads the transposed view, tables [1, 1, L, D]."""
        cos, sin = real_tables()
        args = [randn(B, L, H * D), randn(D), cos[None, None], sin[None, None]]
        result = self.check(heads_first_rope, args, torch.float32, ["rms_norm[weight]/fp32 over each head -> rope[interleaved]"])
        self.assertExpectedInline(result.before, """\
class <lambda>(torch.nn.Module):
    def forward(self, arg0_1: "f32[2, 6, 48]", arg1_1: "f32[16]", arg2_1: "f32[1, 1, 6, 16]", arg3_1: "f32[1, 1, 6, 16]"):
        view: "f32[2, 6, 3, 16]" = torch.ops.aten.reshape.default(arg0_1, [2, 6, 3, 16])
        permute: "f32[2, 3, 6, 16]" = torch.ops.aten.permute.default(view, [0, 2, 1, 3])
        pow_1: "f32[2, 3, 6, 16]" = torch.ops.aten.pow.Tensor_Scalar(permute, 2)
        mean: "f32[2, 3, 6, 1]" = torch.ops.aten.mean.dim(pow_1, [3], True)
        add: "f32[2, 3, 6, 1]" = torch.ops.aten.add.Scalar(mean, 9.999999974752427e-07)
        rsqrt: "f32[2, 3, 6, 1]" = torch.ops.aten.rsqrt.default(add)
        mul: "f32[2, 3, 6, 16]" = torch.ops.aten.mul.Tensor(permute, rsqrt)
        mul_1: "f32[2, 3, 6, 16]" = torch.ops.aten.mul.Tensor(mul, arg1_1)
        clone: "f32[2, 3, 6, 16]" = torch.ops.aten.clone.default(mul_1, memory_format = torch.contiguous_format)
        view_1: "f32[2, 3, 6, 8, 2]" = torch.ops.aten.reshape.default(clone, [2, 3, 6, -1, 2])
        unbind = torch.ops.aten.unbind.int(view_1, -1)
        getitem: "f32[2, 3, 6, 8]" = unbind[0]
        getitem_1: "f32[2, 3, 6, 8]" = unbind[1]
        mul_2: "f32[2, 3, 6, 16]" = torch.ops.aten.mul.Tensor(clone, arg2_1)
        neg: "f32[2, 3, 6, 8]" = torch.ops.aten.neg.default(getitem_1)
        unsqueeze: "f32[2, 3, 6, 8, 1]" = torch.ops.aten.unsqueeze.default(neg, 4)
        unsqueeze_1: "f32[2, 3, 6, 8, 1]" = torch.ops.aten.unsqueeze.default(getitem, 4)
        cat: "f32[2, 3, 6, 8, 2]" = torch.ops.aten.cat.default([unsqueeze, unsqueeze_1], -1)
        view_2: "f32[2, 3, 6, 16]" = torch.ops.aten.reshape.default(cat, [2, 3, 6, 16])
        mul_3: "f32[2, 3, 6, 16]" = torch.ops.aten.mul.Tensor(view_2, arg3_1)
        add_1: "f32[2, 3, 6, 16]" = torch.ops.aten.add.Tensor(mul_2, mul_3)
        return (add_1,)
""")
        self.assertExpectedInline(result.after, """\
class <lambda>(torch.nn.Module):
    def forward(self, arg0_1: "f32[2, 6, 48]", arg1_1: "f32[16]", arg2_1: "f32[1, 1, 6, 16]", arg3_1: "f32[1, 1, 6, 16]"):
        view: "f32[2, 6, 3, 16]" = torch.ops.aten.reshape.default(arg0_1, [2, 6, 3, 16])
        permute: "f32[2, 3, 6, 16]" = torch.ops.aten.permute.default(view, [0, 2, 1, 3])
        rope_default: "f32[2, 3, 6, 16]" = torch.ops.fusion_passes.rope.default([permute], [arg1_1], [9.999999974752427e-07], [arg2_1], [arg3_1], [0, 2, 1, 0], [0, 2, 1, 0], 'head', 'none', 16, True, 0, torch.float32)
        return (rope_default,)
""")

    def test_norm_rope_flux_joint_cat_before_rope(self) -> None:
        """FLUX double block: two streams with their own weights and eps, each reading its rows of the joint table."""
        args = [randn(B, TEXT, H, D), randn(B, L, H, D), randn(D), randn(D), *real_tables(TEXT + L)]
        pattern = "rms_norm[weight]/fp32 over each head -> rope[interleaved] x2 streams"
        result = self.check(flux_joint_rope, args, torch.float32, [pattern])
        self.assertExpectedInline(result.before, """\
class <lambda>(torch.nn.Module):
    def forward(self, arg0_1: "f32[2, 4, 3, 16]", arg1_1: "f32[16]", arg2_1: "f32[2, 6, 3, 16]", arg3_1: "f32[16]", arg4_1: "f32[10, 16]", arg5_1: "f32[10, 16]"):
        pow_1: "f32[2, 4, 3, 16]" = torch.ops.aten.pow.Tensor_Scalar(arg0_1, 2)
        mean: "f32[2, 4, 3, 1]" = torch.ops.aten.mean.dim(pow_1, [3], True)
        add: "f32[2, 4, 3, 1]" = torch.ops.aten.add.Scalar(mean, 9.999999974752427e-07)
        rsqrt: "f32[2, 4, 3, 1]" = torch.ops.aten.rsqrt.default(add)
        mul: "f32[2, 4, 3, 16]" = torch.ops.aten.mul.Tensor(arg0_1, rsqrt)
        mul_1: "f32[2, 4, 3, 16]" = torch.ops.aten.mul.Tensor(mul, arg1_1)
        pow_2: "f32[2, 6, 3, 16]" = torch.ops.aten.pow.Tensor_Scalar(arg2_1, 2)
        mean_1: "f32[2, 6, 3, 1]" = torch.ops.aten.mean.dim(pow_2, [3], True)
        add_1: "f32[2, 6, 3, 1]" = torch.ops.aten.add.Scalar(mean_1, 9.999999747378752e-06)
        rsqrt_1: "f32[2, 6, 3, 1]" = torch.ops.aten.rsqrt.default(add_1)
        mul_2: "f32[2, 6, 3, 16]" = torch.ops.aten.mul.Tensor(arg2_1, rsqrt_1)
        mul_3: "f32[2, 6, 3, 16]" = torch.ops.aten.mul.Tensor(mul_2, arg3_1)
        cat: "f32[2, 10, 3, 16]" = torch.ops.aten.cat.default([mul_1, mul_3], 1)
        view: "f32[2, 10, 3, 8, 2]" = torch.ops.aten.reshape.default(cat, [2, 10, 3, -1, 2])
        unbind = torch.ops.aten.unbind.int(view, -1)
        getitem: "f32[2, 10, 3, 8]" = unbind[0]
        getitem_1: "f32[2, 10, 3, 8]" = unbind[1]
        unsqueeze: "f32[1, 10, 16]" = torch.ops.aten.unsqueeze.default(arg4_1, 0)
        unsqueeze_1: "f32[1, 10, 1, 16]" = torch.ops.aten.unsqueeze.default(unsqueeze, 2)
        mul_4: "f32[2, 10, 3, 16]" = torch.ops.aten.mul.Tensor(cat, unsqueeze_1)
        neg: "f32[2, 10, 3, 8]" = torch.ops.aten.neg.default(getitem_1)
        unsqueeze_4: "f32[2, 10, 3, 8, 1]" = torch.ops.aten.unsqueeze.default(neg, 4)
        unsqueeze_5: "f32[2, 10, 3, 8, 1]" = torch.ops.aten.unsqueeze.default(getitem, 4)
        cat_1: "f32[2, 10, 3, 8, 2]" = torch.ops.aten.cat.default([unsqueeze_4, unsqueeze_5], -1)
        view_1: "f32[2, 10, 3, 16]" = torch.ops.aten.reshape.default(cat_1, [2, 10, 3, 16])
        unsqueeze_2: "f32[1, 10, 16]" = torch.ops.aten.unsqueeze.default(arg5_1, 0)
        unsqueeze_3: "f32[1, 10, 1, 16]" = torch.ops.aten.unsqueeze.default(unsqueeze_2, 2)
        mul_5: "f32[2, 10, 3, 16]" = torch.ops.aten.mul.Tensor(view_1, unsqueeze_3)
        add_2: "f32[2, 10, 3, 16]" = torch.ops.aten.add.Tensor(mul_4, mul_5)
        return (add_2,)
""")
        self.assertExpectedInline(result.after, """\
class <lambda>(torch.nn.Module):
    def forward(self, arg0_1: "f32[2, 4, 3, 16]", arg1_1: "f32[16]", arg2_1: "f32[2, 6, 3, 16]", arg3_1: "f32[16]", arg4_1: "f32[10, 16]", arg5_1: "f32[10, 16]"):
        unsqueeze: "f32[1, 10, 16]" = torch.ops.aten.unsqueeze.default(arg4_1, 0)
        unsqueeze_1: "f32[1, 10, 1, 16]" = torch.ops.aten.unsqueeze.default(unsqueeze, 2)
        unsqueeze_2: "f32[1, 10, 16]" = torch.ops.aten.unsqueeze.default(arg5_1, 0)
        unsqueeze_3: "f32[1, 10, 1, 16]" = torch.ops.aten.unsqueeze.default(unsqueeze_2, 2)
        slice_tensor: "f32[1, 4, 1, 16]" = torch.ops.aten.slice.Tensor(unsqueeze_1, 1, 0, 4)
        slice_tensor_1: "f32[1, 4, 1, 16]" = torch.ops.aten.slice.Tensor(unsqueeze_3, 1, 0, 4)
        slice_tensor_2: "f32[1, 6, 1, 16]" = torch.ops.aten.slice.Tensor(unsqueeze_1, 1, 4, 10)
        slice_tensor_3: "f32[1, 6, 1, 16]" = torch.ops.aten.slice.Tensor(unsqueeze_3, 1, 4, 10)
        rope_default: "f32[2, 10, 3, 16]" = torch.ops.fusion_passes.rope.default([arg0_1, arg2_1], [arg1_1, arg3_1], [9.999999974752427e-07, 9.999999747378752e-06], [slice_tensor, slice_tensor_2], [slice_tensor_1, slice_tensor_3], [0, 2, 1, 0, 0, 2, 1, 0], [0, 2, 1, 0, 0, 2, 1, 0], 'head', 'none', 16, True, 1, torch.float32)
        return (rope_default,)
""")

    def test_norm_rope_heads_first_joint_cat_along_dim_2(self) -> None:
        """[B, H, L, D] streams joined along dim 2: cat_dim 2, the joint table sliced along its L dim."""
        args = [randn(B, TEXT, H * D), randn(B, L, H * D), randn(D), randn(D), *real_tables(TEXT + L)]
        pattern = "rms_norm[weight]/fp32 over each head -> rope[interleaved] x2 streams"
        result = self.check(heads_first_joint_rope, args, torch.float32, [pattern])
        self.assertExpectedInline(result.before, """\
class <lambda>(torch.nn.Module):
    def forward(self, arg0_1: "f32[2, 4, 48]", arg1_1: "f32[16]", arg2_1: "f32[2, 6, 48]", arg3_1: "f32[16]", arg4_1: "f32[10, 16]", arg5_1: "f32[10, 16]"):
        view: "f32[2, 4, 3, 16]" = torch.ops.aten.reshape.default(arg0_1, [2, 4, 3, 16])
        permute: "f32[2, 3, 4, 16]" = torch.ops.aten.permute.default(view, [0, 2, 1, 3])
        pow_1: "f32[2, 3, 4, 16]" = torch.ops.aten.pow.Tensor_Scalar(permute, 2)
        mean: "f32[2, 3, 4, 1]" = torch.ops.aten.mean.dim(pow_1, [-1], True)
        add: "f32[2, 3, 4, 1]" = torch.ops.aten.add.Tensor(mean, 1e-06)
        rsqrt: "f32[2, 3, 4, 1]" = torch.ops.aten.rsqrt.default(add)
        mul: "f32[2, 3, 4, 16]" = torch.ops.aten.mul.Tensor(permute, rsqrt)
        mul_1: "f32[2, 3, 4, 16]" = torch.ops.aten.mul.Tensor(mul, arg1_1)
        view_1: "f32[2, 6, 3, 16]" = torch.ops.aten.reshape.default(arg2_1, [2, 6, 3, 16])
        permute_1: "f32[2, 3, 6, 16]" = torch.ops.aten.permute.default(view_1, [0, 2, 1, 3])
        pow_2: "f32[2, 3, 6, 16]" = torch.ops.aten.pow.Tensor_Scalar(permute_1, 2)
        mean_1: "f32[2, 3, 6, 1]" = torch.ops.aten.mean.dim(pow_2, [-1], True)
        add_1: "f32[2, 3, 6, 1]" = torch.ops.aten.add.Tensor(mean_1, 1e-06)
        rsqrt_1: "f32[2, 3, 6, 1]" = torch.ops.aten.rsqrt.default(add_1)
        mul_2: "f32[2, 3, 6, 16]" = torch.ops.aten.mul.Tensor(permute_1, rsqrt_1)
        mul_3: "f32[2, 3, 6, 16]" = torch.ops.aten.mul.Tensor(mul_2, arg3_1)
        cat: "f32[2, 3, 10, 16]" = torch.ops.aten.cat.default([mul_1, mul_3], 2)
        view_2: "f32[2, 3, 10, 8, 2]" = torch.ops.aten.reshape.default(cat, [2, 3, 10, -1, 2])
        unbind = torch.ops.aten.unbind.int(view_2, -1)
        getitem: "f32[2, 3, 10, 8]" = unbind[0]
        getitem_1: "f32[2, 3, 10, 8]" = unbind[1]
        unsqueeze: "f32[1, 10, 16]" = torch.ops.aten.unsqueeze.default(arg4_1, 0)
        unsqueeze_1: "f32[1, 1, 10, 16]" = torch.ops.aten.unsqueeze.default(unsqueeze, 1)
        mul_4: "f32[2, 3, 10, 16]" = torch.ops.aten.mul.Tensor(cat, unsqueeze_1)
        neg: "f32[2, 3, 10, 8]" = torch.ops.aten.neg.default(getitem_1)
        unsqueeze_4: "f32[2, 3, 10, 8, 1]" = torch.ops.aten.unsqueeze.default(neg, 4)
        unsqueeze_5: "f32[2, 3, 10, 8, 1]" = torch.ops.aten.unsqueeze.default(getitem, 4)
        cat_1: "f32[2, 3, 10, 8, 2]" = torch.ops.aten.cat.default([unsqueeze_4, unsqueeze_5], -1)
        view_3: "f32[2, 3, 10, 16]" = torch.ops.aten.reshape.default(cat_1, [2, 3, 10, 16])
        unsqueeze_2: "f32[1, 10, 16]" = torch.ops.aten.unsqueeze.default(arg5_1, 0)
        unsqueeze_3: "f32[1, 1, 10, 16]" = torch.ops.aten.unsqueeze.default(unsqueeze_2, 1)
        mul_5: "f32[2, 3, 10, 16]" = torch.ops.aten.mul.Tensor(view_3, unsqueeze_3)
        add_2: "f32[2, 3, 10, 16]" = torch.ops.aten.add.Tensor(mul_4, mul_5)
        return (add_2,)
""")
        self.assertExpectedInline(result.after, """\
class <lambda>(torch.nn.Module):
    def forward(self, arg0_1: "f32[2, 4, 48]", arg1_1: "f32[16]", arg2_1: "f32[2, 6, 48]", arg3_1: "f32[16]", arg4_1: "f32[10, 16]", arg5_1: "f32[10, 16]"):
        view: "f32[2, 4, 3, 16]" = torch.ops.aten.reshape.default(arg0_1, [2, 4, 3, 16])
        permute: "f32[2, 3, 4, 16]" = torch.ops.aten.permute.default(view, [0, 2, 1, 3])
        view_1: "f32[2, 6, 3, 16]" = torch.ops.aten.reshape.default(arg2_1, [2, 6, 3, 16])
        permute_1: "f32[2, 3, 6, 16]" = torch.ops.aten.permute.default(view_1, [0, 2, 1, 3])
        unsqueeze: "f32[1, 10, 16]" = torch.ops.aten.unsqueeze.default(arg4_1, 0)
        unsqueeze_1: "f32[1, 1, 10, 16]" = torch.ops.aten.unsqueeze.default(unsqueeze, 1)
        unsqueeze_2: "f32[1, 10, 16]" = torch.ops.aten.unsqueeze.default(arg5_1, 0)
        unsqueeze_3: "f32[1, 1, 10, 16]" = torch.ops.aten.unsqueeze.default(unsqueeze_2, 1)
        slice_tensor: "f32[1, 1, 4, 16]" = torch.ops.aten.slice.Tensor(unsqueeze_1, 2, 0, 4)
        slice_tensor_1: "f32[1, 1, 4, 16]" = torch.ops.aten.slice.Tensor(unsqueeze_3, 2, 0, 4)
        slice_tensor_2: "f32[1, 1, 6, 16]" = torch.ops.aten.slice.Tensor(unsqueeze_1, 2, 4, 10)
        slice_tensor_3: "f32[1, 1, 6, 16]" = torch.ops.aten.slice.Tensor(unsqueeze_3, 2, 4, 10)
        rope_default: "f32[2, 3, 10, 16]" = torch.ops.fusion_passes.rope.default([permute, permute_1], [arg1_1, arg3_1], [1e-06, 1e-06], [slice_tensor, slice_tensor_2], [slice_tensor_1, slice_tensor_3], [0, 2, 1, 0, 0, 2, 1, 0], [0, 2, 1, 0, 0, 2, 1, 0], 'head', 'none', 16, True, 2, torch.float32)
        return (rope_default,)
""")

    def test_norm_rope_qwen_joint_cat_after_rope_bf16(self) -> None:
        """Qwen-Image: each stream rotated with its own frequencies, then cat: one call, a table per stream."""
        args = [randn(B, TEXT, H, D, dtype=BF16), randn(B, L, H, D, dtype=BF16), randn(D, dtype=BF16), randn(D, dtype=BF16)]
        args += [complex_freqs(TEXT), complex_freqs()]
        pattern = "rms_norm[weight,fp32 statistics]/half over each head -> rope[complex] x2 streams"
        result = self.check(qwen_joint_rope, args, BF16, [pattern])
        self.assertExpectedInline(result.before, """\
class <lambda>(torch.nn.Module):
    def forward(self, arg0_1: "bf16[2, 4, 3, 16]", arg1_1: "bf16[16]", arg2_1: "c64[4, 8]", arg3_1: "bf16[2, 6, 3, 16]", arg4_1: "bf16[16]", arg5_1: "c64[6, 8]"):
        convert_element_type: "f32[2, 4, 3, 16]" = torch.ops.prims.convert_element_type.default(arg0_1, torch.float32)
        pow_1: "f32[2, 4, 3, 16]" = torch.ops.aten.pow.Tensor_Scalar(convert_element_type, 2)
        mean: "f32[2, 4, 3, 1]" = torch.ops.aten.mean.dim(pow_1, [-1], True)
        add: "f32[2, 4, 3, 1]" = torch.ops.aten.add.Tensor(mean, 1e-06)
        rsqrt: "f32[2, 4, 3, 1]" = torch.ops.aten.rsqrt.default(add)
        mul: "f32[2, 4, 3, 16]" = torch.ops.aten.mul.Tensor(arg0_1, rsqrt)
        convert_element_type_1: "bf16[2, 4, 3, 16]" = torch.ops.prims.convert_element_type.default(mul, torch.bfloat16)
        mul_1: "bf16[2, 4, 3, 16]" = torch.ops.aten.mul.Tensor(convert_element_type_1, arg1_1)
        convert_element_type_2: "f32[2, 4, 3, 16]" = torch.ops.prims.convert_element_type.default(mul_1, torch.float32)
        view: "f32[2, 4, 3, 8, 2]" = torch.ops.aten.reshape.default(convert_element_type_2, [2, 4, 3, -1, 2])
        view_as_complex: "c64[2, 4, 3, 8]" = torch.ops.aten.view_as_complex.default(view)
        unsqueeze: "c64[4, 1, 8]" = torch.ops.aten.unsqueeze.default(arg2_1, 1)
        mul_2: "c64[2, 4, 3, 8]" = torch.ops.aten.mul.Tensor(view_as_complex, unsqueeze)
        view_as_real: "f32[2, 4, 3, 8, 2]" = torch.ops.aten.view_as_real.default(mul_2)
        view_1: "f32[2, 4, 3, 16]" = torch.ops.aten.reshape.default(view_as_real, [2, 4, 3, 16])
        convert_element_type_3: "bf16[2, 4, 3, 16]" = torch.ops.prims.convert_element_type.default(view_1, torch.bfloat16)
        convert_element_type_4: "f32[2, 6, 3, 16]" = torch.ops.prims.convert_element_type.default(arg3_1, torch.float32)
        pow_2: "f32[2, 6, 3, 16]" = torch.ops.aten.pow.Tensor_Scalar(convert_element_type_4, 2)
        mean_1: "f32[2, 6, 3, 1]" = torch.ops.aten.mean.dim(pow_2, [-1], True)
        add_1: "f32[2, 6, 3, 1]" = torch.ops.aten.add.Tensor(mean_1, 1e-06)
        rsqrt_1: "f32[2, 6, 3, 1]" = torch.ops.aten.rsqrt.default(add_1)
        mul_3: "f32[2, 6, 3, 16]" = torch.ops.aten.mul.Tensor(arg3_1, rsqrt_1)
        convert_element_type_5: "bf16[2, 6, 3, 16]" = torch.ops.prims.convert_element_type.default(mul_3, torch.bfloat16)
        mul_4: "bf16[2, 6, 3, 16]" = torch.ops.aten.mul.Tensor(convert_element_type_5, arg4_1)
        convert_element_type_6: "f32[2, 6, 3, 16]" = torch.ops.prims.convert_element_type.default(mul_4, torch.float32)
        view_2: "f32[2, 6, 3, 8, 2]" = torch.ops.aten.reshape.default(convert_element_type_6, [2, 6, 3, -1, 2])
        view_as_complex_1: "c64[2, 6, 3, 8]" = torch.ops.aten.view_as_complex.default(view_2)
        unsqueeze_1: "c64[6, 1, 8]" = torch.ops.aten.unsqueeze.default(arg5_1, 1)
        mul_5: "c64[2, 6, 3, 8]" = torch.ops.aten.mul.Tensor(view_as_complex_1, unsqueeze_1)
        view_as_real_1: "f32[2, 6, 3, 8, 2]" = torch.ops.aten.view_as_real.default(mul_5)
        view_3: "f32[2, 6, 3, 16]" = torch.ops.aten.reshape.default(view_as_real_1, [2, 6, 3, 16])
        convert_element_type_7: "bf16[2, 6, 3, 16]" = torch.ops.prims.convert_element_type.default(view_3, torch.bfloat16)
        cat: "bf16[2, 10, 3, 16]" = torch.ops.aten.cat.default([convert_element_type_3, convert_element_type_7], 1)
        return (cat,)
""")
        self.assertExpectedInline(result.after, """\
class <lambda>(torch.nn.Module):
    def forward(self, arg0_1: "bf16[2, 4, 3, 16]", arg1_1: "bf16[16]", arg2_1: "c64[4, 8]", arg3_1: "bf16[2, 6, 3, 16]", arg4_1: "bf16[16]", arg5_1: "c64[6, 8]"):
        unsqueeze: "c64[4, 1, 8]" = torch.ops.aten.unsqueeze.default(arg2_1, 1)
        unsqueeze_1: "c64[6, 1, 8]" = torch.ops.aten.unsqueeze.default(arg5_1, 1)
        rope_default: "bf16[2, 10, 3, 16]" = torch.ops.fusion_passes.rope.default([arg0_1, arg3_1], [arg1_1, arg4_1], [1e-06, 1e-06], [unsqueeze, unsqueeze_1], [unsqueeze, unsqueeze_1], [0, 1, 0, 0, 0, 1, 0, 0], [0, 1, 0, 1, 0, 1, 0, 1], 'head', 'before_and_after_weight', 16, True, 1, torch.bfloat16)
        return (rope_default,)
""")

    def test_norm_rope_hunyuan_double_rotated_image_then_text(self) -> None:
        """HunyuanVideo double block: the text stream is normalized with its own weight and has no table."""
        args = [randn(B, L, H, D), randn(B, TEXT, H, D), randn(D), randn(D), *real_tables()]
        pattern = "rms_norm[weight]/fp32 over each head -> rope[interleaved] x2 streams (some unrotated)"
        result = self.check(hunyuan_double_rope, args, torch.float32, [pattern])
        self.assertExpectedInline(result.before, """\
class <lambda>(torch.nn.Module):
    def forward(self, arg0_1: "f32[2, 6, 3, 16]", arg1_1: "f32[16]", arg2_1: "f32[6, 16]", arg3_1: "f32[6, 16]", arg4_1: "f32[2, 4, 3, 16]", arg5_1: "f32[16]"):
        pow_1: "f32[2, 6, 3, 16]" = torch.ops.aten.pow.Tensor_Scalar(arg0_1, 2)
        mean: "f32[2, 6, 3, 1]" = torch.ops.aten.mean.dim(pow_1, [3], True)
        add: "f32[2, 6, 3, 1]" = torch.ops.aten.add.Scalar(mean, 9.999999974752427e-07)
        rsqrt: "f32[2, 6, 3, 1]" = torch.ops.aten.rsqrt.default(add)
        mul: "f32[2, 6, 3, 16]" = torch.ops.aten.mul.Tensor(arg0_1, rsqrt)
        mul_1: "f32[2, 6, 3, 16]" = torch.ops.aten.mul.Tensor(mul, arg1_1)
        view: "f32[2, 6, 3, 8, 2]" = torch.ops.aten.reshape.default(mul_1, [2, 6, 3, -1, 2])
        unbind = torch.ops.aten.unbind.int(view, -1)
        getitem: "f32[2, 6, 3, 8]" = unbind[0]
        getitem_1: "f32[2, 6, 3, 8]" = unbind[1]
        unsqueeze: "f32[1, 6, 16]" = torch.ops.aten.unsqueeze.default(arg2_1, 0)
        unsqueeze_1: "f32[1, 6, 1, 16]" = torch.ops.aten.unsqueeze.default(unsqueeze, 2)
        mul_2: "f32[2, 6, 3, 16]" = torch.ops.aten.mul.Tensor(mul_1, unsqueeze_1)
        neg: "f32[2, 6, 3, 8]" = torch.ops.aten.neg.default(getitem_1)
        unsqueeze_4: "f32[2, 6, 3, 8, 1]" = torch.ops.aten.unsqueeze.default(neg, 4)
        unsqueeze_5: "f32[2, 6, 3, 8, 1]" = torch.ops.aten.unsqueeze.default(getitem, 4)
        cat: "f32[2, 6, 3, 8, 2]" = torch.ops.aten.cat.default([unsqueeze_4, unsqueeze_5], -1)
        view_1: "f32[2, 6, 3, 16]" = torch.ops.aten.reshape.default(cat, [2, 6, 3, 16])
        unsqueeze_2: "f32[1, 6, 16]" = torch.ops.aten.unsqueeze.default(arg3_1, 0)
        unsqueeze_3: "f32[1, 6, 1, 16]" = torch.ops.aten.unsqueeze.default(unsqueeze_2, 2)
        mul_3: "f32[2, 6, 3, 16]" = torch.ops.aten.mul.Tensor(view_1, unsqueeze_3)
        add_1: "f32[2, 6, 3, 16]" = torch.ops.aten.add.Tensor(mul_2, mul_3)
        pow_2: "f32[2, 4, 3, 16]" = torch.ops.aten.pow.Tensor_Scalar(arg4_1, 2)
        mean_1: "f32[2, 4, 3, 1]" = torch.ops.aten.mean.dim(pow_2, [3], True)
        add_2: "f32[2, 4, 3, 1]" = torch.ops.aten.add.Scalar(mean_1, 9.999999974752427e-07)
        rsqrt_1: "f32[2, 4, 3, 1]" = torch.ops.aten.rsqrt.default(add_2)
        mul_4: "f32[2, 4, 3, 16]" = torch.ops.aten.mul.Tensor(arg4_1, rsqrt_1)
        mul_5: "f32[2, 4, 3, 16]" = torch.ops.aten.mul.Tensor(mul_4, arg5_1)
        cat_1: "f32[2, 10, 3, 16]" = torch.ops.aten.cat.default([add_1, mul_5], 1)
        return (cat_1,)
""")
        self.assertExpectedInline(result.after, """\
class <lambda>(torch.nn.Module):
    def forward(self, arg0_1: "f32[2, 6, 3, 16]", arg1_1: "f32[16]", arg2_1: "f32[6, 16]", arg3_1: "f32[6, 16]", arg4_1: "f32[2, 4, 3, 16]", arg5_1: "f32[16]"):
        unsqueeze: "f32[1, 6, 16]" = torch.ops.aten.unsqueeze.default(arg2_1, 0)
        unsqueeze_1: "f32[1, 6, 1, 16]" = torch.ops.aten.unsqueeze.default(unsqueeze, 2)
        unsqueeze_2: "f32[1, 6, 16]" = torch.ops.aten.unsqueeze.default(arg3_1, 0)
        unsqueeze_3: "f32[1, 6, 1, 16]" = torch.ops.aten.unsqueeze.default(unsqueeze_2, 2)
        rope_default: "f32[2, 10, 3, 16]" = torch.ops.fusion_passes.rope.default([arg0_1, arg4_1], [arg1_1, arg5_1], [9.999999974752427e-07, 9.999999974752427e-07], [unsqueeze_1, None], [unsqueeze_3, None], [0, 2, 1, 0, 0, 0, 0, 0], [0, 2, 1, 0, 0, 0, 0, 0], 'head', 'none', 16, True, 1, torch.float32)
        return (rope_default,)
""")

    def test_norm_rope_hunyuan_single_prefix_rope(self) -> None:
        """HunyuanVideo single block: both streams are slices of one norm's input, the same weight and eps."""
        args = [randn(B, L + TEXT, H, D), randn(D), *real_tables()]
        pattern = "rms_norm[weight]/fp32 over each head -> rope[interleaved] x2 streams (some unrotated)"
        result = self.check(hunyuan_single_rope, args, torch.float32, [pattern])
        self.assertExpectedInline(result.before, """\
class <lambda>(torch.nn.Module):
    def forward(self, arg0_1: "f32[2, 10, 3, 16]", arg1_1: "f32[16]", arg2_1: "f32[6, 16]", arg3_1: "f32[6, 16]"):
        pow_1: "f32[2, 10, 3, 16]" = torch.ops.aten.pow.Tensor_Scalar(arg0_1, 2)
        mean: "f32[2, 10, 3, 1]" = torch.ops.aten.mean.dim(pow_1, [3], True)
        add: "f32[2, 10, 3, 1]" = torch.ops.aten.add.Scalar(mean, 9.999999974752427e-07)
        rsqrt: "f32[2, 10, 3, 1]" = torch.ops.aten.rsqrt.default(add)
        mul: "f32[2, 10, 3, 16]" = torch.ops.aten.mul.Tensor(arg0_1, rsqrt)
        mul_1: "f32[2, 10, 3, 16]" = torch.ops.aten.mul.Tensor(mul, arg1_1)
        slice_1: "f32[2, 6, 3, 16]" = torch.ops.aten.slice.Tensor(mul_1, 1, 0, -4)
        view: "f32[2, 6, 3, 8, 2]" = torch.ops.aten.reshape.default(slice_1, [2, 6, 3, 8, 2])
        unbind = torch.ops.aten.unbind.int(view, -1)
        getitem: "f32[2, 6, 3, 8]" = unbind[0]
        getitem_1: "f32[2, 6, 3, 8]" = unbind[1]
        unsqueeze: "f32[1, 6, 16]" = torch.ops.aten.unsqueeze.default(arg2_1, 0)
        unsqueeze_1: "f32[1, 6, 1, 16]" = torch.ops.aten.unsqueeze.default(unsqueeze, 2)
        mul_2: "f32[2, 6, 3, 16]" = torch.ops.aten.mul.Tensor(slice_1, unsqueeze_1)
        neg: "f32[2, 6, 3, 8]" = torch.ops.aten.neg.default(getitem_1)
        unsqueeze_4: "f32[2, 6, 3, 8, 1]" = torch.ops.aten.unsqueeze.default(neg, 4)
        unsqueeze_5: "f32[2, 6, 3, 8, 1]" = torch.ops.aten.unsqueeze.default(getitem, 4)
        cat: "f32[2, 6, 3, 8, 2]" = torch.ops.aten.cat.default([unsqueeze_4, unsqueeze_5], -1)
        view_1: "f32[2, 6, 3, 16]" = torch.ops.aten.reshape.default(cat, [2, 6, 3, 16])
        unsqueeze_2: "f32[1, 6, 16]" = torch.ops.aten.unsqueeze.default(arg3_1, 0)
        unsqueeze_3: "f32[1, 6, 1, 16]" = torch.ops.aten.unsqueeze.default(unsqueeze_2, 2)
        mul_3: "f32[2, 6, 3, 16]" = torch.ops.aten.mul.Tensor(view_1, unsqueeze_3)
        add_1: "f32[2, 6, 3, 16]" = torch.ops.aten.add.Tensor(mul_2, mul_3)
        slice_2: "f32[2, 4, 3, 16]" = torch.ops.aten.slice.Tensor(mul_1, 1, -4, 9223372036854775807)
        cat_1: "f32[2, 10, 3, 16]" = torch.ops.aten.cat.default([add_1, slice_2], 1)
        return (cat_1,)
""")
        self.assertExpectedInline(result.after, """\
class <lambda>(torch.nn.Module):
    def forward(self, arg0_1: "f32[2, 10, 3, 16]", arg1_1: "f32[16]", arg2_1: "f32[6, 16]", arg3_1: "f32[6, 16]"):
        unsqueeze: "f32[1, 6, 16]" = torch.ops.aten.unsqueeze.default(arg2_1, 0)
        unsqueeze_1: "f32[1, 6, 1, 16]" = torch.ops.aten.unsqueeze.default(unsqueeze, 2)
        unsqueeze_2: "f32[1, 6, 16]" = torch.ops.aten.unsqueeze.default(arg3_1, 0)
        unsqueeze_3: "f32[1, 6, 1, 16]" = torch.ops.aten.unsqueeze.default(unsqueeze_2, 2)
        slice_tensor: "f32[2, 6, 3, 16]" = torch.ops.aten.slice.Tensor(arg0_1, 1, 0, -4)
        slice_tensor_1: "f32[2, 4, 3, 16]" = torch.ops.aten.slice.Tensor(arg0_1, 1, -4, 9223372036854775807)
        rope_default: "f32[2, 10, 3, 16]" = torch.ops.fusion_passes.rope.default([slice_tensor, slice_tensor_1], [arg1_1, arg1_1], [9.999999974752427e-07, 9.999999974752427e-07], [unsqueeze_1, None], [unsqueeze_3, None], [0, 2, 1, 0, 0, 0, 0, 0], [0, 2, 1, 0, 0, 0, 0, 0], 'head', 'none', 16, True, 1, torch.float32)
        return (rope_default,)
""")

    def test_norm_rope_gqa_q_and_k(self) -> None:
        """q with 4 heads and k with 2 through one function: two calls sharing the table views."""
        args = [randn(B, L, 4, D), randn(B, L, 2, D), randn(D), randn(D), *real_tables()]
        pattern = "rms_norm[weight]/fp32 over each head -> rope[interleaved]"
        result = self.check(gqa_rope, args, torch.float32, [pattern, pattern])
        self.assertExpectedInline(result.before, """\
class <lambda>(torch.nn.Module):
    def forward(self, arg0_1: "f32[2, 6, 4, 16]", arg1_1: "f32[16]", arg2_1: "f32[6, 16]", arg3_1: "f32[6, 16]", arg4_1: "f32[2, 6, 2, 16]", arg5_1: "f32[16]"):
        pow_1: "f32[2, 6, 4, 16]" = torch.ops.aten.pow.Tensor_Scalar(arg0_1, 2)
        mean: "f32[2, 6, 4, 1]" = torch.ops.aten.mean.dim(pow_1, [3], True)
        add: "f32[2, 6, 4, 1]" = torch.ops.aten.add.Scalar(mean, 9.999999974752427e-07)
        rsqrt: "f32[2, 6, 4, 1]" = torch.ops.aten.rsqrt.default(add)
        mul: "f32[2, 6, 4, 16]" = torch.ops.aten.mul.Tensor(arg0_1, rsqrt)
        mul_1: "f32[2, 6, 4, 16]" = torch.ops.aten.mul.Tensor(mul, arg1_1)
        view: "f32[2, 6, 4, 8, 2]" = torch.ops.aten.reshape.default(mul_1, [2, 6, 4, -1, 2])
        unbind = torch.ops.aten.unbind.int(view, -1)
        getitem: "f32[2, 6, 4, 8]" = unbind[0]
        getitem_1: "f32[2, 6, 4, 8]" = unbind[1]
        pow_2: "f32[2, 6, 2, 16]" = torch.ops.aten.pow.Tensor_Scalar(arg4_1, 2)
        mean_1: "f32[2, 6, 2, 1]" = torch.ops.aten.mean.dim(pow_2, [3], True)
        add_2: "f32[2, 6, 2, 1]" = torch.ops.aten.add.Scalar(mean_1, 9.999999974752427e-07)
        rsqrt_1: "f32[2, 6, 2, 1]" = torch.ops.aten.rsqrt.default(add_2)
        mul_4: "f32[2, 6, 2, 16]" = torch.ops.aten.mul.Tensor(arg4_1, rsqrt_1)
        mul_5: "f32[2, 6, 2, 16]" = torch.ops.aten.mul.Tensor(mul_4, arg5_1)
        view_2: "f32[2, 6, 2, 8, 2]" = torch.ops.aten.reshape.default(mul_5, [2, 6, 2, -1, 2])
        unbind_1 = torch.ops.aten.unbind.int(view_2, -1)
        getitem_2: "f32[2, 6, 2, 8]" = unbind_1[0]
        getitem_3: "f32[2, 6, 2, 8]" = unbind_1[1]
        unsqueeze: "f32[1, 6, 16]" = torch.ops.aten.unsqueeze.default(arg2_1, 0)
        unsqueeze_1: "f32[1, 6, 1, 16]" = torch.ops.aten.unsqueeze.default(unsqueeze, 2)
        mul_2: "f32[2, 6, 4, 16]" = torch.ops.aten.mul.Tensor(mul_1, unsqueeze_1)
        neg: "f32[2, 6, 4, 8]" = torch.ops.aten.neg.default(getitem_1)
        unsqueeze_4: "f32[2, 6, 4, 8, 1]" = torch.ops.aten.unsqueeze.default(neg, 4)
        unsqueeze_5: "f32[2, 6, 4, 8, 1]" = torch.ops.aten.unsqueeze.default(getitem, 4)
        cat: "f32[2, 6, 4, 8, 2]" = torch.ops.aten.cat.default([unsqueeze_4, unsqueeze_5], -1)
        view_1: "f32[2, 6, 4, 16]" = torch.ops.aten.reshape.default(cat, [2, 6, 4, 16])
        unsqueeze_2: "f32[1, 6, 16]" = torch.ops.aten.unsqueeze.default(arg3_1, 0)
        unsqueeze_3: "f32[1, 6, 1, 16]" = torch.ops.aten.unsqueeze.default(unsqueeze_2, 2)
        mul_3: "f32[2, 6, 4, 16]" = torch.ops.aten.mul.Tensor(view_1, unsqueeze_3)
        add_1: "f32[2, 6, 4, 16]" = torch.ops.aten.add.Tensor(mul_2, mul_3)
        unsqueeze_6: "f32[1, 6, 16]" = torch.ops.aten.unsqueeze.default(arg2_1, 0)
        unsqueeze_7: "f32[1, 6, 1, 16]" = torch.ops.aten.unsqueeze.default(unsqueeze_6, 2)
        mul_6: "f32[2, 6, 2, 16]" = torch.ops.aten.mul.Tensor(mul_5, unsqueeze_7)
        neg_1: "f32[2, 6, 2, 8]" = torch.ops.aten.neg.default(getitem_3)
        unsqueeze_10: "f32[2, 6, 2, 8, 1]" = torch.ops.aten.unsqueeze.default(neg_1, 4)
        unsqueeze_11: "f32[2, 6, 2, 8, 1]" = torch.ops.aten.unsqueeze.default(getitem_2, 4)
        cat_1: "f32[2, 6, 2, 8, 2]" = torch.ops.aten.cat.default([unsqueeze_10, unsqueeze_11], -1)
        view_3: "f32[2, 6, 2, 16]" = torch.ops.aten.reshape.default(cat_1, [2, 6, 2, 16])
        unsqueeze_8: "f32[1, 6, 16]" = torch.ops.aten.unsqueeze.default(arg3_1, 0)
        unsqueeze_9: "f32[1, 6, 1, 16]" = torch.ops.aten.unsqueeze.default(unsqueeze_8, 2)
        mul_7: "f32[2, 6, 2, 16]" = torch.ops.aten.mul.Tensor(view_3, unsqueeze_9)
        add_3: "f32[2, 6, 2, 16]" = torch.ops.aten.add.Tensor(mul_6, mul_7)
        return (add_1, add_3)
""")
        self.assertExpectedInline(result.after, """\
class <lambda>(torch.nn.Module):
    def forward(self, arg0_1: "f32[2, 6, 4, 16]", arg1_1: "f32[16]", arg2_1: "f32[6, 16]", arg3_1: "f32[6, 16]", arg4_1: "f32[2, 6, 2, 16]", arg5_1: "f32[16]"):
        unsqueeze: "f32[1, 6, 16]" = torch.ops.aten.unsqueeze.default(arg2_1, 0)
        unsqueeze_1: "f32[1, 6, 1, 16]" = torch.ops.aten.unsqueeze.default(unsqueeze, 2)
        unsqueeze_2: "f32[1, 6, 16]" = torch.ops.aten.unsqueeze.default(arg3_1, 0)
        unsqueeze_3: "f32[1, 6, 1, 16]" = torch.ops.aten.unsqueeze.default(unsqueeze_2, 2)
        rope_default_1: "f32[2, 6, 4, 16]" = torch.ops.fusion_passes.rope.default([arg0_1], [arg1_1], [9.999999974752427e-07], [unsqueeze_1], [unsqueeze_3], [0, 2, 1, 0], [0, 2, 1, 0], 'head', 'none', 16, True, 0, torch.float32)
        rope_default: "f32[2, 6, 2, 16]" = torch.ops.fusion_passes.rope.default([arg4_1], [arg5_1], [9.999999974752427e-07], [unsqueeze_1], [unsqueeze_3], [0, 2, 1, 0], [0, 2, 1, 0], 'head', 'none', 16, True, 0, torch.float32)
        return (rope_default_1, rope_default)
""")


# --- Complex rotations leave no complex math ---------------------------------------------------------


def complex_case(name: str, freqs: torch.dtype) -> tuple[Callable[..., Any], list[Any]]:
    """A complex spelling and its inputs, with frequencies of dtype ``freqs``."""
    if name == "rope":
        return qwen_rope, [randn(B, L, H, D), complex_freqs(dtype=freqs)]
    if name == "norm+rope":
        return diffusers_rms_norm_qwen_rope, [randn(B, L, H, D, dtype=BF16), randn(D, dtype=BF16), complex_freqs(dtype=freqs)]
    streams = [randn(B, TEXT, H, D), randn(B, L, H, D), randn(D), randn(D)]
    return qwen_joint_rope, [*streams, complex_freqs(TEXT, freqs), complex_freqs(dtype=freqs)]


@pytest.mark.parametrize("freqs", [torch.complex64, torch.complex128])
@pytest.mark.parametrize("name", ["rope", "norm+rope", "joint"])
def test_fused_complex_rope_leaves_no_complex_math(name: str, freqs: torch.dtype) -> None:
    """After a complex rotation fuses, no view_as_complex/view_as_real and no complex multiply is left."""
    fn, args = complex_case(name, freqs)
    result = capture(fn, *args)
    assert len(rope_records(result)) == 1
    assert "view_as_complex" in result.before
    assert "view_as_complex" not in result.after and "view_as_real" not in result.after
    assert not [line for line in result.after.splitlines() if "aten.mul" in line and re.search(r'"c(64|128)\[', line)]
    assert not rope_misses(result)
    assert_matches_fp64(result, fn, args, args[0].dtype)


# --- Near misses --------------------------------------------------------------------------------------


def wrong_sign_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """``stack([x_imag, -x_real])`` added: a * cos + b * sin, the rotation by minus the angle."""
    x_real, x_imag = interleaved_pairs(x)
    return x * cos[None, :, None] + torch.stack([x_imag, -x_real], dim=-1).flatten(3) * sin[None, :, None]


def cos_only_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Only a cos table: ``x * cos + x`` pairs nothing."""
    return x * cos[None, :, None] + x


def table_twice_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """The cos table multiplied in twice: x * cos * cos is no coefficient the op reads."""
    x_real, x_imag = interleaved_pairs(x)
    rotated = torch.stack([-x_imag, x_real], dim=-1).flatten(3)
    return x * cos[None, :, None] * cos[None, :, None] + rotated * sin[None, :, None]


def pairs_mixed_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Interleaved x, rotated half stacked along -2: column 0's partner is 1, but column 1's is 9."""
    x_real, x_imag = interleaved_pairs(x)
    rotated = torch.stack([-x_imag, x_real], dim=-2).flatten(3)
    return x * cos[None, :, None] + rotated * sin[None, :, None]


NOTHING_FUSES = {
    "wrong-sign": wrong_sign_rope,
    "cos-only": cos_only_rope,
    "table-twice": table_twice_rope,
    "pairs-mixed": pairs_mixed_rope,
}


@pytest.mark.parametrize("name", NOTHING_FUSES)
def test_not_a_rotation_does_not_fuse(name: str) -> None:
    """Chains that are not exactly a rotation stay as they are and compute what eager does."""
    fn = NOTHING_FUSES[name]
    args = [randn(B, L, H, D), *real_tables()]
    result = capture(fn, *args)
    assert rope_records(result) == []
    assert "fusion_passes.rope" not in result.after
    torch.testing.assert_close(result.output, fn(*args))


def rope_with_intermediate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """FLUX's rotation that also returns its rotated half ``stack([-x_imag, x_real])``."""
    x_real, x_imag = interleaved_pairs(x)
    rotated = torch.stack([-x_imag, x_real], dim=-1).flatten(3)
    return x * cos[None, :, None] + rotated * sin[None, :, None], rotated


def test_intermediate_used_elsewhere_does_not_fuse_and_says_why() -> None:
    """A rotation whose intermediate is also an output is a near miss naming that intermediate."""
    args = [randn(B, L, H, D), *real_tables()]
    result = capture(rope_with_intermediate, *args)
    assert rope_records(result) == []
    misses = rope_misses(result)
    assert len(misses) == 1 and "is also returned by the compiled code" in misses[0], misses
    assert "torch.stack([-x_imag, x_real], dim=-1)" in misses[0], misses
    for out, ref in zip(result.output, rope_with_intermediate(*args), strict=True):
        torch.testing.assert_close(out, ref)


def rope_and_norm(x: torch.Tensor, weight: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-head norm, FLUX rotation, and the normalized value returned too."""
    normed = rms_norm(x, weight)
    return flux_rope(normed, cos, sin), normed


def rope_after_norm_over_tokens(x: torch.Tensor, weight: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """A hand-written RMS statistic over dim 1 (the tokens), not over D, then FLUX's rotation."""
    variance = x.pow(2).mean(1, keepdim=True)
    return flux_rope(x * torch.rsqrt(variance + 1e-6) * weight, cos, sin)


@pytest.mark.parametrize(
    ("fn", "record"),
    [
        # The norm's output named by what the user wrote (its expression, or its line before Python 3.11) and where.
        (rope_and_norm, r"rope\[interleaved\] \(norm not absorbed: the norm's output, (?=.*F\.rms_norm\(x, x\.shape\[-1:\], "
                        r"weight, eps\))(?=.*test_rope_patterns\.py:\d+).*, is also used outside the rotation\)"),
        (rope_after_norm_over_tokens, r"rope\[interleaved\]"),
    ],
    ids=["norm-also-returned", "norm-over-dim-1"],
)
def test_norm_not_absorbed_rope_still_fuses(fn: Callable[..., Any], record: str) -> None:
    """The rotation fuses alone (rope, norm 'none') when the norm before it cannot be absorbed; the
    report says why where there is a q/k norm (a statistic over tokens is none)."""
    args = [randn(B, L, H, D), randn(D), *real_tables()]
    result = capture(fn, *args)
    (found,) = rope_records(result)
    assert re.fullmatch(record, found), found
    assert rope_settings(result) == [("none", "none", D, True, 0, "float32")]
    assert "aten.rsqrt" in result.after  # the norm is still computed by the graph
    assert_matches_fp64(result, fn, args, torch.float32)


def joint_one_stream_normed(
    text: torch.Tensor, image: torch.Tensor, text_weight: torch.Tensor, image_weight: torch.Tensor,
    cos: torch.Tensor, sin: torch.Tensor,
) -> torch.Tensor:
    """FLUX's joint rotation where only the text stream is normalized."""
    return flux_rope(torch.cat([rms_norm(text, text_weight), image], dim=1), cos, sin)


def joint_norms_round_differently(
    text: torch.Tensor, image: torch.Tensor, text_weight: torch.Tensor, image_weight: torch.Tensor,
    cos: torch.Tensor, sin: torch.Tensor,
) -> torch.Tensor:
    """FLUX's joint rotation in bf16 with ``F.rms_norm`` on text and diffusers' RMSNorm (rounding twice) on image."""
    return flux_rope(torch.cat([rms_norm(text, text_weight), diffusers_rms_norm(image, image_weight)], dim=1), cos, sin)


@pytest.mark.parametrize(
    ("fn", "dtype", "why"),
    [
        (joint_one_stream_normed, torch.float32, "some streams are normalized and some are not"),
        (joint_norms_round_differently, BF16, "the streams' norms differ in kind or rounding"),
    ],
    ids=["one-normed", "roundings-differ"],
)
def test_joint_streams_with_different_norms_fuse_without_the_norms(fn: Callable[..., Any], dtype: torch.dtype, why: str) -> None:
    """Streams whose norms differ: the cat and the rotation fuse (two streams, table rows each), no norm absorbed."""
    args = [randn(B, TEXT, H, D, dtype=dtype), randn(B, L, H, D, dtype=dtype), randn(D, dtype=dtype), randn(D, dtype=dtype)]
    args += real_tables(TEXT + L)
    result = capture(fn, *args)
    assert rope_records(result) == [f"rope[interleaved] x2 streams (norm not absorbed: {why})"]
    assert rope_settings(result) == [("none", "none", D, True, 1, str(dtype).removeprefix("torch."))]
    assert_matches_fp64(result, fn, args, dtype)


def test_device_not_enabled_does_not_fuse() -> None:
    """A CPU graph compiled with the passes enabled for CUDA only: a near miss naming the device."""
    args = [randn(B, L, H, D), *real_tables()]
    result = capture(flux_rope, *args, devices=("cuda",))
    assert rope_records(result) == []
    assert rope_misses(result) == ["device 'cpu' is not in config.devices ('cuda',)"]
    torch.testing.assert_close(result.output, flux_rope(*args))


# --- Found while writing these tests, fixed in the library --------------------------------------------


def test_fp64_rotation_keeps_fp64_precision() -> None:
    """A rotation computed in fp64 is either left alone or computed in fp64."""
    args = [randn(B, H, L, D, dtype=torch.float64), *(t.double() for t in real_tables(10, interleaved=False))]
    args.append(torch.randint(0, 10, (B, L)))
    result = capture(llm_rope, *args)
    assert relative_error(result.output, llm_rope(*args)) < 1e-12


def rope_rounding_each_product(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """bf16 x, fp32 tables: each product rounded to bf16 (``.to(x.dtype)``) before the bf16 sum."""
    x_real, x_imag = interleaved_pairs(x)
    rotated = torch.stack([-x_imag, x_real], dim=-1).flatten(3)
    return (x * cos[None, :, None]).to(x.dtype) + (rotated * sin[None, :, None]).to(x.dtype)


def test_rounding_before_the_last_step_does_not_fuse() -> None:
    """The family refuses chains rounding to a narrower dtype before their last step; these products do."""
    args = [randn(B, L, H, D, dtype=BF16), *real_tables()]
    result = capture(rope_rounding_each_product, *args)
    assert rope_records(result) == []


def test_f_rms_norm_heads_first_joint_streams_absorb_the_norms() -> None:
    """The [B, H, L, D] joint cat with ``torch.nn.RMSNorm`` / ``F.rms_norm`` absorbs both norms, as with diffusers' RMSNorm."""
    args = [randn(B, TEXT, H * D), randn(B, L, H * D), randn(D), randn(D), *real_tables(TEXT + L)]

    def joint(*operands: torch.Tensor) -> torch.Tensor:
        return heads_first_joint_rope(*operands, norm=rms_norm)

    result = capture(joint, *args)
    assert_matches_fp64(result, joint, args, torch.float32)
    assert rope_settings(result) == [("head", "none", D, True, 2, "float32")]


def test_dynamic_sequence_length_fuses_once_for_every_length() -> None:
    """Under dynamic shapes (sizes also read by sym_size nodes) the chain fuses and is exact at every length."""
    import fusion_passes

    compiled = torch.compile(
        rms_norm_flux_rope, dynamic=True, backend="fusion_passes", options={"fusion_passes": {"devices": ("cpu",)}}
    )
    # The fused call holds for one head dim (guarded): another one recompiles, still exact.
    for tokens, head_dim in ((L, D), (2 * L + 1, D), (L, 2 * D)):
        args = [randn(B, tokens, H, head_dim), randn(head_dim), *real_tables(tokens, head_dim)]
        torch.testing.assert_close(compiled(*args), rms_norm_flux_rope(*args))
    fused = [record.pattern for record in fusion_passes.report().fused]
    assert fused and all(pattern.endswith("-> rope[interleaved]") for pattern in fused)


def rms_norm_divided_by_root_flux_rope(x: torch.Tensor, weight: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """A q/k RMSNorm spelled ``x / sqrt(mean(x**2) + eps)`` (rounded to x's dtype before the weight), then FLUX's rotation."""
    h = x.float()
    return flux_rope((h / torch.sqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6)).to(x.dtype) * weight, cos, sin)


@pytest.mark.parametrize(
    ("dtype", "record"),
    [
        (torch.float32, "rms_norm[weight]/fp32 over each head -> rope[interleaved]"),
        (BF16, "rms_norm[weight,fp32 statistics]/half over each head -> rope[interleaved]"),
    ],
    ids=["fp32", "bf16"],
)
def test_norm_divided_by_its_root_is_absorbed(dtype: torch.dtype, record: str) -> None:
    """The division spelling of the norm is absorbed like ``x * rsqrt(...)`` (equal within two fp32 ulps)."""
    args = [randn(B, L, H, D, dtype=dtype), randn(D, dtype=dtype), *real_tables()]
    result = capture(rms_norm_divided_by_root_flux_rope, *args)
    assert rope_records(result) == [record]
    assert_matches_fp64(result, rms_norm_divided_by_root_flux_rope, args, dtype)


# --- Found by the generated programs (tests/test_generated_programs.py) -----------------------------


def test_slice_assignment_into_empty_like_of_a_transposed_x_fuses() -> None:
    """``empty_like`` of a transposed x is ``empty`` then ``permute`` in the graph: still a tensor no
    element of which is written before the scatters, so Wan's rotation of that x fuses."""
    cos, sin = real_tables()
    args = [randn(B, H, L, D).transpose(1, 2), cos[None, :, None], sin[None, :, None]]
    result = capture(wan_rope, *args)
    assert rope_records(result) == ["rope[interleaved, slice assignment]"]
    assert_matches_fp64(result, wan_rope, args, torch.float32)


def qk_norm_then_transpose(x: torch.Tensor, weight: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """transformers' Qwen3 attention: q_norm over D on [B, L, H, D], then ``transpose(1, 2)``, then rotate_half."""
    q = rms_norm(x, weight).transpose(1, 2)
    return q * cos[None, None] + rotate_half(q) * sin[None, None]


def norm_across_heads_then_transpose(x: torch.Tensor, weight: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """An RMSNorm over all heads of [B, L, H * D], the head split, then ``transpose(1, 2)`` to [B, H, L, D]."""
    q = rms_norm(x, weight).unflatten(-1, (H, D)).transpose(1, 2)
    return interleaved_rotation(q, cos[None, None], sin[None, None])


@pytest.mark.parametrize(
    ("fn", "x", "weight_size", "interleaved"),
    [
        (qk_norm_then_transpose, lambda: randn(B, L, H, D), D, False),
        # The norm of a transposed x: a clone between the norm and the transpose back.
        (qk_norm_then_transpose, lambda: randn(B, H, L, D).transpose(1, 2), D, False),
        (norm_across_heads_then_transpose, lambda: randn(B, L, H * D), H * D, True),
    ],
)
def test_a_norm_read_through_a_transpose_is_reported_as_not_absorbed(
    fn: Callable[..., Any], x: Callable[[], torch.Tensor], weight_size: int, interleaved: bool
) -> None:
    """The rotation fuses without the norm, and the report says why instead of dropping the norm silently."""
    args = [x(), randn(weight_size), *real_tables(interleaved=interleaved)]
    result = capture(fn, *args)
    (pattern,) = rope_records(result)
    assert re.fullmatch(
        r"rope\[(interleaved|half-split)\] \(norm not absorbed: the rotation reads the norm's output \w+ through a permute "
        r"\(\[B, L, H, D\] to \[B, H, L, D\]\), which the fused op does not absorb\)",
        pattern,
    ), pattern
    assert_matches_fp64(result, fn, args, torch.float32)


def weightless_norm_across_heads_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """``F.rms_norm`` without weight over all heads of ``[B, L, H * D]``, the head split, then the interleaved rotation."""
    q = F.rms_norm(x, x.shape[-1:], None, 1e-6).unflatten(-1, (H, D))
    return interleaved_rotation(q, cos[:, None], sin[:, None])


def test_weightless_norm_across_heads_is_absorbed() -> None:
    """The weightless norm's pattern is ``x * rsqrt(v)`` or ``x / sqrt(v)`` at its root: it matches
    however many users the norm's output has (it was neither absorbed nor reported)."""
    args = [randn(B, L, H * D), *real_tables(interleaved=True)]
    result = capture(weightless_norm_across_heads_rope, *args)
    assert rope_records(result) == ["rms_norm/fp32 over all heads -> rope[interleaved]"]
    assert_matches_fp64(result, weightless_norm_across_heads_rope, args, torch.float32)


def rotate_half_by_symbolic_half(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """transformers' rotate_half with the half taken from x's (symbolic, under dynamic=True) size."""
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin


def compile_dynamic_rotate_half(args: list[torch.Tensor]) -> torch.Tensor:
    """``rotate_half_by_symbolic_half`` compiled with dynamic=True on CPU; its output."""
    fusion_passes.reset_report()
    compiled = torch.compile(rotate_half_by_symbolic_half, backend="fusion_passes", dynamic=True,
                             options={"fusion_passes": {"devices": ("cpu",)}})
    return compiled(*args)


def test_symbolic_slice_bounds_are_specialized() -> None:
    """Under dynamic=True the rotation's slice bounds are computed sizes (``x.shape[-1] // 2``): the
    interpreter takes their values (the head dim is a constant of the fused op), so the rotation fuses."""
    args = [randn(1, 3, 2, 16), *(table[:, None] for table in real_tables(tokens=3, dim=16, interleaved=False))]
    torch.testing.assert_close(compile_dynamic_rotate_half(args), rotate_half_by_symbolic_half(*args))
    assert [record.pattern for record in fusion_passes.report().fused] == ["rope[half-split]"]


def test_a_rotation_the_interpreter_fails_on_is_a_near_miss(monkeypatch: pytest.MonkeyPatch) -> None:
    """A failure of our own interpreter leaves the rotation to Inductor and the report says so (it
    used to be a log line only)."""
    from fusion_passes.rope import columns

    def failing(self, node):
        raise TypeError("a failure of the interpreter")

    monkeypatch.setattr(columns.Interpreter, "evaluate", failing)
    args = [randn(1, 3, 2, 16), *(table[:, None] for table in real_tables(tokens=3, dim=16, interleaved=False))]
    torch.testing.assert_close(compile_dynamic_rotate_half(args), rotate_half_by_symbolic_half(*args))
    reasons = [miss.reason for miss in fusion_passes.report().near_misses]
    assert reasons and all("the fusion's interpretation failed on this chain (TypeError: a failure of the interpreter)"
                           in reason for reason in reasons), reasons
