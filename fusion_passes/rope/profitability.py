"""The CUDA size rule: where a legal group is fused because the fused op was measured faster.

Measured against Inductor alone on an H200 (docs/BENCHMARKS.md): with real tables, Inductor fuses
a rotation alone into one kernel near the memory floor (ours measured 0.89-0.93x), and with a norm
the fused op wins from 256 x 24 x 128 elements per stream group (1.35x) but loses at
64 x 24 x 128 (0.73x). Complex chains run as eager kernels under Inductor: fused at every size
(1.9-4.2x measured).
"""

from __future__ import annotations

from fusion_passes.kernels import rope as rope_kernels
from fusion_passes.rope.nodes import value_of
from fusion_passes.rope.streams import Group

MIN_CUDA_ELEMENTS = 1 << 19


def _reads_complex_tables(group: Group) -> bool:
    return any(
        value_of(table.node).is_complex() for rotation in group.rotations for table in (rotation.cos, rotation.sin)
    )


def cuda_size_rule(group: Group, call: rope_kernels.Rope) -> str | None:
    """Why fusing ``group`` (as ``call``) on CUDA would be slower than Inductor alone, or None."""
    if _reads_complex_tables(group):
        return None
    if not group.normed:
        why = f" ({group.unabsorbed_norm_reason})" if group.unabsorbed_norm_reason else ""
        return f"a rotation with real tables and no norm absorbed{why}: Inductor's own kernel was measured faster on CUDA"
    elements = sum(stream.x.numel() for stream in call.streams)
    if elements < MIN_CUDA_ELEMENTS:
        return f"the streams have {elements} elements, below the measured CUDA break-even {MIN_CUDA_ELEMENTS}"
    return None
