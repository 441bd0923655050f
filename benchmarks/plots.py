"""PNG charts of the benchmark results (docs/results/*.json), for the README.

    python benchmarks/plots.py [--blocks JSON] [--adaln JSON] [--rope JSON] [--conv1d JSON] [--out DIR]

- ``blocks-speedup.png``: each block's speedup over Inductor alone against its resolution (latent
  tokens), with CUDA graphs and without (``bench_blocks.py``'s JSON).
- ``fused-op-bandwidth.png``: each fused op's effective bandwidth (the least bytes the chain must
  move, over its time) against the memory floor (a plain copy's bandwidth on the same GPU), beside
  Inductor alone on the same chain (``bench_adaln.py``, ``bench_rope.py``, ``bench_conv1d.py``'s JSONs).

Needs matplotlib (``pip install 'fusion-passes[plots]'``); it is no dependency of the package.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))
import model_zoo  # noqa: E402

RESULTS = ROOT / "docs" / "results"
# The latest run of each benchmark (docs/BENCHMARKS.md): blocks run I, AdaLN run E, RoPE run F, conv1d run G.
DEFAULTS = {
    "blocks": RESULTS / "2026-12-03-h200-blocks-run-i.json",
    "adaln": RESULTS / "2026-11-22-h200-fusions-per-kind.json",
    "rope": RESULTS / "2026-11-22-h200-rope.json",
    "conv1d": RESULTS / "2026-12-01-h200-conv1d.json",
}


def pyplot() -> Any:
    """matplotlib's pyplot, drawing to files only; a clear error where matplotlib is not installed."""
    try:
        import matplotlib
    except ImportError:
        raise ImportError(
            "benchmarks/plots.py needs matplotlib, an optional extra: pip install 'fusion-passes[plots]' "
            "(or pip install matplotlib)"
        ) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def has_matplotlib() -> bool:
    """Whether the plots can be drawn here."""
    try:
        pyplot()
    except ImportError:
        return False
    return True


