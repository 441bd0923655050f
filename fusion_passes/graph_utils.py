"""Graph normalization before matching, and stable graph text for tests."""

from __future__ import annotations

import operator
import re
from typing import Any

import torch

aten = torch.ops.aten

# Pure view-like ops: two nodes with the same target and arguments compute the same value.
_MERGEABLE_TARGETS = {
    operator.getitem,
    aten.split.Tensor,
    aten.split_with_sizes.default,
    aten.unsqueeze.default,
    aten.squeeze.dim,
    aten.reshape.default,
    aten.slice.Tensor,
    aten.select.int,
    aten.permute.default,
    aten.expand.default,
}


def _freeze(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, *map(_freeze, value))
    if isinstance(value, dict):
        return tuple(sorted((key, _freeze(item)) for key, item in value.items()))
    return value


def merge_duplicate_views(graph: torch.fx.Graph) -> int:
    """Merge duplicate view/split/getitem nodes (left by tracing) so patterns see one producer.

    Returns the number of nodes removed.
    """
    seen: dict[Any, torch.fx.Node] = {}
    removed = 0
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target not in _MERGEABLE_TARGETS:
            continue
        key = (node.target, _freeze(node.args), _freeze(node.kwargs))
        original = seen.setdefault(key, node)
        if original is not node:
            node.replace_all_uses_with(original)
            graph.erase_node(node)
            removed += 1
    return removed


# FX's "free this value" trailers (";  x = y = None") and the blank lines it puts between source
# lines say nothing about the rewrite (and differ between torch versions).
_FREE_TRAILER = re.compile(r";\s+(?:\w+ = )+None$", re.MULTILINE)
_BLANK_LINES = re.compile(r"\n\s*\n")


def graph_text(gm: torch.fx.GraphModule) -> str:
    """Readable graph code with names normalized, for expecttest's assertExpectedInline."""
    from torch._dynamo.testing import normalize_gm

    text = gm.print_readable(print_output=False, include_stride=False, include_device=False)
    return _BLANK_LINES.sub("\n", _FREE_TRAILER.sub("", normalize_gm(text)))
