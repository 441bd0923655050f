"""Rotation recognition: which chains in a graph compute a rotary embedding, and from which tables.

A chain is a rotation when every output column the interpreter derives is exactly
``a * cos_a - b * sin_a`` or ``b * cos_b + a * sin_b`` over pairs ``(2i, 2i + 1)`` (interleaved)
or ``(i, i + R/2)`` (half-split), with untouched columns after the first ``R``, whatever the
spelling. The tables it read, and at which elements, become the fused op's operands.
"""

from __future__ import annotations

import dataclasses
import operator

import torch

from fusion_passes.rope.columns import HANDLERS, PAIRING_TARGETS, Entry, Factor, Interpreter, LinearValue, NotARotation
from fusion_passes.rope.nodes import compile_time_size, is_float_tensor, same_sizes, value_of

aten = torch.ops.aten

# A chain is looked for within this many nodes before its output.
MAX_CHAIN_NODES = 64


@dataclasses.dataclass(frozen=True)
class Table:
    """A table operand and which of its elements serves each pair's members (see kernels/rope.py)."""

    node: torch.fx.Node
    start: int
    per_pair: int
    per_member: int
    part: int

    @property
    def map(self) -> tuple[int, int, int, int]:
        """The op's map: (start, per pair, per member, part)."""
        return (self.start, self.per_pair, self.per_member, self.part)


@dataclasses.dataclass(frozen=True)
class Rotation:
    """A chain from ``x`` to ``output`` computing a rotation of x's first ``rotary_dim`` dims."""

    x: torch.fx.Node
    output: torch.fx.Node
    nodes: frozenset[torch.fx.Node]  # every node after x up to the output
    cos: Table
    sin: Table
    rotary_dim: int
    interleaved: bool
    spelling: str


# --- From column terms to a rotation -------------------------------------------------------------


def _table_read(factors: list[Factor], first: list[int], second: list[int], what: str) -> Table:
    # The table the ``factors`` of the pairs' members ``first`` and ``second`` read, and where.
    nodes = {(node, part) for node, _, part in factors}
    if len(nodes) != 1:
        raise NotARotation(f"the {what} coefficients come from more than one table")
    (node, part), = nodes
    index = [k for _, k, _ in factors]
    start = index[first[0]]
    per_member = index[second[0]] - start
    per_pair = index[first[1]] - start if len(first) > 1 else 0
    for pair, (a, b) in enumerate(zip(first, second)):
        if index[a] != start + pair * per_pair or index[b] != start + pair * per_pair + per_member:
            raise NotARotation(f"the {what} table is not read at evenly spaced elements")
    return Table(node, start, per_pair, per_member, part)


def _rotated_entries(value: LinearValue, x: torch.fx.Node, output: torch.fx.Node) -> tuple[list[Entry], int]:
    # The output's column entries and how many leading columns the chain rotates.
    head_dim = compile_time_size(value_of(x).shape[-1])
    if value.is_complex or value.terms.shape != (head_dim,):
        raise NotARotation(f"the output's trailing shape {value.shape} is not x's last dim ({head_dim},)")
    if value.rounded not in (None, value_of(output).dtype):
        raise NotARotation(f"rounds to {value.rounded} but stores {value_of(output).dtype}")
    entries = list(value.terms)
    if any(entry is None for entry in entries):
        raise NotARotation("leaves output elements unwritten")
    rotated = [column for column, entry in enumerate(entries) if entry != ((1, column, None),)]
    rotary_dim = len(rotated)
    if rotary_dim < 2 or rotated != list(range(rotary_dim)) or rotary_dim % 2:
        raise NotARotation("the rotated columns are not an even-sized block of the first columns of x")
    return entries, rotary_dim


def _column_factors(
    entries: list[Entry], rotary_dim: int
) -> tuple[list[tuple[int, int]], list[Factor], list[Factor]]:
    # Per rotated column: (sign, column) of its partner, and its cos and sin factors.
    partners, cos, sin = [], [], []
    for column in range(rotary_dim):
        terms = sorted(entries[column], key=lambda term: term[1] != column)
        if len(terms) != 2 or terms[0][:2] != (1, column) or terms[1][1] == column or None in (terms[0][2], terms[1][2]):
            raise NotARotation(f"output column {column} is not x[{column}] * cos plus or minus its partner * sin")
        partners.append((terms[1][0], terms[1][1]))
        cos.append(terms[0][2])
        sin.append(terms[1][2])
    return partners, cos, sin


