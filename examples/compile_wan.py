"""Compile diffusers' Wan 2.1 video transformer with the fusion_passes backend; print what fused, parity, time per step.

Tiny random config (one block) in fp32 on CPU by default; where a GPU is present, Wan 2.1 T2V
1.3B's dimensions (C=1536, 12 heads x 128, 30 blocks; 81 frames of 480x832: 32760 video + 512
text tokens) in bf16, random weights.
"""

from __future__ import annotations

import common
import model_zoo

EXAMPLE = common.Example(
    title="Wan 2.1 transformer",
    builder=model_zoo.wan,
    options={
        "layers": (int, "transformer blocks"),
        "video": (str, "video size in pixels, FRAMESxHEIGHTxWIDTH"),
    },
)


def main(argv: list[str] | None = None) -> int:
    """Compile, report, compare, time; exit status 1 if outputs do not match torch.compile alone."""
    return common.run(EXAMPLE, argv)


if __name__ == "__main__":
    raise SystemExit(main())
