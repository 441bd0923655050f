"""Generate a video with diffusers' WanPipeline (Wan 2.1), its transformer blocks compiled by the fusion_passes backend.

The pipeline is built from configs with random weights (no download): the Wan transformer, the
Wan autoencoder and the UniPC flow-matching scheduler; random text embeddings (and negative ones,
for classifier-free guidance) are passed as ``prompt_embeds`` in place of the UMT5 encoder.
``pipe.transformer.compile_repeated_blocks(backend="fusion_passes")`` compiles the block class once
(regional compilation). Prints what fused, how far the video is from the one generated with the
blocks compiled by Inductor alone, and the seconds per video of the whole pipeline eager, with
Inductor alone and with the backend. Tiny in fp32 on CPU by default; where a GPU is present,
Wan 2.1 1.3B in bf16 (81 frames of 480x832, 50 steps).
"""

from __future__ import annotations

import common
import model_zoo

EXAMPLE = common.Example(
    title="Wan 2.1 pipeline",
    builder=model_zoo.wan_pipeline,
    options={
        "layers": (int, "transformer blocks"),
        "video": (str, "video size in pixels, FRAMESxHEIGHTxWIDTH"),
        "steps": (int, "denoising steps"),
    },
    call=common.pipeline_output,
    output="video",
)


def main(argv: list[str] | None = None) -> int:
    """Generate, report, compare, time; exit status 1 if the video does not match torch.compile alone's."""
    return common.run_pipeline(EXAMPLE, argv)


if __name__ == "__main__":
    raise SystemExit(main())
