"""Every private torch API the package relies on, in one place, with the versions it was checked on.

The rest of the package imports these names from here, never from ``torch._*``; where a torch
release moves or changes one, this module is the one to adapt. Unless an entry says otherwise it
was checked on torch 2.11 (H200 GPU machine), 2.13 and 2.15 (CPU): the suite passes there.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch

# Inductor's pattern matcher (torch._inductor.pattern_matcher): the search patterns, the matcher
# pass and the replacement by a traced function. ``fwd_only`` takes decompositions as
# ``get_decomp_fn=`` from torch 2.12 (a table before); we pass none.
from torch._inductor.pattern_matcher import (
    MULTIPLE,
    CallFunction,
    CallFunctionVarArgs,
    FailedMatch,
    Ignored,
    KeywordArg,
    Match,
    MatchContext,
    MatchResult,
    Multiple,
    MultiOutputPattern,
    PatternExpr,
    PatternMatcherPass,
    fwd_only,
    fx_to_pattern,
    is_match,
    register_graph_pattern,
    stable_topological_sort,
)

# Post-grad graphs spell views as reshapes; traced patterns are normalized the same way.
from torch._inductor.fx_passes.post_grad import view_to_reshape

# Inductor's configuration and its custom post-grad pass hook.
from torch._inductor import config as inductor_config
from torch._inductor import custom_graph_pass as _custom_graph_pass
from torch._inductor.custom_graph_pass import CustomGraphPass

# Fake tensors (patterns are traced, and fused calls checked, on them); Dynamo's counters, which
# Inductor stores with an FX-graph-cache entry; torch's pytree.
from torch._subclasses.fake_tensor import FakeTensorMode, unset_fake_temporarily
from torch._dynamo.utils import counters
from torch.utils import _pytree as pytree

# Re-exported for the package.
__all__ = [
    "CallFunction",
    "CallFunctionVarArgs",
    "CustomGraphPass",
    "FailedMatch",
    "FakeTensorMode",
    "Ignored",
    "KeywordArg",
    "MULTIPLE",
    "Match",
    "MatchContext",
    "MatchResult",
    "MultiOutputPattern",
    "Multiple",
    "PatternExpr",
    "PatternMatcherPass",
    "counters",
    "fwd_only",
    "fx_to_pattern",
    "inductor_config",
    "is_match",
    "pytree",
    "register_graph_pattern",
    "stable_topological_sort",
    "unset_fake_temporarily",
    "view_to_reshape",
]

# --- Inductor's pass hook and entry point ---------------------------------------------------------

# From torch 2.13 Inductor calls passes of this kind with is_inference=...; before, it has none (None here).
CustomInferenceAwareGraphPass = getattr(_custom_graph_pass, "CustomInferenceAwareGraphPass", None)


def compile_fx(gm: torch.fx.GraphModule, example_inputs: list[Any], config_patches: dict[str, Any]) -> Any:
    """Inductor's compile of a Dynamo graph under ``config_patches`` (what backend="inductor" runs)."""
    from torch._inductor.compile_fx import compile_fx as inductor_compile_fx

    return inductor_compile_fx(gm, example_inputs, config_patches=config_patches)


def inductor_config_patches(mode: str | None, options: dict[str, Any]) -> dict[str, Any]:
    """Inductor's config patches for torch.compile's ``mode=``/``options=`` (validated as torch.compile does)."""
    return torch._TorchCompileInductorWrapper(mode, options, dynamic=None).config


# --- Fake-tensor modes, compile ids, graph code ----------------------------------------------------


def detect_fake_mode(tensors: list[torch.Tensor]) -> Any:
    """The fake-tensor mode of ``tensors`` (None if they are real)."""
    return torch._guards.detect_fake_mode(tensors)


def current_compile_id() -> Any:
    """Dynamo's id of the compile in progress (``0/0``), or None outside one."""
    return torch._guards.CompileContext.current_compile_id()


def normalize_graph_code(text: str) -> str:
    """Graph code with node names normalized, as Dynamo's own tests compare it."""
    from torch._dynamo.testing import normalize_gm

    return normalize_gm(text)


def size_hint(size: torch.SymInt) -> int | None:
    """The value a symbolic size had at compile time; None for a data-dependent one."""
    return size.node.hint


# --- ATen operator overloads -----------------------------------------------------------------------


def is_aten_overload(target: Any) -> bool:
    """Whether ``target`` is an operator overload (``aten.add.Tensor``), not a Python function."""
    return isinstance(target, torch._ops.OpOverload)


def schema_of(target: torch._ops.OpOverload) -> torch.FunctionSchema:
    """The operator's schema (name, arguments, whether it mutates)."""
    return target._schema


def overload_name(target: torch._ops.OpOverload) -> str:
    """The overload's name: ``Tensor`` of ``aten.add.Tensor``, ``default`` of ``aten.rsqrt.default``."""
    return target._overloadname


# --- Pattern-expression hooks ----------------------------------------------------------------------
# The pattern matcher calls a pattern's private ``_match(node, ctx)`` and a call's
# ``_match_users(node, ctx)``. Our own pattern expressions derive from these bases and implement
# ``match_node`` (and ``users_match``) instead.


class PatternNode(PatternExpr):
    """A pattern expression whose match is ``match_node``."""

    def _match(self, node: torch.fx.Node, ctx: MatchContext) -> MatchResult:
        return self.match_node(node, ctx)

    def match_node(self, node: torch.fx.Node, ctx: MatchContext) -> MatchResult:
        """Match this expression at ``node``."""
        raise NotImplementedError


