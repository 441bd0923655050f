"""Linear followed by tanh-GELU -> one GEMM with the GELU in its epilogue (``fusion_passes::linear_gelu``).

Inductor compiles a Linear followed by tanh-GELU (the FeedForward of FLUX, Qwen-Image, Wan,
HunyuanVideo) as a cuBLAS GEMM, then a pointwise kernel that reads and writes the whole
``[L, 4C]`` activation again. cuBLASLt computes the GELU in the GEMM's epilogue
(``aten._addmm_activation(bias, x, w.t(), use_gelu=True)``); the op runs that on CUDA.

The patterns are the GELU spellings models write, traced on an input ``h`` and widened by
``patterns.generalize`` (operand order, optional fp32 upcast of ``h``, a downcast to bf16 or fp16):
``F.gelu(h, approximate="tanh")`` (also ``nn.GELU("tanh")`` and diffusers' ``GELU`` /
``FeedForward("gelu-approximate")``, which call it) and the hand-written
``0.5 * h * (1 + tanh(sqrt(2 / pi) * (h + 0.044715 * h ** 3)))``. The check then reads what ``h``
is: a Linear's output as the post-grad graph spells it (``addmm(bias, x, w.t())``; ``mm`` then a
bias add, as Inductor unfuses an addmm that feeds pointwise ops on CUDA; ``mm`` alone; each
possibly reshaped back to the batched ``[B, L, N]``). A GELU of anything else is not a candidate.

Not fused, and reported: the exact (erf) GELU, ``F.gelu``'s default: cuBLASLt's GELU epilogue is
the tanh approximation, and there is no erf epilogue (on CPU ``_addmm_activation`` computes the erf
GELU, on CUDA the tanh one: the op's meaning would depend on the device). A chain whose pre-GELU
activation is also read elsewhere (a training graph saves it for backward). On CUDA, shapes not
measured faster (``cuda_refusal``), and any compile with max-autotune on.

Rounding: in bf16 or fp16 Inductor's graph rounds the GEMM's output to bf16 before the GELU; the
epilogue computes the GELU on the fp32 accumulator and rounds once (measured on the H200 at
``[4096, 3072] -> 12288``: error against an fp32 reference 1.7e-3 fused, 2.4e-3 unfused).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from fusion_passes.compat import PatternExpr, inductor_config, is_aten_overload
from fusion_passes.family import NotACandidate
from fusion_passes.graph_utils import CONVERT, RESHAPING_OPS
from fusion_passes.kernels import linear_gelu as linear_gelu_kernels
from fusion_passes.pattern_family import LeftoverSeeds, MatchedChain, PatternFamily, PatternVariant
from fusion_passes.patterns import generalize, hinted, is_pointwise, is_transparent, traced_pattern
from fusion_passes.report import describe_value, outside_use_reason

aten = torch.ops.aten
_GEMMS = (aten.mm.default, aten.addmm.default)
_VIEWS = (aten.reshape.default, aten.view.default)
# Views a GELU may read a Linear's output through (only a reshape is part of a fused chain).
_ANY_VIEW = RESHAPING_OPS | {aten.view.default, aten.permute.default, aten.select.int, aten.squeeze.dims}

# --- Profitability on CUDA --------------------------------------------------------------------
# Where the epilogue GEMM is measured faster than Inductor's GEMM then GELU kernel: every measured
# shape from 1024 tokens up (H200, bf16, with bias: K 1536 and 3072, N 8960 and 12288, M 1024 to
# 32760: 1.14-1.33x with CUDA graphs, 1.12-1.36x without; docs/BENCHMARKS.md run J). Below 1024
# tokens it is not measured: left to Inductor.
MIN_CUDA_ROWS = 1024


def cuda_refusal(rows: int, inner: int, cols: int) -> str | None:
    """Why an ``[rows, inner] @ [inner, cols]`` Linear + GELU on CUDA stays Inductor's, or None to fuse it."""
    if inductor_config.max_autotune or inductor_config.max_autotune_gemm:
        return (
            "max-autotune is on: Inductor's own GEMM templates fuse the GELU into their epilogue "
            "where they win the autotuning, so its choice is kept"
        )
    if rows < MIN_CUDA_ROWS:
        return (
            f"the Linear has {rows} rows (tokens); its GELU epilogue is measured faster than Inductor "
            f"from {MIN_CUDA_ROWS} rows on CUDA"
        )
    return None


# --- The spellings models use -------------------------------------------------------------------

SQRT_2_OVER_PI = math.sqrt(2 / math.pi)


