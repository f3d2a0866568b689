#!/usr/bin/env bash
# Provision a virtual environment with a real Triton Inference Server (PyTriton's wheel bundles
# tritonserver 2.51, CPU-only here) for tests/test_remote_triton.py.
#
#   bash tests/pytriton/provision.sh DIR     # last line printed: DIR/bin/python
#
# Its own venv, never the project's: nvidia-pytriton 0.7.0 requires numpy<2, the project numpy 2.
# Idempotent: DIR/.ok marks a finished install (a half-made DIR from an interrupted run is redone).
# Exit status 75 (EX_TEMPFAIL): pip could not reach the package index (no network); any other
# failure is 1. The pip log goes to stderr, so that stdout's last line is the interpreter.
set -euo pipefail

dir=${1:?usage: provision.sh DIR}
mkdir -p "$(dirname "$dir")"
dir=$(cd "$(dirname "$dir")" && pwd)/$(basename "$dir")

# Pins, each for a reason:
# - nvidia-pytriton 0.7.0: the release the tests were written against (Triton 2.51 inside; its
#   access-token guard on statistics/repository APIs, relaxed in serve.py).
# - numpy 1.26.4: pytriton 0.7.0 requires numpy<2; the last 1.x release.
# - onnxruntime 1.20.1: built against numpy 2's ABI, which also runs on numpy 1.x (>=1.21.6), with
#   cp311/cp312 wheels; the serving function in serve.py runs the ONNX file with it.
# - onnx 1.17.0: the last release whose wheels are built and tested with numpy 1.x as well as 2.
# - tritonclient 2.51.0: pytriton asks only for ~=2.50; the client of the same release as the
#   bundled server, so its readiness checks speak the same protocol version.
PINS=("nvidia-pytriton==0.7.0" "numpy==1.26.4" "onnxruntime==1.20.1" "onnx==1.17.0" "tritonclient[grpc,http]==2.51.0")

if [[ -f $dir/.ok ]]; then
  echo "$dir/bin/python"
  exit 0
fi

# One installer at a time for this DIR (two test runs starting together).
exec 9>"$dir.lock"
flock -w 600 9 || { echo "provision.sh: could not lock $dir.lock within 600 s" >&2; exit 1; }
if [[ -f $dir/.ok ]]; then
  echo "$dir/bin/python"
  exit 0
fi

rm -rf "$dir"
python3 -m venv "$dir"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
if ! "$dir/bin/python" -m pip install --no-input --progress-bar off --only-binary :all: --no-compile "${PINS[@]}" >"$log" 2>&1; then
  grep -v "^WARNING: Location" "$log" | tail -n 30 >&2
  if grep -qE "NewConnectionError|connection broken by|Read timed out|Temporary failure in name resolution|Name or service not known|Network is unreachable|ConnectTimeoutError|Failed to establish a new connection" "$log"; then
    echo "provision.sh: the package index is unreachable (no network)" >&2
    exit 75
  fi
  echo "provision.sh: pip install failed" >&2
  exit 1
fi
grep -E "^Successfully installed" "$log" >&2 || true

# The pins hold, and what serve.py imports imports.
"$dir/bin/python" - >&2 <<'PY'
import numpy, onnxruntime, pytriton.triton  # noqa: F401
assert numpy.__version__.startswith("1."), numpy.__version__
print("pytriton venv ok: numpy", numpy.__version__, "onnxruntime", onnxruntime.__version__)
PY
touch "$dir/.ok"
echo "$dir/bin/python"
