"""The rope family's pass: find the rotations, group them, check each group and replace it.

Each group that passes the checks (device, intermediates used only inside it, arguments the fused
op and its kernel take, and on CUDA the size rule) becomes one ``fusion_passes::rope`` call
writing the joint output; any other is reported as a near miss with the reason.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.fx.experimental.symbolic_shapes import guard_int
from torch.utils._pytree import tree_flatten, tree_map

from fusion_passes.config import FusionConfig
from fusion_passes.kernels import rope as rope_kernels
from fusion_passes.patterns import RewriteFamily, hinted, register_family
from fusion_passes.report import GraphReport, outside_use_reason
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
    with torch._subclasses.fake_tensor.unset_fake_temporarily():
        try:
            return rope_kernels.make_call(*_op_arguments(group, _meta_tensor, _apply_view))
        except ValueError as error:
            return f"the fused op would not take this chain: {error}"


def _unfused_reason(group: Group, config: FusionConfig) -> str | None:
    # Why the group must stay unfused, or None.
    output = value_of(group.output)
    if output.device.type not in config.devices:
        return f"device {output.device.type!r} is not in config.devices {config.devices}"
    for node in (stream.value for stream in group.streams):
        if value_of(node).device != output.device:
            return "the streams are on different devices"
    for rotation in group.rotations:
        outside = [node for node in rotation.nodes - {rotation.output} if not data_users(node) <= group.nodes]
        if outside:
            return outside_use_reason(outside, group.nodes) or "an intermediate of the rotation is also used outside it"
    call = _meta_kernel_call(group)
    if isinstance(call, str):
        return call
    if output.device.type == "cuda":
        reason = rope_kernels.unsupported_reason(call)
        if reason is not None:
            return f"the kernel does not take this chain: {reason}"
        if config.size_rule:
            return cuda_size_rule(group, call)
    return None


# --- The replacement -----------------------------------------------------------------------------


def _insert_call(graph: torch.fx.Graph, target: Any, *args: Any) -> torch.fx.Node:
    # A call of ``target`` at the graph's insertion point, with its fake value.
    node = graph.call_function(target, args)
    fake_args = tree_map(lambda arg: arg.meta["val"] if isinstance(arg, torch.fx.Node) else arg, args)
    mode = torch._guards.detect_fake_mode([arg for arg in tree_flatten(fake_args)[0] if isinstance(arg, torch.Tensor)])
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


def _explain_complex_leftovers(graph: torch.fx.Graph, report: GraphReport) -> None:
    # Inductor runs complex math as eager kernels: a complex multiply left behind is worth a line.
    for node in graph.find_nodes(op="call_function", target=aten.view_as_complex.default):
        report.add_near_miss(
            FAMILY_NAME, None, node, "a complex multiply left in the graph is not a rotation this family recognizes"
        )


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
    for group in group_rotations(rotations):
        absorb_norms(group)
        reason = _unfused_reason(group, config)
        if reason is not None:
            report.add_near_miss(FAMILY_NAME, describe(group), group.output, reason)
            continue
        report.add_fusion(FAMILY_NAME, describe(group), group.output)
        _guard_trailing_sizes(group)
        _replace_with_fused_call(graph, group)
        fused += 1
    if fused:
        graph.eliminate_dead_code()
    _explain_complex_leftovers(graph, report)
    return fused


register_family(
    RewriteFamily(
        name=FAMILY_NAME,
        description="rotary embedding in any spelling, with the q/k RMSNorm before it and the cat of streams around it",
        rewrite=rewrite,
    )
)