def latent_tokens(model: str, size: str) -> int:
    """Image or video tokens a block sees at a benchmark size (``"1024"`` px square, ``"81x480x832"`` video)."""
    if "x" in size:
        frames, height, width = model_zoo.latent_video(size)
        return frames * (height // 2) * (width // 2)  # 2x2 patches of the latent
    return (int(size) // 16) ** 2  # 8x VAE, 2x2 patches: 16 px per token side


# The result files label cases by the issue tracker's numbering of the chains, said here by name.
_CHAIN_NAMES = ("", "AdaLN", "residual AdaLN", "per-token choice", "q/k norm + RoPE", "RoPE", "causal conv1d")


def case_name(case: str) -> str:
    """A result file's case label with the chains' numbers said by name."""
    return re.sub(r"\bF([1-6])\b", lambda match: _CHAIN_NAMES[int(match[1])], case)


def _measured_on(meta: dict[str, Any]) -> str:
    return f"{meta.get('device', '?')}, torch {meta.get('torch', '?')}, {meta.get('date', '?')}"


def write_block_speedups(results: Path, out: Path) -> Path:
    """Per-block speedup over Inductor alone against resolution, with and without CUDA graphs; returns the PNG's path."""
    plt = pyplot()
    record = json.loads(results.read_text())
    series: dict[str, list[tuple[int, float, float]]] = {}
    for row in record["rows"]:
        label = f"{row['model']} {row['block']}"
        series.setdefault(label, []).append((latent_tokens(row["model"], row["size"]), row["speedup"],
                                             row["speedup_no_graph"]))
    figure, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for axis, column, title in ((axes[0], 1, "CUDA-graph replay"), (axes[1], 2, "without CUDA graphs (default mode)")):
        for label, points in sorted(series.items()):
            points.sort()
            axis.plot([p[0] for p in points], [p[column] for p in points], marker="o", label=label)
        axis.axhline(1.0, color="gray", linestyle="--", linewidth=1)
        axis.set_xscale("log")
        axis.set_xlabel("image / video tokens per block (log)")
        axis.set_title(title)
        axis.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("speedup over Inductor alone (x)")
    axes[1].legend(fontsize=8)
    figure.suptitle(f"Whole blocks, bf16: fusion_passes over torch.compile alone ({_measured_on(record['meta'])})")
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=110)
    plt.close(figure)
    return out


def op_bandwidths(record: dict[str, Any]) -> list[dict[str, Any]]:
    """Per row of a fused-op benchmark: the bytes the chain must move and the fused op's and Inductor's TB/s.

    The fused op's time is the forced one (size rule off: the op runs at every shape) or, for an op
    benchmarked alone (the packed conv1d), the kernel's.
    """
    bandwidth = record["meta"]["copy_bandwidth_TBps"]
    points = []
    for row in record["rows"]:
        floor_bytes = row.get("floor_bytes") or row["floor_ms"] * 1e-3 * bandwidth * 1e12
        fused_ms = row.get("forced_ms")
        if fused_ms is None or math.isnan(fused_ms):
            fused_ms = row.get("kernel_ms")
        if fused_ms is None or math.isnan(fused_ms):
            continue
        inductor_ms = row.get("inductor_ms")
        case = case_name(row["case"])
        if "part" in row:  # bench_conv1d: part A, the op in compiled graphs; part B, the packed op alone
            case = {"A": "dense", "B": "packed varlen"}.get(row["part"], row["part"]) + ", " + case.removeprefix(row["part"] + " ")
        points.append({
            "case": case,
            "bytes": floor_bytes,
            "fused_TBps": floor_bytes / (fused_ms * 1e-3) / 1e12,
            "inductor_TBps": None if inductor_ms is None or math.isnan(inductor_ms) else floor_bytes / (inductor_ms * 1e-3) / 1e12,
        })
    return points


def write_op_bandwidths(results: dict[str, Path], out: Path) -> Path:
    """Each fused op's effective bandwidth against the memory floor, one panel per family; returns the PNG's path."""
    plt = pyplot()
    figure, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 6.5), sharey=True)
    for axis, (family, path) in zip(axes, results.items()):
        record = json.loads(path.read_text())
        points = op_bandwidths(record)
        colors: dict[str, Any] = {}
        for point in points:
            first = point["case"] not in colors  # one legend entry per case
            color = colors.setdefault(point["case"], plt.get_cmap("tab20")(len(colors) % 20))
            axis.scatter(point["bytes"], point["fused_TBps"], color=color, marker="o", s=22,
                         label=point["case"] if first else None)
            if point["inductor_TBps"] is not None:
                axis.scatter(point["bytes"], point["inductor_TBps"], facecolors="none", edgecolors=color, marker="s", s=22)
        axis.axhline(record["meta"]["copy_bandwidth_TBps"], color="black", linestyle="--", linewidth=1)
        axis.text(0.02, 0.97, f"memory floor: copy at {record['meta']['copy_bandwidth_TBps']:.2f} TB/s",
                  transform=axis.transAxes, va="top", fontsize=8)
        axis.set_xscale("log")
        axis.set_xlabel("bytes the chain must move (log)")
        axis.set_title(f"{family} ({_measured_on(record['meta'])})", fontsize=9)
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize=7, loc="upper left", bbox_to_anchor=(0, -0.12), ncol=2, frameon=False)
    axes[0].set_ylabel("TB/s (filled: fused op; hollow squares: Inductor alone)")
    figure.suptitle("Fused ops against the memory floor, bf16: effective bandwidth = least bytes moved / time")
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=110)
    plt.close(figure)
    return out


def main(argv: list[str] | None = None) -> int:
    """Draw both charts from the given (default: the latest documented) result files into --out (default docs/)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name, path in DEFAULTS.items():
        parser.add_argument(f"--{name}", type=Path, default=path, help=f"default: {path.relative_to(ROOT)}")
    parser.add_argument("--out", type=Path, default=ROOT / "docs")
    args = parser.parse_args(argv)
    try:
        written = [
            write_block_speedups(args.blocks, args.out / "blocks-speedup.png"),
            write_op_bandwidths({"AdaLN": args.adaln, "RoPE": args.rope, "causal conv1d": args.conv1d},
                                args.out / "fused-op-bandwidth.png"),
        ]
    except ImportError as error:
        raise SystemExit(str(error)) from None
    for path in written:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
