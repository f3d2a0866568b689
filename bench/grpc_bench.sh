#!/usr/bin/env bash
# gRPC throughput: the gateway's gRPC front vs a bare grpc.aio server, side by side in one run.
#
#   bench/grpc_bench.sh [SECONDS_PER_STEP] [CONCURRENCIES]      (defaults: 5, "1 8 64")
#
# Both serve model "mlp" (INPUT0 FP32 [-1,64] -> OUTPUT0 FP32 [-1,10]): the gateway runs the real
# demo model (python -m gateway serve --demo), the bare server (bench/grpc_bare_server.py) answers
# every call with a fixed response. perf_analyzer -i grpc drives each at each concurrency, batch 1,
# with the servers and perf_analyzer on the same cores. Prints one table: req/s, p50 and p99 for
# both, and the gateway/bare throughput ratio (target at c=64: >= 0.8, p99 <= 1.5x bare).
# Needs perf_analyzer: /work/shared/bench/get_perf_analyzer.sh .perf_analyzer (or set PERF_ANALYZER).
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-5}
concs=${2:-"1 8 64"}
py=${PYTHON:-python}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # the bare server imports gateway.grpc_gen from the tree
pa=${PERF_ANALYZER:-.perf_analyzer/perf_analyzer}
[[ -x $pa ]] || { echo "no perf_analyzer at $pa: run /work/shared/bench/get_perf_analyzer.sh .perf_analyzer" >&2; exit 2; }
gw_port=${GW_GRPC_PORT:-18001}
bare_port=${BARE_GRPC_PORT:-18011}
out=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$out"; }
trap cleanup EXIT

$py -m gateway serve --demo --http-port 0 --grpc-port "$gw_port" --log-level WARNING >"$out/gw.log" 2>&1 &
pids+=($!); gw_pid=$!
$py bench/grpc_bare_server.py "$bare_port" >"$out/bare.log" 2>&1 &
pids+=($!); bare_pid=$!

wait_ready() {  # port
  for _ in $(seq 1 120); do
    $py - "$1" <<'PY' >/dev/null 2>&1 && return 0
import sys, tritonclient.grpc as g
c = g.InferenceServerClient(f"127.0.0.1:{sys.argv[1]}")
sys.exit(0 if c.is_server_ready() and c.is_model_ready("mlp") else 1)
PY
    sleep 0.5
  done
  echo "server on port $1 did not become ready" >&2; cat "$out"/*.log >&2; exit 1
}
wait_ready "$gw_port"
wait_ready "$bare_port"

cpu_s() {  # pid -> user+system CPU seconds so far
  awk -v t="$(getconf CLK_TCK)" '{sub(/.*\) /, ""); print ($12 + $13) / t}' "/proc/$1/stat"
}
run() {  # name port conc pid
  local c0 t0
  c0=$(cpu_s "$4"); t0=$(date +%s.%N)
  "$pa" -i grpc -u "127.0.0.1:$2" -m mlp -b 1 --concurrency-range "$3" \
    --measurement-interval "$((secs * 1000))" --stability-percentage 50 --max-trials 10 \
    -f "$out/$1_$3.csv" >"$out/$1_$3.log" 2>&1 \
    || { echo "perf_analyzer: no stable result for $1 at c=$3 (noisy machine?):" >&2; tail -3 "$out/$1_$3.log" >&2; }
  echo "$(cpu_s "$4") $c0 $(date +%s.%N) $t0" >"$out/$1_$3.cpu"
}
for c in $concs; do
  run bare "$bare_port" "$c" "$bare_pid"
  run gateway "$gw_port" "$c" "$gw_pid"
done

$py - "$out" $concs <<'PY'
import csv, os, sys
out, concs = sys.argv[1], sys.argv[2:]
def row(name, c):
    if not os.path.exists(f"{out}/{name}_{c}.csv"):
        return None
    with open(f"{out}/{name}_{c}.csv") as f:
        r = next(csv.DictReader(f))
    rps = float(r["Inferences/Second"])
    c1, c0, t1, t0 = map(float, open(f"{out}/{name}_{c}.cpu").read().split())
    # Server CPU per request: robust to a noisy shared machine (throughput alone is not).
    # Approximate: assumes the warm-up windows ran at the measured rate.
    cpu_us = (c1 - c0) / (rps * (t1 - t0)) * 1e6
    return rps, int(r["p50 latency"]) / 1000, int(r["p99 latency"]) / 1000, cpu_us
hdr = f"{'req/s':>7} {'p50 ms':>7} {'p99 ms':>7} {'CPU us/req':>10}"
print(f"{'conc':>5} | bare grpc.aio: {hdr} | gateway: {hdr} | {'ratio':>5} {'p99x':>5}")
for c in concs:
    b, g = row("bare", c), row("gateway", c)
    if b is None or g is None:
        print(f"{c:>5} | unstable: {'bare' if b is None else 'gateway'} gave no stable measurement; rerun")
        continue
    cell = "{:>7.0f} {:>7.2f} {:>7.2f} {:>10.0f}"
    print(f"{c:>5} |                {cell.format(*b)} |          {cell.format(*g)} | {g[0]/b[0]:>5.2f} {g[2]/b[2]:>5.2f}")
PY
