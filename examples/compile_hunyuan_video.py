"""Compile diffusers' HunyuanVideo transformer with the fusion_passes backend; print what fused, parity, time per step.

Tiny random config (one block of each kind) in fp32 on CPU by default; where a GPU is present,
HunyuanVideo's dimensions (13B: C=3072, 24 heads x 128, 20 double-stream + 40 single-stream
blocks; 61 frames of 544x960: 32640 video + 256 text tokens) in bf16, random weights (about
26 GB; ``--layers 2 --single-layers 4`` shortens it).
"""

from __future__ import annotations

import common
import model_zoo

EXAMPLE = common.Example(
    title="HunyuanVideo transformer",
    builder=model_zoo.hunyuan_video,
    options={
        "layers": (int, "double-stream blocks"),
        "single_layers": (int, "single-stream blocks"),
        "video": (str, "video size in pixels, FRAMESxHEIGHTxWIDTH"),
    },
)


def main(argv: list[str] | None = None) -> int:
    """Compile, report, compare, time; exit status 1 if outputs do not match torch.compile alone."""
    return common.run(EXAMPLE, argv)


if __name__ == "__main__":
    raise SystemExit(main())
