#!/usr/bin/env bash
# What a traffic policy costs on the HTTP hot path: the demo mlp (batch-1 JSON) at one concurrency,
# with no policy vs sticky-keyed policies (every request carries an x-user-id header in every run, so
# only the routing differs), alternated ROUNDS times in one run on one gateway.
#   bench/policy_bench.sh [SECONDS=5] [CONCURRENCY=64] [ROUNDS=3]
# wrk, the gateway and this script share the machine's cores: compare the ratio, not the rates.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-5}
conc=${2:-64}
rounds=${3:-3}
py=${PYTHON:-python3}
command -v wrk >/dev/null || { echo "wrk is needed: apt-get install -y wrk" >&2; exit 1; }
. bench/_lib.sh
gw_port=$(port); grpc_port=$(port)
token=bench-token
GATEWAY_ADMIN_TOKEN=$token GATEWAY_LOG_LEVEL=WARNING "$py" -m gateway serve --demo --http-port "$gw_port" \
  --grpc-port "$grpc_port" >/tmp/bench_policy_gw.log 2>&1 &
gw=$!
lua=$(mktemp --suffix=.lua)
trap 'kill $gw 2>/dev/null || true; wait 2>/dev/null; rm -f "$lua" "${LUA_PINNED:-}"' EXIT
wait_ready "$gw_port"
data=$("$py" -c "import random; random.seed(7); print(','.join(f'{random.uniform(-1,1):.6f}' for _ in range(64)))")
cat > "$lua" <<LUA
local body = '{"inputs":[{"name":"INPUT0","datatype":"FP32","shape":[1,64],"data":[$data]}]}'
local n = 0
request = function()
  n = n + 1
  return wrk.format("POST", "/v2/models/mlp/infer",
    {["Content-Type"] = "application/json", ["x-user-id"] = "user-" .. (n % 10007)}, body)
end
LUA
pinned=$(mktemp --suffix=.lua)
sed -e 's|wrk.format("POST", "/v2/models/mlp/infer",|wrk.format("POST", (n % 20 == 0) and "/v2/models/mlp/versions/1/infer" or "/v2/models/mlp/infer",|' "$lua" > "$pinned"
LUA_PINNED=$pinned
policy() {
  curl -sf -X PUT "http://127.0.0.1:$gw_port/v2/admin/models/mlp/traffic" -H "Authorization: Bearer $token" \
    -H 'Content-Type: application/json' -d "$1" >/dev/null
}
run() {
  out=$(wrk -t 2 -c "$conc" -d "${secs}s" --latency -s "${1:-$lua}" "http://127.0.0.1:$gw_port/v2/models/mlp/infer")
  bad=$(awk '/Non-2xx or 3xx responses/ {print $5}' <<<"$out")
  [[ -z $bad ]] || { echo "non-2xx answers: $bad" >&2; exit 1; }
  awk '/Requests\/sec/ {print $2}' <<<"$out"
}
run >/dev/null  # warm-up
# none: no policy (every request on version 2, the default); one-arm: the policy machinery (sticky
# hashing, arm header) with all weight on version 2, so one model still serves; 95/5: a real canary,
# which also runs a second model's batches for its 5 %; pinned: no policy, the client itself sends
# every 20th request to version 1: the same model work as 95/5 without the policy. 95/5 / pinned is
# what the policy costs; pinned / none what a second model's batches cost.
printf '%-6s %-11s %-11s %-11s %-11s %-8s %-8s %-s\n' round none/s one-arm/s 95/5/s pinned/s one-arm 95/5 95/5:pinned
sa=0; sb=0; sc=0; sd=0
for r in $(seq "$rounds"); do
  policy '{}'
  a=$(run)
  d=$(run "$LUA_PINNED")
  policy '{"weights": {"2": 100}, "sticky_key": "x-user-id"}'
  b=$(run)
  policy '{"weights": {"1": 5, "2": 95}, "sticky_key": "x-user-id"}'
  c=$(run)
  sa=$(awk -v s="$sa" -v x="$a" 'BEGIN {print s + x}'); sb=$(awk -v s="$sb" -v x="$b" 'BEGIN {print s + x}')
  sc=$(awk -v s="$sc" -v x="$c" 'BEGIN {print s + x}'); sd=$(awk -v s="$sd" -v x="$d" 'BEGIN {print s + x}')
  printf '%-6s %-11s %-11s %-11s %-11s %-8.3f %-8.3f %.3f\n' "$r" "$a" "$b" "$c" "$d" \
    "$(awk -v a="$a" -v b="$b" 'BEGIN {print b / a}')" "$(awk -v a="$a" -v c="$c" 'BEGIN {print c / a}')" \
    "$(awk -v d="$d" -v c="$c" 'BEGIN {print c / d}')"
done
printf '%-6s %-11s %-11s %-11s %-11s %-8.3f %-8.3f %.3f\n' all "$sa" "$sb" "$sc" "$sd" \
  "$(awk -v a="$sa" -v b="$sb" 'BEGIN {print b / a}')" "$(awk -v a="$sa" -v c="$sc" 'BEGIN {print c / a}')" \
  "$(awk -v d="$sd" -v c="$sc" 'BEGIN {print c / d}')"
