"""Compile a function and capture its post-grad graph before and after the fusion passes."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch
from torch._inductor.custom_graph_pass import CustomGraphPass

from fusion_passes import FusionConfig, FusionPassManager, GraphReport
from fusion_passes.graph_utils import graph_text
from fusion_passes.report import FusionReport


@dataclasses.dataclass
class Capture:
    """Graph text before/after the passes, the report, and the compiled output."""

    before: str
    after: str
    report: GraphReport
    output: Any


class _Recorder(CustomGraphPass):
    def __init__(self, manager: FusionPassManager) -> None:
        self.manager = manager
        self.texts: list[tuple[str, str]] = []

    def __call__(self, graph: torch.fx.Graph) -> None:
        before = graph_text(graph.owning_module)
        self.manager(graph)
        self.texts.append((before, graph_text(graph.owning_module)))

    def uuid(self) -> None:
        return None


def capture(fn: Callable[..., Any], *args: Any, devices: tuple[str, ...] = ("cpu",), **compile_kwargs: Any) -> Capture:
    """Compile ``fn`` with the passes on ``devices``, run it on ``args``, return the one graph's capture."""
    report = FusionReport()
    recorder = _Recorder(FusionPassManager(FusionConfig(devices=devices), report=report))
    with torch._inductor.config.patch(post_grad_custom_post_pass=recorder):
        output = torch.compile(fn, **compile_kwargs)(*args)
    assert len(recorder.texts) == 1, f"expected one post-grad graph, got {len(recorder.texts)}"
    (before, after), = recorder.texts
    return Capture(before=before, after=after, report=report.graphs[0], output=output)
