#!/usr/bin/env bash
# End-to-end HTTP benchmark: the gateway (demo mlp, 64->256->256->10 FP32, batch-1 requests) side by
# side with the bare netlimit server, in one run, with wrk at several concurrencies.
#   bench/http_bench.sh [SECONDS=5] [CONCURRENCIES="1 8 64"] [ROUNDS=1]
# Environment:
#   BODY=json|binary   JSON data (../shared/bench/wrk_infer.sh), or tritonclient's default, the
#                      binary tensor extension both ways (one input, OUTPUT0 asked for as binary)
#   WORKERS=N          gateway processes (SO_REUSEPORT)
#   BASE=DIR           also run the gateway of another checkout (built in place), e.g. a worktree of
#                      the previous release: a before/after in the same run
#   FLOOR=1            also run bench/model_floor_server.py (the bare server plus one onnxruntime run
#                      of the model per request, nothing else); the last column is then what each
#                      gateway adds per round trip over that floor
# Prints one row per round and concurrency with the gateway/netlimit throughput ratio and the
# microseconds a gateway round trip adds; with more than two rounds, also the medians over the
# rounds. wrk, the servers and this script share the machine's cores: ratios measured in one run
# are what carries over.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-5}
concs=${2:-"1 8 64"}
rounds=${3:-1}
body=${BODY:-json}
py=${PYTHON:-python3}
shared=${SHARED:-../shared/bench}
command -v wrk >/dev/null || { echo "wrk is needed: apt-get install -y wrk" >&2; exit 1; }
source bench/_lib.sh
tmp=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null; rm -rf "$tmp"' EXIT
serve() {  # DIR PORT: a demo gateway from checkout DIR (its own gateway package first on the path)
  (cd "$1" && GATEWAY_LOG_LEVEL=WARNING GATEWAY_SHED_LOOP_LAG_MS=0 PYTHONPATH="$1" exec "$py" -m gateway serve --demo \
    --http-port "$2" --grpc-port -1 --workers "${WORKERS:-1}" >"$tmp/gw-$2.log" 2>&1) &
  pids+=($!)
}
nl_port=$(port); gw_port=$(port)
"$py" "$shared/netlimit_server.py" "$nl_port" >"$tmp/nl.log" 2>&1 &
pids+=($!)
serve "$PWD" "$gw_port"
names=(netlimit gateway); ports=("$nl_port" "$gw_port")
if [[ -n ${FLOOR:-} ]]; then
  floor_port=$(port)
  PYTHONPATH="$PWD" "$py" bench/model_floor_server.py "$floor_port" >"$tmp/floor.log" 2>&1 &
  pids+=($!)
  names=(netlimit floor gateway); ports=("$nl_port" "$floor_port" "$gw_port")
fi
if [[ -n ${BASE:-} ]]; then
  base_port=$(port); serve "$(cd "$BASE" && pwd)" "$base_port"
  names+=(base); ports+=("$base_port")
fi
for p in "${ports[@]:1}"; do wait_ready "$p"; done
sleep 2  # with WORKERS > 1, let every worker finish loading
if [[ $body == binary ]]; then
  "$py" - "$tmp/body.bin" <<'PY'
import random, struct, sys
random.seed(7)
head = (b'{"inputs":[{"name":"INPUT0","shape":[1,64],"datatype":"FP32","parameters":{"binary_data_size":256}}],'
        b'"outputs":[{"name":"OUTPUT0","parameters":{"binary_data":true}}]}')
open(sys.argv[1], "wb").write(head + struct.pack("<64f", *[random.uniform(-1, 1) for _ in range(64)]))
open(sys.argv[1] + ".len", "w").write(str(len(head)))
PY
  cat >"$tmp/binary.lua" <<LUA
