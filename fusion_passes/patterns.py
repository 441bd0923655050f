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
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch._inductor.fx_passes.post_grad import view_to_reshape
from torch._inductor.pattern_matcher import (
    Match,
    PatternMatcherPass,
    fwd_only,
    is_match,
    register_replacement,
)
from torch._subclasses.fake_tensor import FakeTensorMode

from fusion_passes.config import FusionConfig
from fusion_passes.report import GraphReport


@dataclasses.dataclass(frozen=True)
class MatchedChain:
    """What a family check sees of a structural match: its input nodes and its output value."""

    nodes: Mapping[str, Any]  # pattern input name -> fx Node (or a literal such as eps)
    output: torch.Tensor  # fake value of the chain's output

    def value(self, name: str) -> Any:
        """The fake tensor (or literal) bound to pattern input ``name``; None if the variant lacks it."""
        node = self.nodes.get(name)
        return node.meta.get("val") if isinstance(node, torch.fx.Node) else node

    def hinted(self, name: str) -> Any:
        """Input ``name`` with symbolic sizes replaced by their hints (the sizes seen at compile time).

        A meta tensor of the same dtype: size checks on it add no guards. None where a size has
        no hint (data-dependent).
        """
        value = self.value(name)
        if not isinstance(value, torch.Tensor):
            return value
        if all(isinstance(size, int) for size in value.shape):
            return value
        hints = [size if isinstance(size, int) else size.node.hint for size in value.shape]
        if any(hint is None for hint in hints):
            return None
        return torch.empty(hints, dtype=value.dtype, device="meta")

    def produced_by_pointwise(self, name: str) -> bool:
        """Whether input ``name`` comes from a pointwise op, which Inductor would fuse into the chain."""
        node = self.nodes.get(name)
        target = getattr(node, "target", None)
        return isinstance(target, torch._ops.OpOverload) and torch.Tag.pointwise in target.tags


# A family check returns why a structurally matched chain must stay unfused, or None to fuse it.
FamilyCheck = Callable[[MatchedChain], "str | None"]


@dataclasses.dataclass(frozen=True)
class PatternVariant:
    """One search/replace pair of a family, traced with inputs from ``example_inputs``."""

    name: str
    search: Callable[..., Any]
    replace: Callable[..., Any]
    example_inputs: Callable[[], Sequence[Any]]
    scalar_workaround: Mapping[str, float] = dataclasses.field(default_factory=dict)


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
    # Ops that mark a candidate chain (e.g. the norm's var_mean); a seed left in the graph after
    # the pass is reported as a near miss with the best reason found.
    seed_targets: tuple[Any, ...]
    seed_hops: int
    unmatched_reason: str


_FAMILIES: dict[str, FusionFamily] = {}


def register_family(family: FusionFamily) -> FusionFamily:
    """Make ``family`` known to the pass manager under ``family.name``."""
    if family.name in _FAMILIES:
        raise ValueError(f"family name: {family.name!r} is already registered")
    _FAMILIES[family.name] = family
    return family


def families() -> dict[str, FusionFamily]:
    """All registered fusion families by name, in registration (= application) order."""
    return dict(_FAMILIES)


def trace_post_grad(fn: Callable[..., Any], args: Sequence[Any], **kwargs: Any) -> torch.fx.GraphModule:
    """Trace ``fn`` to decomposed ATen as post-grad graphs spell it (``aten.reshape``, not ``view``)."""
    # torch >= 2.12 passes get_decomp_fn=...; older versions pass nothing.
    gm = fwd_only(fn, args, **kwargs)
    view_to_reshape(gm)
    return gm


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


def _make_extra_check(family: FusionFamily, variant: PatternVariant) -> Callable[[Match], bool]:
    def extra_check(match: Match) -> bool:
        if not _ACTIVE_RUN:
            return False
        config, report = _ACTIVE_RUN[-1]
        anchor = match.output_node()
        output = anchor.meta.get("val")
        if not isinstance(output, torch.Tensor):
            reason = "the chain's output has no tensor metadata"
        elif output.device.type not in config.devices:
            reason = f"device {output.device.type!r} is not in config.devices {config.devices}"
        else:
            chain = MatchedChain(nodes=dict(match.kwargs), output=output)
            reason = family.check(chain)
            if reason is None and output.device.type == "cuda" and config.size_rule:
                reason = family.cuda_size_rule(chain)
        if reason is not None:
            report.add_near_miss(family.name, variant.name, anchor, reason)
            return False
        report.add_fusion(family.name, variant.name, anchor)
        return True

    return extra_check


@functools.cache
def pattern_pass(family_name: str) -> PatternMatcherPass:
    """The family's patterns, registered once on first use (traced under fake tensors)."""
    family = _FAMILIES[family_name]
    patterns = PatternMatcherPass(pass_name=f"fusion_passes.{family_name}")
    with FakeTensorMode():
        for variant in family.variants():
            register_replacement(
                variant.search,
                variant.replace,
                list(variant.example_inputs()),
                trace_post_grad,
                patterns,
                extra_check=_make_extra_check(family, variant),
                scalar_workaround=dict(variant.scalar_workaround),
            )
    return patterns


def _nearby_users(seed: torch.fx.Node, hops: int) -> list[torch.fx.Node]:
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
    for target in family.seed_targets:
        for seed in graph.find_nodes(op="call_function", target=target):
            nearby = _nearby_users(seed, family.seed_hops)
            if any(node.name in reported for node in nearby):
                continue
            failures = [
                str(result)
                for node in nearby
                for entry in patterns.patterns.get((node.op, node.target), [])
                if not is_match(result := entry.pattern.match(node))
            ]
            if any("multiple_users" in failure for failure in failures):
                reason = "an intermediate of the chain is also used outside it"
            else:
                reason = family.unmatched_reason
            report.add_near_miss(family.name, None, seed, reason)


def with_signature(fn: Callable[..., Any], params: Sequence[str]) -> Callable[..., Any]:
    """``fn(**kwargs)`` exposed as a function of the positional ``params``.

    register_replacement reads a pattern's inputs from its signature, so variants that drop an
    optional operand (no shift, no weight) are generated from one keyword function this way.
    """

    def positional(*args: Any) -> Any:
        return fn(**dict(zip(params, args, strict=True)))

    kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
    positional.__signature__ = inspect.Signature([inspect.Parameter(p, kind) for p in params])  # type: ignore[attr-defined]
    positional.__name__ = f"{fn.__name__}__{'_'.join(params)}"
    return positional
