"""Graph normalization before matching, and stable graph text for tests."""

from __future__ import annotations

import operator
import re
from typing import Any

import torch

from fusion_passes.compat import is_aten_overload, normalize_graph_code, overload_name, schema_of

aten = torch.ops.aten

CONVERT = torch.ops.prims.convert_element_type.default

# Ops whose one output reshapes, broadcasts or slices their first argument.
RESHAPING_OPS = {
    aten.unsqueeze.default,
    aten.squeeze.dim,
    aten.reshape.default,
    aten.expand.default,
    aten.slice.Tensor,
}
# View-like ops: two nodes with the same target and arguments compute the same value.
_MERGEABLE_TARGETS = RESHAPING_OPS | {
    operator.getitem,
    aten.split.Tensor,
    aten.split_with_sizes.default,
    aten.select.int,
    aten.permute.default,
}


def _freeze(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, *map(_freeze, value))
    if isinstance(value, dict):
        return tuple(sorted((key, _freeze(item)) for key, item in value.items()))
    return value


def _mergeable(node: torch.fx.Node) -> bool:
    # View-like ops and deterministic pointwise ops: equal target and arguments, equal value.
    if node.op != "call_function":
        return False
    if node.target in _MERGEABLE_TARGETS:
        return True
    target = node.target
    return (
        is_aten_overload(target)
        and torch.Tag.pointwise in target.tags
        and torch.Tag.nondeterministic_seeded not in target.tags
        and not schema_of(target).is_mutable
    )


def merge_duplicates(graph: torch.fx.Graph) -> int:
    """Merge duplicate view, split, getitem and pointwise nodes so patterns see one producer.

    Tracing leaves such duplicates (a split per use; ``index == 0`` computed once per modulation
    tensor). Returns the number of nodes removed.
    """
    seen: dict[Any, torch.fx.Node] = {}
    removed = 0
    for node in list(graph.nodes):
        if not _mergeable(node):
            continue
        key = (node.target, _freeze(node.args), _freeze(node.kwargs))
        original = seen.setdefault(key, node)
        if original is not node:
            node.replace_all_uses_with(original)
            graph.erase_node(node)
            removed += 1
    return removed


# Reductions whose second argument is a list of dims. Graphs spell "the last dim" as d = rank - 1
# (decompositions) or -1 (user code); patterns are exact about literals, so both become -1.
_REDUCTIONS_OVER_DIMS = {
    aten.var_mean.correction,
    aten.var.correction,
    aten.mean.dim,
    aten.sum.dim_IntList,
    aten.amax.default,
}


def canonicalize_reduction_dims(graph: torch.fx.Graph) -> int:
    """Spell a reduction over the last dim as dim ``[-1]``; returns the number of nodes changed."""
    changed = 0
    for node in graph.nodes:
        if node.op != "call_function" or node.target not in _REDUCTIONS_OVER_DIMS or len(node.args) < 2:
            continue
        source, dims = node.args[0], node.args[1]
        value = source.meta.get("val") if isinstance(source, torch.fx.Node) else None
        if not isinstance(value, torch.Tensor) or not isinstance(dims, (list, tuple)) or len(dims) != 1:
            continue
        if dims[0] == value.dim() - 1:
            node.args = (source, [-1], *node.args[2:])
            changed += 1
    return changed


def functionalize_inplace_ops(graph: torch.fx.Graph) -> None:
    """Replace in-place ATen ops on intermediates by their functional forms.

    ``fwd_only`` traces decompositions as written (``F.rms_norm`` adds eps with ``add_``); post-grad
    graphs are functional. Only used on traced patterns, whose in-place ops write intermediates.
    """
    for node in graph.nodes:
        target = node.target
        if node.op != "call_function" or not is_aten_overload(target):
            continue
        name = schema_of(target).name.split("::")[-1]
        if not name.endswith("_") or name.endswith("__"):
            continue
        packet = getattr(aten, name[:-1], None)
        functional = getattr(packet, overload_name(target), None) if packet is not None else None
        if functional is not None:
            node.target = functional


# FX's "free this value" trailers (";  x = y = None") and the blank lines it puts between source
# lines say nothing about the rewrite (and differ between torch versions).
_FREE_TRAILER = re.compile(r";\s+(?:\w+ = )+None$", re.MULTILINE)
_BLANK_LINES = re.compile(r"\n\s*\n")


def graph_text(gm: torch.fx.GraphModule) -> str:
    """Readable graph code with names normalized, for expecttest's assertExpectedInline."""
    text = gm.print_readable(print_output=False, include_stride=False, include_device=False)
    return _BLANK_LINES.sub("\n", _FREE_TRAILER.sub("", normalize_graph_code(text)))
