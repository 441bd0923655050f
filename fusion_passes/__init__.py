"""Inductor fusion passes for diffusion-transformer and LLM chains.

``torch.compile(model, backend="fusion_passes")`` compiles with Inductor plus these passes;
``fusion_passes.report()`` says what fused.
"""

import importlib.metadata

from fusion_passes.backend import backend_with, enabled, fusion_passes_backend, inductor_options
from fusion_passes.config import OPTIONS_KEY, FusionConfig
from fusion_passes.kernels.conv1d import causal_conv1d_varlen
from fusion_passes.pass_manager import FusionPassManager
from fusion_passes.registry import families
from fusion_passes.report import GLOBAL_REPORT, FusionReport, GraphReport, report_unwatched_cache_hits

try:
    __version__ = importlib.metadata.version("fusion-passes")
except importlib.metadata.PackageNotFoundError:  # a checkout on sys.path, not installed
    __version__ = "0+unknown"


def report() -> FusionReport:
    """The report of every graph compiled with the passes (or loaded from the FX graph cache) since the last ``reset_report()``."""
    report_unwatched_cache_hits(GLOBAL_REPORT)
    return GLOBAL_REPORT


def reset_report() -> None:
    """Forget what the global report holds (cache hits not yet reported too)."""
    report_unwatched_cache_hits(FusionReport())
    GLOBAL_REPORT.clear()


__all__ = [
    "__version__",
    "OPTIONS_KEY",
    "FusionConfig",
    "FusionPassManager",
    "FusionReport",
    "GraphReport",
    "backend_with",
    "causal_conv1d_varlen",
    "enabled",
    "families",
    "fusion_passes_backend",
    "inductor_options",
    "report",
    "reset_report",
]
