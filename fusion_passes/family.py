"""What every fusion family is: the stages the pass manager runs it through, and the run they share.

A family turns one kind of chain into one fused op, in five stages:

- find candidates: the chains in the graph that may be this family's (``apply`` finds them: by
  Inductor's pattern matcher for pattern families, by the family's own search otherwise);
- legality: why the fused op cannot compute a candidate exactly (operands, dtypes, shapes), or None;
- profitability: on CUDA, why the fused op is not measured faster than Inductor alone there, or
  None (the size rule; skipped where ``FusionConfig.size_rule`` is off), apart from legality as
  Inductor's pad_mm separates ``can_pad`` from ``should_pad``;
- plan: the fused call a candidate becomes (its operands and settings), or why there is none;
  legality, profitability and replace read it;
- replace: put the fused call in the graph in place of the chain. Which op replaces a chain is the
  family's; how the op is launched is decided later, for every family at once
  (``kernel_launches``).

``verdict`` and ``fuse`` are the steps every family shares around those stages: the device check,
errors of the family's own code turned into near misses, the check that no intermediate is saved
for backward, and the report.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Iterable
from typing import Any, Generic, TypeVar

import torch

from fusion_passes.config import FusionConfig
from fusion_passes.report import GraphReport, logger, saved_for_backward_reason

Candidate = TypeVar("Candidate")


@dataclasses.dataclass(frozen=True)
class PassRun:
    """One run of the passes on one graph: the settings it runs with and the report it writes.

    The pass manager makes one per graph and hands it to every family's ``apply``.
    """

    config: FusionConfig
    report: GraphReport


class NotACandidate(str):
    """A legality reason that means "not this family's chain at all": no near miss is reported."""


def internal_error(family: str, stage: str, anchor: torch.fx.Node, error: Exception) -> str:
    """The near-miss reason for a failure of a family's own code on a chain (never the compile's end)."""
    logger.warning("%s: the %s of %s failed (%r); left unfused, please report", family, stage, anchor, error)
    return f"the fusion's {stage} failed on this chain ({type(error).__name__}: {error}); left to Inductor"


class FusionFamily(abc.ABC, Generic[Candidate]):
    """A kind of fusion users enable by ``name``; the pass manager calls ``apply`` once per graph."""

    name: str
    description: str

    @abc.abstractmethod
    def apply(self, graph: torch.fx.Graph, run: PassRun) -> None:
        """Find the candidates in ``graph``; ``fuse`` each that ``verdict`` accepts, report the others."""

    @abc.abstractmethod
    def legality(self, candidate: Candidate) -> str | None:
        """Why the fused op cannot compute ``candidate`` exactly, or None."""

    @abc.abstractmethod
    def profitability(self, candidate: Candidate) -> str | None:
        """Why fusing a legal ``candidate`` on CUDA would be slower than Inductor alone, or None."""

    @abc.abstractmethod
    def plan(self, candidate: Candidate) -> Any:
        """The fused call ``candidate`` becomes, or why it cannot become one (a str)."""

    @abc.abstractmethod
    def replace(self, graph: torch.fx.Graph, candidate: Candidate) -> None:
        """Replace the chain by its fused call (a failure must leave the chain's result as it was)."""

    @abc.abstractmethod
    def anchor(self, candidate: Candidate) -> torch.fx.Node:
        """The node the chain's result replaces: where its device is read and the report places it."""

    @abc.abstractmethod
    def intermediates(self, candidate: Candidate) -> Iterable[torch.fx.Node]:
        """The values computed inside the chain, which the fused call stops computing."""

    @abc.abstractmethod
    def describe(self, candidate: Candidate) -> str:
        """The report's name of a fused ``candidate``."""

    def near_miss(self, run: PassRun, candidate: Candidate, reason: str) -> None:
        """Report that ``candidate`` stays unfused for ``reason``."""
        run.report.add_near_miss(self.name, self.describe(candidate), self.anchor(candidate), reason)

    def explain_unfused(self, graph: torch.fx.Graph, run: PassRun) -> None:
        """After every family ran: report the chains left in ``graph`` that no stage saw (default: none)."""

    def verdict(self, candidate: Candidate, run: PassRun) -> str | None:
        """Why ``candidate`` must stay unfused in this run, or None to fuse it."""
        anchor = self.anchor(candidate)
        output = anchor.meta.get("val")
        if not isinstance(output, torch.Tensor):
            return "the chain's output has no tensor metadata"
        if output.device.type not in run.config.devices:
            return f"device {output.device.type!r} is not in config.devices {run.config.devices}"
        try:
            reason = self.legality(candidate)
            if reason is None and output.device.type == "cuda" and run.config.size_rule:
                reason = self.profitability(candidate)
        except Exception as error:  # noqa: BLE001  (a chain we do not understand stays Inductor's)
            reason = internal_error(self.name, "check", anchor, error)
        # The fused ops are forward-only: a chain whose intermediate the backward reads stays.
        if not isinstance(reason, NotACandidate):
            reason = saved_for_backward_reason(self.intermediates(candidate)) or reason
        return reason

    def fuse(self, graph: torch.fx.Graph, candidate: Candidate, run: PassRun) -> bool:
        """Replace an accepted ``candidate`` and report it; a failure is reported as a near miss."""
        anchor = self.anchor(candidate)
        try:
            name = self.describe(candidate)
            self.replace(graph, candidate)
        except Exception as error:  # noqa: BLE001
            self.near_miss(run, candidate, internal_error(self.name, "rewrite", anchor, error))
            return False
        run.report.add_fusion(self.name, name, anchor)
        return True

    def __repr__(self) -> str:
        return f"<fusion family {self.name!r}: {self.description}>"
