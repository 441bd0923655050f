"""GPU benchmark of the causal depthwise conv1d: the graph pattern, the packed varlen op, the floor.

Run on a CUDA machine: ``python benchmarks/bench_conv1d.py [--out DIR] [--sweep]`` (``--dry-run``
builds the cases, checks the eager references on CPU at a small width and prints the table with
no timings; it needs no GPU). bf16, C = 8192, K = 4, SiLU, no bias.

A. The pattern a model writes, ``silu(conv1d(x, w[:, None], padding=K - 1, groups=C)[..., :L])``,
   channel-last as Qwen3-Next (``x_blc.transpose(1, 2)``, output transposed back) and channel-first:
   eager vs Inductor alone vs the fusion_passes backend (default size rule, and forced) vs the raw
   kernel vs the memory floor; how many ``causal_conv1d`` fusions fired.
B. The packed varlen op (``conv1d.causal_conv1d_varlen``, token-major x ``x_tc.t()``) over single
   sequences and mixed packings, with and without ``max_seqlen``, against a per-sequence eager
   loop (S <= 16) and the floor; each call captured in a CUDA graph (replay == direct call, also
   after new data and new offsets are copied into the captured buffers) and run under
   ``torch.cuda.set_sync_debug_mode("error")``.
C. ``--sweep``: the raw dense kernel over launch configs (the default marked ``*``).

Every case is checked first against ``conv1d.reference`` in fp32, then timed with CUDA-graph
replay over rotating input sets. A failing column (e.g. the backend does not know the family) is
reported, never fatal. Rows stream to stdout as they finish and to ``DIR/conv1d.json`` (default
``$OUT``, else ./bench_out); the markdown table is printed last.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import functools
import json
import math
import os
import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
import triton
from bench_fusions import INPUT_SETS, compile_fresh, copy_bandwidth, relative_error, time_copy, time_cuda_graph

import fusion_passes
from fusion_passes.kernels import conv1d

CHANNELS = 8192
WIDTH = 4
FAMILY = "causal_conv1d"
ACTIVATION = "silu"
# Cases whose x has at least this many tokens get BIG_INPUT_SETS input sets (one x is 512 MiB at 32768).
BIG_TOKENS = 16384
BIG_INPUT_SETS = 2
# The eager per-sequence loop is timed only up to this many sequences.
EAGER_MAX_SEQUENCES = 16
# Relative error (bf16 output against the fp32 reference) above which a row is flagged.
TOLERANCE = 1e-2
# --dry-run checks the eager references on CPU at this width.
DRY_RUN_CHANNELS = 64
RESULTS_FILE = "conv1d.json"
DEVICE = "cuda"

T = TypeVar("T")
NAN = float("nan")


# --- The graph pattern (as the models write it) ----------------------------------------------------


def conv_silu_channel_first(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``silu(conv1d(x, w[:, None], padding=K - 1, groups=C)[..., :L])`` on x ``[B, C, L]``."""
    channels, width = weight.shape
    length = x.shape[-1]
    return F.silu(F.conv1d(x, weight.unsqueeze(1), None, padding=width - 1, groups=channels)[..., :length])


