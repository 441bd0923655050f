#!/usr/bin/env bash
# One GPU session's work on the device machine (torch and triton preinstalled, no network):
#   bash benchmarks/gpu_session.sh tests [paths/args]    the test suite (default: all of tests/), CUDA tests included
#   bash benchmarks/gpu_session.sh bench NAME [args]      benchmarks/bench_NAME.py --out $OUT [args]
# Test-only packages the image lacks (expecttest, diffusers) travel as wheels in .whl/ (see README).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-./gpu_out}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site
fi
# fusion_passes.kernels exists only through the package mapping: install the checkout (editable).
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . >/dev/null || exit 1
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv,noheader
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
export PYTHONUNBUFFERED=1
command=${1:-tests}
shift || true
case "$command" in
    # The install test needs the package index, which the device machine cannot reach.
    # Eight workers where pytest-xdist is installed (not one of the test extras), else one.
    tests) workers=$(python3 -c "import xdist" 2>/dev/null && echo "-n 8")
           python3 -m pytest -q -p no:cacheprovider $workers -m "not install" "${@:-tests}" 2>&1 | tee "$OUT/tests.log" | tail -30 ;;
    bench) name=$1; shift; python3 "benchmarks/bench_$name.py" --out "$OUT" "$@" 2>&1 | tee "$OUT/bench_$name.log" ;;
    *) echo "gpu_session.sh: expected 'tests' or 'bench NAME', got '$command'" >&2; exit 2 ;;
esac