class CallPattern(CallFunction):
    """A call pattern whose match is ``match_node`` (by default Inductor's) and users check ``users_match``."""

    def _match(self, node: torch.fx.Node, ctx: MatchContext) -> MatchResult:
        return self.match_node(node, ctx)

    def match_node(self, node: torch.fx.Node, ctx: MatchContext) -> MatchResult:
        """Inductor's match of this call at ``node``."""
        return CallFunction._match(self, node, ctx)

    def _match_users(self, node: torch.fx.Node, ctx: MatchContext) -> bool:
        return self.users_match(node, ctx)

    def users_match(self, node: torch.fx.Node, ctx: MatchContext) -> bool:
        """Inductor's check that ``node`` has as many users as the pattern allows."""
        return CallFunction._match_users(self, node, ctx)


# --- Triton kernels in Inductor graphs (torch._higher_order_ops.triton_kernel_wrap) --------------
# Inductor keeps the operands of a Triton-kernel mutation node at exactly the strides of the fake
# values in its ``meta["eager_input_vals"]`` (checked on 2.11 and 2.13; 2.15 CPU runs no launch).
# From 2.13 its decomposition of the functional node copies them onto the mutation node
# (``_propagate_triton_eager_input_vals``); before, the same copy is added here.
TRITON_KERNEL_FUNCTIONAL = torch.ops.higher_order.triton_kernel_wrapper_functional
TRITON_KERNEL_MUTATION = torch.ops.higher_order.triton_kernel_wrapper_mutation


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
            for node in graph.find_nodes(op="call_function", target=TRITON_KERNEL_FUNCTIONAL)
            if "eager_input_vals" in node.meta
        }
        result = decompose(graph)
        for node in graph.find_nodes(op="call_function", target=TRITON_KERNEL_MUTATION):
            value = values.get(node.kwargs.get("constant_args_idx"))
            if value is not None and "eager_input_vals" not in node.meta:
                args, kwargs = value
                node.meta["eager_input_vals"] = (args, {k: v for k, v in kwargs.items() if k != "tensors_to_clone"})
        return result

    return decompose_and_propagate


# --- Fused ops' launchers (fusion_passes.kernels) ---------------------------------------------------
# Checked on torch 2.13 and 2.15 (CPU).


def torch_mode_active() -> bool:
    """Whether a torch-function or a dispatch mode is active (an eager fused call then goes through its op)."""
    return torch._C._is_torch_function_mode_enabled() or torch._C._len_torch_dispatch_stack() > 0


def assert_async(condition: torch.Tensor, message: str) -> None:
    """Assert ``condition`` on its device without a host synchronization (a device-side assert on CUDA)."""
    torch._assert_async(condition, message)


def emit_triton_kernel(kernel: Any, constants: dict[str, Any], **launch: Any) -> Any:
    """Record a launch of ``kernel`` as Inductor's functional Triton-kernel node in the graph being traced.

    ``constants`` are its compile-time arguments; ``launch`` are the node's other arguments (grid,
    kwargs, tensors_to_clone, tma_descriptor_metadata). Returns the written tensors by name.
    """
    from torch._higher_order_ops.triton_kernel_wrap import kernel_side_table

    return TRITON_KERNEL_FUNCTIONAL(
        kernel_idx=kernel_side_table.add_kernel(kernel),
        constant_args_idx=kernel_side_table.add_constant_args(constants),
        **launch,
    )


# --- Inductor's C++ launcher for a compiled Triton kernel (torch._inductor.runtime) ----------------
# ``static_triton_launcher`` from torch 2.13 (checked on 2.13 and 2.15, CPU: import only),
# ``static_cuda_launcher`` before (checked on 2.11, H200). Inductor launches its own kernels and
# user-defined Triton kernels through it; an eager launch of ours saves Triton's Python launcher.


def static_cuda_launcher(compiled: Any, device: int, cubin_directory: str) -> tuple[Callable[..., None], tuple[int, ...]] | None:
    """Inductor's C++ launcher for ``compiled`` (a Triton ``CompiledKernel``) loaded on ``device``.

    Returns ``(launch, positions)``: ``launch(grid_x, grid_y, grid_z, stream, arguments)`` with
    ``arguments`` the kernel's parameters at ``positions`` (its constexprs dropped); None where this
    torch has no such launcher or it does not take this kernel (launch hooks, scratch memory, ...).
    """
    import importlib
    import os

    for name in ("static_triton_launcher", "static_cuda_launcher"):
        try:
            module = importlib.import_module(f"torch._inductor.runtime.{name}")
            break
        except ImportError:
            continue
    else:
        return None
    try:
        compiled._cubin_path = None  # Inductor's own attribute; the launcher then loads the cubin bytes
        kernel = module.StaticallyLaunchedCudaKernel(compiled)
        kernel.reload_cubin_from_raw(os.path.join(cubin_directory, f"{compiled.hash}.cubin"))
        kernel.load_kernel(device)
    except Exception:  # noqa: BLE001  (any refusal leaves Triton's own launcher in charge)
        return None
    constexprs = set(kernel.full_constexprs)
    positions = tuple(i for i in range(len(kernel.arg_names)) if i not in constexprs)
    scratch = (None,) * (kernel.has_global_scratch + kernel.has_profile_scratch)
    types = kernel.arg_tys + "O" * len(scratch)
    launch_kernel, function, warps, shared = kernel.C_impl._launch_kernel, kernel.function, kernel.num_warps, kernel.shared

    def launch(grid_x: int, grid_y: int, grid_z: int, stream: int, arguments: tuple[Any, ...], _owner: Any = kernel) -> None:
        # (_owner keeps the loaded module alive: the launcher unloads it when collected.)
        launch_kernel(function, grid_x, grid_y, grid_z, warps, shared, types, arguments + scratch, stream)

    return launch, positions
