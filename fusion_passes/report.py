"""The fusion report: what fused and what nearly did, per compiled graph, in the user's terms.

Each record names the user's source line (``file:line (function): code``), the module it ran in
(``transformer_blocks.0.attn``) and, for a chain inside a helper function, the line that called
the helper. Near-miss reasons name values by the expression the user wrote and its line.

A graph served from Inductor's FX graph cache is compiled without post-grad passes, so its records
travel with the cache entry: Inductor stores the ``counters["inductor"]`` increments of a compile
with the entry and adds them again on a hit (``CompiledFxGraph.counter_deltas``), and the pass
counts one key holding the graph's records there.
"""

from __future__ import annotations

import ast
import collections
import contextlib
import dataclasses
import json
import logging
import os
import re
from collections.abc import Collection, Iterable, Iterator
from typing import Any

import torch

from fusion_passes.compat import counters, current_compile_id

logger = logging.getLogger("fusion_passes")

# One frame of a node's stack trace; Python 3.11+ marks the expression's columns under the code.
_FRAME = re.compile(
    r'File "(?P<file>[^"]+)", line (?P<line>\d+), in (?P<function>\S+)\n(?P<code>[^\n]*)'
    r"(?:\n(?P<marks>[ \t]*[~^]+)[ \t]*(?=\n|$))?"
)


@dataclasses.dataclass(frozen=True)
class Frame:
    """A frame of user code: file, line, function, the line's code and where the expression starts."""

    file: str
    line: int
    function: str
    code: str
    column: int | None

    def where(self) -> str:
        """``file:line (function)``."""
        return f"{self.file}:{self.line} ({self.function})"

    def short(self) -> str:
        """``basename:line``, for reasons that name a value."""
        return f"{os.path.basename(self.file)}:{self.line}"


# torch's own Python (F.rms_norm, nn.LayerNorm.forward) is traced too; the user's line called it.
_TORCH_DIR = os.path.dirname(torch.__file__) + os.sep


def frames(node: torch.fx.Node) -> list[Frame]:
    """The user-code frames that produced ``node``, outermost first (torch's own only where there is no other)."""
    found = []
    for match in _FRAME.finditer(node.meta.get("stack_trace") or ""):
        marks = match["marks"]
        column = len(marks) - len(marks.lstrip()) if marks else None
        found.append(Frame(match["file"], int(match["line"]), match["function"], match["code"], column))
    return [frame for frame in found if not frame.file.startswith(_TORCH_DIR)] or found


def source_line(node: torch.fx.Node) -> str | None:
    """``file:line (function): code`` of the user code that produced ``node``, if the graph has it."""
    found = frames(node)
    return f"{found[-1].where()}: {found[-1].code.strip()}" if found else None


def called_from(node: torch.fx.Node) -> str | None:
    """Where the helper function that produced ``node`` was called (``file:line (function): code``).

    None where ``node`` comes from a module's own ``forward`` (its module path tells it apart) or
    from the compiled function itself.
    """
    found = frames(node)
    if len(found) < 2 or found[-1].function == "forward":
        return None
    return f"{found[-2].where()}: {found[-2].code.strip()}"


# Dynamo's module paths: "L['self'].blocks.0.attn", or spelled through the module's dicts
# ("L['self'].__dict__['_modules']['blocks'][0]", "L['self']._modules['blocks']._modules['0']");
# the root module is "L['self']".
_ROOT = re.compile(r"""^[LG]\[(?:'[^']*'|"[^"]*")\]""")
_ITEM = re.compile(r"""\[['"]?([^'"\]]+)['"]?\]""")
_CONTAINERS = {"__dict__", "_modules"}


def module_path(node: torch.fx.Node) -> str | None:
    """The submodule that produced ``node`` (``transformer_blocks.0.attn``); None at the root or outside modules."""
    stack = node.meta.get("nn_module_stack")
    if not stack:
        return None
    path, _ = list(stack.values())[-1]
    parts = _ITEM.sub(r".\1", _ROOT.sub("", str(path))).split(".")
    return ".".join(part for part in parts if part and part not in _CONTAINERS) or None


