"""The rope family's stages: its candidates are groups of rotations, each one fused call.

Candidates: every rotation ``recognize`` finds, grouped by ``streams`` with the norms they read
absorbed. Legality: the streams on one device, the rotations' intermediates used only inside the
group, arguments the fused op (and on CUDA its kernel) takes. Profitability: ``profitability``.
Replace: one ``fusion_passes::rope`` call writing the group's joint output.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch.fx.experimental.symbolic_shapes import guard_int

from fusion_passes.compat import FakeTensorMode, detect_fake_mode, pytree, unset_fake_temporarily
from fusion_passes.family import FusionFamily, PassRun, internal_error
from fusion_passes.kernels import rope as rope_kernels
from fusion_passes.patterns import hinted
from fusion_passes.report import outside_use_reason
from fusion_passes.rope.nodes import data_users, value_of
from fusion_passes.rope.profitability import cuda_size_rule
from fusion_passes.rope.recognize import Table, find_rotation
from fusion_passes.rope.streams import Group, Stream, absorb_norms, describe, group_rotations

aten = torch.ops.aten
ROPE_OP = torch.ops.fusion_passes.rope.default
FAMILY_NAME = "rope"

# The op's arguments are built twice: as meta tensors, to check that the op takes them, and as
# graph nodes, to emit the call. ``OperandOf`` gives the value standing for a graph node (None for
# a missing operand); ``ViewOf`` applies a view (target, *args) to such values.
OperandOf = Callable[[Any], Any]
ViewOf = Callable[..., Any]


# --- The fused op's arguments ------------------------------------------------------------------


def _stream_x(stream: Stream, operand_of: OperandOf, view_of: ViewOf) -> Any:
    # What the op reads for the stream: its input, or the absorbed norm's input cut as the stream is.
    norm = stream.norm
    if norm is None:
        return operand_of(stream.input)
    x = operand_of(norm.input)
    if stream.view is not None and stream.view[0] == "slice":
        _, dim, start, end = stream.view
        return view_of(aten.slice.Tensor, x, dim, start, end)
    if stream.view is not None:
        return view_of(aten.reshape.default, x, stream.view[1])
    return x


def _stream_table(group: Group, stream: Stream, table: Table, operand_of: OperandOf, view_of: ViewOf) -> Any:
    # The table as the stream reads it: for a stream cut from a joint sequence, its rows.
    value = operand_of(table.node)
    if stream.table_rows is not None:
        # The table's dim along the joint sequence (tables align to x from the right).
        dim = group.cat_dim - (value_of(group.output).dim() - value_of(table.node).dim())
        if dim >= 0 and value_of(table.node).shape[dim] != 1:
            start, length = stream.table_rows
            value = view_of(aten.slice.Tensor, value, dim, start, start + length)
    return value


def _op_arguments(group: Group, operand_of: OperandOf, view_of: ViewOf) -> tuple[Any, ...]:
    # The fused op's arguments for ``group``, in the op's order.
    xs, weights, eps, cos, sin, cos_maps, sin_maps = [], [], [], [], [], [], []
    for stream in group.streams:
        norm = stream.norm
        xs.append(_stream_x(stream, operand_of, view_of))
        weights.append(operand_of(norm.weight) if norm is not None and norm.weight is not None else None)
        eps.append(float(norm.eps) if norm is not None else 0.0)
        rotation = stream.rotation
        if rotation is None:
            cos.append(None)
            sin.append(None)
            cos_maps += [0, 0, 0, 0]
            sin_maps += [0, 0, 0, 0]
            continue
        for tables, maps, table in ((cos, cos_maps, rotation.cos), (sin, sin_maps, rotation.sin)):
            tables.append(_stream_table(group, stream, table, operand_of, view_of))
            maps += list(table.map)
    first = group.rotations[0]
    return (
        xs, weights, eps, cos, sin, cos_maps, sin_maps, group.norm_kind, group.norm_rounding,
        first.rotary_dim, first.interleaved, group.cat_dim, value_of(group.output).dtype,
    )


# --- Checks ----------------------------------------------------------------------------------------


def _meta_tensor(node: torch.fx.Node | None) -> torch.Tensor | None:
    value = None if node is None else hinted(value_of(node))
    return None if value is None else torch.empty(value.shape, dtype=value.dtype, device="meta")


def _apply_view(target: Any, *args: Any) -> torch.Tensor:
    return target(*args)


def _meta_kernel_call(group: Group) -> rope_kernels.Rope | str:
    # The kernel call on meta tensors of the compile-time sizes, or why the op would refuse them.
    with unset_fake_temporarily():
        try:
            return rope_kernels.make_call(*_op_arguments(group, _meta_tensor, _apply_view))
        except ValueError as error:
            return f"the fused op would not take this chain: {error}"


# --- The replacement -----------------------------------------------------------------------------


def _insert_call(graph: torch.fx.Graph, target: Any, *args: Any) -> torch.fx.Node:
    # A call of ``target`` at the graph's insertion point, with its fake value.
    node = graph.call_function(target, args)
    fake_args = pytree.tree_map(lambda arg: arg.meta["val"] if isinstance(arg, torch.fx.Node) else arg, args)
    mode = detect_fake_mode([arg for arg in pytree.tree_flatten(fake_args)[0] if isinstance(arg, torch.Tensor)])
    with mode or FakeTensorMode():
        node.meta["val"] = target(*fake_args)
    return node


def _guard_trailing_sizes(group: Group) -> None:
    # The call's rotary_dim and table maps hold for this head dim and these table widths only:
    # a symbolic one (torch.compile(dynamic=True)) is guarded to its value.
    for rotation in group.rotations:
        for node in (rotation.x, rotation.cos.node, rotation.sin.node):
            size = value_of(node).shape[-1]
            if not isinstance(size, int):
                guard_int(size)


def _replace_with_fused_call(graph: torch.fx.Graph, group: Group) -> torch.fx.Node:
    output = group.output
    with graph.inserting_before(output):
        args = _op_arguments(group, lambda node: node, lambda target, *a: _insert_call(graph, target, *a))
        fused = _insert_call(graph, ROPE_OP, *args)
    fused.meta["stack_trace"] = output.meta.get("stack_trace")
    output.replace_all_uses_with(fused)
    return fused


class RopeFamily(FusionFamily[Group]):
    """Rotary embedding in any spelling, with the q/k RMSNorm before it and the cat of streams around it."""

    name = FAMILY_NAME
    description = "rotary embedding in any spelling, with the q/k RMSNorm before it and the cat of streams around it"

    def candidates(
        self, graph: torch.fx.Graph, failures: list[tuple[torch.fx.Node, Exception]] | None = None
    ) -> Iterator[Group]:
        """Every rotation in ``graph`` (the last first), grouped into streams, with the norms it reads absorbed;
        where interpreting a possible rotation failed on our side, ``failures`` gets the node and the error."""
        order = {node: index for index, node in enumerate(graph.nodes)}
        rotations, covered = [], set()
        for node in reversed(list(graph.nodes)):
            if node in covered:
                continue
            rotation = find_rotation(node, order, failures)
            if rotation is not None:
                rotations.append(rotation)
                covered |= rotation.nodes
        for group in group_rotations(rotations):
            absorb_norms(group)
            yield group

    def apply(self, graph: torch.fx.Graph, run: PassRun) -> None:
        """Fuse each group the verdict accepts; report the others."""
        fused, failures = 0, []
        for group in self.candidates(graph, failures):
            reason = self.verdict(group, run)
            if reason is not None:
                self.near_miss(run, group, reason)
            else:
                fused += self.fuse(graph, group, run)
        # A possible rotation our interpreter failed on (e.g. a slice bound that is a symbolic size)
        # is a near miss, reported once per output node that is still in the graph.
        for output, error in dict(failures).items():
            if output.graph is graph and output.users:
                run.report.add_near_miss(self.name, None, output, internal_error(self.name, "interpretation", output, error))
        if fused:
            graph.eliminate_dead_code()

    def plan(self, candidate: Group) -> rope_kernels.Rope | str:
        """The kernel call on meta tensors of the compile-time sizes, or why the op would refuse the group."""
        return _meta_kernel_call(candidate)

    def legality(self, candidate: Group) -> str | None:
        """Why the group cannot be one call: streams on several devices, intermediates used outside, the op's checks."""
        output = value_of(candidate.output)
        for node in (stream.value for stream in candidate.streams):
            if value_of(node).device != output.device:
                return "the streams are on different devices"
        for rotation in candidate.rotations:
            outside = [node for node in rotation.nodes - {rotation.output} if not data_users(node) <= candidate.nodes]
            if outside:
                return outside_use_reason(outside, candidate.nodes) or "an intermediate of the rotation is also used outside it"
        call = self.plan(candidate)
        if isinstance(call, str):
            return call
        if output.device.type == "cuda":
            reason = rope_kernels.unsupported_reason(call)
            if reason is not None:
                return f"the kernel does not take this chain: {reason}"
        return None

    def profitability(self, candidate: Group) -> str | None:
        """The CUDA size rule of ``profitability``."""
        call = self.plan(candidate)
        assert not isinstance(call, str), call
        return cuda_size_rule(candidate, call)

    def anchor(self, candidate: Group) -> torch.fx.Node:
        """The group's joint output."""
        return candidate.output

    def intermediates(self, candidate: Group) -> Iterable[torch.fx.Node]:
        """The rotations' nodes before their outputs."""
        return [node for rotation in candidate.rotations for node in rotation.nodes - {rotation.output}]

    def describe(self, candidate: Group) -> str:
        """The absorbed norm, the rotation's layout and the number of streams."""
        return describe(candidate)

    def replace(self, graph: torch.fx.Graph, candidate: Group) -> None:
        """One ``fusion_passes::rope`` call in place of the group's output (guarding symbolic trailing sizes)."""
        _guard_trailing_sizes(candidate)
        _replace_with_fused_call(graph, candidate)

    def explain_unfused(self, graph: torch.fx.Graph, run: PassRun) -> None:
        """Inductor runs complex math as eager kernels: a complex multiply left behind is worth a line."""
        for node in graph.find_nodes(op="call_function", target=aten.view_as_complex.default):
            run.report.add_near_miss(
                FAMILY_NAME, None, node, "a complex multiply left in the graph is not a rotation this family recognizes"
            )


ROPE = RopeFamily()
