"""The radar: which memory-bound kernels of a model are still left outside fused ops, and why.

``radar(module, *args, **kwargs)`` compiles ``module`` with the fusion_passes backend, runs it, and
on a GPU profiles a few calls (``torch.profiler``, CUDA kernel events). Every kernel is put in one
category, so that the categories account for all profiled GPU kernel time:

- GEMM and attention (compute-bound, outside what the passes fuse), by name (``KERNEL_KINDS``);
- fused by us: our Triton kernels (their names are the ``@triton.jit`` functions in
  ``fusion_passes.kernels``, with Inductor's ``_<n>`` suffix);
- near miss: a memory-bound kernel whose ATen ops (Inductor names its kernels
  ``triton_poi_fused_<ops>_<n>`` after the ATen ops it fused; an ATen kernel by the op that
  launched it) are those of a chain the report lists as a near miss: the kernel is marked with
  that near miss's source line and reason;
- unexplained: every other memory-bound kernel.

On CPU there is no kernel profile: the radar prints the report alone. ``python -m fusion_passes.radar``
runs it on a model of the model zoo (``examples/model_zoo.py`` in a checkout) or on a
``module:function`` returning ``(module, inputs)``.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import functools
import importlib
import inspect
import os
import pkgutil
import re
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

import fusion_passes
from fusion_passes.config import FusionConfig
from fusion_passes.progress import progress
from fusion_passes.report import FusionReport, NearMiss

GEMM, ATTENTION, OTHER = "GEMM", "attention", "other"
OURS, NEAR_MISS, UNEXPLAINED = "fused by us", "near miss", "unexplained"
CATEGORIES = (GEMM, ATTENTION, OURS, NEAR_MISS, UNEXPLAINED)

# Kernel kinds by name, first match wins. Inductor's generated pointwise, reduction and foreach
# kernels are memory-bound whatever ATen ops their names list (a copy that feeds SDPA is named
# after it); its templates and every library kernel are told apart by their names.
KERNEL_KINDS: tuple[tuple[str, re.Pattern[str]], ...] = (
    (OTHER, re.compile(r"^triton_(?:poi|red|per|for)_")),
    (ATTENTION, re.compile(r"flash|fmha|sdpa|attention|attn", re.IGNORECASE)),
    (GEMM, re.compile(r"cutlass|cublas|xmma|gemm|nvjet|^triton_tem_fused_(?:addmm|mm|bmm|baddbmm)", re.IGNORECASE)),
)

# An Inductor-generated kernel: its kind, the ATen ops it fused (sorted, "_"-joined), a unique index.
_INDUCTOR_KERNEL = re.compile(r"^(?:triton_(?:poi|red|per|for|tem)|cpp)_fused_(?P<ops>.+?)(?:_\d+)?$")
# Ops that say little about which chain a kernel computes: arithmetic, views, copies and casts.
_GENERIC_OPS = frozenset({
    "add", "sub", "rsub", "mul", "div", "neg", "where", "view", "_unsafe_view", "reshape", "clone", "_to_copy",
    "expand", "unsqueeze", "squeeze", "permute", "transpose", "t", "slice", "select", "copy", "copy_", "alias",
    "convert_element_type", "full", "scalar_tensor", "empty", "empty_strided",
})


@dataclasses.dataclass(frozen=True)
class KernelRow:
    """One kernel name of a profile: its GPU time over the profiled steps and what launched it."""

    name: str
    gpu_us: float
    calls: int
    # The ATen op that launched it (``convolution``), where the profile says so.
    launched_by: str | None = None


@dataclasses.dataclass(frozen=True)
class Attribution:
    """A kernel row, its category (``CATEGORIES``) and what explains it."""

    row: KernelRow
    category: str
    explanation: str
    near_miss: NearMiss | None = None


def kernel_kind(name: str) -> str:
    """``GEMM``, ``attention`` or ``other`` (memory-bound) for a kernel ``name``."""
    for kind, pattern in KERNEL_KINDS:
        if pattern.search(name):
            return kind
    return OTHER


@functools.cache
def our_kernels() -> dict[str, str]:
    """Our Triton kernels' names, each with the module of ``fusion_passes.kernels`` that holds it."""
    import fusion_passes.kernels

    names = {}
    for module_info in pkgutil.iter_modules(fusion_passes.kernels.__path__):
        module = importlib.import_module(f"fusion_passes.kernels.{module_info.name}")
        for value in vars(module).values():
            # A Triton kernel wraps its Python function (a JITFunction, or under TRITON_INTERPRET an
            # InterpretedFunction; autotuners and heuristics wrap those): unwrap to the function.
            triton_wrapped = False
            while type(value).__module__.startswith("triton.") and hasattr(value, "fn"):
                triton_wrapped, value = True, value.fn
            if triton_wrapped and inspect.isfunction(value):
                names[value.__name__] = module_info.name
    return names


