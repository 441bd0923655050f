"""Families whose candidates Inductor's pattern matcher finds: the stages driven through it once.

A pattern family declares its chain as pattern variants (search patterns, generated from one
description by ``patterns``) and implements legality, profitability, plan and the replacement
(a function computing the fused call, traced in place of the chain). Everything else lives here
once: the patterns built lazily under fake tensors, the pattern matcher's extra check asking the
family's ``verdict`` and its handler calling ``fuse``, and the near misses for candidates that no
pattern reached (``LeftoverSeeds``).
"""

from __future__ import annotations

import abc
import dataclasses
import functools
import operator
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch

from fusion_passes.compat import (
    FakeTensorMode,
    Match,
    MultiOutputPattern,
    PatternExpr,
    PatternMatcherPass,
    is_match,
    register_graph_pattern,
    stable_topological_sort,
)
from fusion_passes.family import FusionFamily, NotACandidate, PassRun
from fusion_passes.patterns import trace_post_grad
from fusion_passes.report import saved_for_backward_reason, shared_value_reason


@dataclasses.dataclass(frozen=True)
class PatternVariant:
    """One structural form of a family's chain, and its search pattern."""

    name: str
    # Builds the search pattern (traced pieces, composed and generalized); called once, lazily.
    pattern: Callable[[], PatternExpr]
    # The family's own description of the form (which norm, which activation, ...), read by its plan.
    form: Any = None


@dataclasses.dataclass(frozen=True)
class MatchedChain:
    """A pattern family's candidate: a structural match of one of its variants."""

    match: Match
    variant: PatternVariant
    # What the stages compute once per chain (the graph does not change between them).
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

    def cached(self, key: str, compute: Callable[[], Any]) -> Any:
        """``compute()``, computed once per chain."""
        if key not in self.cache:
            self.cache[key] = compute()
        return self.cache[key]


@dataclasses.dataclass(frozen=True)
class LeftoverSeeds:
    """The ops that mark a candidate chain (e.g. a norm's var_mean): a seed left in the graph after
    every family ran, which no fusion or near miss accounts for, is reported as a near miss."""

    targets: tuple[Any, ...]
    # How many uses from a seed the chain reaches (where the pattern's nodes are looked for).
    hops: int
    # Why a seed did not fuse where no pattern says more (a text, or a function of the seed).
    reason: str | Callable[[torch.fx.Node], str]
    # Which nodes of ``targets`` are seeds (default: all).
    accept: Callable[[torch.fx.Node], bool] = lambda node: True


