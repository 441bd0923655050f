"""The ``fusion_passes`` torch.compile backend, and the ways to add the passes to the stock one."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch._dynamo.utils import counters
from torch._inductor import config as inductor_config

from fusion_passes.config import OPTIONS_KEY, FusionConfig
from fusion_passes.pass_manager import FusionPassManager
from fusion_passes.report import GLOBAL_REPORT, GraphReport

HOOK = "post_grad_custom_post_pass"


def launch_patches() -> dict[str, Any]:
    """Inductor settings under which it launches our kernels at the cost of its own.

    Inductor's C++ launcher (Triton's own is Python and slower per call) takes user-defined
    kernels only when asked to; where it cannot take one it falls back to Triton's launcher. The
    setting covers the compiled graph's other user-defined kernels too.
    """
    name = "static_launch_user_defined_triton_kernels"
    return {name: True} if hasattr(inductor_config, name) else {}


def fusion_passes_backend(
    gm: torch.fx.GraphModule,
    example_inputs: list[Any],
    *,
    mode: str | None = None,
    options: Mapping[str, Any] | None = None,
) -> Any:
    """Inductor with our passes; ``mode``/``options`` as for Inductor, our settings under ``options["fusion_passes"]``."""
    from torch._inductor.compile_fx import compile_fx

    inductor_options = dict(options or {})
    config = FusionConfig.from_value(inductor_options.pop(OPTIONS_KEY, None))
    # Inductor's own wrapper validates option names and expands mode= into config patches.
    patches = {**launch_patches(), **torch._TorchCompileInductorWrapper(mode, inductor_options, dynamic=None).config}
    patches[HOOK] = FusionPassManager(config, chained=patches.get(HOOK, getattr(inductor_config, HOOK)))
    if not patches.get("use_post_grad_passes", getattr(inductor_config, "use_post_grad_passes", True)):
        warnings.warn(
            f"fusion_passes: Inductor's post-grad passes are off in this compile (mode={mode!r} or "
            "use_post_grad_passes=False), so no fusion runs; use another mode for the fusions",
            stacklevel=2,
        )

    graphs_before = len(GLOBAL_REPORT.graphs)
    hits_before = counters["inductor"]["fxgraph_cache_hit"]
    compiled = compile_fx(gm, example_inputs, config_patches=patches)
    if counters["inductor"]["fxgraph_cache_hit"] > hits_before and len(GLOBAL_REPORT.graphs) == graphs_before:
        compile_id = torch._guards.CompileContext.current_compile_id()
        GLOBAL_REPORT.add(GraphReport(graph_id=str(compile_id), cache_hit=True))
    return compiled


def inductor_options(config: FusionConfig | Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Options for the stock backend: ``torch.compile(m, options=fusion_passes.inductor_options())``."""
    manager = FusionPassManager(FusionConfig.from_value(config), chained=getattr(inductor_config, HOOK))
    return {**launch_patches(), HOOK: manager}


@contextlib.contextmanager
def enabled(config: FusionConfig | Mapping[str, Any] | None = None) -> Iterator[FusionPassManager]:
    """Install the passes in Inductor's global config for graphs compiled inside the ``with``."""
    manager = FusionPassManager(FusionConfig.from_value(config), chained=getattr(inductor_config, HOOK))
    with inductor_config.patch({**launch_patches(), HOOK: manager}):
        yield manager
