"""AdaLN fusions: a norm followed by modulation, optionally after a gated residual.

- ``adaln``: ``N(x) * (1 + scale) + shift`` -> ``fusion_passes::norm_modulate``.
- ``residual_adaln``: ``r = residual + gate * x``, then the ``adaln`` chain on ``r``, where ``r`` is
  also used later -> ``fusion_passes::residual_norm_modulate`` returning both. An
  LLM's residual add and RMSNorm (``weight * norm(r).to(r.dtype)``, no modulation) is the same
  chain with the weight as a bare multiplier.
- One norm feeding two modulations (SD3.5's dual AdaLN) -> ``fusion_passes::norm_modulate_pair``
  (part of ``adaln``): x read once, both outputs written.
- A per-row choice (``select01``) is not a pattern: where a modulation operand is
  ``torch.where(cond, a, b)`` with one boolean per row (an image-edit model's per-token choice
  between two modulation sets, row 0 or row 1), the fused op takes ``a``, ``b`` and ``cond`` and
  loads only the chosen row.

The patterns are generated from one description: each norm spelling (``F.layer_norm`` with no
affine, weight, or weight and bias; ``F.rms_norm`` with and without weight; a hand-written
RMSNorm with float32 statistics that rounds before its weight) is traced in two precisions: as
the fp32 computation ``N(x.float())`` and as a half-precision norm that rounds its output.
``residual_adaln`` composes each with the residual forms (gated or not; the sum stored as computed or cast back
to the residual's dtype). ``patterns.generalize`` widens them to either operand order, optional
upcasts, and bf16 or fp16.

The multiplier is a pattern input: the plan accepts it only where the graph computes it as
``1 + scale`` (inline, or earlier and reshaped, as in ``(1 + scale)[:, None, :]``); a norm times a
bare ``scale`` is a different computation and stays unfused. A trailing cast of the result
(``(...).type_as(x)``) is folded into the op afterwards.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import operator
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.fx.experimental.symbolic_shapes import statically_known_true

from fusion_passes.compat import MULTIPLE, MultiOutputPattern, PatternExpr
from fusion_passes.family import NotACandidate
from fusion_passes.graph_utils import CONVERT, RESHAPING_OPS
from fusion_passes.kernels import adaln as adaln_kernels
from fusion_passes.norms import EPS_SENTINEL, NORM_FORMS, TRACE_DTYPE, NormForm, normalized
from fusion_passes.pattern_family import LeftoverSeeds, MatchedChain, PatternFamily, PatternVariant, nearby_users
from fusion_passes.patterns import (
    DistinctFrom,
    OptionalCast,
    generalize,
    hinted,
    is_pointwise,
    is_transparent,
    substitute,
    traced_pattern,
    with_signature,
)
from fusion_passes.report import describe_value

aten = torch.ops.aten

# Where the fused op beats Inductor alone on CUDA (docs/BENCHMARKS.md, H100 and H200): hidden
# sizes from MIN_CUDA_HIDDEN to MAX_CUDA_HIDDEN (at 1024 and below Inductor's persistent reduction
# wins; at 16384 the kernel lost 2% on an H100) and x of at least MIN_CUDA_ELEMENTS (below it the
# small kernels a rewrite leaves, such as an fp32 cast of the modulation, cost more than the
# fusion saves). When an ``adaln`` chain's x comes from a pointwise op used only there (a residual
# add), Inductor fuses that op into its own norm kernel; replacing the norm splits it off,
# measured 0.74-0.91x on an H100 at every size: left to Inductor. The same holds for a cat (FLUX's
# single block normalizes cat([text, image]), which Inductor reads in its norm kernel; fused, the
# cat is stored and read once more). A residual sum with a per-row
# modulation choice (select01) fused whole measured 1.00x: left to Inductor as well. So is an
# LLM's residual add and RMSNorm with its weight alone (no modulation): 0.95-0.98x of Inductor
# alone on an H200.
MIN_CUDA_HIDDEN = 1152
MAX_CUDA_HIDDEN = 8192
MIN_CUDA_ELEMENTS = 1 << 20


# --- The spellings models use -------------------------------------------------------------------


def modulated_norm(
    x: torch.Tensor,
    multiplier: torch.Tensor,
    eps: float,
    form: NormForm,
    precision: str,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    shift: torch.Tensor | None = None,
) -> torch.Tensor:
    """The ``adaln`` chain as traced: ``N(x) * multiplier (+ shift)``; ``precision`` "fp32" normalizes ``x.float()``."""
    normed = normalized(x, eps, form, precision, weight, bias) * multiplier.float()
    return normed if shift is None else normed + shift.float()


@dataclasses.dataclass(frozen=True)
class ResidualForm:
    """How a model writes ``r = residual + gate * x`` (the sum may then be cast back to the
    residual's dtype, the fp32 form ``(residual.float() + x * gate).type_as(residual)``)."""

    name: str
    gated: bool


RESIDUAL_FORMS = (ResidualForm("residual+gate*x", gated=True), ResidualForm("residual+x", gated=False))


def gated_residual(residual: torch.Tensor, x: torch.Tensor, form: ResidualForm, gate: torch.Tensor | None = None) -> torch.Tensor:
    """The residual sum of ``residual_adaln`` as traced (upcasts everywhere; generalize makes each optional)."""
    update = x.float() * gate.float() if form.gated else x.float()
    return residual.float() + update


# --- Pattern variants ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ChainForm:
    """What a variant matches: the norm ("layer" or "rms"), where a half-precision norm rounds, whether
    a shift follows, the residual form before the norm (None: none), and whether one norm feeds two
    modulations."""

    norm: str
    rounding: str
    shift: bool
    residual: ResidualForm | None
    pair: bool



def _example(name: str) -> Any:
    shapes = {"x": (2, 8, 16), "residual": (2, 8, 16), "weight": (16,), "bias": (16,)}
    if name == "eps":
        return EPS_SENTINEL
    return torch.empty(shapes.get(name, (2, 1, 16)), dtype=TRACE_DTYPE)


@functools.cache
def _modulated_norm_pattern(form: NormForm, precision: str, with_shift: bool) -> PatternExpr:
    params = ("x", "multiplier", "eps", *form.affine, *(("shift",) if with_shift else ()))

    def search(**operands: Any) -> torch.Tensor:
        return modulated_norm(form=form, precision=precision, **operands)

    fn = with_signature(search, params)
    return traced_pattern(fn, [_example(name) for name in params], {"eps": EPS_SENTINEL})


@functools.cache
def _pair_pattern(form: NormForm, precision: str) -> PatternExpr:
    params = ("x", "multiplier", "shift", "multiplier2", "shift2", "eps", *form.affine)

    def search(**operands: Any) -> tuple[torch.Tensor, ...]:
        # One norm, two modulations (SD3.5's dual AdaLN): ``(n * m + t, n * m2 + t2)``.
        normed = normalized(operands["x"], operands["eps"], form, precision, operands.get("weight"), operands.get("bias"))
        modulations = (("multiplier", "shift"), ("multiplier2", "shift2"))
        return tuple(normed * operands[scale].float() + operands[shift].float() for scale, shift in modulations)

    return traced_pattern(with_signature(search, params), [_example(name) for name in params], {"eps": EPS_SENTINEL})


@functools.cache
def _residual_pattern(form: ResidualForm) -> PatternExpr:
    params = ("residual", "x", *(("gate",) if form.gated else ()))

    def search(**operands: Any) -> torch.Tensor:
        return gated_residual(form=form, **operands)

    pattern = traced_pattern(with_signature(search, params), [_example(name) for name in params])
    # The sum is an output, used by the norm and later; cast back or not, the fused op stores r in
    # the graph's dtype for it.
    pattern.users = MULTIPLE
    return OptionalCast(pattern)


def _norm_variants() -> list[tuple[NormForm, str, str]]:
    # (form, precision, rounding); fp32 forms that differ only in where a half form rounds are one.
    variants, seen = [], set()
    for form, precision in itertools.product(NORM_FORMS, ("fp32", "half")):
        rounding = form.half_rounding if precision == "half" else "none"
        key = (form.norm, form.affine, rounding)
        if key not in seen:
            seen.add(key)
            variants.append((form, precision, rounding))
    return variants


def _distinct_outputs(pattern: MultiOutputPattern) -> MultiOutputPattern:
    # Both modulations have the same structure: the second must be found at another node. It is
    # an output, so any number of users.
    first, second = pattern.outputs
    second.users = MULTIPLE
    return MultiOutputPattern([first, DistinctFrom(second, first)])


def _pair_variants() -> list[PatternVariant]:
    # Tried before the single modulations: their shared norm has two users, which those refuse.
    return [
        PatternVariant(
            name=f"{form.name}/{precision}*(1+scale)+shift x2",
            pattern=lambda form=form, precision=precision: _distinct_outputs(generalize(_pair_pattern(form, precision))),
            form=ChainForm(norm=form.norm, rounding=rounding, shift=True, residual=None, pair=True),
        )
        for form, precision, rounding in _norm_variants()
    ]


def _variants(residual: bool) -> list[PatternVariant]:
    variants = [] if residual else _pair_variants()
    residual_forms: Sequence[ResidualForm | None] = RESIDUAL_FORMS if residual else (None,)
    for (form, precision, rounding), with_shift, residual_form in itertools.product(
        _norm_variants(), (True, False), residual_forms
    ):
        tail = "*(1+scale)+shift" if with_shift else "*(1+scale)"
        name = f"{form.name}/{precision}{tail}"
        if residual_form is not None:
            name = f"{residual_form.name} -> {name}"

        def build(form=form, precision=precision, with_shift=with_shift, residual_form=residual_form) -> PatternExpr:
            pattern = _modulated_norm_pattern(form, precision, with_shift)
            if residual_form is not None:
                head = _residual_pattern(residual_form)
                pattern = MultiOutputPattern([substitute(pattern, {"x": head}), head])
            return generalize(pattern)

        chain_form = ChainForm(norm=form.norm, rounding=rounding, shift=with_shift, residual=residual_form, pair=False)
        variants.append(PatternVariant(name=name, pattern=build, form=chain_form))
    return variants


# --- What a match computes ----------------------------------------------------------------------

# Ops the multiplier may pass through after ``1 + scale`` is computed.
_VIEW_OPS = RESHAPING_OPS | {aten.view.default}
_ADD_ONE = {aten.add.Tensor, aten.add.Scalar}


# A modulation operand: a graph value, or a Python number the graph multiplies or adds (``+ 0.3``,
# ``0.5 * x``); the fused op reads a number as a 0-d float32 tensor.
Operand = "torch.fx.Node | float"


def is_number(value: Any) -> bool:
    """Whether ``value`` is a Python int or float (a bool is neither)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclasses.dataclass(frozen=True)
class Plan:
    """The fused call a match becomes: operand nodes, settings, and the views to replay on scale."""

    residual: torch.fx.Node | None
    x: torch.fx.Node
    gate: tuple[Operand, ...]
    weight: torch.fx.Node | None
    bias: torch.fx.Node | None
    scale: tuple[Operand, ...]
    scale_views: tuple[torch.fx.Node, ...]  # applied to each scale tensor, innermost first
    shift: tuple[Operand, ...]
    select: torch.fx.Node | None
    eps: float
    norm: str
    rounding: str
    residual_dtype: torch.dtype | None
    out_dtype: torch.dtype
    # False where the norm is multiplied by a number ``m`` (scale is then ``m`` itself).
    scale_plus_one: bool = True
    # The second modulation of a pair (SD3.5's dual AdaLN), else empty.
    scale2: tuple[torch.fx.Node, ...] = ()
    scale2_views: tuple[torch.fx.Node, ...] = ()
    shift2: tuple[Operand, ...] = ()
    out_dtype2: torch.dtype | None = None

    @property
    def multiplied_by_weight(self) -> bool:
        """Whether the norm is multiplied by a tensor the same for every row (its weight), not by ``1 + scale``."""
        return not self.scale_plus_one and isinstance(self.scale[0], torch.fx.Node)

    def describe(self, variant_name: str) -> str:
        """The report's name of the fused chain, from its variant's name."""
        if self.multiplied_by_weight:
            variant_name = variant_name.removesuffix("*(1+scale)") + "*weight"
        return variant_name + (" +select01" if self.select is not None else "")


def _used_outside(node: torch.fx.Node, inside: set[torch.fx.Node]) -> bool:
    # Users reached through skipped upcasts and clones count as inside when theirs are.
    return any(
        user not in inside and not (is_transparent(user) and not _used_outside(user, inside)) for user in node.users
    )


def _is_one(value: Any) -> bool:
    return is_number(value) and value == 1


def _split_multiplier(node: Any) -> tuple[torch.fx.Node, tuple[torch.fx.Node, ...]] | None:
    """``(scale, views)`` if ``node`` is ``1 + scale`` seen through shape-only ops, else None."""
    views = []
    while isinstance(node, torch.fx.Node) and node.op == "call_function" and node.target in _VIEW_OPS:
        views.append(node)
        node = node.args[0]
    if not (isinstance(node, torch.fx.Node) and node.op == "call_function" and node.target in _ADD_ONE):
        return None
    if node.kwargs.get("alpha", 1) != 1:  # scale + alpha * 1
        return None
    first, second = node.args[:2]
    if _is_one(second) and isinstance(first, torch.fx.Node):
        return first, tuple(reversed(views))
    if _is_one(first) and isinstance(second, torch.fx.Node):
        return second, tuple(reversed(views))
    return None


def _per_row_condition(node: Any, x: torch.Tensor) -> torch.fx.Node | None:
    """The condition of ``torch.where(cond, a, b)`` if it holds one boolean per row of ``x``."""
    if not (isinstance(node, torch.fx.Node) and node.op == "call_function" and node.target == aten.where.self):
        return None
    cond = node.args[0]
    value = hinted(cond.meta.get("val")) if isinstance(cond, torch.fx.Node) else None
    row_shape = (*x.shape[:-1], 1)
    if value is None or value.dtype != torch.bool or value.dim() > len(row_shape):
        return None
    if not all(size in (1, row) for size, row in zip(reversed(value.shape), reversed(row_shape))):
        return None
    if not all(isinstance(arg, torch.fx.Node) for arg in node.args[1:]):
        return None
    return cond


def _gate_likeness(operand: Operand, stream: torch.Tensor) -> int:
    # A gate is a number (3), broadcasts over tokens (2) or is chosen per row (1); the gated value
    # is none of these.
    if is_number(operand):
        return 3
    if operand.meta["val"].shape != stream.shape:
        return 2
    return 1 if _per_row_condition(operand, stream) is not None else 0


def _selected(operand: Operand | None, select: torch.fx.Node | None) -> tuple[Operand, ...]:
    if operand is None:
        return ()
    if select is not None and getattr(operand, "target", None) == aten.where.self and operand.args[0] is select:
        return tuple(operand.args[1:3])
    return (operand, operand) if select is not None else (operand,)


def _is_weighted_residual_norm(chain: MatchedChain) -> bool:
    """Whether ``chain`` is a residual sum used later, RMS-normalized and multiplied by a weight alone.

    LayerNorm is left out: after a residual sum it has a bias too (a DiT's unmodulated
    cross-attention norm), which this chain would leave outside the fused op.
    """
    form: ChainForm = chain.variant.form
    if form.norm != "rms" or form.residual is None or form.pair or chain.nodes.get("shift") is not None:
        return False
    return _used_outside(chain.outputs[1], set(chain.match.nodes))


def _plan(chain: MatchedChain) -> Plan | str:
    form: ChainForm = chain.variant.form
    nodes = chain.nodes
    if not is_number(nodes["eps"]):
        return f"eps is a tensor ({describe_value(nodes['eps'])}), not a number: the fused op takes eps as a constant"
    multiplier = nodes["multiplier"]
    if is_number(multiplier):
        # A norm times a number: fused as a bare multiplier where a tensor modulates it too.
        if form.pair or nodes.get("shift") is None or is_number(nodes["shift"]):
            return NotACandidate(f"the norm is multiplied by the constant {multiplier}")
        scale, scale_views, scale_plus_one = float(multiplier), (), False
    elif (split := _split_multiplier(multiplier)) is not None:
        (scale, scale_views), scale_plus_one = split, True
    else:
        reason = f"the norm is multiplied by {describe_value(multiplier)}, which is not 1 + scale"
        if sum(size != 1 for size in chain.value("multiplier").shape[:-1]) != 0:
            return reason
        # The same over all rows: the norm's own weight. Alone (an RMSNorm before RoPE, an LLM's
        # final norm) it is not AdaLN; after a residual sum used later (an LLM's residual add and
        # RMSNorm, ``weight * norm(r).to(r.dtype)``) the fused op computes both, the weight as a
        # bare multiplier after the norm's rounding: no modulation.
        if not _is_weighted_residual_norm(chain):
            return NotACandidate(reason)
        scale, scale_views, scale_plus_one = multiplier, (), False
    second: dict[str, Any] = {}
    if form.pair:
        split2 = None if is_number(nodes["multiplier2"]) else _split_multiplier(nodes["multiplier2"])
        if split2 is None:
            return f"the norm's second use is multiplied by {describe_value(nodes['multiplier2'])}, which is not 1 + scale"
        second = dict(
            scale2=(split2[0],), scale2_views=split2[1], shift2=(nodes["shift2"],),
            out_dtype2=chain.outputs[1].meta["val"].dtype,
        )
    residual_form = form.residual
    y_node = chain.outputs[0]
    r_node = chain.outputs[1] if residual_form is not None else None
    if r_node is not None and not _used_outside(r_node, set(chain.match.nodes)):
        return "the residual sum is used only by the norm (the single-output fusion applies)"
    stream = chain.value("x") if r_node is None else r_node.meta["val"]
    x, gate = nodes["x"], nodes.get("gate")
    if gate is not None and _gate_likeness(x, stream) > _gate_likeness(gate, stream):
        # gate * x is symmetric: the pattern may have bound the gate to x.
        x, gate = gate, x
    for name, operand in (("x", x), ("residual", nodes.get("residual"))):
        if is_number(operand):
            return f"the residual sum adds the constant {operand} where the fused op reads a tensor {name}"
    # select01: operands chosen per row by one condition (views after the choice are not followed).
    candidates = [] if second else [gate, nodes.get("shift"), None if scale_views else scale]
    select = next((c for c in (_per_row_condition(n, stream) for n in candidates) if c is not None), None)
    if scale_views:
        scale_operands = (scale,) * (1 if select is None else 2)
    else:
        scale_operands = _selected(scale, select)
    plan = Plan(
        residual=nodes.get("residual"),
        x=x,
        gate=_selected(gate, select),
        weight=nodes.get("weight"),
        bias=nodes.get("bias"),
        scale=scale_operands,
        scale_views=scale_views,
        shift=_selected(nodes.get("shift"), select),
        select=select,
        eps=nodes["eps"],
        norm=form.norm,
        rounding=form.rounding,
        residual_dtype=None if r_node is None else r_node.meta["val"].dtype,
        out_dtype=y_node.meta["val"].dtype,
        scale_plus_one=scale_plus_one,
        **second,
    )
    for node in chain.match.nodes:
        if node.target is CONVERT and node.args[1] != torch.float32 and node.args[1] != stream.dtype:
            return f"the chain casts to {node.args[1]}, not to its input's dtype {stream.dtype}"
    return plan


class _DataDependent(Exception):
    pass


def _meta_operand(node: Operand | None) -> torch.Tensor | None:
    # The meta tensor standing for an operand at its compile-time sizes (a number: a 0-d float32).
    if node is None:
        return None
    if is_number(node):
        return torch.empty((), dtype=torch.float32, device="meta")
    value = hinted(node.meta.get("val"))
    if value is None:
        raise _DataDependent(f"{describe_value(node)} has data-dependent sizes")
    return value


def _meta_call(chain: MatchedChain, plan: Plan) -> adaln_kernels.NormModulate:
    # The fused call on meta tensors of compile-time sizes, for the kernel's own operand checks.
    if plan.scale_views:
        # Each scale tensor is reshaped like the multiplier before it reaches the op.
        multiplier = _meta_operand(chain.nodes["multiplier"])
        scale = tuple(multiplier.to(node.meta["val"].dtype) for node in plan.scale)
    else:
        scale = tuple(_meta_operand(node) for node in plan.scale)
    scale2 = ()
    if plan.scale2:
        multiplier2 = _meta_operand(chain.nodes["multiplier2"]) if plan.scale2_views else _meta_operand(plan.scale2[0])
        scale2 = (multiplier2.to(plan.scale2[0].meta["val"].dtype),)
    return adaln_kernels.NormModulate(
        x=_meta_operand(plan.x), residual=_meta_operand(plan.residual), gate=tuple(_meta_operand(node) for node in plan.gate),
        weight=_meta_operand(plan.weight), bias=_meta_operand(plan.bias), scale=scale,
        shift=tuple(_meta_operand(node) for node in plan.shift), select=_meta_operand(plan.select), eps=plan.eps,
        norm=plan.norm, scale_plus_one=plan.scale_plus_one, rounding=plan.rounding, residual_dtype=plan.residual_dtype,
        out_dtype=plan.out_dtype, scale2=scale2, shift2=tuple(_meta_operand(node) for node in plan.shift2),
        out_dtype2=plan.out_dtype2,
    )


def _replay_views(tensor: torch.Tensor, views: Sequence[torch.fx.Node]) -> torch.Tensor:
    for view in views:
        tensor = view.target(tensor, *view.args[1:], **view.kwargs)
    return tensor


def _fused_call(plan: Plan) -> tuple[Callable[..., Any], list[Any]]:
    # The fused call as a function of the plan's operand nodes (flattened), and those nodes.
    flat: list[torch.fx.Node] = []

    def slots(operands: Sequence[Operand | None]) -> list[int | float | None]:
        # Each operand's index in ``flat`` (a graph value), itself (a number), or None (absent).
        indices: list[int | float | None] = []
        for operand in operands:
            if isinstance(operand, torch.fx.Node):
                flat.append(operand)
                indices.append(len(flat) - 1)
            else:
                indices.append(None if operand is None else float(operand))
        return indices

    residual, x, weight, bias, select = slots([plan.residual, plan.x, plan.weight, plan.bias, plan.select])
    gate, scale, shift = slots(plan.gate), slots(plan.scale), slots(plan.shift)
    scale2, shift2 = slots(plan.scale2), slots(plan.shift2)

    def fused(*args: torch.Tensor) -> Any:
        def get(slot: int | float | None) -> torch.Tensor | None:
            if slot is None:
                return None
            if isinstance(slot, float):
                return torch.full((), slot, dtype=torch.float32, device=args[x].device)
            return args[slot]

        def getall(slots_: Sequence[int | float | None]) -> list[torch.Tensor]:
            return [get(slot) for slot in slots_]

        settings = dict(eps=plan.eps, norm=plan.norm, scale_plus_one=plan.scale_plus_one, rounding=plan.rounding)
        scales = [_replay_views(tensor, plan.scale_views) for tensor in getall(scale)]
        if plan.scale2:
            return torch.ops.fusion_passes.norm_modulate_pair(
                get(x), get(weight), get(bias), scales, getall(shift),
                [_replay_views(tensor, plan.scale2_views) for tensor in getall(scale2)], getall(shift2),
                out_dtype=plan.out_dtype, out_dtype2=plan.out_dtype2, **settings,
            )
        if plan.residual is None:
            return torch.ops.fusion_passes.norm_modulate(
                get(x), get(weight), get(bias), scales, getall(shift), get(select), out_dtype=plan.out_dtype, **settings
            )
        return torch.ops.fusion_passes.residual_norm_modulate(
            get(residual), get(x), getall(gate), get(weight), get(bias), scales, getall(shift), get(select),
            residual_dtype=plan.residual_dtype, out_dtype=plan.out_dtype, **settings,
        )

    return fused, flat


# Each fused op's foldable outputs: (output index or None for a single output, dtype argument).
_FOLDABLE_OUTPUTS = (
    (torch.ops.fusion_passes.norm_modulate.default, ((None, -1),)),
    (torch.ops.fusion_passes.residual_norm_modulate.default, ((0, -1),)),
    (torch.ops.fusion_passes.norm_modulate_pair.default, ((0, -2), (1, -1))),
)


def fold_output_casts(graph: torch.fx.Graph) -> None:
    """Fold ``fused(...).to(dtype)`` into the fused op when it computed in fp32 (nothing rounds twice)."""
    for target, outputs in _FOLDABLE_OUTPUTS:
        for node in graph.find_nodes(op="call_function", target=target):
            for output_index, dtype_index in outputs:
                y = node if output_index is None else next(
                    (user for user in node.users if user.target is operator.getitem and user.args[1] == output_index),
                    None,
                )
                if y is None or len(y.users) != 1 or y.meta["val"].dtype != torch.float32:
                    continue
                (cast,) = y.users
                if cast.target is not CONVERT or cast.args[1] not in adaln_kernels.SUPPORTED_DTYPES:
                    continue
                node.update_arg(len(node.args) + dtype_index, cast.args[1])
                y.meta["val"] = cast.meta["val"]
                if output_index is not None:
                    values = list(node.meta["val"])
                    values[output_index] = cast.meta["val"]
                    node.meta["val"] = tuple(values)
                cast.replace_all_uses_with(y)
                graph.erase_node(cast)


# Uses from an RMSNorm's statistic to its modulation: the eps add, the root, the product, a
# downcast, a weight and its downcast, then ``* (1 + scale)``.
_RMS_CHAIN_HOPS = 8
_LAYER_NORM_UNMATCHED = "the norm is not followed by a supported * (1 + scale) + shift"


def _is_rms_statistic(node: torch.fx.Node) -> bool:
    """Whether ``node`` is ``mean(x * x)`` over the last dim, dims kept: an RMSNorm's statistic."""
    dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    if node.target is not aten.mean.dim or not isinstance(dims, (list, tuple)) or list(dims) != [-1]:
        return False
    keepdim = node.args[2] if len(node.args) > 2 else node.kwargs.get("keepdim", False)
    square = node.args[0]
    if not keepdim or not isinstance(square, torch.fx.Node):
        return False
    if square.target is aten.pow.Tensor_Scalar:
        return square.args[1] == 2
    return square.target is aten.mul.Tensor and square.args[0] is square.args[1]


def is_candidate_norm(seed: torch.fx.Node) -> bool:
    """Whether a norm's statistic marks an AdaLN candidate: every LayerNorm, and an RMSNorm that is
    multiplied by ``1 + scale`` or normalizes a residual sum used later (a plain RMSNorm, such as a
    q/k norm or an LLM's final norm, is not one)."""
    if seed.target is not aten.mean.dim:
        return True
    if not _is_rms_statistic(seed):
        return False
    nearby = nearby_users(seed, _RMS_CHAIN_HOPS)
    if any(node.target is aten.mul.Tensor and any(_split_multiplier(arg) for arg in node.args) for node in nearby):
        return True
    source = seed.args[0].args[0]
    while is_transparent(source):
        source = source.args[0]
    # The norm reads its input in the square and in the product (or quotient) by the root.
    norm_nodes = {seed.args[0], *nearby_users(seed, 3)}
    return getattr(source, "target", None) is aten.add.Tensor and _used_outside(source, norm_nodes)


def unmatched_reason(seed: torch.fx.Node) -> str:
    """Why a candidate norm left in the graph did not fuse, where no pattern says more."""
    if seed.target is not aten.mean.dim:
        return _LAYER_NORM_UNMATCHED
    if any(user.target in (aten.sqrt.default, aten.rsqrt.default) for user in seed.users):
        return "eps is added outside the root of the mean square (x / (sqrt(mean(x**2)) + eps)): not the RMSNorm the fused op computes"
    return (
        "the RMSNorm is not spelled x * rsqrt(x.pow(2).mean(-1) + eps) (or x / sqrt(...)) followed by * (1 + scale) "
        "(+ shift), or by its weight after a residual sum used later"
    )


class AdalnFamily(PatternFamily):
    """A modulated norm (``adaln``), or a residual sum and a modulated norm of it (``residual_adaln``)."""

    def __init__(self, name: str, description: str, residual: bool, leftover_seeds: LeftoverSeeds | None) -> None:
        super().__init__(name, description, leftover_seeds)
        self.residual = residual

    def variants(self) -> list[PatternVariant]:
        """Every norm spelling and precision, with and without shift (and each residual form; or as a pair)."""
        return _variants(self.residual)

    def plan(self, candidate: MatchedChain) -> Plan | str:
        """The fused call for the chain, or why it cannot be fused (before shape and size rules)."""
        return candidate.cached("plan", lambda: _plan(candidate))

    def legality(self, candidate: MatchedChain) -> str | None:
        """Why the fused op cannot compute the chain: its plan's reason, devices, the kernel's checks, shapes.

        Symbolic (dynamic) shapes are checked at their compile-time sizes; at run time the op checks
        the real sizes again and falls back to its reference for any the kernel does not take.
        """
        plan = self.plan(candidate)
        if isinstance(plan, str):
            return plan
        x = plan.x.meta["val"]
        for name in ("residual", "gate", "weight", "bias", "scale", "shift", "select", "scale2", "shift2"):
            nodes = getattr(plan, name)
            for node in nodes if isinstance(nodes, tuple) else (nodes,):
                tensor = node.meta.get("val") if isinstance(node, torch.fx.Node) else None
                if isinstance(tensor, torch.Tensor) and tensor.device != x.device:
                    return f"{name} is on {tensor.device}, x on {x.device}"
        try:
            call = _meta_call(candidate, plan)
        except _DataDependent as error:
            return str(error)
        reason = adaln_kernels.unsupported_reason(call)
        if reason is not None:
            return reason
        for output in candidate.outputs:
            shape = output.meta["val"].shape
            if len(shape) != x.dim() or not all(statically_known_true(a == b) for a, b in zip(shape, x.shape)):
                return f"the chain's output shape {tuple(shape)} is not provably x's {tuple(x.shape)}"
        return None

    def profitability(self, candidate: MatchedChain) -> str | None:
        """Why the fused op would not beat Inductor alone on this CUDA chain (see MIN_CUDA_HIDDEN), or None.

        Symbolic sizes are judged at their compile-time values (as Inductor's own heuristics are).
        """
        plan = self.plan(candidate)
        assert isinstance(plan, Plan), plan
        x = hinted(plan.x.meta["val"])
        if not MIN_CUDA_HIDDEN <= x.shape[-1] <= MAX_CUDA_HIDDEN:
            return (
                f"hidden size {x.shape[-1]} is outside {MIN_CUDA_HIDDEN}..{MAX_CUDA_HIDDEN}, "
                "where the fused op was measured faster on CUDA"
            )
        if plan.residual is None and (is_pointwise(plan.x) or getattr(plan.x, "target", None) is aten.cat.default):
            producer = "a cat" if plan.x.target is aten.cat.default else "a pointwise op"
            return f"x comes from {producer} that Inductor fuses into its own norm; splitting it off was measured slower on CUDA"
        if plan.select is not None and plan.residual is not None:
            return "a residual sum with a per-row modulation choice (select01) was not measured faster than Inductor on CUDA"
        if plan.multiplied_by_weight:
            return "a residual sum's RMSNorm with its weight alone (no modulation) was measured slower than Inductor on CUDA (0.95-0.98x)"
        if x.numel() < MIN_CUDA_ELEMENTS:
            return f"x has {x.numel()} elements, below the measured CUDA break-even {MIN_CUDA_ELEMENTS}"
        return None

    def describe(self, candidate: MatchedChain) -> str:
        """The variant's name, ``*weight`` for a bare weight multiplier, `` +select01`` for a per-row choice."""
        plan = self.plan(candidate)
        return plan.describe(candidate.variant.name) if isinstance(plan, Plan) else candidate.variant.name

    def replacement(self, candidate: MatchedChain) -> tuple[Callable[..., Any], list[Any]]:
        """The fused call as a function of the chain's operand nodes (flattened), and those nodes."""
        plan = self.plan(candidate)
        assert isinstance(plan, Plan), plan
        return _fused_call(plan)

    def after_rewrite(self, graph: torch.fx.Graph) -> None:
        """Fold the casts of fused results into the ops."""
        fold_output_casts(graph)


RESIDUAL_ADALN = AdalnFamily(
    name="residual_adaln",
    description="residual + gate * x -> norm -> * (1 + scale) + shift, both r and y",
    residual=True,
    # Norms left over are explained once, by adaln.
    leftover_seeds=None,
)
ADALN = AdalnFamily(
    name="adaln",
    description="norm -> * (1 + scale) + shift (AdaLN modulation)",
    residual=False,
    leftover_seeds=LeftoverSeeds(
        # LayerNorm's var_mean and RMSNorm's mean of squares.
        targets=(aten.var_mean.correction, aten.mean.dim),
        hops=12,
        reason=unmatched_reason,
        accept=is_candidate_norm,
    ),
)
