"""AdaLN fusions (SPEC.md F1): ``LayerNorm(x) * (1 + scale) + shift`` -> one fused op.

Variants are generated from one description: the LayerNorm's affine parameters (none, weight,
weight and bias) times the graph's precision family (fp32 graphs have no casts; fp16/bf16 graphs
upcast around the norm). Modulation tensors are pattern inputs, so every broadcast shape (``[C]``,
``[B,1,C]``, ``[B,C][:, None]``) and every strided chunk view matches the same pattern; the check
below refuses shapes and dtypes the kernel does not take, and the CUDA size rule the shapes where
Inductor alone was measured as fast or faster.
"""

from __future__ import annotations

import itertools
from typing import Any

import torch
import torch.nn.functional as F
from torch.fx.experimental.symbolic_shapes import statically_known_true

from fusion_passes.kernels import adaln as adaln_kernels
from fusion_passes.patterns import FusionFamily, MatchedChain, PatternVariant, register_family, with_signature

# Stands in for eps while tracing; the matched graph's own eps reaches the replacement.
EPS_SENTINEL = 1.234567e-5

# Where the fused op beats Inductor alone on CUDA (docs/BENCHMARKS.md): hidden sizes from
# MIN_CUDA_HIDDEN to MAX_CUDA_HIDDEN (at 1024 and below Inductor's persistent reduction wins; at
# 16384 Inductor was 4% faster) and x of at least MIN_CUDA_ELEMENTS. When x comes from a pointwise
# op (a residual add), Inductor fuses that op into its own norm kernel; replacing the norm splits
# it off, which pays only at larger sizes.
MIN_CUDA_HIDDEN = 1152
MAX_CUDA_HIDDEN = 8192
MIN_CUDA_ELEMENTS = 1 << 20
MIN_CUDA_ELEMENTS_AFTER_POINTWISE = 1 << 24

AFFINE_FORMS = {"none": (), "weight": ("weight",), "weight_bias": ("weight", "bias")}
PRECISIONS = {"fp32": torch.float32, "half": torch.bfloat16}


def layer_norm_modulate_search(
    x: torch.Tensor,
    scale: torch.Tensor,
    shift: torch.Tensor,
    eps: float,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """The unfused chain as models write it."""
    return F.layer_norm(x, x.shape[-1:], weight, bias, eps) * (1 + scale) + shift


def layer_norm_modulate_replace(
    x: torch.Tensor,
    scale: torch.Tensor,
    shift: torch.Tensor,
    eps: float,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """The fused op that replaces it."""
    return torch.ops.fusion_passes.layer_norm_modulate(x, weight, bias, scale, shift, eps)


def _example_inputs(params: tuple[str, ...], dtype: torch.dtype) -> list[Any]:
    batch, tokens, hidden = 2, 8, 16
    shapes = {
        "x": (batch, tokens, hidden),
        "weight": (hidden,),
        "bias": (hidden,),
        "scale": (batch, 1, hidden),
        "shift": (batch, 1, hidden),
    }
    return [EPS_SENTINEL if name == "eps" else torch.empty(shapes[name], dtype=dtype) for name in params]


def _variants() -> list[PatternVariant]:
    variants = []
    for (affine, affine_params), (precision, dtype) in itertools.product(AFFINE_FORMS.items(), PRECISIONS.items()):
        params = ("x", *affine_params, "scale", "shift", "eps")
        variants.append(
            PatternVariant(
                name=f"layer_norm[{affine}]*(1+scale)+shift/{precision}",
                search=with_signature(layer_norm_modulate_search, params),
                replace=with_signature(layer_norm_modulate_replace, params),
                example_inputs=lambda params=params, dtype=dtype: _example_inputs(params, dtype),
                scalar_workaround={"eps": EPS_SENTINEL},
            )
        )
    return variants


OPERANDS = ("x", "weight", "bias", "scale", "shift")


def _check(chain: MatchedChain) -> str | None:
    """Why a structurally matched chain must stay unfused, or None.

    Symbolic (dynamic) shapes are checked at their compile-time sizes; at run time the op checks
    the real sizes again and falls back to its reference for any the kernel does not take.
    """
    x = chain.value("x")
    for name in OPERANDS[1:]:
        tensor = chain.value(name)
        if tensor is not None and tensor.device != x.device:
            return f"{name} is on {tensor.device}, x on {x.device}"
    hinted = [chain.hinted(name) for name in OPERANDS]
    for name, hint in zip(OPERANDS, hinted, strict=True):
        if hint is None and chain.value(name) is not None:
            return f"{name} shape {tuple(chain.value(name).shape)} has data-dependent sizes"
    reason = adaln_kernels.unsupported_reason(*hinted)
    if reason is not None:
        return reason
    output = chain.output
    if output.dim() != x.dim() or not all(statically_known_true(a == b) for a, b in zip(output.shape, x.shape)):
        return f"the chain's output shape {tuple(output.shape)} is not provably x's {tuple(x.shape)}"
    fused_dtype = adaln_kernels.modulation_dtype(x, chain.value("scale"), chain.value("shift"))
    if output.dtype != fused_dtype:
        return f"graph output dtype {output.dtype} differs from the fused op's {fused_dtype}"
    return None


def _cuda_size_rule(chain: MatchedChain) -> str | None:
    """Why the fused op would not beat Inductor alone on this CUDA chain, or None.

    Symbolic sizes are judged at their compile-time values (as Inductor's own heuristics are).
    """
    x = chain.hinted("x")
    if not MIN_CUDA_HIDDEN <= x.shape[-1] <= MAX_CUDA_HIDDEN:
        return (
            f"hidden size {x.shape[-1]} is outside {MIN_CUDA_HIDDEN}..{MAX_CUDA_HIDDEN}, "
            "where the fused op was measured faster on CUDA"
        )
    after_pointwise = chain.produced_by_pointwise("x")
    minimum = MIN_CUDA_ELEMENTS_AFTER_POINTWISE if after_pointwise else MIN_CUDA_ELEMENTS
    if x.numel() < minimum:
        context = " after a pointwise producer" if after_pointwise else ""
        return f"x has {x.numel()} elements, below the measured CUDA break-even {minimum}{context}"
    return None


ADALN = register_family(
    FusionFamily(
        name="adaln",
        description="LayerNorm -> * (1 + scale) + shift (AdaLN modulation)",
        variants=_variants,
        check=_check,
        cuda_size_rule=_cuda_size_rule,
        seed_targets=(torch.ops.aten.var_mean.correction,),
        seed_hops=10,
        unmatched_reason="the norm is not followed by a supported * (1 + scale) + shift",
    )
)
