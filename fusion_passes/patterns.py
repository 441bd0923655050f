"""Search patterns written as models write a chain: traced once, then widened to its spellings.

``traced_pattern`` turns a function into the exact pattern of its post-grad graph;
``generalize`` widens it where fp32 math cannot tell the difference (operand order, optional
upcasts and clones, eps-add and root spellings); ``substitute`` composes patterns. The pattern
expressions below (``StrictCall``, ``Commutative``, ``Transparent``, ...) are what the widened
patterns are made of. Pattern families (``pattern_family``) match them.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch

from fusion_passes.compat import (
    MULTIPLE, CallFunction, CallPattern, FailedMatch, Ignored, KeywordArg, Match, MatchContext, MatchResult, Multiple,
    MultiOutputPattern, PatternExpr, PatternNode, fwd_only, fx_to_pattern, is_aten_overload, is_match, size_hint,
    view_to_reshape,
)
from fusion_passes.graph_utils import CONVERT, canonicalize_reduction_dims, functionalize_inplace_ops


def hinted(value: Any) -> Any:
    """``value`` with symbolic sizes replaced by their hints (the sizes seen at compile time).

    A meta tensor of the same dtype: size checks on it add no guards. None where a size has no
    hint (data-dependent). Non-tensors are returned as they are.
    """
    if not isinstance(value, torch.Tensor) or all(isinstance(size, int) for size in value.shape):
        return value
    hints = [size if isinstance(size, int) else size_hint(size) for size in value.shape]
    if any(hint is None for hint in hints):
        return None
    return torch.empty(hints, dtype=value.dtype, device="meta")


def is_pointwise(node: Any) -> bool:
    """Whether ``node`` is a call of a pointwise ATen op."""
    target = getattr(node, "target", None)
    return is_aten_overload(target) and torch.Tag.pointwise in target.tags


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


def _wrapped(pattern: PatternExpr, ctx: MatchContext, child_match: MatchResult, *nodes: torch.fx.Node) -> MatchResult:
    # A wrapper pattern's result: the child's failure, or its match (plus the nodes the wrapper
    # itself consumed) under the wrapper.
    if not is_match(child_match):
        return child_match
    match = Match(ctx, pattern)
    match.extend(child_match)
    match.nodes.extend(nodes)
    return match


class StrictCall(CallPattern):
    """A call that also refuses keyword arguments its pattern lacks.

    The pattern matcher ignores a node's extra keywords, so ``torch.add(a, b, alpha=2)`` would
    match a pattern traced from ``a + b``: a different computation.
    """

    def match_node(self, node: torch.fx.Node, ctx: MatchContext) -> MatchResult:
        """The call's match, failed where ``node`` has keywords the pattern lacks."""
        if isinstance(node, torch.fx.Node) and set(node.kwargs) - set(self.kwargs):
            return FailedMatch("extra_kwargs: {} {}", node, dict(node.kwargs))
        return super().match_node(node, ctx)


class Commutative(StrictCall):
    """A two-operand call matching its operands in either order (``a + b`` or ``b + a``)."""

    def __init__(self, fns: Any, first: Any, second: Any, _users: int | Multiple = 1) -> None:
        super().__init__(fns, first, second, _users=_users)
        self.swapped = _SwappedOperands(fns, second, first, _users=_users)
        self.swapped.original = self

    def match_node(self, node: torch.fx.Node, ctx: MatchContext) -> MatchResult:
        """The match in the written operand order, else in the swapped one."""
        before = dict(ctx.pattern_to_node)
        result = super().match_node(node, ctx)
        if is_match(result):
            return result
        # Undo the partial match of the first order before trying the second.
        ctx.pattern_to_node = before
        swapped = self.swapped.match_node(node, ctx)
        # An intermediate used elsewhere is the more useful failure to explain. (Read the format
        # string: formatting a failure prints the whole pattern, which costs seconds per graph.)
        if not is_match(swapped) and getattr(result, "format_string", "").startswith("multiple_users"):
            return result
        return swapped


class _SwappedOperands(StrictCall):
    # The second order of a Commutative; its users are checked as the original's (which the
    # match context knows as a pattern output where it is one).
    original: Commutative

    def users_match(self, node: torch.fx.Node, ctx: MatchContext) -> bool:
        """The original order's users check."""
        return self.original.users_match(node, ctx)


_EXACT_IN_FLOAT32 = (torch.float16, torch.bfloat16, torch.float32)


def is_transparent(node: Any) -> bool:
    """Whether ``node`` leaves its input's value unchanged for fp32 math (an exact upcast, a clone)."""
    if not (isinstance(node, torch.fx.Node) and node.op == "call_function"):
        return False
    if node.target is CONVERT:
        source = node.args[0].meta.get("val") if isinstance(node.args[0], torch.fx.Node) else None
        return node.args[1] == torch.float32 and getattr(source, "dtype", None) in _EXACT_IN_FLOAT32
    return node.target is aten.clone.default


class Transparent(PatternNode):
    """``child``, possibly behind upcasts to float32 and clones (which fp32 math cannot see).

    Each use of a value gets its own ``Transparent``: a hand-written RMSNorm squares ``x.float()``
    but scales ``x``. The skipped nodes are not part of the match; dead ones are removed later.
    """

    def __init__(self, child: PatternExpr) -> None:
        super().__init__()
        self.child = child

    def match_node(self, node: torch.fx.Node, ctx: MatchContext) -> MatchResult:
        """The child's match at ``node`` or at the value behind its upcasts and clones, innermost first."""
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


