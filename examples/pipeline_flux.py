"""Generate an image with diffusers' FluxPipeline, its transformer blocks compiled by the fusion_passes backend.

The pipeline is built from configs with random weights (no download): the FLUX transformer, the
FLUX autoencoder and the flow-matching scheduler; random text embeddings are passed as
``prompt_embeds`` in place of the CLIP and T5 encoders. ``pipe.transformer.compile_repeated_blocks(
backend="fusion_passes")`` compiles each block class once (regional compilation). Prints what
fused, how far the image is from the one generated with the blocks compiled by Inductor alone, and
the seconds per image of the whole pipeline (denoising loop and decoding) eager, with Inductor
alone and with the backend. Tiny in fp32 on CPU by default; where a GPU is present, full size in
bf16 (1024x1024, 28 steps).
"""

from __future__ import annotations

import common
import model_zoo

EXAMPLE = common.Example(
    title="FLUX.1 pipeline",
    builder=model_zoo.flux_pipeline,
    options={
        "layers": (int, "double-stream blocks"),
        "single_layers": (int, "single-stream blocks"),
        "pixels": (int, "image side in pixels"),
        "steps": (int, "denoising steps"),
    },
    call=common.pipeline_output,
    output="image",
)


def main(argv: list[str] | None = None) -> int:
    """Generate, report, compare, time; exit status 1 if the image does not match torch.compile alone's."""
    return common.run_pipeline(EXAMPLE, argv)


if __name__ == "__main__":
    raise SystemExit(main())
