"""Compile transformers' Qwen3-Next (hybrid LLM) with the fusion_passes backend; print what fused, parity, step time.

Its gated delta net's causal conv1d + SiLU, its zero-centred RMSNorms ``norm(x) * (1 + w)`` and its
full attention's partial rotary embedding fuse. Tiny random config (a gated delta net layer, then
a full attention layer) in fp32 on CPU by default; where a GPU is present, Qwen3-Next-80B-A3B's
dimensions (C=2048, 512 experts) cut to 4 of its 48 layers (three gated delta nets, one full
attention; about 14 GB) in bf16, random weights, on a 2048-token prefill. Without the
``causal_conv1d`` package the model runs its torch convolution, which is what fuses.
"""

from __future__ import annotations

import common
import model_zoo

EXAMPLE = common.Example(
    title="Qwen3-Next model",
    builder=model_zoo.qwen3_next,
    options={
        "layers": (int, "decoder layers (every 4th is full attention at the full size, every 2nd tiny)"),
        "tokens": (int, "prompt tokens"),
    },
    call=common.transformers_output,
)


def main(argv: list[str] | None = None) -> int:
    """Compile, report, compare, time; exit status 1 if outputs do not match torch.compile alone."""
    return common.run(EXAMPLE, argv)


if __name__ == "__main__":
    raise SystemExit(main())
