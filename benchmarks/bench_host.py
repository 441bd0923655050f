"""GPU benchmark: what a fused call costs the host, and how it is launched from a compiled graph.

Run on a CUDA machine: ``python benchmarks/bench_host.py [--out DIR]``. Each chain is compiled
three ways: Inductor alone, the fusion_passes backend with its kernels launched by Inductor's
wrapper (the default), and the backend with the fused ops left as opaque custom ops (the earlier
route, for comparison). For each: parity with Inductor alone, whether the output code launches
our kernel, GPU time (CUDA-graph replay), time per call without CUDA graphs (back-to-back calls,
synchronized), and host time per call (calls issued while the GPU is kept busy). Also checked:
symbolic sizes (``dynamic=True``, two lengths) and an FX-graph-cache hit. A table goes last.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

import fusion_passes
from fusion_passes import kernel_launches
from timing import back_to_back_ms, cuda_graph_ms, host_ms

BF16 = torch.bfloat16


def adaln(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    return F.layer_norm(x, x.shape[-1:], eps=1e-6) * (1 + scale) + shift


def residual_adaln(residual, x, gate, scale, shift):
    r = residual + gate * x
    return r, F.layer_norm(r, r.shape[-1:], eps=1e-6) * (1 + scale) + shift


def qk_norm_rope(q, weight, cos, sin):
    """FLUX's q norm and interleaved rotation on [B, L, H, D]."""
    q = F.rms_norm(q, q.shape[-1:], weight, 1e-6)
    real, imaginary = q.reshape(*q.shape[:-1], -1, 2).unbind(-1)
    rotated = torch.stack([-imaginary, real], dim=-1).flatten(3)
    return (q.float() * cos + rotated.float() * sin).to(q.dtype)


def complex_rope(x, freqs):
    """Qwen-Image's complex rotation."""
    rotated = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2)) * freqs
    return torch.view_as_real(rotated).flatten(3).type_as(x)


def causal_conv1d(x, weight, bias):
    """transformers' causal conv1d + SiLU on [B, C, L]."""
    length = x.shape[-1]
    return F.silu(F.conv1d(x, weight[:, None, :], bias, padding=weight.shape[1] - 1, groups=x.shape[1])[..., :length])


def randn(*shape: int, dtype: torch.dtype = BF16) -> torch.Tensor:
    return torch.randn(shape, device="cuda", dtype=dtype)


def chains(tokens: int) -> dict[str, tuple[Callable[..., Any], list[torch.Tensor]]]:
    """Each fused chain with its inputs at ``tokens`` tokens (hidden 3072, 24 heads of 128)."""
    angles = randn(tokens, 1, 64, dtype=torch.float32)
    cos, sin = angles.cos().repeat_interleave(2, -1), angles.sin().repeat_interleave(2, -1)
    return {
        f"adaln [{tokens},3072]": (adaln, [randn(1, tokens, 3072), randn(1, 1, 3072), randn(1, 1, 3072)]),
        f"residual_adaln [{tokens},3072]": (
            residual_adaln, [randn(1, tokens, 3072), randn(1, tokens, 3072)] + [randn(1, 1, 3072) for _ in range(3)],
        ),
        f"qk_norm_rope [{tokens},24,128]": (qk_norm_rope, [randn(1, tokens, 24, 128), randn(128), cos, sin]),
        f"complex_rope [{tokens},24,128]": (complex_rope, [randn(1, tokens, 24, 128), torch.polar(torch.ones_like(angles), angles)]),
        f"causal_conv1d [4096,{tokens}]": (causal_conv1d, [randn(1, 4096, tokens), randn(4096, 4), randn(4096)]),
    }


def compiled(fn: Callable[..., Any], route: str, **kwargs: Any) -> Callable[..., Any]:
    """``fn`` compiled by Inductor alone, or by the backend launching kernels / calling custom ops."""
    if route == "inductor":
        return torch.compile(fn, **kwargs)
    return torch.compile(fn, backend="fusion_passes", options={"fusion_passes": {"size_rule": False}}, **kwargs)


