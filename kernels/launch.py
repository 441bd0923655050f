"""One description of a Triton launch, run two ways: eagerly, or emitted into a compiled graph.

A launcher computes a ``KernelLaunch`` (kernel, grid, arguments, which tensors it writes) from its
operands. Called on real tensors, ``run`` launches it. Called by a graph rewrite on the fake
tensors of a compiled graph, ``emit`` records it as Inductor's functional Triton-kernel node: the
launch config, constexprs, strides and grid are then decided once, at compile time, and Inductor's
own wrapper launches the kernel like the kernels it generates (its launcher, CUDA-graph trees and
C++ wrapper apply). Only tensors and symbolic sizes remain arguments at run time.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import linecache
import os
import tempfile
import textwrap
from collections.abc import Callable, Mapping
from typing import Any

import torch
import triton
import triton.runtime

from fusion_passes.compat import emit_triton_kernel, static_cuda_launcher
from fusion_passes.compat import size_hint as compile_time_value


@dataclasses.dataclass(frozen=True)
class KernelLaunch:
    """A Triton kernel, its grid and keyword arguments, and the names of the tensors it writes."""

    kernel: Any
    grid: tuple[Any, ...]
    arguments: Mapping[str, Any]
    outputs: tuple[str, ...]

    def run(self) -> None:
        """Launch on real tensors."""
        self.kernel[self.grid](**self.arguments)

    def emit(self) -> dict[str, torch.Tensor]:
        """Record the launch in the graph being traced; returns the written tensors by name."""
        arguments = dict(self.arguments)
        # Compile options travel as the one config of an autotuner, as torch.compile passes them.
        options = tuple((name, arguments.pop(name)) for name in _COMPILE_OPTIONS if name in arguments)
        runtime = {name: value for name, value in arguments.items() if _is_runtime(value)}
        constants = {name: value for name, value in arguments.items() if name not in runtime}
        # Every constant becomes a constexpr of the kernel Inductor compiles: the wrapper then
        # passes only tensors and symbolic sizes (each launch argument costs host time per call).
        kernel = with_constexprs(
            self.kernel, frozenset(name for name, value in constants.items() if isinstance(value, int) or value is None))
        return emit_triton_kernel(
            _configured(kernel, options),
            constants,
            # Inductor's launcher takes three grid dims.
            grid=[tuple(self.grid) + (1,) * (3 - len(self.grid))],
            tma_descriptor_metadata={},
            kwargs=runtime,
            tensors_to_clone=list(self.outputs),
        )


_COMPILE_OPTIONS = ("num_warps", "num_stages")


class DirectLaunch:
    """A Triton kernel launched from eager code without Triton's per-call argument binding.

    Triton's JIT binds, specializes and hashes every argument on every launch: tens of microseconds
    for a kernel with forty parameters. An eager launcher that plans per operand layout knows which
    arguments change between its calls (``runtime``); the others are fixed here. A compiled variant
    is then found by what Triton specializes the changing arguments on (an int's equality to 1,
    divisibility by 16 and 32/64-bit range; a pointer's 16-byte alignment) and launched with
    positional arguments, through Inductor's C++ launcher where this torch has one (a few
    microseconds), else through the compiled kernel's own. The first launch of each variant goes
    through Triton's JIT, which compiles it (or finds it in its cache).
    """

    def __init__(self, kernel: Any, arguments: Mapping[str, Any], runtime: tuple[str, ...]) -> None:
        self.kernel = kernel
        self.options = {name: arguments[name] for name in _COMPILE_OPTIONS if name in arguments}
        names = list(kernel.arg_names)
        missing = sorted(set(names) - set(arguments))
        if missing:
            raise ValueError(f"arguments: missing kernel parameters {missing}")
        self.template = [arguments[name] for name in names]
        self.positions = tuple(names.index(name) for name in runtime)
        self.variants: dict[tuple[Any, ...], _CompiledVariant] = {}

    def launch(self, grid: tuple[int, int, int], values: tuple[Any, ...]) -> None:
        """Launch on the current CUDA device and stream with the ``runtime`` arguments ``values``."""
        key = tuple(map(_specialization, values))
        variant = self.variants.get(key)
        if variant is None or _launch_hooks():
            arguments = self.template.copy()
            for position, value in zip(self.positions, values):
                arguments[position] = value
            compiled = self.kernel[grid](*arguments, **self.options)
            self.variants[key] = _CompiledVariant(compiled, self.template, self.positions)
            return
        variant.launch(grid, _current_stream(), values)


class _CompiledVariant:
    """One compiled specialization of a DirectLaunch's kernel, launched with its runtime values."""

    def __init__(self, compiled: Any, template: list[Any], positions: tuple[int, ...]) -> None:
        static = static_cuda_launcher(compiled, torch.cuda.current_device(), _CUBIN_DIRECTORY)
        self.inductor_launcher = static is not None
        if static is None:
            # Triton's launcher takes every parameter (it skips the constexprs itself).
            kept = tuple(range(len(template)))
            self._run = lambda grid, stream, arguments: compiled.run(
                *grid, stream, compiled.function, compiled.packed_metadata, None, None, None, *arguments)
        else:
            launch, kept = static
            self._run = lambda grid, stream, arguments: launch(*grid, stream, tuple(arguments))
        slot = {position: index for index, position in enumerate(kept)}
        self.template = [template[position] for position in kept]
        # (slot in the launch's arguments, index in the runtime values), for the values the launch takes.
        self.slots = tuple((slot[position], index) for index, position in enumerate(positions) if position in slot)

    def launch(self, grid: tuple[int, int, int], stream: int, values: tuple[Any, ...]) -> None:
        """Launch with the runtime ``values`` (in the DirectLaunch's ``runtime`` order)."""
        arguments = self.template.copy()
        for slot, index in self.slots:
            arguments[slot] = values[index]
        self._run(grid, stream, arguments)


