"""Rotary embedding (SPEC.md F5), with the q/k RMSNorm before it (F4), in every spelling.

Models write RoPE in many ways: tables repeated per pair and ``stack([-x_odd, x_even])``
(interleaved), ``cat([-x2, x1])`` (half-split, "neox"), ``view_as_complex(x) * freqs``, slice
assignment ``out[..., 0::2] = ...`` (``slice_scatter`` in the graph), tables gathered by position
ids, on all dims or the first R. Fixed patterns cannot enumerate them, so this family proves what
a chain computes instead: ``interpret`` follows the chain from its input ``x`` through views,
casts, negation, additions, products with tables and complex multiplication, tracking every
output column as a sum of terms ``±x[column] * table[k]``. A chain whose columns are exactly
``a * cos_a - b * sin_a`` and ``b * cos_b + a * sin_b`` over pairs ``(a, b)`` (plus untouched
columns after the rotated ones) is a rotation, whatever its spelling; the tables it read, and
where, become the fused op's operands.

Around each rotation the family then absorbs, when every intermediate is used only there:
- the RMSNorm producing ``x`` (per head over D, or over all heads before the head split), with
  the graph's eps, weight and rounding points;
- a ``cat`` of streams along the sequence before the rotation (FLUX's joint text + image: each
  stream normalized with its own weights, then one table over the joint sequence) or after it
  (Qwen-Image: each stream rotated with its own table; HunyuanVideo: rotated image tokens and
  unrotated text tokens, or a rotated prefix of one normalized sequence).
Each group becomes one ``fusion_passes::rope`` call writing the joint output.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import operator
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch._inductor.pattern_matcher import Match, PatternExpr, is_match
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.fx.experimental.symbolic_shapes import guard_int, statically_known_true
from torch.utils._pytree import tree_flatten

from fusion_passes.config import FusionConfig
from fusion_passes.kernels import rope as rope_kernels
from fusion_passes.norms import EPS_SENTINEL, NORM_FORMS, TRACE_DTYPE, NormForm, normalized
from fusion_passes.patterns import RewriteFamily, generalize, hinted, register_family, traced_pattern, with_signature
from fusion_passes.report import GraphReport, describe_value, logger, outside_use_reason

aten = torch.ops.aten
_CONVERT = torch.ops.prims.convert_element_type.default
ROPE_OP = torch.ops.fusion_passes.rope.default

# Where the fused op was measured faster than Inductor alone on CUDA (docs/BENCHMARKS.md, H200):
# with real tables, Inductor fuses a rotation alone into one kernel near the memory floor (ours
# measured 0.89-0.93x), and with a norm it wins from 256 x 24 x 128 elements per stream group
# (1.35x) but loses at 64 x 24 x 128 (0.73x). Complex chains run as eager kernels under Inductor:
# fused at every size (1.9-4.2x measured).
MIN_CUDA_ELEMENTS = 1 << 19

# A chain is looked for within this many nodes before its output.
MAX_CHAIN_NODES = 64


class NotARotation(Exception):
    """The interpreted chain is not (exactly) a rotation; the message says why."""


# --- The interpreter -----------------------------------------------------------------------------

# A term is (sign, column of x, factor); a factor is (table node, index in its last dim, part:
# 0 real or real part, 1 imaginary part) or None. An entry of a value is a tuple of terms.
Factor = tuple[torch.fx.Node, int, int]
Term = tuple[int, int, "Factor | None"]
MAX_TERMS = 4


@dataclasses.dataclass(frozen=True)
class Linear:
    """A value computed from x: per element of its trailing dims (those x's last dim became), the
    terms summing to it. A complex value has one more axis (real, imaginary) than its shape."""

    terms: np.ndarray
    is_complex: bool
    dtype: torch.dtype
    # The narrower dtype the chain rounded this value to; after that only data movement may
    # follow (a rounded element scattered into the output is rounded once, as at the store).
    rounded: torch.dtype | None = None

    def replace(self, terms: np.ndarray, **changes: Any) -> Linear:
        """This value with other terms (and other fields)."""
        return dataclasses.replace(self, terms=terms, **changes)

    @property
    def shape(self) -> tuple[int, ...]:
        """The trailing dims as the tensor has them."""
        return self.terms.shape[:-1] if self.is_complex else self.terms.shape


def _array(entries: Sequence[Any], shape: tuple[int, ...]) -> np.ndarray:
    array = np.empty(len(entries), dtype=object)
    for index, entry in enumerate(entries):
        array[index] = entry
    return array.reshape(shape)


def _take(array: np.ndarray, index: Any, axis: int) -> np.ndarray:
    # np.take, but a single element stays a 0-d array.
    taken = np.take(array, index, axis=axis)
    if isinstance(taken, np.ndarray):
        return taken
    scalar = np.empty((), dtype=object)
    scalar[()] = taken
    return scalar


def _map(array: np.ndarray, fn: Any) -> np.ndarray:
    return _array([fn(entry) for entry in array.reshape(-1)], array.shape)


def _combine(first: np.ndarray, second: np.ndarray, sign: int) -> np.ndarray:
    if first.shape != second.shape:
        raise NotARotation(f"adds values of trailing shapes {first.shape} and {second.shape}")

    def add(a: tuple[Term, ...], b: tuple[Term, ...]) -> tuple[Term, ...]:
        if a is None or b is None:
            raise NotARotation("reads an element no scatter wrote")
        terms = a + tuple((s * sign, column, factor) for s, column, factor in b)
        if len(terms) > MAX_TERMS:
            raise NotARotation("an element sums more than four terms")
        return terms

    return _array([add(a, b) for a, b in zip(first.reshape(-1), second.reshape(-1))], first.shape)


def _negated(entry: tuple[Term, ...]) -> tuple[Term, ...]:
    return tuple((-sign, column, factor) for sign, column, factor in entry)


def _times(entry: tuple[Term, ...], factor: Factor, sign: int = 1) -> tuple[Term, ...]:
    if entry is None:
        raise NotARotation("reads an element no scatter wrote")
    if any(existing is not None for _, _, existing in entry):
        raise NotARotation("multiplies x by more than one table")
    return tuple((sign * s, column, factor) for s, column, _ in entry)


def _value(node: Any) -> Any:
    return node.meta.get("val") if isinstance(node, torch.fx.Node) else None


def _is_float_tensor(value: Any) -> bool:
    return isinstance(value, torch.Tensor) and value.dtype.is_floating_point


def same_sizes(first: Sequence[Any], second: Sequence[Any]) -> bool:
    """Whether two shapes are equal without adding a guard (symbolic sizes that may differ are unequal)."""
    return len(first) == len(second) and all(statically_known_true(a == b) for a, b in zip(first, second))


def _size_is(size: Any, *candidates: Any) -> bool:
    return any(statically_known_true(size == candidate) for candidate in candidates)


def _hint(size: Any) -> int | None:
    # A size's compile-time value, without a guard (None where it has none). Trailing sizes come
    # from the head dim; a fused rotation guards them (``_specialize``).
    return size if isinstance(size, int) else size.node.hint


_UPCAST_RANK = {torch.float16: 1, torch.bfloat16: 1, torch.float32: 2, torch.float64: 3}


class Interpreter:
    """Evaluates the nodes between ``x`` and an output as ``Linear`` values (others are leaves)."""

    def __init__(self, x: torch.fx.Node, derived: set[torch.fx.Node]) -> None:
        self.x = x
        self.lead = tuple(_value(x).shape[:-1])
        self.derived = derived
        self.memo: dict[torch.fx.Node, Any] = {}

    def evaluate(self, node: Any) -> Any:
        """The value of ``node``: a Linear (or tuple of them) if computed from x, else the node."""
        if not isinstance(node, torch.fx.Node) or node not in self.derived:
            return node
        if node not in self.memo:
            self.memo[node] = self._evaluate(node)
        return self.memo[node]

    def _linear(self, node: Any, moved: bool = False) -> Linear:
        # The Linear value of ``node``; ``moved``: for an op that only moves or negates elements,
        # which a rounded value may still pass through.
        value = self.evaluate(node)
        if not isinstance(value, Linear):
            raise NotARotation(f"{getattr(node, 'name', node)} is not computed from x alone")
        if value.rounded is not None and not moved:
            raise NotARotation("rounds to a narrower dtype before its last arithmetic step")
        return value

    def _trailing_axis(self, node: torch.fx.Node, dim: int) -> int:
        rank = _value(node).dim()
        dim = dim % rank if rank else dim
        if dim < len(self.lead):
            raise NotARotation(f"{node.target} works on a leading dim {dim}")
        return dim - len(self.lead)

    def _evaluate(self, node: torch.fx.Node) -> Any:
        if node is self.x:
            value = _value(node)
            head_dim = _hint(value.shape[-1])
            entries = [((1, column, None),) for column in range(head_dim)]
            return Linear(_array(entries, (head_dim,)), is_complex=False, dtype=value.dtype)
        target, args = node.target, node.args
        handler = _HANDLERS.get(target)
        if handler is None:
            raise NotARotation(f"{getattr(target, '__name__', target)} is not a view, cast, sum or product")
        return handler(self, node, *args, **node.kwargs)

    def trailing_shape(self, node: torch.fx.Node) -> tuple[int, ...]:
        """The trailing dims of ``node``'s tensor: its shape after x's leading dims, which it keeps."""
        shape = tuple(_value(node).shape)
        trailing = tuple(_hint(size) for size in shape[len(self.lead):])
        if not same_sizes(shape[: len(self.lead)], self.lead) or None in trailing:
            raise NotARotation(f"{node.name} changes the leading dims {self.lead} to {shape}")
        return trailing


def _reshaped(it: Interpreter, node: torch.fx.Node, source: Any, *_: Any, **__: Any) -> Linear:
    value = it._linear(source, moved=True)
    shape = it.trailing_shape(node)
    if value.is_complex != _value(node).is_complex():
        raise NotARotation("a view changes between real and complex")
    terms_shape = shape + ((2,) if value.is_complex else ())
    if int(np.prod(terms_shape)) != value.terms.size:
        raise NotARotation(f"{node.name} moves elements across the leading dims")
    return value.replace(value.terms.reshape(terms_shape))


def _same(it: Interpreter, node: torch.fx.Node, source: Any, *_: Any, **__: Any) -> Linear:
    return it._linear(source, moved=True)


def _converted(it: Interpreter, node: torch.fx.Node, source: Any, dtype: torch.dtype, **_: Any) -> Linear:
    value = it._linear(source, moved=True)
    if value.is_complex or dtype not in _UPCAST_RANK:
        raise NotARotation(f"casts to {dtype}")
    narrower = _UPCAST_RANK[dtype] < _UPCAST_RANK.get(value.dtype, 0) or (
        _UPCAST_RANK[dtype] == 1 and dtype != value.dtype
    )
    if narrower and value.rounded is not None:
        raise NotARotation(f"rounds twice ({value.rounded}, then {dtype})")
    return value.replace(value.terms, dtype=dtype, rounded=dtype if narrower else value.rounded)


def _common_rounding(values: Sequence[Linear]) -> torch.dtype | None:
    # The rounding of values stored side by side: one dtype, or none.
    roundings = {value.rounded for value in values} - {None}
    if len(roundings) > 1:
        raise NotARotation(f"stores values rounded to different dtypes {sorted(map(str, roundings))}")
    return roundings.pop() if roundings else None


def _negative(it: Interpreter, node: torch.fx.Node, source: Any) -> Linear:
    value = it._linear(source, moved=True)
    return value.replace(_map(value.terms, _negated))


def _unbound(it: Interpreter, node: torch.fx.Node, source: Any, dim: int = 0) -> tuple[Linear, ...]:
    value = it._linear(source, moved=True)
    axis = it._trailing_axis(source, dim)
    return tuple(value.replace(_take(value.terms, index, axis)) for index in range(value.terms.shape[axis]))


def _split(it: Interpreter, node: torch.fx.Node, source: Any, sizes: int | Sequence[int], dim: int = 0) -> tuple[Linear, ...]:
    value = it._linear(source, moved=True)
    axis = it._trailing_axis(source, dim)
    length = value.terms.shape[axis]
    if isinstance(sizes, int):
        sizes = [min(sizes, length - start) for start in range(0, length, sizes)]
    bounds = np.cumsum([0, *sizes])
    return tuple(
        value.replace(_take(value.terms, range(start, end), axis)) for start, end in zip(bounds[:-1], bounds[1:])
    )


def _item(it: Interpreter, node: torch.fx.Node, source: Any, index: int) -> Linear:
    values = it.evaluate(source)
    if not isinstance(values, tuple):
        raise NotARotation("takes an item of a value that is not a tuple")
    return values[index]


def _python_slice(size: int, start: int | None, end: int | None, step: int) -> slice:
    return slice(*slice(start, end, step).indices(size))


def _sliced(
    it: Interpreter, node: torch.fx.Node, source: Any, dim: int = 0, start: int | None = None, end: int | None = None, step: int = 1
) -> Linear:
    value = it._linear(source, moved=True)
    axis = it._trailing_axis(source, dim)
    index = [slice(None)] * value.terms.ndim
    index[axis] = _python_slice(value.terms.shape[axis], start, end, step)
    return value.replace(value.terms[tuple(index)])


def _selected(it: Interpreter, node: torch.fx.Node, source: Any, dim: int, index: int) -> Linear:
    value = it._linear(source, moved=True)
    return value.replace(_take(value.terms, index, it._trailing_axis(source, dim)))


def _concatenated(it: Interpreter, node: torch.fx.Node, sources: Sequence[Any], dim: int = 0) -> Linear:
    values = [it._linear(source, moved=True) for source in sources]
    if any(value.is_complex for value in values):
        raise NotARotation("concatenates complex values")
    axis = it._trailing_axis(node, dim)
    terms = np.concatenate([value.terms for value in values], axis=axis)
    return values[0].replace(terms, rounded=_common_rounding(values))


def _product(it: Interpreter, node: torch.fx.Node, first: Any, second: Any) -> Linear:
    a, b = it.evaluate(first), it.evaluate(second)
    if isinstance(a, Linear) == isinstance(b, Linear):
        raise NotARotation("multiplies two values computed from x, or none")
    value, table = (it._linear(first), b) if isinstance(a, Linear) else (it._linear(second), a)
    table_value = _value(table)
    if not isinstance(table_value, torch.Tensor):
        raise NotARotation("multiplies by a number, not a table")
    shape = value.shape
    if len(shape) != 1:
        raise NotARotation("multiplies a table into more than one trailing dim")
    lead = tuple(table_value.shape[:-1])
    width = _hint(table_value.shape[-1]) if table_value.dim() else 1
    if len(lead) > len(it.lead) or not all(_size_is(size, 1, full) for size, full in zip(reversed(lead), reversed(it.lead))):
        raise NotARotation(f"a table of shape {tuple(table_value.shape)} does not broadcast to x's leading dims {it.lead}")
    if width not in (1, shape[0]):
        raise NotARotation(f"a table's last dim {width} does not match {shape[0]}")
    index = list(range(shape[0])) if width == shape[0] else [0] * shape[0]
    if value.is_complex != table_value.is_complex():
        raise NotARotation("multiplies real by complex")
    if not value.is_complex:
        # The product has the promoted dtype (bf16 x times an fp32 table is fp32).
        terms = _array([_times(value.terms[p], (table, index[p], 0)) for p in range(shape[0])], shape)
        return value.replace(terms, dtype=_value(node).dtype)
    entries = []
    for p in range(shape[0]):
        real, imaginary = value.terms[p, 0], value.terms[p, 1]
        cos, sin = (table, index[p], 0), (table, index[p], 1)
        entries.append(_times(real, cos) + _times(imaginary, sin, -1))
        entries.append(_times(real, sin) + _times(imaginary, cos))
    return value.replace(_array(entries, (shape[0], 2)))


def _sum(sign: int) -> Any:
    def handler(it: Interpreter, node: torch.fx.Node, first: Any, second: Any, **kwargs: Any) -> Linear:
        if kwargs.get("alpha", 1) != 1:
            raise NotARotation("adds with alpha")
        a, b = it._linear(first), it._linear(second)
        if a.is_complex != b.is_complex:
            raise NotARotation("adds real and complex")
        return a.replace(_combine(a.terms, b.terms, sign), dtype=a.dtype if a.is_complex else _value(node).dtype)

    return handler


_EMPTY_TARGETS = {aten.empty.memory_format, aten.empty_like.default, aten.new_empty.default, aten.empty_strided.default}


def _scattered(
    it: Interpreter, node: torch.fx.Node, base: Any, source: Any, dim: int = 0, start: int | None = None,
    end: int | None = None, step: int = 1,
) -> Linear:
    value = it._linear(source, moved=True)
    base_value = it.evaluate(base)
    rounded = value.rounded
    if isinstance(base_value, Linear):
        base_value = it._linear(base, moved=True)
        rounded = _common_rounding([value, base_value])
        terms = base_value.terms.copy()
    elif isinstance(base, torch.fx.Node) and base.target in _EMPTY_TARGETS:
        terms = np.empty(it.trailing_shape(base), dtype=object)
    else:
        raise NotARotation("scatters into a tensor that is neither empty nor computed from x")
    axis = it._trailing_axis(node, dim)
    index = [slice(None)] * terms.ndim
    index[axis] = _python_slice(terms.shape[axis], start, end, step)
    if terms[tuple(index)].shape != value.terms.shape:
        raise NotARotation("scatters a value of another shape")
    terms[tuple(index)] = value.terms
    return value.replace(terms, rounded=rounded)


def _copied(it: Interpreter, node: torch.fx.Node, destination: Any, source: Any, non_blocking: bool = False) -> Linear:
    # Functional copy: the source's values in the destination's dtype.
    it.evaluate(destination)  # a view of the tensor scattered into: part of the chain
    if not same_sizes(_value(destination).shape, _value(source).shape):
        raise NotARotation("copies between shapes")
    return _converted(it, node, source, _value(destination).dtype)


def _as_complex(it: Interpreter, node: torch.fx.Node, source: Any) -> Linear:
    value = it._linear(source, moved=True)
    if value.is_complex or value.terms.shape[-1:] != (2,):
        raise NotARotation("views as complex a value whose last dim is not 2")
    return value.replace(value.terms, is_complex=True)


def _as_real(it: Interpreter, node: torch.fx.Node, source: Any) -> Linear:
    value = it._linear(source, moved=True)
    if not value.is_complex:
        raise NotARotation("views a real value as real")
    return value.replace(value.terms, is_complex=False, dtype=_value(node).dtype)


_HANDLERS: dict[Any, Any] = {
    aten.reshape.default: _reshaped,
    aten.view.default: _reshaped,
    aten._unsafe_view.default: _reshaped,
    aten.unsqueeze.default: _reshaped,
    aten.squeeze.dim: _reshaped,
    aten.squeeze.dims: _reshaped,
    aten.clone.default: _same,
    aten.alias.default: _same,
    _CONVERT: _converted,
    aten.neg.default: _negative,
    aten.unbind.int: _unbound,
    aten.split.Tensor: _split,
    aten.split_with_sizes.default: _split,
    operator.getitem: _item,
    aten.slice.Tensor: _sliced,
    aten.select.int: _selected,
    aten.cat.default: _concatenated,
    aten.mul.Tensor: _product,
    aten.add.Tensor: _sum(1),
    aten.sub.Tensor: _sum(-1),
    aten.slice_scatter.default: _scattered,
    aten.copy.default: _copied,
    aten.view_as_complex.default: _as_complex,
    aten.view_as_real.default: _as_real,
}
# Ops that split x's last dim into the members of pairs: a chain without one rotates nothing.
_PAIRING_TARGETS = {aten.unbind.int, aten.split.Tensor, aten.split_with_sizes.default, aten.slice.Tensor, aten.select.int, aten.view_as_complex.default, aten.slice_scatter.default}


# --- What a rotation chain is ---------------------------------------------------------------------


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

    @property
    def out_dtype(self) -> torch.dtype:
        """The dtype the chain's output has."""
        return _value(self.output).dtype


def _table(factors: list[Factor], first: list[int], second: list[int], what: str) -> Table:
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


def rotation_of(value: Linear, x: torch.fx.Node, output: torch.fx.Node, nodes: frozenset[torch.fx.Node]) -> Rotation:
    """The rotation ``value`` computes, or NotARotation saying why it is none."""
    head_dim = _hint(_value(x).shape[-1])
    if value.is_complex or value.terms.shape != (head_dim,):
        raise NotARotation(f"the output's trailing shape {value.shape} is not x's last dim ({head_dim},)")
    if value.rounded not in (None, _value(output).dtype):
        raise NotARotation(f"rounds to {value.rounded} but stores {_value(output).dtype}")
    entries = list(value.terms)
    if any(entry is None for entry in entries):
        raise NotARotation("leaves output elements unwritten")
    rotated = [column for column, entry in enumerate(entries) if entry != ((1, column, None),)]
    rotary_dim = len(rotated)
    if rotary_dim < 2 or rotated != list(range(rotary_dim)) or rotary_dim % 2:
        raise NotARotation("the rotated columns are not an even-sized block of the first columns of x")
    half = rotary_dim // 2
    partners, cos, sin = [], [], []
    for column in rotated:
        terms = sorted(entries[column], key=lambda term: term[1] != column)
        if len(terms) != 2 or terms[0][:2] != (1, column) or terms[1][1] == column or None in (terms[0][2], terms[1][2]):
            raise NotARotation(f"output column {column} is not x[{column}] * cos plus or minus its partner * sin")
        partners.append((terms[1][0], terms[1][1]))
        cos.append(terms[0][2])
        sin.append(terms[1][2])
    for interleaved in (True, False):
        first = [2 * i for i in range(half)] if interleaved else list(range(half))
        second = [a + 1 for a in first] if interleaved else [a + half for a in first]
        expected = {}
        for a, b in zip(first, second):
            expected[a], expected[b] = (-1, b), (1, a)
        if all(partners[column] == expected[column] for column in rotated):
            cos_table, sin_table = _table(cos, first, second, "cos"), _table(sin, first, second, "sin")
            spelling = "interleaved" if interleaved else "half-split"
            if _value(cos_table.node).is_complex():
                spelling = "complex"
            elif any(node.target is aten.slice_scatter.default for node in nodes):
                spelling += ", slice assignment"
            return Rotation(x, output, nodes, cos_table, sin_table, rotary_dim, interleaved, spelling)
    raise NotARotation("the pairs are neither (2i, 2i + 1) nor (i, i + R/2) with the rotation's signs")


def _inputs(node: torch.fx.Node) -> list[torch.fx.Node]:
    return node.all_input_nodes


def _cone(output: torch.fx.Node) -> list[torch.fx.Node]:
    # The nodes output is computed from, walking back through ops the interpreter knows.
    seen = {output: None}
    frontier = [output]
    while frontier and len(seen) < MAX_CHAIN_NODES:
        node = frontier.pop()
        if node.op != "call_function" or node.target not in _HANDLERS:
            continue
        for source in _inputs(node):
            if source not in seen:
                seen[source] = None
                frontier.append(source)
    return list(seen)


def _ancestors_within(output: torch.fx.Node, nodes: set[torch.fx.Node]) -> frozenset[torch.fx.Node]:
    # ``output`` and the nodes of ``nodes`` it is computed from.
    found, frontier = {output}, [output]
    while frontier:
        for source in _inputs(frontier.pop()):
            if source in nodes and source not in found:
                found.add(source)
                frontier.append(source)
    return frozenset(found)


def find_rotation(output: torch.fx.Node, order: dict[torch.fx.Node, int]) -> Rotation | None:
    """The rotation ending at ``output`` from the earliest x that makes one, or None."""
    value = _value(output)
    if not (_is_float_tensor(value) and value.dim() >= 2 and (_hint(value.shape[-1]) or 1) % 2 == 0):
        return None
    if output.op != "call_function" or output.target not in _HANDLERS or output.target is operator.getitem:
        return None
    cone = sorted(_cone(output), key=order.__getitem__)
    if not any(node.target in _PAIRING_TARGETS for node in cone if node.op == "call_function"):
        return None
    shape = tuple(value.shape)
    for x in cone:
        if x is output or not _is_float_tensor(_value(x)) or not same_sizes(_value(x).shape, shape):
            continue
        derived = {x}
        for node in cone:
            if node is not x and order[node] > order[x] and node.target in _HANDLERS and any(
                source in derived for source in _inputs(node)
            ):
                derived.add(node)
        if output not in derived:
            continue
        try:
            result = Interpreter(x, derived).evaluate(output)
            if not isinstance(result, Linear):
                continue
            return rotation_of(result, x, output, _ancestors_within(output, derived) - {x})
        except NotARotation:
            continue
        except Exception as error:  # noqa: BLE001  (a bug here must not fail the user's compile)
            logger.warning("rope: interpreting %s from %s failed (%r); left unfused, please report", output, x, error)
            continue
    return None


# --- q/k RMSNorm --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Norm:
    """An RMSNorm whose output a stream reads: its input, weight, eps and rounding points."""

    output: torch.fx.Node
    input: torch.fx.Node
    weight: torch.fx.Node | None
    eps: float | torch.fx.Node  # a graph value where the model adds a tensor eps (not absorbed)
    rounding: str
    nodes: frozenset[torch.fx.Node]
    form: str


def _norm_rounding(form: NormForm, precision: str) -> str:
    if precision == "fp32":
        return "none"
    return "after_weight" if form.half_rounding == "after_affine" else "before_and_after_weight"


@functools.cache
def _norm_patterns() -> list[tuple[PatternExpr, NormForm, str]]:
    patterns = []
    with FakeTensorMode():
        for form, precision in itertools.product((f for f in NORM_FORMS if f.norm == "rms"), ("fp32", "half")):
            params = ("x", "eps", *form.affine)

            def search(form: NormForm = form, precision: str = precision, **operands: Any) -> torch.Tensor:
                return normalized(form=form, precision=precision, bias=None, weight=operands.pop("weight", None), **operands)

            examples = [
                EPS_SENTINEL if name == "eps" else torch.empty((2, 8, 16) if name == "x" else (16,), dtype=TRACE_DTYPE)
                for name in params
            ]
            pattern = generalize(traced_pattern(with_signature(search, params), examples, {"eps": EPS_SENTINEL}))
            patterns.append((pattern, form, precision))
    return patterns


def match_norm(node: torch.fx.Node) -> Norm | None:
    """The RMSNorm over the last dim whose output is ``node``, if it is one."""
    if node.op != "call_function":
        return None
    for pattern, form, precision in _norm_patterns():
        match = pattern.match(node)
        if not is_match(match):
            continue
        assert isinstance(match, Match)
        source = match.kwargs["x"]
        rounding = _norm_rounding(form, precision)
        if rounding != "none" and _value(node).dtype != _value(source).dtype:
            continue
        return Norm(
            node, source, match.kwargs.get("weight"), match.kwargs["eps"], rounding,
            frozenset(match.nodes), f"{form.name}/{precision}",
        )
    return None


# --- Streams and groups ------------------------------------------------------------------------


@dataclasses.dataclass
class Stream:
    """One stream of a fused call: the graph value it replaces and how it is computed."""

    value: torch.fx.Node  # the unfused graph's value of these tokens (before the joint output)
    rotation: Rotation | None
    # For a stream cut from the input of a rotation over a joint sequence: the table rows it reads.
    table_rows: tuple[int, int] | None = None
    norm: Norm | None = None
    # How the stream's input is cut from the norm's input: ("slice", dim, start, end) or
    # ("split_heads", shape), or None for the norm input itself.
    view: tuple[Any, ...] | None = None
    # Clones between the stream's input and its norm, replaced along with the norm.
    skipped: set[torch.fx.Node] = dataclasses.field(default_factory=set)

    @property
    def input(self) -> torch.fx.Node:
        """What the stream reads: the rotation's input, or the plain value (a cut of a joint input)."""
        return self.rotation.x if self.rotation is not None and self.table_rows is None else self.value


@dataclasses.dataclass
class Group:
    """Streams joined along ``cat_dim`` into the value of ``output``."""

    output: torch.fx.Node
    streams: list[Stream]
    cat_dim: int
    nodes: set[torch.fx.Node]  # graph nodes the fused call replaces (besides norms)
    # Why norms the streams read were not absorbed (None: absorbed, or no norm there).
    norm_miss: str | None = None

    @property
    def rotations(self) -> list[Rotation]:
        """The distinct rotations of the streams."""
        return list({id(s.rotation): s.rotation for s in self.streams if s.rotation is not None}.values())

    @property
    def normed(self) -> bool:
        """Whether the call absorbs the streams' norms."""
        return self.streams[0].norm is not None


_SHAPE_QUERIES = {aten.sym_size.int, aten.sym_stride.int, aten.sym_numel.default, aten.sym_storage_offset.default}


def data_users(node: torch.fx.Node) -> set[torch.fx.Node]:
    """The users of ``node`` that read its values (not only its sizes, as dynamic shapes do)."""
    return {user for user in node.users if user.target not in _SHAPE_QUERIES}


def _lead_cat(node: Any) -> int | None:
    # The dim of a cat along a leading dim (not the last), or None.
    if not (isinstance(node, torch.fx.Node) and node.op == "call_function" and node.target is aten.cat.default):
        return None
    rank = _value(node).dim()
    dim = (node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)) % rank
    return dim if dim < rank - 1 else None


