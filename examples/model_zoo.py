"""The model families fusion_passes is tested on, at a tiny and the full size, with inputs for one step.

One place for the configs that the examples, the model tests (``tests/tiny_models.py``) and the
block benchmarks (``benchmarks/bench_blocks.py``) build. Each builder constructs a randomly
initialized model (no download) on the current default device, in fp32, and the inputs of one
forward pass; ``build`` seeds, places and casts. Sizes are given as users state them (pixels,
``frames x height x width`` of a video, tokens) and turned into latent tokens with the full models'
VAE factors (8x spatial, 4x temporal) and patch sizes, at the tiny size too.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

SIZES = ("tiny", "full")

# diffusers / transformers constructor arguments per size. Tiny: one block of each kind, which
# shows every fusion (the model tests build two). Full: the released models' dimensions. Block
# counts can be overridden by each builder's arguments.
FLUX = {
    "tiny": dict(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=32,
                 num_attention_heads=4, joint_attention_dim=64, pooled_projection_dim=32, guidance_embeds=True,
                 axes_dims_rope=(8, 12, 12)),
    # FLUX.1 [dev]: C=3072, 24 heads x 128.
    "full": dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
                 num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True,
                 axes_dims_rope=(16, 56, 56)),
}
QWEN_IMAGE = {
    "tiny": dict(patch_size=2, in_channels=16, out_channels=4, num_layers=1, attention_head_dim=32,
                 num_attention_heads=4, joint_attention_dim=64, axes_dims_rope=(8, 12, 12)),
    # Qwen-Image (20B): C=3072, 60 blocks, Qwen2.5-VL text states of 3584.
    "full": dict(patch_size=2, in_channels=64, out_channels=16, num_layers=60, attention_head_dim=128,
                 num_attention_heads=24, joint_attention_dim=3584, axes_dims_rope=(16, 56, 56)),
}
WAN = {
    "tiny": dict(patch_size=(1, 2, 2), num_attention_heads=4, attention_head_dim=24, in_channels=16, out_channels=16,
                 text_dim=64, freq_dim=256, ffn_dim=128, num_layers=1, cross_attn_norm=True,
                 qk_norm="rms_norm_across_heads", rope_max_seq_len=64),
    # Wan 2.1 T2V 1.3B: C=1536, 12 heads x 128, 30 blocks.
    "full": dict(patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16, out_channels=16,
                 text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=30, cross_attn_norm=True,
                 qk_norm="rms_norm_across_heads"),
}
HUNYUAN_VIDEO = {
    "tiny": dict(in_channels=16, out_channels=16, num_attention_heads=4, attention_head_dim=32, num_layers=1,
                 num_single_layers=1, num_refiner_layers=1, patch_size=2, patch_size_t=1, guidance_embeds=True,
                 text_embed_dim=64, pooled_projection_dim=32, rope_axes_dim=(8, 12, 12)),
    # HunyuanVideo (13B): C=3072, 20 double-stream + 40 single-stream blocks.
    "full": dict(in_channels=16, out_channels=16, num_attention_heads=24, attention_head_dim=128, num_layers=20,
                 num_single_layers=40, num_refiner_layers=2, patch_size=2, patch_size_t=1, guidance_embeds=True,
                 text_embed_dim=4096, pooled_projection_dim=768, rope_axes_dim=(16, 56, 56)),
}
QWEN3_NEXT = {
    # One gated-delta-net (linear attention) layer, then one full attention layer.
    "tiny": dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2, full_attention_interval=2,
                 num_attention_heads=4, num_key_value_heads=2, head_dim=16, linear_num_value_heads=4,
                 linear_num_key_heads=2, linear_key_head_dim=16, linear_value_head_dim=16, linear_conv_kernel_dim=4,
                 num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, shared_expert_intermediate_size=32,
                 decoder_sparse_step=1, max_position_embeddings=128),
    # Qwen3-Next-80B-A3B's dimensions (transformers' defaults), cut to 4 of its 48 layers (three
    # gated delta nets, one full attention): all 48 are 160 GB in bf16, more than one GPU holds.
    "full": dict(num_hidden_layers=4),
}

# Default sizes of the inputs: image side in pixels, video as "frames x height x width", text tokens.
PIXELS = {"flux": {"tiny": 64, "full": 1024}, "qwen_image": {"tiny": 128, "full": 1024}}
VIDEO = {"wan": {"tiny": "5x64x64", "full": "81x480x832"}, "hunyuan_video": {"tiny": "5x64x64", "full": "61x544x960"}}
TEXT_TOKENS = {
    "flux": {"tiny": 8, "full": 512},
    "qwen_image": {"tiny": 8, "full": 512},
    "wan": {"tiny": 8, "full": 512},
    "hunyuan_video": {"tiny": 8, "full": 256},
    "qwen3_next": {"tiny": 24, "full": 2048},
}


def _config(table: dict[str, dict], size: str, **overrides: Any) -> dict[str, Any]:
    """The size's constructor arguments with the overrides that are not None."""
    if size not in table:
        raise ValueError(f"size must be one of {sorted(table)}, got {size!r}")
    return dict(table[size], **{name: value for name, value in overrides.items() if value is not None})