_CUBIN_DIRECTORY = os.path.join(tempfile.gettempdir(), "fusion_passes-cubin")


def _specialization(value: Any) -> Any:
    # What Triton's JIT specializes a runtime argument on (a superset: more variants, never a wrong one).
    if isinstance(value, torch.Tensor):
        return value.data_ptr() % 16 == 0
    if value is None:  # an absent operand
        return None
    return value == 1, value % 16 == 0, -(2**31) <= value < 2**31


def _launch_hooks() -> bool:
    # A profiler's launch hooks (Proton) need Triton's own launch path. (Triton 3.6 keeps each hook
    # as a chain, empty but not None when nothing is installed.)
    runtime = triton.knobs.runtime
    return any(hook is not None and getattr(hook, "calls", True)
               for hook in (runtime.launch_enter_hook, runtime.launch_exit_hook))


def _current_stream() -> int:
    active = triton.runtime.driver.active
    return active.get_current_stream(active.get_current_device())


@functools.cache
def _configured(kernel: Any, options: tuple[tuple[str, int], ...]) -> Any:
    # The kernel with its compile options as a one-config autotuner (one per kernel and options, so
    # the kernel side table holds each once).
    if not options:
        return kernel
    return triton.autotune(configs=[triton.Config({}, **dict(options))], key=[])(kernel)


@functools.cache
def with_constexprs(kernel: Any, names: frozenset[str]) -> Any:
    """``kernel`` (a ``triton.jit`` function) with the parameters ``names`` declared ``tl.constexpr``.

    The same source, respelled: its compiled code is specialized to those values, and a launcher
    no longer passes them. Inductor compiles a user kernel from its source text, so the new
    signature must be in the text.
    """
    tree = ast.parse(textwrap.dedent(inspect.getsource(kernel.fn)))
    function = tree.body[0]
    assert isinstance(function, ast.FunctionDef), kernel
    changed = [arg for arg in function.args.args if arg.arg in names and arg.annotation is None]
    if not changed:
        return kernel
    for arg in changed:
        arg.annotation = ast.parse("tl.constexpr", mode="eval").body
    function.decorator_list = []
    source = ast.unparse(tree) + "\n"
    # Triton reads a kernel's source with inspect, which finds generated text through linecache.
    # (The name stays: Inductor tells user kernels apart by function object, not name.)
    filename = f"<fusion_passes: {function.name} with constexprs {sorted(names)}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(keepends=True), filename)
    namespace: dict[str, Any] = {}
    exec(compile(source, filename, "exec"), kernel.fn.__globals__, namespace)  # noqa: S102  (our own kernel's source)
    return triton.jit(namespace[function.name])


