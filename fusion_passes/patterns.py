"""Shared pattern machinery: what a fusion family declares, and how its patterns are registered.

A fusion family is a name, a list of pattern variants (search/replace function pairs, generated
from one description), a check that rejects structural matches the fused op cannot compute, and
a CUDA size rule that rejects those where it is not measured faster; both give a reason. Everything
else (lazy one-time registration under fake tensors, post-grad tracing, eps taken from the graph,
the report of fused and near-missed chains) lives here once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
import operator
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch._inductor.fx_passes.post_grad import view_to_reshape
from torch._inductor.pattern_matcher import (
    CallFunction,
    FailedMatch,
    Ignored,
    KeywordArg,
    Match,
    MatchContext,
    MatchResult,
    Multiple,
    MultiOutputPattern,
    PatternExpr,
    PatternMatcherPass,
    fwd_only,
    fx_to_pattern,
    is_match,
    register_graph_pattern,
)
from torch._subclasses.fake_tensor import FakeTensorMode

from fusion_passes.config import FusionConfig
from fusion_passes.graph_utils import canonicalize_reduction_dims, functionalize_inplace_ops
from fusion_passes.report import GraphReport, logger, saved_for_backward_reason, shared_value_reason


@dataclasses.dataclass(frozen=True)
class PatternVariant:
    """One structural form of a family's chain; ``facts`` tell the check and replacement what it is."""

    name: str
    # Builds the search pattern (traced pieces, composed and generalized); called once, lazily.
    pattern: Callable[[], PatternExpr]
    facts: Mapping[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class MatchedChain:
    """What a family's check and replacement see of a structural match."""

    match: Match
    variant: PatternVariant
    cache: dict[str, Any] = dataclasses.field(default_factory=dict, compare=False, repr=False)

    @property
    def nodes(self) -> Mapping[str, Any]:
        """Pattern input name -> fx Node (or a literal such as eps)."""
        return self.match.kwargs

    @property
    def outputs(self) -> list[torch.fx.Node]:
        """The graph nodes the chain's outputs replace, in the pattern's output order."""
        return [node for node in self.match.output_nodes() if node is not None]

    def value(self, name: str) -> Any:
        """The fake tensor (or literal) bound to pattern input ``name``; None if the variant lacks it."""
        node = self.nodes.get(name)
        return node.meta.get("val") if isinstance(node, torch.fx.Node) else node

    @classmethod
    def of(cls, match: Match, variant: PatternVariant) -> MatchedChain:
        """The one chain object of ``match``: the check and the replacement share what it caches."""
        chain = _CHAINS.get(match)
        if chain is None:
            chain = _CHAINS[match] = cls(match=match, variant=variant)
        return chain

    def cached(self, key: str, compute: Callable[[], Any]) -> Any:
        """``compute()``, computed once per chain (the graph does not change between check and replacement)."""
        if key not in self.cache:
            self.cache[key] = compute()
        return self.cache[key]


_CHAINS: weakref.WeakKeyDictionary[Match, MatchedChain] = weakref.WeakKeyDictionary()


def hinted(value: Any) -> Any:
    """``value`` with symbolic sizes replaced by their hints (the sizes seen at compile time).

    A meta tensor of the same dtype: size checks on it add no guards. None where a size has no
    hint (data-dependent). Non-tensors are returned as they are.
    """
    if not isinstance(value, torch.Tensor) or all(isinstance(size, int) for size in value.shape):
        return value
    hints = [size if isinstance(size, int) else size.node.hint for size in value.shape]
    if any(hint is None for hint in hints):
        return None
    return torch.empty(hints, dtype=value.dtype, device="meta")


def is_pointwise(node: Any) -> bool:
    """Whether ``node`` is a call of a pointwise ATen op."""
    target = getattr(node, "target", None)
    return isinstance(target, torch._ops.OpOverload) and torch.Tag.pointwise in target.tags


# A family check returns why a structurally matched chain must stay unfused, or None to fuse it.
FamilyCheck = Callable[[MatchedChain], "str | None"]
# A family replacement returns a function and the flat arguments (graph nodes or literals) to
# trace it with; the traced graph replaces the chain.
FamilyReplacement = Callable[[MatchedChain], "tuple[Callable[..., Any], list[Any]]"]


@dataclasses.dataclass(frozen=True)
class FusionFamily:
    """A kind of fusion users enable by ``name``; its variants are generated on first use."""

    name: str
    description: str
    variants: Callable[[], Sequence[PatternVariant]]
    # Whether the fused op can compute this chain exactly (operands, dtypes, shapes).
    check: FamilyCheck
    # Whether it is measured faster than Inductor alone on CUDA; skipped if config.size_rule is off.
    cuda_size_rule: FamilyCheck
    replacement: FamilyReplacement
    # Ops that mark a candidate chain (e.g. the norm's var_mean); a seed left in the graph after
    # the pass is reported as a near miss with the best reason found.
    seed_targets: tuple[Any, ...]
    seed_hops: int
    # Why a seed left in the graph did not fuse, where no pattern explains it (or a function of the seed).
    unmatched_reason: str | Callable[[torch.fx.Node], str]
    # The report's name for a fused chain (default: its variant's name).
    describe: Callable[[MatchedChain], str] | None = None
    # Runs on the graph after this family's patterns (e.g. folding casts into fused ops).
    finish: Callable[[torch.fx.Graph], None] | None = None
    # Which seed nodes mark a candidate (default: every node of a seed target).
    seed_filter: Callable[[torch.fx.Node], bool] | None = None


@dataclasses.dataclass(frozen=True)
class RewriteFamily:
    """A kind of fusion that rewrites the graph itself instead of through registered patterns.

    For chains whose spellings are too varied for fixed patterns (RoPE): ``rewrite`` finds and
    replaces them, records fusions and near misses in the report, and returns how many fused.
    """

    name: str
    description: str
    rewrite: Callable[[torch.fx.Graph, FusionConfig, GraphReport], int]


Family = FusionFamily | RewriteFamily

_FAMILIES: dict[str, Family] = {}


def register_family(family: Family) -> Family:
    """Make ``family`` known to the pass manager under ``family.name``."""
    if family.name in _FAMILIES:
        raise ValueError(f"family name: {family.name!r} is already registered")
    _FAMILIES[family.name] = family
    return family


def families() -> dict[str, Family]:
    """All registered fusion families by name, in registration (= application) order."""
    return dict(_FAMILIES)


def trace_post_grad(fn: Callable[..., Any], args: Sequence[Any], **kwargs: Any) -> torch.fx.GraphModule:
    """Trace ``fn`` to decomposed ATen as post-grad graphs spell it (and as the pass normalizes them)."""
    # torch >= 2.12 passes get_decomp_fn=...; older versions pass nothing.
    gm = fwd_only(fn, args, **kwargs)
    view_to_reshape(gm)
    functionalize_inplace_ops(gm.graph)
    canonicalize_reduction_dims(gm.graph)
    return gm


def traced_pattern(
    fn: Callable[..., Any], example_inputs: Sequence[Any], scalar_workaround: Mapping[str, float] | None = None
) -> PatternExpr:
    """The exact pattern of ``fn`` (inputs named by its parameters), literals kept.

    Literals stay exact (a pattern for ``1 + s`` does not match ``2 + s``, nor a norm over another
    dim); call under FakeTensorMode. ``generalize`` then widens it where the semantics allow.
    """
    argnames = list(inspect.signature(fn).parameters)
    scalar_workaround = dict(scalar_workaround or {})
    args = [scalar_workaround.get(name, value) for name, value in zip(argnames, example_inputs, strict=True)]
    gm = trace_post_grad(fn, args)
    return fx_to_pattern(gm, argnames=argnames, scalar_workaround=scalar_workaround)


aten = torch.ops.aten
_COMMUTATIVE = {aten.add.Tensor, aten.mul.Tensor}
_ADD_SCALAR_FORMS = [aten.add.Tensor, aten.add.Scalar]
_CONVERT = torch.ops.prims.convert_element_type.default


def _wrapped(pattern: PatternExpr, ctx: MatchContext, child_match: MatchResult, *nodes: torch.fx.Node) -> MatchResult:
    # A wrapper pattern's result: the child's failure, or its match (plus the nodes the wrapper
    # itself consumed) under the wrapper.
    if not is_match(child_match):
        return child_match
    match = Match(ctx, pattern)
    match.extend(child_match)
    match.nodes.extend(nodes)
    return match


class StrictCall(CallFunction):
    """A call that also refuses keyword arguments its pattern lacks.

    The pattern matcher ignores a node's extra keywords, so ``torch.add(a, b, alpha=2)`` would
    match a pattern traced from ``a + b``: a different computation.
    """

    def _match(self, node: torch.fx.Node, ctx: MatchContext) -> MatchResult:
        if isinstance(node, torch.fx.Node) and set(node.kwargs) - set(self.kwargs):
            return FailedMatch("extra_kwargs: {} {}", node, dict(node.kwargs))
        return super()._match(node, ctx)


class Commutative(StrictCall):
    """A two-operand call matching its operands in either order (``a + b`` or ``b + a``)."""

    def __init__(self, fns: Any, first: Any, second: Any, _users: int | Multiple = 1) -> None:
        super().__init__(fns, first, second, _users=_users)
        self.swapped = _SwappedOperands(fns, second, first, _users=_users)
        self.swapped.original = self

    def _match(self, node: torch.fx.Node, ctx: MatchContext) -> MatchResult:
        before = dict(ctx.pattern_to_node)
        result = super()._match(node, ctx)
        if is_match(result):
            return result
        # Undo the partial match of the first order before trying the second.
        ctx.pattern_to_node = before
        swapped = self.swapped._match(node, ctx)
        # An intermediate used elsewhere is the more useful failure to explain. (Read the format
        # string: formatting a failure prints the whole pattern, which costs seconds per graph.)
        if not is_match(swapped) and getattr(result, "format_string", "").startswith("multiple_users"):
            return result
        return swapped


class _SwappedOperands(StrictCall):
    # The second order of a Commutative; its users are checked as the original's (which the
    # match context knows as a pattern output where it is one).
    original: Commutative

    def _match_users(self, node: torch.fx.Node, ctx: MatchContext) -> bool:
        return self.original._match_users(node, ctx)


_EXACT_IN_FLOAT32 = (torch.float16, torch.bfloat16, torch.float32)


def is_transparent(node: Any) -> bool:
    """Whether ``node`` leaves its input's value unchanged for fp32 math (an exact upcast, a clone)."""
    if not (isinstance(node, torch.fx.Node) and node.op == "call_function"):
        return False
    if node.target is _CONVERT:
        source = node.args[0].meta.get("val") if isinstance(node.args[0], torch.fx.Node) else None
        return node.args[1] == torch.float32 and getattr(source, "dtype", None) in _EXACT_IN_FLOAT32
    return node.target is aten.clone.default


class Transparent(PatternExpr):
    """``child``, possibly behind upcasts to float32 and clones (which fp32 math cannot see).

    Each use of a value gets its own ``Transparent``: a hand-written RMSNorm squares ``x.float()``
    but scales ``x``. The skipped nodes are not part of the match; dead ones are removed later.
    """

    def __init__(self, child: PatternExpr) -> None:
        super().__init__()
        self.child = child

    def _match(self, node: torch.fx.Node, ctx: MatchContext) -> MatchResult:
        # Innermost first: an input binds to the value itself, the same at every use.
        chain = [node]
        while is_transparent(chain[-1]):
            chain.append(chain[-1].args[0])
        before = dict(ctx.pattern_to_node)
        for candidate in reversed(chain):
            ctx.pattern_to_node = dict(before)
            child_match = ctx.match(self.child, candidate)
            if is_match(child_match):
                break
        return _wrapped(self, ctx, child_match)

    def __repr__(self) -> str:
        return f"Transparent({self.child!r})"


class OptionalCast(PatternExpr):
    """``child``, or ``child`` cast to any dtype: for a value whose rounding the family derives
    from the graph (the residual sum a fused op stores in its own dtype)."""

    def __init__(self, child: PatternExpr) -> None:
        super().__init__()
        self.child = child

    def _match(self, node: torch.fx.Node, ctx: MatchContext) -> MatchResult:
        before = dict(ctx.pattern_to_node)
        if isinstance(node, torch.fx.Node) and node.op == "call_function" and node.target is _CONVERT:
            child_match = ctx.match(self.child, node.args[0])
            if is_match(child_match):
                return _wrapped(self, ctx, child_match, node)
            ctx.pattern_to_node = before
        return _wrapped(self, ctx, ctx.match(self.child, node))

    def __repr__(self) -> str:
        return f"OptionalCast({self.child!r})"


class OptionalClone(PatternExpr):
    """``child``, or a clone of it (``F.rms_norm`` of a non-contiguous x clones its output to
    contiguous memory); the clone is part of the match."""

    def __init__(self, child: PatternExpr) -> None:
        super().__init__()
        self.child = child

    def _match(self, node: torch.fx.Node, ctx: MatchContext) -> MatchResult:
        before = dict(ctx.pattern_to_node)
        if isinstance(node, torch.fx.Node) and node.op == "call_function" and node.target is aten.clone.default:
            child_match = ctx.match(self.child, node.args[0])
            if is_match(child_match):
                return _wrapped(self, ctx, child_match, node)
            ctx.pattern_to_node = before
        return _wrapped(self, ctx, ctx.match(self.child, node))

    def find_anchor_nodes(self, ctx: MatchContext, searched: Any) -> Iterator[torch.fx.Node | None]:
        """Where the child could match, and the clones of those nodes (a second output of a
        multi-output pattern is found from the nodes the first one matched)."""
        for node in self.child.find_anchor_nodes(ctx, searched):
            yield node
            if isinstance(node, torch.fx.Node):
                yield from (user for user in node.users if user.target is aten.clone.default)

    def __repr__(self) -> str:
        return f"OptionalClone({self.child!r})"


class DistinctFrom(PatternExpr):
    """``child`` at a node other than the one ``other`` matched: the second of two outputs that
    have the same shape (two modulations of one norm) must not bind the first one's node again."""

    def __init__(self, child: PatternExpr, other: PatternExpr) -> None:
        super().__init__()
        self.child = child
        self.other = other

    def _match(self, node: torch.fx.Node, ctx: MatchContext) -> MatchResult:
        if ctx.pattern_to_node.get(self.other) is node:
            return FailedMatch("same_node_as_another_output {}", node)
        return _wrapped(self, ctx, ctx.match(self.child, node))

    def find_anchor_nodes(self, ctx: MatchContext, searched: Any) -> Iterator[torch.fx.Node | None]:
        """Where the child could match (a second output is found from the first one's inputs)."""
        yield from self.child.find_anchor_nodes(ctx, searched)

    def __repr__(self) -> str:
        return f"DistinctFrom({self.child!r})"


class OneOf(PatternExpr):
    """The first of ``alternatives`` that matches: spellings of one value that differ in structure
    (``x * rsqrt(v)`` or ``x / sqrt(v)``; a value read as it is or through a transpose)."""

    def __init__(self, *alternatives: PatternExpr) -> None:
        super().__init__()
        self.alternatives = alternatives

    def _match(self, node: torch.fx.Node, ctx: MatchContext) -> MatchResult:
        before = dict(ctx.pattern_to_node)
        failures = []
        for alternative in self.alternatives:
            ctx.pattern_to_node = dict(before)
            result = ctx.match(alternative, node)
            if is_match(result):
                return _wrapped(self, ctx, result)
            failures.append(result)
        ctx.pattern_to_node = before
        # An intermediate used elsewhere is the most useful failure to explain (as in Commutative).
        return next((f for f in failures if getattr(f, "format_string", "").startswith("multiple_users")), failures[0])

    def find_anchor_nodes(self, ctx: MatchContext, searched: Any) -> Iterator[torch.fx.Node | None]:
        """Where any alternative could match."""
        for alternative in self.alternatives:
            yield from alternative.find_anchor_nodes(ctx, searched)

    def __repr__(self) -> str:
        return f"OneOf({', '.join(map(repr, self.alternatives))})"


class NotACandidate(str):
    """A check's reason that means "not this family's chain at all": no near miss is reported."""


def substitute(pattern: PatternExpr, replacements: Mapping[str, PatternExpr]) -> PatternExpr:
    """``pattern`` with the named inputs (KeywordArgs) replaced by other patterns; sharing kept."""
    return _rebuild(pattern, lambda expr, rebuilt: replacements.get(expr.name) if isinstance(expr, KeywordArg) else None)


def generalize(pattern: PatternExpr, scalars: Sequence[str] = ("eps",)) -> PatternExpr:
    """Widen an exact traced pattern to the spellings that compute the same thing for fp32 math.

    - ``add``/``mul`` of two tensors match in either operand order; a computed operand of them, or
      of a downcast, also behind a clone;
    - an eps add matches ``add.Tensor`` (hand-written norms) and ``add.Scalar`` (``F.rms_norm``);
    - ``a * rsqrt(v)`` also matches ``a / sqrt(v)`` (equal within two fp32 ulps);
    - an upcast to float32 may be absent (fp32 graphs), and every input may sit behind upcasts
      and clones (``Transparent``, at each use separately);
    - a downcast matches any target dtype (bf16 or fp16); family checks verify which;
    - every call refuses keywords its pattern lacks (``alpha=`` on an add).

    ``scalars`` names the inputs that are numbers, not tensors.
    """

    def is_tensor_input(arg: Any) -> bool:
        return isinstance(arg, KeywordArg) and arg.name not in scalars

    def widen(expr: PatternExpr, rebuilt: Callable[[Any], Any]) -> PatternExpr | None:
        if not isinstance(expr, CallFunction):
            return None
        args = [Transparent(arg) if is_tensor_input(arg) else rebuilt(arg) for arg in expr.args]
        if expr.fns == [_CONVERT]:
            if args[1] == torch.float32:
                return args[0] if isinstance(args[0], Transparent) else Transparent(args[0])
            return StrictCall(_CONVERT, _maybe_cloned(args[0]), Ignored(), _users=expr.users)
        if len(expr.fns) == 1 and expr.fns[0] in _COMMUTATIVE and len(args) == 2 and not expr.kwargs:
            if all(isinstance(arg, PatternExpr) and arg.__class__ is not KeywordArg for arg in args):
                args = [_maybe_cloned(arg) for arg in args]
                return _or_divided_by_root(expr, Commutative(expr.fns, *args, _users=expr.users), rebuilt)
            if expr.fns[0] is aten.add.Tensor:
                return StrictCall(_ADD_SCALAR_FORMS, *args, _users=expr.users)
        if expr.fns == [aten.add.Scalar]:
            return StrictCall(_ADD_SCALAR_FORMS, *args, _users=expr.users)
        kwargs = {key: rebuilt(value) for key, value in expr.kwargs.items()}
        return StrictCall(expr.fns, *args, _users=expr.users, **kwargs)

    return _rebuild(pattern, widen)


def _or_divided_by_root(expr: CallFunction, product: Commutative, rebuilt: Callable[[Any], Any]) -> PatternExpr:
    # A norm's ``a * rsqrt(v)`` may be written ``a / sqrt(v)``. Both round twice in fp32 (the root,
    # then the product or quotient): they differ by at most two fp32 ulps, which a rounding to
    # bf16 after them turns into a one-ulp difference in about one value in 10^5; the fused ops
    # compute rsqrt.
    roots = [i for i, arg in enumerate(expr.args) if isinstance(arg, CallFunction) and arg.fns == [aten.rsqrt.default]]
    if expr.fns != [aten.mul.Tensor] or len(roots) != 1:
        return product
    root = expr.args[roots[0]]
    square_root = StrictCall(aten.sqrt.default, rebuilt(root.args[0]), _users=root.users)
    return OneOf(product, StrictCall(aten.div.Tensor, product.args[1 - roots[0]], square_root, _users=expr.users))


def _maybe_cloned(arg: Any) -> Any:
    # A computed operand used once may sit behind a clone (the same value); one with several users
    # (a norm shared by two modulations) is matched as it is.
    return OptionalClone(arg) if isinstance(arg, CallFunction) and arg.users == 1 else arg


def _rebuild(pattern: Any, rewrite: Callable[[PatternExpr, Callable[[Any], Any]], PatternExpr | None]) -> Any:
    # Rebuild a pattern DAG bottom-up, keeping shared sub-patterns shared, except Transparent
    # wrappers: each use gets its own, so one use may match an upcast and another the uncast value.
    # ``rewrite(expr, rebuilt)`` returns a replacement for ``expr`` or None to copy it.
    memo: dict[int, Any] = {}

    def rebuilt(expr: Any) -> Any:
        if isinstance(expr, (list, tuple)):
            return type(expr)(rebuilt(item) for item in expr)
        if not isinstance(expr, PatternExpr):
            return expr
        if id(expr) in memo:
            return memo[id(expr)]
        result = rewrite(expr, rebuilt)
        if result is None:
            result = _copy(expr, rebuilt)
        if not isinstance(result, Transparent):
            memo[id(expr)] = result
        return result

    return rebuilt(pattern)


def _copy(expr: PatternExpr, rebuilt: Callable[[Any], Any]) -> PatternExpr:
    if isinstance(expr, MultiOutputPattern):
        return MultiOutputPattern([rebuilt(output) for output in expr.outputs])
    if isinstance(expr, Commutative):
        return Commutative(expr.fns, *[rebuilt(arg) for arg in expr.args], _users=expr.users)
    if isinstance(expr, CallFunction):
        kwargs = {key: rebuilt(value) for key, value in expr.kwargs.items()}
        return type(expr)(expr.fns, *[rebuilt(arg) for arg in expr.args], _users=expr.users, **kwargs)
    if isinstance(expr, Transparent):
        return Transparent(rebuilt(expr.child))
    if isinstance(expr, OptionalCast):
        return OptionalCast(rebuilt(expr.child))
    if isinstance(expr, OptionalClone):
        return OptionalClone(rebuilt(expr.child))
    if isinstance(expr, OneOf):
        return OneOf(*[rebuilt(alternative) for alternative in expr.alternatives])
    return expr


# The run in progress: set by the pass manager while it applies patterns, read by extra checks.
_ACTIVE_RUN: list[tuple[FusionConfig, GraphReport]] = []


@contextlib.contextmanager
def active_run(config: FusionConfig, report: GraphReport) -> Iterator[None]:
    """Make ``config`` and ``report`` visible to the extra checks of patterns applied inside."""
    _ACTIVE_RUN.append((config, report))
    try:
        yield
    finally:
        _ACTIVE_RUN.pop()


def _internal_error(family: FusionFamily, stage: str, anchor: torch.fx.Node, error: Exception) -> str:
    # A failure of our own code on a chain: never the compile's end; the chain stays unfused.
    logger.warning("%s: the %s of %s failed (%r); left unfused, please report", family.name, stage, anchor, error)
    return f"the fusion's {stage} failed on this chain ({type(error).__name__}: {error}); left to Inductor"


def _make_extra_check(family: FusionFamily, variant: PatternVariant) -> Callable[[Match], bool]:
    def extra_check(match: Match) -> bool:
        if not _ACTIVE_RUN:
            return False
        config, report = _ACTIVE_RUN[-1]
        chain = MatchedChain.of(match, variant)
        anchor = match.output_node()
        output = anchor.meta.get("val")
        if not isinstance(output, torch.Tensor):
            reason = "the chain's output has no tensor metadata"
        elif output.device.type not in config.devices:
            reason = f"device {output.device.type!r} is not in config.devices {config.devices}"
        else:
            try:
                reason = family.check(chain)
                if reason is None and output.device.type == "cuda" and config.size_rule:
                    reason = family.cuda_size_rule(chain)
            except Exception as error:  # noqa: BLE001  (a chain we do not understand stays Inductor's)
                reason = _internal_error(family, "check", anchor, error)
            # The fused ops are forward-only: a chain whose intermediate the backward reads stays.
            if not isinstance(reason, NotACandidate):
                reason = saved_for_backward_reason(node for node in match.nodes if node not in chain.outputs) or reason
        if reason is not None:
            if not isinstance(reason, NotACandidate):
                report.add_near_miss(family.name, variant.name, anchor, reason, chain=match.nodes)
            return False
        return True

    return extra_check


def _make_handler(family: FusionFamily, variant: PatternVariant) -> Callable[..., None]:
    def handler(match: Match, *args: Any, **kwargs: Any) -> None:
        chain = MatchedChain.of(match, variant)
        _, report = _ACTIVE_RUN[-1]
        anchor = match.output_node()
        try:
            name = variant.name if family.describe is None else family.describe(chain)
            replacement, flat_args = family.replacement(chain)
            # Traces the replacement before it touches the graph: a failure leaves the chain as it was.
            match.replace_by_example(replacement, flat_args, trace_fn=trace_post_grad)
        except Exception as error:  # noqa: BLE001
            reason = _internal_error(family, "rewrite", anchor, error)
            report.add_near_miss(family.name, variant.name, anchor, reason, chain=match.nodes)
            return
        report.add_fusion(family.name, name, anchor)

    return handler


@functools.cache
def pattern_pass(family_name: str) -> PatternMatcherPass:
    """The family's patterns, built and registered once on first use (traced under fake tensors)."""
    family = _FAMILIES[family_name]
    patterns = PatternMatcherPass(pass_name=f"fusion_passes.{family_name}")
    with FakeTensorMode():
        for variant in family.variants():
            register_graph_pattern(
                variant.pattern(), extra_check=_make_extra_check(family, variant), pass_dict=patterns
            )(_make_handler(family, variant))
    return patterns


def nearby_users(seed: torch.fx.Node, hops: int) -> list[torch.fx.Node]:
    """The nodes reached from ``seed`` through at most ``hops`` uses (``seed`` itself excluded)."""
    seen: dict[torch.fx.Node, None] = {}
    frontier = [seed]
    for _ in range(hops):
        frontier = [user for node in frontier for user in node.users if user not in seen]
        seen.update(dict.fromkeys(frontier))
    return list(seen)


def explain_unfused(family: FusionFamily, graph: torch.fx.Graph, report: GraphReport) -> None:
    """Report each seed left in ``graph`` that no fusion or recorded near miss accounts for."""
    patterns = pattern_pass(family.name)
    reported = {miss.node for miss in report.near_misses}
    order = {node: index for index, node in enumerate(graph.nodes)}
    for target in family.seed_targets:
        for seed in graph.find_nodes(op="call_function", target=target):
            if family.seed_filter is not None and not family.seed_filter(seed):
                continue
            nearby = nearby_users(seed, family.seed_hops)
            if any(node.name in reported for node in nearby):
                continue
            # Single-output patterns only: a multi-output one fails on a plain chain for its
            # missing second output, which says nothing about this chain.
            failures = [
                result.format_string
                for node in nearby
                for entry in patterns.patterns.get((node.op, node.target), [])
                if not isinstance(entry.pattern, MultiOutputPattern)
                and not is_match(result := entry.pattern.match(node))
            ]
            if any(failure.startswith("multiple_users") for failure in failures):
                reason = _shared_intermediate_reason(sorted({seed, *nearby}, key=order.__getitem__))
            elif isinstance(family.unmatched_reason, str):
                reason = family.unmatched_reason
            else:
                reason = family.unmatched_reason(seed)
            report.add_near_miss(family.name, None, seed, reason)


def _shared_intermediate_reason(region: Sequence[torch.fx.Node]) -> str:
    # Which value of a candidate chain has more than one reader (the pattern wants one): a value
    # saved for backward first, else the first in graph order. A multi-output op's getitems are one read.
    shared = [
        node for node in region
        if len(node.users) > 1 and not all(user.target is operator.getitem for user in node.users)
    ]
    if not shared:
        return "an intermediate of the chain is also used outside it"
    node = next((node for node in shared if saved_for_backward_reason([node])), shared[0])
    return shared_value_reason(node, list(node.users))


def with_signature(fn: Callable[..., Any], params: Sequence[str]) -> Callable[..., Any]:
    """``fn(**kwargs)`` exposed as a function of the positional ``params``.

    traced_pattern reads a pattern's inputs from its signature, so variants that drop an
    optional operand (no shift, no weight) are generated from one keyword function this way.
    """

    def positional(*args: Any) -> Any:
        return fn(**dict(zip(params, args, strict=True)))

    kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
    positional.__signature__ = inspect.Signature([inspect.Parameter(p, kind) for p in params])  # type: ignore[attr-defined]
    positional.__name__ = f"{fn.__name__}__{'_'.join(params)}"
    return positional