def gelu_tanh(h: torch.Tensor) -> torch.Tensor:
    """``F.gelu(h, approximate="tanh")``: ``nn.GELU("tanh")``, diffusers' ``GELU`` and ``FeedForward("gelu-approximate")``."""
    return F.gelu(h, approximate="tanh")


def gelu_tanh_formula(h: torch.Tensor) -> torch.Tensor:
    """The hand-written tanh-GELU (transformers' ``NewGELUActivation``, GPT-2's ``gelu_new``)."""
    return 0.5 * h * (1 + torch.tanh(SQRT_2_OVER_PI * (h + 0.044715 * torch.pow(h, 3))))


SPELLINGS = {"gelu[tanh]": gelu_tanh, "gelu[tanh formula]": gelu_tanh_formula}


@dataclasses.dataclass(frozen=True)
class GeluForm:
    """One structural form: the spelling, and whether it runs on ``h``'s fp32 upcast, cast back."""

    spelling: str
    downcast: bool

    @property
    def name(self) -> str:
        """The report's name: e.g. ``gelu[tanh]/fp32->cast``."""
        return self.spelling + ("/fp32->cast" if self.downcast else "")


# Longer chains first: the downcast is tried before the GELU inside it.
FORMS = tuple(GeluForm(spelling, downcast) for downcast in (True, False) for spelling in SPELLINGS)


def _pattern(form: GeluForm) -> PatternExpr:
    """The spelling on ``h`` as it is (an fp32 example: no casts), or on ``h.float()`` cast back (a bf16
    example: ``F.gelu``'s own decomposition upcasts and downcasts a half input the same way)."""
    spelling = SPELLINGS[form.spelling]

    # traced_pattern names the pattern's input by this parameter.
    def gelu(h: torch.Tensor) -> torch.Tensor:
        return spelling(h.float()).to(h.dtype) if form.downcast else spelling(h)

    example = torch.empty(4, 8, dtype=torch.bfloat16 if form.downcast else torch.float32)
    return generalize(traced_pattern(gelu, [example]))


# --- What the GELU reads ------------------------------------------------------------------------


# From a GELU's tanh (erf) back to the GEMM: the sqrt(2/pi) product, the sum, the cube's products,
# an upcast, a view, the bias add (fewer for erf).
_HOPS_TO_GEMM = 9


def _producers(node: torch.fx.Node, hops: int) -> list[torch.fx.Node]:
    # ``node`` and the nodes it is computed from through at most ``hops`` pointwise ops and views.
    seen = {node: None}
    frontier = [node]
    for _ in range(hops):
        frontier = [
            arg for current in frontier if is_pointwise(current) or current.target in _ANY_VIEW
            for arg in current.all_input_nodes if arg not in seen
        ]
        seen.update(dict.fromkeys(frontier))
    return list(seen)


@dataclasses.dataclass(frozen=True)
class Linear:
    """The Linear a matched GELU reads: ``x [M, K] @ mat2 [K, N] (+ bias)``, possibly reshaped."""

    x: torch.fx.Node
    mat2: torch.fx.Node
    bias: torch.fx.Node | None
    # The chain's nodes from the GELU's input back to the GEMM (views, the bias add, the GEMM).
    nodes: tuple[torch.fx.Node, ...]
    # The shape the GEMM's [M, N] output is reshaped to (ints and symbolic-size nodes), if it is.
    shape: tuple[Any, ...] | None
    form: str


def _view_of(node: Any) -> Any:
    return node.args[0] if isinstance(node, torch.fx.Node) and node.target in _VIEWS else None


def _gemm_behind_view(node: Any) -> tuple[torch.fx.Node | None, list[torch.fx.Node]]:
    # The mm node (or None) that ``node`` is, possibly through one view; and the nodes passed.
    passed = []
    if _view_of(node) is not None:
        passed.append(node)
        node = node.args[0]
    if isinstance(node, torch.fx.Node) and node.target is aten.mm.default:
        return node, passed
    return None, passed


