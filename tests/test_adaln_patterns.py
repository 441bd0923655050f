"""AdaLN patterns (adaln, residual_adaln, select01): graph before/after per form, numerics of the rewritten graph, near misses."""

import dataclasses
import types

import pytest
import torch
import torch.nn.functional as F
import helpers
from graph_capture import capture
from helpers import as_tuple, assert_matches_fp64

import fusion_passes
from fusion_passes.adaln import ADALN, RESIDUAL_FORMS, ChainForm
from fusion_passes.kernels.adaln import MAX_HIDDEN

# --- adaln spellings --------------------------------------------------------------------------------


def flux_style(x, emb):
    """No-affine LN, [B, C] chunks of one linear output indexed [:, None] (FLUX AdaLayerNormZero)."""
    shift, scale, _gate = emb.chunk(3, dim=1)
    return F.layer_norm(x, x.shape[-1:], eps=1e-6) * (1 + scale[:, None]) + shift[:, None]


def affine_3d_modulation(x, weight, bias, scale, shift):
    """LN with weight and bias, [B, 1, C] modulation, default eps."""
    return F.layer_norm(x, x.shape[-1:], weight, bias) * (1 + scale) + shift


def rms_norm_scale_only(x, weight, scale):
    """F.rms_norm with weight, scale only (no shift)."""
    return F.rms_norm(x, x.shape[-1:], weight, 1e-6) * (1 + scale)


def hand_written_rms_norm_shift_first(x, weight, scale, shift):
    """diffusers' RMSNorm (fp32 statistics, rounded before its weight), operands in the other order."""
    variance = x.to(torch.float32).pow(2).mean(-1, keepdim=True)
    normed = (x * torch.rsqrt(variance + 1e-6)).to(weight.dtype) * weight
    return shift + (1 + scale) * normed


def rms_norm_divided_by_root(x, scale, shift):
    """An RMSNorm spelled ``x / sqrt(mean(x**2) + eps)`` (fp32 statistics, rounded to x's dtype), then AdaLN."""
    h = x.float()
    normed = (h / torch.sqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6)).to(x.dtype)
    return normed * (1 + scale) + shift


def fp32_upcast_form(x, scale, shift):
    """Wan: normalize x.float(), fp32 modulation, cast back with type_as."""
    return (F.layer_norm(x.float(), x.shape[-1:], eps=1e-6) * (1 + scale) + shift).type_as(x)


def one_plus_scale_elsewhere(x, emb):
    """FLUX's AdaLayerNormContinuous: (1 + scale) computed on [B, C], then unsqueezed."""
    scale, shift = emb.chunk(2, dim=1)
    return F.layer_norm(x, x.shape[-1:], eps=1e-6) * (1 + scale)[:, None, :] + shift[:, None, :]


def per_token_modulation(x, table, temb):
    """Wan with a [B, L] timestep: [B, L, 6, C] modulation split and squeezed to [B, L, C]."""
    shift, scale, *_ = (table + temb.float()).chunk(6, dim=2)
    return (F.layer_norm(x.float(), x.shape[-1:], eps=1e-6) * (1 + scale.squeeze(2)) + shift.squeeze(2)).type_as(x)


def per_frame_modulation(x, scale, shift):
    """x [B, L, C] viewed [B, F, L/F, C] with [B, F, 1, C] modulation per frame."""
    batch, frames = scale.shape[:2]
    x = x.view(batch, frames, -1, x.shape[-1])
    return F.layer_norm(x, x.shape[-1:], eps=1e-6) * (1 + scale) + shift


def one_norm_two_modulations(x, emb):
    """SD3.5's dual AdaLN: one no-affine LN, modulated twice (attention and its second branch)."""
    shift, scale, _gate, shift2, scale2, _gate2 = emb.chunk(6, dim=1)
    normed = F.layer_norm(x, x.shape[-1:], eps=1e-6)
    return normed * (1 + scale[:, None]) + shift[:, None], normed * (1 + scale2[:, None]) + shift2[:, None]


# --- residual_adaln spellings --------------------------------------------------------------------------------


def gated_residual(residual, x, emb):
    """FLUX/Qwen: r = residual + gate * x (all half), then the next modulated norm; r used later."""
    shift, scale, gate = emb.chunk(3, dim=1)
    r = residual + gate[:, None] * x
    return r, F.layer_norm(r, r.shape[-1:], eps=1e-6) * (1 + scale[:, None]) + shift[:, None]


def gated_residual_x_times_gate(residual, x, gate, scale, shift):
    """HunyuanVideo: residual + x * gate on a transposed (non-contiguous) residual."""
    r = residual.transpose(1, 2) + x * gate
    return r, F.layer_norm(r, r.shape[-1:], eps=1e-6) * (1 + scale) + shift


def gated_residual_fp32_form(residual, x, gate, scale, shift):
    """Wan: (residual.float() + x * gate).type_as(residual), then the fp32-upcast norm."""
    r = (residual.float() + x * gate).type_as(residual)
    return r, (F.layer_norm(r.float(), r.shape[-1:], eps=1e-6) * (1 + scale) + shift).type_as(r)


def plain_residual(residual, x, scale, shift):
    """Wan's norm3: residual + x (no gate)."""
    r = residual + x
    return r, F.layer_norm(r, r.shape[-1:], eps=1e-6) * (1 + scale) + shift


def llm_residual_rms_norm(residual, x, weight):
    """An LLM's residual add, then transformers' LlamaRMSNorm / Qwen3RMSNorm: fp32 statistics, the
    normalized value rounded to r's dtype before the weight; no modulation, r used later."""
    r = residual + x
    h = r.to(torch.float32)
    variance = h.pow(2).mean(-1, keepdim=True)
    h = h * torch.rsqrt(variance + 1e-6)
    return weight * h.to(r.dtype), r


def llm_residual_zero_centred_rms_norm(residual, x, weight):
    """The zero-centred weight of the same norm: ``(1 + weight) * h.to(r.dtype)``."""
    r = residual + x
    h = r.to(torch.float32)
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6)
    return (1 + weight) * h.to(r.dtype), r


def residual_torch_rms_norm(residual, x, weight):
    """``F.rms_norm`` / ``nn.RMSNorm`` with weight after the residual add (rounded once, after the weight)."""
    r = residual + x
    return F.rms_norm(r, r.shape[-1:], weight, 1e-6), r


# --- select01 spellings --------------------------------------------------------------------------------


def select01(x, index, emb0, emb1):
    """Qwen-Image edit: per-token choice between two modulation sets by index == 0."""
    shift0, scale0, _ = emb0.chunk(3, dim=1)
    shift1, scale1, _ = emb1.chunk(3, dim=1)
    chosen = index[..., None] == 0
    scale = torch.where(chosen, scale0[:, None], scale1[:, None])
    shift = torch.where(chosen, shift0[:, None], shift1[:, None])
    return F.layer_norm(x, x.shape[-1:], eps=1e-6) * (1 + scale) + shift


def select01_residual(residual, x, index, emb0, emb1):
    """residual_adaln with every operand chosen per token, ``index.bool()`` spelling (1 picks the second set)."""
    shift0, scale0, gate0 = emb0.chunk(3, dim=1)
    shift1, scale1, gate1 = emb1.chunk(3, dim=1)
    reference_token = index.bool()[..., None]
    gate = torch.where(reference_token, gate1[:, None], gate0[:, None])
    r = residual + gate * x
    scale = torch.where(reference_token, scale1[:, None], scale0[:, None])
    shift = torch.where(reference_token, shift1[:, None], shift0[:, None])
    return r, F.layer_norm(r, r.shape[-1:], eps=1e-6) * (1 + scale) + shift


def randn(*shape, dtype=torch.float32):
    return torch.randn(shape, dtype=dtype)


