"""The report a user reads: one near miss per chain, reasons in the user's terms, source lines that
tell fusions apart, and graphs served from the FX graph cache reporting what their compile fused."""

from __future__ import annotations

import collections
import inspect
import logging
import sys

import pytest
import torch
import torch.nn.functional as F
from graph_capture import capture
from torch._dynamo.utils import counters
from torch._inductor.codecache import FxGraphCache

import fusion_passes
from fusion_passes.report import in_user_terms, reporting_cache_hits

CPU_OPTIONS = {"fusion_passes": {"devices": ("cpu",)}}
# Python 3.11+ stack traces mark the expression of each node; 3.10 ones name only the line.
MARKS_EXPRESSIONS = pytest.mark.skipif(sys.version_info < (3, 11), reason="Python 3.10 stack traces mark no expression")


def randn(*shape: int, grad: bool = False) -> torch.Tensor:
    return torch.randn(shape, requires_grad=grad)


def line_of(fn, text: str) -> str:
    """``file:line`` of the line of ``fn``'s source containing ``text``."""
    lines, first = inspect.getsourcelines(fn)
    (offset,) = [index for index, line in enumerate(lines) if text in line]
    return f"test_report.py:{first + offset}"


def two_plus_scale(x, scale, shift):
    return F.layer_norm(x, x.shape[-1:]) * (2 + scale) + shift


def modulated(x, emb):
    shift, scale = emb.chunk(2, dim=1)
    return F.layer_norm(x, x.shape[-1:], eps=1e-6) * (1 + scale[:, None]) + shift[:, None]


def test_one_near_miss_per_chain():
    # The variants with and without shift both match this chain; the report names it once, as the longer one.
    result = capture(two_plus_scale, randn(2, 8, 16), randn(2, 1, 16), randn(2, 1, 16))
    (miss,) = result.report.near_misses
    assert miss.pattern.endswith("+shift"), miss.pattern
    assert miss.source.endswith("return F.layer_norm(x, x.shape[-1:]) * (2 + scale) + shift")


@MARKS_EXPRESSIONS
def test_reasons_name_what_the_user_wrote():
    result = capture(two_plus_scale, randn(2, 8, 16), randn(2, 1, 16), randn(2, 1, 16))
    (miss,) = result.report.near_misses
    where = line_of(two_plus_scale, "2 + scale")
    assert miss.reason == f"the norm is multiplied by `2 + scale` at {where}, which is not 1 + scale"


@pytest.mark.parametrize(
    ("reason", "said"),
    [
        ("out_dtype torch.float64 is not one of ['torch.float32']", "the chain's result dtype torch.float64 is not one of ['torch.float32']"),
        ("xs[1] dtype torch.float64 is not one of", "stream 1's input dtype torch.float64 is not one of"),
        ("cos[0], sin[0]: expected both tables or neither", "stream 0's cos table, stream 0's sin table: expected both tables or neither"),
        ("select dtype torch.int64 is not torch.bool", "the per-row choice (the torch.where condition) dtype torch.int64 is not torch.bool"),
        ("x has 5 dims; the kernel takes 2 to 4", "x has 5 dims; the kernel takes 2 to 4"),
        ("a residual sum with a per-row modulation choice (select01)", "a residual sum with a per-row modulation choice (select01)"),
    ],
)
def test_reasons_say_the_ops_arguments_in_the_users_terms(reason, said):
    assert in_user_terms(reason) == said


def normalized_also_read(x, scale, shift):
    normalized = F.layer_norm(x, x.shape[-1:])
    return normalized * (1 + scale) + shift, normalized.sin()


@MARKS_EXPRESSIONS
def test_a_shared_intermediate_names_its_readers():
    result = capture(normalized_also_read, randn(2, 8, 16), randn(2, 1, 16), randn(2, 1, 16))
    (miss,) = result.report.near_misses
    norm, uses = line_of(normalized_also_read, "F.layer_norm"), line_of(normalized_also_read, "normalized.sin()")
    assert miss.reason == (
        f"an intermediate of the chain, `F.layer_norm(x, x.shape[-1:])` at {norm}, is read by more than the chain: "
        f"`normalized * (1 + scale)` at {uses} and `normalized.sin()` at {uses}"
    )


def test_a_training_graph_says_saved_for_backward_and_what_to_do():
    torch.compile(modulated, backend="fusion_passes", options=CPU_OPTIONS)(randn(2, 8, 16, grad=True), randn(2, 32, grad=True))
    report = fusion_passes.report()
    assert report.counts() == {}
    (miss,) = report.near_misses
    assert "is saved for backward (a training graph)" in miss.reason
    assert "compile and run the model under torch.no_grad() or torch.inference_mode()" in miss.reason
    with torch.no_grad():
        torch._dynamo.reset()
        torch.compile(modulated, backend="fusion_passes", options=CPU_OPTIONS)(randn(2, 8, 16), randn(2, 32))
    assert report.counts() == {"adaln": 1}


