"""Kernel outputs poisoned with NaN, so an element a kernel leaves unwritten shows."""

from __future__ import annotations

import contextlib
import types
from collections.abc import Iterator
from typing import Any
from unittest import mock

import torch


class PoisonedTorch:
    """``torch`` as a kernel module sees it, with ``empty`` filled with NaN."""

    def __getattr__(self, name: str) -> Any:
        return getattr(torch, name)

    @staticmethod
    def empty(*size: Any, dtype: torch.dtype, device: Any, **kwargs: Any) -> torch.Tensor:
        """``torch.full(size, nan)``."""
        return torch.full(*size, float("nan"), dtype=dtype, device=device, **kwargs)


@contextlib.contextmanager
def poisoned_outputs(module: types.ModuleType) -> Iterator[None]:
    """Within the block, every ``torch.empty`` of ``module`` (its outputs) starts as NaN."""
    with mock.patch.object(module, "torch", PoisonedTorch()):
        yield