def _groups(rotations: list[Rotation]) -> list[Group]:
    by_output = {rotation.output: rotation for rotation in rotations}
    groups, grouped = [], set()
    # A cat of rotated streams (and plain ones) after the rotations.
    cats = {user for rotation in rotations for user in rotation.output.users if _lead_cat(user) is not None}
    for cat in sorted(cats, key=lambda node: node.name):
        members = [by_output.get(source) for source in cat.args[0]]
        if any(m is not None and (data_users(m.output) != {cat} or m in grouped) for m in members):
            continue
        rotated = [m for m in members if m is not None]
        if len({(m.rotary_dim, m.interleaved) for m in rotated}) != 1:
            continue
        if any(_value(source).dtype != _value(cat).dtype for source in cat.args[0]):
            continue
        streams = [Stream(source, by_output.get(source)) for source in cat.args[0]]
        nodes = {cat}.union(*(m.nodes for m in rotated))
        groups.append(Group(cat, streams, _lead_cat(cat), nodes))
        grouped.update(rotated)
    for rotation in rotations:
        if rotation in grouped:
            continue
        cat_dim = _lead_cat(rotation.x)
        lengths = [_value(source).shape[cat_dim] for source in rotation.x.args[0]] if cat_dim is not None else []
        # Streams cut from a joint sequence read table rows at static offsets.
        if lengths and all(isinstance(length, int) for length in lengths) and data_users(rotation.x) <= rotation.nodes:
            # A rotation over a joint sequence: each stream reads its rows of the tables.
            streams, offset = [], 0
            for source, length in zip(rotation.x.args[0], lengths):
                streams.append(Stream(source, rotation, table_rows=(offset, length)))
                offset += length
            groups.append(Group(rotation.output, streams, cat_dim, set(rotation.nodes) | {rotation.x}))
        else:
            groups.append(Group(rotation.output, [Stream(rotation.x, rotation)], 0, set(rotation.nodes)))
    return groups