class GraphDiffTest(helpers.GraphDiffTest):
    """Each form's post-grad graph before and after the pass, pinned; ``check`` compares the fusions per family."""

    def test_adaln_flux_style_fp32(self):
        result = self.check(flux_style, [randn(2, 8, 16), randn(2, 48)], torch.float32, {"adaln": 1})
        self.assertExpectedInline(result.before, """\
class <lambda>(torch.nn.Module):
    def forward(self, arg0_1: "f32[2, 48]", arg1_1: "f32[2, 8, 16]"):
        split = torch.ops.aten.split.Tensor(arg0_1, 16, 1)
        getitem: "f32[2, 16]" = split[0]
        getitem_1: "f32[2, 16]" = split[1]
        var_mean = torch.ops.aten.var_mean.correction(arg1_1, [2], correction = 0, keepdim = True)
        getitem_3: "f32[2, 8, 1]" = var_mean[0]
        getitem_4: "f32[2, 8, 1]" = var_mean[1]
        sub: "f32[2, 8, 16]" = torch.ops.aten.sub.Tensor(arg1_1, getitem_4)
        add: "f32[2, 8, 1]" = torch.ops.aten.add.Tensor(getitem_3, 1e-06)
        rsqrt: "f32[2, 8, 1]" = torch.ops.aten.rsqrt.default(add)
        mul: "f32[2, 8, 16]" = torch.ops.aten.mul.Tensor(sub, rsqrt)
        unsqueeze: "f32[2, 1, 16]" = torch.ops.aten.unsqueeze.default(getitem_1, 1)
        add_1: "f32[2, 1, 16]" = torch.ops.aten.add.Tensor(unsqueeze, 1)
        mul_1: "f32[2, 8, 16]" = torch.ops.aten.mul.Tensor(mul, add_1)
        unsqueeze_1: "f32[2, 1, 16]" = torch.ops.aten.unsqueeze.default(getitem, 1)
        add_2: "f32[2, 8, 16]" = torch.ops.aten.add.Tensor(mul_1, unsqueeze_1)
        return (add_2,)
""")
        self.assertExpectedInline(result.after, """\
class <lambda>(torch.nn.Module):
    def forward(self, arg0_1: "f32[2, 48]", arg1_1: "f32[2, 8, 16]"):
        split = torch.ops.aten.split.Tensor(arg0_1, 16, 1)
        getitem: "f32[2, 16]" = split[0]
        getitem_1: "f32[2, 16]" = split[1]
        unsqueeze: "f32[2, 1, 16]" = torch.ops.aten.unsqueeze.default(getitem_1, 1)
        unsqueeze_1: "f32[2, 1, 16]" = torch.ops.aten.unsqueeze.default(getitem, 1)
        norm_modulate_default: "f32[2, 8, 16]" = torch.ops.fusion_passes.norm_modulate.default(arg1_1, None, None, [unsqueeze], [unsqueeze_1], None, 1e-06, 'layer', True, 'none', torch.float32)
        return (norm_modulate_default,)
""")

    def test_adaln_flux_style_bf16(self):
        args = [randn(2, 8, 16, dtype=torch.bfloat16), randn(2, 48, dtype=torch.bfloat16)]
        result = self.check(flux_style, args, torch.bfloat16, {"adaln": 1})
        self.assertExpectedInline(result.before, """\
class <lambda>(torch.nn.Module):
    def forward(self, arg0_1: "bf16[2, 48]", arg1_1: "bf16[2, 8, 16]"):
        split = torch.ops.aten.split.Tensor(arg0_1, 16, 1)
        getitem: "bf16[2, 16]" = split[0]
        getitem_1: "bf16[2, 16]" = split[1]
        convert_element_type: "f32[2, 8, 16]" = torch.ops.prims.convert_element_type.default(arg1_1, torch.float32)
        var_mean = torch.ops.aten.var_mean.correction(convert_element_type, [2], correction = 0, keepdim = True)
        getitem_3: "f32[2, 8, 1]" = var_mean[0]
        getitem_4: "f32[2, 8, 1]" = var_mean[1]
        sub: "f32[2, 8, 16]" = torch.ops.aten.sub.Tensor(convert_element_type, getitem_4)
        add: "f32[2, 8, 1]" = torch.ops.aten.add.Tensor(getitem_3, 1e-06)
        rsqrt: "f32[2, 8, 1]" = torch.ops.aten.rsqrt.default(add)
        mul: "f32[2, 8, 16]" = torch.ops.aten.mul.Tensor(sub, rsqrt)
        convert_element_type_1: "bf16[2, 8, 16]" = torch.ops.prims.convert_element_type.default(mul, torch.bfloat16)
        unsqueeze: "bf16[2, 1, 16]" = torch.ops.aten.unsqueeze.default(getitem_1, 1)
        add_1: "bf16[2, 1, 16]" = torch.ops.aten.add.Tensor(unsqueeze, 1)
        mul_1: "bf16[2, 8, 16]" = torch.ops.aten.mul.Tensor(convert_element_type_1, add_1)
        unsqueeze_1: "bf16[2, 1, 16]" = torch.ops.aten.unsqueeze.default(getitem, 1)
        add_2: "bf16[2, 8, 16]" = torch.ops.aten.add.Tensor(mul_1, unsqueeze_1)
        return (add_2,)
""")
        self.assertExpectedInline(result.after, """\
class <lambda>(torch.nn.Module):
    def forward(self, arg0_1: "bf16[2, 48]", arg1_1: "bf16[2, 8, 16]"):
        split = torch.ops.aten.split.Tensor(arg0_1, 16, 1)
        getitem: "bf16[2, 16]" = split[0]
        getitem_1: "bf16[2, 16]" = split[1]
        unsqueeze: "bf16[2, 1, 16]" = torch.ops.aten.unsqueeze.default(getitem_1, 1)
        unsqueeze_1: "bf16[2, 1, 16]" = torch.ops.aten.unsqueeze.default(getitem, 1)
        norm_modulate_default: "bf16[2, 8, 16]" = torch.ops.fusion_passes.norm_modulate.default(arg1_1, None, None, [unsqueeze], [unsqueeze_1], None, 1e-06, 'layer', True, 'after_affine', torch.bfloat16)
        return (norm_modulate_default,)
""")

    def test_adaln_layer_norm_weight_bias_fp32(self):
        args = [randn(2, 8, 16), randn(16), randn(16), randn(2, 1, 16), randn(2, 1, 16)]
        result = self.check(affine_3d_modulation, args, torch.float32, {"adaln": 1})
        self.assertExpectedInline(result.before, """\
class <lambda>(torch.nn.Module):
    def forward(self, arg0_1: "f32[2, 8, 16]", arg1_1: "f32[16]", arg2_1: "f32[16]", arg3_1: "f32[2, 1, 16]", arg4_1: "f32[2, 1, 16]"):
        var_mean = torch.ops.aten.var_mean.correction(arg0_1, [2], correction = 0, keepdim = True)
        getitem: "f32[2, 8, 1]" = var_mean[0]
        getitem_1: "f32[2, 8, 1]" = var_mean[1]
        sub: "f32[2, 8, 16]" = torch.ops.aten.sub.Tensor(arg0_1, getitem_1)
        add: "f32[2, 8, 1]" = torch.ops.aten.add.Tensor(getitem, 1e-05)
        rsqrt: "f32[2, 8, 1]" = torch.ops.aten.rsqrt.default(add)
        mul: "f32[2, 8, 16]" = torch.ops.aten.mul.Tensor(sub, rsqrt)
        mul_1: "f32[2, 8, 16]" = torch.ops.aten.mul.Tensor(mul, arg1_1)
        add_1: "f32[2, 8, 16]" = torch.ops.aten.add.Tensor(mul_1, arg2_1)
        add_2: "f32[2, 1, 16]" = torch.ops.aten.add.Tensor(arg3_1, 1)
        mul_2: "f32[2, 8, 16]" = torch.ops.aten.mul.Tensor(add_1, add_2)
        add_3: "f32[2, 8, 16]" = torch.ops.aten.add.Tensor(mul_2, arg4_1)
        return (add_3,)
""")
        self.assertExpectedInline(result.after, """\
class <lambda>(torch.nn.Module):
    def forward(self, arg0_1: "f32[2, 8, 16]", arg1_1: "f32[16]", arg2_1: "f32[16]", arg3_1: "f32[2, 1, 16]", arg4_1: "f32[2, 1, 16]"):
        norm_modulate_default: "f32[2, 8, 16]" = torch.ops.fusion_passes.norm_modulate.default(arg0_1, arg1_1, arg2_1, [arg3_1], [arg4_1], None, 1e-05, 'layer', True, 'none', torch.float32)
        return (norm_modulate_default,)
""")

    def test_adaln_rms_norm_scale_only_bf16(self):
        args = [randn(2, 8, 16, dtype=torch.bfloat16), randn(16, dtype=torch.bfloat16), randn(2, 1, 16, dtype=torch.bfloat16)]
        result = self.check(rms_norm_scale_only, args, torch.bfloat16, {"adaln": 1})
        self.assertExpectedInline(result.before, """\
class <lambda>(torch.nn.Module):
    def forward(self, arg0_1: "bf16[2, 8, 16]", arg1_1: "bf16[16]", arg2_1: "bf16[2, 1, 16]"):
        convert_element_type: "f32[2, 8, 16]" = torch.ops.prims.convert_element_type.default(arg0_1, torch.float32)
        pow_1: "f32[2, 8, 16]" = torch.ops.aten.pow.Tensor_Scalar(convert_element_type, 2)
        mean: "f32[2, 8, 1]" = torch.ops.aten.mean.dim(pow_1, [2], True)
        add: "f32[2, 8, 1]" = torch.ops.aten.add.Scalar(mean, 9.999999974752427e-07)
        rsqrt: "f32[2, 8, 1]" = torch.ops.aten.rsqrt.default(add)
        mul: "f32[2, 8, 16]" = torch.ops.aten.mul.Tensor(convert_element_type, rsqrt)
        mul_1: "f32[2, 8, 16]" = torch.ops.aten.mul.Tensor(mul, arg1_1)
        convert_element_type_1: "bf16[2, 8, 16]" = torch.ops.prims.convert_element_type.default(mul_1, torch.bfloat16)
        add_1: "bf16[2, 1, 16]" = torch.ops.aten.add.Tensor(arg2_1, 1)
        mul_2: "bf16[2, 8, 16]" = torch.ops.aten.mul.Tensor(convert_element_type_1, add_1)
        return (mul_2,)
""")
        self.assertExpectedInline(result.after, """\
class <lambda>(torch.nn.Module):
    def forward(self, arg0_1: "bf16[2, 8, 16]", arg1_1: "bf16[16]", arg2_1: "bf16[2, 1, 16]"):
        norm_modulate_default: "bf16[2, 8, 16]" = torch.ops.fusion_passes.norm_modulate.default(arg0_1, arg1_1, None, [arg2_1], [], None, 9.999999974752427e-07, 'rms', True, 'after_affine', torch.bfloat16)
        return (norm_modulate_default,)
""")

    def test_adaln_hand_written_rms_norm_bf16(self):
        args = [randn(2, 8, 16, dtype=torch.bfloat16), randn(16, dtype=torch.bfloat16)]
        args += [randn(2, 1, 16, dtype=torch.bfloat16), randn(2, 1, 16, dtype=torch.bfloat16)]
        result = self.check(hand_written_rms_norm_shift_first, args, torch.bfloat16, {"adaln": 1})
        self.assertExpectedInline(result.before, """\
class <lambda>(torch.nn.Module):
    def forward(self, arg0_1: "bf16[2, 8, 16]", arg1_1: "bf16[16]", arg2_1: "bf16[2, 1, 16]", arg3_1: "bf16[2, 1, 16]"):
        add_1: "bf16[2, 1, 16]" = torch.ops.aten.add.Tensor(arg2_1, 1)
        convert_element_type: "f32[2, 8, 16]" = torch.ops.prims.convert_element_type.default(arg0_1, torch.float32)
        pow_1: "f32[2, 8, 16]" = torch.ops.aten.pow.Tensor_Scalar(convert_element_type, 2)
        mean: "f32[2, 8, 1]" = torch.ops.aten.mean.dim(pow_1, [-1], True)
        add: "f32[2, 8, 1]" = torch.ops.aten.add.Tensor(mean, 1e-06)
        rsqrt: "f32[2, 8, 1]" = torch.ops.aten.rsqrt.default(add)
        mul: "f32[2, 8, 16]" = torch.ops.aten.mul.Tensor(arg0_1, rsqrt)
        convert_element_type_1: "bf16[2, 8, 16]" = torch.ops.prims.convert_element_type.default(mul, torch.bfloat16)
        mul_1: "bf16[2, 8, 16]" = torch.ops.aten.mul.Tensor(convert_element_type_1, arg1_1)
        mul_2: "bf16[2, 8, 16]" = torch.ops.aten.mul.Tensor(add_1, mul_1)
        add_2: "bf16[2, 8, 16]" = torch.ops.aten.add.Tensor(arg3_1, mul_2)
        return (add_2,)
""")
        self.assertExpectedInline(result.after, """\
class <lambda>(torch.nn.Module):
    def forward(self, arg0_1: "bf16[2, 8, 16]", arg1_1: "bf16[16]", arg2_1: "bf16[2, 1, 16]", arg3_1: "bf16[2, 1, 16]"):
        norm_modulate_default: "bf16[2, 8, 16]" = torch.ops.fusion_passes.norm_modulate.default(arg0_1, arg1_1, None, [arg2_1], [arg3_1], None, 1e-06, 'rms', True, 'before_weight', torch.bfloat16)
        return (norm_modulate_default,)
""")

    def test_adaln_rms_norm_divided_by_root_bf16(self):
        # x / sqrt(v) is x * rsqrt(v) within two fp32 ulps: the op computes the latter.
        args = [randn(2, 8, 16, dtype=torch.bfloat16), randn(2, 1, 16, dtype=torch.bfloat16), randn(2, 1, 16, dtype=torch.bfloat16)]
        result = self.check(rms_norm_divided_by_root, args, torch.bfloat16, {"adaln": 1})
        self.assertExpectedInline(result.before, """\
class <lambda>(torch.nn.Module):
    def forward(self, arg0_1: "bf16[2, 8, 16]", arg1_1: "bf16[2, 1, 16]", arg2_1: "bf16[2, 1, 16]"):
        convert_element_type: "f32[2, 8, 16]" = torch.ops.prims.convert_element_type.default(arg0_1, torch.float32)
        pow_1: "f32[2, 8, 16]" = torch.ops.aten.pow.Tensor_Scalar(convert_element_type, 2)
        mean: "f32[2, 8, 1]" = torch.ops.aten.mean.dim(pow_1, [-1], True)
        add: "f32[2, 8, 1]" = torch.ops.aten.add.Tensor(mean, 1e-06)
        sqrt: "f32[2, 8, 1]" = torch.ops.aten.sqrt.default(add)
        div: "f32[2, 8, 16]" = torch.ops.aten.div.Tensor(convert_element_type, sqrt)
        convert_element_type_1: "bf16[2, 8, 16]" = torch.ops.prims.convert_element_type.default(div, torch.bfloat16)
        add_1: "bf16[2, 1, 16]" = torch.ops.aten.add.Tensor(arg1_1, 1)
        mul: "bf16[2, 8, 16]" = torch.ops.aten.mul.Tensor(convert_element_type_1, add_1)
        add_2: "bf16[2, 8, 16]" = torch.ops.aten.add.Tensor(mul, arg2_1)
        return (add_2,)
""")
        self.assertExpectedInline(result.after, """\
class <lambda>(torch.nn.Module):
    def forward(self, arg0_1: "bf16[2, 8, 16]", arg1_1: "bf16[2, 1, 16]", arg2_1: "bf16[2, 1, 16]"):
        norm_modulate_default: "bf16[2, 8, 16]" = torch.ops.fusion_passes.norm_modulate.default(arg0_1, None, None, [arg1_1], [arg2_1], None, 1e-06, 'rms', True, 'after_affine', torch.bfloat16)
        return (norm_modulate_default,)
""")

    def test_adaln_rms_norm_divided_by_root_fp32(self):
        args = [randn(2, 8, 16), randn(2, 1, 16), randn(2, 1, 16)]
        result = self.check(rms_norm_divided_by_root, args, torch.float32, {"adaln": 1})
        self.assertExpectedInline(result.after, """\
class <lambda>(torch.nn.Module):
    def forward(self, arg0_1: "f32[2, 8, 16]", arg1_1: "f32[2, 1, 16]", arg2_1: "f32[2, 1, 16]"):
        norm_modulate_default: "f32[2, 8, 16]" = torch.ops.fusion_passes.norm_modulate.default(arg0_1, None, None, [arg1_1], [arg2_1], None, 1e-06, 'rms', True, 'none', torch.float32)
        return (norm_modulate_default,)
""")
        torch.testing.assert_close(result.output, rms_norm_divided_by_root(*args), rtol=1e-5, atol=1e-5)

    def test_adaln_fp32_upcast_form_bf16(self):
        args = [randn(2, 8, 16, dtype=torch.bfloat16), randn(2, 1, 16), randn(2, 1, 16)]
        result = self.check(fp32_upcast_form, args, torch.bfloat16, {"adaln": 1})
        self.assertExpectedInline(result.before, """\
class <lambda>(torch.nn.Module):
    def forward(self, arg0_1: "bf16[2, 8, 16]", arg1_1: "f32[2, 1, 16]", arg2_1: "f32[2, 1, 16]"):
        convert_element_type: "f32[2, 8, 16]" = torch.ops.prims.convert_element_type.default(arg0_1, torch.float32)
        var_mean = torch.ops.aten.var_mean.correction(convert_element_type, [2], correction = 0, keepdim = True)
        getitem: "f32[2, 8, 1]" = var_mean[0]
        getitem_1: "f32[2, 8, 1]" = var_mean[1]
        sub: "f32[2, 8, 16]" = torch.ops.aten.sub.Tensor(convert_element_type, getitem_1)
        add: "f32[2, 8, 1]" = torch.ops.aten.add.Tensor(getitem, 1e-06)
        rsqrt: "f32[2, 8, 1]" = torch.ops.aten.rsqrt.default(add)
        mul: "f32[2, 8, 16]" = torch.ops.aten.mul.Tensor(sub, rsqrt)
        add_1: "f32[2, 1, 16]" = torch.ops.aten.add.Tensor(arg1_1, 1)
        mul_1: "f32[2, 8, 16]" = torch.ops.aten.mul.Tensor(mul, add_1)
        add_2: "f32[2, 8, 16]" = torch.ops.aten.add.Tensor(mul_1, arg2_1)
        convert_element_type_1: "bf16[2, 8, 16]" = torch.ops.prims.convert_element_type.default(add_2, torch.bfloat16)
        return (convert_element_type_1,)
""")
        self.assertExpectedInline(result.after, """\
class <lambda>(torch.nn.Module):
    def forward(self, arg0_1: "bf16[2, 8, 16]", arg1_1: "f32[2, 1, 16]", arg2_1: "f32[2, 1, 16]"):
        norm_modulate_default: "bf16[2, 8, 16]" = torch.ops.fusion_passes.norm_modulate.default(arg0_1, None, None, [arg1_1], [arg2_1], None, 1e-06, 'layer', True, 'none', torch.bfloat16)
        return (norm_modulate_default,)
""")

    def test_adaln_one_plus_scale_elsewhere_fp32(self):
        result = self.check(one_plus_scale_elsewhere, [randn(2, 8, 16), randn(2, 32)], torch.float32, {"adaln": 1})
        self.assertExpectedInline(result.before, """\
class <lambda>(torch.nn.Module):
    def forward(self, arg0_1: "f32[2, 32]", arg1_1: "f32[2, 8, 16]"):
        split = torch.ops.aten.split.Tensor(arg0_1, 16, 1)
        getitem: "f32[2, 16]" = split[0]
        getitem_1: "f32[2, 16]" = split[1]
        var_mean = torch.ops.aten.var_mean.correction(arg1_1, [2], correction = 0, keepdim = True)
        getitem_2: "f32[2, 8, 1]" = var_mean[0]
        getitem_3: "f32[2, 8, 1]" = var_mean[1]
        sub: "f32[2, 8, 16]" = torch.ops.aten.sub.Tensor(arg1_1, getitem_3)
        add: "f32[2, 8, 1]" = torch.ops.aten.add.Tensor(getitem_2, 1e-06)
        rsqrt: "f32[2, 8, 1]" = torch.ops.aten.rsqrt.default(add)
        mul: "f32[2, 8, 16]" = torch.ops.aten.mul.Tensor(sub, rsqrt)
        add_1: "f32[2, 16]" = torch.ops.aten.add.Tensor(getitem, 1)
        unsqueeze: "f32[2, 1, 16]" = torch.ops.aten.unsqueeze.default(add_1, 1)
        mul_1: "f32[2, 8, 16]" = torch.ops.aten.mul.Tensor(mul, unsqueeze)
        unsqueeze_1: "f32[2, 1, 16]" = torch.ops.aten.unsqueeze.default(getitem_1, 1)
        add_2: "f32[2, 8, 16]" = torch.ops.aten.add.Tensor(mul_1, unsqueeze_1)
        return (add_2,)
""")
        self.assertExpectedInline(result.after, """\
class <lambda>(torch.nn.Module):
    def forward(self, arg0_1: "f32[2, 32]", arg1_1: "f32[2, 8, 16]"):
        split = torch.ops.aten.split.Tensor(arg0_1, 16, 1)
        getitem: "f32[2, 16]" = split[0]
        getitem_1: "f32[2, 16]" = split[1]
        unsqueeze_1: "f32[2, 1, 16]" = torch.ops.aten.unsqueeze.default(getitem_1, 1)
        unsqueeze_default: "f32[2, 1, 16]" = torch.ops.aten.unsqueeze.default(getitem, 1)
        norm_modulate_default: "f32[2, 8, 16]" = torch.ops.fusion_passes.norm_modulate.default(arg1_1, None, None, [unsqueeze_default], [unsqueeze_1], None, 1e-06, 'layer', True, 'none', torch.float32)
        return (norm_modulate_default,)
""")

    def test_adaln_per_token_modulation_bf16(self):
        args = [randn(2, 8, 16, dtype=torch.bfloat16), randn(1, 1, 6, 16), randn(2, 8, 6, 16, dtype=torch.bfloat16)]
        result = self.check(per_token_modulation, args, torch.bfloat16, {"adaln": 1})
        self.assertExpectedInline(result.before, """\
class <lambda>(torch.nn.Module):
    def forward(self, arg0_1: "bf16[2, 8, 6, 16]", arg1_1: "f32[1, 1, 6, 16]", arg2_1: "bf16[2, 8, 16]"):
        convert_element_type: "f32[2, 8, 6, 16]" = torch.ops.prims.convert_element_type.default(arg0_1, torch.float32)
        add: "f32[2, 8, 6, 16]" = torch.ops.aten.add.Tensor(arg1_1, convert_element_type)
        split = torch.ops.aten.split.Tensor(add, 1, 2)
        getitem: "f32[2, 8, 1, 16]" = split[0]
        getitem_1: "f32[2, 8, 1, 16]" = split[1]
        convert_element_type_1: "f32[2, 8, 16]" = torch.ops.prims.convert_element_type.default(arg2_1, torch.float32)
        var_mean = torch.ops.aten.var_mean.correction(convert_element_type_1, [2], correction = 0, keepdim = True)
        getitem_6: "f32[2, 8, 1]" = var_mean[0]
        getitem_7: "f32[2, 8, 1]" = var_mean[1]
        sub: "f32[2, 8, 16]" = torch.ops.aten.sub.Tensor(convert_element_type_1, getitem_7)
        add_1: "f32[2, 8, 1]" = torch.ops.aten.add.Tensor(getitem_6, 1e-06)
        rsqrt: "f32[2, 8, 1]" = torch.ops.aten.rsqrt.default(add_1)
        mul: "f32[2, 8, 16]" = torch.ops.aten.mul.Tensor(sub, rsqrt)
        squeeze: "f32[2, 8, 16]" = torch.ops.aten.squeeze.dim(getitem_1, 2)
        add_2: "f32[2, 8, 16]" = torch.ops.aten.add.Tensor(squeeze, 1)
        mul_1: "f32[2, 8, 16]" = torch.ops.aten.mul.Tensor(mul, add_2)
        squeeze_1: "f32[2, 8, 16]" = torch.ops.aten.squeeze.dim(getitem, 2)
        add_3: "f32[2, 8, 16]" = torch.ops.aten.add.Tensor(mul_1, squeeze_1)
        convert_element_type_2: "bf16[2, 8, 16]" = torch.ops.prims.convert_element_type.default(add_3, torch.bfloat16)
        return (convert_element_type_2,)
""")
        self.assertExpectedInline(result.after, """\
class <lambda>(torch.nn.Module):
    def forward(self, arg0_1: "bf16[2, 8, 6, 16]", arg1_1: "f32[1, 1, 6, 16]", arg2_1: "bf16[2, 8, 16]"):
        convert_element_type: "f32[2, 8, 6, 16]" = torch.ops.prims.convert_element_type.default(arg0_1, torch.float32)
        add: "f32[2, 8, 6, 16]" = torch.ops.aten.add.Tensor(arg1_1, convert_element_type)
        split = torch.ops.aten.split.Tensor(add, 1, 2)
        getitem: "f32[2, 8, 1, 16]" = split[0]
        getitem_1: "f32[2, 8, 1, 16]" = split[1]
        squeeze: "f32[2, 8, 16]" = torch.ops.aten.squeeze.dim(getitem_1, 2)
        squeeze_1: "f32[2, 8, 16]" = torch.ops.aten.squeeze.dim(getitem, 2)
        norm_modulate_default: "bf16[2, 8, 16]" = torch.ops.fusion_passes.norm_modulate.default(arg2_1, None, None, [squeeze], [squeeze_1], None, 1e-06, 'layer', True, 'none', torch.bfloat16)
        return (norm_modulate_default,)
""")

    def test_adaln_per_frame_modulation_fp32(self):
        args = [randn(2, 12, 16), randn(2, 3, 1, 16), randn(2, 3, 1, 16)]
        result = self.check(per_frame_modulation, args, torch.float32, {"adaln": 1})
        self.assertExpectedInline(result.before, """\
class <lambda>(torch.nn.Module):
    def forward(self, arg0_1: "f32[2, 3, 1, 16]", arg1_1: "f32[2, 12, 16]", arg2_1: "f32[2, 3, 1, 16]"):
        view: "f32[2, 3, 4, 16]" = torch.ops.aten.reshape.default(arg1_1, [2, 3, -1, 16])
        var_mean = torch.ops.aten.var_mean.correction(view, [3], correction = 0, keepdim = True)
        getitem: "f32[2, 3, 4, 1]" = var_mean[0]
        getitem_1: "f32[2, 3, 4, 1]" = var_mean[1]
        sub: "f32[2, 3, 4, 16]" = torch.ops.aten.sub.Tensor(view, getitem_1)
        add: "f32[2, 3, 4, 1]" = torch.ops.aten.add.Tensor(getitem, 1e-06)
        rsqrt: "f32[2, 3, 4, 1]" = torch.ops.aten.rsqrt.default(add)
        mul: "f32[2, 3, 4, 16]" = torch.ops.aten.mul.Tensor(sub, rsqrt)
        add_1: "f32[2, 3, 1, 16]" = torch.ops.aten.add.Tensor(arg0_1, 1)
        mul_1: "f32[2, 3, 4, 16]" = torch.ops.aten.mul.Tensor(mul, add_1)
        add_2: "f32[2, 3, 4, 16]" = torch.ops.aten.add.Tensor(mul_1, arg2_1)
        return (add_2,)
""")
        self.assertExpectedInline(result.after, """\
class <lambda>(torch.nn.Module):
    def forward(self, arg0_1: "f32[2, 3, 1, 16]", arg1_1: "f32[2, 12, 16]", arg2_1: "f32[2, 3, 1, 16]"):
        view: "f32[2, 3, 4, 16]" = torch.ops.aten.reshape.default(arg1_1, [2, 3, -1, 16])
        norm_modulate_default: "f32[2, 3, 4, 16]" = torch.ops.fusion_passes.norm_modulate.default(view, None, None, [arg0_1], [arg2_1], None, 1e-06, 'layer', True, 'none', torch.float32)
        return (norm_modulate_default,)
""")

    def test_adaln_one_norm_two_modulations_bf16(self):
        args = [randn(2, 8, 16, dtype=torch.bfloat16), randn(2, 96, dtype=torch.bfloat16)]
        result = self.check(one_norm_two_modulations, args, torch.bfloat16, {"adaln": 1})
        self.assertExpectedInline(result.before, """\
class <lambda>(torch.nn.Module):
    def forward(self, arg0_1: "bf16[2, 96]", arg1_1: "bf16[2, 8, 16]"):
        split = torch.ops.aten.split.Tensor(arg0_1, 16, 1)
        getitem: "bf16[2, 16]" = split[0]
        getitem_1: "bf16[2, 16]" = split[1]
        getitem_3: "bf16[2, 16]" = split[3]
        getitem_4: "bf16[2, 16]" = split[4]
        convert_element_type: "f32[2, 8, 16]" = torch.ops.prims.convert_element_type.default(arg1_1, torch.float32)
        var_mean = torch.ops.aten.var_mean.correction(convert_element_type, [2], correction = 0, keepdim = True)
        getitem_6: "f32[2, 8, 1]" = var_mean[0]
        getitem_7: "f32[2, 8, 1]" = var_mean[1]
        sub: "f32[2, 8, 16]" = torch.ops.aten.sub.Tensor(convert_element_type, getitem_7)
        add: "f32[2, 8, 1]" = torch.ops.aten.add.Tensor(getitem_6, 1e-06)
        rsqrt: "f32[2, 8, 1]" = torch.ops.aten.rsqrt.default(add)
        mul: "f32[2, 8, 16]" = torch.ops.aten.mul.Tensor(sub, rsqrt)
        convert_element_type_1: "bf16[2, 8, 16]" = torch.ops.prims.convert_element_type.default(mul, torch.bfloat16)
        unsqueeze: "bf16[2, 1, 16]" = torch.ops.aten.unsqueeze.default(getitem_1, 1)
        add_1: "bf16[2, 1, 16]" = torch.ops.aten.add.Tensor(unsqueeze, 1)
        mul_1: "bf16[2, 8, 16]" = torch.ops.aten.mul.Tensor(convert_element_type_1, add_1)
        unsqueeze_1: "bf16[2, 1, 16]" = torch.ops.aten.unsqueeze.default(getitem, 1)
        add_2: "bf16[2, 8, 16]" = torch.ops.aten.add.Tensor(mul_1, unsqueeze_1)
        unsqueeze_2: "bf16[2, 1, 16]" = torch.ops.aten.unsqueeze.default(getitem_4, 1)
        add_3: "bf16[2, 1, 16]" = torch.ops.aten.add.Tensor(unsqueeze_2, 1)
        mul_2: "bf16[2, 8, 16]" = torch.ops.aten.mul.Tensor(convert_element_type_1, add_3)
        unsqueeze_3: "bf16[2, 1, 16]" = torch.ops.aten.unsqueeze.default(getitem_3, 1)
        add_4: "bf16[2, 8, 16]" = torch.ops.aten.add.Tensor(mul_2, unsqueeze_3)
        return (add_2, add_4)
""")
        self.assertExpectedInline(result.after, """\
class <lambda>(torch.nn.Module):
    def forward(self, arg0_1: "bf16[2, 96]", arg1_1: "bf16[2, 8, 16]"):
        split = torch.ops.aten.split.Tensor(arg0_1, 16, 1)
        getitem: "bf16[2, 16]" = split[0]
        getitem_1: "bf16[2, 16]" = split[1]
        getitem_3: "bf16[2, 16]" = split[3]
        getitem_4: "bf16[2, 16]" = split[4]
        unsqueeze: "bf16[2, 1, 16]" = torch.ops.aten.unsqueeze.default(getitem_1, 1)
        unsqueeze_1: "bf16[2, 1, 16]" = torch.ops.aten.unsqueeze.default(getitem, 1)
        unsqueeze_2: "bf16[2, 1, 16]" = torch.ops.aten.unsqueeze.default(getitem_4, 1)
        unsqueeze_3: "bf16[2, 1, 16]" = torch.ops.aten.unsqueeze.default(getitem_3, 1)
        norm_modulate_pair_default = torch.ops.fusion_passes.norm_modulate_pair.default(arg1_1, None, None, [unsqueeze_2], [unsqueeze_3], [unsqueeze], [unsqueeze_1], 1e-06, 'layer', True, 'after_affine', torch.bfloat16, torch.bfloat16)
        getitem_8: "bf16[2, 8, 16]" = norm_modulate_pair_default[0]
        getitem_9: "bf16[2, 8, 16]" = norm_modulate_pair_default[1]
        return (getitem_9, getitem_8)
""")
        self.assertTrue(result.report.fused[0].pattern.endswith(" x2"))

    def test_residual_adaln_gated_residual_bf16(self):
        args = [randn(2, 8, 16, dtype=torch.bfloat16), randn(2, 8, 16, dtype=torch.bfloat16), randn(2, 48, dtype=torch.bfloat16)]
        result = self.check(gated_residual, args, torch.bfloat16, {"residual_adaln": 1})
        self.assertExpectedInline(result.before, """\
class <lambda>(torch.nn.Module):
    def forward(self, arg0_1: "bf16[2, 48]", arg1_1: "bf16[2, 8, 16]", arg2_1: "bf16[2, 8, 16]"):
        split = torch.ops.aten.split.Tensor(arg0_1, 16, 1)
        getitem: "bf16[2, 16]" = split[0]
        getitem_1: "bf16[2, 16]" = split[1]
        getitem_2: "bf16[2, 16]" = split[2]
        unsqueeze: "bf16[2, 1, 16]" = torch.ops.aten.unsqueeze.default(getitem_2, 1)
        mul: "bf16[2, 8, 16]" = torch.ops.aten.mul.Tensor(unsqueeze, arg1_1)
        add: "bf16[2, 8, 16]" = torch.ops.aten.add.Tensor(arg2_1, mul)
        convert_element_type: "f32[2, 8, 16]" = torch.ops.prims.convert_element_type.default(add, torch.float32)
        var_mean = torch.ops.aten.var_mean.correction(convert_element_type, [2], correction = 0, keepdim = True)
        getitem_3: "f32[2, 8, 1]" = var_mean[0]
        getitem_4: "f32[2, 8, 1]" = var_mean[1]
        sub: "f32[2, 8, 16]" = torch.ops.aten.sub.Tensor(convert_element_type, getitem_4)
        add_1: "f32[2, 8, 1]" = torch.ops.aten.add.Tensor(getitem_3, 1e-06)
        rsqrt: "f32[2, 8, 1]" = torch.ops.aten.rsqrt.default(add_1)
        mul_1: "f32[2, 8, 16]" = torch.ops.aten.mul.Tensor(sub, rsqrt)
        convert_element_type_1: "bf16[2, 8, 16]" = torch.ops.prims.convert_element_type.default(mul_1, torch.bfloat16)
        unsqueeze_1: "bf16[2, 1, 16]" = torch.ops.aten.unsqueeze.default(getitem_1, 1)
        add_2: "bf16[2, 1, 16]" = torch.ops.aten.add.Tensor(unsqueeze_1, 1)
        mul_2: "bf16[2, 8, 16]" = torch.ops.aten.mul.Tensor(convert_element_type_1, add_2)
        unsqueeze_2: "bf16[2, 1, 16]" = torch.ops.aten.unsqueeze.default(getitem, 1)
        add_3: "bf16[2, 8, 16]" = torch.ops.aten.add.Tensor(mul_2, unsqueeze_2)
        return (add, add_3)
""")
        self.assertExpectedInline(result.after, """\
class <lambda>(torch.nn.Module):
    def forward(self, arg0_1: "bf16[2, 48]", arg1_1: "bf16[2, 8, 16]", arg2_1: "bf16[2, 8, 16]"):
        split = torch.ops.aten.split.Tensor(arg0_1, 16, 1)
        getitem: "bf16[2, 16]" = split[0]
        getitem_1: "bf16[2, 16]" = split[1]
        getitem_2: "bf16[2, 16]" = split[2]
        unsqueeze: "bf16[2, 1, 16]" = torch.ops.aten.unsqueeze.default(getitem_2, 1)
        unsqueeze_1: "bf16[2, 1, 16]" = torch.ops.aten.unsqueeze.default(getitem_1, 1)
        unsqueeze_2: "bf16[2, 1, 16]" = torch.ops.aten.unsqueeze.default(getitem, 1)
        residual_norm_modulate_default = torch.ops.fusion_passes.residual_norm_modulate.default(arg2_1, arg1_1, [unsqueeze], None, None, [unsqueeze_1], [unsqueeze_2], None, 1e-06, 'layer', True, 'after_affine', torch.bfloat16, torch.bfloat16)
        getitem_5: "bf16[2, 8, 16]" = residual_norm_modulate_default[0]
        getitem_6: "bf16[2, 8, 16]" = residual_norm_modulate_default[1]
        return (getitem_6, getitem_5)
""")

    def test_residual_adaln_x_times_gate_strided_residual_fp32(self):
        args = [randn(2, 16, 8), randn(2, 8, 16), randn(2, 1, 16), randn(2, 1, 16), randn(2, 1, 16)]
        result = self.check(gated_residual_x_times_gate, args, torch.float32, {"residual_adaln": 1})
        self.assertExpectedInline(result.before, """\
class <lambda>(torch.nn.Module):
    def forward(self, arg0_1: "f32[2, 16, 8]", arg1_1: "f32[2, 8, 16]", arg2_1: "f32[2, 1, 16]", arg3_1: "f32[2, 1, 16]", arg4_1: "f32[2, 1, 16]"):
        permute: "f32[2, 8, 16]" = torch.ops.aten.permute.default(arg0_1, [0, 2, 1])
        mul: "f32[2, 8, 16]" = torch.ops.aten.mul.Tensor(arg1_1, arg2_1)
        add: "f32[2, 8, 16]" = torch.ops.aten.add.Tensor(permute, mul)
        clone: "f32[2, 8, 16]" = torch.ops.aten.clone.default(add, memory_format = torch.contiguous_format)
        var_mean = torch.ops.aten.var_mean.correction(clone, [2], correction = 0, keepdim = True)
        getitem: "f32[2, 8, 1]" = var_mean[0]
        getitem_1: "f32[2, 8, 1]" = var_mean[1]
        sub: "f32[2, 8, 16]" = torch.ops.aten.sub.Tensor(clone, getitem_1)
        add_1: "f32[2, 8, 1]" = torch.ops.aten.add.Tensor(getitem, 1e-06)
        rsqrt: "f32[2, 8, 1]" = torch.ops.aten.rsqrt.default(add_1)
        mul_1: "f32[2, 8, 16]" = torch.ops.aten.mul.Tensor(sub, rsqrt)
        add_2: "f32[2, 1, 16]" = torch.ops.aten.add.Tensor(arg3_1, 1)
        mul_2: "f32[2, 8, 16]" = torch.ops.aten.mul.Tensor(mul_1, add_2)
        add_3: "f32[2, 8, 16]" = torch.ops.aten.add.Tensor(mul_2, arg4_1)
        return (add, add_3)
""")
        self.assertExpectedInline(result.after, """\
class <lambda>(torch.nn.Module):
    def forward(self, arg0_1: "f32[2, 16, 8]", arg1_1: "f32[2, 8, 16]", arg2_1: "f32[2, 1, 16]", arg3_1: "f32[2, 1, 16]", arg4_1: "f32[2, 1, 16]"):
        permute: "f32[2, 8, 16]" = torch.ops.aten.permute.default(arg0_1, [0, 2, 1])
        residual_norm_modulate_default = torch.ops.fusion_passes.residual_norm_modulate.default(permute, arg1_1, [arg2_1], None, None, [arg3_1], [arg4_1], None, 1e-06, 'layer', True, 'none', torch.float32, torch.float32)
        getitem_2: "f32[2, 8, 16]" = residual_norm_modulate_default[0]
        getitem_3: "f32[2, 8, 16]" = residual_norm_modulate_default[1]
        return (getitem_3, getitem_2)
""")

    def test_residual_adaln_fp32_form_bf16(self):
        args = [randn(2, 8, 16, dtype=torch.bfloat16), randn(2, 8, 16, dtype=torch.bfloat16)]
        args += [randn(2, 1, 16), randn(2, 1, 16), randn(2, 1, 16)]
        result = self.check(gated_residual_fp32_form, args, torch.bfloat16, {"residual_adaln": 1})
        self.assertExpectedInline(result.before, """\
class <lambda>(torch.nn.Module):
    def forward(self, arg0_1: "bf16[2, 8, 16]", arg1_1: "bf16[2, 8, 16]", arg2_1: "f32[2, 1, 16]", arg3_1: "f32[2, 1, 16]", arg4_1: "f32[2, 1, 16]"):
        convert_element_type: "f32[2, 8, 16]" = torch.ops.prims.convert_element_type.default(arg0_1, torch.float32)
        mul: "f32[2, 8, 16]" = torch.ops.aten.mul.Tensor(arg1_1, arg2_1)
        add: "f32[2, 8, 16]" = torch.ops.aten.add.Tensor(convert_element_type, mul)
        convert_element_type_1: "bf16[2, 8, 16]" = torch.ops.prims.convert_element_type.default(add, torch.bfloat16)
        convert_element_type_2: "f32[2, 8, 16]" = torch.ops.prims.convert_element_type.default(convert_element_type_1, torch.float32)
        var_mean = torch.ops.aten.var_mean.correction(convert_element_type_2, [2], correction = 0, keepdim = True)
        getitem: "f32[2, 8, 1]" = var_mean[0]
        getitem_1: "f32[2, 8, 1]" = var_mean[1]
        sub: "f32[2, 8, 16]" = torch.ops.aten.sub.Tensor(convert_element_type_2, getitem_1)
        add_1: "f32[2, 8, 1]" = torch.ops.aten.add.Tensor(getitem, 1e-06)
        rsqrt: "f32[2, 8, 1]" = torch.ops.aten.rsqrt.default(add_1)
        mul_1: "f32[2, 8, 16]" = torch.ops.aten.mul.Tensor(sub, rsqrt)
        add_2: "f32[2, 1, 16]" = torch.ops.aten.add.Tensor(arg3_1, 1)
        mul_2: "f32[2, 8, 16]" = torch.ops.aten.mul.Tensor(mul_1, add_2)
        add_3: "f32[2, 8, 16]" = torch.ops.aten.add.Tensor(mul_2, arg4_1)
        convert_element_type_3: "bf16[2, 8, 16]" = torch.ops.prims.convert_element_type.default(add_3, torch.bfloat16)
        return (convert_element_type_1, convert_element_type_3)
""")
        self.assertExpectedInline(result.after, """\
class <lambda>(torch.nn.Module):
    def forward(self, arg0_1: "bf16[2, 8, 16]", arg1_1: "bf16[2, 8, 16]", arg2_1: "f32[2, 1, 16]", arg3_1: "f32[2, 1, 16]", arg4_1: "f32[2, 1, 16]"):
        residual_norm_modulate_default = torch.ops.fusion_passes.residual_norm_modulate.default(arg0_1, arg1_1, [arg2_1], None, None, [arg3_1], [arg4_1], None, 1e-06, 'layer', True, 'none', torch.bfloat16, torch.bfloat16)
        getitem_2: "bf16[2, 8, 16]" = residual_norm_modulate_default[0]
        getitem_3: "bf16[2, 8, 16]" = residual_norm_modulate_default[1]
        return (getitem_3, getitem_2)
""")

    def test_residual_adaln_without_gate_fp32(self):
        args = [randn(2, 8, 16), randn(2, 8, 16), randn(2, 1, 16), randn(2, 1, 16)]
        result = self.check(plain_residual, args, torch.float32, {"residual_adaln": 1})
        self.assertExpectedInline(result.before, """\
class <lambda>(torch.nn.Module):
    def forward(self, arg0_1: "f32[2, 8, 16]", arg1_1: "f32[2, 8, 16]", arg2_1: "f32[2, 1, 16]", arg3_1: "f32[2, 1, 16]"):
        add: "f32[2, 8, 16]" = torch.ops.aten.add.Tensor(arg0_1, arg1_1)
        var_mean = torch.ops.aten.var_mean.correction(add, [2], correction = 0, keepdim = True)
        getitem: "f32[2, 8, 1]" = var_mean[0]
        getitem_1: "f32[2, 8, 1]" = var_mean[1]
        sub: "f32[2, 8, 16]" = torch.ops.aten.sub.Tensor(add, getitem_1)
        add_1: "f32[2, 8, 1]" = torch.ops.aten.add.Tensor(getitem, 1e-06)
        rsqrt: "f32[2, 8, 1]" = torch.ops.aten.rsqrt.default(add_1)
        mul: "f32[2, 8, 16]" = torch.ops.aten.mul.Tensor(sub, rsqrt)
        add_2: "f32[2, 1, 16]" = torch.ops.aten.add.Tensor(arg2_1, 1)
        mul_1: "f32[2, 8, 16]" = torch.ops.aten.mul.Tensor(mul, add_2)
        add_3: "f32[2, 8, 16]" = torch.ops.aten.add.Tensor(mul_1, arg3_1)
        return (add, add_3)
""")
        self.assertExpectedInline(result.after, """\
class <lambda>(torch.nn.Module):
    def forward(self, arg0_1: "f32[2, 8, 16]", arg1_1: "f32[2, 8, 16]", arg2_1: "f32[2, 1, 16]", arg3_1: "f32[2, 1, 16]"):
        residual_norm_modulate_default = torch.ops.fusion_passes.residual_norm_modulate.default(arg0_1, arg1_1, [], None, None, [arg2_1], [arg3_1], None, 1e-06, 'layer', True, 'none', torch.float32, torch.float32)
        getitem_2: "f32[2, 8, 16]" = residual_norm_modulate_default[0]
        getitem_3: "f32[2, 8, 16]" = residual_norm_modulate_default[1]
        return (getitem_3, getitem_2)
""")

    def test_residual_adaln_llm_rms_norm_bf16(self):
        # The weight is the same for every row: the op multiplies the normalized value by it as a
        # bare scale (False: no 1 +), after rounding it to r's dtype ('after_affine' of a norm with
        # no affine), as ``weight * h.to(r.dtype)`` does.
        args = [randn(2, 8, 16, dtype=torch.bfloat16), randn(2, 8, 16, dtype=torch.bfloat16), randn(16, dtype=torch.bfloat16)]
        result = self.check(llm_residual_rms_norm, args, torch.bfloat16, {"residual_adaln": 1})
        self.assertEqual([record.pattern for record in result.report.fused], ["residual+x -> rms_norm/half*weight"])
        self.assertExpectedInline(result.before, """\
class <lambda>(torch.nn.Module):
    def forward(self, arg0_1: "bf16[2, 8, 16]", arg1_1: "bf16[2, 8, 16]", arg2_1: "bf16[16]"):
        add: "bf16[2, 8, 16]" = torch.ops.aten.add.Tensor(arg0_1, arg1_1)
        convert_element_type: "f32[2, 8, 16]" = torch.ops.prims.convert_element_type.default(add, torch.float32)
        pow_1: "f32[2, 8, 16]" = torch.ops.aten.pow.Tensor_Scalar(convert_element_type, 2)
        mean: "f32[2, 8, 1]" = torch.ops.aten.mean.dim(pow_1, [-1], True)
        add_1: "f32[2, 8, 1]" = torch.ops.aten.add.Tensor(mean, 1e-06)
        rsqrt: "f32[2, 8, 1]" = torch.ops.aten.rsqrt.default(add_1)
        mul: "f32[2, 8, 16]" = torch.ops.aten.mul.Tensor(convert_element_type, rsqrt)
        convert_element_type_1: "bf16[2, 8, 16]" = torch.ops.prims.convert_element_type.default(mul, torch.bfloat16)
        mul_1: "bf16[2, 8, 16]" = torch.ops.aten.mul.Tensor(arg2_1, convert_element_type_1)
        return (mul_1, add)
""")
        self.assertExpectedInline(result.after, """\
class <lambda>(torch.nn.Module):
    def forward(self, arg0_1: "bf16[2, 8, 16]", arg1_1: "bf16[2, 8, 16]", arg2_1: "bf16[16]"):
        residual_norm_modulate_default = torch.ops.fusion_passes.residual_norm_modulate.default(arg0_1, arg1_1, [], None, None, [arg2_1], [], None, 1e-06, 'rms', False, 'after_affine', torch.bfloat16, torch.bfloat16)
        getitem: "bf16[2, 8, 16]" = residual_norm_modulate_default[0]
        getitem_1: "bf16[2, 8, 16]" = residual_norm_modulate_default[1]
        return (getitem, getitem_1)
""")
        # The same rounding points as eager: bit-identical on CPU, where the op runs its reference.
        for out, expected in zip(result.output, llm_residual_rms_norm(*args), strict=True):
            self.assertTrue(torch.equal(out, expected))

    def test_residual_adaln_llm_rms_norm_fp32(self):
        args = [randn(2, 8, 16), randn(2, 8, 16), randn(16)]
        result = self.check(llm_residual_rms_norm, args, torch.float32, {"residual_adaln": 1})
        self.assertExpectedInline(result.after, """\
class <lambda>(torch.nn.Module):
    def forward(self, arg0_1: "f32[2, 8, 16]", arg1_1: "f32[2, 8, 16]", arg2_1: "f32[16]"):
        residual_norm_modulate_default = torch.ops.fusion_passes.residual_norm_modulate.default(arg0_1, arg1_1, [], None, None, [arg2_1], [], None, 1e-06, 'rms', False, 'none', torch.float32, torch.float32)
        getitem: "f32[2, 8, 16]" = residual_norm_modulate_default[0]
        getitem_1: "f32[2, 8, 16]" = residual_norm_modulate_default[1]
        return (getitem, getitem_1)
""")

    def test_adaln_per_token_modulation_choice_fp32(self):
        args = [randn(2, 8, 16), torch.randint(0, 2, (2, 8)), randn(2, 48), randn(2, 48)]
        result = self.check(select01, args, torch.float32, {"adaln": 1})
        self.assertExpectedInline(result.before, """\
class <lambda>(torch.nn.Module):
    def forward(self, arg0_1: "f32[2, 48]", arg1_1: "f32[2, 48]", arg2_1: "i64[2, 8]", arg3_1: "f32[2, 8, 16]"):
        split = torch.ops.aten.split.Tensor(arg0_1, 16, 1)
        getitem: "f32[2, 16]" = split[0]
        getitem_1: "f32[2, 16]" = split[1]
        split_1 = torch.ops.aten.split.Tensor(arg1_1, 16, 1)
        getitem_3: "f32[2, 16]" = split_1[0]
        getitem_4: "f32[2, 16]" = split_1[1]
        var_mean = torch.ops.aten.var_mean.correction(arg3_1, [2], correction = 0, keepdim = True)
        getitem_6: "f32[2, 8, 1]" = var_mean[0]
        getitem_7: "f32[2, 8, 1]" = var_mean[1]
        sub: "f32[2, 8, 16]" = torch.ops.aten.sub.Tensor(arg3_1, getitem_7)
        add: "f32[2, 8, 1]" = torch.ops.aten.add.Tensor(getitem_6, 1e-06)
        rsqrt: "f32[2, 8, 1]" = torch.ops.aten.rsqrt.default(add)
        mul: "f32[2, 8, 16]" = torch.ops.aten.mul.Tensor(sub, rsqrt)
        unsqueeze: "i64[2, 8, 1]" = torch.ops.aten.unsqueeze.default(arg2_1, 2)
        eq: "b8[2, 8, 1]" = torch.ops.aten.eq.Scalar(unsqueeze, 0)
        unsqueeze_1: "f32[2, 1, 16]" = torch.ops.aten.unsqueeze.default(getitem_1, 1)
        unsqueeze_2: "f32[2, 1, 16]" = torch.ops.aten.unsqueeze.default(getitem_4, 1)
        where: "f32[2, 8, 16]" = torch.ops.aten.where.self(eq, unsqueeze_1, unsqueeze_2)
        add_1: "f32[2, 8, 16]" = torch.ops.aten.add.Tensor(where, 1)
        mul_1: "f32[2, 8, 16]" = torch.ops.aten.mul.Tensor(mul, add_1)
        unsqueeze_3: "f32[2, 1, 16]" = torch.ops.aten.unsqueeze.default(getitem, 1)
        unsqueeze_4: "f32[2, 1, 16]" = torch.ops.aten.unsqueeze.default(getitem_3, 1)
        where_1: "f32[2, 8, 16]" = torch.ops.aten.where.self(eq, unsqueeze_3, unsqueeze_4)
        add_2: "f32[2, 8, 16]" = torch.ops.aten.add.Tensor(mul_1, where_1)
        return (add_2,)
""")
        self.assertExpectedInline(result.after, """\
class <lambda>(torch.nn.Module):
    def forward(self, arg0_1: "f32[2, 48]", arg1_1: "f32[2, 48]", arg2_1: "i64[2, 8]", arg3_1: "f32[2, 8, 16]"):
        split = torch.ops.aten.split.Tensor(arg0_1, 16, 1)
        getitem: "f32[2, 16]" = split[0]
        getitem_1: "f32[2, 16]" = split[1]
        split_1 = torch.ops.aten.split.Tensor(arg1_1, 16, 1)
        getitem_3: "f32[2, 16]" = split_1[0]
        getitem_4: "f32[2, 16]" = split_1[1]
        unsqueeze: "i64[2, 8, 1]" = torch.ops.aten.unsqueeze.default(arg2_1, 2)
        eq: "b8[2, 8, 1]" = torch.ops.aten.eq.Scalar(unsqueeze, 0)
        unsqueeze_1: "f32[2, 1, 16]" = torch.ops.aten.unsqueeze.default(getitem_1, 1)
        unsqueeze_2: "f32[2, 1, 16]" = torch.ops.aten.unsqueeze.default(getitem_4, 1)
        unsqueeze_3: "f32[2, 1, 16]" = torch.ops.aten.unsqueeze.default(getitem, 1)
        unsqueeze_4: "f32[2, 1, 16]" = torch.ops.aten.unsqueeze.default(getitem_3, 1)
        norm_modulate_default: "f32[2, 8, 16]" = torch.ops.fusion_passes.norm_modulate.default(arg3_1, None, None, [unsqueeze_1, unsqueeze_2], [unsqueeze_3, unsqueeze_4], eq, 1e-06, 'layer', True, 'none', torch.float32)
        return (norm_modulate_default,)
""")
        self.assertIn("select01", result.report.fused[0].pattern)

    def test_residual_adaln_per_token_modulation_choice_bf16(self):
        args = [randn(2, 8, 16, dtype=torch.bfloat16), randn(2, 8, 16, dtype=torch.bfloat16), torch.randint(0, 2, (2, 8))]
        args += [randn(2, 48, dtype=torch.bfloat16), randn(2, 48, dtype=torch.bfloat16)]
        result = self.check(select01_residual, args, torch.bfloat16, {"residual_adaln": 1})
        self.assertExpectedInline(result.before, """\
class <lambda>(torch.nn.Module):
    def forward(self, arg0_1: "bf16[2, 48]", arg1_1: "bf16[2, 48]", arg2_1: "i64[2, 8]", arg3_1: "bf16[2, 8, 16]", arg4_1: "bf16[2, 8, 16]"):
        split = torch.ops.aten.split.Tensor(arg0_1, 16, 1)
        getitem: "bf16[2, 16]" = split[0]
        getitem_1: "bf16[2, 16]" = split[1]
        getitem_2: "bf16[2, 16]" = split[2]
        split_1 = torch.ops.aten.split.Tensor(arg1_1, 16, 1)
        getitem_3: "bf16[2, 16]" = split_1[0]
        getitem_4: "bf16[2, 16]" = split_1[1]
        getitem_5: "bf16[2, 16]" = split_1[2]
        convert_element_type: "b8[2, 8]" = torch.ops.prims.convert_element_type.default(arg2_1, torch.bool)
        unsqueeze: "b8[2, 8, 1]" = torch.ops.aten.unsqueeze.default(convert_element_type, 2)
        unsqueeze_1: "bf16[2, 1, 16]" = torch.ops.aten.unsqueeze.default(getitem_5, 1)
        unsqueeze_2: "bf16[2, 1, 16]" = torch.ops.aten.unsqueeze.default(getitem_2, 1)
        where: "bf16[2, 8, 16]" = torch.ops.aten.where.self(unsqueeze, unsqueeze_1, unsqueeze_2)
        mul: "bf16[2, 8, 16]" = torch.ops.aten.mul.Tensor(where, arg3_1)
        add: "bf16[2, 8, 16]" = torch.ops.aten.add.Tensor(arg4_1, mul)
        convert_element_type_1: "f32[2, 8, 16]" = torch.ops.prims.convert_element_type.default(add, torch.float32)
        var_mean = torch.ops.aten.var_mean.correction(convert_element_type_1, [2], correction = 0, keepdim = True)
        getitem_6: "f32[2, 8, 1]" = var_mean[0]
        getitem_7: "f32[2, 8, 1]" = var_mean[1]
        sub: "f32[2, 8, 16]" = torch.ops.aten.sub.Tensor(convert_element_type_1, getitem_7)
        add_1: "f32[2, 8, 1]" = torch.ops.aten.add.Tensor(getitem_6, 1e-06)
        rsqrt: "f32[2, 8, 1]" = torch.ops.aten.rsqrt.default(add_1)
        mul_1: "f32[2, 8, 16]" = torch.ops.aten.mul.Tensor(sub, rsqrt)
        convert_element_type_2: "bf16[2, 8, 16]" = torch.ops.prims.convert_element_type.default(mul_1, torch.bfloat16)
        unsqueeze_3: "bf16[2, 1, 16]" = torch.ops.aten.unsqueeze.default(getitem_4, 1)
        unsqueeze_4: "bf16[2, 1, 16]" = torch.ops.aten.unsqueeze.default(getitem_1, 1)
        where_1: "bf16[2, 8, 16]" = torch.ops.aten.where.self(unsqueeze, unsqueeze_3, unsqueeze_4)
        add_2: "bf16[2, 8, 16]" = torch.ops.aten.add.Tensor(where_1, 1)
        mul_2: "bf16[2, 8, 16]" = torch.ops.aten.mul.Tensor(convert_element_type_2, add_2)
        unsqueeze_5: "bf16[2, 1, 16]" = torch.ops.aten.unsqueeze.default(getitem_3, 1)
        unsqueeze_6: "bf16[2, 1, 16]" = torch.ops.aten.unsqueeze.default(getitem, 1)
        where_2: "bf16[2, 8, 16]" = torch.ops.aten.where.self(unsqueeze, unsqueeze_5, unsqueeze_6)
        add_3: "bf16[2, 8, 16]" = torch.ops.aten.add.Tensor(mul_2, where_2)
        return (add, add_3)
""")
        self.assertExpectedInline(result.after, """\
class <lambda>(torch.nn.Module):
    def forward(self, arg0_1: "bf16[2, 48]", arg1_1: "bf16[2, 48]", arg2_1: "i64[2, 8]", arg3_1: "bf16[2, 8, 16]", arg4_1: "bf16[2, 8, 16]"):
        split = torch.ops.aten.split.Tensor(arg0_1, 16, 1)
        getitem: "bf16[2, 16]" = split[0]
        getitem_1: "bf16[2, 16]" = split[1]
        getitem_2: "bf16[2, 16]" = split[2]
        split_1 = torch.ops.aten.split.Tensor(arg1_1, 16, 1)
        getitem_3: "bf16[2, 16]" = split_1[0]
        getitem_4: "bf16[2, 16]" = split_1[1]
        getitem_5: "bf16[2, 16]" = split_1[2]
        convert_element_type: "b8[2, 8]" = torch.ops.prims.convert_element_type.default(arg2_1, torch.bool)
        unsqueeze: "b8[2, 8, 1]" = torch.ops.aten.unsqueeze.default(convert_element_type, 2)
        unsqueeze_1: "bf16[2, 1, 16]" = torch.ops.aten.unsqueeze.default(getitem_5, 1)
        unsqueeze_2: "bf16[2, 1, 16]" = torch.ops.aten.unsqueeze.default(getitem_2, 1)
        unsqueeze_3: "bf16[2, 1, 16]" = torch.ops.aten.unsqueeze.default(getitem_4, 1)
        unsqueeze_4: "bf16[2, 1, 16]" = torch.ops.aten.unsqueeze.default(getitem_1, 1)
        unsqueeze_5: "bf16[2, 1, 16]" = torch.ops.aten.unsqueeze.default(getitem_3, 1)
        unsqueeze_6: "bf16[2, 1, 16]" = torch.ops.aten.unsqueeze.default(getitem, 1)
        residual_norm_modulate_default = torch.ops.fusion_passes.residual_norm_modulate.default(arg4_1, arg3_1, [unsqueeze_1, unsqueeze_2], None, None, [unsqueeze_3, unsqueeze_4], [unsqueeze_5, unsqueeze_6], unsqueeze, 1e-06, 'layer', True, 'after_affine', torch.bfloat16, torch.bfloat16)
        getitem_8: "bf16[2, 8, 16]" = residual_norm_modulate_default[0]
        getitem_9: "bf16[2, 8, 16]" = residual_norm_modulate_default[1]
        return (getitem_9, getitem_8)
""")
        self.assertIn("select01", result.report.fused[0].pattern)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("eps", [1e-5, 1e-6, 9.999999974752427e-07])
