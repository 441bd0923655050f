"""The column interpreter: what each output column of a chain computes from the columns of x.

``Interpreter`` evaluates the nodes between a chain's input ``x`` and its output through views,
casts, negation, sums, products with tables and complex multiplication. Every value computed from
x is a ``LinearValue``: per element of its trailing dims (those x's last dim became), the terms
``±x[column] * table[k]`` summing to it. Any other op ends the interpretation with
``NotARotation`` saying which op it was.
"""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch.fx.experimental.symbolic_shapes import guard_int

from fusion_passes.rope.nodes import compile_time_size, same_sizes, size_is, value_of

aten = torch.ops.aten

# A term is (sign, column of x, factor); a factor is (table node, index in its last dim, part:
# 0 real or real part, 1 imaginary part) or None. An entry of a value is a tuple of terms.
Factor = tuple[torch.fx.Node, int, int]
Term = tuple[int, int, "Factor | None"]
Entry = tuple[Term, ...]
MAX_TERMS = 4


class NotARotation(Exception):
    """The interpreted chain is not (exactly) a rotation; the message says why."""


@dataclasses.dataclass(frozen=True)
class LinearValue:
    """A value computed from x: per element of its trailing dims (those x's last dim became), the
    terms summing to it. A complex value has one more axis (real, imaginary) than its shape."""

    terms: np.ndarray
    is_complex: bool
    dtype: torch.dtype
    # The narrower dtype the chain rounded this value to; after that only data movement may
    # follow (a rounded element scattered into the output is rounded once, as at the store).
    rounded: torch.dtype | None = None

    def replace(self, terms: np.ndarray, **changes: Any) -> LinearValue:
        """This value with other terms (and other fields)."""
        return dataclasses.replace(self, terms=terms, **changes)

    @property
    def shape(self) -> tuple[int, ...]:
        """The trailing dims as the tensor has them."""
        return self.terms.shape[:-1] if self.is_complex else self.terms.shape


# --- Arrays of entries -------------------------------------------------------------------------


def _object_array(entries: Sequence[Any], shape: tuple[int, ...]) -> np.ndarray:
    # An array of ``shape`` holding ``entries`` (tuples stay elements, not a further axis).
    array = np.empty(len(entries), dtype=object)
    for index, entry in enumerate(entries):
        array[index] = entry
    return array.reshape(shape)


def _take_as_array(array: np.ndarray, index: Any, axis: int) -> np.ndarray:
    # np.take, but a single element stays a 0-d array.
    taken = np.take(array, index, axis=axis)
    if isinstance(taken, np.ndarray):
        return taken
    scalar = np.empty((), dtype=object)
    scalar[()] = taken
    return scalar


def _map_entries(array: np.ndarray, fn: Callable[[Entry], Entry]) -> np.ndarray:
    return _object_array([fn(entry) for entry in array.reshape(-1)], array.shape)


def _added_terms(first: np.ndarray, second: np.ndarray, sign: int) -> np.ndarray:
    # Elementwise ``first + sign * second``.
    if first.shape != second.shape:
        raise NotARotation(f"adds values of trailing shapes {first.shape} and {second.shape}")

    def add(a: Entry, b: Entry) -> Entry:
        if a is None or b is None:
            raise NotARotation("reads an element no scatter wrote")
        terms = a + tuple((s * sign, column, factor) for s, column, factor in b)
        if len(terms) > MAX_TERMS:
            raise NotARotation("an element sums more than four terms")
        return terms

    return _object_array([add(a, b) for a, b in zip(first.reshape(-1), second.reshape(-1))], first.shape)


def _negated(entry: Entry) -> Entry:
    return tuple((-sign, column, factor) for sign, column, factor in entry)


def _times_table(entry: Entry, factor: Factor, sign: int = 1) -> Entry:
    if entry is None:
        raise NotARotation("reads an element no scatter wrote")
    if any(existing is not None for _, _, existing in entry):
        raise NotARotation("multiplies x by more than one table")
    return tuple((sign * s, column, factor) for s, column, _ in entry)