def location(node: torch.fx.Node) -> dict[str, str | None]:
    """The record fields that say where ``node`` comes from: source, module, called_from."""
    return {"source": source_line(node), "module": module_path(node), "called_from": called_from(node)}


# ATen ops written as Python operators, to find the one the user wrote on a line.
_OPERATORS = {"add": ast.Add, "sub": ast.Sub, "rsub": ast.Sub, "mul": ast.Mult, "div": ast.Div}


def _op_name(node: torch.fx.Node) -> str:
    target = node.target
    packet = getattr(target, "overloadpacket", None)
    return getattr(packet, "__name__", None) or getattr(target, "__name__", None) or str(target)


def written_expression(node: torch.fx.Node) -> str | None:
    """The expression the user wrote for ``node`` (``2 + scale[:, None]``), where the stack trace marks it."""
    found = frames(node)
    if not found or found[-1].column is None:
        return None
    text = found[-1].code[found[-1].column:]
    operator = _OPERATORS.get(_op_name(node))
    calls, operations = [], []
    for end in range(1, len(text) + 1):
        try:
            tree = ast.parse(text[:end].strip(), mode="eval").body
        except SyntaxError:
            continue
        if operator is not None and isinstance(tree, ast.BinOp) and isinstance(tree.op, operator):
            operations.append(text[:end].strip())
        elif isinstance(tree, (ast.Call, ast.Subscript)):
            calls.append(text[:end].strip())
    # An operator: its longest spelling from the mark (the whole right operand); else the first call or subscript.
    if operations:
        return operations[-1]
    return calls[0] if calls else None


def kernel_op_name(node: torch.fx.Node) -> str:
    """The ATen op ``node`` comes from, before decompositions: the name Inductor gives its kernels by."""
    original = node.meta.get("original_aten")
    packet = getattr(original, "_overloadpacket", None)
    return packet.__name__ if packet is not None else _op_name(node)


def describe_value(value: Any) -> str:
    """``value`` as the user wrote it: ``\\`2 + scale[:, None]\\` at model.py:42``, an input, or a number."""
    if not isinstance(value, torch.fx.Node):
        return repr(value)
    if value.op == "placeholder":
        return "an input of the compiled graph"
    found = frames(value)
    if not found:
        return f"the result of {_op_name(value)} (no source line in the graph)"
    expression = written_expression(value)
    if expression is not None:
        return f"`{expression}` at {found[-1].short()}"
    return f"the result of {_op_name(value)} at {found[-1].short()}: `{found[-1].code.strip()}`"


# The fused ops' argument names, which their checks' reasons start with, in the user's terms.
_ARGUMENT_TERMS = {
    "out_dtype2": "the second modulation's result dtype",
    "out_dtype": "the chain's result dtype",
    "residual_dtype": "the residual sum's dtype",
    "conv_dtype": "the dtype of the convolution's result before the activation",
    "scale2": "the second modulation's scale",
    "shift2": "the second modulation's shift",
    "select": "the per-row choice (the torch.where condition)",
}
_STREAM_TERMS = {"xs": "input", "weights": "norm weight", "cos": "cos table", "sin": "sin table"}
_ARGUMENT = re.compile(r"\b(?:(?P<name>" + "|".join(_ARGUMENT_TERMS) + r")\b|(?P<stream>" + "|".join(_STREAM_TERMS) + r")\[(?P<index>\d+)\])")


def in_user_terms(reason: str) -> str:
    """``reason`` with the fused ops' argument names (``conv_dtype``, ``xs[0]``) said as the user would."""

    def term(match: re.Match[str]) -> str:
        if match["name"]:
            return _ARGUMENT_TERMS[match["name"]]
        return f"stream {match['index']}'s {_STREAM_TERMS[match['stream']]}"

    return _ARGUMENT.sub(term, reason)