@pytest.mark.parametrize("norm", ["layer", "rms"])
def test_every_precision_and_eps_fuses_with_the_graphs_eps(dtype, eps, norm):
    def chain(x, scale, shift):
        normed = F.layer_norm(x, x.shape[-1:], eps=eps) if norm == "layer" else F.rms_norm(x, x.shape[-1:], eps=eps)
        return normed * (1 + scale) + shift

    args = [randn(3, 5, 24, dtype=dtype), randn(3, 1, 24, dtype=dtype), randn(3, 1, 24, dtype=dtype)]
    result = capture(chain, *args)
    assert result.report.counts() == {"adaln": 1}
    # The graph's own eps reaches the fused op (F.rms_norm rounds it to float32 first).
    graph_eps = eps if norm == "layer" else torch.tensor(eps, dtype=torch.float32).item()
    assert f", {graph_eps!r}, '{norm}'" in result.after
    assert_matches_fp64(result, chain, args, dtype)


@pytest.mark.parametrize("order", ["n*(1+s)+t", "(1+s)*n+t", "t+n*(1+s)", "t+(1+s)*n", "n*(s+1)+t"])
def test_every_operand_order_fuses(order):
    def chain(x, s, t):
        n = F.layer_norm(x, x.shape[-1:])
        return {
            "n*(1+s)+t": lambda: n * (1 + s) + t,
            "(1+s)*n+t": lambda: (1 + s) * n + t,
            "t+n*(1+s)": lambda: t + n * (1 + s),
            "t+(1+s)*n": lambda: t + (1 + s) * n,
            "n*(s+1)+t": lambda: n * (s + 1) + t,
        }[order]()

    args = [randn(2, 8, 16), randn(2, 1, 16), randn(2, 1, 16)]
    result = capture(chain, *args)
    assert result.report.counts() == {"adaln": 1}
    assert_matches_fp64(result, chain, args, torch.float32)