def _stream_norm(stream: Stream) -> tuple[Norm, tuple[Any, ...] | None] | None:
    # The norm a stream's input is (or is cut from), and the cut. A clone after the norm (F.rms_norm
    # of a transposed view leaves one) is looked through: the fused call replaces it too.
    value = stream.input
    while value.op == "call_function" and value.target is aten.clone.default and isinstance(value.args[0], torch.fx.Node):
        stream.skipped.add(value)
        value = value.args[0]
    norm = match_norm(value)
    if norm is not None:
        return norm, None
    if value.op != "call_function":
        return None
    source = value.args[0] if value.args else None
    if not isinstance(source, torch.fx.Node):
        return None
    if value.target is aten.slice.Tensor:
        rank = _value(value).dim()
        dim = (value.args[1] if len(value.args) > 1 else 0) % rank
        start, end, step = (list(value.args[2:5]) + [None, None, 1][len(value.args[2:5]):])[:3]
        bounds_known = all(bound is None or isinstance(bound, int) for bound in (start, end))
        norm = match_norm(source) if step == 1 and bounds_known and dim < rank - 1 else None
        if norm is not None:
            return norm, ("slice", dim, start, end)
    if value.target is aten.reshape.default:
        shape, source_shape = tuple(_value(value).shape), tuple(_value(source).shape)
        if len(shape) >= 3 and same_sizes(source_shape, shape[:-2] + (shape[-2] * shape[-1],)):
            norm = match_norm(source)
            if norm is not None:
                return norm, ("split_heads", list(shape))
    return None