def _resolved_slice(size: int, start: Any, end: Any, step: Any) -> slice:
    # The slice ``start:end:step`` of a dim of ``size``, with Python's bounds rules applied. A bound
    # that is a symbolic size (``x.shape[-1] // 2`` in a dynamic graph) is specialized to its value:
    # the fused op's head dim is a compile-time constant anyway.
    start, end, step = map(_static_bound, (start, end, step))
    return slice(*slice(start, end, step).indices(size))


def _static_bound(bound: Any) -> Any:
    # A slice bound as an int: a graph value (a computed size) read from its fake value, a symbolic
    # size guarded to its value; None and ints as they are.
    if isinstance(bound, torch.fx.Node):
        bound = bound.meta.get("val")
    return guard_int(bound) if isinstance(bound, torch.SymInt) else bound


# --- The interpreter ---------------------------------------------------------------------------


class Interpreter:
    """Evaluates the nodes between ``x`` and an output as ``LinearValue``s (others are leaves)."""

    def __init__(self, x: torch.fx.Node, derived: set[torch.fx.Node]) -> None:
        self.x = x
        self.leading_dims = tuple(value_of(x).shape[:-1])
        # The nodes computed from x that the chain may contain; any other node is a leaf (a table).
        self.derived = derived
        self.values: dict[torch.fx.Node, Any] = {}

    def evaluate(self, node: Any) -> Any:
        """The value of ``node``: a LinearValue (or tuple of them) if computed from x, else the node."""
        if not isinstance(node, torch.fx.Node) or node not in self.derived:
            return node
        if node not in self.values:
            self.values[node] = self._evaluate(node)
        return self.values[node]

    def linear(self, node: Any, moved: bool = False) -> LinearValue:
        """The LinearValue of ``node``; ``moved``: for an op that only moves or negates elements,
        which a rounded value may still pass through."""
        value = self.evaluate(node)
        if not isinstance(value, LinearValue):
            raise NotARotation(f"{getattr(node, 'name', node)} is not computed from x alone")
        if value.rounded is not None and not moved:
            raise NotARotation("rounds to a narrower dtype before its last arithmetic step")
        return value

    def trailing_axis(self, node: torch.fx.Node, dim: int) -> int:
        """The axis of the trailing dims that ``node``'s dim ``dim`` is."""
        rank = value_of(node).dim()
        dim = dim % rank if rank else dim
        if dim < len(self.leading_dims):
            raise NotARotation(f"{node.target} works on a leading dim {dim}")
        return dim - len(self.leading_dims)

    def trailing_shape(self, node: torch.fx.Node) -> tuple[int, ...]:
        """The trailing dims of ``node``'s tensor: its shape after x's leading dims, which it keeps."""
        shape = tuple(value_of(node).shape)
        trailing = tuple(compile_time_size(size) for size in shape[len(self.leading_dims):])
        if not same_sizes(shape[: len(self.leading_dims)], self.leading_dims) or None in trailing:
            raise NotARotation(f"{node.name} changes the leading dims {self.leading_dims} to {shape}")
        return trailing

    def _evaluate(self, node: torch.fx.Node) -> Any:
        if node is self.x:
            value = value_of(node)
            head_dim = compile_time_size(value.shape[-1])
            entries = [((1, column, None),) for column in range(head_dim)]
            return LinearValue(_object_array(entries, (head_dim,)), is_complex=False, dtype=value.dtype)
        handler = HANDLERS.get(node.target)
        if handler is None:
            raise NotARotation(f"{getattr(node.target, '__name__', node.target)} is not a view, cast, sum or product")
        return handler(self, node, *node.args, **node.kwargs)


# --- Handlers: one per op the interpreter follows -------------------------------------------------


_PRECISION_RANK = {torch.float16: 1, torch.bfloat16: 1, torch.float32: 2, torch.float64: 3}


