"""What the example scripts share: options, building a model, compiling it three ways, the report, parity, timing.

Each ``compile_*.py`` script describes its model family as an ``Example`` and calls ``run``: the model
is built from ``model_zoo`` (tiny in fp32 on CPU by default; full size in bf16 where a GPU is
present), run eagerly, compiled with ``torch.compile`` alone (Inductor) and with
``backend="fusion_passes"``; the script prints the fusion report, the backend's relative error
against Inductor alone and, on a GPU, the time per step of all three with and without CUDA graphs.
Each ``pipeline_*.py`` script calls ``run_pipeline``: a whole diffusers pipeline whose repeated
blocks are compiled (``compile_repeated_blocks``) one way, then the other, timed per generation.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import model_zoo
import torch

import fusion_passes
from fusion_passes.progress import progress

# The GPU timing helpers live with the benchmarks (they are not part of the installed package).
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from timing import back_to_back_ms, cuda_graph_ms  # noqa: E402

# Relative error of the backend's output against torch.compile alone that counts as a match.
PARITY = {torch.float32: 1e-4, torch.bfloat16: 3e-2, torch.float16: 1e-2}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def diffusers_output(model: torch.nn.Module, inputs: dict[str, Any]) -> torch.Tensor:
    """A diffusers transformer's prediction."""
    return model(**inputs, return_dict=False)[0]


def transformers_output(model: torch.nn.Module, inputs: dict[str, Any]) -> torch.Tensor:
    """A transformers base model's last hidden state."""
    return model(**inputs).last_hidden_state


def pipeline_output(pipe: Any, arguments: dict[str, Any]) -> torch.Tensor:
    """A diffusers pipeline's images or video, with a fresh seeded generator: every call starts from the same noise."""
    generator = torch.Generator(pipe._execution_device).manual_seed(0)
    return pipe(**arguments, generator=generator, return_dict=False)[0]


@dataclasses.dataclass(frozen=True)
class Example:
    """One model family's example: what to build, how to call it, and which builder arguments are options."""

    title: str
    builder: Callable[..., tuple[Any, dict[str, Any]]]  # a model_zoo builder: (model or pipeline, call arguments)
    # builder keyword -> (type, help): each becomes ``--keyword`` (a flag for bool), None leaves the size's default.
    options: dict[str, tuple[type, str]]
    call: Callable[[Any, dict[str, Any]], torch.Tensor] = diffusers_output
    output: str = "step"  # what one call produces, for the timing's unit: a step, an image, a video


def parser(description: str, options: dict[str, tuple[type, str]]) -> argparse.ArgumentParser:
    """Arguments every example takes (size, dtype) and the family's own ``options``."""
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--size", choices=model_zoo.SIZES, default="full" if cuda else "tiny",
                        help="model dimensions (default: full where a GPU is present, else tiny)")
    parser.add_argument("--dtype", choices=DTYPES, default="bfloat16" if cuda else "float32",
                        help="default: bfloat16 where a GPU is present, else float32")
    for name, (kind, help_text) in options.items():
        flag = "--" + name.replace("_", "-")
        if kind is bool:
            parser.add_argument(flag, action="store_true", help=help_text)
        else:
            parser.add_argument(flag, type=kind, default=None, help=help_text + " (default: the size's)")
    return parser


def device() -> str:
    """``cuda`` where a GPU is present, else ``cpu``."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def backend_options(device: str) -> dict[str, Any]:
    """The backend's options: rewrite graphs on ``device``.

    On CPU the fused ops run their pure-torch reference, slower than Inductor's own C++ code; the
    examples enable CPU anyway to show the rewrite. On CUDA the defaults apply.
    """
    return {"fusion_passes": {"devices": (device,)}}


@contextlib.contextmanager
def passes_run() -> Iterator[None]:
    """No FX graph or AOT cache hits, which skip post-grad passes: the report lists every fusion on every run."""
    with (
        torch._inductor.config.patch(fx_graph_cache=False),
        torch._functorch.config.patch(enable_autograd_cache=False),
    ):
        yield


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """``|out - ref| / |ref|`` in fp64 over all elements."""
    return ((out.double() - ref.double()).norm() / ref.double().norm()).item()


def print_report() -> None:
    """The fusion report of the graphs compiled since ``fusion_passes.reset_report()``, then counts per fusion."""
    report = fusion_passes.report()
    print("\n" + report.summary() + "\n")
    print(f"fusions: {report.counts()}")


def print_parity(fused: torch.Tensor, plain: torch.Tensor, eager: torch.Tensor, dtype: torch.dtype) -> bool:
    """Print the backend's relative errors against Inductor alone (the check) and eager; whether it matches."""
    error = relative_error(fused, plain)
    match = error < PARITY[dtype]
    print(f"outputs vs torch.compile alone: relative error {error:.2e} (tolerance {PARITY[dtype]:.0e}) "
          f"-> {'MATCH' if match else 'MISMATCH'}")
    print(f"outputs vs eager: relative error {relative_error(fused, eager):.2e} "
          f"(torch.compile alone: {relative_error(plain, eager):.2e})")
    return match