def _absorb_norms(group: Group) -> None:
    # Every stream's norm, if all streams have one of the same kind and every use of each norm's
    # output is inside the group (the fused call then replaces the norms too).
    found = [_stream_norm(stream) for stream in group.streams]
    if all(item is None for item in found):
        return
    if any(item is None for item in found):
        group.norm_miss = "some streams are normalized and some are not"
        return
    kinds = {("heads" if view is not None and view[0] == "split_heads" else "head", norm.rounding) for norm, view in found}
    if len(kinds) != 1:
        group.norm_miss = "the streams' norms differ in kind or rounding"
        return
    tensor_eps = next((norm.eps for norm, _ in found if isinstance(norm.eps, torch.fx.Node)), None)
    if tensor_eps is not None:
        group.norm_miss = f"the norm's eps is a tensor ({describe_value(tensor_eps)}), not a number"
        return
    inside = group.nodes.union(*({stream.input, stream.value} | stream.skipped for stream in group.streams))
    for norm, _ in found:
        if not data_users(norm.output) <= inside:
            group.norm_miss = f"the norm's output, {describe_value(norm.output)}, is also used outside the rotation"
            return
    for stream, (norm, view) in zip(group.streams, found):
        stream.norm, stream.view = norm, view


def _norm_kind(group: Group) -> str:
    if not group.normed:
        return "none"
    view = group.streams[0].view
    return "heads" if view is not None and view[0] == "split_heads" else "head"


