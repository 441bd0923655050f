"""The pass manager: one Inductor CustomGraphPass that runs every enabled fusion family."""

from __future__ import annotations

import copy
import functools
import hashlib
import importlib.metadata
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from fusion_passes.compat import CustomGraphPass, CustomInferenceAwareGraphPass
from fusion_passes.config import FusionConfig
from fusion_passes.family import PassRun
from fusion_passes.graph_utils import canonicalize_reduction_dims, merge_duplicates
from fusion_passes.kernel_launches import launch_fused_ops
from fusion_passes.registry import families
from fusion_passes.report import GLOBAL_REPORT, FusionReport, GraphReport, keep_for_cache_hits

GraphPass = Callable[[torch.fx.Graph], Any]


def as_pass_list(value: GraphPass | Sequence[GraphPass] | None) -> tuple[GraphPass, ...]:
    """Inductor's hook value (None, one pass, or from torch 2.13 a list) as a tuple of passes."""
    if value is None:
        return ()
    if isinstance(value, (list, tuple)):
        return tuple(value)
    return (value,)


@functools.cache
def _source_digest() -> str:
    # Every rewrite is a function of the package's sources (patterns, checks, kernels).
    import fusion_passes
    import fusion_passes.kernels

    digest = hashlib.sha256()
    for package in (fusion_passes, fusion_passes.kernels):
        root = Path(package.__path__[0])
        for path in sorted(root.rglob("*.py")):  # subpackages too (rope/)
            digest.update(str(path.relative_to(root)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


class FusionPassManager(CustomInferenceAwareGraphPass or CustomGraphPass):  # type: ignore[misc]
    """Runs passes the user already installed, then every enabled fusion family, on a post-grad graph."""

    def __init__(
        self,
        config: FusionConfig | None = None,
        chained: GraphPass | Sequence[GraphPass] | None = None,
        report: FusionReport = GLOBAL_REPORT,
    ) -> None:
        self.config = config or FusionConfig()
        self.chained = as_pass_list(chained)
        self.report = report

    def __deepcopy__(self, memo: dict[int, Any]) -> FusionPassManager:
        """A copy that adds to the same report (AOTInductor deep-copies its config patches)."""
        return type(self)(self.config, copy.deepcopy(self.chained, memo), self.report)

    def __call__(self, graph: torch.fx.Graph, is_inference: bool | None = None) -> None:
        """Rewrite ``graph`` in place and add what happened to the report."""
        for chained_pass in self.chained:
            if CustomInferenceAwareGraphPass is not None and isinstance(chained_pass, CustomInferenceAwareGraphPass):
                chained_pass(graph, is_inference=bool(is_inference))
            else:
                chained_pass(graph)
        graph_report = GraphReport(graph_id=self.report.next_graph_id())
        merge_duplicates(graph)
        canonicalize_reduction_dims(graph)
        run = PassRun(self.config, graph_report)
        enabled = [families()[name] for name in self.config.enabled_fusions()]
        for family in enabled:
            family.apply(graph, run)
        graph.eliminate_dead_code()
        # A chain one family refused and a later one fused is no near miss.
        graph_report.forget_near_misses_outside(graph)
        for family in enabled:
            family.explain_unfused(graph, run)
        graph_report.merge_near_misses_of_one_chain()
        if graph_report.fused:
            launch_fused_ops(graph)
        keep_for_cache_hits(graph_report)
        self.report.add(graph_report)

    def uuid(self) -> str | None:
        """Cache key of the rewrite; None (cache bypassed) if a chained pass has no uuid."""
        chained_uuids = []
        for chained_pass in self.chained:
            chained_uuid = chained_pass.uuid() if isinstance(chained_pass, CustomGraphPass) else None
            if chained_uuid is None:
                return None
            chained_uuids.append(repr(chained_uuid))
        parts = [
            _source_digest(),
            torch.__version__,
            _version("triton"),
            repr(self.config),
            *chained_uuids,
        ]
        return hashlib.sha256("\n".join(parts).encode()).hexdigest()