def _reshaped(interpreter: Interpreter, node: torch.fx.Node, source: Any, *_: Any, **__: Any) -> LinearValue:
    value = interpreter.linear(source, moved=True)
    shape = interpreter.trailing_shape(node)
    if value.is_complex != value_of(node).is_complex():
        raise NotARotation("a view changes between real and complex")
    terms_shape = shape + ((2,) if value.is_complex else ())
    if int(np.prod(terms_shape)) != value.terms.size:
        raise NotARotation(f"{node.name} moves elements across the leading dims")
    return value.replace(value.terms.reshape(terms_shape))


def _unchanged(interpreter: Interpreter, node: torch.fx.Node, source: Any, *_: Any, **__: Any) -> LinearValue:
    return interpreter.linear(source, moved=True)


def _converted(interpreter: Interpreter, node: torch.fx.Node, source: Any, dtype: torch.dtype, **_: Any) -> LinearValue:
    value = interpreter.linear(source, moved=True)
    if value.is_complex or dtype not in _PRECISION_RANK:
        raise NotARotation(f"casts to {dtype}")
    narrower = _PRECISION_RANK[dtype] < _PRECISION_RANK.get(value.dtype, 0) or (
        _PRECISION_RANK[dtype] == 1 and dtype != value.dtype
    )
    if narrower and value.rounded is not None:
        raise NotARotation(f"rounds twice ({value.rounded}, then {dtype})")
    return value.replace(value.terms, dtype=dtype, rounded=dtype if narrower else value.rounded)


def _common_rounding(values: Sequence[LinearValue]) -> torch.dtype | None:
    # The rounding of values stored side by side: one dtype, or none.
    roundings = {value.rounded for value in values} - {None}
    if len(roundings) > 1:
        raise NotARotation(f"stores values rounded to different dtypes {sorted(map(str, roundings))}")
    return roundings.pop() if roundings else None


def _negative(interpreter: Interpreter, node: torch.fx.Node, source: Any) -> LinearValue:
    value = interpreter.linear(source, moved=True)
    return value.replace(_map_entries(value.terms, _negated))


def _unbound(interpreter: Interpreter, node: torch.fx.Node, source: Any, dim: int = 0) -> tuple[LinearValue, ...]:
    value = interpreter.linear(source, moved=True)
    axis = interpreter.trailing_axis(source, dim)
    return tuple(value.replace(_take_as_array(value.terms, index, axis)) for index in range(value.terms.shape[axis]))


def _split(
    interpreter: Interpreter, node: torch.fx.Node, source: Any, sizes: int | Sequence[int], dim: int = 0
) -> tuple[LinearValue, ...]:
    value = interpreter.linear(source, moved=True)
    axis = interpreter.trailing_axis(source, dim)
    length = value.terms.shape[axis]
    if isinstance(sizes, int):
        sizes = [min(sizes, length - start) for start in range(0, length, sizes)]
    bounds = np.cumsum([0, *sizes])
    return tuple(
        value.replace(_take_as_array(value.terms, range(start, end), axis)) for start, end in zip(bounds[:-1], bounds[1:])
    )


def _tuple_item(interpreter: Interpreter, node: torch.fx.Node, source: Any, index: int) -> LinearValue:
    values = interpreter.evaluate(source)
    if not isinstance(values, tuple):
        raise NotARotation("takes an item of a value that is not a tuple")
    return values[index]


def _sliced(
    interpreter: Interpreter, node: torch.fx.Node, source: Any, dim: int = 0, start: int | None = None,
    end: int | None = None, step: int = 1,
) -> LinearValue:
    value = interpreter.linear(source, moved=True)
    axis = interpreter.trailing_axis(source, dim)
    index = [slice(None)] * value.terms.ndim
    index[axis] = _resolved_slice(value.terms.shape[axis], start, end, step)
    return value.replace(value.terms[tuple(index)])