local f = io.open("$tmp/body.bin", "rb")
wrk.method = "POST"
wrk.body = f:read("*all")
f:close()
wrk.headers["Content-Type"] = "application/octet-stream"
wrk.headers["Inference-Header-Content-Length"] = "$(cat "$tmp/body.bin.len")"
LUA
fi
run() {  # PORT CONC THREADS: "req/s p99_ms"; fails on any non-2xx answer or socket error
  local out
  if [[ $body == json ]]; then
    out=$(bash "$shared/wrk_infer.sh" "127.0.0.1:$1" mlp INPUT0 64 "$2" "$secs" "$3" | tail -n 1)
    sed -E 's/.*infer\/s=([0-9.]+) p99_ms=([0-9.]+).*/\1 \2/' <<<"$out"
  else
    out=$(wrk -t "$3" -c "$2" -d "${secs}s" --latency -s "$tmp/binary.lua" "http://127.0.0.1:$1/v2/models/mlp/infer")
    if grep -q "Non-2xx\|Socket errors" <<<"$out"; then echo "errors: $out" >&2; exit 1; fi
    awk '/Requests\/sec/ {r=$2} $1=="99%" {v=$2; if (v ~ /us$/) {sub(/us/,"",v); v/=1000} else if (v ~ /ms$/) {sub(/ms/,"",v)} else if (v ~ /s$/) {sub(/s/,"",v); v*=1000}; p=v} END {print r, p}' <<<"$out"
  fi
}
printf '%-6s %-5s %-10s %-12s %-8s %-12s %-8s %-7s %-15s %s\n' round conc server "req/s" p99_ms netlimit/s p99_ms ratio added_us_per_rt \
  "$([[ -n ${FLOOR:-} ]] && echo over_floor_us)"
for r in $(seq "$rounds"); do
  for c in $concs; do
    t=$(( c < 2 ? 1 : 2 ))
    read -r nl_rps nl_p99 <<<"$(run "$nl_port" "$c" "$t")"
    for i in "${!names[@]}"; do
      (( i == 0 )) && continue
      read -r rps p99 <<<"$(run "${ports[$i]}" "$c" "$t")"
      ratio=$(awk -v a="$rps" -v b="$nl_rps" 'BEGIN {printf "%.2f", a/b}')
      added=$(awk -v a="$rps" -v b="$nl_rps" -v c="$c" 'BEGIN {printf "%.1f", (c/a - c/b) * 1e6}')
      over=""
      if [[ ${names[$i]} == floor ]]; then
        floor_rps=$rps
      elif [[ -n ${FLOOR:-} ]]; then
        over=$(awk -v a="$rps" -v b="$floor_rps" -v c="$c" 'BEGIN {printf "%.1f", (c/a - c/b) * 1e6}')
      fi
      printf '%-6s %-5s %-10s %-12s %-8s %-12s %-8s %-7s %-15s %s\n' "$r" "$c" "${names[$i]}" "$rps" "$p99" "$nl_rps" "$nl_p99" "$ratio" "$added" "$over"
      echo "$c ${names[$i]} $ratio $added $p99 ${over:-nan}" >>"$tmp/rows"
    done
  done
done
if (( rounds > 2 )); then  # medians over the rounds: many short rounds give a c=1 figure the noise does not move
  "$py" - "$tmp/rows" <<'PY'
import collections, statistics, sys
rows = collections.defaultdict(list)
for line in open(sys.argv[1]):
    c, name, *vals = line.split()
    rows[(int(c), name)].append([float(v) for v in vals])
print(f"median of {len(next(iter(rows.values())))} rounds:")
print(f"{'conc':<5} {'server':<10} {'ratio':<7} {'added_us':<9} {'p99_ms':<7} over_floor_us")
for (c, name), vals in sorted(rows.items()):
    med = [statistics.median(col) for col in zip(*vals)]
    over = "" if med[3] != med[3] else f"{med[3]:.1f}"  # nan: no floor in this run, or the floor's own row
    print(f"{c:<5} {name:<10} {med[0]:<7.2f} {med[1]:<9.1f} {med[2]:<7.2f} {over}")
PY
fi
