"""GPU benchmark of a Linear followed by tanh-GELU: Inductor alone vs the ``linear_gelu`` fusion (one GEMM with a GELU epilogue).

Run on a CUDA machine: ``python benchmarks/bench_linear_gelu.py [--out DIR] [--tokens 256,4096] [--no-bias]``
(``--dry-run`` runs the same cases at tiny sizes on CPU, untimed: it checks the script and needs
no GPU). bf16, x ``[1, M, K]`` (M tokens), ``nn.Linear(K, N)`` then ``F.gelu(approximate="tanh")``,
as diffusers' FeedForward writes it.

For each (K, N) the function is compiled once with Inductor alone and once with the backend
(``size_rule=False``: the fusion fires at every M, so each row measures what firing costs or
saves), both with the token count dynamic; each M then runs without recompiling. Per row: GPU time
from CUDA-graph replay and time per call of back-to-back calls without CUDA graphs (both
``benchmarks/timing.py``), the bare GEMM (``F.linear``) as the floor, the relative error of both
against an fp32 reference, and whether the default size rule (``linear_gelu.cuda_refusal``) fires
there. Rows stream to stdout; ``DIR/linear_gelu.json`` (default ``$OUT``, else ./bench_out) holds
them all; the markdown table is printed last.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from chain_bench import relative_error
from timing import back_to_back_ms, cuda_graph_ms

import fusion_passes
from fusion_passes import linear_gelu

TOKENS = (256, 1024, 2048, 4096, 8192, 16384, 32760)
INNER = (1536, 3072, 3584)
OUTER = (6144, 8960, 12288)
# x input sets rotated per timing (keeps x out of L2 between calls).
INPUT_SETS = 3
RESULTS_FILE = "linear_gelu.json"
NAN = float("nan")


def linear_then_gelu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """diffusers' ``GELU(approximate="tanh")``: ``F.gelu(F.linear(x, w, b), approximate="tanh")``."""
    return F.gelu(F.linear(x, weight, bias), approximate="tanh")


@dataclasses.dataclass
class Row:
    """One shape: times (ms), speedups, errors, and what the default rule decides there."""

    tokens: int
    inner: int
    outer: int
    bias: bool
    inductor_graph_ms: float
    fused_graph_ms: float
    inductor_calls_ms: float
    fused_calls_ms: float
    gemm_graph_ms: float
    error_inductor: float
    error_fused: float
    fusions: int
    rule_fires: bool

    @property
    def speedup_graph(self) -> float:
        """Inductor alone / fused, CUDA-graph replay."""
        return self.inductor_graph_ms / self.fused_graph_ms

    @property
    def speedup_calls(self) -> float:
        """Inductor alone / fused, back-to-back calls without CUDA graphs."""
        return self.inductor_calls_ms / self.fused_calls_ms


def compile_with_dynamic_tokens(backend: str, device: str) -> torch.nn.Module:
    """``linear_then_gelu`` compiled with the token dim dynamic; the backend fuses at every size."""
    options = {"fusion_passes": {"size_rule": False, "devices": (device,)}} if backend == "fusion_passes" else None
    return torch.compile(linear_then_gelu, backend=backend, options=options)


def bench_pair(inner: int, outer: int, tokens: list[int], bias: bool, device: str, dtype: torch.dtype, timed: bool) -> list[Row]:
    """Every token count at one (K, N): one compile per backend, then each M checked and timed."""
    torch.manual_seed(0)
    weight = torch.randn(outer, inner, device=device, dtype=dtype) / inner**0.5
    bias_value = torch.randn(outer, device=device, dtype=dtype) if bias else None
    torch._dynamo.reset()
    fusion_passes.reset_report()
    inductor = compile_with_dynamic_tokens("inductor", device)
    fused = compile_with_dynamic_tokens("fusion_passes", device)
    rows = []
    for count in tokens:
        input_sets = []
        for _ in range(INPUT_SETS if timed else 1):
            x = torch.randn(1, count, inner, device=device, dtype=dtype)
            torch._dynamo.mark_dynamic(x, 1)
            input_sets.append((x, weight, bias_value))
        x = input_sets[0][0]
        reference = linear_then_gelu(x.float(), weight.float(), None if bias_value is None else bias_value.float())
        errors = [relative_error(fn(*input_sets[0]), reference) for fn in (inductor, fused)]
        times = [NAN] * 5
        if timed:
            times = [
                cuda_graph_ms(inductor, input_sets), cuda_graph_ms(fused, input_sets),
                back_to_back_ms(inductor, input_sets[0]), back_to_back_ms(fused, input_sets[0]),
                cuda_graph_ms(F.linear, input_sets),
            ]
        row = Row(count, inner, outer, bias, *times, *errors,
                  fusions=fusion_passes.report().counts().get("linear_gelu", 0),
                  rule_fires=linear_gelu.cuda_refusal(count, inner, outer) is None)
        print(json.dumps({**dataclasses.asdict(row), "speedup_graph": row.speedup_graph, "speedup_calls": row.speedup_calls}), flush=True)
        rows.append(row)
    return rows


def table(rows: list[Row]) -> str:
    """The rows as a markdown table."""
    lines = [
        "| M | K | N | bias | Inductor ms (graph) | fused ms (graph) | speedup | Inductor ms (calls) | fused ms (calls) | speedup | GEMM ms | err Inductor | err fused | rule fires |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.tokens} | {r.inner} | {r.outer} | {'yes' if r.bias else 'no'} | {r.inductor_graph_ms:.3f} | {r.fused_graph_ms:.3f} "
            f"| {r.speedup_graph:.3f}x | {r.inductor_calls_ms:.3f} | {r.fused_calls_ms:.3f} | {r.speedup_calls:.3f}x "
            f"| {r.gemm_graph_ms:.3f} | {r.error_inductor:.2e} | {r.error_fused:.2e} | {'yes' if r.rule_fires else 'no'} |"
        )
    return "\n".join(lines)


def main() -> None:
    """Run the grid (or the CPU dry run), write the JSON, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.environ.get("OUT", "bench_out"), help="directory for linear_gelu.json")
    parser.add_argument("--tokens", default=",".join(map(str, TOKENS)), help="comma-separated token counts M")
    parser.add_argument("--inner", default=",".join(map(str, INNER)), help="comma-separated input features K")
    parser.add_argument("--outer", default=",".join(map(str, OUTER)), help="comma-separated output features N")
    parser.add_argument("--no-bias", action="store_true", help="Linear without bias (a zero bias feeds the epilogue)")
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes on CPU, untimed")
    args = parser.parse_args()
    sizes = [[int(value) for value in text.split(",")] for text in (args.tokens, args.inner, args.outer)]
    if args.dry_run:
        device, dtype, timed = "cpu", torch.float32, False
        sizes = [[16, 48], [32], [64]]
    else:
        device, dtype, timed = "cuda", torch.bfloat16, True
    tokens, inners, outers = sizes
    rows = []
    for inner in inners:
        for outer in outers:
            rows += bench_pair(inner, outer, tokens, not args.no_bias, device, dtype, timed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name() if timed else "cpu (dry run)",
        "torch": torch.__version__,
        "dtype": str(dtype),
        "min_cuda_rows": linear_gelu.MIN_CUDA_ROWS,
    }
    rows_json = [{**dataclasses.asdict(r), "speedup_graph": r.speedup_graph, "speedup_calls": r.speedup_calls} for r in rows]
    (out / RESULTS_FILE).write_text(json.dumps({"meta": meta, "rows": rows_json}, indent=1))
    print(table(rows))


if __name__ == "__main__":
    main()
