"""What the per-chain GPU benchmarks share: CUDA-graph timing over rotated input sets, the copy
floor (the bytes a chain must move, at the measured copy bandwidth), the fp64 error and fresh compiles."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import triton
import triton.language as tl

from timing import cuda_graph_ms

INPUT_SETS = 4
CALLS_PER_GRAPH = 8
REPLAYS = 30


@triton.jit
def _copy_kernel(src_ptr, dst_ptr, n, BLOCK: tl.constexpr):
    offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < n
    tl.store(dst_ptr + offsets, tl.load(src_ptr + offsets, mask=mask), mask=mask)


def time_copy(n_bytes: int, n_sets: int) -> float:
    """Median ms of a Triton copy of ``n_bytes`` (the practical floor: same bytes, launch included)."""
    pairs = [(torch.empty(n_bytes // 4, device="cuda").normal_(), torch.empty(n_bytes // 4, device="cuda")) for _ in range(n_sets)]
    block = 4096

    def copy(src: torch.Tensor, dst: torch.Tensor) -> None:
        _copy_kernel[(triton.cdiv(src.numel(), block),)](src, dst, src.numel(), BLOCK=block, num_warps=8)

    return time_cuda_graph(copy, pairs)


def copy_bandwidth() -> float:
    """Device-to-device copy bandwidth in bytes/s (read plus written): the best of torch and Triton copies."""
    src = torch.randn(1 << 28, device="cuda")
    dst = torch.empty_like(src)
    block = 4096

    def triton_copy() -> None:
        _copy_kernel[(triton.cdiv(src.numel(), block),)](src, dst, src.numel(), BLOCK=block, num_warps=8)

    seconds = min(time_cuda_graph(fn, [()]) for fn in (lambda: dst.copy_(src), triton_copy)) / 1e3
    return 2 * src.numel() * src.element_size() / seconds


def time_cuda_graph(fn: Callable[..., object], input_sets: Sequence[tuple]) -> float:
    """Median ms of one ``fn`` call (CUDA-graph replay, rotating ``input_sets``)."""
    return cuda_graph_ms(fn, input_sets, calls_per_graph=CALLS_PER_GRAPH, replays=REPLAYS)


def relative_error(out: torch.Tensor | tuple, ref: torch.Tensor | tuple) -> float:
    """||out - ref|| / ||ref|| in fp64 (over all outputs of a tuple)."""
    outs, refs = (out, ref) if isinstance(out, tuple) else ((out,), (ref,))
    error = sum((o.double() - r).norm() ** 2 for o, r in zip(outs, refs, strict=True)) ** 0.5
    return (error / sum(r.norm() ** 2 for r in refs) ** 0.5).item()


def compile_fresh(fn: Callable, backend: str, size_rule: bool = True) -> Callable:
    """A compiled ``fn`` with static shapes; ``size_rule=False`` makes our pass fire at any size."""
    options = {"fusion_passes": {"size_rule": size_rule}} if backend == "fusion_passes" else None
    return torch.compile(fn, backend=backend, dynamic=False, options=options)
