"""What the RoPE stages ask of graph nodes: a node's fake value, its sizes without adding guards,
and the users that read its data."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch.fx.experimental.symbolic_shapes import statically_known_true

from fusion_passes.compat import size_hint

aten = torch.ops.aten

_SHAPE_QUERIES = {aten.sym_size.int, aten.sym_stride.int, aten.sym_numel.default, aten.sym_storage_offset.default}


def value_of(node: Any) -> Any:
    """The fake value a graph node computes (None for anything else, or a node without one)."""
    return node.meta.get("val") if isinstance(node, torch.fx.Node) else None


def is_float_tensor(value: Any) -> bool:
    """Whether ``value`` is a tensor of a floating-point dtype."""
    return isinstance(value, torch.Tensor) and value.dtype.is_floating_point


def same_sizes(first: Sequence[Any], second: Sequence[Any]) -> bool:
    """Whether two shapes are equal without adding a guard (symbolic sizes that may differ are unequal)."""
    return len(first) == len(second) and all(statically_known_true(a == b) for a, b in zip(first, second))


def size_is(size: Any, *candidates: Any) -> bool:
    """Whether ``size`` is known, without a guard, to equal one of ``candidates``."""
    return any(statically_known_true(size == candidate) for candidate in candidates)


def compile_time_size(size: Any) -> int | None:
    """A size's value in the example inputs, without a guard (None where a symbolic size has none).

    Trailing sizes come from the head dim; a fused rotation guards them to this value.
    """
    return size if isinstance(size, int) else size_hint(size)


def data_users(node: torch.fx.Node) -> set[torch.fx.Node]:
    """The users of ``node`` that read its values (not only its sizes, as dynamic shapes do)."""
    return {user for user in node.users if user.target not in _SHAPE_QUERIES}
