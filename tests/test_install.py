"""A plain install, as a new user makes it: the built wheel in a fresh virtual environment with only
its declared dependencies (no test extras), then a model compiled by backend name.

Needs the package index (torch and triton are installed into the new environment); a machine
without one deselects it with ``-m "not install"``.
"""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Compiled without importing fusion_passes first: the backend is found through its entry point.
USER_SCRIPT = """
import torch
import torch.nn.functional as F

def block(x, scale, shift):
    return F.layer_norm(x, x.shape[-1:], eps=1e-6) * (1 + scale) + shift

args = (torch.randn(2, 8, 32), torch.randn(2, 1, 32), torch.randn(2, 1, 32))
compiled = torch.compile(block, backend="fusion_passes", options={"fusion_passes": {"devices": ["cpu"]}})
torch.testing.assert_close(compiled(*args), block(*args))
import fusion_passes
print("counts", fusion_passes.report().counts())
"""


@pytest.mark.install
def test_wheel_in_a_fresh_environment(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", str(dist), str(ROOT)],
        check=True,
    )
    (wheel,) = dist.glob("fusion_passes-*.whl")
    venv.create(tmp_path / "env", with_pip=True)
    python = tmp_path / "env" / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    # The torch and triton this suite runs on, so the install takes them from the local cache.
    pins = [f"{name}=={importlib.metadata.version(name)}" for name in ("torch", "triton")]
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", str(wheel), *pins], check=True
    )
    environment = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "TRITON_INTERPRET")}
    # A new user's empty compile cache: the passes run in this environment (a cache hit from an
    # earlier run would replay that run's report instead).
    environment["TORCHINDUCTOR_CACHE_DIR"] = str(tmp_path / "inductor_cache")
    result = subprocess.run(
        [str(python), "-c", USER_SCRIPT], capture_output=True, text=True, cwd=tmp_path, env=environment, timeout=600
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert "counts {'adaln': 1}" in result.stdout