def conv_silu_channel_last(x_blc: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Qwen3-Next's spelling: x ``[B, L, C]`` transposed in, the same conv + SiLU, transposed back."""
    x = x_blc.transpose(1, 2)
    channels, width = weight.shape
    length = x.shape[-1]
    y = F.silu(F.conv1d(x, weight.unsqueeze(1), None, padding=width - 1, groups=channels)[..., :length])
    return y.transpose(1, 2)


def dense_call(x: torch.Tensor, weight: torch.Tensor) -> conv1d.CausalConv1d:
    """The kernel's dense call for the pattern: SiLU, no bias, the conv rounded to x's dtype as eager does."""
    return conv1d.CausalConv1d(x, weight, None, ACTIVATION, x.dtype, x.dtype)


def kernel_channel_first(x: torch.Tensor, weight: torch.Tensor, config: conv1d.LaunchConfig | None = None) -> torch.Tensor:
    """The pattern through the Triton kernel directly (x ``[B, C, L]``)."""
    return conv1d.causal_conv1d_triton(dense_call(x, weight), config)[0]


def kernel_channel_last(x_blc: torch.Tensor, weight: torch.Tensor, config: conv1d.LaunchConfig | None = None) -> torch.Tensor:
    """The channel-last pattern through the Triton kernel directly (its output transposes back as a view)."""
    return conv1d.causal_conv1d_triton(dense_call(x_blc.transpose(1, 2), weight), config)[0].transpose(1, 2)


@dataclasses.dataclass(frozen=True)
class DenseCase:
    """One dense shape in one layout: ``channel-last`` (x_blc ``[B, L, C]`` contiguous) or ``channel-first``."""

    layout: str
    batch: int
    length: int
    channels: int = CHANNELS
    width: int = WIDTH

    @property
    def channel_last(self) -> bool:
        """Whether x is the transpose of a contiguous ``[B, L, C]``."""
        return self.layout == "channel-last"

    @property
    def name(self) -> str:
        """The table's case name."""
        return f"A {self.layout}"

    @property
    def shape(self) -> tuple[int, int, int]:
        """x's logical shape ``[B, C, L]``."""
        return (self.batch, self.channels, self.length)

    @property
    def fn(self) -> Callable[..., torch.Tensor]:
        """The pattern in this layout."""
        return conv_silu_channel_last if self.channel_last else conv_silu_channel_first

    @property
    def kernel_fn(self) -> Callable[..., torch.Tensor]:
        """The raw kernel in this layout."""
        return kernel_channel_last if self.channel_last else kernel_channel_first

    @property
    def input_sets(self) -> int:
        """How many input sets to rotate (fewer for the big cases: L2 is long exceeded)."""
        return BIG_INPUT_SETS if self.batch * self.length >= BIG_TOKENS else INPUT_SETS

    def inputs(self, dtype: torch.dtype, device: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Fresh ``(x, weight)``: x as the pattern takes it (``[B, L, C]`` channel-last, else ``[B, C, L]``)."""
        size = (self.batch, self.length, self.channels) if self.channel_last else self.shape
        x = torch.randn(size, dtype=dtype, device=device)
        weight = torch.randn(self.channels, self.width, dtype=dtype, device=device) / math.sqrt(self.width)
        return x, weight

    def x_view(self, x: torch.Tensor) -> torch.Tensor:
        """x as ``[B, C, L]`` (a view)."""
        return x.transpose(1, 2) if self.channel_last else x

    def floor_bytes(self, dtype: torch.dtype) -> int:
        """x read once, out written once, the weight read once."""
        element = torch.finfo(dtype).bits // 8
        return element * (2 * self.batch * self.channels * self.length + self.channels * self.width)


def dense_reference(case: DenseCase, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``conv1d.reference`` in fp32 (no rounding before the SiLU), in the pattern's output shape."""
    call = conv1d.CausalConv1d(case.x_view(x).float(), weight.float(), None, ACTIVATION, torch.float32, torch.float32)
    out, _ = conv1d.reference(call)
    return out.transpose(1, 2) if case.channel_last else out


DENSE_CASES = [
    DenseCase(layout, batch, length)
    for layout in ("channel-last", "channel-first")
    for batch, length in ((1, 1), (1, 128), (1, 4096), (1, 32768), (8, 512))
]


# --- The packed varlen op ---------------------------------------------------------------------------


def varlen_kernel(
    x: torch.Tensor,
    weight: torch.Tensor,
    cu_seqlens: torch.Tensor,
    initial_states: torch.Tensor | None,
    has_initial_state: torch.Tensor | None,
    max_seqlen: int | None,
    validate: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``conv1d.causal_conv1d_varlen`` with SiLU, as a serving engine calls it."""
    return conv1d.causal_conv1d_varlen(
        x, weight, cu_seqlens, initial_states=initial_states, has_initial_state=has_initial_state,
        activation=ACTIVATION, max_seqlen=max_seqlen, validate=validate,
    )


def varlen_eager(
    x: torch.Tensor,
    weight: torch.Tensor,
    cu_seqlens: torch.Tensor,
    initial_states: torch.Tensor | None,
    has_initial_state: torch.Tensor | None,
    offsets: Sequence[int],
    flags: Sequence[bool],
) -> tuple[torch.Tensor, torch.Tensor]:
    """The loop an engine writes without the kernel: per sequence cat(state, x) + F.conv1d + SiLU (host offsets)."""
    channels, width = weight.shape
    history = width - 1
    out = torch.empty(x.shape[1], channels, dtype=x.dtype, device=x.device).t()
    finals = []
    for s in range(len(offsets) - 1):
        start, end = offsets[s], offsets[s + 1]
        if initial_states is not None and flags[s]:
            state = initial_states[s].to(x.dtype)
        else:
            state = x.new_zeros(channels, history)
        window = torch.cat([state, x[:, start:end]], dim=1)
        out[:, start:end] = F.silu(F.conv1d(window[None], weight[:, None, :], None, groups=channels))[0]
        finals.append(window[:, window.shape[1] - history:])
    return out, torch.stack(finals)


def random_lengths(sequences: int, total: int, seed: int) -> tuple[int, ...]:
    """``sequences`` random positive lengths summing to ``total`` (seeded)."""
    cuts = sorted(random.Random(seed).sample(range(1, total), sequences - 1))
    bounds = [0, *cuts, total]
    return tuple(b - a for a, b in zip(bounds, bounds[1:]))


@dataclasses.dataclass(frozen=True)
class VarlenCase:
    """One packing: sequence lengths, and which sequences start from an initial state (``none``, ``all``, ``half``)."""

    label: str
    lengths: tuple[int, ...]
    states: str = "none"
    channels: int = CHANNELS
    width: int = WIDTH

    @property
    def name(self) -> str:
        """The table's case name."""
        return f"B {self.label}"

    @property
    def sequences(self) -> int:
        """S."""
        return len(self.lengths)

    @property
    def total(self) -> int:
        """Packed tokens T."""
        return sum(self.lengths)

    @property
    def max_seqlen(self) -> int:
        """The longest sequence."""
        return max(self.lengths)

    @property
    def offsets(self) -> list[int]:
        """cu_seqlens on the host."""
        offsets = [0]
        for length in self.lengths:
            offsets.append(offsets[-1] + length)
        return offsets

    @property
    def flags(self) -> list[bool]:
        """has_initial_state on the host (all False without states; every other sequence for ``half``)."""
        if self.states == "none":
            return [False] * self.sequences
        return [self.states == "all" or s % 2 == 0 for s in range(self.sequences)]

    @property
    def input_sets(self) -> int:
        """How many input sets to rotate."""
        return BIG_INPUT_SETS if self.total >= BIG_TOKENS else INPUT_SETS

    @property
    def shape(self) -> str:
        """A short description of the packing for the table."""
        if len(set(self.lengths)) == 1:
            return f"C={self.channels} T={self.total} S={self.sequences}x{self.lengths[0]}"
        return f"C={self.channels} T={self.total} S={self.sequences} max={self.max_seqlen}"

    def inputs(self, dtype: torch.dtype, device: str) -> tuple[torch.Tensor | None, ...]:
        """Fresh ``(x [C, T] token-major, weight, cu_seqlens, initial_states, has_initial_state)``."""
        x_tc = torch.randn(self.total, self.channels, dtype=dtype, device=device)
        weight = torch.randn(self.channels, self.width, dtype=dtype, device=device) / math.sqrt(self.width)
        cu_seqlens = torch.tensor(self.offsets, dtype=torch.int32, device=device)
        if self.states == "none":
            return x_tc.t(), weight, cu_seqlens, None, None
        initial_states = torch.randn(self.sequences, self.channels, self.width - 1, dtype=dtype, device=device)
        has_initial_state = torch.tensor(self.flags, dtype=torch.bool, device=device)
        return x_tc.t(), weight, cu_seqlens, initial_states, has_initial_state

    def floor_bytes(self, dtype: torch.dtype) -> int:
        """x read, out written, the initial states used read, final states written, weight, offsets and flags read."""
        element = torch.finfo(dtype).bits // 8
        history = self.width - 1
        activations = 2 * self.total * self.channels
        states = (sum(self.flags) + self.sequences) * self.channels * history
        offsets = 4 * (self.sequences + 1) + (self.sequences if self.states != "none" else 0)
        return element * (activations + states + self.channels * self.width) + offsets


def varlen_reference(case: VarlenCase, args: tuple[torch.Tensor | None, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """``conv1d.reference`` in fp32: ``(out, final_states)``."""
    x, weight, cu_seqlens, initial_states, has_initial_state = args
    call = conv1d.CausalConv1d(
        x.float(), weight.float(), None, ACTIVATION, torch.float32, torch.float32, cu_seqlens,
        initial_states.float() if initial_states is not None else None, has_initial_state, case.max_seqlen,
    )
    out, final = conv1d.reference(call)
    return out, final


VARLEN_CASES = [
    *(VarlenCase(f"single L={length}", (length,)) for length in (1, 128, 4096, 32768)),
    VarlenCase("decode 64x1, states", (1,) * 64, "all"),
    VarlenCase("16 random (sum 8192), half states", random_lengths(16, 8192, seed=0), "half"),
    VarlenCase("16 random (sum 8192)", random_lengths(16, 8192, seed=0)),
    VarlenCase("16x512, half states", (512,) * 16, "half"),
    VarlenCase("prefill 4x8192", (8192,) * 4),
]


# --- Rows and the table --------------------------------------------------------------------------------


@dataclasses.dataclass
class Row:
    """One case's results (both parts; a column a part does not have stays NaN / None)."""

    part: str
    case: str
    shape: str
    floor_bytes: int
    eager_ms: float = NAN
    inductor_ms: float = NAN
    fused_ms: float = NAN
    forced_ms: float = NAN
    kernel_ms: float = NAN
    kernel_no_max_seqlen_ms: float = NAN
    copy_ms: float = NAN
    floor_ms: float = NAN
    fusions: int | None = None
    forced_fusions: int | None = None
    fusion_counts: dict[str, int] = dataclasses.field(default_factory=dict)
    rel_err: dict[str, float] = dataclasses.field(default_factory=dict)
    checks: dict[str, Any] = dataclasses.field(default_factory=dict)
    errors: dict[str, str] = dataclasses.field(default_factory=dict)

    @property
    def over_floor(self) -> float:
        """kernel / floor."""
        return ratio(self.kernel_ms, self.floor_ms)

    @property
    def speedup(self) -> float:
        """Inductor / fused."""
        return ratio(self.inductor_ms, self.fused_ms)

    def flagged(self) -> list[str]:
        """Names of the relative errors over TOLERANCE and of the failed checks."""
        bad = [name for name, value in self.rel_err.items() if not value <= TOLERANCE]
        return bad + [name for name, value in self.checks.items() if value is False]


def ratio(numerator: float, denominator: float) -> float:
    """numerator / denominator, NaN where either is missing or the denominator is 0."""
    if math.isnan(numerator) or math.isnan(denominator) or denominator == 0:
        return NAN
    return numerator / denominator


def ms_cell(row: Row, column: str) -> str:
    """A ms column: ``err`` if it failed, ``-`` if not measured."""
    if column in row.errors:
        return "err"
    value = getattr(row, f"{column}_ms")
    return "-" if math.isnan(value) else f"{value:.4f}"


def number_cell(value: float, suffix: str = "", digits: int = 2) -> str:
    """A float, or ``-`` for NaN."""
    return "-" if math.isnan(value) else f"{value:.{digits}f}{suffix}"


def error_cell(row: Row, name: str) -> str:
    """A relative error, or ``-``."""
    value = row.rel_err.get(name)
    return "-" if value is None else f"{value:.1e}"


def fires_cell(row: Row) -> str:
    """Fusions fired ``default/forced`` (``-`` where not compiled, ``err`` where compiling failed)."""
    def one(count: int | None, key: str) -> str:
        """One count, or its error."""
        return "err" if key in row.errors else ("-" if count is None else str(count))

    if row.part != "A":
        return "-"
    return f"{one(row.fusions, 'fused')}/{one(row.forced_fusions, 'forced')}"


def checks_cell(row: Row) -> str:
    """``ok`` where every check passed, else the failed check names; ``-`` with no checks."""
    if "case" in row.errors:
        return "CASE FAILED"
    if not row.checks:
        return "-"
    failed = [name for name, value in row.checks.items() if value is False]
    return "ok" if not failed else "FAIL " + ",".join(failed)


TABLE_HEADER = (
    "| case | shape | eager ms | Inductor ms | fused ms | fires | forced ms | kernel ms | kernel ms, no max_seqlen "
    "| copy ms | floor ms | kernel/floor | Inductor/fused | rel err kernel | rel err fused | graph/sync |"
)


def format_table(rows: Sequence[Row]) -> str:
    """The markdown table, one line per row."""
    lines = [TABLE_HEADER, "|" + "---|" * (TABLE_HEADER.count("|") - 1)]
    for r in rows:
        lines.append(
            f"| {r.case} | {r.shape} | {ms_cell(r, 'eager')} | {ms_cell(r, 'inductor')} | {ms_cell(r, 'fused')} | "
            f"{fires_cell(r)} | {ms_cell(r, 'forced')} | {ms_cell(r, 'kernel')} | {ms_cell(r, 'kernel_no_max_seqlen')} | "
            f"{ms_cell(r, 'copy')} | {number_cell(r.floor_ms, digits=4)} | {number_cell(r.over_floor)} | "
            f"{number_cell(r.speedup, 'x')} | {error_cell(r, 'kernel')} | {error_cell(r, 'fused')} | {checks_cell(r)} |"
        )
    return "\n".join(lines)


# --- Measuring -------------------------------------------------------------------------------------------


def attempt(row: Row, key: str, thunk: Callable[[], T]) -> T | None:
    """``thunk()``, or None with the error recorded in ``row.errors[key]`` (a failing column is never fatal)."""
    try:
        return thunk()
    except Exception as error:  # noqa: BLE001 - reported in the row and the table
        row.errors[key] = f"{type(error).__name__}: {error}"[:1000]
        return None


def measure(row: Row, column: str, fn: Callable[..., object], input_sets: Sequence[tuple]) -> None:
    """Set ``row.<column>_ms`` to the CUDA-graph-replay time of ``fn`` (or record why it failed)."""
    if column in row.errors:
        return
    ms = attempt(row, column, lambda: time_cuda_graph(fn, input_sets))
    if ms is not None:
        setattr(row, f"{column}_ms", ms)


def time_floor_copy(row: Row, floor_bytes: int, n_sets: int) -> None:
    """Set ``row.copy_ms``: a Triton copy moving the floor's bytes (half read, half written), launch included."""
    ms = attempt(row, "copy", lambda: time_copy(floor_bytes // 2, n_sets))
    if ms is not None:
        row.copy_ms = ms


def check(row: Row, name: str, fn: Callable[..., object], args: tuple, ref: torch.Tensor | tuple) -> bool:
    """Run ``fn`` once and record its relative error against ``ref``; False (error recorded) if it raised."""
    err = attempt(row, name, lambda: relative_error(fn(*args), ref))
    if err is not None:
        row.rel_err[name] = err
    return err is not None


def compile_and_check(row: Row, key: str, case: DenseCase, args: tuple, ref: torch.Tensor, size_rule: bool) -> Callable | None:
    """Compile the pattern with the fusion_passes backend, run it once, record its error and fusions."""
    fusion_passes.reset_report()
    compiled = attempt(row, key, lambda: compile_fresh(case.fn, "fusion_passes", size_rule=size_rule))
    if compiled is None or not check(row, key, compiled, args, ref):
        return None
    counts = fusion_passes.report().counts()
    if size_rule:
        row.fusions, row.fusion_counts = counts.get(FAMILY, 0), counts
    else:
        row.forced_fusions = counts.get(FAMILY, 0)
        row.checks["forced fires"] = row.forced_fusions > 0
    return compiled


def bench_dense(case: DenseCase, bandwidth: float, dtype: torch.dtype) -> Row:
    """Check, then time, one dense case (part A)."""
    row = Row("A", case.name, f"{list(case.shape)}", case.floor_bytes(dtype))
    input_sets = [case.inputs(dtype, DEVICE) for _ in range(case.input_sets)]
    args = input_sets[0]
    ref = dense_reference(case, *args)
    check(row, "eager", case.fn, args, ref)
    check(row, "kernel", case.kernel_fn, args, ref)
    torch._dynamo.reset()
    inductor = attempt(row, "inductor", lambda: compile_fresh(case.fn, "inductor"))
    if inductor is not None:
        check(row, "inductor", inductor, args, ref)
    fused = compile_and_check(row, "fused", case, args, ref, size_rule=True)
    del ref
    measure(row, "eager", case.fn, input_sets)
    if inductor is not None:
        measure(row, "inductor", inductor, input_sets)
    if fused is not None:
        measure(row, "fused", fused, input_sets)
    measure(row, "kernel", case.kernel_fn, input_sets)
    time_floor_copy(row, case.floor_bytes(dtype), len(input_sets))
    # The same graph with the size rule lifted: what firing here costs.
    torch._dynamo.reset()
    forced = compile_and_check(row, "forced", case, args, dense_reference(case, *args), size_rule=False)
    if forced is not None:
        measure(row, "forced", forced, input_sets)
    torch._dynamo.reset()
    row.floor_ms = case.floor_bytes(dtype) / bandwidth * 1e3
    return row


def graph_replay_checks(case: VarlenCase, args: tuple, max_seqlen: int | None) -> dict[str, Any]:
    """Capture the varlen call in a CUDA graph; replay == direct call, also after new x and reversed offsets are copied in."""
    x, weight, cu_seqlens, initial_states, has_initial_state = args
    static = (x.clone(), weight, cu_seqlens.clone(),
              initial_states.clone() if initial_states is not None else None, has_initial_state)

    def call() -> tuple[torch.Tensor, torch.Tensor]:
        """The call on the static buffers."""
        return varlen_kernel(*static, max_seqlen=max_seqlen)

    call()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = call()
    graph.replay()
    torch.cuda.synchronize()
    direct = call()
    same = all(torch.equal(a, b) for a, b in zip(captured, direct, strict=True))
    # New data in the captured buffers, and the packing reversed (same total and max_seqlen): the
    # replay must read both from the device.
    reversed_case = dataclasses.replace(case, lengths=tuple(reversed(case.lengths)))
    static[0].copy_(torch.randn_like(static[0]))
    static[2].copy_(torch.tensor(reversed_case.offsets, dtype=cu_seqlens.dtype, device=cu_seqlens.device))
    graph.replay()
    torch.cuda.synchronize()
    direct = call()
    same_new = all(torch.equal(a, b) for a, b in zip(captured, direct, strict=True))
    err_new = relative_error(tuple(t.clone() for t in captured), varlen_reference(reversed_case, static))
    del graph
    return {"replay == direct": same, "replay == direct, new data and offsets": same_new,
            "replay rel err, new data and offsets": err_new}


def sync_error(fn: Callable[[], object]) -> str | None:
    """None if ``fn()`` ran under ``torch.cuda.set_sync_debug_mode("error")`` without raising, else the error."""
    fn()  # compiled and warm outside the check
    torch.cuda.synchronize()
    try:
        torch.cuda.set_sync_debug_mode("error")
        try:
            fn()
        except Exception as error:  # noqa: BLE001 - the point of the check
            return f"{type(error).__name__}: {error}"[:500]
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    return None


def no_host_sync_checks(row: Row, case: VarlenCase, args: tuple, control: bool) -> None:
    """CUDA-graph capture and sync-debug checks for both max_seqlen choices; ``control``: validate=True must raise."""
    for label, max_seqlen in (("max_seqlen", case.max_seqlen), ("no max_seqlen", None)):
        results = attempt(row, f"graph ({label})", lambda max_seqlen=max_seqlen: graph_replay_checks(case, args, max_seqlen))
        for name, value in (results or {}).items():
            if isinstance(value, bool):
                row.checks[f"{name} ({label})"] = value
            else:
                row.rel_err[f"{name} ({label})"] = value
        error = attempt(row, f"sync debug ({label})",
                        lambda max_seqlen=max_seqlen: sync_error(lambda: varlen_kernel(*args, max_seqlen=max_seqlen)))
        row.checks[f"no sync ({label})"] = error is None and f"sync debug ({label})" not in row.errors
        if error is not None:
            row.errors[f"sync debug ({label})"] = error
    if control:
        # The positive control: validate=True reads the offsets on the host, so the mode must catch it.
        error = attempt(row, "sync debug (validate=True)",
                        lambda: sync_error(lambda: varlen_kernel(*args, max_seqlen=case.max_seqlen, validate=True)))
        row.checks["sync debug catches validate=True"] = error is not None
        row.checks["sync debug (validate=True) said"] = error


def bench_varlen(case: VarlenCase, bandwidth: float, dtype: torch.dtype, control: bool = False) -> Row:
    """Check, then time, one packing (part B)."""
    row = Row("B", case.name, case.shape, case.floor_bytes(dtype))
    input_sets = [case.inputs(dtype, DEVICE) for _ in range(case.input_sets)]
    args = input_sets[0]
    ref = varlen_reference(case, args)
    kernel = functools.partial(varlen_kernel, max_seqlen=case.max_seqlen)
    unbounded = functools.partial(varlen_kernel, max_seqlen=None)
    eager = functools.partial(varlen_eager, offsets=case.offsets, flags=case.flags)
    check(row, "kernel", kernel, args, ref)
    check(row, "kernel_no_max_seqlen", unbounded, args, ref)
    timed_eager = case.sequences <= EAGER_MAX_SEQUENCES
    if timed_eager:
        check(row, "eager", eager, args, ref)
    del ref
    no_host_sync_checks(row, case, args, control)
    measure(row, "kernel", kernel, input_sets)
    measure(row, "kernel_no_max_seqlen", unbounded, input_sets)
    if timed_eager:
        measure(row, "eager", eager, input_sets)
    time_floor_copy(row, case.floor_bytes(dtype), len(input_sets))
    row.floor_ms = case.floor_bytes(dtype) / bandwidth * 1e3
    return row


# --- Launch-config sweep ------------------------------------------------------------------------------------


def sweep_configs_for(channel_last: bool) -> list[conv1d.LaunchConfig]:
    """Tiles long along x's contiguous dim (channels for channel-last, tokens for channel-first), 4 or 8 warps."""
    configs = []
    for contiguous in (128, 256, 512):
        for other in (4, 8, 16):
            for num_warps in (4, 8):
                channels, tokens = (contiguous, other) if channel_last else (other, contiguous)
                configs.append(conv1d.LaunchConfig(channels, tokens, num_warps))
    return configs


SWEEP_LENGTHS = (4096, 32768)


def sweep(layout: str, length: int, dtype: torch.dtype, bandwidth: float) -> list[dict[str, Any]]:
    """The raw kernel on ``[1, C, length]`` in ``layout`` over launch configs (the default included and marked)."""
    case = DenseCase(layout, 1, length)
    input_sets = [case.inputs(dtype, DEVICE) for _ in range(case.input_sets)]
    default = conv1d.launch_config(case.channels, length, case.channel_last)
    configs = sweep_configs_for(case.channel_last)
    configs += [default] if default not in configs else []
    reference = dense_reference(case, *input_sets[0])
    results = []
    for config in configs:
        result = {"layout": layout, "shape": list(case.shape), "config": dataclasses.astuple(config),
                  "default": config == default, "ms": NAN, "error": None}
        try:
            # Every config is checked before it is timed: a fast wrong config must not win.
            result["rel_err"] = relative_error(case.kernel_fn(*input_sets[0], config=config), reference)
            if not result["rel_err"] < TOLERANCE:
                raise ValueError(f"rel err {result['rel_err']:.1e} against the fp32 reference")
            result["ms"] = time_cuda_graph(functools.partial(case.kernel_fn, config=config), input_sets)
        except Exception as error:  # noqa: BLE001 - one config failing must not end the sweep
            result["error"] = f"{type(error).__name__}: {error}"[:500]
        result["over_floor"] = ratio(result["ms"], case.floor_bytes(dtype) / bandwidth * 1e3)
        results.append(result)
    return results


def sweep_lines(results: Sequence[dict[str, Any]]) -> list[str]:
    """Per layout and shape: the 6 fastest configs (block_channels/block_tokens/warps: us), the default's time."""
    lines = []
    keys = sorted({(r["layout"], tuple(r["shape"])) for r in results})
    for layout, shape in keys:
        timed = sorted((r for r in results if r["layout"] == layout and tuple(r["shape"]) == shape and not math.isnan(r["ms"])),
                       key=lambda r: r["ms"])
        best = " ".join(
            f"{'/'.join(map(str, r['config']))}:{r['ms'] * 1e3:.1f}{'*' if r['default'] else ''}" for r in timed[:6]
        )
        tail = ""
        for rank, r in enumerate(timed, start=1):
            if r["default"]:
                tail = (f"; default {'/'.join(map(str, r['config']))} {r['ms'] * 1e3:.1f} us "
                        f"({r['over_floor']:.2f}x floor), rank {rank}/{len(timed)}")
        failed = sum(1 for r in results if r["layout"] == layout and tuple(r["shape"]) == shape and r["error"])
        lines.append(f"sweep {layout} {list(shape)} channels/tokens/warps:us {best}{tail}"
                     + (f"; {failed} configs failed" if failed else ""))
    return lines


# --- Driver -------------------------------------------------------------------------------------------------


def guarded(bench: Callable[[], Row], fallback: Row) -> Row:
    """``bench()``, or ``fallback`` with the error recorded where the case itself failed (inputs, reference, OOM)."""
    try:
        return bench()
    except Exception as error:  # noqa: BLE001 - one case failing must not lose the others
        fallback.errors["case"] = f"{type(error).__name__}: {error}"[:1000]
        torch._dynamo.reset()
        return fallback


def default_out_dir() -> Path:
    """``$OUT`` if set, else ./bench_out."""
    return Path(os.environ["OUT"]) if os.environ.get("OUT") else Path("bench_out")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None,
                        help=f"directory for {RESULTS_FILE} (default $OUT, else ./bench_out; --dry-run writes only with --out)")
    parser.add_argument("--sweep", action="store_true", help="also sweep the raw kernel's launch configs (part C)")
    parser.add_argument("--sweep-only", action="store_true", help="only the sweep")
    parser.add_argument("--no-dense", action="store_true", help="skip part A (the graph pattern)")
    parser.add_argument("--no-varlen", action="store_true", help="skip part B (the varlen op)")
    parser.add_argument("--dry-run", action="store_true",
                        help="no GPU: build the cases, check the eager references on CPU, print the table untimed")
    return parser.parse_args(argv)


def metadata(bandwidth: float, dtype: torch.dtype) -> dict[str, Any]:
    """Device, versions, date, bandwidth and the fixed settings."""
    return {
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu (dry run)",
        "torch": torch.__version__,
        "triton": triton.__version__,
        "cuda": torch.version.cuda,
        "date": datetime.date.today().isoformat(),
        "copy_bandwidth_TBps": bandwidth / 1e12,
        "dtype": str(dtype),
        "channels": CHANNELS,
        "width": WIDTH,
        "activation": ACTIVATION,
        "family": FAMILY,
    }


def write_results(out: Path, meta: dict[str, Any], rows: Sequence[Row], sweep_results: Sequence[dict], seconds: float) -> Path:
    """Write everything so far to ``out/conv1d.json`` (after every row: a timeout keeps what was done)."""
    out.mkdir(parents=True, exist_ok=True)
    payload = {"meta": {**meta, "elapsed_s": seconds}, "rows": [dataclasses.asdict(r) for r in rows], "sweep": list(sweep_results)}
    path = out / RESULTS_FILE
    path.write_text(json.dumps(payload, indent=1, default=str))
    return path


def report_lines(rows: Sequence[Row]) -> list[str]:
    """The errors and failed checks of every row, one line each."""
    lines = []
    for r in rows:
        for key, message in r.errors.items():
            lines.append(f"error {r.case} {r.shape} [{key}]: {message.splitlines()[0] if message else ''}")
        flagged = r.flagged()
        if flagged:
            lines.append(f"FLAGGED {r.case} {r.shape}: {', '.join(flagged)} (rel err > {TOLERANCE} or a failed check)")
        said = r.checks.get("sync debug (validate=True) said")
        if said:
            lines.append(f"sync debug caught validate=True (positive control): {said.splitlines()[0]}")
    return lines


def no_sync_lines(rows: Sequence[Row]) -> list[str]:
    """Per packing: whether the CUDA-graph replays matched the direct calls and the sync-debug runs raised nothing."""
    lines = []
    for r in rows:
        if r.part != "B":
            continue
        graph = [value for name, value in r.checks.items() if name.startswith("replay")]
        sync = [value for name, value in r.checks.items() if name.startswith("no sync")]
        replay_err = max((v for k, v in r.rel_err.items() if k.startswith("replay")), default=NAN)
        lines.append(
            f"no host sync {r.case} ({r.shape}): CUDA-graph replay == direct call {sum(graph)}/{len(graph)} "
            f"(replay with new data and offsets vs fp32 reference: rel err {replay_err:.1e}); "
            f"set_sync_debug_mode('error') raised nothing {sum(sync)}/{len(sync)}"
        )
    return lines


def dry_run(args: argparse.Namespace) -> None:
    """No GPU: the cases, their floor bytes, the eager references against conv1d.reference on CPU, the table untimed."""
    torch.manual_seed(0)
    dtype = torch.bfloat16
    checks = {}
    for case in (DENSE_CASES[1], DENSE_CASES[4], DENSE_CASES[5], DENSE_CASES[9]):
        small = dataclasses.replace(case, channels=DRY_RUN_CHANNELS)
        x, weight = small.inputs(torch.float32, "cpu")
        name = f"{small.name} {list(small.shape)} eager vs reference"
        checks[name] = relative_error(small.fn(x, weight), dense_reference(small, x, weight))
    for case in VARLEN_CASES[:2] + VARLEN_CASES[4:6]:
        small = dataclasses.replace(case, channels=DRY_RUN_CHANNELS)
        inputs = small.inputs(torch.float32, "cpu")
        eager = varlen_eager(*inputs, offsets=small.offsets, flags=small.flags)
        checks[f"{small.name} eager loop vs reference"] = relative_error(eager, varlen_reference(small, inputs))
    for name, value in checks.items():
        print(f"dry-run check {name}: rel err {value:.1e}" + ("" if value < 1e-5 else "  <-- MISMATCH"))
    rows = [Row("A", c.name, f"{list(c.shape)}", c.floor_bytes(dtype)) for c in DENSE_CASES]
    rows += [Row("B", c.name, c.shape, c.floor_bytes(dtype)) for c in VARLEN_CASES]
    for r in rows:
        print(f"case {r.case} {r.shape}: floor {r.floor_bytes} bytes")
    layouts = ("channel-last", "channel-first")
    sweep_shapes = [(layout, length, len(sweep_configs_for(layout == "channel-last"))) for layout in layouts for length in SWEEP_LENGTHS]
    print("sweep plan (layout, L, configs):", sweep_shapes)
    if args.out is not None:
        print(f"wrote {write_results(args.out, metadata(NAN, dtype), rows, [], 0.0)}")
    print(format_table(rows))


def main(argv: Sequence[str] | None = None) -> None:
    """Run the parts asked for, stream rows, write JSON to --out, print the table last."""
    args = parse_args(argv)
    if args.dry_run:
        dry_run(args)
        return
    if not torch.cuda.is_available():
        raise SystemExit("bench_conv1d: needs a CUDA device (--dry-run works without one)")
    out = args.out if args.out is not None else default_out_dir()
    started = time.perf_counter()
    torch.manual_seed(0)
    # Every compile runs the passes (an FX-graph-cache hit would skip them and hide what fired).
    torch._inductor.config.force_disable_caches = True
    dtype = torch.bfloat16
    bandwidth = copy_bandwidth()
    meta = metadata(bandwidth, dtype)
    print(json.dumps(meta), flush=True)
    rows: list[Row] = []
    sweep_results: list[dict] = []

    def record(row: Row) -> None:
        """Keep, print and save one finished row."""
        rows.append(row)
        print("row", json.dumps(dataclasses.asdict(row), default=str), flush=True)
        write_results(out, meta, rows, sweep_results, time.perf_counter() - started)

    if not args.sweep_only:
        for case in [] if args.no_dense else DENSE_CASES:
            fallback = Row("A", case.name, f"{list(case.shape)}", case.floor_bytes(dtype))
            record(guarded(lambda case=case: bench_dense(case, bandwidth, dtype), fallback))
        for index, case in enumerate([] if args.no_varlen else VARLEN_CASES):
            fallback = Row("B", case.name, case.shape, case.floor_bytes(dtype))
            record(guarded(lambda case=case, index=index: bench_varlen(case, bandwidth, dtype, control=index == 0), fallback))
    if args.sweep or args.sweep_only:
        for layout in ("channel-last", "channel-first"):
            for length in SWEEP_LENGTHS:
                try:
                    sweep_results += sweep(layout, length, dtype, bandwidth)
                except Exception as error:  # noqa: BLE001 - the table still comes out
                    print(f"sweep {layout} L={length} failed: {type(error).__name__}: {error}", flush=True)
                write_results(out, meta, rows, sweep_results, time.perf_counter() - started)
    elapsed = time.perf_counter() - started
    path = write_results(out, meta, rows, sweep_results, elapsed)
    for line in sweep_lines(sweep_results) + no_sync_lines(rows) + report_lines(rows):
        print(line)
    print(f"wrote {path}; {elapsed:.0f} s; copy bandwidth {bandwidth / 1e12:.2f} TB/s; "
          f"{meta['device']}, torch {meta['torch']}, triton {meta['triton']}")
    print(format_table(rows))


if __name__ == "__main__":
    main()
