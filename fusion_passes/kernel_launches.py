"""The last step of the pass: fused ops on CUDA become kernel launches that Inductor's wrapper makes.

A ``torch.ops.fusion_passes`` call left in a compiled graph goes through the custom-op dispatcher,
checks its operands and plans its launch on every call (hundreds of microseconds of host time).
Where the op's kernel module registered an emitter, the call is replaced here by the launch
planned once, now, from the graph's fake tensors: Inductor then launches it like its own kernels.
"""

from __future__ import annotations

import operator
from typing import Any

import torch
from fusion_passes.compat import (
    TRITON_KERNEL_FUNCTIONAL,
    CallFunctionVarArgs,
    exact_strides_for_triton_kernels,
    is_match,
    pytree,
)
from fusion_passes.kernels.launch import NotEmittable, emitters
from fusion_passes.report import logger


def _replace_by_launch(node: torch.fx.Node, emitter: Any) -> bool:
    # Trace the emitter on the node's operands (replace_by_example traces a function of flat
    # arguments) and put the traced launch in place of the node.
    match = CallFunctionVarArgs(node.target).match(node)
    assert is_match(match), match
    flat_args, spec = pytree.tree_flatten((match.args, match.kwargs))

    def launch(*flat: Any) -> Any:
        call_args, call_kwargs = pytree.tree_unflatten(list(flat), spec)
        return emitter(*call_args, **call_kwargs)

    try:
        match.replace_by_example(launch, flat_args, run_functional_passes=False)
    except NotEmittable as reason:
        logger.debug("fusion_passes: %s stays a custom op: %s", node, reason)
        return False
    except Exception as error:  # noqa: BLE001  (the custom op still computes the chain, at its host cost)
        logger.warning("fusion_passes: planning the launch of %s failed (%r); it stays a custom op", node, error)
        return False
    return True


def _on_cuda(arg: Any) -> bool:
    value = arg.meta.get("val") if isinstance(arg, torch.fx.Node) else None
    return isinstance(value, torch.Tensor) and value.device.type == "cuda"


def launch_fused_ops(graph: torch.fx.Graph) -> int:
    """Replace each fused op on CUDA by its launch planned at compile time; returns how many.

    (A plain loop, not a pattern pass: Inductor's pattern passes skip nodes with complex operands,
    such as a rotation's complex frequency table.)
    """
    if not inductor_launches_kernels():
        return 0
    by_op = emitters()
    # Kernel nodes already in the graph (a user's own Triton kernels) keep their layout constraint.
    users_kernels = set(graph.find_nodes(op="call_function", target=TRITON_KERNEL_FUNCTIONAL))
    count = 0
    for node in list(graph.nodes):
        emitter = by_op.get(node.target) if node.op == "call_function" else None
        if emitter is not None and any(_on_cuda(arg) for arg in node.all_input_nodes):
            read_small_views_in_place(node)
            count += _replace_by_launch(node, emitter)
    for node in graph.find_nodes(op="call_function", target=TRITON_KERNEL_FUNCTIONAL):
        if node not in users_kernels:
            pin_operand_strides(node)
    return count


aten = torch.ops.aten
# Ops whose output views their first argument's storage; and those whose outputs (taken by
# getitem) do.
_VIEWS = {
    aten.slice.Tensor, aten.select.int, aten.view.default, aten.unsqueeze.default, aten.squeeze.dim,
    aten.squeeze.dims, aten.expand.default, aten.permute.default, aten.t.default, aten.transpose.int, aten.alias.default,
}
_SPLITS = {aten.split.Tensor, aten.split_with_sizes.default, aten.unbind.int}
# A computed tensor up to this size is stored whole so that the launch reads its views in place.
SMALL_VIEWED_ELEMENTS = 1 << 20


def _viewed_node(node: torch.fx.Node) -> torch.fx.Node | None:
    # The node whose storage ``node`` views through view ops only; None if it is no view.
    current = node
    while current.op == "call_function":
        if current.target in _VIEWS:
            current = current.args[0]
        elif current.target is operator.getitem and getattr(current.args[0], "target", None) in _SPLITS:
            current = current.args[0].args[0]
        else:
            break
    return current if current is not node else None


def read_small_views_in_place(node: torch.fx.Node) -> None:
    """Let a fused op read views of a small computed tensor (modulation chunks of ``(table + temb).chunk(6)``)
    from that tensor, stored once.

    The launch needs each operand at exact strides; given a view of an unstored computation,
    Inductor stores each view separately, one extra kernel launch each. An ``as_strided`` of the
    computed tensor makes Inductor store it whole and pass the views in place.
    """
    graph = node.graph
    for operand in node.all_input_nodes:
        base = _viewed_node(operand)
        value, base_value = operand.meta.get("val"), getattr(base, "meta", {}).get("val")
        if base is None or base.op != "call_function" or not isinstance(base_value, torch.Tensor):
            continue
        geometry = (*value.shape, *value.stride(), value.storage_offset(), *base_value.shape)
        if not all(isinstance(size, int) for size in geometry) or base_value.dtype != value.dtype:
            continue
        if base_value.storage_offset() != 0 or not base_value.is_contiguous() or base_value.numel() > SMALL_VIEWED_ELEMENTS:
            continue
        with graph.inserting_before(node):
            view = graph.call_function(
                aten.as_strided.default, (base, tuple(value.shape), tuple(value.stride()), value.storage_offset())
            )
        view.meta["val"] = value
        node.replace_input_with(operand, view)


def inductor_launches_kernels() -> bool:
    """Whether fused ops are launched by Inductor's wrapper here (else they stay custom ops).

    A launch bakes its operands' strides in; that is safe only where Inductor passes each operand
    at exactly the strides of its fake value.
    """
    return exact_strides_for_triton_kernels()


def pin_operand_strides(node: torch.fx.Node) -> None:
    """Give one emitted functional Triton-kernel node its operands' fake values, so that Inductor
    passes them at exactly the strides the launch was planned for."""
    # Tracing usually records them already; they must keep the node's argument containers
    # (immutable dicts): torch 2.11's decomposition maps them against the node's arguments.
    if "eager_input_vals" not in node.meta:
        node.meta["eager_input_vals"] = torch.fx.node.map_aggregate(
            ((), node.kwargs), lambda value: value.meta["val"] if isinstance(value, torch.fx.Node) else value
        )