def test_fp32_modulation_with_bf16_x_fuses_and_promotes():
    def chain(x, scale, shift):
        return F.layer_norm(x, x.shape[-1:]) * (1 + scale) + shift

    result = capture(chain, randn(2, 8, 16, dtype=torch.bfloat16), randn(2, 1, 16), randn(2, 1, 16))
    assert result.report.counts() == {"adaln": 1}
    assert result.output.dtype == torch.float32


def test_residual_sum_used_only_by_the_norm_is_adaln_not_residual_adaln():
    # Nothing else needs r: residual_adaln would write it for nothing, so adaln takes the norm (x = the sum).
    def chain(residual, x, scale, shift):
        return F.layer_norm(residual + x, x.shape[-1:]) * (1 + scale) + shift

    result = capture(chain, randn(2, 8, 16), randn(2, 8, 16), randn(2, 1, 16), randn(2, 1, 16))
    assert result.report.counts() == {"adaln": 1}
    assert result.report.near_misses == []


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize(
    ("spelling", "pattern"),
    [
        (llm_residual_rms_norm, "residual+x -> rms_norm/{precision}*weight"),
        (llm_residual_zero_centred_rms_norm, "residual+x -> rms_norm/{precision}*(1+scale)"),
        (residual_torch_rms_norm, "residual+x -> rms_norm/fp32*weight"),
    ],
    ids=["weight", "1+weight", "F.rms_norm"],
)
def test_llm_residual_rms_norms_fuse(spelling, pattern, dtype):
    # F.rms_norm computes a half input in fp32 and rounds once at the end (the fp32 form, its cast folded).
    args = [randn(3, 5, 24, dtype=dtype), randn(3, 5, 24, dtype=dtype), randn(24, dtype=dtype)]
    result = capture(spelling, *args)
    precision = "fp32" if dtype == torch.float32 else "half"
    assert [record.pattern for record in result.report.fused] == [pattern.format(precision=precision)]
    assert_matches_fp64(result, spelling, args, dtype)
    for out, expected in zip(result.output, spelling(*args), strict=True):
        torch.testing.assert_close(out, expected)


