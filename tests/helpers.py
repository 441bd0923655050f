"""What the tests share: dtype tolerances, the error measure, the fp64 comparison and the graph-diff check."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from expecttest import TestCase
from graph_capture import Capture, capture

# A kernel (or its reference) against an fp64 computation of the same call: one rounding at the store.
KERNEL_TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 2e-3}
# A compiled graph's outputs against its source run in fp64: the unfused graph's own rounding
# points (a half-precision norm's output, a rounded residual) add to the store's.
COMPILED_TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 2e-3}


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """``||out - ref|| / ||ref||``, in fp64."""
    return ((out.double() - ref.double()).norm() / ref.double().norm()).item()


def as_tuple(value: Any) -> tuple[Any, ...]:
    """A function's outputs as a tuple (one output or several)."""
    return value if isinstance(value, tuple) else (value,)


def to_fp64(value: Any) -> Any:
    """A floating-point tensor in fp64 (complex in complex128); anything else as it is."""
    if not isinstance(value, torch.Tensor):
        return value
    if value.is_complex():
        return value.to(torch.complex128)
    return value.double() if value.is_floating_point() else value


def assert_matches_fp64(result: Capture, fn: Callable[..., Any], args: Sequence[Any], dtype: torch.dtype) -> None:
    """Each compiled output within ``dtype``'s tolerance of ``fn`` run on fp64 copies of ``args`` (same shapes)."""
    reference = fn(*map(to_fp64, args))
    for out, ref in zip(as_tuple(result.output), as_tuple(reference), strict=True):
        assert out.shape == ref.shape, (out.shape, ref.shape)
        error = relative_error(out, ref)
        assert error < COMPILED_TOLERANCE[dtype], error


class GraphDiffTest(TestCase):
    """Graph-diff tests: each spelling's post-grad graph before and after the passes, pinned with
    ``assertExpectedInline``, and the rewritten graph's numerics against fp64."""

    def fused(self, result: Capture) -> Any:
        """What ``check`` compares with its ``expected``: by default the fusions per family."""
        return result.report.counts()

    def check(self, fn: Callable[..., Any], args: Sequence[Any], dtype: torch.dtype, expected: Any) -> Capture:
        """Capture ``fn``'s graphs on CPU; assert the fusions and the numerics (the tests pin the text)."""
        result = capture(fn, *args)
        self.assertEqual(self.fused(result), expected)
        assert_matches_fp64(result, fn, args, dtype)
        return result


def randn(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Fresh random values (never zeros: they hide unwritten outputs)."""
    return torch.randn(*shape, dtype=dtype)


def fused_patterns(result: Capture, family: str) -> list[str]:
    """The pattern names of ``family``'s fusions in a capture."""
    return [record.pattern for record in result.report.fused if record.fusion == family]


def near_miss_reasons(result: Capture, family: str) -> list[str]:
    """The reasons of ``family``'s near misses in a capture."""
    return [miss.reason for miss in result.report.near_misses if miss.fusion == family]
