"""GPU benchmark of the AdaLN chains: eager vs Inductor alone vs the fusion_passes backend vs the memory floor.

Run on a CUDA machine: ``python benchmarks/bench_adaln.py [--out DIR] [--sweep]``.
Every case is checked first (fused output against an fp64 reference and against Inductor), then
timed with CUDA-graph replay (median over replays, several input sets rotated so that the L2
cache does not hold the working set). The floor is the minimum bytes moved over the copy
bandwidth measured in the same run. A table goes to stdout (last), full results to DIR.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from chain_bench import INPUT_SETS, compile_fresh, copy_bandwidth, relative_error, time_copy, time_cuda_graph

import fusion_passes
from fusion_passes.progress import progress
from fusion_passes.kernels import adaln as adaln_kernels


def adaln_layer_norm(x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
    """adaln as FLUX writes it: chunked [B, 6C] modulation, ``[:, None]`` broadcast, no-affine LN."""
    shift, scale, _gate = emb.chunk(6, dim=1)[:3]
    return F.layer_norm(x, x.shape[-1:], eps=1e-6) * (1 + scale[:, None]) + shift[:, None]


def f1_call(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> adaln_kernels.NormModulate:
    """The kernel's call for ``LN(x) * (1 + scale) + shift`` (no affine, eps 1e-6)."""
    return adaln_kernels.NormModulate(
        x, None, (), None, None, (scale,), (shift,), None, 1e-6, "layer", True, "none", None, x.dtype
    )


