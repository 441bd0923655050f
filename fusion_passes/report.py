"""The fusion report: what fused and what nearly did, per compiled graph, with source lines."""

from __future__ import annotations

import collections
import dataclasses
import logging
import re

import torch

logger = logging.getLogger("fusion_passes")

_FRAME = re.compile(r'File "(?P<file>[^"]+)", line (?P<line>\d+), in (?P<func>\S+)\n\s*(?P<code>[^\n]*)')


def source_line(node: torch.fx.Node) -> str | None:
    """``file:line (function): code`` of the user code that produced ``node``, if the graph has it."""
    frames = list(_FRAME.finditer(node.meta.get("stack_trace") or ""))
    if not frames:
        return None
    frame = frames[-1]
    return f"{frame['file']}:{frame['line']} ({frame['func']}): {frame['code'].strip()}"


@dataclasses.dataclass(frozen=True)
class FusionRecord:
    """One chain replaced by a fused op."""

    fusion: str
    pattern: str
    node: str
    source: str | None


@dataclasses.dataclass(frozen=True)
class NearMiss:
    """A candidate chain left unfused, and why."""

    fusion: str
    pattern: str | None
    node: str
    source: str | None
    reason: str


@dataclasses.dataclass
class GraphReport:
    """Fusions and near misses of one graph seen by the post-grad pass (or a cache hit)."""

    graph_id: str
    fused: list[FusionRecord] = dataclasses.field(default_factory=list)
    near_misses: list[NearMiss] = dataclasses.field(default_factory=list)
    cache_hit: bool = False

    def add_fusion(self, fusion: str, pattern: str, node: torch.fx.Node) -> None:
        """Record that the chain ending at ``node`` was replaced."""
        self.fused.append(FusionRecord(fusion, pattern, node.name, source_line(node)))

    def add_near_miss(self, fusion: str, pattern: str | None, node: torch.fx.Node, reason: str) -> None:
        """Record that the chain at ``node`` was left unfused for ``reason``."""
        self.near_misses.append(NearMiss(fusion, pattern, node.name, source_line(node), reason))

    def forget_near_misses_outside(self, graph: torch.fx.Graph) -> None:
        """Drop near misses whose node is no longer in ``graph`` (another pattern fused it)."""
        names = {node.name for node in graph.nodes}
        self.near_misses = [miss for miss in self.near_misses if miss.node in names]

    def counts(self) -> dict[str, int]:
        """Number of fusions per fusion kind."""
        return dict(collections.Counter(record.fusion for record in self.fused))

    def summary(self) -> str:
        """Human-readable lines: one per fusion and near miss."""
        if self.cache_hit:
            return (
                f"graph {self.graph_id}: loaded from the FX graph cache; the passes did not run again "
                "and the cached code holds the fusions made when it was first compiled"
            )
        lines = [f"graph {self.graph_id}: {len(self.fused)} fused, {len(self.near_misses)} near misses"]
        lines += [f"  fused {r.fusion} [{r.pattern}] at {r.source or r.node}" for r in self.fused]
        lines += [f"  not fused {m.fusion} at {m.source or m.node}: {m.reason}" for m in self.near_misses]
        return "\n".join(lines)


class FusionReport:
    """All graph reports since the last ``clear()``; ``fusion_passes.report()`` returns the global one."""

    def __init__(self) -> None:
        self.graphs: list[GraphReport] = []

    def clear(self) -> None:
        """Forget every graph recorded so far."""
        self.graphs.clear()

    def add(self, graph: GraphReport) -> None:
        """Append ``graph`` and log its summary (a warning if a family fused nothing but nearly did)."""
        self.graphs.append(graph)
        logger.info("%s", graph.summary())
        missed = {miss.fusion for miss in graph.near_misses} - set(graph.counts())
        for fusion in sorted(missed):
            logger.warning(
                "graph %s: fusion %r matched nothing; %d near misses (see fusion_passes.report())",
                graph.graph_id,
                fusion,
                sum(miss.fusion == fusion for miss in graph.near_misses),
            )

    @property
    def fused(self) -> list[FusionRecord]:
        """Every fusion of every graph."""
        return [record for graph in self.graphs for record in graph.fused]

    @property
    def near_misses(self) -> list[NearMiss]:
        """Every near miss of every graph."""
        return [miss for graph in self.graphs for miss in graph.near_misses]

    def counts(self) -> dict[str, int]:
        """Number of fusions per fusion kind over all graphs."""
        return dict(collections.Counter(record.fusion for record in self.fused))

    def summary(self) -> str:
        """Every graph's summary, or a line saying nothing was compiled."""
        if not self.graphs:
            return "no graph compiled with fusion_passes since the report was cleared"
        return "\n".join(graph.summary() for graph in self.graphs)


GLOBAL_REPORT = FusionReport()
