#!/usr/bin/env bash
# Coalescing and the response cache on a repeating workload: 30 % of requests repeat one of 100
# popular inputs (Zipf, s=1), 70 % are unique. An mlp 64 -> HIDDEN -> HIDDEN -> 10 (HIDDEN=1024 by
# default; the demo's is 256) served twice from one gateway: "plain" (coalesce = false, no cache) and
# "cc" (coalescing on, 16 MiB cache); wrk drives each in turn, ROUNDS times, in one run. Prints
# throughput and p99 for both and the ratios.
#   [HIDDEN=1024] [REPEAT=0.3] [CACHE_BYTES=16777216] bench/coalesce_bench.sh [SECONDS=5] [CONCURRENCY=64] [ROUNDS=3]
# REPEAT=0 CACHE_BYTES=0 HIDDEN=256 measures what the coalesce stage costs when nothing repeats.
# wrk, the gateway and this script share the machine's cores: compare the ratio, not the rates.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-5}
conc=${2:-64}
rounds=${3:-3}
py=${PYTHON:-python3}
command -v wrk >/dev/null || { echo "wrk is needed: apt-get install -y wrk" >&2; exit 1; }
. bench/_lib.sh
repo=$(mktemp -d)
lua=$(mktemp --suffix=.lua)
hidden=${HIDDEN:-1024}  # the mlp's hidden width: what one row costs to compute (the demo's is 256)
mkdir -p "$repo/models/plain/1" "$repo/models/cc/1"
"$py" -c "import onnx, sys; from gateway.demo import mlp_model; onnx.save(mlp_model(1, (64, $hidden, $hidden, 10)), sys.argv[1])" \
  "$repo/models/plain/1/model.onnx"
cp "$repo/models/plain/1/model.onnx" "$repo/models/cc/1/model.onnx"
echo 'coalesce = false' > "$repo/models/plain/config.toml"
printf 'coalesce = true\nresponse_cache_bytes = %s\nresponse_cache_ttl_s = 60\n' "${CACHE_BYTES:-16777216}" \
  > "$repo/models/cc/config.toml"
gw_port=$(port); grpc_port=$(port)
GATEWAY_LOG_LEVEL=WARNING "$py" -m gateway serve --model-repository "$repo/models" --http-port "$gw_port" \
  --grpc-port "$grpc_port" >/tmp/bench_coalesce_gw.log 2>&1 &
gw=$!
trap 'kill $gw 2>/dev/null || true; wait 2>/dev/null; rm -rf "$repo" "$lua"' EXIT
wait_ready "$gw_port"
cat > "$lua" <<'LUA'
local rest = {}
for i = 1, 62 do rest[i] = string.format("%.4f", (i % 17) / 17) end
local tail = table.concat(rest, ",")
local function doc(first)
  return '{"inputs":[{"name":"INPUT0","datatype":"FP32","shape":[1,64],"data":[' .. first .. ',' .. tail .. ']}]}'
end
local popular, cum, total = {}, {}, 0
for k = 1, 100 do popular[k] = doc(string.format("-%d,-1", k)); total = total + 1 / k; cum[k] = total end
local n = 0
local uniq = ""
local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("tid", threads)
end
function init(args)
  math.randomseed(os.time() * 1000 + tid)
  -- unique per thread and per run; small integers, which FP32 holds exactly
  uniq = tostring(tid * 1000000 + math.random(1, 999999))
end
local path = "/v2/models/" .. os.getenv("MODEL") .. "/infer"
local repeat_share = tonumber(os.getenv("REPEAT") or "0.3")
local headers = {["Content-Type"] = "application/json"}
request = function()
  n = n + 1
  local body
  if math.random() < repeat_share then
    local u, k = math.random() * total, 1
    while cum[k] < u do k = k + 1 end
    body = popular[k]
  else
    body = doc(uniq .. "," .. tostring(n))
  end
  return wrk.format("POST", path, headers, body)
end
LUA
wrk_model plain >/dev/null; wrk_model cc >/dev/null  # warm-up (fills the cache with the popular inputs too)
ab_rounds plain cc plain cc
curl -sf "http://127.0.0.1:$gw_port/metrics" | grep -E '^gateway_(cache_hits|cache_misses|coalesced_requests)_total\{model="cc"' || true