def _is_runtime(value: Any) -> bool:
    # Tensors and symbolic sizes travel as graph values; everything else is a compile-time constant.
    return isinstance(value, (torch.Tensor, torch.SymInt, torch.SymFloat))


# Fused op -> the function that emits its launch: called with the op's own arguments (fake tensors
# of the graph being traced), it returns the op's outputs computed by an emitted kernel launch.
_EMITTERS: dict[Any, Callable[..., Any]] = {}


def register_emitter(op: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Declare how ``op`` (a ``torch.ops.fusion_passes`` overload) is launched from a compiled graph."""

    def register(emitter: Callable[..., Any]) -> Callable[..., Any]:
        _EMITTERS[op] = emitter
        return emitter

    return register


def fused_op(
    name: str,
    call_of: Callable[..., Any],
    run: Callable[[Any], Any],
    fake: Callable[[Any], Any] | None,
    emit: Callable[[Any], Any],
    returns: Any,
    first_output_only: bool = False,
) -> Any:
    """The custom op ``name`` (``namespace::op``) declared by ``call_of``, the function making its arguments one call.

    The op's schema comes from ``call_of``'s signature and ``returns``; its body is ``run``, its fake
    ``fake`` (None: registered apart) and its emitter ``emit``, each of the call. With
    ``first_output_only`` the op returns the first of the two outputs they compute.
    """

    def outputs(results: Any) -> Any:
        return results[0] if first_output_only else results

    def op(*arguments: Any, **named: Any) -> Any:
        return outputs(run(call_of(*arguments, **named)))

    namespace, op_name = name.split("::")
    op.__name__ = op.__qualname__ = op_name
    op.__module__, op.__doc__ = call_of.__module__, call_of.__doc__
    op.__signature__ = inspect.signature(call_of, eval_str=True).replace(return_annotation=returns)  # type: ignore[attr-defined]
    custom_op = torch.library.custom_op(name, op, mutates_args=())
    if fake is not None:
        custom_op.register_fake(lambda *arguments, **named: outputs(fake(call_of(*arguments, **named))))
    overload = getattr(getattr(torch.ops, namespace), op_name).default
    register_emitter(overload)(lambda *arguments, **named: outputs(emit(call_of(*arguments, **named))))
    return custom_op


def emitters() -> dict[Any, Callable[..., Any]]:
    """Every fused op with a registered emitter."""
    return dict(_EMITTERS)


class NotEmittable(Exception):
    """The fused call cannot be planned at compile time (it stays an opaque custom op); why."""


def size_hint(size: Any) -> int:
    """A size's value at compile time (its hint, for a symbolic size), without adding a guard."""
    if isinstance(size, int):
        return size
    hint = compile_time_value(size)
    if hint is None:
        raise NotEmittable(f"size {size} is data-dependent")
    return hint


def hinted(tensor: torch.Tensor | None) -> torch.Tensor | None:
    """A meta tensor with ``tensor``'s compile-time sizes, strides and dtype (checks on it add no guards)."""
    if tensor is None:
        return None
    return torch.empty_strided(
        [size_hint(size) for size in tensor.shape], [size_hint(stride) for stride in tensor.stride()],
        dtype=tensor.dtype, device="meta",
    )


def static_size(size: Any) -> int:
    """``size`` as an int; a symbolic size is specialized to its value (a guard: a graph compiled
    with ``dynamic=True`` recompiles if it changes). For the sizes a kernel's constexprs depend on."""
    if isinstance(size, int):
        return size
    from torch.fx.experimental.symbolic_shapes import guard_int

    return guard_int(size)