def _pair_members(rotary_dim: int, interleaved: bool) -> tuple[list[int], list[int]]:
    # The first and second members of each pair: (2i, 2i + 1) interleaved, (i, i + R/2) half-split.
    half = rotary_dim // 2
    first = [2 * i for i in range(half)] if interleaved else list(range(half))
    second = [a + 1 for a in first] if interleaved else [a + half for a in first]
    return first, second


def rotation_of(value: LinearValue, x: torch.fx.Node, output: torch.fx.Node, nodes: frozenset[torch.fx.Node]) -> Rotation:
    """The rotation ``value`` computes, or NotARotation saying why it is none."""
    entries, rotary_dim = _rotated_entries(value, x, output)
    partners, cos, sin = _column_factors(entries, rotary_dim)
    for interleaved in (True, False):
        first, second = _pair_members(rotary_dim, interleaved)
        expected = {}
        for a, b in zip(first, second):
            expected[a], expected[b] = (-1, b), (1, a)
        if all(partners[column] == expected[column] for column in range(rotary_dim)):
            cos_table, sin_table = _table_read(cos, first, second, "cos"), _table_read(sin, first, second, "sin")
            spelling = "interleaved" if interleaved else "half-split"
            if value_of(cos_table.node).is_complex():
                spelling = "complex"
            elif any(node.target is aten.slice_scatter.default for node in nodes):
                spelling += ", slice assignment"
            return Rotation(x, output, nodes, cos_table, sin_table, rotary_dim, interleaved, spelling)
    raise NotARotation("the pairs are neither (2i, 2i + 1) nor (i, i + R/2) with the rotation's signs")


# --- Finding chains in the graph -----------------------------------------------------------------


def _interpretable_ancestors(output: torch.fx.Node) -> list[torch.fx.Node]:
    # The nodes output is computed from, walking back through ops the interpreter knows.
    seen = {output: None}
    frontier = [output]
    while frontier and len(seen) < MAX_CHAIN_NODES:
        node = frontier.pop()
        if node.op != "call_function" or node.target not in HANDLERS:
            continue
        for source in node.all_input_nodes:
            if source not in seen:
                seen[source] = None
                frontier.append(source)
    return list(seen)


def _ancestors_within(output: torch.fx.Node, nodes: set[torch.fx.Node]) -> frozenset[torch.fx.Node]:
    # ``output`` and the nodes of ``nodes`` it is computed from.
    found, frontier = {output}, [output]
    while frontier:
        for source in frontier.pop().all_input_nodes:
            if source in nodes and source not in found:
                found.add(source)
                frontier.append(source)
    return frozenset(found)


def _derived_from(x: torch.fx.Node, candidates: list[torch.fx.Node], order: dict[torch.fx.Node, int]) -> set[torch.fx.Node]:
    # ``x`` and the ``candidates`` (in graph order) computed from it through ops the interpreter knows.
    derived = {x}
    for node in candidates:
        if node is not x and order[node] > order[x] and node.target in HANDLERS and any(
            source in derived for source in node.all_input_nodes
        ):
            derived.add(node)
    return derived


def find_rotation(
    output: torch.fx.Node, order: dict[torch.fx.Node, int], failures: list[tuple[torch.fx.Node, Exception]] | None = None
) -> Rotation | None:
    """The rotation ending at ``output`` from the earliest x that makes one, or None; an interpretation
    that failed on our side is added to ``failures`` (the family reports it)."""
    value = value_of(output)
    if not (is_float_tensor(value) and value.dim() >= 2 and (compile_time_size(value.shape[-1]) or 1) % 2 == 0):
        return None
    if output.op != "call_function" or output.target not in HANDLERS or output.target is operator.getitem:
        return None
    candidates = sorted(_interpretable_ancestors(output), key=order.__getitem__)
    if not any(node.target in PAIRING_TARGETS for node in candidates if node.op == "call_function"):
        return None
    shape = tuple(value.shape)
    for x in candidates:
        if x is output or not is_float_tensor(value_of(x)) or not same_sizes(value_of(x).shape, shape):
            continue
        derived = _derived_from(x, candidates, order)
        if output not in derived:
            continue
        try:
            result = Interpreter(x, derived).evaluate(output)
            if not isinstance(result, LinearValue):
                continue
            return rotation_of(result, x, output, _ancestors_within(output, derived) - {x})
        except NotARotation:
            continue
        except Exception as error:  # noqa: BLE001  (a bug here must not fail the user's compile)
            if failures is not None:
                failures.append((output, error))
            continue
    return None
