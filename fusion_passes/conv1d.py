"""Causal depthwise conv1d (+ SiLU) fusion -> ``fusion_passes::causal_conv1d``.

Models write the causal conv of linear-attention and state-space layers (Qwen3-Next's gated
delta net, Mamba-style blocks) as a padded depthwise conv cut back to the input length:
``F.conv1d(x, w[:, None, :], b, padding=K - 1, groups=C)[..., :L]``, optionally followed by SiLU,
often around casts (``x.to(w.dtype)`` before, ``.to(x.dtype)`` after) and, for token-major
activations, between transposes (``x_blc.transpose(1, 2)`` in, ``.transpose(1, 2)`` out). Inductor
runs the convolution as an extern kernel writing ``L + K - 1`` outputs per channel, then the slice
and SiLU as a second kernel; the fused op reads x once and writes y once, in x's layout (so the
transpose back stays a view).

The patterns are generated from one description: the convolution and its slice (every int
argument a wildcard: the check reads them from the graph), then the activation (none or SiLU,
traced as the torch in use decomposes it) on the convolution's value or on its upcast to fp32,
directly or after the transpose back to token-major, then an optional downcast. The check
accepts only the causal depthwise form: stride 1, no dilation, ``groups == C`` with one input
channel per group, padding ``K - 1`` and a slice ``[0, L)`` of the last dim; anything else is a
near miss with the reason.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch._inductor.pattern_matcher import Ignored, KeywordArg, PatternExpr
from torch.fx.experimental.symbolic_shapes import statically_known_true

from fusion_passes.kernels import conv1d as conv1d_kernels
from fusion_passes.patterns import (
    FusionFamily,
    MatchedChain,
    OneOf,
    PatternVariant,
    StrictCall,
    Transparent,
    hinted,
    register_family,
    substitute,
    trace_post_grad,
    traced_pattern,
)

aten = torch.ops.aten
_CONVERT = torch.ops.prims.convert_element_type.default
ACTIVATIONS = {"none": lambda value: value, "silu": F.silu}


@dataclasses.dataclass(frozen=True)
class ConvForm:
    """One structural form: the activation, whether it runs on an fp32 upcast, whether a downcast follows."""

    activation: str
    upcast: bool
    downcast: bool

    @property
    def name(self) -> str:
        """The report's name: e.g. ``conv1d+silu/upcast->cast``."""
        name = "conv1d" + ("" if self.activation == "none" else f"+{self.activation}")
        return name + ("/upcast" if self.upcast else "") + ("->cast" if self.downcast else "")


FORMS = tuple(
    ConvForm(activation, upcast, downcast)
    for activation, upcast, downcast in itertools.product(ACTIVATIONS, (True, False), (True, False))
    if activation != "none" or not upcast
)


def _activation(form: ConvForm) -> tuple[PatternExpr, int]:
    # The activation as this torch decomposes it, on KeywordArg("conv"); and how often it reads conv.
    def activate(conv: torch.Tensor) -> torch.Tensor:
        return ACTIVATIONS[form.activation](conv.float() if form.upcast else conv)

    example = torch.empty(2, 8, 16, dtype=torch.bfloat16 if form.upcast else torch.float32)
    uses = sum(len(node.users) for node in trace_post_grad(activate, [example]).graph.nodes if node.op == "placeholder")
    return traced_pattern(activate, [example]), uses


@functools.cache
def _pattern(form: ConvForm) -> PatternExpr:
    """conv -> slice -> [transpose] -> activation -> optional downcast; operands behind optional exact upcasts."""
    activation, uses = _activation(form)
    # convolution(x, weight, bias, stride, padding, dilation, transposed, output_padding, groups)
    convolution = StrictCall(
        aten.convolution.default,
        Transparent(KeywordArg("x")), Transparent(KeywordArg("weight")), KeywordArg("bias"), *(Ignored() for _ in range(6)),
    )

    def cut(users: int) -> PatternExpr:
        return StrictCall(aten.slice.Tensor, convolution, Ignored(), Ignored(), Ignored(), _users=users)

    if form.activation == "none" and not form.upcast:
        pattern = cut(max(uses, 1))
    else:
        # The activation may read the cut conv through the transpose back to token-major [B, L, C]:
        # it is pointwise, so the op applies it and its output is transposed the same way.
        transposed = StrictCall(aten.permute.default, cut(1), Ignored(), _users=uses)
        pattern = substitute(activation, {"conv": OneOf(cut(uses), transposed)})
    if form.downcast:
        # The traced activation's root was an output (no users counted); here the cast uses it once.
        pattern.users = 1
        pattern = StrictCall(_CONVERT, pattern, Ignored())
    return pattern