def modulate(normalized, scale, shift):
    """A helper shared by every block: the same innermost source line for each chain."""
    return normalized * (1 + scale) + shift


class Block(torch.nn.Module):
    def forward(self, x, emb):
        s1, t1, s2, t2 = emb[:, None].chunk(4, dim=-1)
        h = modulate(F.layer_norm(x, x.shape[-1:]), s1, t1)
        return modulate(F.layer_norm(h.sin(), h.shape[-1:]), s2, t2)


class Blocks(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = torch.nn.ModuleList([Block(), Block()])

    def forward(self, x, emb):
        for block in self.blocks:
            x = block(x, emb)
        return x


def test_fusions_in_a_shared_helper_are_told_apart():
    with torch.no_grad():
        torch.compile(Blocks(), backend="fusion_passes", options=CPU_OPTIONS)(randn(2, 8, 16), randn(2, 64))
    report = fusion_passes.report()
    assert report.counts() == {"adaln": 4}
    assert len({record.source for record in report.fused}) == 1  # the helper's line
    assert {record.module for record in report.fused} == {"blocks.0", "blocks.1"}
    places = collections.Counter((record.module, record.called_from) for record in report.fused)
    assert len(places) == 4, places
    assert all("test_report.py" in record.called_from and "modulate(" in record.called_from for record in report.fused)
    assert "  fused adaln [layer_norm/fp32*(1+scale)+shift] in blocks.0 at " in report.summary()
    assert "\n      called from " in report.summary()


def compile_twice(compile_fn, tmp_path, monkeypatch):
    """Compile ``modulated`` with ``compile_fn`` twice in a fresh FX graph cache; the second compile is a hit."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    x, emb = randn(2, 8, 16), randn(2, 32)
    with torch.no_grad(), torch._inductor.config.patch(fx_graph_cache=True, force_disable_caches=False):
        compile_fn()(x, emb)
        torch._dynamo.reset()
        hits = counters["inductor"]["fxgraph_cache_hit"]
        compile_fn()(x, emb)
        assert counters["inductor"]["fxgraph_cache_hit"] == hits + 1


@pytest.mark.parametrize("route", ["backend", "enabled", "inductor_options"])
def test_a_cache_hit_reports_what_its_compile_fused(route, tmp_path, monkeypatch):
    def compile_fn():
        if route == "backend":
            return torch.compile(modulated, backend="fusion_passes", options=CPU_OPTIONS)
        if route == "inductor_options":  # no hook around the compile: reported when the report is read
            return torch.compile(modulated, options=fusion_passes.inductor_options(CPU_OPTIONS["fusion_passes"]))
        return lambda *args: torch.compile(modulated)(*args)

    if route == "enabled":
        with fusion_passes.enabled({"devices": ["cpu"]}):  # reports the hits inside when it ends
            compile_twice(compile_fn, tmp_path, monkeypatch)
    else:
        compile_twice(compile_fn, tmp_path, monkeypatch)
    first, second = fusion_passes.report().graphs
    assert (first.cache_hit, second.cache_hit) == (False, True)
    assert second.counts() == first.counts() == {"adaln": 1}
    assert second.fused == first.fused and second.near_misses == first.near_misses
    assert second.summary().splitlines()[0].endswith("(loaded from the FX graph cache): 1 fused, 0 near misses")


def test_a_cache_hit_is_reported_once_inside_another_window(tmp_path, monkeypatch):
    # enabled() around a compile with backend="fusion_passes": both watch for cache hits.
    with reporting_cache_hits(fusion_passes.report()):
        compile_twice(lambda: torch.compile(modulated, backend="fusion_passes", options=CPU_OPTIONS), tmp_path, monkeypatch)
    assert [graph.cache_hit for graph in fusion_passes.report().graphs] == [False, True]


def test_a_torch_that_does_not_restore_counters_says_the_fusions_are_unknown(tmp_path, monkeypatch, caplog):
    load = FxGraphCache.cache_hit_post_compile

    def load_without_counters(graph, cache_info, constants):
        graph.counter_deltas = collections.Counter()
        return load(graph, cache_info, constants)

    monkeypatch.setattr(FxGraphCache, "cache_hit_post_compile", staticmethod(load_without_counters))
    with caplog.at_level(logging.WARNING, logger="fusion_passes"):
        compile_twice(lambda: torch.compile(modulated, backend="fusion_passes", options=CPU_OPTIONS), tmp_path, monkeypatch)
    _, second = fusion_passes.report().graphs
    assert second.cache_hit and not second.recorded and second.fused == []
    assert "what it fused is unknown here" in caplog.text