def describe(group: Group) -> str:
    """The report's name for a fused group."""
    rotation = group.rotations[0]
    parts = [f"rope[{rotation.spelling}{'' if rotation.rotary_dim == _value(rotation.x).shape[-1] else ' partial'}]"]
    if group.normed:
        parts.insert(0, f"{group.streams[0].norm.form} over {'all heads' if _norm_kind(group) == 'heads' else 'each head'}")
    text = " -> ".join(parts)
    if len(group.streams) > 1:
        text += f" x{len(group.streams)} streams"
        if any(stream.rotation is None for stream in group.streams):
            text += " (some unrotated)"
    if group.norm_miss:
        text += f" (norm not absorbed: {group.norm_miss})"
    return text


# --- Checks ----------------------------------------------------------------------------------------


def _rotation_tables(group: Group) -> Iterator[torch.fx.Node]:
    for rotation in group.rotations:
        yield rotation.cos.node
        yield rotation.sin.node


def _check(group: Group, config: FusionConfig) -> str | None:
    # Why the group must stay unfused, or None.
    output = _value(group.output)
    if output.device.type not in config.devices:
        return f"device {output.device.type!r} is not in config.devices {config.devices}"
    for node in (stream.value for stream in group.streams):
        if _value(node).device != output.device:
            return "the streams are on different devices"
    for rotation in group.rotations:
        outside = [node for node in rotation.nodes - {rotation.output} if not data_users(node) <= group.nodes]
        if outside:
            return outside_use_reason(outside, group.nodes) or "an intermediate of the rotation is also used outside it"
    call = _meta_call(group)
    if isinstance(call, str):
        return call
    if output.device.type == "cuda":
        reason = rope_kernels.unsupported_reason(call)
        if reason is not None:
            return f"the kernel does not take this chain: {reason}"
        if config.size_rule:
            return _cuda_size_rule(group, call)
    return None