def _variants() -> list[PatternVariant]:
    # Longest chains first: a downcast or activation anchor is tried before the slice inside it.
    ordered = sorted(FORMS, key=lambda form: (not form.downcast, form.activation == "none"))
    return [
        PatternVariant(form.name, functools.partial(_pattern, form), {"form": form})
        for form in ordered
    ]


@dataclasses.dataclass(frozen=True)
class Plan:
    """What the fused call takes, read off a matched chain."""

    x: torch.fx.Node
    weight: torch.fx.Node
    bias: torch.fx.Node | None
    activation: str
    conv_dtype: torch.dtype
    out_dtype: torch.dtype
    # The dims of the transpose between the cut conv and its activation, replayed on the op's output.
    transpose: tuple[int, ...] | None = None


def _node(chain: MatchedChain, target: Any) -> torch.fx.Node:
    (node,) = [node for node in chain.match.nodes if node.target is target]
    return node


def _equals(value: Any, expected: int) -> bool:
    # Size comparisons that add no guards: a symbolic size is compared by what is provable. A
    # symbolic argument arrives as the node computing it.
    if isinstance(value, torch.fx.Node):
        value = value.meta.get("val")
    return isinstance(value, (int, torch.SymInt)) and statically_known_true(value == expected)


def _inside(node: torch.fx.Node, chain: MatchedChain) -> bool:
    # Whether every use of ``node`` is part of the chain (exact upcasts skipped by the pattern too).
    for user in node.users:
        if user in chain.match.nodes:
            continue
        if user.target is _CONVERT and user.args[1] == torch.float32 and _inside(user, chain):
            continue
        return False
    return True


def plan(chain: MatchedChain) -> Plan | str:
    """The fused call's operands, or why the chain is not a causal depthwise conv1d the op computes."""
    return chain.cached("plan", lambda: _plan(chain))


def _plan(chain: MatchedChain) -> Plan | str:
    form: ConvForm = chain.variant.facts["form"]
    conv = _node(chain, aten.convolution.default)
    sliced = _node(chain, aten.slice.Tensor)
    _, _, bias_node, stride, padding, dilation, transposed, output_padding, groups = conv.args
    x, weight = chain.value("x"), chain.value("weight")
    if not isinstance(x, torch.Tensor) or x.dim() != 3:
        return f"x: expected a 3-dim [B, C, L] input, got {getattr(x, 'shape', x)}"
    if transposed or list(output_padding) != [0]:
        return "a transposed convolution is not a causal conv1d"
    channels, length = x.shape[1], x.shape[2]
    if weight.dim() != 3 or not _equals(weight.shape[1], 1) or not _equals(weight.shape[0], channels):
        return f"weight: expected [C, 1, K] (depthwise, C = {channels}), got {tuple(weight.shape)}"
    if not _equals(groups, channels):
        return f"groups: expected C = {channels} (depthwise), got {groups}"
    width = weight.shape[2]
    if not isinstance(width, int):
        return f"weight: K is symbolic ({width}); the kernel needs the number of taps fixed at compile time"
    if not conv1d_kernels.MIN_KERNEL_WIDTH <= width <= conv1d_kernels.MAX_KERNEL_WIDTH:
        return f"weight: expected K in {conv1d_kernels.MIN_KERNEL_WIDTH}..{conv1d_kernels.MAX_KERNEL_WIDTH} taps, got {width}"
    if list(stride) != [1]:
        return f"stride: expected [1], got {list(stride)}"
    if list(dilation) != [1]:
        return f"dilation: expected [1], got {list(dilation)}"
    if list(padding) != [width - 1]:
        return f"padding: expected [{width - 1}] (K - 1: causal), got {list(padding)}"
    _, dim, start, end = sliced.args
    if dim not in (2, -1) or start != 0 or not _equals(end, length):
        return f"the convolution is not cut to its first L = {length} outputs (a causal conv): slice {list(sliced.args[1:])}"
    if not _inside(conv, chain) or (sliced not in chain.outputs and not _inside(sliced, chain)):
        return "an intermediate of the chain is also used outside it"
    bias = chain.value("bias")
    if bias is not None and (not isinstance(bias, torch.Tensor) or bias.dim() != 1):
        return f"bias: expected [C], got {getattr(bias, 'shape', bias)}"
    output = chain.outputs[0].meta["val"]
    if form.downcast and output.dtype not in conv1d_kernels.SUPPORTED_DTYPES:
        return f"the result is cast to {output.dtype}, not one of {sorted(map(str, conv1d_kernels.SUPPORTED_DTYPES))}"
    transposes = [node for node in chain.match.nodes if node.target is aten.permute.default]
    return Plan(
        x=chain.nodes["x"], weight=chain.nodes["weight"], bias=bias_node,
        activation=form.activation, conv_dtype=sliced.meta["val"].dtype, out_dtype=output.dtype,
        transpose=tuple(transposes[0].args[1]) if transposes else None,
    )