def _selected(interpreter: Interpreter, node: torch.fx.Node, source: Any, dim: int, index: int) -> LinearValue:
    value = interpreter.linear(source, moved=True)
    return value.replace(_take_as_array(value.terms, index, interpreter.trailing_axis(source, dim)))


def _concatenated(interpreter: Interpreter, node: torch.fx.Node, sources: Sequence[Any], dim: int = 0) -> LinearValue:
    values = [interpreter.linear(source, moved=True) for source in sources]
    if any(value.is_complex for value in values):
        raise NotARotation("concatenates complex values")
    axis = interpreter.trailing_axis(node, dim)
    terms = np.concatenate([value.terms for value in values], axis=axis)
    return values[0].replace(terms, rounded=_common_rounding(values))


def _table_columns(interpreter: Interpreter, table: torch.fx.Node, head_dim: int) -> list[int]:
    # The element of the table's last dim each of the ``head_dim`` columns is multiplied by.
    table_value = value_of(table)
    leading = tuple(table_value.shape[:-1])
    width = compile_time_size(table_value.shape[-1]) if table_value.dim() else 1
    broadcasts = len(leading) <= len(interpreter.leading_dims) and all(
        size_is(size, 1, full) for size, full in zip(reversed(leading), reversed(interpreter.leading_dims))
    )
    if not broadcasts:
        raise NotARotation(
            f"a table of shape {tuple(table_value.shape)} does not broadcast to x's leading dims {interpreter.leading_dims}"
        )
    if width not in (1, head_dim):
        raise NotARotation(f"a table's last dim {width} does not match {head_dim}")
    return list(range(head_dim)) if width == head_dim else [0] * head_dim


def _product(interpreter: Interpreter, node: torch.fx.Node, first: Any, second: Any) -> LinearValue:
    a, b = interpreter.evaluate(first), interpreter.evaluate(second)
    if isinstance(a, LinearValue) == isinstance(b, LinearValue):
        raise NotARotation("multiplies two values computed from x, or none")
    value, table = (interpreter.linear(first), b) if isinstance(a, LinearValue) else (interpreter.linear(second), a)
    if not isinstance(value_of(table), torch.Tensor):
        raise NotARotation("multiplies by a number, not a table")
    if len(value.shape) != 1:
        raise NotARotation("multiplies a table into more than one trailing dim")
    columns = value.shape[0]
    index = _table_columns(interpreter, table, columns)
    if value.is_complex != value_of(table).is_complex():
        raise NotARotation("multiplies real by complex")
    if not value.is_complex:
        # The product has the promoted dtype (bf16 x times an fp32 table is fp32).
        terms = _object_array([_times_table(value.terms[p], (table, index[p], 0)) for p in range(columns)], (columns,))
        return value.replace(terms, dtype=value_of(node).dtype)
    entries = []
    for p in range(columns):
        real, imaginary = value.terms[p, 0], value.terms[p, 1]
        cos, sin = (table, index[p], 0), (table, index[p], 1)
        entries.append(_times_table(real, cos) + _times_table(imaginary, sin, -1))
        entries.append(_times_table(real, sin) + _times_table(imaginary, cos))
    return value.replace(_object_array(entries, (columns, 2)))


def _sum_handler(sign: int) -> Callable[..., LinearValue]:
    def handler(interpreter: Interpreter, node: torch.fx.Node, first: Any, second: Any, **kwargs: Any) -> LinearValue:
        if kwargs.get("alpha", 1) != 1:
            raise NotARotation("adds with alpha")
        a, b = interpreter.linear(first), interpreter.linear(second)
        if a.is_complex != b.is_complex:
            raise NotARotation("adds real and complex")
        return a.replace(_added_terms(a.terms, b.terms, sign), dtype=a.dtype if a.is_complex else value_of(node).dtype)

    return handler


_EMPTY_TARGETS = {aten.empty.memory_format, aten.empty_like.default, aten.new_empty.default, aten.empty_strided.default}