def _cuda_size_rule(group: Group, call: rope_kernels.Rope) -> str | None:
    if any(_value(table).is_complex() for table in _rotation_tables(group)):
        return None
    if not group.normed:
        why = f" ({group.norm_miss})" if group.norm_miss else ""
        return f"a rotation with real tables and no norm absorbed{why}: Inductor's own kernel was measured faster on CUDA"
    elements = sum(stream.x.numel() for stream in call.streams)
    if elements < MIN_CUDA_ELEMENTS:
        return f"the streams have {elements} elements, below the measured CUDA break-even {MIN_CUDA_ELEMENTS}"
    return None


def _meta_call(group: Group) -> rope_kernels.Rope | str:
    # The call on meta tensors of the compile-time sizes: checks the rewrite's arguments.
    with torch._subclasses.fake_tensor.unset_fake_temporarily():
        try:
            return rope_kernels.make_call(*_call_args(group, _meta_tensor, _meta_op))
        except ValueError as error:
            return f"the fused op would not take this chain: {error}"


def _meta_tensor(node: torch.fx.Node | None) -> torch.Tensor | None:
    value = None if node is None else hinted(_value(node))
    return None if value is None else torch.empty(value.shape, dtype=value.dtype, device="meta")


def _meta_op(target: Any, *args: Any) -> torch.Tensor:
    return target(*args)


