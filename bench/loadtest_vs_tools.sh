#!/usr/bin/env bash
# Reproduce the "load generator rate" table: gateway loadtest vs perf_analyzer vs wrk against the bare
# netlimit server, load generator and server on the same cores.
#   bench/loadtest_vs_tools.sh [SECONDS=5] [CONCURRENCY=64] [PROCS=2] [OPEN_PROCS=1]
# Needs wrk (apt-get install -y wrk); provisions perf_analyzer into .perf_analyzer/ unless PERF_ANALYZER is set.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-/work/venv/bin/python}
command -v wrk >/dev/null || { echo "wrk missing: apt-get install -y wrk" >&2; exit 1; }
if [[ -z ${PERF_ANALYZER:-} ]]; then
  PERF_ANALYZER=$(bash /work/shared/bench/get_perf_analyzer.sh .perf_analyzer | tail -1)
fi
export PERF_ANALYZER
echo "machine: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)" >&2
exec "$PY" bench/loadtest_vs_tools.py --seconds "${1:-5}" --concurrency "${2:-64}" --procs "${3:-2}" --open-procs "${4:-1}"
