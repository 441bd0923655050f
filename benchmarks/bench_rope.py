"""GPU benchmark of the RoPE family: eager vs Inductor alone vs fused vs the floor.

Run on a CUDA machine: ``python benchmarks/bench_rope.py [--out DIR] [--sweep]``.
Each case runs q and k (``[B, L, H, D]``, bf16) through a model's spelling; every case is checked
(fused output against an fp64 run and against Inductor), then timed with CUDA-graph replay. The
floor is the minimum bytes (q and k read and written once, tables and weights read once) over
the copy bandwidth measured in the same run. ``--sweep`` also times the kernel alone over launch
configs, one program per (token, head) included. A table goes to stdout (last), JSON to DIR.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
import triton
from chain_bench import INPUT_SETS, compile_fresh, copy_bandwidth, relative_error, time_copy, time_cuda_graph

import fusion_passes
from fusion_passes.progress import progress
from fusion_passes.kernels import rope as rope_kernels

EPS = 1e-6


# --- Spellings (as the models write them) ---------------------------------------------------------


def rms_norm(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """torch.nn.RMSNorm over the head dim (FLUX's norm_q / norm_k)."""
    return F.rms_norm(x, x.shape[-1:], weight, EPS)


def rms_norm_fp32_statistics(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """diffusers' RMSNorm (Qwen-Image, HunyuanVideo): fp32 statistics, rounded before the weight."""
    variance = x.float().pow(2).mean(-1, keepdim=True)
    return (x * torch.rsqrt(variance + EPS)).to(weight.dtype) * weight


def rope_interleaved(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """FLUX: real tables repeated per pair, ``stack([-x_odd, x_even])``."""
    real, imaginary = x.reshape(*x.shape[:-1], -1, 2).unbind(-1)
    rotated = torch.stack([-imaginary, real], dim=-1).flatten(3)
    return (x.float() * cos[None, :, None] + rotated.float() * sin[None, :, None]).to(x.dtype)


def rope_half_split(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """LLM ``rotate_half`` ("neox"): tables whose halves repeat."""
    first, second = x.chunk(2, dim=-1)
    rotated = torch.cat([-second, first], dim=-1)
    return (x.float() * cos[None, :, None] + rotated.float() * sin[None, :, None]).to(x.dtype)


def rope_complex(x: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """Qwen-Image: ``view_as_complex(x) * freqs``."""
    rotated = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2)) * freqs.unsqueeze(1)
    return torch.view_as_real(rotated).flatten(3).type_as(x)


def rope_slice_assignment(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Wan: even and odd members written by slice assignment; fp32 tables repeated per pair."""
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    cos, sin = cos[None, :, None, 0::2], sin[None, :, None, 1::2]
    out = torch.empty_like(x)
    out[..., 0::2] = x1 * cos - x2 * sin
    out[..., 1::2] = x1 * sin + x2 * cos
    return out.type_as(x)


def rms_norm_across_heads(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Wan's norm_q / norm_k: RMSNorm over all heads of a token before the head split."""
    return F.rms_norm(x.flatten(2), weight.shape, weight, EPS).unflatten(2, x.shape[2:])


def f4_interleaved(q, k, wq, wk, cos, sin):
    return rope_interleaved(rms_norm(q, wq), cos, sin), rope_interleaved(rms_norm(k, wk), cos, sin)


def f4_half_split(q, k, wq, wk, cos, sin):
    return rope_half_split(rms_norm(q, wq), cos, sin), rope_half_split(rms_norm(k, wk), cos, sin)


def f4_complex(q, k, wq, wk, freqs):
    return (
        rope_complex(rms_norm_fp32_statistics(q, wq), freqs),
        rope_complex(rms_norm_fp32_statistics(k, wk), freqs),
    )


def f4_across_heads(q, k, wq, wk, cos, sin):
    return (
        rope_slice_assignment(rms_norm_across_heads(q, wq), cos, sin),
        rope_slice_assignment(rms_norm_across_heads(k, wk), cos, sin),
    )


def f5_interleaved(q, k, cos, sin):
    return rope_interleaved(q, cos, sin), rope_interleaved(k, cos, sin)


def f4_joint(q_txt, q_img, k_txt, k_img, wq_txt, wq_img, wk_txt, wk_img, cos, sin):
    """FLUX double block: each stream normalized with its weights, cat, one rope over the joint sequence."""
    q = torch.cat([rms_norm(q_txt, wq_txt), rms_norm(q_img, wq_img)], dim=1)
    k = torch.cat([rms_norm(k_txt, wk_txt), rms_norm(k_img, wk_img)], dim=1)
    return rope_interleaved(q, cos, sin), rope_interleaved(k, cos, sin)


# --- Cases ----------------------------------------------------------------------------------------


def _tables(kind: str, tokens: int, head_dim: int) -> tuple[torch.Tensor, ...]:
    angles = torch.randn(tokens, head_dim // 2, device="cuda", dtype=torch.float64)
    if kind == "complex":
        return (torch.polar(torch.ones_like(angles), angles).to(torch.complex64),)
    repeat = (lambda t: t.repeat_interleave(2, dim=1)) if kind == "interleaved" else (lambda t: torch.cat([t, t], dim=1))
    return repeat(angles.cos()).float(), repeat(angles.sin()).float()


@dataclasses.dataclass(frozen=True)
class Case:
    """A chain to time on q and k of ``[B, L, H, D]``."""

    name: str
    fn: Callable[..., object]
    tables: str  # "interleaved", "half-split" or "complex"
    normed: bool
    joint_text: int = 0  # > 0: the first this many tokens are a separately normalized text stream
    across_heads: bool = False  # norm weights over all heads ([H * D]), not one head ([D])

    def inputs(self, shape: tuple[int, int, int, int], dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
        """Fresh q, k (split into streams for a joint case), norm weights, tables."""
        batch, tokens, heads, head_dim = shape
        q, k = (torch.randn(shape, dtype=dtype, device="cuda") for _ in range(2))
        width = heads * head_dim if self.across_heads else head_dim
        weight = lambda: 1 + 0.1 * torch.randn(width, dtype=dtype, device="cuda")  # noqa: E731
        tables = _tables(self.tables, tokens, head_dim)
        if self.joint_text:
            cut = self.joint_text
            return (q[:, :cut].contiguous(), q[:, cut:].contiguous(), k[:, :cut].contiguous(), k[:, cut:].contiguous(),
                    weight(), weight(), weight(), weight(), *tables)
        return (q, k, *((weight(), weight()) if self.normed else ()), *tables)

    def floor_bytes(self, shape: tuple[int, int, int, int], dtype: torch.dtype) -> int:
        """q and k read and written once; tables and weights read once."""
        batch, tokens, heads, head_dim = shape
        element = torch.finfo(dtype).bits // 8
        activations = 4 * batch * tokens * heads * head_dim * element
        tables = tokens * head_dim * 4 * (1 if self.tables == "complex" else 2)
        width = heads * head_dim if self.across_heads else head_dim
        weights = (4 if self.joint_text else 2) * width * element if self.normed else 0
        return activations + tables + weights


CASES = {
    "norm+rope interleaved": Case("norm+rope interleaved (FLUX)", f4_interleaved, "interleaved", normed=True),
    "norm+rope half-split": Case("norm+rope half-split (neox)", f4_half_split, "half-split", normed=True),
    "norm+rope complex": Case("norm+rope complex (Qwen-Image)", f4_complex, "complex", normed=True),
    "rope interleaved": Case("rope interleaved, no norm", f5_interleaved, "interleaved", normed=False),
    "norm+rope across heads": Case("norm+rope across heads, slice assignment (Wan)", f4_across_heads, "interleaved", normed=True, across_heads=True),
    "norm+rope joint": Case("norm+rope joint txt+img (FLUX)", f4_joint, "interleaved", normed=True, joint_text=512),
}
TARGET_SHAPES = [(1, 4608, 24, 128), (1, 32760, 12, 128)]
SMALL_SHAPES = [(1, 64, 24, 128), (1, 256, 24, 128), (1, 1024, 24, 128), (2, 64, 4, 32)]
PLAN = (
    [(name, shape) for name in ("norm+rope interleaved", "norm+rope half-split", "norm+rope complex", "rope interleaved", "norm+rope across heads") for shape in TARGET_SHAPES]
    + [("norm+rope joint", (1, 4608, 24, 128))]
    + [(name, shape) for name in ("norm+rope interleaved", "norm+rope complex", "rope interleaved") for shape in SMALL_SHAPES]
)


@dataclasses.dataclass
class Row:
    case: str
    shape: tuple[int, ...]
    eager_ms: float
    inductor_ms: float
    fused_ms: float
    forced_ms: float
    copy_ms: float
    floor_ms: float
    fusions: int
    rel_err_fused: float
    rel_err_inductor: float


def _double(value: torch.Tensor) -> torch.Tensor:
    if value.is_complex():
        return value.to(torch.complex128)
    return value.double() if value.is_floating_point() else value


def bench(case: Case, shape: tuple[int, int, int, int], bandwidth: float, dtype: torch.dtype) -> Row:
    """Check, then time, one case at one shape."""
    input_sets = [case.inputs(shape, dtype) for _ in range(INPUT_SETS)]
    torch._dynamo.reset()
    fusion_passes.reset_report()
    inductor = compile_fresh(case.fn, "inductor")
    fused = compile_fresh(case.fn, "fusion_passes")
    args = input_sets[0]
    ref = case.fn(*map(_double, args))
    rel_err_fused = relative_error(fused(*args), ref)
    rel_err_inductor = relative_error(inductor(*args), ref)
    fusions = fusion_passes.report().counts().get("rope", 0)
    times = {
        "eager_ms": time_cuda_graph(case.fn, input_sets),
        "inductor_ms": time_cuda_graph(inductor, input_sets),
        "fused_ms": time_cuda_graph(fused, input_sets),
        "copy_ms": time_copy(case.floor_bytes(shape, dtype) // 2, len(input_sets)),
    }
    torch._dynamo.reset()
    forced = compile_fresh(case.fn, "fusion_passes", size_rule=False)
    forced(*args)
    return Row(
        case=case.name, shape=shape, rel_err_fused=rel_err_fused, rel_err_inductor=rel_err_inductor, fusions=fusions,
        forced_ms=time_cuda_graph(forced, input_sets), floor_ms=case.floor_bytes(shape, dtype) / bandwidth * 1e3, **times,
    )


NORMS = ("none", "head", "heads")


def sweep_configs(shape: tuple[int, int, int, int], dtype: torch.dtype, norm: str) -> list[dict]:
    """The kernel alone on q (rope, or norm+rope with a per-head or across-heads norm) over launch configs."""
    batch, tokens, heads, head_dim = shape
    cos, sin = _tables("interleaved", tokens, head_dim)
    calls = []
    for _ in range(INPUT_SETS):
        x = torch.randn(shape, dtype=dtype, device="cuda")
        width = head_dim * (heads if norm == "heads" else 1)
        weight = torch.ones(width, dtype=dtype, device="cuda") if norm != "none" else None
        calls.append((rope_kernels.make_call(
            [x], [weight], [EPS], [cos[:, None]], [sin[:, None]], [0, 2, 1, 0], [0, 2, 1, 0],
            norm, "after_weight" if norm != "none" else "none", head_dim, True, 1, dtype,
        ),))
    default = rope_kernels.launch_config(heads, head_dim, norm == "heads")
    all_heads = triton.next_power_of_2(heads)
    results = []
    for block_heads in (all_heads,) if norm == "heads" else (1, 2, 4, 8, 16, 32):
        for num_warps in (1, 2, 4, 8):
            config = rope_kernels.LaunchConfig(block_heads, num_warps)
            ms = time_cuda_graph(lambda call, config=config: rope_kernels.rope_triton(call, config), calls)
            results.append({
                "shape": list(shape), "norm": norm, "block_heads": block_heads, "num_warps": num_warps, "ms": ms,
                "default": config == default,
            })
    return results


def main() -> None:
    """Run every case (and the sweep), print the table last, write JSON to --out."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="directory for rope.json")
    parser.add_argument("--sweep", action="store_true", help="also sweep the kernel's launch configs")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench_rope.py needs a CUDA GPU")
    torch.manual_seed(0)
    torch._inductor.config.force_disable_caches = True
    dtype = torch.bfloat16
    bandwidth = copy_bandwidth()
    rows = []
    with progress("bench_rope: compiling and timing each case (eager, Inductor alone, fused)", total=len(PLAN)) as advance:
        for name, shape in PLAN:
            rows.append(bench(CASES[name], shape, bandwidth, dtype))
            print("row", json.dumps(dataclasses.asdict(rows[-1])), flush=True)
            advance()
    sweep = [r for shape in TARGET_SHAPES for norm in NORMS for r in sweep_configs(shape, dtype, norm)] if args.sweep else []
    meta = {
        "device": torch.cuda.get_device_name(), "torch": torch.__version__, "date": datetime.date.today().isoformat(),
        "copy_bandwidth_TBps": bandwidth / 1e12, "dtype": str(dtype),
    }
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        payload = {"meta": meta, "rows": [dataclasses.asdict(r) for r in rows], "sweep": sweep}
        (args.out / "rope.json").write_text(json.dumps(payload, indent=1))
    for shape in TARGET_SHAPES:
        for norm in NORMS if sweep else ():
            timed = sorted((r for r in sweep if r["shape"] == list(shape) and r["norm"] == norm), key=lambda r: r["ms"])
            print(f"sweep {list(shape)} norm={norm} heads/warps:us", " ".join(
                f"{r['block_heads']}/{r['num_warps']}:{r['ms'] * 1e3:.1f}{'*' if r['default'] else ''}" for r in timed[:8]
            ))
            one = [r["ms"] for r in timed if r["block_heads"] == 1]
            default = [r["ms"] for r in timed if r["default"]]
            if one and default:
                print(f"sweep {list(shape)} norm={norm} default {default[0] * 1e3:.1f} us; best one head per program {min(one) * 1e3:.1f} us")
    print(json.dumps(meta))
    print("| case | q, k shape | eager ms | Inductor ms | fused ms | fires | forced ms | copy ms | floor ms | fused/floor | Inductor/fused | Inductor/forced | rel err fused | rel err Inductor |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r.case} | {list(r.shape)} | {r.eager_ms:.4f} | {r.inductor_ms:.4f} | {r.fused_ms:.4f} | {r.fusions} | "
            f"{r.forced_ms:.4f} | {r.copy_ms:.4f} | {r.floor_ms:.4f} | {r.fused_ms / r.floor_ms:.2f} | "
            f"{r.inductor_ms / r.fused_ms:.2f}x | {r.inductor_ms / r.forced_ms:.2f}x | {r.rel_err_fused:.1e} | {r.rel_err_inductor:.1e} |"
        )


if __name__ == "__main__":
    main()