def _meta_call(plan_: Plan) -> conv1d_kernels.CausalConv1d | str:
    # The fused call on meta tensors of compile-time sizes, for the op's own operand checks (the
    # devices are checked apart).
    values = []
    for node in (plan_.x, plan_.weight, plan_.bias):
        value = hinted(node.meta.get("val")) if node is not None else None
        if node is not None and value is None:
            return "an operand has data-dependent sizes"
        values.append(None if value is None else torch.empty(value.shape, dtype=value.dtype, device="meta"))
    x, weight, bias = values
    return conv1d_kernels.CausalConv1d(x, weight[:, 0, :], bias, plan_.activation, plan_.conv_dtype, plan_.out_dtype)


def _check(chain: MatchedChain) -> str | None:
    """Why a structurally matched chain must stay unfused, or None."""
    plan_ = plan(chain)
    if isinstance(plan_, str):
        return plan_
    x = plan_.x.meta["val"]
    for name, node in (("weight", plan_.weight), ("bias", plan_.bias)):
        if node is not None and node.meta["val"].device != x.device:
            return f"{name} is on {node.meta['val'].device}, x on {x.device}"
    call = _meta_call(plan_)
    if isinstance(call, str):
        return call
    return conv1d_kernels.argument_error(call) or conv1d_kernels.unsupported_reason(call)


def _cuda_size_rule(chain: MatchedChain) -> str | None:
    """Why the fused op would not beat Inductor alone on this CUDA chain, or None.

    None refused: on the H200 (docs/BENCHMARKS.md run G, C = 8192) the fused op beat Inductor's
    cuDNN convolution + slice/SiLU kernel at every measured shape, 1.5x at one token and 3.3-7.2x
    from 128 tokens, in both layouts.
    """
    return None


def _describe(chain: MatchedChain) -> str:
    plan_ = plan(chain)
    if not isinstance(plan_, Plan):
        return chain.variant.name
    x = plan_.x.meta["val"]
    layout = "channel-last" if x.stride(1) < x.stride(2) else "channel-first"
    return f"{chain.variant.name} [{layout}, K={plan_.weight.meta['val'].shape[2]}]"


def _replacement(chain: MatchedChain) -> tuple[Callable[..., Any], list[Any]]:
    """The fused call as a function of (x, weight[, bias]) and those nodes."""
    plan_ = plan(chain)
    assert isinstance(plan_, Plan), plan_
    nodes = [plan_.x, plan_.weight] + ([plan_.bias] if plan_.bias is not None else [])

    def fused(x: torch.Tensor, weight: torch.Tensor, *bias: torch.Tensor) -> torch.Tensor:
        out = torch.ops.fusion_passes.causal_conv1d(
            x, weight[:, 0, :], bias[0] if bias else None, plan_.activation, plan_.conv_dtype, plan_.out_dtype
        )
        return out if plan_.transpose is None else out.permute(plan_.transpose)

    return fused, nodes


def is_depthwise_conv1d(node: torch.fx.Node) -> bool:
    """Whether ``node`` is a 1-D depthwise convolution (one input channel per group, groups = C): a candidate."""
    x, weight = (arg.meta.get("val") if isinstance(arg, torch.fx.Node) else None for arg in node.args[:2])
    if not isinstance(x, torch.Tensor) or not isinstance(weight, torch.Tensor) or x.dim() != 3 or weight.dim() != 3:
        return False
    return not node.args[6] and _equals(weight.shape[1], 1) and _equals(node.args[8], x.shape[1])


CAUSAL_CONV1D = register_family(
    FusionFamily(
        name="causal_conv1d",
        description="causal depthwise conv1d (padding K - 1, cut to L) + optional SiLU (F6)",
        variants=_variants,
        check=_check,
        cuda_size_rule=_cuda_size_rule,
        replacement=_replacement,
        # A depthwise conv1d left in the graph is reported (a training graph keeps the conv
        # output for backward, an intermediate used outside the chain); other convolutions
        # (patch embeddings) are not candidates.
        seed_targets=(aten.convolution.default,),
        seed_filter=is_depthwise_conv1d,
        seed_hops=4,
        unmatched_reason="the depthwise conv1d is not padded by K - 1 and cut to its first L outputs (a causal conv1d)",
        describe=_describe,
    )
)