def test_llm_rms_norm_of_a_sum_used_only_there_is_not_a_candidate():
    # Nothing else needs r: an RMSNorm with its weight alone is Inductor's, and no near miss.
    def chain(residual, x, weight):
        return llm_residual_rms_norm(residual, x, weight)[0]

    result = capture(chain, randn(2, 8, 16, dtype=torch.bfloat16), randn(2, 8, 16, dtype=torch.bfloat16), randn(16, dtype=torch.bfloat16))
    assert result.report.counts() == {}
    assert result.report.near_misses == []


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_affine_layer_norm_of_a_residual_sum_is_left_to_inductor(dtype):
    # A DiT's unmodulated cross-attention norm after its residual (diffusers' FP32LayerNorm): its
    # weight alone is no chain of ours (the bias would stay outside); reported as any unmodulated LayerNorm.
    def chain(residual, x, weight, bias):
        r = residual + x
        return F.layer_norm(r.float(), r.shape[-1:], weight.float(), bias.float(), 1e-6).to(r.dtype), r

    result = capture(chain, randn(2, 8, 16, dtype=dtype), randn(2, 8, 16, dtype=dtype), randn(16, dtype=dtype), randn(16, dtype=dtype))
    assert result.report.counts() == {}
    assert [miss.reason for miss in result.report.near_misses] == ["the norm is not followed by a supported * (1 + scale) + shift"]


