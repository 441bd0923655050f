"""benchmarks/plots.py: the charts render from the committed results where matplotlib is installed,
and without it the error says how to install it."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import plots  # noqa: E402


def test_without_matplotlib_the_error_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib raises ImportError
    assert not plots.has_matplotlib()
    with pytest.raises(SystemExit, match=r"needs matplotlib, an optional extra: pip install 'fusion-passes\[plots\]'"):
        plots.main(["--out", "unused"])


def test_sizes_are_tokens_per_block():
    assert plots.latent_tokens("flux", "1024") == 4096
    assert plots.latent_tokens("wan", "81x480x832") == 32760


def test_bandwidths_use_the_fused_ops_time_and_name_the_chains():
    record = {"meta": {"copy_bandwidth_TBps": 4.0}, "rows": [
        {"case": "F2 res+g*x -> F1", "floor_ms": 0.01, "forced_ms": 0.02, "inductor_ms": 0.04},
        {"case": "skipped", "floor_ms": 0.01, "forced_ms": float("nan"), "kernel_ms": float("nan")},
    ]}
    (point,) = plots.op_bandwidths(record)
    assert point["case"] == "residual AdaLN res+g*x -> AdaLN"
    assert point["bytes"] == pytest.approx(4e7)
    assert (point["fused_TBps"], point["inductor_TBps"]) == (pytest.approx(2.0), pytest.approx(1.0))


def test_the_charts_render_from_the_committed_results(tmp_path):
    pytest.importorskip("matplotlib")
    assert plots.main(["--out", str(tmp_path)]) == 0
    assert sorted(path.name for path in tmp_path.iterdir()) == ["blocks-speedup.png", "fused-op-bandwidth.png"]
