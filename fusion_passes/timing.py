"""GPU timing by CUDA-graph replay, shared by the benchmarks and the demo."""

from __future__ import annotations

import statistics
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
