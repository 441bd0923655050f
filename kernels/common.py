"""Helpers shared by every kernel launcher: supported dtypes and stride bookkeeping."""

from __future__ import annotations

import torch

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

# Kernels index rows through three leading dims; a 2-D to 4-D operand is padded to that.
LEADING_DIMS = 3


def collapse_leading_dims(shape: torch.Size) -> tuple[int, int, int]:
    """The leading dims of ``shape`` (all but the last), left-padded with 1 to three dims."""
    leading = tuple(shape[:-1])
    if len(leading) > LEADING_DIMS:
        raise ValueError(f"shape: expected at most {LEADING_DIMS + 1} dims, got {tuple(shape)}")
    return (1,) * (LEADING_DIMS - len(leading)) + leading


def broadcasts_to(shape: torch.Size, target: torch.Size) -> bool:
    """Whether a tensor of ``shape`` broadcasts to ``target`` without changing ``target``."""
    return len(shape) <= len(target) and all(
        size == 1 or size == size_target for size, size_target in zip(reversed(shape), reversed(target))
    )


def broadcast_strides(tensor: torch.Tensor, shape: torch.Size) -> tuple[int, int, int, int]:
    """Strides of ``tensor`` broadcast to ``shape``: three leading dims then the last (0 = broadcast).

    ``tensor`` must satisfy ``broadcasts_to(tensor.shape, shape)``. Plain tuple arithmetic: this
    runs on every kernel launch, where ``expand()`` would cost a tensor allocation.
    """
    strides = tuple(0 if size == 1 else stride for size, stride in zip(tensor.shape, tensor.stride()))
    return (0,) * (LEADING_DIMS + 1 - len(strides)) + strides  # type: ignore[return-value]
