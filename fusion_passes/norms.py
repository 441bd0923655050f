"""The norm spellings models write, traced by the families that start at a norm (AdaLN, q/k norm).

Each spelling is traced in two precisions: the fp32 computation ``N(x.float())`` and a
half-precision norm that rounds its output where the spelling does (``half_rounding``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
import torch.nn.functional as F

# Stands in for eps while tracing (exact in float32, since F.rms_norm rounds eps to float32); the
# matched graph's own eps reaches the replacement.
EPS_SENTINEL = 1.9073486328125e-05
# The example dtype of the traces: every input is half so each ``.float()`` leaves an upcast node.
TRACE_DTYPE = torch.bfloat16


def layer_norm(x: torch.Tensor, eps: float, weight: torch.Tensor | None = None, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.layer_norm`` over the last dim (a half input rounds its output, after the affine)."""
    return F.layer_norm(x, x.shape[-1:], weight, bias, eps)


def rms_norm(x: torch.Tensor, eps: float, weight: torch.Tensor | None = None) -> torch.Tensor:
    """``F.rms_norm`` / ``torch.nn.RMSNorm`` (a half input rounds its output, after the weight)."""
    return F.rms_norm(x, x.shape[-1:], weight, eps)


def rms_norm_fp32_statistics(x: torch.Tensor, eps: float, weight: torch.Tensor) -> torch.Tensor:
    """The hand-written RMSNorm of diffusers and LLMs: fp32 statistics, rounded before a half weight."""
    variance = x.to(torch.float32).pow(2).mean(-1, keepdim=True)
    return (x * torch.rsqrt(variance + eps)).to(weight.dtype) * weight


@dataclasses.dataclass(frozen=True)
class NormForm:
    """One norm spelling: its kind, affine operands, and where its half-precision form rounds."""

    name: str
    norm: str  # "layer" or "rms"
    affine: tuple[str, ...]
    half_rounding: str
    spelling: Callable[..., torch.Tensor]


NORM_FORMS = (
    NormForm("layer_norm", "layer", (), "after_affine", layer_norm),
    NormForm("layer_norm[weight]", "layer", ("weight",), "after_affine", layer_norm),
    NormForm("layer_norm[weight,bias]", "layer", ("weight", "bias"), "after_affine", layer_norm),
    NormForm("rms_norm", "rms", (), "after_affine", rms_norm),
    NormForm("rms_norm[weight]", "rms", ("weight",), "after_affine", rms_norm),
    NormForm("rms_norm[weight,fp32 statistics]", "rms", ("weight",), "before_weight", rms_norm_fp32_statistics),
)


def normalized(
    x: torch.Tensor, eps: float, form: NormForm, precision: str, weight: torch.Tensor | None, bias: torch.Tensor | None
) -> torch.Tensor:
    """``N(x)`` as traced; precision "fp32" normalizes ``x.float()`` with fp32 affine operands."""
    affine = {name: tensor for name, tensor in (("weight", weight), ("bias", bias)) if tensor is not None}
    if precision == "fp32":
        x = x.float()
        affine = {name: tensor.float() for name, tensor in affine.items()}
    return form.spelling(x, eps, **affine)
