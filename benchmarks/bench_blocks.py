"""GPU benchmark: whole transformer blocks, Inductor alone vs the fusion_passes backend, at several sizes.

Run on a CUDA machine: ``python benchmarks/bench_blocks.py [--cases flux:1024,wan:81x480x832] [--out DIR]``.
Each model is built with its full-size dimensions and one block of each kind (random weights,
bf16) at the case's resolution; one eager forward records each block's inputs. Each block is then
compiled alone with ``torch.compile`` (Inductor) and with ``backend="fusion_passes"`` (default
settings, size rule on), checked for parity, and timed three ways: CUDA-graph replay, back-to-back
calls without CUDA graphs (torch.compile's default mode), and host time per call. A table goes to
stdout (last).
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path
from typing import Any

import torch

import fusion_passes
import plots
from fusion_passes.progress import progress
from timing import back_to_back_ms, cuda_graph_ms, host_ms

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import model_zoo  # noqa: E402


# One block of each kind at the full-size dimensions (examples/model_zoo.py).
BLOCK_MODELS = {
    "flux": (model_zoo.flux, dict(layers=1, single_layers=1)),
    "qwen_image": (model_zoo.qwen_image, dict(layers=1)),
    "qwen_image_edit": (model_zoo.qwen_image, dict(layers=1, edit=True)),
    "wan": (model_zoo.wan, dict(layers=1)),
}
# The sizes users run: small and full resolutions.
DEFAULT_CASES = "flux:256,flux:512,flux:1024,qwen_image:512,qwen_image:1024,wan:17x256x256,wan:81x480x832"


def build_full_size(model_name: str, size: str, full_depth: bool = False) -> tuple[torch.nn.Module, dict[str, Any]]:
    """``model_name`` at its full-size widths in bf16 on the GPU, one block of each kind (or its full
    depth), and one step's inputs at ``size``: a video ``FxHxW`` or an image side in pixels."""
    if model_name not in BLOCK_MODELS:
        raise SystemExit(f"--cases: expected a model in {sorted(BLOCK_MODELS)}, got {model_name!r}")
    builder, options = BLOCK_MODELS[model_name]
    if full_depth:  # the block benchmark's options without its depth of one block per kind
        options = {name: value for name, value in options.items() if not name.endswith("layers")}
    resolution = dict(video=size) if "x" in size else dict(pixels=int(size))
    return model_zoo.build(builder, torch.bfloat16, "cuda", size="full", **options, **resolution)


def record_block_inputs(model: torch.nn.Module, inputs: dict[str, Any]) -> dict[str, tuple[torch.nn.Module, tuple, dict]]:
    """One block of each repeated class with the args and kwargs it saw in an eager forward."""
    blocks: dict[str, tuple[torch.nn.Module, tuple, dict]] = {}
    handles = []
    for module in model.modules():
        if type(module).__name__ in (model._repeated_blocks or []):

            def hook(block, args, kwargs, name=type(module).__name__):
                blocks.setdefault(name, (block, args, kwargs))

            handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))
    with torch.no_grad():
        model(**inputs, return_dict=False)
    for handle in handles:
        handle.remove()
    return blocks


def first_tensor(value: Any) -> torch.Tensor:
    return value if isinstance(value, torch.Tensor) else first_tensor(value[-1] if isinstance(value, tuple) else value[0])


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.double() - ref.double()).norm() / ref.double().norm()).item()


def bench_block(name: str, block: torch.nn.Module, args: tuple, kwargs: dict) -> dict[str, Any]:
    """Compile one block both ways, check parity, time both with and without CUDA graphs."""
    torch._dynamo.reset()
    fusion_passes.reset_report()
    inductor = torch.compile(block)
    fused = torch.compile(block, backend="fusion_passes")
    row: dict[str, Any] = {"block": name}
    with torch.no_grad():
        with progress(f"  {name}: compiling with Inductor alone"):
            plain_out = first_tensor(inductor(*args, **kwargs))
        torch._dynamo.reset()
        with progress(f"  {name}: compiling with backend='fusion_passes'"):
            fused_out = first_tensor(fused(*args, **kwargs))
        report = fusion_passes.report()
        with progress(f"  {name}: timing (CUDA graphs, no graphs, host) both ways", total=6) as advance:
            for label, fn in (("inductor", inductor), ("fused", fused)):
                call = lambda fn=fn: fn(*args, **kwargs)  # noqa: E731
                for key, timer in (("ms", lambda: cuda_graph_ms(call, calls_per_graph=4, replays=20)),
                                   ("no_graph_ms", lambda: back_to_back_ms(call, calls=20)),
                                   ("host_ms", lambda: host_ms(call, calls=10))):
                    row[f"{label}_{key}"] = timer()
                    advance()
    return {
        **row,
        "speedup": row["inductor_ms"] / row["fused_ms"],
        "speedup_no_graph": row["inductor_no_graph_ms"] / row["fused_no_graph_ms"],
        "fusions": report.counts(),
        "near_misses": [f"{miss.source}: {miss.reason}" for miss in report.near_misses],
        "rel_err_vs_inductor": relative_error(fused_out, plain_out),
    }


def main() -> None:
    """Benchmark the chosen models' blocks at the chosen sizes; print the table last, write JSON to --out."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=DEFAULT_CASES, help="model:size, comma-separated")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench_blocks.py needs a CUDA GPU")
    torch._inductor.config.force_disable_caches = True
    rows = []
    cases = args.cases.split(",")
    for number, case in enumerate(cases, 1):
        model_name, size = case.split(":")
        with progress(f"case {number} of {len(cases)}, {case}: building one block of each kind and recording their inputs"):
            model, inputs = build_full_size(model_name, size)
            blocks = record_block_inputs(model, inputs)
        for block_name, (block, block_args, block_kwargs) in blocks.items():
            row = bench_block(block_name, block, block_args, block_kwargs)
            rows.append({"model": model_name, "size": size, **row})
            print(json.dumps(rows[-1]), flush=True)
            if args.out:  # kept up to date: a run cut short still leaves its rows
                args.out.mkdir(parents=True, exist_ok=True)
                (args.out / "blocks.json").write_text(json.dumps({"rows": rows}, indent=1))
        del model
        torch.cuda.empty_cache()
    meta = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "date": datetime.date.today().isoformat()}
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "blocks.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
        if plots.has_matplotlib():  # an optional extra: the chart is drawn where it is installed
            print(f"wrote {plots.write_block_speedups(args.out / 'blocks.json', args.out / 'blocks-speedup.png')}")
    print(json.dumps(meta))
    print("| model | size | block | CUDA graphs: Inductor ms | ours ms | speedup | no graphs: Inductor ms | ours ms | speedup "
          "| host ms: Inductor / ours | fusions | rel err |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['size']} | {r['block']} | {r['inductor_ms']:.3f} | {r['fused_ms']:.3f} | {r['speedup']:.3f}x | "
              f"{r['inductor_no_graph_ms']:.3f} | {r['fused_no_graph_ms']:.3f} | {r['speedup_no_graph']:.3f}x | "
              f"{r['inductor_host_ms']:.2f} / {r['fused_host_ms']:.2f} | {r['fusions']} | {r['rel_err_vs_inductor']:.1e} |")


if __name__ == "__main__":
    main()