def with_route(route: str) -> Any:
    """A context in which the backend uses ``route`` ('launch' or 'custom_op')."""
    original = kernel_launches.inductor_launches_kernels

    class Route:
        def __enter__(self) -> None:
            if route == "custom_op":
                kernel_launches.inductor_launches_kernels = lambda: False

        def __exit__(self, *exc: Any) -> None:
            kernel_launches.inductor_launches_kernels = original

    return Route()


def launches_our_kernel(fn: Callable[..., Any], args: list[torch.Tensor]) -> tuple[bool, bool]:
    """(output code launches a fusion_passes kernel, output code calls a fusion_passes custom op)."""
    from torch._inductor.utils import run_and_get_code

    _, codes = run_and_get_code(fn, *args)
    code = "\n".join(codes)
    kernels = ("_norm_modulate_kernel", "_rope_kernel", "_causal_conv1d_kernel")
    return any(name in code for name in kernels), "torch.ops.fusion_passes" in code


def max_error(a: Any, b: Any) -> float:
    a, b = (a if isinstance(a, tuple) else (a,)), (b if isinstance(b, tuple) else (b,))
    return max((x.float() - y.float()).abs().max().item() for x, y in zip(a, b, strict=True))


def check_dynamic() -> dict[str, Any]:
    """dynamic=True: one compiled graph serves two lengths, launched by Inductor, matching eager."""
    from torch._inductor.utils import run_and_get_code

    torch._dynamo.reset()
    fusion_passes.reset_report()
    fn = compiled(adaln, "launch", dynamic=True)
    results, code = {}, ""
    for tokens in (4096, 3000):
        args = [randn(1, tokens, 3072), randn(1, 1, 3072), randn(1, 1, 3072)]
        if not code:
            out, codes = run_and_get_code(fn, *args)
            code = "\n".join(codes)
        else:
            out = fn(*args)
        results[tokens] = max_error(out, adaln(*args))
    return {"max_error": results, "launched": "_norm_modulate_kernel" in code, "custom_op": "torch.ops.fusion_passes" in code,
            "graphs": len(fusion_passes.report().graphs), "fusions": fusion_passes.report().counts()}


def check_cache_hit() -> dict[str, Any]:
    """A second process-local compile served from the FX graph cache still launches our kernel."""
    args = [torch.randn(1, 4096, 3072, device="cuda", dtype=BF16), torch.randn(1, 1, 3072, device="cuda", dtype=BF16),
            torch.randn(1, 1, 3072, device="cuda", dtype=BF16)]
    from torch._dynamo.utils import counters

    with tempfile.TemporaryDirectory() as cache, torch._inductor.config.patch(force_disable_caches=False, fx_graph_cache=True):
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache
        outcome = []
        for _ in range(2):
            torch._dynamo.reset()
            hits = counters["inductor"]["fxgraph_cache_hit"]
            fn = compiled(adaln, "launch")
            launched, custom = launches_our_kernel(fn, args)
            outcome.append({"cache_hit": counters["inductor"]["fxgraph_cache_hit"] > hits, "launched": launched,
                            "custom_op": custom, "max_error": max_error(fn(*args), adaln(*args))})
    return {"runs": outcome}


def varlen_args(tokens: int, sequences: int, channels: int = 8192, width: int = 4) -> tuple[Any, ...]:
    """A serving step's packed call: token-major x, offsets, initial states and their flags."""
    from fusion_passes.kernels import conv1d

    x = randn(tokens, channels).t()
    cu_seqlens = torch.linspace(0, tokens, sequences + 1, device="cuda").round().to(torch.int32)
    states = randn(sequences, channels, width - 1)
    flags = torch.arange(sequences, device="cuda") % 2 == 0
    return (x, randn(channels, width), cu_seqlens, randn(channels), states, flags, "silu", None), conv1d


