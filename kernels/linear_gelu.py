"""A Linear followed by tanh-GELU as one GEMM with the activation in its epilogue: ``fusion_passes::linear_gelu``.

``linear_gelu(x, mat2, bias)`` is ``gelu_tanh(x @ mat2 + bias)`` for x ``[M, K]``, mat2 ``[K, N]``
(a Linear's ``weight.t()``), bias ``[N]`` or None: fp32 accumulation, bias and GELU in fp32, one
rounding to x's dtype at the store (Inductor's unfused graph rounds the GEMM's output first).

On CUDA the op is ``aten._addmm_activation(bias, x, mat2, use_gelu=True)``: cuBLASLt's GELU_BIAS
epilogue, which is the tanh approximation (ATen's CUDA code applies ``gelu_(out, "tanh")`` itself
where cuBLASLt is not used). No kernel of ours: a compiled CUDA graph calls that ATen op directly
(the emitter below). On CPU the same ATen op computes the exact (erf) GELU instead, so the op runs
its pure-torch reference there; neither device has an erf epilogue.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fusion_passes.kernels.common import SUPPORTED_DTYPES, check_devices
from fusion_passes.kernels.launch import register_emitter

aten = torch.ops.aten


def argument_error(x: torch.Tensor, mat2: torch.Tensor, bias: torch.Tensor | None) -> str | None:
    """Why ``(x, mat2, bias)`` is not a call the op computes, naming the argument; None if it is."""
    if x.dim() != 2 or mat2.dim() != 2:
        return f"x, mat2: expected 2-D [M, K] and [K, N], got {tuple(x.shape)} and {tuple(mat2.shape)}"
    if x.shape[1] != mat2.shape[0]:
        return f"mat2: expected {x.shape[1]} rows (x's K), got {tuple(mat2.shape)}"
    if x.dtype not in SUPPORTED_DTYPES:
        return f"x: expected one of {sorted(map(str, SUPPORTED_DTYPES))}, got {x.dtype}"
    for name, tensor in (("mat2", mat2), ("bias", bias)):
        if tensor is not None and tensor.dtype != x.dtype:
            return f"{name}: expected x's dtype {x.dtype}, got {tensor.dtype}"
    if bias is not None and tuple(bias.shape) != (mat2.shape[1],):
        return f"bias: expected [{mat2.shape[1]}] (N), got {tuple(bias.shape)}"
    return None


def _check(x: torch.Tensor, mat2: torch.Tensor, bias: torch.Tensor | None) -> None:
    error = argument_error(x, mat2, bias)
    if error is not None:
        raise ValueError(error)
    check_devices([("x", x), ("mat2", mat2), ("bias", bias)])


def reference(x: torch.Tensor, mat2: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """The op in pure torch: the GEMM, bias and tanh-GELU in fp32, rounded once to x's dtype."""
    out = x.float() @ mat2.float()
    if bias is not None:
        out = out + bias.float()
    return F.gelu(out, approximate="tanh").to(x.dtype)


def addmm_gelu_epilogue(x: torch.Tensor, mat2: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """The op on CUDA: ``aten._addmm_activation`` with a bias (zeros where the Linear has none:
    cuBLASLt's epilogue is chosen only for a ``[N]`` bias)."""
    if bias is None:
        bias = x.new_zeros(mat2.shape[1])
    return aten._addmm_activation(bias, x, mat2, use_gelu=True)


@torch.library.custom_op("fusion_passes::linear_gelu", mutates_args=())
def linear_gelu(x: torch.Tensor, mat2: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``gelu_tanh(x @ mat2 + bias)``, x ``[M, K]``, mat2 ``[K, N]``, bias ``[N]`` or None; output ``[M, N]`` in x's dtype."""
    _check(x, mat2, bias)
    if x.device.type == "cuda":
        return addmm_gelu_epilogue(x, mat2, bias)
    return reference(x, mat2, bias)


@linear_gelu.register_fake
def _fake(x: torch.Tensor, mat2: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    _check(x, mat2, bias)
    return x.new_empty(x.shape[0], mat2.shape[1])


# In a compiled CUDA graph the op becomes the ATen call itself: Inductor calls it like its own
# GEMMs, without the custom op's dispatch.
register_emitter(linear_gelu._opoverload)(addmm_gelu_epilogue)