def our_kernel(name: str) -> str | None:
    """The kernels module of our kernel ``name`` (Inductor launches it as ``<name>_<n>``), or None."""
    return our_kernels().get(re.sub(r"_\d+$", "", name)) or our_kernels().get(name)


@functools.cache
def _aten_ops() -> frozenset[str]:
    return frozenset(dir(torch.ops.aten))


def split_ops(joined: str, vocabulary: Iterable[str]) -> tuple[str, ...]:
    """``"add_mul_native_layer_norm"`` split into ATen op names, fewest pieces first; unknown pieces split at ``_``."""
    known = _aten_ops() | set(vocabulary)
    parts = joined.split("_")
    # best[i]: the fewest ops covering parts[:i] (a leading "_" of a private op is an empty part).
    best: list[tuple[str, ...] | None] = [()] + [None] * len(parts)
    for end in range(1, len(parts) + 1):
        for start in range(end):
            if best[start] is None:
                continue
            name = "_".join(parts[start:end])
            if name in known and (best[end] is None or len(best[start]) + 1 < len(best[end])):
                best[end] = (*best[start], name)
    return best[-1] if best[-1] is not None else tuple(part for part in parts if part)


def kernel_ops(row: KernelRow, vocabulary: Iterable[str] = ()) -> frozenset[str]:
    """The ATen ops a kernel computes: from an Inductor kernel's name, or the op that launched a library kernel."""
    match = _INDUCTOR_KERNEL.match(row.name)
    if match:
        return frozenset(split_ops(match["ops"], vocabulary))
    return frozenset({row.launched_by} if row.launched_by else ())


def explaining_near_miss(ops: frozenset[str], near_misses: Sequence[NearMiss]) -> NearMiss | None:
    """The near miss whose chain a kernel computing ``ops`` computes, or None.

    A chain's distinctive ops (its norm, convolution, complex product: not arithmetic or views)
    must be among the kernel's, and two of its ops at least (one for a library kernel, known by the
    one op that launched it). Of several, the one sharing most distinctive ops, then most ops for the
    fewest, wins (the first reported on a tie). A kernel name tells ops, not graph nodes.
    """
    best, best_score = None, None
    for miss in near_misses:
        chain = set(miss.ops)
        shared = chain & ops
        distinctive = chain - _GENERIC_OPS
        if not shared or (distinctive and not distinctive & ops) or len(shared) < min(2, len(chain), len(ops)):
            continue
        score = (len(distinctive & ops), len(shared) / len(chain | ops))
        if best_score is None or score > best_score:
            best, best_score = miss, score
    return best


def attribute(rows: Iterable[KernelRow], report: FusionReport) -> list[Attribution]:
    """Each kernel row with its category and explanation, longest GPU time first."""
    near_misses = report.near_misses
    vocabulary = {op for miss in near_misses for op in miss.ops}
    attributions = []
    for row in sorted(rows, key=lambda row: -row.gpu_us):
        kind = kernel_kind(row.name)
        if kind != OTHER:
            attributions.append(Attribution(row, kind, kind))
            continue
        module = our_kernel(row.name)
        if module is not None:
            attributions.append(Attribution(row, OURS, f"fused by us ({module} kernel)"))
            continue
        ops = kernel_ops(row, vocabulary)
        miss = explaining_near_miss(ops, near_misses)
        if miss is not None:
            where = (f"in {miss.module} " if miss.module else "") + f"at {miss.source or miss.node}"
            attributions.append(Attribution(row, NEAR_MISS, f"near miss {miss.fusion} {where}: {miss.reason}", miss))
        else:
            computes = f" (computes {', '.join(sorted(ops))})" if ops else ""
            attributions.append(Attribution(row, UNEXPLAINED, f"unexplained{computes}"))
    return attributions


