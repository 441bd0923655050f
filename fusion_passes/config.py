"""User settings of the passes, and how they travel inside torch.compile's ``options`` dict."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import torch

# The key under which our settings travel in torch.compile(..., options={...}).
OPTIONS_KEY = "fusion_passes"

KNOWN_DEVICES = ("cuda", "cpu")


@dataclasses.dataclass(frozen=True)
class FusionConfig:
    """Which fusions run, and on which devices.

    ``fusions``: names of the fusion families to apply; None means all of them.
    ``devices``: device types whose graphs are rewritten. Only CUDA has Triton kernels; on CPU the
    fused ops run their pure-torch reference, which is slower than Inductor's own C++ code, so CPU
    is for tests and demonstrations only.
    ``size_rule``: on CUDA, fuse only shapes where the fused op was measured faster than Inductor
    alone (docs/BENCHMARKS.md). False fuses every shape the kernel supports (for benchmarking).
    """

    fusions: tuple[str, ...] | None = None
    devices: tuple[str, ...] = ("cuda",)
    size_rule: bool = True

    def __post_init__(self) -> None:
        from fusion_passes.registry import families

        if self.fusions is not None:
            object.__setattr__(self, "fusions", _names("fusions", self.fusions))
            unknown = sorted(set(self.fusions) - set(families()))
            if unknown:
                raise ValueError(f"fusions: unknown names {unknown}; expected some of {sorted(families())}")
        if not isinstance(self.size_rule, bool):
            raise TypeError(f"size_rule: expected a bool, got {type(self.size_rule).__name__}")
        # A device may be named with an index ("cuda:0") or given as a torch.device: its type counts.
        devices = _names("devices", self.devices, torch.device)
        object.__setattr__(self, "devices", tuple(dict.fromkeys(_device_type(device) for device in devices)))
        unknown_devices = sorted(set(self.devices) - set(KNOWN_DEVICES))
        if unknown_devices:
            raise ValueError(f"devices: unknown device types {unknown_devices}; expected some of {list(KNOWN_DEVICES)}")

    def enabled_fusions(self) -> tuple[str, ...]:
        """Names of the enabled families, in application order."""
        from fusion_passes.registry import families

        return tuple(name for name in families() if self.fusions is None or name in self.fusions)

    @classmethod
    def from_value(cls, value: FusionConfig | Mapping[str, Any] | None) -> FusionConfig:
        """A config from a FusionConfig, a dict of its fields, or None (defaults)."""
        if value is None:
            return cls()
        if isinstance(value, FusionConfig):
            return value
        if isinstance(value, Mapping):
            fields = {field.name for field in dataclasses.fields(cls)}
            unknown = sorted(set(value) - fields)
            if unknown:
                raise ValueError(f"options[{OPTIONS_KEY!r}]: unknown keys {unknown}; expected some of {sorted(fields)}")
            return cls(**value)
        raise TypeError(
            f"options[{OPTIONS_KEY!r}]: expected a FusionConfig or a dict, got {type(value).__name__}"
        )


def _names(setting: str, value: Any, *also: type) -> tuple[Any, ...]:
    # One name (a string, or one of ``also``) or an iterable of them, as a tuple.
    if isinstance(value, (str, *also)):
        return (value,)
    try:
        names = tuple(value)
    except TypeError:
        raise TypeError(f"{setting}: expected a name or a list of names, got {type(value).__name__}") from None
    for name in names:
        if not isinstance(name, (str, *also)):
            raise TypeError(f"{setting}: expected names (str), got {type(name).__name__} {name!r}")
    return names


def _device_type(device: str | torch.device) -> str:
    try:
        return torch.device(device).type
    except RuntimeError:
        return str(device)  # reported as an unknown device type
