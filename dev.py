#!/usr/bin/env python3
"""Developer entry point; needs nothing but Python 3.10+.

    python3 dev.py demo [args]   compile FLUX with the fusion_passes backend, print the report and parity
    python3 dev.py test [args]   run the test suite (pytest args pass through)

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


def main(argv: list[str]) -> int:
    """Dispatch ``demo`` or ``test``; returns the exit code."""
    commands = {
        "demo": [str(ROOT / "examples" / "compile_flux.py")],
        "test": ["-m", "pytest", "-q", str(ROOT / "tests")],
    }
    if not argv or argv[0] not in commands:
        print(__doc__, file=sys.stderr)
        return 2
    setup()
    code = subprocess.run([str(PYTHON), *commands[argv[0]], *argv[1:]], cwd=ROOT).returncode
    if argv[0] == "test" and code == 5:
        print("dev.py: pytest collected no tests; that is a failure", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
