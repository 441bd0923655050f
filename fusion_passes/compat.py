"""Every private torch API the package relies on, in one place, with the versions it was checked on."""

from __future__ import annotations

import functools
from typing import Any

import torch

# Checked on torch 2.11 (GPU machine) and 2.13 (CPU): Inductor keeps the operands of a Triton-kernel
# mutation node at exactly the strides of the fake values in its ``meta["eager_input_vals"]``.
# From 2.13 its decomposition of the functional node copies them onto the mutation node
# (``_propagate_triton_eager_input_vals``); before, the same copy is added here.
_HOP_FUNCTIONAL = torch.ops.higher_order.triton_kernel_wrapper_functional
_HOP_MUTATION = torch.ops.higher_order.triton_kernel_wrapper_mutation


@functools.cache
def exact_strides_for_triton_kernels() -> bool:
    """Whether Inductor can be made to pass a Triton-kernel node's operands at their exact strides."""
    try:
        from torch._inductor import graph as inductor_graph
        from torch._inductor.fx_passes import post_grad
        from torch._inductor.lowering import constrain_to_fake_tensors  # noqa: F401
    except ImportError:
        return False
    if "eager_input_vals" not in inductor_graph.GraphLowering.run_node.__code__.co_names + (
        inductor_graph.GraphLowering.run_node.__code__.co_consts
    ):
        return False
    if not hasattr(post_grad, "_propagate_triton_eager_input_vals"):
        post_grad.decompose_triton_kernel_wrapper_functional = _propagating(
            post_grad.decompose_triton_kernel_wrapper_functional
        )
    return True


def _propagating(decompose: Any) -> Any:
    # The decomposition, then each functional node's eager_input_vals copied onto the mutation node
    # that replaced it (found by its constant-arguments index, unique to each emitted launch).
    @functools.wraps(decompose)
    def decompose_and_propagate(graph: torch.fx.Graph) -> Any:
        values = {
            node.kwargs["constant_args_idx"]: node.meta["eager_input_vals"]
            for node in graph.find_nodes(op="call_function", target=_HOP_FUNCTIONAL)
            if "eager_input_vals" in node.meta
        }
        result = decompose(graph)
        for node in graph.find_nodes(op="call_function", target=_HOP_MUTATION):
            value = values.get(node.kwargs.get("constant_args_idx"))
            if value is not None and "eager_input_vals" not in node.meta:
                args, kwargs = value
                node.meta["eager_input_vals"] = (args, {k: v for k, v in kwargs.items() if k != "tensors_to_clone"})
        return result

    return decompose_and_propagate
