#!/usr/bin/env bash
# A shadow under saturation: the demo mlp (batch-1 JSON, wrk closed loop) with no policy vs all
# traffic on version 2 with 20 % mirrored to version 1, alternated ROUNDS times in one run. At
# saturation the mirror copies must be shed (the loop thread is busy), so throughput should match;
# the script prints how many copies were compared and shed in each shadow run.
#   bench/shadow_bench.sh [SECONDS=4] [CONCURRENCY=64] [ROUNDS=3]
# wrk, the gateway and this script share the machine's cores: compare the ratio, not the rates.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-4}
conc=${2:-64}
rounds=${3:-3}
py=${PYTHON:-python3}
command -v wrk >/dev/null || { echo "wrk is needed: apt-get install -y wrk" >&2; exit 1; }
. bench/_lib.sh
gw_port=$(port); grpc_port=$(port)
token=bench-token
GATEWAY_ADMIN_TOKEN=$token GATEWAY_LOG_LEVEL=WARNING "$py" -m gateway serve --demo --http-port "$gw_port" \
  --grpc-port "$grpc_port" >/tmp/bench_shadow_gw.log 2>&1 &
gw=$!
lua=$(mktemp --suffix=.lua)
trap 'kill $gw 2>/dev/null || true; wait 2>/dev/null; rm -f "$lua"' EXIT
wait_ready "$gw_port"
data=$("$py" -c "import random; random.seed(7); print(','.join(f'{random.uniform(-1,1):.6f}' for _ in range(64)))")
cat > "$lua" <<LUA
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"inputs":[{"name":"INPUT0","datatype":"FP32","shape":[1,64],"data":[$data]}]}'
LUA
admin() { curl -sf -X "$1" "http://127.0.0.1:$gw_port/v2/admin/models/mlp/traffic" -H "Authorization: Bearer $token" \
  -H 'Content-Type: application/json' ${2:+-d "$2"}; }
run() { wrk -t 2 -c "$conc" -d "${secs}s" -s "$lua" "http://127.0.0.1:$gw_port/v2/models/mlp/infer" | awk '/Requests\/sec/ {print $2}'; }
run >/dev/null
printf '%-6s %-12s %-12s %-7s %-10s %-s\n' round none/s shadow/s ratio compared shed
sa=0; sb=0
for r in $(seq "$rounds"); do
  admin PUT '{}' >/dev/null
  a=$(run)
  admin PUT '{"weights": {"2": 100}, "shadow": {"version": "1", "fraction": 0.2}}' >/dev/null
  b=$(run)
  counts=$(admin GET | "$py" -c "import json,sys; s=json.load(sys.stdin)['shadow']['by_primary'].get('2', {}); print(s.get('compared', 0), s.get('shed', 0))")
  sa=$(awk -v s="$sa" -v x="$a" 'BEGIN {print s + x}'); sb=$(awk -v s="$sb" -v x="$b" 'BEGIN {print s + x}')
  printf '%-6s %-12s %-12s %-7.3f %-10s %-s\n' "$r" "$a" "$b" "$(awk -v a="$a" -v b="$b" 'BEGIN {print b / a}')" $counts
done
printf '%-6s %-12s %-12s %.3f\n' all "$sa" "$sb" "$(awk -v a="$sa" -v b="$sb" 'BEGIN {print b / a}')"