def print_step_times(calls: dict[str, Callable[[], object]], graphs: tuple[str, ...], output: str) -> None:
    """Time per call (one ``output``) of each of ``calls`` on the GPU without CUDA graphs, and from CUDA-graph
    replay for ``graphs``."""
    rows: dict[str, dict[str, float]] = {"without CUDA graphs": {}, "CUDA-graph replay": {}}
    failures = []
    with progress("timing (eager, Inductor alone, fusion_passes; with and without CUDA graphs)",
                  total=len(calls) + len(graphs)) as advance:
        for label, call in calls.items():
            rows["without CUDA graphs"][label] = back_to_back_ms(call, calls=5, windows=3)
            advance()
            if label in graphs:
                try:
                    rows["CUDA-graph replay"][label] = cuda_graph_ms(call, calls_per_graph=1, replays=10)
                except RuntimeError as error:  # e.g. a host synchronization in the model: not capturable
                    failures.append(f"CUDA-graph capture of {label} failed: {error}")
                advance()
    for failure in failures:
        print(failure)
    print(f"\ntime per {output}, median ms".ljust(27) + "".join(f"{label:>22}" for label in calls)
          + "   fusion_passes speedup")
    for row, times in rows.items():
        cells = "".join(f"{times[label]:22.3f}" if label in times else f"{'-':>22}" for label in calls)
        both = "torch.compile alone" in times and "fusion_passes" in times
        speedup = f"{times['torch.compile alone'] / times['fusion_passes']:.3f}x" if both else "-"
        print(f"  {row:<24}{cells}   {speedup}")


def wall_seconds(fn: Callable[[], object]) -> float:
    """Wall time of one ``fn()`` call in seconds (synchronizing a GPU)."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    started = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - started


def run(example: Example, argv: list[str] | None = None) -> int:
    """Build, run eagerly, compile with Inductor alone and with the backend; report, compare, time.

    Returns the exit status: 1 if the backend's output does not match Inductor alone's.
    """
    args = parser(f"Compile the {example.title} with the fusion_passes backend.", example.options).parse_args(argv)
    on, dtype = device(), DTYPES[args.dtype]
    torch._dynamo.reset()
    fusion_passes.reset_report()
    with progress(f"building the {example.title}, {args.size} size, random weights"):
        model, inputs = model_zoo.build(example.builder, dtype, on, size=args.size,
                                        **{name: getattr(args, name) for name in example.options})
    parameters = sum(parameter.numel() for parameter in model.parameters())
    print(f"{parameters / 1e6:.1f}M parameters, {args.dtype} on {on}; torch {torch.__version__}")

    with torch.no_grad():
        with progress("running eager"):
            eager = example.call(model, inputs)
        plain_model = torch.compile(model)
        with progress("compiling with torch.compile alone (Inductor) and running"):
            plain = example.call(plain_model, inputs)
        fused_model = torch.compile(model, backend="fusion_passes", options=backend_options(on))
        with passes_run(), progress("compiling with backend='fusion_passes' and running"):
            fused = example.call(fused_model, inputs)
        print_report()
        match = print_parity(fused, plain, eager, dtype)
        if on == "cuda":
            calls = {"eager": model, "torch.compile alone": plain_model, "fusion_passes": fused_model}
            print_step_times({label: lambda m=m: example.call(m, inputs) for label, m in calls.items()},
                             graphs=("torch.compile alone", "fusion_passes"), output=example.output)
        else:
            print(f"time per {example.output}: needs a GPU (on CPU the fused ops run their pure-torch reference, "
                  "slower than Inductor's C++ code)")
    return 0 if match else 1


def run_pipeline(example: Example, argv: list[str] | None = None) -> int:
    """Build a pipeline; generate eagerly, then with its repeated blocks compiled by Inductor alone and by
    the backend (``compile_repeated_blocks``); report, compare the outputs, time one generation of each.

    Returns the exit status: 1 if the backend's output does not match Inductor alone's.
    """
    args = parser(f"Run the {example.title} with its blocks compiled by the fusion_passes backend.",
                  example.options).parse_args(argv)
    on, dtype = device(), DTYPES[args.dtype]
    torch._dynamo.reset()
    fusion_passes.reset_report()
    with progress(f"building the {example.title}, {args.size} size, random weights"):
        pipe, arguments = model_zoo.build(example.builder, dtype, on, size=args.size,
                                          **{name: getattr(args, name) for name in example.options})
    pipe.set_progress_bar_config(disable=True)
    print(f"{arguments['num_inference_steps']} denoising steps, {args.dtype} on {on}; torch {torch.__version__}")

    steps = arguments["num_inference_steps"]

    def generate(label: str) -> torch.Tensor:
        """One generation, with a bar over its denoising steps (the first step of a compiled one compiles the blocks)."""
        with progress(label, total=steps) as advance:
            def step_done(pipe: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
                advance()
                return tensors

            return example.call(pipe, {**arguments, "callback_on_step_end": step_done})

    outputs, seconds = {}, {}
    # Each variant: a first generation (compiling, for the compiled ones) gives the output; a second is timed.
    outputs["eager"] = generate("generating eagerly")
    seconds["eager"] = wall_seconds(lambda: generate("timing one eager generation"))
    pipe.transformer.compile_repeated_blocks()
    outputs["torch.compile alone"] = generate("compiling the blocks with torch.compile alone (Inductor) and generating")
    seconds["torch.compile alone"] = wall_seconds(lambda: generate("timing one generation, torch.compile alone"))
    pipe.transformer.compile_repeated_blocks(backend="fusion_passes", options=backend_options(on))
    with passes_run():
        outputs["fusion_passes"] = generate("compiling the blocks with backend='fusion_passes' and generating")
    seconds["fusion_passes"] = wall_seconds(lambda: generate("timing one generation, fusion_passes"))

    print_report()
    match = print_parity(outputs["fusion_passes"], outputs["torch.compile alone"], outputs["eager"], dtype)
    print(f"\nseconds per {example.output}: " + ", ".join(f"{label} {value:.3f}" for label, value in seconds.items())
          + f" ({seconds['torch.compile alone'] / seconds['fusion_passes']:.3f}x over Inductor alone)")
    if on == "cpu":
        print("(on CPU the fused ops run their pure-torch reference, slower than Inductor's C++ code: time on a GPU)")
    return 0 if match else 1