def _is_training_forward(graph: torch.fx.Graph) -> bool:
    # AOTAutograd names the inputs of a training forward graph primals_*.
    return any(node.op == "placeholder" and node.name.startswith("primals_") for node in graph.nodes)


def saved_for_backward(node: torch.fx.Node) -> bool:
    """Whether ``node`` is saved for the backward pass (an output of a training forward graph)."""
    for user in node.users:
        if user.op != "output":
            continue
        outputs = user.args[0] if isinstance(user.args[0], (list, tuple)) else [user.args[0]]
        # Newer torch describes each output of an AOTAutograd graph; older ones tell only training apart.
        descriptions = user.meta.get("desc") or [None] * len(outputs)
        for output, description in zip(outputs, descriptions):
            if output is not node:
                continue
            if description is None and _is_training_forward(node.graph):
                return True
            if type(description).__name__ == "SavedForBackwardsAOTOutput":
                return True
    return False


def saved_for_backward_reason(nodes: Iterable[torch.fx.Node]) -> str | None:
    """Why a chain whose intermediates are ``nodes`` cannot be replaced in a training graph, or None."""
    saved = next((node for node in nodes if saved_for_backward(node)), None)
    if saved is None:
        return None
    return (
        f"an intermediate of the chain, from {describe_value(saved)}, is saved for backward (a training graph); "
        "the fused ops are forward-only: compile and run the model under torch.no_grad() or torch.inference_mode()"
    )


def shared_value_reason(node: torch.fx.Node, users: Collection[torch.fx.Node]) -> str:
    """Why a chain cannot absorb ``node``: it is saved for backward, returned, or also read by ``users``."""
    saved = saved_for_backward_reason([node])
    if saved is not None:
        return saved
    if any(user.op == "output" for user in users):
        return f"an intermediate of the chain, {describe_value(node)}, is also returned by the compiled code"
    readers = " and ".join(describe_value(user) for user in list(users)[:3])
    return f"an intermediate of the chain, {describe_value(node)}, is read by more than the chain: {readers}"


def outside_use_reason(nodes: Iterable[torch.fx.Node], inside: Collection[torch.fx.Node]) -> str | None:
    """Why a chain of ``inside`` nodes cannot be replaced: which of ``nodes`` is also used outside it; None if none is.

    A value saved for backward comes first: no inference-only rewrite of the chain helps there.
    """
    outside = {node: [u for u in node.users if u not in inside or u.op == "output"] for node in nodes}
    used_outside = [node for node, users in outside.items() if users]
    if not used_outside:
        return None
    node = next((node for node in used_outside if saved_for_backward(node)), used_outside[0])
    return shared_value_reason(node, outside[node])


@dataclasses.dataclass(frozen=True)
class FusionRecord:
    """One chain replaced by a fused op, and where the user wrote it."""

    fusion: str
    pattern: str
    node: str
    source: str | None
    module: str | None = None
    called_from: str | None = None


@dataclasses.dataclass(frozen=True)
class NearMiss:
    """A candidate chain left unfused, why, and where the user wrote it."""

    fusion: str
    pattern: str | None
    node: str
    source: str | None
    reason: str
    module: str | None = None
    called_from: str | None = None
    # The ATen ops the chain computes, named as Inductor names its kernels (the op before
    # decompositions), so that the radar can tie a profiled kernel back to the chain.
    ops: tuple[str, ...] = dataclasses.field(default=(), repr=False)
    # Names of the graph nodes the candidate chain covers (to tell one chain's near misses apart).
    chain: frozenset[str] = dataclasses.field(default=frozenset(), compare=False, repr=False)


def _place(record: FusionRecord | NearMiss) -> str:
    # "in module at file:line (function): code".
    return (f"in {record.module} " if record.module else "") + f"at {record.source or record.node}"


