"""Compile diffusers' Qwen-Image transformer (or, with --edit, the edit model) with the fusion_passes backend.

Prints what fused, parity with torch.compile alone and time per step. Tiny random config (one
block) in fp32 on CPU by default; where a GPU is present, Qwen-Image's dimensions (20B: C=3072,
24 heads x 128, 60 blocks; 1024x1024 image: 4096 image + 512 text tokens) in bf16, random weights
(about 41 GB; ``--layers`` shortens it). ``--edit`` builds the edit model (``zero_cond_t=True``):
a reference image follows the target image and each token chooses between two modulation sets,
which the fused ops read as they are.
"""

from __future__ import annotations

import common
import model_zoo

EXAMPLE = common.Example(
    title="Qwen-Image transformer",
    builder=model_zoo.qwen_image,
    options={
        "edit": (bool, "the edit model (zero_cond_t=True, a reference image after the target)"),
        "layers": (int, "transformer blocks"),
        "pixels": (int, "image side in pixels (16 per token side)"),
    },
)


def main(argv: list[str] | None = None) -> int:
    """Compile, report, compare, time; exit status 1 if outputs do not match torch.compile alone."""
    return common.run(EXAMPLE, argv)


if __name__ == "__main__":
    raise SystemExit(main())