class OptionalCast(PatternNode):
    """``child``, or ``child`` cast to any dtype: for a value whose rounding the family derives
    from the graph (the residual sum a fused op stores in its own dtype)."""

    def __init__(self, child: PatternExpr) -> None:
        super().__init__()
        self.child = child

    def match_node(self, node: torch.fx.Node, ctx: MatchContext) -> MatchResult:
        """The child's match behind a cast at ``node``, else at ``node`` itself."""
        before = dict(ctx.pattern_to_node)
        if isinstance(node, torch.fx.Node) and node.op == "call_function" and node.target is CONVERT:
            child_match = ctx.match(self.child, node.args[0])
            if is_match(child_match):
                return _wrapped(self, ctx, child_match, node)
            ctx.pattern_to_node = before
        return _wrapped(self, ctx, ctx.match(self.child, node))

    def __repr__(self) -> str:
        return f"OptionalCast({self.child!r})"


class OptionalClone(PatternNode):
    """``child``, or a clone of it (``F.rms_norm`` of a non-contiguous x clones its output to
    contiguous memory); the clone is part of the match."""

    def __init__(self, child: PatternExpr) -> None:
        super().__init__()
        self.child = child

    def match_node(self, node: torch.fx.Node, ctx: MatchContext) -> MatchResult:
        """The child's match behind a clone at ``node``, else at ``node`` itself."""
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


class DistinctFrom(PatternNode):
    """``child`` at a node other than the one ``other`` matched: the second of two outputs that
    have the same shape (two modulations of one norm) must not bind the first one's node again."""

    def __init__(self, child: PatternExpr, other: PatternExpr) -> None:
        super().__init__()
        self.child = child
        self.other = other

    def match_node(self, node: torch.fx.Node, ctx: MatchContext) -> MatchResult:
        """The child's match, failed where ``other`` already matched ``node``."""
        if ctx.pattern_to_node.get(self.other) is node:
            return FailedMatch("same_node_as_another_output {}", node)
        return _wrapped(self, ctx, ctx.match(self.child, node))

    def find_anchor_nodes(self, ctx: MatchContext, searched: Any) -> Iterator[torch.fx.Node | None]:
        """Where the child could match (a second output is found from the first one's inputs)."""
        yield from self.child.find_anchor_nodes(ctx, searched)

    def __repr__(self) -> str:
        return f"DistinctFrom({self.child!r})"


class OneOf(PatternNode):
    """The first of ``alternatives`` that matches: spellings of one value that differ in structure
    (``x * rsqrt(v)`` or ``x / sqrt(v)``; a value read as it is or through a transpose)."""

    def __init__(self, *alternatives: PatternExpr) -> None:
        super().__init__()
        self.alternatives = alternatives

    def match_node(self, node: torch.fx.Node, ctx: MatchContext) -> MatchResult:
        """The first alternative's match at ``node``; else the most useful failure."""
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
        if expr.fns == [CONVERT]:
            if args[1] == torch.float32:
                return args[0] if isinstance(args[0], Transparent) else Transparent(args[0])
            return StrictCall(CONVERT, _maybe_cloned(args[0]), Ignored(), _users=expr.users)
        if len(expr.fns) == 1 and expr.fns[0] in _COMMUTATIVE and len(args) == 2 and not expr.kwargs:
            if all(isinstance(arg, PatternExpr) and arg.__class__ is not KeywordArg for arg in args):
                args = [_maybe_cloned(arg) for arg in args]
                # The pattern's own output (no users in the pattern) may have any users in the
                # graph. The matcher grants that to the root only, not to alternatives inside a
                # OneOf at the root (a weightless RMSNorm's ``x * rsqrt(v)`` or ``x / sqrt(v)``).
                users = MULTIPLE if expr.users == 0 else expr.users
                return _or_divided_by_root(expr, Commutative(expr.fns, *args, _users=users), rebuilt, users)
            if expr.fns[0] is aten.add.Tensor:
                return StrictCall(_ADD_SCALAR_FORMS, *args, _users=expr.users)
        if expr.fns == [aten.add.Scalar]:
            return StrictCall(_ADD_SCALAR_FORMS, *args, _users=expr.users)
        kwargs = {key: rebuilt(value) for key, value in expr.kwargs.items()}
        return StrictCall(expr.fns, *args, _users=expr.users, **kwargs)

    return _rebuild(pattern, widen)


def _or_divided_by_root(
    expr: CallFunction, product: Commutative, rebuilt: Callable[[Any], Any], users: int | Multiple
) -> PatternExpr:
    # A norm's ``a * rsqrt(v)`` may be written ``a / sqrt(v)``. Both round twice in fp32 (the root,
    # then the product or quotient): they differ by at most two fp32 ulps, which a rounding to
    # bf16 after them turns into a one-ulp difference in about one value in 10^5; the fused ops
    # compute rsqrt.
    roots = [i for i, arg in enumerate(expr.args) if isinstance(arg, CallFunction) and arg.fns == [aten.rsqrt.default]]
    if expr.fns != [aten.mul.Tensor] or len(roots) != 1:
        return product
    root = expr.args[roots[0]]
    square_root = StrictCall(aten.sqrt.default, rebuilt(root.args[0]), _users=root.users)
    return OneOf(product, StrictCall(aten.div.Tensor, product.args[1 - roots[0]], square_root, _users=users))


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