@dataclasses.dataclass
class RadarResult:
    """What the radar found: the report, and on a GPU every profiled kernel attributed."""

    report: str
    attributions: list[Attribution] = dataclasses.field(default_factory=list)
    steps: int = 0
    device: str = "cpu"
    # GPU time of one step measured with CUDA events outside the profiler (kernels plus idle gaps).
    step_ms: float | None = None

    def totals_ms(self) -> dict[str, float]:
        """GPU kernel time per step in each category (``CATEGORIES``), ms."""
        totals = dict.fromkeys(CATEGORIES, 0.0)
        for attribution in self.attributions:
            totals[attribution.category] += attribution.row.gpu_us / 1e3 / self.steps
        return totals

    def summary(self, limit: int = 30) -> str:
        """The report, then (with a profile) the totals as shares of the step and the memory-bound kernels."""
        lines = [self.report, ""]
        if not self.attributions:
            lines.append(f"no GPU kernel profile on {self.device}: the radar profiles on a CUDA GPU; above is the "
                         "report alone (on CPU every supported shape fuses: the CUDA size rule is not applied)")
            return "\n".join(lines)
        totals = self.totals_ms()
        kernel_ms = sum(totals.values())
        step = f" of a {self.step_ms:.3f} ms step (the rest: GPU idle between kernels)" if self.step_ms else ""
        lines.append(f"GPU kernel time per step on {self.device}: {kernel_ms:.3f} ms{step}, {self.steps} steps profiled")
        for category, ms in totals.items():
            lines.append(f"  {category:<12} {ms:9.3f} ms {100 * ms / kernel_ms:6.1f}%")
        lines.append(f"  {'total':<12} {kernel_ms:9.3f} ms {100.0:6.1f}%")
        memory_bound = [a for a in self.attributions if a.category not in (GEMM, ATTENTION)]
        lines += ["", f"kernels outside GEMMs and attention, longest first ({len(memory_bound)}):",
                  f"  {'us/step':>9} {'share':>6} {'calls':>6}  kernel: mark"]
        for attribution in memory_bound[:limit]:
            row = attribution.row
            us = row.gpu_us / self.steps
            lines.append(f"  {us:9.1f} {100 * us / 1e3 / kernel_ms:5.1f}% {row.calls // self.steps:6d}  "
                         f"{row.name}: {attribution.explanation}")
        if len(memory_bound) > limit:
            lines.append(f"  ... {len(memory_bound) - limit} more")
        return "\n".join(lines)


def rows_from_profile(events: Iterable[Any]) -> list[KernelRow]:
    """Kernel rows from a ``torch.profiler`` profile's events (``prof.events()``): GPU events summed per name."""
    from torch.autograd import DeviceType

    gpu_us: collections.Counter[str] = collections.Counter()
    calls: collections.Counter[str] = collections.Counter()
    launchers: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for event in events:
        if event.device_type == DeviceType.CUDA:
            gpu_us[event.name] += event.time_range.elapsed_us()
            calls[event.name] += 1
        elif event.name.startswith("aten::"):
            for kernel in event.kernels:  # the kernels this CPU op launched
                launchers[kernel.name][event.name.removeprefix("aten::")] += 1
    return [
        KernelRow(name, gpu_us[name], calls[name],
                  launchers[name].most_common(1)[0][0] if launchers.get(name) else None)
        for name in gpu_us
    ]


