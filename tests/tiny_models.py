"""The model families at their tiny random configs (examples/model_zoo.py), batch 2, with inputs, for CPU tests."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import model_zoo
import torch

# Each builder returns (model in eval mode, forward kwargs), in ``dtype``, seeded.
ModelBuilder = Callable[[torch.dtype], tuple[torch.nn.Module, dict[str, Any]]]


def _tiny(builder: Callable[..., tuple[torch.nn.Module, dict[str, Any]]], **kwargs: Any) -> ModelBuilder:
    """``builder`` at the tiny size with a batch of 2 (per-sample modulation is batched), on CPU."""
    return functools.partial(model_zoo.build, builder, size="tiny", batch=2, **kwargs)


# Two blocks of each kind, so that residual sums also run from block to block. FLUX: 2 double +
# 2 single blocks. Qwen-Image: 2 blocks; the edit model (zero_cond_t) chooses between two
# modulation sets per token. Wan: 2 blocks, timestep [B] or [B, L] (modulation per token).
# HunyuanVideo: 2 double, 2 single, 1 refiner block.
MODELS: dict[str, ModelBuilder] = {
    "flux": _tiny(model_zoo.flux, layers=2, single_layers=2),
    "qwen_image": _tiny(model_zoo.qwen_image, layers=2),
    "qwen_image_edit": _tiny(model_zoo.qwen_image, layers=2, edit=True),
    "wan": _tiny(model_zoo.wan, layers=2),
    "wan_per_token": _tiny(model_zoo.wan, layers=2, per_token_timestep=True),
    "hunyuan_video": _tiny(model_zoo.hunyuan_video, layers=2, single_layers=2),
}

# transformers' Qwen3NextModel: one gated-delta-net (linear attention) layer, then one full attention layer.
qwen3_next = _tiny(model_zoo.qwen3_next)

LLM_MODELS: dict[str, ModelBuilder] = {
    "qwen3_next": qwen3_next,
}
