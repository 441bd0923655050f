"""GPU benchmark: one whole-model denoise step (the transformer forward), eager vs Inductor alone vs fusion_passes.

Run on a CUDA machine: ``python benchmarks/bench_denoise.py [--cases flux:1024,qwen_image:1024,wan:81x480x832] [--out DIR]``.
Each transformer is built at its full published depth and width (random weights, bf16, made on
the GPU), its repeated blocks compiled in place with ``compile_repeated_blocks`` (regional
compilation, as diffusers recommends), and one step timed back to back without CUDA graphs
(torch.compile's default mode): eager, Inductor alone, the fusion_passes backend. Parity is the
backend's relative error against Inductor alone. A table goes to stdout (last).
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
from bench_blocks import build_full_size, first_tensor, relative_error

import fusion_passes
from fusion_passes.progress import progress
from timing import back_to_back_ms

DEFAULT_CASES = "flux:1024,qwen_image:1024,wan:81x480x832"


def step_ms(model: torch.nn.Module, inputs: dict[str, Any]) -> tuple[float, torch.Tensor]:
    """Median ms of one forward without CUDA graphs, and its output."""
    with torch.no_grad():
        out = first_tensor(model(**inputs, return_dict=False))
        return back_to_back_ms(lambda: model(**inputs, return_dict=False), calls=2, windows=3), out


def bench_case(model_name: str, size: str) -> dict[str, Any]:
    """Eager, Inductor alone and the backend on one model at one size."""
    with progress("  building the full-depth model (random weights)"):
        model, inputs = build_full_size(model_name, size, full_depth=True)
    row: dict[str, Any] = {"case": f"{model_name}:{size}", "params_b": sum(p.numel() for p in model.parameters()) / 1e9}
    with progress("  timing eager"):
        row["eager_ms"], _ = step_ms(model, inputs)
    outs = {}
    for route in ("inductor", "fusion_passes"):
        torch._dynamo.reset()
        fusion_passes.reset_report()
        started = time.perf_counter()
        with progress(f"  {route}: compiling the repeated blocks (regional compile) in a first step"):
            if route == "inductor":
                model.compile_repeated_blocks()
            else:
                model.compile_repeated_blocks(backend="fusion_passes")
            with torch.no_grad():
                model(**inputs, return_dict=False)
        row[f"{route}_compile_s"] = time.perf_counter() - started
        with progress(f"  {route}: timing"):
            row[f"{route}_ms"], outs[route] = step_ms(model, inputs)
        if route == "fusion_passes":
            row["fusions"] = fusion_passes.report().counts()
    row["speedup"] = row["inductor_ms"] / row["fusion_passes_ms"]
    row["rel_err_vs_inductor"] = relative_error(outs["fusion_passes"], outs["inductor"])
    del model, inputs, outs
    gc.collect()
    torch.cuda.empty_cache()
    return row


def main() -> None:
    """Time each case; print the table last, write JSON to --out."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=DEFAULT_CASES, help="model:size, comma-separated")
    parser.add_argument("--out", type=Path, default=None)
    options = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench_denoise.py needs a CUDA GPU")
    torch._inductor.config.force_disable_caches = True
    rows = []
    cases = options.cases.split(",")
    for number, case in enumerate(cases, 1):
        model_name, size = case.split(":")
        print(f"bench_denoise: case {number} of {len(cases)}, {case}", file=sys.stderr, flush=True)
        rows.append(bench_case(model_name, size))
        print(json.dumps(rows[-1]), flush=True)
    if options.out is not None:
        options.out.mkdir(parents=True, exist_ok=True)
        record = {"date": datetime.date.today().isoformat(), "device": torch.cuda.get_device_name(),
                  "torch": torch.__version__, "rows": rows}
        (options.out / "bench_denoise.json").write_text(json.dumps(record, indent=1))
    print(f"\n{torch.cuda.get_device_name()}, torch {torch.__version__}, bf16, no CUDA graphs, regional compile")
    print(f"{'case':24} {'params':>7} {'eager ms':>9} {'Inductor ms':>12} {'ours ms':>9} {'speedup':>8} {'rel err':>8}")
    for row in rows:
        print(f"{row['case']:24} {row['params_b']:6.1f}B {row['eager_ms']:9.1f} {row['inductor_ms']:12.1f} "
              f"{row['fusion_passes_ms']:9.1f} {row['speedup']:7.3f}x {row['rel_err_vs_inductor']:8.1e}")


if __name__ == "__main__":
    main()
