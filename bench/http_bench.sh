#!/usr/bin/env bash
# End-to-end HTTP benchmark: the gateway (demo mlp, 64->256->256->10 FP32, batch-1 JSON requests)
# side by side with the bare netlimit server, in one run, with wrk at several concurrencies.
#   bench/http_bench.sh [SECONDS=5] [CONCURRENCIES="1 8 64"]      (WORKERS=2 for two gateway processes)
# Prints a table with the gateway/netlimit throughput ratio per concurrency. wrk, the servers and
# this script share the machine's cores: ratios measured in one run are what carries over.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-5}
concs=${2:-"1 8 64"}
py=${PYTHON:-python3}
shared=${SHARED:-../shared/bench}
command -v wrk >/dev/null || { echo "wrk is needed: apt-get install -y wrk" >&2; exit 1; }
port() { "$py" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
gw_port=$(port); nl_port=$(port); grpc_port=$(port)
GATEWAY_LOG_LEVEL=WARNING "$py" -m gateway serve --demo --http-port "$gw_port" --grpc-port "$grpc_port" \
  --workers "${WORKERS:-1}" >/tmp/bench_gw.log 2>&1 &
gw=$!
"$py" "$shared/netlimit_server.py" "$nl_port" >/tmp/bench_nl.log 2>&1 &
nl=$!
trap 'kill $gw $nl 2>/dev/null || true; wait 2>/dev/null' EXIT
for _ in $(seq 100); do
  curl -sf "http://127.0.0.1:$gw_port/v2/health/ready" >/dev/null && curl -sf "http://127.0.0.1:$nl_port/v2/health/ready" >/dev/null && break
  sleep 0.3
done
sleep 2  # with WORKERS > 1, let every worker finish loading
run() { bash "$shared/wrk_infer.sh" "127.0.0.1:$1" mlp INPUT0 64 "$2" "$secs" "$3" | tail -n 1; }
printf '%-5s %-12s %-10s %-12s %-10s %-8s %-s\n' conc netlimit/s p99_ms gateway/s p99_ms ratio added_us_per_rt
for c in $concs; do
  t=$(( c < 2 ? 1 : 2 ))
  nl_out=$(run "$nl_port" "$c" "$t"); gw_out=$(run "$gw_port" "$c" "$t")
  nl_rps=$(sed -E 's/.*infer\/s=([0-9.]+).*/\1/' <<<"$nl_out"); nl_p99=$(sed -E 's/.*p99_ms=([0-9.]+).*/\1/' <<<"$nl_out")
  gw_rps=$(sed -E 's/.*infer\/s=([0-9.]+).*/\1/' <<<"$gw_out"); gw_p99=$(sed -E 's/.*p99_ms=([0-9.]+).*/\1/' <<<"$gw_out")
  ratio=$(awk -v a="$gw_rps" -v b="$nl_rps" 'BEGIN {printf "%.2f", a/b}')
  added=$(awk -v a="$gw_rps" -v b="$nl_rps" -v c="$c" 'BEGIN {printf "%.1f", (c/a - c/b) * 1e6}')
  printf '%-5s %-12s %-10s %-12s %-10s %-8s %-s\n' "$c" "$nl_rps" "$nl_p99" "$gw_rps" "$gw_p99" "$ratio" "$added"
done
