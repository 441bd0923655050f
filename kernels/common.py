"""Helpers shared by every kernel launcher: supported dtypes and stride bookkeeping."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

import torch

from fusion_passes.compat import torch_mode_active

Call = TypeVar("Call")
Result = TypeVar("Result")

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


def device_error(operands: Sequence[tuple[str, torch.Tensor | None]]) -> str | None:
    """Which named operand is not on the first operand's device, or None.

    The ops' fake implementations check this too: a real ``meta`` tensor among CPU or CUDA
    operands sends the call to the fake, which must raise rather than return uninitialized memory.
    """
    first_name, first = operands[0]
    for name, tensor in operands[1:]:
        if tensor is not None and tensor.device != first.device:
            return f"{name}: expected device {first.device} ({first_name}'s), got {tensor.device}"
    return None


def check_devices(operands: Sequence[tuple[str, torch.Tensor | None]]) -> None:
    """Raise the ValueError of ``device_error`` if an operand is on another device."""
    error = device_error(operands)
    if error is not None:
        raise ValueError(error)


def needs_dispatcher(tensors: Sequence[torch.Tensor | None]) -> bool:
    """Whether an eager call of a public op must go through its custom op rather than straight to
    its implementation: while tracing or compiling, under a torch-function or dispatch mode, for a
    tensor subclass, or where autograd would record the call (the op then raises at backward: the
    fused ops are forward-only). The dispatcher costs about 100 us of host time per call."""
    if torch.compiler.is_compiling() or torch_mode_active():
        return True
    grad = torch.is_grad_enabled()
    return any(t is not None and (type(t) is not torch.Tensor or (grad and t.requires_grad)) for t in tensors)


def kernel_or_reference(
    call: Call,
    device_tensor: torch.Tensor,
    argument_error: Callable[[Call], str | None],
    unsupported_reason: Callable[[Call], str | None],
    reference: Callable[[Call], Result],
    launch: Callable[[Call], Result],
) -> Result:
    """A custom op's body on every device: a ValueError for a wrong call, the Triton launch on CUDA
    where the kernel takes the call, else the pure-torch reference."""
    error = argument_error(call)
    if error is not None:
        raise ValueError(error)
    if device_tensor.device.type != "cuda" or unsupported_reason(call) is not None:
        return reference(call)
    return on_device_of(device_tensor, launch, call)


def on_device_of(tensor: torch.Tensor, launch: Callable[..., Result], *args: object) -> Result:
    """``launch(*args)`` with ``tensor``'s CUDA device current: Triton launches on the current device,
    and the operands may live on another one."""
    if tensor.device.index == torch.cuda.current_device():
        return launch(*args)
    with torch.cuda.device(tensor.device):
        return launch(*args)
