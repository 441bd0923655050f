"""Compile diffusers' FLUX transformer with the fusion_passes backend; print what fused and parity.

Tiny random config in fp32 on CPU by default; on a GPU, the full-size FLUX.1 dimensions
(C=3072, 24 heads x 128, 1024x1024 image: 4096 image + 512 text tokens) in bf16, random weights.
Outputs are compared with ``torch.compile`` alone; on a GPU both are also timed.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

import fusion_passes

# The GPU timing helpers live with the benchmarks (they are not part of the installed package).
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from timing import cuda_graph_ms  # noqa: E402

SIZES = {
    # name: (transformer config, image side in tokens (2x2-packed latents), text tokens)
    "tiny": (
        dict(num_layers=2, num_single_layers=2, attention_head_dim=32, num_attention_heads=4,
             joint_attention_dim=64, pooled_projection_dim=32, axes_dims_rope=(8, 12, 12)),
        4,
        8,
    ),
    "full": (
        dict(num_layers=19, num_single_layers=38, attention_head_dim=128, num_attention_heads=24,
             joint_attention_dim=4096, pooled_projection_dim=768, axes_dims_rope=(16, 56, 56)),
        64,
        512,
    ),
}
# Relative error of the backend's output against torch.compile alone that counts as a match.
PARITY = {torch.float32: 1e-4, torch.bfloat16: 3e-2, torch.float16: 1e-2}


def build(size: str, dtype: torch.dtype, device: str, layers: int | None, single_layers: int | None) -> tuple[Any, dict]:
    """A randomly initialized FLUX transformer and inputs for one denoising step."""
    from diffusers import FluxTransformer2DModel

    config, side, text_tokens = SIZES[size]
    config = dict(config, num_layers=layers if layers is not None else config["num_layers"],
                  num_single_layers=single_layers if single_layers is not None else config["num_single_layers"])
    torch.manual_seed(0)
    with torch.device(device):
        model = FluxTransformer2DModel(patch_size=1, in_channels=64 if size == "full" else 16,
                                       guidance_embeds=True, **config).to(dtype).eval()
    channels = model.config.in_channels
    tokens = side * side
    inputs = dict(
        hidden_states=torch.randn(1, tokens, channels),
        encoder_hidden_states=torch.randn(1, text_tokens, config["joint_attention_dim"]),
        pooled_projections=torch.randn(1, config["pooled_projection_dim"]),
        timestep=torch.rand(1),
        guidance=torch.full((1,), 3.5),
        img_ids=torch.randn(tokens, 3),
        txt_ids=torch.zeros(text_tokens, 3),
    )
    return model, {k: v.to(device=device, dtype=dtype) for k, v in inputs.items()}


def wall_ms(fn: Any, repeats: int = 10) -> float:
    """Median wall time of ``fn()`` in ms (host launches included), synchronizing the GPU."""
    fn()
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def graph_replay_ms(fn: Any) -> float:
    """Median GPU time of ``fn()`` in ms from CUDA-graph replays (host launch cost removed)."""
    return cuda_graph_ms(fn, calls_per_graph=1, replays=20)


def main() -> int:
    """Compile, report, compare; exit status 1 if outputs do not match."""
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=SIZES, default="full" if cuda else "tiny")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="bfloat16" if cuda else "float32")
    parser.add_argument("--layers", type=int, default=None, help="double-stream blocks (default: the size's)")
    parser.add_argument("--single-layers", type=int, default=None, help="single-stream blocks (default: the size's)")
    args = parser.parse_args()
    device = "cuda" if cuda else "cpu"
    dtype = getattr(torch, args.dtype)
    # On CPU the fused ops run their pure-torch reference, slower than Inductor's own C++ code;
    # the demo enables CPU anyway to show the rewrite. On CUDA the defaults apply.
    options = {"fusion_passes": {"devices": (device,)}}

    model, inputs = build(args.size, dtype, device, args.layers, args.single_layers)
    print(f"FLUX transformer, {args.size} size, {args.dtype} on {device}; torch {torch.__version__}")
    with torch.no_grad():
        started = time.perf_counter()
        fused_model = torch.compile(model, backend="fusion_passes", options=options)
        fused = fused_model(**inputs, return_dict=False)[0]
        print(f"compiled with backend='fusion_passes' in {time.perf_counter() - started:.1f} s")
        plain_model = torch.compile(model)
        started = time.perf_counter()
        plain = plain_model(**inputs, return_dict=False)[0]
        print(f"compiled with torch.compile alone in {time.perf_counter() - started:.1f} s")

        report = fusion_passes.report()
        print("\n" + report.summary() + "\n")
        print(f"fusions: {report.counts()}")
        error = ((fused.double() - plain.double()).norm() / plain.double().norm()).item()
        match = error < PARITY[dtype]
        print(f"outputs vs torch.compile alone: relative error {error:.2e} -> {'MATCH' if match else 'MISMATCH'}")
        if cuda:
            for label, timer in (("CUDA-graph replay", graph_replay_ms), ("wall, host launches", wall_ms)):
                fused_ms = timer(lambda: fused_model(**inputs, return_dict=False))
                plain_ms = timer(lambda: plain_model(**inputs, return_dict=False))
                print(f"step time ({label}): fusion_passes {fused_ms:.3f} ms, torch.compile alone "
                      f"{plain_ms:.3f} ms ({plain_ms / fused_ms:.3f}x)")
    return 0 if match else 1


if __name__ == "__main__":
    raise SystemExit(main())
