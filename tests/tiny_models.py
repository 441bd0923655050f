"""The diffusers models of SPEC.md at their tiny random configs, with inputs, for CPU tests."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

# Each builder returns (model in eval mode, forward kwargs), in ``dtype``, seeded.
ModelBuilder = Callable[[torch.dtype], tuple[torch.nn.Module, dict[str, Any]]]


def _cast(inputs: dict[str, Any], dtype: torch.dtype) -> dict[str, Any]:
    # Floating tensors follow the model dtype; integer ones (timesteps, masks, ids) keep theirs.
    return {
        name: value.to(dtype) if isinstance(value, torch.Tensor) and value.is_floating_point() else value
        for name, value in inputs.items()
    }


def flux(dtype: torch.dtype) -> tuple[torch.nn.Module, dict[str, Any]]:
    """FluxTransformer2DModel: 2 double + 2 single blocks."""
    import diffusers

    torch.manual_seed(0)
    model = diffusers.FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=2, num_single_layers=2, attention_head_dim=32,
        num_attention_heads=4, joint_attention_dim=64, pooled_projection_dim=32, guidance_embeds=True,
        axes_dims_rope=(8, 12, 12),
    )
    batch, height, width, text = 2, 4, 4, 8
    inputs = dict(
        hidden_states=torch.randn(batch, height * width, 16),
        encoder_hidden_states=torch.randn(batch, text, 64),
        pooled_projections=torch.randn(batch, 32),
        timestep=torch.rand(batch),
        guidance=torch.rand(batch) * 4,
        img_ids=torch.randn(height * width, 3),
        txt_ids=torch.zeros(text, 3),
    )
    return model.to(dtype).eval(), _cast(inputs, dtype)


def qwen_image(dtype: torch.dtype, zero_cond_t: bool = False) -> tuple[torch.nn.Module, dict[str, Any]]:
    """QwenImageTransformer2DModel: 2 blocks; ``zero_cond_t`` makes it the select01 edit model."""
    import diffusers

    torch.manual_seed(0)
    model = diffusers.QwenImageTransformer2DModel(
        patch_size=2, in_channels=16, out_channels=4, num_layers=2, attention_head_dim=32,
        num_attention_heads=4, joint_attention_dim=64, axes_dims_rope=(8, 12, 12), zero_cond_t=zero_cond_t,
    )
    batch, text = 2, 8
    # The edit model appends a reference image (timestep 0) after the target image.
    shapes = [(1, 8, 8), (1, 8, 8)] if zero_cond_t else [(1, 8, 8)]
    tokens = sum(f * h * w for f, h, w in shapes)
    inputs = dict(
        hidden_states=torch.randn(batch, tokens, 16),
        encoder_hidden_states=torch.randn(batch, text, 64),
        encoder_hidden_states_mask=torch.ones(batch, text, dtype=torch.long),
        timestep=torch.rand(batch),
        img_shapes=[shapes] * batch,
    )
    return model.to(dtype).eval(), _cast(inputs, dtype)


def qwen_image_edit(dtype: torch.dtype) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Qwen-Image with ``zero_cond_t=True``: per-token choice between two modulation sets."""
    return qwen_image(dtype, zero_cond_t=True)


def wan(dtype: torch.dtype, per_token_timestep: bool = False) -> tuple[torch.nn.Module, dict[str, Any]]:
    """WanTransformer3DModel: 2 blocks; timestep ``[B]``, or ``[B, L]`` (per-token modulation)."""
    import diffusers

    torch.manual_seed(0)
    model = diffusers.WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=4, attention_head_dim=24, in_channels=16, out_channels=16,
        text_dim=64, freq_dim=256, ffn_dim=128, num_layers=2, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", rope_max_seq_len=64,
    )
    batch, frames, height, width, text = 2, 2, 8, 8, 8
    tokens = frames * (height // 2) * (width // 2)
    timestep = torch.randint(0, 1000, (batch, tokens) if per_token_timestep else (batch,))
    inputs = dict(
        hidden_states=torch.randn(batch, 16, frames, height, width),
        timestep=timestep,
        encoder_hidden_states=torch.randn(batch, text, 64),
    )
    return model.to(dtype).eval(), _cast(inputs, dtype)


def wan_per_token(dtype: torch.dtype) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Wan with a ``[B, L]`` timestep: modulation per token."""
    return wan(dtype, per_token_timestep=True)


def hunyuan_video(dtype: torch.dtype) -> tuple[torch.nn.Module, dict[str, Any]]:
    """HunyuanVideoTransformer3DModel: 2 double, 2 single, 1 refiner block."""
    import diffusers

    torch.manual_seed(0)
    model = diffusers.HunyuanVideoTransformer3DModel(
        in_channels=16, out_channels=16, num_attention_heads=4, attention_head_dim=32, num_layers=2,
        num_single_layers=2, num_refiner_layers=1, patch_size=2, patch_size_t=1, guidance_embeds=True,
        text_embed_dim=64, pooled_projection_dim=32, rope_axes_dim=(8, 12, 12),
    )
    batch, frames, height, width, text = 2, 2, 8, 8, 8
    inputs = dict(
        hidden_states=torch.randn(batch, 16, frames, height, width),
        timestep=torch.randint(0, 1000, (batch,)),
        encoder_hidden_states=torch.randn(batch, text, 64),
        encoder_attention_mask=torch.ones(batch, text, dtype=torch.long),
        pooled_projections=torch.randn(batch, 32),
        guidance=torch.rand(batch) * 4000,
    )
    return model.to(dtype).eval(), _cast(inputs, dtype)


MODELS: dict[str, ModelBuilder] = {
    "flux": flux,
    "qwen_image": qwen_image,
    "qwen_image_edit": qwen_image_edit,
    "wan": wan,
    "wan_per_token": wan_per_token,
    "hunyuan_video": hunyuan_video,
}


def qwen3_next(dtype: torch.dtype) -> tuple[torch.nn.Module, dict[str, Any]]:
    """transformers' Qwen3NextModel: one gated-delta-net (linear attention) layer, then one full attention layer.

    Without the ``causal_conv1d`` package its gated delta net runs the torch fallback, which writes
    F6: ``F.silu(F.conv1d(x, w.unsqueeze(1), b, padding=K - 1, groups=C)[..., :L])``.
    """
    import transformers

    torch.manual_seed(0)
    config = transformers.Qwen3NextConfig(
        vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2, full_attention_interval=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, linear_num_value_heads=4, linear_num_key_heads=2,
        linear_key_head_dim=16, linear_value_head_dim=16, linear_conv_kernel_dim=4, num_experts=4,
        num_experts_per_tok=2, moe_intermediate_size=32, shared_expert_intermediate_size=32, decoder_sparse_step=1,
        max_position_embeddings=128,
    )
    model = transformers.Qwen3NextModel(config)
    inputs = dict(input_ids=torch.randint(0, 128, (2, 24)), use_cache=False)
    return model.to(dtype).eval(), inputs


LLM_MODELS: dict[str, ModelBuilder] = {
    "qwen3_next": qwen3_next,
}
