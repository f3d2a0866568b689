#!/usr/bin/env bash
# Goodput vs offered load, open loop, from half to three times capacity, in one run, for three servers:
#   off:  no shedding (shed_loop_lag_ms = 0, max_queue_wait_us = 0)
#   door: shedding at the door by loop lag (shed_loop_lag_ms = LAG_MS)
#   wait: the door and admission by expected wait (max_queue_wait_us = WAIT_US)
#   bench/overload.sh [BATCH=1] [SECONDS=10] [FACTORS="0.5 1 1.5 2 3"]  MODEL=demo|slow LAG_MS=50 WAIT_US=50000
#   TIMEOUT_S=1 CSV=file (also write the rows as CSV, for bench/plot_goodput.py)
# MODEL=demo: the demo mlp (inline: the event loop is the bottleneck). MODEL=slow: a compute-bound
# model (160 chained 512x512 MatMuls, ~2 ms a row, max_batch_size 8, run in the thread pool), where
# the backlog builds in the batch queue, which is what admission by expected wait acts on.
# Capacity C is measured first (closed loop, 32 in flight, admission off). Each step offers
# factor x C requests/s for SECONDS; a request counts as goodput when it is answered 200 within
# TIMEOUT_S of its intended send time (the generator fails later ones as timeouts). The load
# generator runs on the same cores as the server: compare the rows of one run, not across machines.
set -euo pipefail
cd "$(dirname "$0")/.."
batch=${1:-1}; secs=${2:-10}; factors=${3:-"0.5 1 1.5 2 3"}
wait_us=${WAIT_US:-50000}; lag_ms=${LAG_MS:-50}; csv=${CSV:-}; timeout_s=${TIMEOUT_S:-1}; kind=${MODEL:-demo}
py=${PYTHON:-python3}
tmp=$(mktemp -d)
# servers start inside $(...) subshells: their pids are kept in files, not in this shell's jobs
trap 'kill $(cat "$tmp"/*.pid 2>/dev/null) 2>/dev/null || true; sleep 1; rm -rf "$tmp"' EXIT
port() { "$py" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
serve() {  # serve NAME WAIT_US LAG_MS -> prints the HTTP port; the model with that admission SLO and door
  local repo="$tmp/repo$1" p; p=$(port)
  if [[ $kind == slow ]]; then
    "$py" - "$repo/mlp/2" <<'PY'
import pathlib, sys
import numpy as np, onnx
from onnx import TensorProto, helper, numpy_helper
w = numpy_helper.from_array((np.random.default_rng(0).standard_normal((512, 512)) / 512**0.5).astype(np.float32), "W")
nodes = [helper.make_node("MatMul", ["INPUT0" if i == 0 else f"h{i - 1}", "W"], [f"h{i}"]) for i in range(160)]
nodes.append(helper.make_node("Identity", ["h159"], ["OUTPUT0"]))
io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", 512]) for n in ("INPUT0", "OUTPUT0")]
graph = helper.make_graph(nodes, "slow", io[:1], io[1:], [w])
out = pathlib.Path(sys.argv[1]); out.mkdir(parents=True)
onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(out / "model.onnx"))
PY
    printf 'max_batch_size = 8\nexecution = "thread"\nintra_op_threads = 1\n' > "$repo/mlp/config.toml"
  else
    "$py" -m gateway demo export "$repo" >/dev/null
  fi
  # coalesce = false: the generator repeats a few payloads, which would otherwise share computations
  printf 'max_queue_wait_us = %s\ncoalesce = false\n' "$2" >> "$repo/mlp/config.toml"
  GATEWAY_SHED_LOOP_LAG_MS=$3 GATEWAY_LOG_LEVEL=WARNING GATEWAY_DRAIN_S=0 "$py" -m gateway serve --model-repository "$repo" --http-port "$p" \
    --grpc-port -1 >"$tmp/serve$1.log" 2>&1 &
  echo $! > "$tmp/serve$1.pid"
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$p/v2/health/ready" >/dev/null && break; sleep 0.3; done
  echo "$p"
}
lt() { "$py" -m gateway loadtest run --url "127.0.0.1:$1" -m mlp --model-version 2 --batch "$batch" --procs 1 \
         --timeout "$timeout_s" --json -q "${@:2}" 2>>"$tmp/loadtest.err"; }
summary() {  # loadtest JSON on stdin -> one table row
  "$py" -c '
import json, sys
s = json.load(sys.stdin)["summary"]
cap, label = float(sys.argv[1]), sys.argv[2]
r, e, lat = s["requests"], s["errors"], s["latency_ms"]
n = max(1, r["planned"])
row = (label, s["intended_rps"], s["ok_rps"], s["ok_rps"] / cap, e.get("http_429", 0) / n, e.get("timeout", 0) / n,
       lat["p50"], lat["p99"])
print("%-10s %9.0f %9.0f %8.2f %6.0f%% %7.0f%% %8.1f %8.1f" % (row[:4] + (100 * row[4], 100 * row[5]) + row[6:]))
if sys.argv[3]:
    with open(sys.argv[3], "a") as f:
        f.write("%s,%s,%.0f,%.0f,%.4f,%.4f,%.4f,%.1f,%.1f\n" % ((label.split()[0], sys.argv[4]) + row[1:]))
' "$1" "$2" "$csv" "$3"; }
off=$(serve off 0 0); door=$(serve door 0 "$lag_ms"); wait=$(serve wait "$wait_us" "$lag_ms")
cap=$(lt "$off" --closed --concurrency 32 -d "$secs" | "$py" -c 'import json,sys; print(json.load(sys.stdin)["summary"]["ok_rps"])')
echo "model $kind, batch $batch, capacity (closed loop, 32 in flight) $(printf '%.0f' "$cap") req/s; goodput = 200 within ${timeout_s} s"
[[ -n $csv ]] && echo "server,factor,offered,goodput,good_per_cap,refused,timeouts,p50_ms,p99_ms" > "$csv"
printf '%-10s %9s %9s %8s %6s %8s %8s %8s\n' server offered/s goodput/s good/cap 429 timeout p50_ms p99_ms
for f in $factors; do
  rate=$("$py" -c "print(round($f * $cap))")
  lt "$off" --rate "$rate" -d "$secs" | summary "$cap" "off x$f" "$f"
  lt "$door" --rate "$rate" -d "$secs" | summary "$cap" "door x$f" "$f"
  lt "$wait" --rate "$rate" -d "$secs" | summary "$cap" "wait x$f" "$f"
done