def _is_empty(node: Any) -> bool:
    # A tensor none of whose elements is written yet: an empty one, or a permutation of one
    # (``empty_like`` of a transposed x is ``empty`` then ``permute``).
    while isinstance(node, torch.fx.Node) and node.target is aten.permute.default:
        node = node.args[0]
    return isinstance(node, torch.fx.Node) and node.target in _EMPTY_TARGETS


def _scattered(
    interpreter: Interpreter, node: torch.fx.Node, base: Any, source: Any, dim: int = 0, start: int | None = None,
    end: int | None = None, step: int = 1,
) -> LinearValue:
    value = interpreter.linear(source, moved=True)
    base_value = interpreter.evaluate(base)
    rounded = value.rounded
    if isinstance(base_value, LinearValue):
        base_value = interpreter.linear(base, moved=True)
        rounded = _common_rounding([value, base_value])
        terms = base_value.terms.copy()
    elif _is_empty(base):
        terms = np.empty(interpreter.trailing_shape(base), dtype=object)
    else:
        raise NotARotation("scatters into a tensor that is neither empty nor computed from x")
    axis = interpreter.trailing_axis(node, dim)
    index = [slice(None)] * terms.ndim
    index[axis] = _resolved_slice(terms.shape[axis], start, end, step)
    if terms[tuple(index)].shape != value.terms.shape:
        raise NotARotation("scatters a value of another shape")
    terms[tuple(index)] = value.terms
    return value.replace(terms, rounded=rounded)


def _copied(
    interpreter: Interpreter, node: torch.fx.Node, destination: Any, source: Any, non_blocking: bool = False
) -> LinearValue:
    # Functional copy: the source's values in the destination's dtype.
    interpreter.evaluate(destination)  # a view of the tensor scattered into: part of the chain
    if not same_sizes(value_of(destination).shape, value_of(source).shape):
        raise NotARotation("copies between shapes")
    return _converted(interpreter, node, source, value_of(destination).dtype)


def _as_complex(interpreter: Interpreter, node: torch.fx.Node, source: Any) -> LinearValue:
    value = interpreter.linear(source, moved=True)
    if value.is_complex or value.terms.shape[-1:] != (2,):
        raise NotARotation("views as complex a value whose last dim is not 2")
    return value.replace(value.terms, is_complex=True)


def _as_real(interpreter: Interpreter, node: torch.fx.Node, source: Any) -> LinearValue:
    value = interpreter.linear(source, moved=True)
    if not value.is_complex:
        raise NotARotation("views a real value as real")
    return value.replace(value.terms, is_complex=False, dtype=value_of(node).dtype)


HANDLERS: dict[Any, Callable[..., Any]] = {
    aten.reshape.default: _reshaped,
    aten.view.default: _reshaped,
    aten._unsafe_view.default: _reshaped,
    aten.unsqueeze.default: _reshaped,
    aten.squeeze.dim: _reshaped,
    aten.squeeze.dims: _reshaped,
    aten.clone.default: _unchanged,
    aten.alias.default: _unchanged,
    torch.ops.prims.convert_element_type.default: _converted,
    aten.neg.default: _negative,
    aten.unbind.int: _unbound,
    aten.split.Tensor: _split,
    aten.split_with_sizes.default: _split,
    operator.getitem: _tuple_item,
    aten.slice.Tensor: _sliced,
    aten.select.int: _selected,
    aten.cat.default: _concatenated,
    aten.mul.Tensor: _product,
    aten.add.Tensor: _sum_handler(1),
    aten.sub.Tensor: _sum_handler(-1),
    aten.slice_scatter.default: _scattered,
    aten.copy.default: _copied,
    aten.view_as_complex.default: _as_complex,
    aten.view_as_real.default: _as_real,
}
# Ops that split x's last dim into the members of pairs: a chain without one rotates nothing.
PAIRING_TARGETS = {
    aten.unbind.int, aten.split.Tensor, aten.split_with_sizes.default, aten.slice.Tensor, aten.select.int,
    aten.view_as_complex.default, aten.slice_scatter.default,
}