def test_llm_rms_norm_rounded_to_another_dtype_is_a_near_miss():
    # r is bf16, the normalized value rounded to fp16 before an fp16 weight: the op rounds only to r's dtype.
    def chain(residual, x, weight):
        r = residual + x
        h = r.float()
        return weight * (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6)).to(torch.float16), r

    args = [randn(2, 8, 16, dtype=torch.bfloat16), randn(2, 8, 16, dtype=torch.bfloat16), randn(16, dtype=torch.float16)]
    result = capture(chain, *args)
    assert result.report.counts() == {}
    misses = [(miss.fusion, miss.reason) for miss in result.report.near_misses]
    assert misses == [("residual_adaln", "the chain casts to torch.float16, not to its input's dtype torch.bfloat16")], misses
    for out, expected in zip(result.output, chain(*args), strict=True):
        torch.testing.assert_close(out, expected)


def test_llm_rms_norm_with_its_normalized_value_used_elsewhere_is_a_near_miss():
    # The fp32 normalized value is also returned: the chain stays Inductor's, reported at the norm.
    def chain(residual, x, weight):
        r = residual + x
        h = r.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6)
        return weight * h.to(r.dtype), r, h

    result = capture(chain, randn(2, 8, 16, dtype=torch.bfloat16), randn(2, 8, 16, dtype=torch.bfloat16), randn(16, dtype=torch.bfloat16))
    assert result.report.counts() == {}
    misses = [(miss.fusion, miss.node, miss.reason) for miss in result.report.near_misses]
    assert [(fusion, node) for fusion, node, _ in misses] == [("adaln", "mean")], misses
    assert misses[0][2].startswith("an intermediate of the chain, `h * torch.rsqrt("), misses
    assert misses[0][2].endswith("is also returned by the compiled code"), misses


