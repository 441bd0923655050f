#!/usr/bin/env python3
"""Developer entry point; needs nothing but Python 3.10+.

    python3 dev.py demo [args]   compile FLUX with the fusion_passes backend, print the report and parity
    python3 dev.py test [args]   run the test suite (pytest args pass through)
    python3 dev.py test-newest [args]   the torch-facing tests on the newest torch and triton from
                                 the package index (./.venv-newest, upgraded on every run; CI's second leg)

Each command first makes ./.venv and installs the package with its test extras (once; again only
when pyproject.toml or this file changes).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
PYTHON = VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
STAMP = VENV / ".fusion_passes-installed"
# Pinned for development: torch 2.13.0 (a CPU wheel on the project's machines), Triton 3.6 as on
# the GPU machine, and numpy < 2.4, whose stricter scalar conversion breaks Triton 3.6's CPU
# interpreter (loops with runtime bounds). The package itself accepts torch >= 2.9.
DEV_PINS = ["torch==2.13.0", "triton==3.6.0", "numpy<2.4"]


def _setup_digest() -> str:
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes() + Path(__file__).read_bytes())
    return digest.hexdigest()


def setup() -> None:
    """Create .venv and install the package (editable) with test extras, if not already current."""
    if STAMP.exists() and STAMP.read_text() == _setup_digest():
        return
    if not PYTHON.exists():
        print(f"dev.py: creating {VENV}", flush=True)
        venv.create(VENV, with_pip=True)
    pip = [str(PYTHON), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    print("dev.py: installing " + " ".join(DEV_PINS) + " and fusion-passes[test]", flush=True)
    subprocess.run([*pip, *DEV_PINS, "-e", f"{ROOT}[test]"], check=True)
    STAMP.write_text(_setup_digest())


NEWEST_VENV = ROOT / ".venv-newest"
# The tests that exercise torch's and Triton's internals (pattern matcher, Inductor hooks, the
# launch step, the interpreter): what a new torch or triton release breaks first. A slice, so that
# this leg and the pinned one fit in CI's time together (its install downloads several GB).
NEWEST_TESTS = ["tests/test_kernel_launches.py", "tests/test_adaln_patterns.py", "tests/test_rope_patterns.py",
                "tests/test_compile_robustness.py", "tests/test_linear_gelu_patterns.py"]


def setup_newest() -> Path:
    """Make .venv-newest with the newest torch and triton on the package index; returns its python."""
    python = NEWEST_VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    if not python.exists():
        print(f"dev.py: creating {NEWEST_VENV}", flush=True)
        venv.create(NEWEST_VENV, with_pip=True)
    # No machine-wide pip settings: a constraint file capping torch would hide the newest release.
    env = {**os.environ, "PIP_CONFIG_FILE": os.devnull, "PIP_CONSTRAINT": ""}
    print("dev.py: installing the newest torch and triton (unpinned) and fusion-passes[test]", flush=True)
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--upgrade",
                    "torch", "triton", "numpy", "-e", f"{ROOT}[test]"], check=True, env=env)
    subprocess.run([str(python), "-c", "import torch, triton; print('dev.py: torch', torch.__version__, 'triton', triton.__version__)"],
                   check=True)
    return python


def main(argv: list[str]) -> int:
    """Dispatch ``demo``, ``test`` or ``test-newest``; returns the exit code."""
    # -P: the working directory stays off sys.path, so the top-level kernels/ directory (installed as
    # fusion_passes.kernels) cannot shadow an installed package named kernels (Hugging Face's, which
    # diffusers imports when it is installed).
    safe_path = ["-P"] if sys.version_info >= (3, 11) else []
    commands = {
        "demo": [str(ROOT / "examples" / "compile_flux.py")],
        "test": [*safe_path, "-m", "pytest", "-q", str(ROOT / "tests")],
    }
    if argv and argv[0] == "test-newest":
        python = setup_newest()
        command = [str(python), *safe_path, "-m", "pytest", "-q", *(argv[1:] or NEWEST_TESTS)]
        code = subprocess.run(command, cwd=ROOT).returncode
    elif not argv or argv[0] not in commands:
        print(__doc__, file=sys.stderr)
        return 2
    else:
        setup()
        if argv[0] == "test" and len(argv) == 1:
            print("dev.py: running the whole test suite: about 15-22 minutes on 2 CPU cores, one dot per test "
                  "(pass pytest arguments to narrow it, e.g. -m 'not examples' or tests/test_report.py)", flush=True)
        code = subprocess.run([str(PYTHON), *commands[argv[0]], *argv[1:]], cwd=ROOT).returncode
    if argv[0].startswith("test") and code == 5:
        print("dev.py: pytest collected no tests; that is a failure", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
