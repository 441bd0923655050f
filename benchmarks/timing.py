"""GPU timing (CUDA-graph replay, back-to-back calls, host time per call), shared by the benchmarks and the demo."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence

import torch


def cuda_graph_ms(
    fn: Callable[..., object],
    input_sets: Sequence[tuple] = ((),),
    calls_per_graph: int = 8,
    replays: int = 30,
) -> float:
    """Median ms of one ``fn`` call from CUDA-graph replays; the calls rotate over ``input_sets``.

    Rotating several input sets keeps the L2 cache from holding the working set; replaying a
    captured graph removes host launch cost, so this is GPU time.
    """
    for args in input_sets:
        fn(*args)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    calls = max(calls_per_graph, len(input_sets))
    with torch.cuda.graph(graph):
        for call in range(calls):
            fn(*input_sets[call % len(input_sets)])
    graph.replay()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(replays):
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / calls)
    return statistics.median(times)


def back_to_back_ms(fn: Callable[..., object], args: Sequence = (), calls: int = 50, windows: int = 5) -> float:
    """Median ms per call of back-to-back calls without CUDA graphs, synchronized per window.

    What a default-mode torch.compile user sees: GPU time where the GPU is the bottleneck, host
    time where the host is.
    """
    times = []
    for _ in range(windows):
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(calls):
            fn(*args)
        torch.cuda.synchronize()
        times.append((time.perf_counter() - start) / calls * 1e3)
    return statistics.median(times)


def host_ms(fn: Callable[..., object], args: Sequence = (), calls: int = 20, windows: int = 5) -> float:
    """Median ms of host time per call: calls issued while a long GPU sleep keeps the GPU busy."""
    times = []
    for _ in range(windows):
        torch.cuda.synchronize()
        torch.cuda._sleep(1_000_000_000)  # about half a second of GPU time: longer than issuing the calls
        start = time.perf_counter()
        for _ in range(calls):
            fn(*args)
        times.append((time.perf_counter() - start) / calls * 1e3)
        torch.cuda.synchronize()
    return statistics.median(times)