def test_other_means_of_squares_are_not_candidates():
    # A mean over every dim (dim=None) or over two dims is no RMSNorm over the last dim: no near
    # miss, and the seed check reads dim=None without failing.
    def chain(x, scale, shift):
        whole = x * torch.rsqrt(torch.mean(x * x, dim=None, keepdim=True) + 1e-6) * (1 + scale) + shift
        return whole, x.pow(2).mean(dim=(-2, -1), keepdim=True)

    result = capture(chain, randn(2, 8, 16), randn(2, 1, 16), randn(2, 1, 16))
    assert result.report.counts() == {}
    assert result.report.near_misses == []


def test_training_graph_of_an_rms_adaln_chain_is_a_near_miss():
    # Backward needs the norm's statistics: an intermediate used outside the chain.
    def chain(x, scale, shift):
        return F.rms_norm(x, x.shape[-1:], eps=1e-6) * (1 + scale) + shift

    result = capture(chain, randn(2, 8, 16).requires_grad_(), randn(2, 1, 16), randn(2, 1, 16))
    assert result.report.counts() == {}
    (reason,) = [miss.reason for miss in result.report.near_misses]
    assert "is saved for backward (a training graph)" in reason, reason


def test_norm_weight_without_modulation_is_not_a_candidate():
    # An RMSNorm with weight (q/k norm before RoPE) structurally looks like "norm * scale": not
    # fused, and not reported either.
    def qk_norm(x, weight):
        return F.rms_norm(x, x.shape[-1:], weight, 1e-6)

    result = capture(qk_norm, randn(2, 8, 4, 16), randn(16))
    assert result.report.counts() == {}
    assert result.report.near_misses == []


def test_per_element_selection_fuses_without_select01():
    # where() choosing per element (not per row) stays a materialized operand.
    def chain(x, choose, scale0, scale1):
        return F.layer_norm(x, x.shape[-1:]) * (1 + torch.where(choose, scale0, scale1))

    args = [randn(2, 8, 16), torch.rand(2, 8, 16) > 0.5, randn(2, 1, 16), randn(2, 1, 16)]
    result = capture(chain, *args)
    assert result.report.counts() == {"adaln": 1}
    assert "select01" not in result.report.fused[0].pattern
    assert "torch.ops.aten.where.self" in result.after


# Chains that must NOT fuse, each with the reason the report must give.
def norm_over_two_dims(x, scale, shift):
    return F.layer_norm(x, x.shape[-2:]) * (1 + scale) + shift


def normalized_value_used_elsewhere(x, scale, shift):
    normalized = F.layer_norm(x, x.shape[-1:])
    return normalized * (1 + scale) + shift, normalized


def scale_without_one(x, scale, shift):
    return F.layer_norm(x, x.shape[-1:]) * scale + shift


def two_plus_scale(x, scale, shift):
    return F.layer_norm(x, x.shape[-1:]) * (2 + scale) + shift


def plain_chain(x, scale, shift):
    return F.layer_norm(x, x.shape[-1:]) * (1 + scale) + shift


def rms_normalized_value_used_elsewhere(x, scale, shift):
    normalized = F.rms_norm(x, x.shape[-1:])
    return normalized * (1 + scale) + shift, normalized


def rms_divided_by_root_used_elsewhere(x, scale, shift):
    normalized = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)
    return normalized * (1 + scale) + shift, normalized


def eps_outside_the_root(x, scale, shift):
    return x / (x.pow(2).mean(-1, keepdim=True).sqrt() + 1e-6) * (1 + scale) + shift


NEAR_MISSES = {
    "norm over two dims": (norm_over_two_dims, [(2, 8, 16), (2, 1, 16), (2, 1, 16)], torch.float32, "not followed"),
    "normalized value used elsewhere": (
        normalized_value_used_elsewhere,
        [(2, 8, 16), (2, 1, 16), (2, 1, 16)],
        torch.float32,
        "is also returned by the compiled code",
    ),
    "RMSNorm value used elsewhere": (
        rms_normalized_value_used_elsewhere,
        [(2, 8, 16), (2, 1, 16), (2, 1, 16)],
        torch.float32,
        "is also returned by the compiled code",
    ),
    "RMSNorm divided by its root, value used elsewhere": (
        rms_divided_by_root_used_elsewhere,
        [(2, 8, 16), (2, 1, 16), (2, 1, 16)],
        torch.float32,
        "is also returned by the compiled code",
    ),
    "eps outside the root": (
        eps_outside_the_root,
        [(2, 8, 16), (2, 1, 16), (2, 1, 16)],
        torch.float32,
        "eps is added outside the root of the mean square",
    ),
    "scale without +1": (scale_without_one, [(2, 8, 16), (2, 1, 16), (2, 1, 16)], torch.float32, "not 1 + scale"),
    "2 + scale": (two_plus_scale, [(2, 8, 16), (2, 1, 16), (2, 1, 16)], torch.float32, "not 1 + scale"),
    "modulation broadcasts x up": (
        plain_chain,
        [(8, 16), (2, 8, 16), (2, 8, 16)],
        torch.float32,
        "does not broadcast to x shape",
    ),
    "hidden too wide": (
        flux_style,
        [(1, 2, MAX_HIDDEN + 2), (1, 3 * (MAX_HIDDEN + 2))],
        torch.float32,
        f"outside 1..{MAX_HIDDEN}",
    ),
    "x with 5 dims": (
        plain_chain,
        [(1, 2, 2, 2, 16), (16,), (16,)],
        torch.float32,
        "x has 5 dims",
    ),
    "float64": (flux_style, [(2, 8, 16), (2, 48)], torch.float64, "x dtype torch.float64"),
}


@pytest.mark.parametrize("name", NEAR_MISSES)
def test_near_miss_does_not_fuse_and_says_why(name):
    fn, shapes, dtype, reason = NEAR_MISSES[name]
    args = [torch.randn(shape, dtype=dtype) for shape in shapes]
    result = capture(fn, *args)
    assert result.report.counts() == {}
    assert "fusion_passes" not in result.after
    reasons = [miss.reason for miss in result.report.near_misses]
    assert any(reason in r for r in reasons), reasons
    for out, ref in zip(as_tuple(result.output), as_tuple(fn(*args)), strict=True):
        torch.testing.assert_close(out, ref)


def test_second_modulation_without_one_plus_does_not_fuse():
    def chain(x, scale, shift, weight2):
        normed = F.layer_norm(x, x.shape[-1:])
        return normed * (1 + scale) + shift, normed * weight2 + shift

    args = [randn(2, 8, 16), randn(2, 1, 16), randn(2, 1, 16), randn(2, 1, 16)]
    result = capture(chain, *args)
    assert result.report.counts() == {}
    assert any("not 1 + scale" in miss.reason for miss in result.report.near_misses)