def radar(
    module: Callable[..., Any],
    *args: Any,
    steps: int = 5,
    settings: FusionConfig | Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> RadarResult:
    """Compile ``module`` with the backend, call it with ``args``/``kwargs`` under ``torch.no_grad()``, profile
    ``steps`` calls on the GPU; the report and every kernel attributed (on CPU: the report alone)."""
    if steps < 1:
        raise ValueError(f"steps: expected at least 1, got {steps}")
    # Both device types: on CPU the report shows what the passes rewrite (the fused ops then run their reference).
    config = FusionConfig.from_value(settings if settings is not None else {"devices": ("cuda", "cpu")})
    compiled = torch.compile(module, backend=fusion_passes.backend_with(config))
    fusion_passes.reset_report()
    cuda = torch.cuda.is_available() and _on_cuda(module, args, kwargs)
    with torch.no_grad():
        with progress("radar: compiling with the fusion_passes backend and running"):
            compiled(*args, **kwargs)
        report = fusion_passes.report()
        result = RadarResult(report.summary(), device=torch.cuda.get_device_name() if cuda else "cpu")
        if not cuda:
            return result
        with progress(f"radar: timing {steps} steps, then profiling {steps}", total=2) as advance:
            compiled(*args, **kwargs)  # warm: autotuning and first-call work stay out of the profile
            torch.cuda.synchronize()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(steps):
                compiled(*args, **kwargs)
            end.record()
            end.synchronize()
            result.step_ms = start.elapsed_time(end) / steps
            advance()
            activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
            with torch.profiler.profile(activities=activities) as profile:
                for _ in range(steps):
                    compiled(*args, **kwargs)
                torch.cuda.synchronize()
            advance()
    result.attributions = attribute(rows_from_profile(profile.events()), report)
    result.steps = steps
    return result


def _on_cuda(module: Any, args: Sequence[Any], kwargs: Mapping[str, Any]) -> bool:
    # Whether the module's parameters or its tensor inputs live on a CUDA device.
    tensors = [*args, *kwargs.values()]
    if isinstance(module, torch.nn.Module):
        tensors += list(module.parameters())[:1]
    return any(isinstance(tensor, torch.Tensor) and tensor.is_cuda for tensor in tensors)


MODELS = ("flux", "qwen_image", "qwen_image_edit", "wan", "hunyuan_video", "qwen3_next")


def model_zoo() -> Any:
    """The checkout's ``examples/model_zoo.py`` (the model families' tiny and full-size configs)."""
    examples = Path(__file__).resolve().parents[1] / "examples"
    if not (examples / "model_zoo.py").exists():
        raise SystemExit(f"--model needs the checkout's examples/model_zoo.py (not found in {examples}); "
                         "give a module:function returning (module, inputs) instead")
    if str(examples) not in sys.path:
        sys.path.append(str(examples))
    return importlib.import_module("model_zoo")


def zoo_model(name: str, size: str, dtype: torch.dtype, device: str, **options: int | None) -> tuple[Any, Any]:
    """A model of the model zoo and its inputs; ``options`` (``layers``, ``single_layers``) where its builder takes them."""
    if name not in MODELS:
        raise ValueError(f"--model: expected one of {list(MODELS)}, got {name!r}")
    zoo = model_zoo()
    builder = getattr(zoo, name.removesuffix("_edit"))
    accepted = inspect.signature(builder).parameters
    extra = {key: value for key, value in options.items() if value is not None}
    refused = sorted(set(extra) - set(accepted))
    if refused:
        raise ValueError(f"--{refused[0].replace('_', '-')}: the {name} model takes no such option")
    if name.endswith("_edit"):
        extra["edit"] = True
    return zoo.build(builder, dtype, device, size=size, **extra)


def user_model(spec: str) -> tuple[Any, Any]:
    """``(module, inputs)`` from ``package.module:function``."""
    module_name, _, function_name = spec.partition(":")
    if not module_name or not function_name:
        raise ValueError(f"model: expected 'module:function' or --model NAME, got {spec!r}")
    # A module of the working directory, after installed packages (the checkout's kernels/ directory
    # must not shadow an installed package of that name).
    if os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())
    return getattr(importlib.import_module(module_name), function_name)()


def call_arguments(inputs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Positional and keyword arguments from a function's inputs: a dict (keywords), a tuple or list, or one value."""
    if isinstance(inputs, Mapping):
        return (), dict(inputs)
    if isinstance(inputs, (tuple, list)):
        return tuple(inputs), {}
    return (inputs,), {}


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def main(argv: list[str] | None = None) -> int:
    """The radar's command line; prints the report and, on a GPU, the attributed kernel profile."""
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(prog="python -m fusion_passes.radar", description=__doc__.splitlines()[0])
    parser.add_argument("function", nargs="?", help="module:function returning (module, inputs): inputs a dict "
                        "of keyword arguments, a tuple of positional ones, or one tensor")
    parser.add_argument("--model", choices=MODELS, help="a model of examples/model_zoo.py instead")
    parser.add_argument("--size", choices=("tiny", "full"), default="full" if cuda else "tiny",
                        help="the zoo model's dimensions (default: full where a GPU is present, else tiny)")
    parser.add_argument("--dtype", choices=DTYPES, default="bfloat16" if cuda else "float32",
                        help="the zoo model's dtype (default: bfloat16 where a GPU is present, else float32)")
    parser.add_argument("--layers", type=int, help="the zoo model's (double-stream) blocks (default: the size's)")
    parser.add_argument("--single-layers", type=int, help="the zoo model's single-stream blocks (FLUX, HunyuanVideo)")
    parser.add_argument("--steps", type=int, default=5, help="calls profiled (default: 5)")
    parser.add_argument("--limit", type=int, default=30, help="kernels listed (default: 30)")
    args = parser.parse_args(argv)
    if (args.function is None) == (args.model is None):
        parser.error("give either module:function or --model NAME")
    if args.model is not None:
        model, inputs = zoo_model(args.model, args.size, DTYPES[args.dtype], "cuda" if cuda else "cpu",
                                  layers=args.layers, single_layers=args.single_layers)
    else:
        model, inputs = user_model(args.function)
    positional, keywords = call_arguments(inputs)
    print(radar(model, *positional, steps=args.steps, **keywords).summary(limit=args.limit))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
