#!/usr/bin/env bash
# The precomputed route against live inference, on the same requests, in one run: two models from
# one gateway, both the mlp 64 -> HIDDEN -> HIDDEN -> 10 (HIDDEN=256, the demo's, by default):
# "live" (coalesce = false) and "hybrid" (the same, plus [precomputed] with KEYS stored predictions
# in SQLite, or in Redis with STORE=redis, written by `gateway batch --to-store`). wrk sends batch-1
# JSON requests, each with an x-entity-id header drawn from the stored keys (the live model ignores
# it), ROUNDS times each in turn. Prints throughput and p99 for both and the ratios.
#   [HIDDEN=256] [KEYS=100000] [STORE=sqlite|redis] bench/precomputed_bench.sh [SECONDS=5] [CONCURRENCY=64] [ROUNDS=3]
# wrk, the gateway (and redis-server) share the machine's cores: compare the ratio, not the rates.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-5}
conc=${2:-64}
rounds=${3:-3}
py=${PYTHON:-python3}
hidden=${HIDDEN:-256}
keys=${KEYS:-100000}
command -v wrk >/dev/null || { echo "wrk is needed: apt-get install -y wrk" >&2; exit 1; }
. bench/_lib.sh
tmp=$(mktemp -d)
lua=$(mktemp --suffix=.lua)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null; rm -rf "$tmp" "$lua"' EXIT
mkdir -p "$tmp/models/live/1" "$tmp/models/hybrid/1"
"$py" -c "import onnx, sys; from gateway.demo import mlp_model; onnx.save(mlp_model(1, (64, $hidden, $hidden, 10)), sys.argv[1])" \
  "$tmp/models/live/1/model.onnx"
cp "$tmp/models/live/1/model.onnx" "$tmp/models/hybrid/1/model.onnx"
if [[ ${STORE:-sqlite} == redis ]]; then
  rport=$(port)
  redis-server --port "$rport" --bind 127.0.0.1 --save "" --appendonly no --dir "$tmp" >/dev/null &
  pids+=($!)
  for _ in $(seq 50); do redis-cli -p "$rport" ping >/dev/null 2>&1 && break; sleep 0.1; done
  store="redis://127.0.0.1:$rport/0"
else
  store="sqlite://$tmp/models/hybrid/predictions.db"  # $tmp is absolute: sqlite:///tmp/...
fi
echo 'coalesce = false' > "$tmp/models/live/config.toml"
printf 'coalesce = false\n\n[precomputed]\nstore = "%s"\nmax_staleness_s = 86400\n' "$store" \
  > "$tmp/models/hybrid/config.toml"
# the stored predictions: KEYS entities' rows scored by `gateway batch --to-store`
"$py" - "$tmp/entities.parquet" "$keys" <<'PY'
import sys
import numpy as np, pyarrow as pa, pyarrow.parquet as pq
n = int(sys.argv[2])
x = np.random.default_rng(0).standard_normal((n, 64)).astype(np.float32)
pq.write_table(pa.table({"user": [f"u{i}" for i in range(n)],
                         "INPUT0": pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), 64)}), sys.argv[1])
PY
"$py" -m gateway batch -q --model-repository "$tmp/models" -m hybrid --input "$tmp/entities.parquet" \
  --output "$tmp/scored" --keep user --to-store "$store" --store-key user
gw_port=$(port); grpc_port=$(port)
# shedding off: this compares throughput at a fixed concurrency, not behaviour under overload
GATEWAY_SHED_LOOP_LAG_MS=0 GATEWAY_LOG_LEVEL=WARNING "$py" -m gateway serve --model-repository "$tmp/models" --http-port "$gw_port" \
  --grpc-port "$grpc_port" >/tmp/bench_precomputed_gw.log 2>&1 &
pids+=($!)
wait_ready "$gw_port"
cat > "$lua" <<LUA
local rest = {}
for i = 1, 64 do rest[i] = string.format("%.4f", (i % 17) / 17) end
local body = '{"inputs":[{"name":"INPUT0","datatype":"FP32","shape":[1,64],"data":[' .. table.concat(rest, ",") .. ']}]}'
local path = "/v2/models/" .. os.getenv("MODEL") .. "/infer"
local threads = 0
function setup(thread) threads = threads + 1; thread:set("tid", threads) end
function init(args) math.randomseed(os.time() * 1000 + tid) end
request = function()
  return wrk.format("POST", path, {["Content-Type"] = "application/json",
                                   ["x-entity-id"] = "u" .. tostring(math.random(0, $keys - 1))}, body)
end
LUA
wrk_model live >/dev/null; wrk_model hybrid >/dev/null  # warm-up
ab_rounds live hybrid live hits
curl -sf "http://127.0.0.1:$gw_port/metrics" | grep -E '^gateway_precomputed_(hits|lookups|fallbacks)_total\{model="hybrid"' || true