# --- The replacement -----------------------------------------------------------------------------


def _call_args(group: Group, operand: Any, call: Any) -> tuple[Any, ...]:
    # The op's arguments, built by ``operand(node)`` (a value for a graph node) and
    # ``call(target, *args)`` (a view on such values): meta tensors to check, graph nodes to emit.
    xs, weights, eps, cos, sin, cos_maps, sin_maps = [], [], [], [], [], [], []
    rank = _value(group.output).dim()
    for stream in group.streams:
        norm = stream.norm
        if norm is None:
            x = operand(stream.input)
        else:
            x = operand(norm.input)
            if stream.view is not None and stream.view[0] == "slice":
                _, dim, start, end = stream.view
                x = call(aten.slice.Tensor, x, dim, start, end)
            elif stream.view is not None:
                x = call(aten.reshape.default, x, stream.view[1])
        xs.append(x)
        weights.append(operand(norm.weight) if norm is not None and norm.weight is not None else None)
        eps.append(float(norm.eps) if norm is not None else 0.0)
        rotation = stream.rotation
        if rotation is None:
            cos.append(None)
            sin.append(None)
            cos_maps += [0, 0, 0, 0]
            sin_maps += [0, 0, 0, 0]
            continue
        for tables, maps, table in ((cos, cos_maps, rotation.cos), (sin, sin_maps, rotation.sin)):
            value = operand(table.node)
            if stream.table_rows is not None:
                # The table's dim along the joint sequence (tables align to x from the right).
                dim = group.cat_dim - (rank - _value(table.node).dim())
                if dim >= 0 and _value(table.node).shape[dim] != 1:
                    start, length = stream.table_rows
                    value = call(aten.slice.Tensor, value, dim, start, start + length)
            tables.append(value)
            maps += list(table.map)
    first = group.rotations[0]
    return (
        xs, weights, eps, cos, sin, cos_maps, sin_maps, _norm_kind(group),
        group.streams[0].norm.rounding if group.normed else "none",
        first.rotary_dim, first.interleaved, group.cat_dim, _value(group.output).dtype,
    )