def linear_of(h: torch.fx.Node) -> Linear | str:
    """The Linear whose output ``h`` is, or why the chain cannot take it (a NotACandidate if ``h`` is no Linear's output)."""
    nodes = [h]
    node = h
    shape = None
    # Reshapes compose: the chain's result takes the outermost one's shape (a bf16 graph on CUDA
    # reshapes the Linear's 2-D output twice before the GELU's upcast).
    while _view_of(node) is not None:
        shape = tuple(node.args[1]) if shape is None else shape
        node = node.args[0]
        nodes.append(node)
    if node.target is aten.addmm.default:
        if node.kwargs or len(node.args) > 3:
            scales = {**dict(zip(("beta", "alpha"), node.args[3:])), **node.kwargs}
            return f"the Linear's addmm scales its terms ({scales}); the epilogue GEMM computes bias + x @ w"
        bias, x, mat2 = node.args
        return Linear(x, mat2, bias, tuple(nodes), shape, "addmm")
    if node.target is aten.mm.default:
        x, mat2 = node.args
        return Linear(x, mat2, None, tuple(nodes), shape, "mm")
    if node.target is aten.add.Tensor and not node.kwargs and all(isinstance(a, torch.fx.Node) for a in node.args):
        for gemm_side, bias in (node.args, reversed(node.args)):
            gemm, views = _gemm_behind_view(gemm_side)
            if gemm is None:
                continue
            if views and shape is not None:
                return NotACandidate("the Linear's output is reshaped twice")
            x, mat2 = gemm.args
            shape = tuple(views[0].args[1]) if views else shape
            return Linear(x, mat2, bias, (*nodes, *views, gemm), shape, "mm+bias")
    return NotACandidate("the GELU's input is not a Linear's output")


def _bias_shape_reason(linear: Linear, columns: Any) -> str | None:
    # The epilogue adds one [N] vector to every row; a bias of another shape is another computation.
    bias = hinted(linear.bias.meta.get("val"))
    if not isinstance(bias, torch.Tensor) or bias.shape[-1:] != (columns,) or any(size != 1 for size in bias.shape[:-1]):
        return f"the value added to the Linear's GEMM is not a [N] bias (N = {columns}): {describe_value(linear.bias)} has shape {tuple(getattr(bias, 'shape', ()))}"
    output_rank = len(linear.shape) if linear.shape is not None else 2
    if bias.dim() > output_rank:
        return f"the bias {tuple(bias.shape)} adds dims to the Linear's output"
    return None


def _upcasts_inside(node: torch.fx.Node, inside: set[torch.fx.Node]) -> list[torch.fx.Node]:
    # The exact fp32 upcasts of ``node`` that the chain reads (the pattern skips them) and that
    # only the chain reads: they go with it.
    return [
        user for user in node.users
        if is_transparent(user) and user.target is CONVERT and all(reader in inside for reader in user.users)
    ]


def _plan(chain: MatchedChain) -> Linear | str:
    # The Linear the matched GELU reads, or why the GELU does not read a Linear's output as it is.
    h = chain.nodes["h"]
    if not isinstance(h, torch.fx.Node) or h.op != "call_function":
        return NotACandidate("the GELU's input is not a Linear's output")
    linear = linear_of(h)
    if isinstance(linear, NotACandidate):
        gemm = next((node for node in _producers(h, _HOPS_TO_GEMM) if node.target in _GEMMS), None)
        if gemm is None:
            return linear
        operation = h.target.overloadpacket.__name__ if is_aten_overload(h.target) else h.target
        return (
            f"the GELU reads a {operation} ({describe_value(h)}) of the Linear's output {describe_value(gemm)}, "
            "not that output as it is (a reshape of it at most)"
        )
    return linear