def video_pixels(video: str) -> tuple[int, int, int]:
    """(frames, height, width) of a ``"FxHxW"`` video size in pixels."""
    try:
        frames, height, width = (int(part) for part in video.split("x"))
    except ValueError:
        raise ValueError(f"video must be 'FRAMESxHEIGHTxWIDTH' in pixels, got {video!r}") from None
    return frames, height, width


def latent_video(video: str) -> tuple[int, int, int]:
    """Latent (frames, height, width) of a ``"FxHxW"`` pixel video: 4x temporal, 8x spatial compression."""
    frames, height, width = video_pixels(video)
    return (frames - 1) // 4 + 1, height // 8, width // 8


def flux(size: str = "tiny", *, layers: int | None = None, single_layers: int | None = None,
         pixels: int | None = None, batch: int = 1) -> tuple[torch.nn.Module, dict[str, Any]]:
    """diffusers' FluxTransformer2DModel and one step's inputs at ``pixels`` square (16 px per token)."""
    from diffusers import FluxTransformer2DModel

    model = FluxTransformer2DModel(**_config(FLUX, size, num_layers=layers, num_single_layers=single_layers))
    config = model.config
    tokens = ((pixels or PIXELS["flux"][size]) // 16) ** 2
    text = TEXT_TOKENS["flux"][size]
    inputs = dict(
        hidden_states=torch.randn(batch, tokens, config.in_channels),
        encoder_hidden_states=torch.randn(batch, text, config.joint_attention_dim),
        pooled_projections=torch.randn(batch, config.pooled_projection_dim),
        timestep=torch.rand(batch),
        guidance=torch.rand(batch) * 4,
        img_ids=torch.randn(tokens, 3),
        txt_ids=torch.zeros(text, 3),
    )
    return model, inputs


def qwen_image(size: str = "tiny", *, edit: bool = False, layers: int | None = None, pixels: int | None = None,
               batch: int = 1) -> tuple[torch.nn.Module, dict[str, Any]]:
    """diffusers' QwenImageTransformer2DModel at ``pixels`` square; ``edit``: the edit model (``zero_cond_t``),
    whose input appends a reference image (timestep 0) after the target image."""
    from diffusers import QwenImageTransformer2DModel

    model = QwenImageTransformer2DModel(**_config(QWEN_IMAGE, size, num_layers=layers, zero_cond_t=edit))
    config = model.config
    side = (pixels or PIXELS["qwen_image"][size]) // 16
    shapes = [(1, side, side)] * (2 if edit else 1)
    tokens = sum(frames * height * width for frames, height, width in shapes)
    text = TEXT_TOKENS["qwen_image"][size]
    inputs = dict(
        hidden_states=torch.randn(batch, tokens, config.in_channels),
        encoder_hidden_states=torch.randn(batch, text, config.joint_attention_dim),
        encoder_hidden_states_mask=torch.ones(batch, text, dtype=torch.long),
        timestep=torch.rand(batch),
        img_shapes=[shapes] * batch,
    )
    return model, inputs


def wan(size: str = "tiny", *, layers: int | None = None, video: str | None = None, batch: int = 1,
        per_token_timestep: bool = False) -> tuple[torch.nn.Module, dict[str, Any]]:
    """diffusers' WanTransformer3DModel (Wan 2.1) on a ``video``; timestep ``[B]``, or ``[B, L]``
    (``per_token_timestep``: modulation per token, as Wan 2.2's image-to-video model does)."""
    from diffusers import WanTransformer3DModel

    model = WanTransformer3DModel(**_config(WAN, size, num_layers=layers))
    config = model.config
    frames, height, width = latent_video(video or VIDEO["wan"][size])
    _, patch_h, patch_w = config.patch_size
    tokens = frames * (height // patch_h) * (width // patch_w)
    timestep = torch.randint(0, 1000, (batch, tokens) if per_token_timestep else (batch,))
    inputs = dict(
        hidden_states=torch.randn(batch, config.in_channels, frames, height, width),
        timestep=timestep,
        encoder_hidden_states=torch.randn(batch, TEXT_TOKENS["wan"][size], config.text_dim),
    )
    return model, inputs


def hunyuan_video(size: str = "tiny", *, layers: int | None = None, single_layers: int | None = None,
                  video: str | None = None, batch: int = 1) -> tuple[torch.nn.Module, dict[str, Any]]:
    """diffusers' HunyuanVideoTransformer3DModel on a ``video``, with its token refiner and guidance embedding."""
    from diffusers import HunyuanVideoTransformer3DModel

    model = HunyuanVideoTransformer3DModel(
        **_config(HUNYUAN_VIDEO, size, num_layers=layers, num_single_layers=single_layers)
    )
    config = model.config
    frames, height, width = latent_video(video or VIDEO["hunyuan_video"][size])
    text = TEXT_TOKENS["hunyuan_video"][size]
    inputs = dict(
        hidden_states=torch.randn(batch, config.in_channels, frames, height, width),
        timestep=torch.randint(0, 1000, (batch,)),
        encoder_hidden_states=torch.randn(batch, text, config.text_embed_dim),
        encoder_attention_mask=torch.ones(batch, text, dtype=torch.long),
        pooled_projections=torch.randn(batch, config.pooled_projection_dim),
        guidance=torch.rand(batch) * 4000,
    )
    return model, inputs


def qwen3_next(size: str = "tiny", *, layers: int | None = None, tokens: int | None = None,
               batch: int = 1) -> tuple[torch.nn.Module, dict[str, Any]]:
    """transformers' Qwen3NextModel (no LM head) and a prefill of ``tokens`` random token ids.

    Without the ``causal_conv1d`` package its gated delta net runs the torch fallback, which writes
    ``F.silu(F.conv1d(x, w.unsqueeze(1), b, padding=K - 1, groups=C)[..., :L])``.
    """
    from transformers import Qwen3NextConfig, Qwen3NextModel

    config = Qwen3NextConfig(**_config(QWEN3_NEXT, size, num_hidden_layers=layers))
    model = Qwen3NextModel(config)
    inputs = dict(
        input_ids=torch.randint(0, config.vocab_size, (batch, tokens or TEXT_TOKENS["qwen3_next"][size])),
        use_cache=False,
    )
    return model, inputs


# Pipelines: the transformer above, a VAE and a scheduler from configs; text embeddings are random
# and passed as prompt_embeds, in place of text encoders and tokenizers (which need a download).
# Tiny VAEs keep the full VAEs' compression (8x spatial; Wan's 4x temporal) with few channels.
FLUX_VAE = {
    "tiny": dict(block_out_channels=(8, 8, 8, 8), layers_per_block=1, latent_channels=4, norm_num_groups=4,
                 scaling_factor=1.0, shift_factor=0.0),
    # FLUX.1's autoencoder: 16 latent channels, no quant convs.
    "full": dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=16, norm_num_groups=32,
                 sample_size=1024, scaling_factor=0.3611, shift_factor=0.1159),
}
WAN_VAE = {
    "tiny": dict(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1),
    "full": dict(),  # diffusers' defaults: the Wan 2.1 autoencoder
}
STEPS = {"flux": {"tiny": 2, "full": 28}, "wan": {"tiny": 2, "full": 50}}


def flux_pipeline(size: str = "tiny", *, layers: int | None = None, single_layers: int | None = None,
                  pixels: int | None = None, steps: int | None = None) -> tuple[Any, dict[str, Any]]:
    """diffusers' FluxPipeline (no text encoders) and its call arguments for one ``pixels``-square image."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline

    transformer, _ = flux(size, layers=layers, single_layers=single_layers)
    vae = AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        use_quant_conv=False, use_post_quant_conv=False, **_config(FLUX_VAE, size),
    )
    # FLUX.1's schedule: flow matching with the shift growing with the image's token count. Schedulers
    # keep their tables on the CPU, where they mix them with numpy; the pipeline moves what it needs.
    with torch.device("cpu"):
        scheduler = FlowMatchEulerDiscreteScheduler(
            shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15, base_image_seq_len=256,
            max_image_seq_len=4096,
        )
    pipe = FluxPipeline(scheduler=scheduler, vae=vae, text_encoder=None, tokenizer=None, text_encoder_2=None,
                        tokenizer_2=None, transformer=transformer)
    config = transformer.config
    pixels = pixels or PIXELS["flux"][size]
    arguments = dict(
        prompt_embeds=torch.randn(1, TEXT_TOKENS["flux"][size], config.joint_attention_dim),
        pooled_prompt_embeds=torch.randn(1, config.pooled_projection_dim),
        height=pixels, width=pixels, num_inference_steps=steps or STEPS["flux"][size], guidance_scale=3.5,
        output_type="pt",
    )
    return pipe, arguments


def wan_pipeline(size: str = "tiny", *, layers: int | None = None, video: str | None = None,
                 steps: int | None = None) -> tuple[Any, dict[str, Any]]:
    """diffusers' WanPipeline (no text encoder) and its call arguments for one ``video``, with
    classifier-free guidance."""
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline

    transformer, _ = wan(size, layers=layers)
    vae = AutoencoderKLWan(**_config(WAN_VAE, size))
    # Wan 2.1's schedule at 480p: UniPC on flow-matching sigmas, shift 3 (tables on the CPU, as for FLUX).
    with torch.device("cpu"):
        scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)
    pipe = WanPipeline(tokenizer=None, text_encoder=None, vae=vae, scheduler=scheduler, transformer=transformer)
    frames, height, width = video_pixels(video or VIDEO["wan"][size])
    text_shape = (1, TEXT_TOKENS["wan"][size], transformer.config.text_dim)
    arguments = dict(
        prompt_embeds=torch.randn(text_shape), negative_prompt_embeds=torch.randn(text_shape),
        height=height, width=width, num_frames=frames, num_inference_steps=steps or STEPS["wan"][size],
        guidance_scale=5.0, output_type="pt",
    )
    return pipe, arguments


def cast(inputs: dict[str, Any], dtype: torch.dtype) -> dict[str, Any]:
    """Floating tensors in ``dtype``; integer ones (timesteps, masks, ids) and non-tensors as they are."""
    return {
        name: value.to(dtype) if isinstance(value, torch.Tensor) and value.is_floating_point() else value
        for name, value in inputs.items()
    }


def build(
    builder: Callable[..., tuple[Any, dict[str, Any]]],
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    **kwargs: Any,
) -> tuple[Any, dict[str, Any]]:
    """``builder(**kwargs)`` seeded with 0 and constructed on ``device``: the model (or pipeline) in
    eval mode and ``dtype``, and its inputs (call arguments)."""
    torch.manual_seed(0)
    with torch.device(device):
        built, inputs = builder(**kwargs)
    modules = built.components.values() if hasattr(built, "components") else [built]  # a pipeline's, or a model
    for module in modules:
        if isinstance(module, torch.nn.Module):
            if dtype != torch.float32:  # built in fp32; diffusers warns on every cast
                module.to(dtype)
            module.eval()
    return built, cast(inputs, dtype)