def _insert(graph: torch.fx.Graph, target: Any, *args: Any) -> torch.fx.Node:
    # A call of ``target`` at the graph's insertion point, with its fake value.
    node = graph.call_function(target, args)
    fake_args = torch.utils._pytree.tree_map(lambda arg: arg.meta["val"] if isinstance(arg, torch.fx.Node) else arg, args)
    mode = torch._guards.detect_fake_mode([arg for arg in tree_flatten(fake_args)[0] if isinstance(arg, torch.Tensor)])
    with mode or FakeTensorMode():
        node.meta["val"] = target(*fake_args)
    return node


def _specialize(group: Group) -> None:
    # The call's rotary_dim and table maps hold for this head dim and these table widths only:
    # a symbolic one (torch.compile(dynamic=True)) is guarded to its value.
    for rotation in group.rotations:
        for node in (rotation.x, rotation.cos.node, rotation.sin.node):
            size = _value(node).shape[-1]
            if not isinstance(size, int):
                guard_int(size)


def _replace(graph: torch.fx.Graph, group: Group) -> torch.fx.Node:
    output = group.output
    with graph.inserting_before(output):
        args = _call_args(group, lambda node: node, lambda target, *a: _insert(graph, target, *a))
        fused = _insert(graph, ROPE_OP, *args)
    fused.meta["stack_trace"] = output.meta.get("stack_trace")
    output.replace_all_uses_with(fused)
    return fused


def rewrite(graph: torch.fx.Graph, config: FusionConfig, report: GraphReport) -> int:
    """Find every rotation in ``graph``, group and extend it, and replace what may be fused."""
    order = {node: index for index, node in enumerate(graph.nodes)}
    rotations, covered = [], set()
    for node in reversed(list(graph.nodes)):
        if node in covered:
            continue
        rotation = find_rotation(node, order)
        if rotation is not None:
            rotations.append(rotation)
            covered |= rotation.nodes
    fused = 0
    for group in _groups(rotations):
        _absorb_norms(group)
        reason = _check(group, config)
        if reason is not None:
            report.add_near_miss(FAMILY_NAME, describe(group), group.output, reason)
            continue
        report.add_fusion(FAMILY_NAME, describe(group), group.output)
        _specialize(group)
        _replace(graph, group)
        fused += 1
    if fused:
        graph.eliminate_dead_code()
    _explain_complex_leftovers(graph, report)
    return fused


def _explain_complex_leftovers(graph: torch.fx.Graph, report: GraphReport) -> None:
    # Inductor runs complex math as eager kernels: a complex multiply left behind is worth a line.
    for node in graph.find_nodes(op="call_function", target=aten.view_as_complex.default):
        report.add_near_miss(
            FAMILY_NAME, None, node, "a complex multiply left in the graph is not a rotation this family recognizes"
        )


FAMILY_NAME = "rope"

register_family(
    RewriteFamily(
        name=FAMILY_NAME,
        description="rotary embedding in any spelling, with the q/k RMSNorm before it and the cat of streams around it",
        rewrite=rewrite,
    )
)