def test_rounding_to_another_half_dtype_does_not_fuse():
    # A bf16 x normalized, rounded to its fp16 weight's dtype: the kernel rounds only to x's dtype.
    args = [randn(2, 8, 16, dtype=torch.bfloat16), randn(16, dtype=torch.float16)]
    args += [randn(2, 1, 16, dtype=torch.bfloat16), randn(2, 1, 16, dtype=torch.bfloat16)]
    result = capture(hand_written_rms_norm_shift_first, *args)
    assert result.report.counts() == {}
    reasons = [miss.reason for miss in result.report.near_misses]
    assert any("casts to torch.float16, not to its input's dtype torch.bfloat16" in r for r in reasons), reasons


def test_adds_with_alpha_are_not_plain_adds():
    # torch.add(a, b, alpha=k) is a + k * b: neither a residual sum nor 1 + scale.
    def chain(residual, x, scale, shift):
        r = torch.add(residual, x, alpha=0.5)
        return r, F.layer_norm(r, r.shape[-1:]) * torch.add(scale, 1, alpha=2) + shift

    args = [randn(2, 8, 16), randn(2, 8, 16), randn(2, 1, 16), randn(2, 1, 16)]
    result = capture(chain, *args)
    assert result.report.counts() == {}
    assert any("not 1 + scale" in miss.reason for miss in result.report.near_misses)
    for out, ref in zip(result.output, chain(*args), strict=True):
        torch.testing.assert_close(out, ref)


def test_tensor_eps_under_the_root_is_a_near_miss():
    # The division spelling with eps a tensor: matched, and left unfused with the reason.
    def chain(x, scale, shift, eps):
        h = x.float()
        return (h / torch.sqrt(h.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype) * (1 + scale) + shift

    args = [randn(2, 8, 16, dtype=torch.bfloat16), randn(2, 1, 16, dtype=torch.bfloat16), randn(2, 1, 16, dtype=torch.bfloat16)]
    result = capture(chain, *args, torch.tensor(1e-6))
    assert result.report.counts() == {}
    reasons = {miss.reason for miss in result.report.near_misses}
    assert reasons == {"eps is a tensor (an input of the compiled graph), not a number: the fused op takes eps as a constant"}, reasons


def test_device_not_enabled_does_not_fuse():
    result = capture(flux_style, randn(2, 8, 16), randn(2, 48), devices=("cuda",))
    assert result.report.counts() == {}
    assert "device 'cpu' is not in config.devices" in result.report.near_misses[0].reason


def test_dynamic_shapes_fuse_and_serve_every_shape():
    report = fusion_passes.report()
    compiled = torch.compile(gated_residual, backend="fusion_passes", dynamic=True, options={"fusion_passes": {"devices": ["cpu"]}})
    for batch, tokens, hidden in [(2, 8, 16), (3, 5, 16), (2, 7, 24)]:
        args = randn(batch, tokens, hidden), randn(batch, tokens, hidden), randn(batch, 3 * hidden)
        for out, ref in zip(compiled(*args), gated_residual(*args), strict=True):
            torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    assert len(report.graphs) == 1, "one symbolic graph serves every shape"
    assert report.counts() == {"residual_adaln": 1}


def test_dynamic_shapes_that_broadcast_x_up_do_not_fuse():
    result = capture(plain_chain, randn(8, 16), randn(2, 8, 16), randn(2, 8, 16), dynamic=True)
    assert result.report.counts() == {}
    assert "does not broadcast to x shape" in result.report.near_misses[0].reason


def fake_chain(x, *, producer=None, residual=False, select=False, weight_only=False):
    """A MatchedChain over fake CUDA tensors: what the size rule sees of a real match (``weight_only``:
    an RMSNorm multiplied by a [C] weight, no shift)."""
    graph = torch.fx.Graph()

    def node(name, value, target=None):
        made = graph.placeholder(name) if target is None else graph.call_function(target, ())
        made.meta["val"] = value
        return made

    with torch._subclasses.fake_tensor.FakeTensorMode():
        hidden = x.shape[-1] if isinstance(x.shape[-1], int) else x.shape[-1].node.hint
        modulation = torch.empty(1, 1, hidden, device=x.device, dtype=torch.bfloat16)
        weight = torch.empty(hidden, device=x.device, dtype=torch.bfloat16)
    x_node = node("x", x, producer)
    scale = node("scale", modulation)
    multiplier = graph.call_function(torch.ops.aten.add.Tensor, (scale, 1))
    multiplier.meta["val"] = modulation
    nodes = {"x": x_node, "multiplier": multiplier, "shift": node("shift", modulation), "eps": 1e-6}
    if weight_only:
        nodes["multiplier"] = node("weight", weight)
        del nodes["shift"]
    if select:  # shift chosen per row between two sets
        with torch._subclasses.fake_tensor.FakeTensorMode():
            chosen = torch.empty(*x.shape[:-1], 1, device=x.device, dtype=torch.bool)
        condition, first, second = node("cond", chosen), node("shift0", modulation), node("shift1", modulation)
        nodes["shift"] = graph.call_function(torch.ops.aten.where.self, (condition, first, second))
        nodes["shift"].meta["val"] = x
    y = node("y", x, torch.ops.aten.add.Tensor)
    outputs_ = [y]
    if residual:
        nodes["residual"] = node("residual", x)
        outputs_.append(node("r", x, torch.ops.aten.add.Tensor))
        graph.call_function(torch.ops.aten.relu.default, (outputs_[1],))  # r used after the chain
    match = types.SimpleNamespace(kwargs=nodes, nodes=[y], output_nodes=lambda: outputs_)
    norm = "rms" if weight_only else "layer"
    form = ChainForm(norm=norm, rounding="none", shift=not weight_only, residual=RESIDUAL_FORMS[0] if residual else None, pair=False)
    return fusion_passes.pattern_family.MatchedChain(match=match, variant=types.SimpleNamespace(form=form))


def fake_cuda(*shape):
    with torch._subclasses.fake_tensor.FakeTensorMode():
        return torch.empty(shape, device="cuda", dtype=torch.bfloat16)


@pytest.mark.parametrize(
    ("shape", "producer", "reason"),
    [
        ((1, 4096, 1024), None, "hidden size 1024 is outside 1152..8192"),
        ((1, 1024, 16384), None, "hidden size 16384 is outside 1152..8192"),
        ((1, 64, 3072), None, "x has 196608 elements, below the measured CUDA break-even 1048576"),
        ((1, 4096, 3072), torch.ops.aten.add.Tensor, "x comes from a pointwise op"),
        ((1, 32760, 1536), torch.ops.aten.add.Tensor, "x comes from a pointwise op"),
        ((1, 4608, 3072), torch.ops.aten.cat.default, "x comes from a cat that Inductor fuses into its own norm"),
        ((1, 4096, 3072), None, None),
        ((1, 4096, 3072), torch.ops.aten.mm.default, None),
    ],
)
def test_cuda_size_rule(shape, producer, reason):
    # The rule measured on the GPU (docs/BENCHMARKS.md), checked here on fake CUDA tensors.
    chain = fake_chain(fake_cuda(*shape), producer=producer)
    assert ADALN.legality(chain) is None  # the kernel supports every one of these
    found = ADALN.profitability(chain)
    assert found == reason if reason is None else reason in found


def test_cuda_size_rule_for_residual_adaln_ignores_the_pointwise_producer():
    # residual_adaln takes the residual add itself; nothing is split off Inductor's norm kernel.
    chain = fake_chain(fake_cuda(1, 4096, 3072), residual=True)
    assert ADALN.legality(chain) is None
    assert ADALN.profitability(chain) is None


def test_cuda_size_rule_leaves_residual_sums_with_select01_to_inductor():
    f1 = fake_chain(fake_cuda(1, 4096, 3072), select=True)
    assert ADALN.plan(f1).select is not None
    assert ADALN.profitability(f1) is None
    after_residual_add = fake_chain(fake_cuda(2, 4096, 3072), producer=torch.ops.aten.add.Tensor, select=True)
    assert "pointwise" in ADALN.profitability(after_residual_add)
    f2 = fake_chain(fake_cuda(1, 4096, 3072), residual=True, select=True)
    assert ADALN.legality(f2) is None
    assert "select01" in ADALN.profitability(f2)


def test_cuda_size_rule_leaves_the_llm_residual_rms_norm_to_inductor():
    # No modulation to fold in: the fused op measured 0.95-0.98x of Inductor alone on an H200.
    chain = fake_chain(fake_cuda(1, 4096, 4096), residual=True, weight_only=True)
    assert ADALN.legality(chain) is None
    assert ADALN.plan(chain).multiplied_by_weight
    assert "RMSNorm with its weight alone (no modulation) was measured slower" in ADALN.profitability(chain)


@pytest.mark.parametrize(("shape", "reason"), [((1, 4096, 3072), None), ((1, 256, 3072), "below the measured CUDA break-even")])
def test_cuda_size_rule_for_pairs(shape, reason):
    # Pairs follow the general rule (measured 1.28x and 1.42x over Inductor on an H100).
    chain = fake_chain(fake_cuda(*shape))
    graph = chain.match.kwargs["x"].graph
    second = graph.call_function(torch.ops.aten.add.Tensor, (chain.match.kwargs["shift"], 1))
    second.meta["val"] = chain.match.kwargs["shift"].meta["val"]
    chain.match.kwargs.update(multiplier2=second, shift2=chain.match.kwargs["shift"])
    y = chain.outputs[0]
    second_output = graph.call_function(torch.ops.aten.add.Tensor, ())
    second_output.meta["val"] = y.meta["val"]
    chain.match.output_nodes = lambda: [y, second_output]
    chain.variant.form = dataclasses.replace(chain.variant.form, pair=True)
    assert ADALN.legality(chain) is None
    assert ADALN.plan(chain).scale2
    found = ADALN.profitability(chain)
    assert found == reason if reason is None else reason in found


@pytest.mark.parametrize(("shape", "fires"), [((1, 4096, 3072), True), ((1, 64, 3072), False), ((1, 4096, 1024), False)])
def test_cuda_size_rule_judges_symbolic_sizes_at_their_compile_time_values(shape, fires):
    mode = torch._subclasses.fake_tensor.FakeTensorMode(shape_env=torch.fx.experimental.symbolic_shapes.ShapeEnv())
    x = mode.from_tensor(torch.empty(shape, device="meta"), static_shapes=False)
    assert not isinstance(x.shape[-1], int)  # size-1 dims stay static, the rest are symbols
    chain = fake_chain(x)
    assert ADALN.legality(chain) is None
    assert (ADALN.profitability(chain) is None) == fires


def test_data_dependent_sizes_do_not_fuse():
    shape_env = torch.fx.experimental.symbolic_shapes.ShapeEnv()
    with torch._subclasses.fake_tensor.FakeTensorMode(shape_env=shape_env):
        x = torch.empty(shape_env.create_unbacked_symint(), 8, 16)
    assert "data-dependent" in ADALN.legality(fake_chain(x))


def rms_norm_of_a_transposed_x(x, weight, scale, shift):
    """F.rms_norm on a non-contiguous x: the decomposition clones its output to contiguous memory."""
    x = x.transpose(1, 2)
    return F.rms_norm(x, x.shape[-1:], weight, 1e-6) * (1 + scale) + shift


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_rms_norm_of_a_non_contiguous_x_fuses(dtype):
    args = [randn(2, 16, 8, dtype=dtype), randn(16, dtype=dtype), randn(2, 1, 16, dtype=dtype), randn(2, 1, 16, dtype=dtype)]
    result = capture(rms_norm_of_a_transposed_x, *args)
    assert [record.fusion for record in result.report.fused] == ["adaln"], result.report.near_misses
    assert_matches_fp64(result, rms_norm_of_a_transposed_x, args, dtype)