class PatternFamily(FusionFamily[MatchedChain]):
    """A fusion family whose candidates are the matches of its pattern variants."""

    def __init__(self, name: str, description: str, leftover_seeds: LeftoverSeeds | None = None) -> None:
        self.name = name
        self.description = description
        self.leftover_seeds = leftover_seeds

    @abc.abstractmethod
    def variants(self) -> Sequence[PatternVariant]:
        """The chain's structural forms, in the order they are tried (longest chains first)."""

    @abc.abstractmethod
    def replacement(self, chain: MatchedChain) -> tuple[Callable[..., Any], list[Any]]:
        """The fused call as a function of flat arguments (graph nodes or literals), and those arguments."""

    def after_rewrite(self, graph: torch.fx.Graph) -> None:
        """Runs on the graph after this family's patterns (default: nothing)."""

    @functools.cached_property
    def patterns(self) -> list[tuple[PatternVariant, PatternExpr]]:
        """Each variant with its search pattern, built once (traced under fake tensors)."""
        with FakeTensorMode():
            return [(variant, variant.pattern()) for variant in self.variants()]

    # --- The stages every pattern family shares ------------------------------------------------

    def anchor(self, candidate: MatchedChain) -> torch.fx.Node:
        """The pattern's first output node."""
        return candidate.match.output_node()

    def intermediates(self, candidate: MatchedChain) -> Iterable[torch.fx.Node]:
        """The matched nodes that are not the chain's outputs."""
        return (node for node in candidate.match.nodes if node not in candidate.outputs)

    def describe(self, candidate: MatchedChain) -> str:
        """The variant's name (a family may say more, from its plan)."""
        return candidate.variant.name

    def near_miss(self, run: PassRun, candidate: MatchedChain, reason: str) -> None:
        """Report the variant that matched (the plan behind a fuller name may be what failed), over its nodes."""
        run.report.add_near_miss(
            self.name, candidate.variant.name, self.anchor(candidate), reason, chain=candidate.match.nodes
        )

    def replace(self, graph: torch.fx.Graph, candidate: MatchedChain) -> None:
        """Trace the replacement and put it in place of the match (a tracing failure leaves the graph as it was)."""
        replacement, flat_args = self.replacement(candidate)
        candidate.match.replace_by_example(replacement, flat_args, trace_fn=trace_post_grad)

    def apply(self, graph: torch.fx.Graph, run: PassRun) -> None:
        """Run the pattern matcher with this run's verdict as its extra check and ``fuse`` as its handler."""
        # The matcher calls both with the match alone: they are bound to this run here, and share
        # one MatchedChain per match (what its stages computed).
        chains: dict[Match, MatchedChain] = {}
        matcher = PatternMatcherPass(pass_name=f"fusion_passes.{self.name}")
        for variant, pattern in self.patterns:
            extra_check, handler = self._matcher_callbacks(variant, graph, run, chains)
            register_graph_pattern(pattern, extra_check=extra_check, pass_dict=matcher)(handler)
        if matcher.apply(graph):
            # A fused op replaces a multi-output chain at its first output; operands computed
            # after that point move up.
            stable_topological_sort(graph)
        self.after_rewrite(graph)

    def _matcher_callbacks(
        self, variant: PatternVariant, graph: torch.fx.Graph, run: PassRun, chains: dict[Match, MatchedChain]
    ) -> tuple[Callable[[Match], bool], Callable[..., None]]:
        # The pattern matcher's extra check and handler for ``variant`` in this run.
        def chain_of(match: Match) -> MatchedChain:
            return chains.setdefault(match, MatchedChain(match=match, variant=variant))

        def extra_check(match: Match) -> bool:
            chain = chain_of(match)
            reason = self.verdict(chain, run)
            if reason is not None and not isinstance(reason, NotACandidate):
                self.near_miss(run, chain, reason)
            return reason is None

        def handler(match: Match, *args: Any, **kwargs: Any) -> None:
            self.fuse(graph, chain_of(match), run)

        return extra_check, handler

    def explain_unfused(self, graph: torch.fx.Graph, run: PassRun) -> None:
        """Report each seed left in ``graph`` that no fusion or recorded near miss accounts for."""
        seeds = self.leftover_seeds
        if seeds is None:
            return
        by_target: dict[tuple[str, Any], list[PatternExpr]] = {}
        for _, pattern in self.patterns:
            for target in pattern.fns:
                by_target.setdefault((pattern.op, target), []).append(pattern)
        reported = {miss.node for miss in run.report.near_misses}
        order = {node: index for index, node in enumerate(graph.nodes)}
        for target in seeds.targets:
            for seed in graph.find_nodes(op="call_function", target=target):
                if not seeds.accept(seed):
                    continue
                nearby = nearby_users(seed, seeds.hops)
                if any(node.name in reported for node in nearby):
                    continue
                # Single-output patterns only: a multi-output one fails on a plain chain for its
                # missing second output, which says nothing about this chain.
                failures = [
                    result.format_string
                    for node in nearby
                    for pattern in by_target.get((node.op, node.target), [])
                    if not isinstance(pattern, MultiOutputPattern) and not is_match(result := pattern.match(node))
                ]
                if any(failure.startswith("multiple_users") for failure in failures):
                    reason = _shared_intermediate_reason(sorted({seed, *nearby}, key=order.__getitem__))
                else:
                    reason = seeds.reason if isinstance(seeds.reason, str) else seeds.reason(seed)
                run.report.add_near_miss(self.name, None, seed, reason)


def nearby_users(seed: torch.fx.Node, hops: int) -> list[torch.fx.Node]:
    """The nodes reached from ``seed`` through at most ``hops`` uses (``seed`` itself excluded)."""
    seen: dict[torch.fx.Node, None] = {}
    frontier = [seed]
    for _ in range(hops):
        frontier = [user for node in frontier for user in node.users if user not in seen]
        seen.update(dict.fromkeys(frontier))
    return list(seen)


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