def eager_varlen_rows(cases: list[tuple[int, int]]) -> list[dict[str, Any]]:
    """Host time of an eager ``causal_conv1d_varlen`` call three ways: the public function (a launch
    planned per operand layout), the op's own implementation (checked and planned on every call),
    and the custom op (through the dispatcher)."""
    rows = []
    for tokens, sequences in cases:
        (x, weight, cu, bias, states, flags, activation, max_seqlen), conv1d = varlen_args(tokens, sequences)
        routes = {
            "public function": lambda: fusion_passes.causal_conv1d_varlen(x, weight, cu, bias, states, flags),
            "per-call plan": lambda: conv1d._run(conv1d._packed_call(x, weight, bias, cu, states, flags, activation, max_seqlen)),
            "custom op": lambda: torch.ops.fusion_passes.causal_conv1d_varlen(x, weight, bias, cu, states, flags, activation, max_seqlen),
        }
        with torch.no_grad():
            expected = routes["per-call plan"]()
            for route, call in routes.items():
                out = call()
                error = max(max_error(out[0], expected[0]), max_error(out[1], expected[1]))
                rows.append({"chain": f"eager varlen T={tokens} S={sequences}", "route": route, "max_error": error,
                             "gpu_us": 1e3 * cuda_graph_ms(call), "wall_us": 1e3 * back_to_back_ms(call, calls=200),
                             "host_us": 1e3 * host_ms(call, calls=200)})
                print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    """Time every chain three ways; print the table last."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--tokens", default="512,4096", help="token counts, comma-separated")
    parser.add_argument("--only-eager", action="store_true", help="only the eager causal_conv1d_varlen rows")
    options = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench_host.py needs a CUDA GPU")
    torch._inductor.config.force_disable_caches = True
    rows = eager_varlen_rows([(256, 8), (4096, 4), (1, 1)])
    cases = {} if options.only_eager else {
        name: case for tokens in options.tokens.split(",") for name, case in chains(int(tokens)).items()}
    for name, (fn, args) in cases.items():
        reference = None
        for route in ("inductor", "launch", "custom_op"):
            torch._dynamo.reset()
            fusion_passes.reset_report()
            with with_route(route):
                compiled_fn = compiled(fn, route)
                out = compiled_fn(*args)
                launched, custom = launches_our_kernel(compiled_fn, args)
            reference = out if route == "inductor" else reference
            rows.append({
                "chain": name, "route": route, "fusions": fusion_passes.report().counts(),
                "launched": launched, "custom_op": custom,
                "max_error_vs_inductor": 0.0 if route == "inductor" else max_error(out, reference),
                "gpu_us": 1e3 * cuda_graph_ms(compiled_fn, [tuple(args)]),
                "wall_us": 1e3 * back_to_back_ms(compiled_fn, args, calls=200),
                "host_us": 1e3 * host_ms(compiled_fn, args, calls=100),
            })
            print(json.dumps(rows[-1]), flush=True)
    dynamic = {} if options.only_eager else check_dynamic()
    cache = {} if options.only_eager else check_cache_hit()
    print("dynamic:", json.dumps(dynamic))
    print("cache:", json.dumps(cache))
    if options.out is not None:
        options.out.mkdir(parents=True, exist_ok=True)
        record = {"date": datetime.date.today().isoformat(), "device": torch.cuda.get_device_name(),
                  "torch": torch.__version__, "rows": rows, "dynamic": dynamic, "cache": cache}
        (options.out / "bench_host.json").write_text(json.dumps(record, indent=1))
    print(f"\n{torch.cuda.get_device_name()}, torch {torch.__version__}")
    print(f"{'chain':34} {'route':10} {'GPU us':>8} {'no-graph us':>12} {'host us':>8} {'launch':>6} {'op':>4} {'err':>8}")
    for row in rows:
        print(f"{row['chain']:34} {row['route']:10} {row['gpu_us']:8.1f} {row['wall_us']:12.1f} {row['host_us']:8.1f} "
              f"{row.get('launched', '')!s:>6} {row.get('custom_op', '')!s:>4} "
              f"{row.get('max_error_vs_inductor', row.get('max_error')):8.2e}")


if __name__ == "__main__":
    main()