class LinearGeluFamily(PatternFamily):
    """A Linear (addmm / mm + bias / mm, 2-D or batched) then tanh-GELU -> ``fusion_passes::linear_gelu``."""

    def variants(self) -> list[PatternVariant]:
        """Each spelling, on ``h`` or on its fp32 upcast cast back; the downcast forms first."""
        return [PatternVariant(form.name, functools.partial(_pattern, form), form) for form in FORMS]

    def plan(self, candidate: MatchedChain) -> Linear | str:
        """The Linear the matched GELU reads and fuses with, or why the GELU does not read one as it is."""
        return candidate.cached("plan", lambda: _plan(candidate))

    def legality(self, candidate: MatchedChain) -> str | None:
        """Why the op cannot compute the chain: the plan's reason, the bias, the op's checks, devices,
        the result's dtype, or a step to the pre-GELU activation read elsewhere."""
        linear = self.plan(candidate)
        if isinstance(linear, str):
            return linear
        values = [hinted(node.meta.get("val")) for node in (linear.x, linear.mat2)]
        if any(value is None for value in values):
            return "an operand has data-dependent sizes"
        x, mat2 = values
        if linear.bias is not None:
            reason = _bias_shape_reason(linear, mat2.shape[1])
            if reason is not None:
                return reason
        bias = hinted(linear.bias.meta["val"]).reshape(-1) if linear.bias is not None else None
        error = linear_gelu_kernels.argument_error(x, mat2, bias)
        if error is not None:
            return error
        devices = {node.meta["val"].device for node in (linear.x, linear.mat2, linear.bias) if node is not None}
        if len(devices) > 1:
            return f"the Linear's operands are on several devices: {sorted(map(str, devices))}"
        output = candidate.outputs[0].meta["val"]
        if output.dtype != x.dtype:
            return f"the chain's result dtype: expected the Linear's {x.dtype} (the epilogue rounds once, to it), got {output.dtype}"
        # The pre-GELU activation (and each step to it) must be read by the chain alone: a training
        # graph saves it for backward, a model may return it.
        inside = set(candidate.match.nodes) | set(linear.nodes)
        inside |= set(_upcasts_inside(linear.nodes[0], inside))
        return outside_use_reason(linear.nodes, inside)

    def profitability(self, candidate: MatchedChain) -> str | None:
        """Why the epilogue GEMM would not beat Inductor alone on this CUDA chain (``cuda_refusal``), or None."""
        linear = self.plan(candidate)
        assert isinstance(linear, Linear), linear
        (rows, inner), columns = hinted(linear.x.meta["val"]).shape, hinted(linear.mat2.meta["val"]).shape[1]
        return cuda_refusal(rows, inner, columns)

    def describe(self, candidate: MatchedChain) -> str:
        """The Linear's form (``addmm``, ``mm+bias``, ``mm``; `` 3-D`` when batched), then the variant's name."""
        linear = self.plan(candidate)
        if not isinstance(linear, Linear):
            return candidate.variant.name
        batched = "" if linear.shape is None else f" {len(linear.shape)}-D"
        return f"{linear.form}{batched} -> {candidate.variant.name}"

    def replacement(self, candidate: MatchedChain) -> tuple[Callable[..., Any], list[Any]]:
        """The fused call as a function of (x, mat2[, bias], symbolic sizes of the output shape) and those nodes."""
        linear = self.plan(candidate)
        assert isinstance(linear, Linear), linear
        operands = [linear.x, linear.mat2] + ([linear.bias] if linear.bias is not None else [])
        shape = linear.shape or ()
        sizes = [size for size in shape if isinstance(size, torch.fx.Node)]

        def fused(x: torch.Tensor, mat2: torch.Tensor, *rest: Any) -> torch.Tensor:
            bias = rest[0] if linear.bias is not None else None
            if bias is not None and bias.dim() != 1:
                bias = bias.reshape(-1)
            out = torch.ops.fusion_passes.linear_gelu(x, mat2, bias)
            if linear.shape is None:
                return out
            symbolic = iter(rest[len(operands) - 2:])
            return out.reshape([next(symbolic) if isinstance(size, torch.fx.Node) else size for size in shape])

        return fused, operands + sizes


# --- Near misses no pattern explains ----------------------------------------------------------------


def gemm_before(seed: torch.fx.Node) -> torch.fx.Node | None:
    """The GEMM a GELU's tanh or erf ``seed`` is computed from (through pointwise ops and views), if any.

    A tanh counts only with the tanh-GELU's ``sqrt(2 / pi)`` factor among its producers: a tanh
    activation after a Linear is no GELU.
    """
    producers = _producers(seed, _HOPS_TO_GEMM)
    if seed.target is aten.tanh.default and not any(
        node.target is aten.mul.Tensor and SQRT_2_OVER_PI in node.args for node in producers
    ):
        return None
    return next((node for node in producers if node.target in _GEMMS), None)


def unmatched_reason(seed: torch.fx.Node) -> str:
    """Why a GELU after a Linear, found by its tanh or erf, did not fuse where no pattern says it."""
    gemm = describe_value(gemm_before(seed))
    if seed.target is aten.erf.default:
        return (
            f"an exact (erf) GELU of the Linear's output {gemm}: cuBLASLt's GELU epilogue computes the tanh "
            "approximation and no GEMM epilogue computes the erf one; use approximate=\"tanh\" to fuse it"
        )
    return (
        f"the tanh-GELU after the Linear {gemm} does not read the Linear's output as it is (a reshape of it "
        "at most) in a spelling the family matches: F.gelu(h, approximate=\"tanh\") or "
        "0.5 * h * (1 + tanh(sqrt(2 / pi) * (h + 0.044715 * h ** 3)))"
    )


LINEAR_GELU = LinearGeluFamily(
    name="linear_gelu",
    description="Linear (addmm / mm + bias / mm, 2-D or batched) -> tanh-GELU: one GEMM with a GELU epilogue",
    # A GELU after a Linear left in the graph is reported: an erf GELU, a tanh-GELU in a spelling
    # or through a view the patterns do not take; a tanh activation or a GELU of anything else is
    # not a candidate.
    leftover_seeds=LeftoverSeeds(
        targets=(aten.tanh.default, aten.erf.default),
        # From the tanh to the chain's end: the sum with 1, the product with 0.5 * h, a downcast.
        hops=3,
        reason=unmatched_reason,
        accept=lambda seed: gemm_before(seed) is not None,
    ),
)