def adaln_kernel(x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
    """``adaln_layer_norm`` through the Triton kernel directly, whatever the pass would decide."""
    shift, scale, _gate = emb.chunk(6, dim=1)[:3]
    return adaln_kernels.norm_modulate_triton(f1_call(x, scale[:, None], shift[:, None]))[0]


def adaln_rms(x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
    """adaln with the hand-written fp32-statistics RMSNorm (no weight)."""
    shift, scale, _gate = emb.chunk(6, dim=1)[:3]
    variance = x.float().pow(2).mean(-1, keepdim=True)
    normed = (x * torch.rsqrt(variance + 1e-6)).to(x.dtype)
    return normed * (1 + scale[:, None]) + shift[:, None]


def adaln_fp32_form(x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
    """adaln as Wan writes it: fp32 modulation, ``x.float()`` normalized, ``type_as(x)``."""
    shift, scale, _gate = emb.float().chunk(6, dim=1)[:3]
    return (F.layer_norm(x.float(), x.shape[-1:], eps=1e-6) * (1 + scale[:, None]) + shift[:, None]).type_as(x)


def residual_adaln(residual: torch.Tensor, x: torch.Tensor, emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """residual_adaln as FLUX's norm2 input: ``r = residual + gate * x``, then adaln on r; both returned."""
    shift, scale, gate = emb.chunk(6, dim=1)[:3]
    r = residual + gate[:, None] * x
    return r, F.layer_norm(r, r.shape[-1:], eps=1e-6) * (1 + scale[:, None]) + shift[:, None]


def residual_adaln_fp32_form(residual: torch.Tensor, x: torch.Tensor, emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """residual_adaln as Wan writes it: fp32 gate and modulation, every step cast back to the residual's dtype."""
    shift, scale, gate = emb.float().chunk(6, dim=1)[:3]
    r = (residual.float() + x * gate[:, None]).type_as(residual)
    return r, (F.layer_norm(r.float(), r.shape[-1:], eps=1e-6) * (1 + scale[:, None]) + shift[:, None]).type_as(r)


def residual_rms_norm(residual: torch.Tensor, x: torch.Tensor, emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """An LLM's residual add and RMSNorm (transformers' LlamaRMSNorm, weight from ``emb``): both returned."""
    weight = emb[0, : x.shape[-1]]
    r = residual + x
    h = r.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6)
    return r, weight * h.to(r.dtype)


def chosen_modulation(index: torch.Tensor, emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Qwen-Image edit's choice: (shift, scale, gate) of set 0 where ``index == 0``, else of set 1."""
    sets = emb.chunk(2, dim=0)
    (shift0, scale0, gate0), (shift1, scale1, gate1) = (s.chunk(6, dim=1)[:3] for s in sets)
    chosen = index[..., None] == 0
    return tuple(torch.where(chosen, a[:, None], b[:, None]) for a, b in ((shift0, shift1), (scale0, scale1), (gate0, gate1)))


def select01_adaln(x: torch.Tensor, index: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
    """select01 as Qwen-Image edit writes it: per token, modulation set 0 or 1 by ``index == 0``."""
    shift, scale, _gate = chosen_modulation(index, emb)
    return F.layer_norm(x, x.shape[-1:], eps=1e-6) * (1 + scale) + shift


def select01_adaln_kernel(x: torch.Tensor, index: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
    """``select01_adaln`` through the kernel directly, reading the int index as the per-row choice."""
    sets = emb.chunk(2, dim=0)
    (shift0, scale0, _), (shift1, scale1, _) = (s.chunk(6, dim=1)[:3] for s in sets)
    # The kernel takes the first tensor where select != 0, i.e. set 1 where index == 1. Unchecked
    # launch: the op's check asks for a bool select; the graph's `index == 0` kernel is left out.
    call = dataclasses.replace(
        f1_call(x, scale1[:, None], shift1[:, None]),
        scale=(scale1[:, None], scale0[:, None]),
        shift=(shift1[:, None], shift0[:, None]),
        select=index,
    )
    return adaln_kernels._launch(call)[0]


def adaln_after_add(a: torch.Tensor, b: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
    """adaln on a sum used nowhere else: Inductor alone fuses the add into its norm kernel."""
    return adaln_layer_norm(a + b, emb)


def select01_residual_adaln(
    residual: torch.Tensor, x: torch.Tensor, index: torch.Tensor, emb: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """select01 with residual_adaln: the gate, scale and shift all chosen per token."""
    shift, scale, gate = chosen_modulation(index, emb)
    r = residual + gate * x
    return r, F.layer_norm(r, r.shape[-1:], eps=1e-6) * (1 + scale) + shift


def adaln_pair(x: torch.Tensor, emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One norm, two modulations (SD3.5's dual AdaLN)."""
    shift, scale, _gate, shift2, scale2, _gate2 = emb.chunk(6, dim=1)
    normed = F.layer_norm(x, x.shape[-1:], eps=1e-6)
    return normed * (1 + scale[:, None]) + shift[:, None], normed * (1 + scale2[:, None]) + shift2[:, None]


@dataclasses.dataclass(frozen=True)
class Case:
    """A chain to time: its function, the kernel-only version (if any), inputs and minimum bytes."""

    name: str
    fn: Callable[..., object]
    kernel_fn: Callable[..., object] | None
    n_activations: int  # [B, L, C] tensors read
    n_outputs: int  # [B, L, C] tensors written
    n_modulations: int = 2  # [B, C] rows read per batch element (per set)
    select01: bool = False  # an int [B, L] index and two modulation sets

    def inputs(self, shape: tuple[int, int, int], dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
        """Fresh random inputs: the activations, the index, then a [B, 6C] (select01: [2B, 6C]) embedding."""
        batch, tokens, hidden = shape
        activations = [torch.randn(shape, dtype=dtype, device="cuda") for _ in range(self.n_activations)]
        index = (torch.randint(0, 2, (batch, tokens), device="cuda", dtype=torch.int32),) if self.select01 else ()
        sets = 2 if self.select01 else 1
        return (*activations, *index, torch.randn(sets * batch, 6 * hidden, dtype=dtype, device="cuda"))

    def floor_bytes(self, shape: tuple[int, int, int], dtype: torch.dtype) -> int:
        """Each activation read once, each output written once, modulation (and index) read once."""
        batch, tokens, hidden = shape
        element_size = torch.finfo(dtype).bits // 8
        sets = 2 if self.select01 else 1
        activations = (self.n_activations + self.n_outputs) * batch * tokens * hidden
        index = 4 * batch * tokens if self.select01 else 0
        return element_size * (activations + sets * self.n_modulations * batch * hidden) + index


CASES = {
    "adaln": Case("adaln LN*(1+s)+t", adaln_layer_norm, adaln_kernel, n_activations=1, n_outputs=1),
    "adaln rms": Case("adaln RMS(fp32 stats)*(1+s)+t", adaln_rms, None, n_activations=1, n_outputs=1),
    "adaln fp32 form": Case("adaln fp32 form (Wan)", adaln_fp32_form, None, n_activations=1, n_outputs=1),
    "residual_adaln": Case("residual_adaln res+g*x -> adaln", residual_adaln, None, n_activations=2, n_outputs=2, n_modulations=3),
    "residual_adaln fp32 form": Case("residual_adaln fp32 form (Wan)", residual_adaln_fp32_form, None, n_activations=2, n_outputs=2, n_modulations=3),
    "residual_adaln rms weight": Case("residual_adaln res+x -> RMS*weight (LLM)", residual_rms_norm, None, n_activations=2, n_outputs=2, n_modulations=0),
    "select01": Case("select01 select01 adaln", select01_adaln, select01_adaln_kernel, n_activations=1, n_outputs=1, select01=True),
    "select01+residual_adaln": Case("select01 select01 residual_adaln", select01_residual_adaln, None, n_activations=2, n_outputs=2, n_modulations=3, select01=True),
    "adaln after add": Case("adaln on a + b", adaln_after_add, None, n_activations=2, n_outputs=1),
    "adaln pair": Case("adaln one norm, two modulations", adaln_pair, None, n_activations=1, n_outputs=2, n_modulations=4),
}


@dataclasses.dataclass
class Row:
    case: str
    shape: tuple[int, ...]
    eager_ms: float
    inductor_ms: float
    fused_ms: float
    forced_ms: float
    kernel_ms: float
    copy_ms: float
    floor_ms: float
    fusions: int
    rel_err_fused: float
    rel_err_inductor: float

    @property
    def speedup(self) -> float:
        return self.inductor_ms / self.fused_ms

    @property
    def over_floor(self) -> float:
        return self.fused_ms / self.floor_ms


def bench(case: Case, shape: tuple[int, int, int], bandwidth: float, dtype: torch.dtype) -> Row:
    """Check, then time, one case at one shape."""
    input_sets = [case.inputs(shape, dtype) for _ in range(INPUT_SETS)]
    torch._dynamo.reset()
    fusion_passes.reset_report()
    inductor = compile_fresh(case.fn, "inductor")
    fused = compile_fresh(case.fn, "fusion_passes")
    args = input_sets[0]
    ref = case.fn(*(a.double() if a.is_floating_point() else a for a in args))
    rel_err_fused = relative_error(fused(*args), ref)
    rel_err_inductor = relative_error(inductor(*args), ref)
    fusions = sum(fusion_passes.report().counts().values())
    times = {
        "eager_ms": time_cuda_graph(case.fn, input_sets),
        "inductor_ms": time_cuda_graph(inductor, input_sets),
        "fused_ms": time_cuda_graph(fused, input_sets),
        "kernel_ms": time_cuda_graph(case.kernel_fn, input_sets) if case.kernel_fn else float("nan"),
        "copy_ms": time_copy(case.floor_bytes(shape, dtype) // 2, len(input_sets)),
    }
    # The same graph with the size rule lifted: what firing here would cost.
    torch._dynamo.reset()
    forced = compile_fresh(case.fn, "fusion_passes", size_rule=False)
    forced(*args)
    return Row(
        case=case.name,
        shape=shape,
        rel_err_fused=rel_err_fused,
        rel_err_inductor=rel_err_inductor,
        fusions=fusions,
        forced_ms=time_cuda_graph(forced, input_sets),
        **times,
        floor_ms=case.floor_bytes(shape, dtype) / bandwidth * 1e3,
    )


def sweep_call(kind: str, shape: tuple[int, int, int], dtype: torch.dtype) -> adaln_kernels.NormModulate:
    """A kernel call of ``kind`` (adaln, residual_adaln, select01: adaln with a per-row choice, pair) on fresh inputs."""
    batch, tokens, hidden = shape
    x, residual = (torch.randn(shape, dtype=dtype, device="cuda") for _ in range(2))
    shift, scale, gate, shift2, scale2, _ = (
        t[:, None] for t in torch.randn(batch, 6 * hidden, dtype=dtype, device="cuda").chunk(6, dim=1)
    )
    call = f1_call(x, scale, shift)
    if kind == "residual_adaln":
        return dataclasses.replace(call, residual=residual, gate=(gate,), residual_dtype=dtype)
    if kind == "select01":
        select = torch.randint(0, 2, (batch, tokens, 1), device="cuda") == 0
        return dataclasses.replace(call, scale=(scale, scale2), shift=(shift, shift2), select=select)
    if kind == "pair":
        return dataclasses.replace(call, scale2=(scale2,), shift2=(shift2,), out_dtype2=dtype)
    return call


def sweep_configs(kind: str, shape: tuple[int, int, int], dtype: torch.dtype) -> list[dict]:
    """Time the raw kernel on a ``kind`` call under alternative launch configs (for tuning ``launch_config``)."""
    input_sets = [(sweep_call(kind, shape, dtype),) for _ in range(INPUT_SETS)]
    default = adaln_kernels.launch_config(shape[-1], input_sets[0][0].modulation_rows)
    configs = [adaln_kernels.LaunchConfig(1, num_warps, hoist=hoist) for num_warps in (2, 4, 8) for hoist in (True, False)]
    configs += [
        adaln_kernels.LaunchConfig(1, num_warps, num_stages, programs_per_sm, hoist)
        for num_warps in (2, 4, 8)
        for num_stages in (1, 2, 3)
        for programs_per_sm in (1, 2, 4, 8)
        for hoist in (True, False)
        if num_warps * programs_per_sm <= 64
    ]
    results = []
    for config in configs:

        def run(call, config=config):
            return adaln_kernels.norm_modulate_triton(call, config=config)

        results.append(
            {
                "kind": kind,
                "shape": shape,
                "config": dataclasses.astuple(config),
                "default": config == default,
                "ms": time_cuda_graph(run, input_sets),
            }
        )
    return results


def host_us_per_call(fn: Callable[..., object], args: tuple, calls: int = 300) -> float:
    """Host time per call in us, launching back to back on a tiny shape (the GPU keeps up)."""
    for _ in range(10):
        fn(*args)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(calls):
        fn(*args)
    elapsed = time.perf_counter() - start
    torch.cuda.synchronize()
    return elapsed / calls * 1e6


def host_overhead(dtype: torch.dtype) -> dict[str, float]:
    """Host cost per adaln call: Inductor's compiled chain, ours (fired), and the op's layers."""
    x = torch.randn(1, 64, 3072, dtype=dtype, device="cuda")
    emb = torch.randn(1, 6 * 3072, dtype=dtype, device="cuda")
    torch._dynamo.reset()
    inductor = compile_fresh(adaln_layer_norm, "inductor")
    torch._dynamo.reset()
    fused = compile_fresh(adaln_layer_norm, "fusion_passes", size_rule=False)
    shift, scale = emb.chunk(6, dim=1)[:2]
    op_args = (x, None, None, [scale[:, None]], [shift[:, None]], None, 1e-6, "layer", True, "none", dtype)
    call = f1_call(x, scale[:, None], shift[:, None])
    with torch.inference_mode():
        return {
            "inductor_graph_us": host_us_per_call(inductor, (x, emb)),
            "fused_graph_us": host_us_per_call(fused, (x, emb)),
            "custom_op_us": host_us_per_call(torch.ops.fusion_passes.norm_modulate.default, op_args),
            "launcher_us": host_us_per_call(adaln_kernels._launch, (call,)),
            "checks_us": host_us_per_call(adaln_kernels.unsupported_reason, (call,)),
        }


F1_SHAPES = [
    (1, 4096, 3072),
    (2, 4096, 3072),
    (1, 32760, 1536),
    (1, 64, 3072),
    (1, 256, 3072),
    (1, 1024, 3072),
    (1, 256, 1536),
    (4, 1024, 128),
    (1, 4096, 512),
    (1, 4096, 1024),
    (1, 16384, 1024),
    (2, 4096, 1152),
    (1, 1024, 16384),
]
F2_SHAPES = [
    (1, 4096, 3072),
    (2, 4096, 3072),
    (1, 32760, 1536),
    (1, 256, 3072),
    (1, 1024, 3072),
    (1, 4096, 1536),
    (1, 4096, 1024),
    (1, 4096, 512),
]
# The other variants at the target shapes, plus a small one.
VARIANTS = ("adaln rms", "adaln fp32 form", "residual_adaln fp32 form", "select01", "select01+residual_adaln", "adaln pair")
VARIANT_SHAPES = [(1, 4096, 3072), (1, 32760, 1536), (1, 256, 3072)]
# LLM hidden sizes, prefill to short chunks (the weight is read once: not counted in the floor).
LLM_SHAPES = [(1, 8192, 4096), (1, 4096, 4096), (1, 1024, 4096), (1, 256, 4096), (1, 4096, 2048), (1, 4096, 5120), (1, 4096, 8192)]
# adaln on a sum used only there: the size rule refuses it at every size; these check that it should.
AFTER_ADD_SHAPES = [(1, 1024, 3072), (1, 4096, 3072), (2, 4096, 3072), (1, 32760, 1536)]
SWEEP_SHAPES = [(1, 4096, 3072), (1, 32760, 1536)]


def main() -> None:
    """Run every case, print the table last, write JSON to --out."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="directory for results.json")
    parser.add_argument("--sweep", default="", help="also sweep kernel launch configs of these kinds: adaln,residual_adaln,select01,pair")
    parser.add_argument("--sweep-only", action="store_true", help="only the sweep (no cases, no host overhead)")
    parser.add_argument(
        "--f1-shapes", default=None, help="only these adaln shapes, e.g. 1x4096x2048,2x4096x2048 (no residual_adaln cases)"
    )
    parser.add_argument("--cases", default="", help="only these cases at their shapes, e.g. 'residual_adaln rms weight,residual_adaln'")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench_adaln.py needs a CUDA GPU")
    torch.manual_seed(0)
    # Every compile runs the passes (an FX-graph-cache hit would skip them and hide what fired).
    torch._inductor.config.force_disable_caches = True
    dtype = torch.bfloat16
    bandwidth = copy_bandwidth()
    if args.f1_shapes:
        f1_shapes = [tuple(int(n) for n in shape.split("x")) for shape in args.f1_shapes.split(",")]
        f2_shapes = []
    else:
        f1_shapes, f2_shapes = F1_SHAPES, F2_SHAPES
    plan = [(CASES["adaln"], shape) for shape in f1_shapes] + [(CASES["residual_adaln"], shape) for shape in f2_shapes]
    if not args.f1_shapes:
        plan += [(CASES[name], shape) for name in VARIANTS for shape in VARIANT_SHAPES]
        plan += [(CASES["adaln after add"], shape) for shape in AFTER_ADD_SHAPES]
        plan += [(CASES["residual_adaln rms weight"], shape) for shape in LLM_SHAPES]
    if args.cases:
        names = args.cases.split(",")
        unknown = sorted(set(names) - set(CASES))
        if unknown:
            raise SystemExit(f"--cases: unknown {unknown}, expected names from {sorted(CASES)}")
        plan = [(case, shape) for case, shape in plan if case in {CASES[name] for name in names}]
    rows = []
    plan = [] if args.sweep_only else plan
    with progress("bench_adaln: compiling and timing each case (eager, Inductor alone, fused)", total=len(plan)) as advance:
        for case, shape in plan:
            rows.append(bench(case, shape, bandwidth, dtype))
            print("row", json.dumps(dataclasses.asdict(rows[-1])), flush=True)
            advance()
    kinds = [kind for kind in args.sweep.split(",") if kind]
    sweep = []
    for kind in kinds:
        sweep += [r for shape in SWEEP_SHAPES for r in sweep_configs(kind, shape, dtype)]
        if args.out:  # kept if a later kind runs out of time
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / "sweep.json").write_text(json.dumps(sweep))
    overhead = {} if args.sweep_only else host_overhead(dtype)

    meta = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "date": datetime.date.today().isoformat(),
        "copy_bandwidth_TBps": bandwidth / 1e12,
        "dtype": str(dtype),
    }
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        payload = {"meta": meta, "rows": [dataclasses.asdict(r) for r in rows], "sweep": sweep, "host_overhead": overhead}
        (args.out / "results.json").write_text(json.dumps(payload, indent=1))
    for kind in kinds:
        for shape in SWEEP_SHAPES:
            timed = sorted((r for r in sweep if r["kind"] == kind and r["shape"] == shape), key=lambda r: r["ms"])
            for result in timed[:5] + [r for r in timed if r["default"]]:
                print(f"sweep {result['kind']} {result['shape']} config={result['config']} {result['ms'] * 1e3:.1f} us")
    print(json.dumps(meta))
    print("host us per adaln call:", json.dumps({k: round(v, 1) for k, v in overhead.items()}))
    print("| case | x shape | eager ms | Inductor ms | fused ms | fires | forced ms | kernel ms | copy ms | floor ms | fused/floor | Inductor/fused | Inductor/forced | rel err fused | rel err Inductor |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r.case} | {list(r.shape)} | {r.eager_ms:.4f} | {r.inductor_ms:.4f} | {r.fused_ms:.4f} | {r.fusions} | "
            f"{r.forced_ms:.4f} | {r.kernel_ms:.4f} | {r.copy_ms:.4f} | {r.floor_ms:.4f} | {r.over_floor:.2f} | {r.speedup:.2f}x | "
            f"{r.inductor_ms / r.forced_ms:.2f}x | "
            f"{r.rel_err_fused:.1e} | {r.rel_err_inductor:.1e} |"
        )


if __name__ == "__main__":
    main()
