"""The ``fusion_passes`` torch.compile backend, and the ways to add the passes to the stock one."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch

from fusion_passes.compat import compile_fx, inductor_config, inductor_config_patches
from fusion_passes.config import OPTIONS_KEY, FusionConfig
from fusion_passes.pass_manager import FusionPassManager, as_pass_list
from fusion_passes.report import GLOBAL_REPORT, reporting_cache_hits

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
    inductor_options = dict(options or {})
    config = FusionConfig.from_value(inductor_options.pop(OPTIONS_KEY, None))
    # Inductor's own wrapper validates option names and expands mode= into config patches.
    patches = {**launch_patches(), **inductor_config_patches(mode, inductor_options)}
    chained = passes_besides_ours(config, patches.get(HOOK, getattr(inductor_config, HOOK)), "backend='fusion_passes'")
    patches[HOOK] = FusionPassManager(config, chained=chained)
    if not patches.get("use_post_grad_passes", getattr(inductor_config, "use_post_grad_passes", True)):
        warnings.warn(
            f"fusion_passes: Inductor's post-grad passes are off in this compile (mode={mode!r} or "
            "use_post_grad_passes=False), so no fusion runs; use another mode for the fusions",
            stacklevel=2,
        )

    with reporting_cache_hits(GLOBAL_REPORT):
        return compile_fx(gm, example_inputs, config_patches=patches)


def backend_with(settings: FusionConfig | Mapping[str, Any] | None = None) -> Callable[..., Any]:
    """The backend with our ``settings`` bound: ``torch.compile(m, backend=backend_with(settings), mode=...)``."""
    # torch.compile refuses mode= together with options=, where our settings would otherwise travel.
    config = FusionConfig.from_value(settings)

    def backend(
        gm: torch.fx.GraphModule, example_inputs: list[Any], *, mode: str | None = None, options: Mapping[str, Any] | None = None
    ) -> Any:
        if options is not None and OPTIONS_KEY in options:
            raise ValueError(
                f"options[{OPTIONS_KEY!r}]: expected no settings here, got {options[OPTIONS_KEY]!r}; "
                f"backend_with() already holds {config!r}"
            )
        return fusion_passes_backend(gm, example_inputs, mode=mode, options={**(options or {}), OPTIONS_KEY: config})

    backend.__name__ = backend.__qualname__ = "fusion_passes_backend_with"
    return backend


def passes_besides_ours(config: FusionConfig, hook: Any, where: str) -> tuple[Any, ...]:
    """The passes in Inductor's ``hook`` value to chain before ours, with our own pass (installed by an
    enclosing ``enabled()`` or ``inductor_options()``) left out, so that the passes run once.

    Our pass installed with other settings is an error: which settings apply would be a guess.
    """
    chained = []
    for graph_pass in as_pass_list(hook):
        if not isinstance(graph_pass, FusionPassManager):
            chained.append(graph_pass)
            continue
        if graph_pass.config != config:
            raise ValueError(
                f"{where}: fusion_passes is already installed in torch._inductor.config.{HOOK} (by "
                f"fusion_passes.enabled() or inductor_options()) with {graph_pass.config!r}, and would run twice; "
                f"expected it installed once, or with the same settings, got {config!r} here"
            )
        chained.extend(graph_pass.chained)
    return tuple(chained)


def inductor_options(config: FusionConfig | Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Options for the stock backend: ``torch.compile(m, options=fusion_passes.inductor_options())``."""
    config = FusionConfig.from_value(config)
    chained = passes_besides_ours(config, getattr(inductor_config, HOOK), "inductor_options()")
    return {**launch_patches(), HOOK: FusionPassManager(config, chained=chained)}


@contextlib.contextmanager
def enabled(config: FusionConfig | Mapping[str, Any] | None = None) -> Iterator[FusionPassManager]:
    """Install the passes in Inductor's global config for graphs compiled (or loaded from its cache) inside the ``with``."""
    config = FusionConfig.from_value(config)
    manager = FusionPassManager(config, chained=passes_besides_ours(config, getattr(inductor_config, HOOK), "enabled()"))
    with inductor_config.patch({**launch_patches(), HOOK: manager}), reporting_cache_hits(manager.report):
        yield manager