def _caller(record: FusionRecord | NearMiss) -> str:
    # The line that called the helper holding the chain, on a line of its own.
    return f"\n      called from {record.called_from}" if record.called_from else ""


@dataclasses.dataclass
class GraphReport:
    """Fusions and near misses of one graph seen by the post-grad pass (or loaded from the FX graph cache)."""

    graph_id: str
    fused: list[FusionRecord] = dataclasses.field(default_factory=list)
    near_misses: list[NearMiss] = dataclasses.field(default_factory=list)
    cache_hit: bool = False
    # False for a cache hit whose records this torch did not restore: fused and near_misses are unknown.
    recorded: bool = True

    def add_fusion(self, fusion: str, pattern: str, node: torch.fx.Node) -> None:
        """Record that the chain ending at ``node`` was replaced."""
        self.fused.append(FusionRecord(fusion, pattern, node.name, **location(node)))

    def add_near_miss(
        self, fusion: str, pattern: str | None, node: torch.fx.Node, reason: str, chain: Iterable[torch.fx.Node] = ()
    ) -> None:
        """Record that the chain at ``node`` (covering the ``chain`` nodes) was left unfused for ``reason``."""
        members = {node, *chain}
        names = frozenset(member.name for member in members)
        ops = tuple(sorted({kernel_op_name(member) for member in members if member.op == "call_function"}))
        self.near_misses.append(
            NearMiss(fusion, pattern, node.name, reason=in_user_terms(reason), ops=ops, chain=names, **location(node))
        )

    def forget_near_misses_outside(self, graph: torch.fx.Graph) -> None:
        """Drop near misses whose node is no longer in ``graph`` (another pattern fused it)."""
        names = {node.name for node in graph.nodes}
        self.near_misses = [miss for miss in self.near_misses if miss.node in names]

    def merge_near_misses_of_one_chain(self) -> None:
        """Keep one near miss per chain: where one's node lies in another's chain (the variants with
        and without shift, the residual and plain forms), the one covering the most of the chain."""
        kept: list[NearMiss] = []
        for miss in sorted(self.near_misses, key=lambda miss: -len(miss.chain)):  # stable: first recorded wins ties
            if not any(miss.node in other.chain for other in kept):
                kept.append(miss)
        kept_ids = {id(miss) for miss in kept}
        self.near_misses = [miss for miss in self.near_misses if id(miss) in kept_ids]

    def counts(self) -> dict[str, int]:
        """Number of fusions per fusion kind."""
        return dict(collections.Counter(record.fusion for record in self.fused))

    def summary(self) -> str:
        """Human-readable lines: one per fusion and near miss."""
        if not self.recorded:
            return (
                f"graph {self.graph_id}: loaded from the FX graph cache; this torch did not restore what its first "
                "compile recorded, so what it fused is unknown here (the cached code holds those fusions)"
            )
        origin = " (loaded from the FX graph cache)" if self.cache_hit else ""
        lines = [f"graph {self.graph_id}{origin}: {len(self.fused)} fused, {len(self.near_misses)} near misses"]
        lines += [f"  fused {r.fusion} [{r.pattern}] {_place(r)}{_caller(r)}" for r in self.fused]
        lines += [f"  not fused {m.fusion} {_place(m)}: {m.reason}{_caller(m)}" for m in self.near_misses]
        return "\n".join(lines)

    def records_json(self) -> str:
        """The fusions and near misses as JSON (what a cache hit restores)."""
        fields = lambda record: {k: v for k, v in dataclasses.asdict(record).items() if k != "chain"}  # noqa: E731
        records = {"fused": [fields(r) for r in self.fused], "near_misses": [fields(m) for m in self.near_misses]}
        return json.dumps(records, sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_records_json(cls, text: str, graph_id: str) -> GraphReport:
        """The report of a graph loaded from the FX graph cache, from its first compile's ``records_json()``."""
        records = json.loads(text)
        return cls(
            graph_id=graph_id,
            fused=[FusionRecord(**fields) for fields in records["fused"]],
            near_misses=[NearMiss(**{**fields, "ops": tuple(fields.get("ops", ()))}) for fields in records["near_misses"]],
            cache_hit=True,
        )


class FusionReport:
    """All graph reports since the last ``clear()``; ``fusion_passes.report()`` returns the global one."""

    def __init__(self) -> None:
        self.graphs: list[GraphReport] = []

    def clear(self) -> None:
        """Forget every graph recorded so far."""
        self.graphs.clear()

    def next_graph_id(self) -> str:
        """The id of a graph compiled now: Dynamo's compile id, ``#n`` added for its backward graph and others."""
        compile_id = current_compile_id()
        base = str(compile_id) if compile_id is not None else "?"
        repeats = sum(graph.graph_id.split("#")[0] == base for graph in self.graphs)
        return base if repeats == 0 else f"{base}#{repeats}"

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

# The counters["inductor"] key that carries a graph's records through the FX graph cache.
_RECORDS_KEY = "fusion_passes records "
_HITS = "fxgraph_cache_hit"
# What this process has accounted for: records keys counted by passes or reported as cache hits,
# and cache hits reported (so a window inside another, enabled() around the backend, reports once).
_ACCOUNTED: collections.Counter[str] = collections.Counter()


def keep_for_cache_hits(graph: GraphReport) -> None:
    """Count ``graph``'s records in ``counters["inductor"]``, which Inductor stores with the cache entry."""
    key = _RECORDS_KEY + graph.records_json()
    counters["inductor"][key] += 1
    _ACCOUNTED[key] += 1


def _cache_counts() -> collections.Counter[str]:
    return collections.Counter(
        {key: n for key, n in counters["inductor"].items() if key.startswith(_RECORDS_KEY) or key == _HITS}
    )


def _report_new_records(
    report: FusionReport, before: collections.Counter[str], accounted_before: collections.Counter[str]
) -> tuple[int, int]:
    # Adds a cache-hit graph for each records key counted since ``before`` that no pass or window
    # accounted for; returns the cache hits counted since, and the graphs added.
    new = _cache_counts() - before - (_ACCOUNTED - accounted_before)
    hits = new.pop(_HITS, 0)
    for key, times in new.items():
        for _ in range(times):
            report.add(GraphReport.from_records_json(key[len(_RECORDS_KEY):], report.next_graph_id()))
        _ACCOUNTED[key] += times
    return hits, new.total()


# Where the last look for cache hits outside every window (options=inductor_options()) left off.
_LAST_LOOK = [collections.Counter(), collections.Counter()]


def report_unwatched_cache_hits(report: FusionReport) -> None:
    """Add to ``report`` the cache hits since the last call that no window watched (a compile with
    ``options=inductor_options()``, which has no hook around it): their compile id is unknown (``?``)."""
    before, accounted_before = _LAST_LOOK
    before[_HITS] = _cache_counts()[_HITS]  # a hit without records may be any compile's: not ours to report
    _report_new_records(report, before, accounted_before)
    _LAST_LOOK[:] = [_cache_counts(), _ACCOUNTED.copy()]


@contextlib.contextmanager
def reporting_cache_hits(report: FusionReport) -> Iterator[None]:
    """Add to ``report`` a graph for each FX-graph-cache hit inside the block, with its first compile's records."""
    before, accounted_before = _cache_counts(), _ACCOUNTED.copy()
    yield
    hits, recorded = _report_new_records(report, before, accounted_before)
    # A torch that does not restore a compile's counters on a hit: say what is not known, and how to see it.
    for _ in range(hits - recorded):
        graph = GraphReport(graph_id=report.next_graph_id(), cache_hit=True, recorded=False)
        report.add(graph)
        logger.warning("%s; compile with torch._inductor.config.fx_graph_cache = False to see it", graph.summary())
    _ACCOUNTED[_HITS] += hits
