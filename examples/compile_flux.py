"""Compile diffusers' FLUX transformer with the fusion_passes backend; print what fused, parity and time per step.

Tiny random config (one block of each kind) in fp32 on CPU by default; where a GPU is present,
the full-size FLUX.1 dimensions (C=3072, 24 heads x 128, 19 + 38 blocks; 1024x1024 image: 4096
image + 512 text tokens) in bf16, random weights (about 24 GB; ``--layers 2 --single-layers 4``
shortens it).
"""

from __future__ import annotations

import common
import model_zoo

EXAMPLE = common.Example(
    title="FLUX transformer",
    builder=model_zoo.flux,
    options={
        "layers": (int, "double-stream blocks"),
        "single_layers": (int, "single-stream blocks"),
        "pixels": (int, "image side in pixels (16 per token side)"),
    },
)


def main(argv: list[str] | None = None) -> int:
    """Compile, report, compare, time; exit status 1 if outputs do not match torch.compile alone."""
    return common.run(EXAMPLE, argv)


if __name__ == "__main__":
    raise SystemExit(main())
