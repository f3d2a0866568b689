#!/usr/bin/env bash
# Through the gateway to a remote server vs calling that server directly, in one run.
#   bench/remote_bench.sh [SECONDS=8] [CONC=64]     REMOTE=gateway (default) | pytriton  CHANNELS=1
# The remote serves the demo mlp (64->256->256->10, batch-1 requests). REMOTE=gateway: another
# gateway process (its gRPC front; batching on). REMOTE=pytriton: a real tritonserver from
# nvidia-pytriton in its own venv (tests/pytriton/provision.sh; dynamic batching). The front gateway
# forwards a remote model (backend = "triton") to it. `gateway loadtest` drives both paths closed
# loop at CONC over gRPC and HTTP, then at concurrency 1 for the added latency. Every process shares
# the machine's cores: compare the rows of one run.
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-python3}
secs=${1:-8}; conc=${2:-64}; remote=${REMOTE:-gateway}
# shellcheck source=bench/_lib.sh
. bench/_lib.sh
tmp=$(mktemp -d)
trap 'kill $(cat "$tmp"/*.pid 2>/dev/null) 2>/dev/null || true; sleep 1; rm -rf "$tmp"' EXIT
r_grpc=$(port); r_http=$(port); f_http=$(port); f_grpc=$(port)
"$py" -m gateway demo export "$tmp/remote" >/dev/null
printf 'coalesce = false\n' >> "$tmp/remote/mlp/config.toml"
if [[ $remote == pytriton ]]; then
  venv_py=$(bash tests/pytriton/provision.sh "$PWD/.pytriton-venv" | tail -n 1)
  "$py" -c 'import sys, onnx; from gateway.demo import mlp_model; onnx.save(mlp_model(seed=2), sys.argv[1])' "$tmp/mlp.onnx"
  "$venv_py" tests/pytriton/serve.py --grpc-port "$r_grpc" --http-port "$r_http" --model-file "$tmp/mlp.onnx" \
    --name mlp --max-batch-size 64 --workspace "$tmp/ws" >"$tmp/remote.log" 2>&1 &
  echo $! > "$tmp/remote.pid"
  for _ in $(seq 200); do curl -sf "http://127.0.0.1:$r_http/v2/models/mlp/ready" >/dev/null && break; sleep 0.3; done
  version=""
else
  GATEWAY_LOG_LEVEL=WARNING "$py" -m gateway serve --model-repository "$tmp/remote" --http-port "$r_http" \
    --grpc-port "$r_grpc" >"$tmp/remote.log" 2>&1 &
  echo $! > "$tmp/remote.pid"
  wait_ready "$r_http"
  version=2
fi
mkdir -p "$tmp/front/far"
printf 'backend = "triton"\nendpoints = ["127.0.0.1:%s"]\nremote_model = "mlp"\nremote_version = "%s"\ncoalesce = false\nremote_max_outstanding = 4\nremote_channels = %s\n' \
  "$r_grpc" "$version" "${CHANNELS:-1}" > "$tmp/front/far/config.toml"
GATEWAY_LOG_LEVEL=WARNING "$py" -m gateway serve --model-repository "$tmp/front" --http-port "$f_http" \
  --grpc-port "$f_grpc" >"$tmp/front.log" 2>&1 &
echo $! > "$tmp/front.pid"
wait_ready "$f_http"
row() {  # LABEL URL PROTOCOL MODEL VERSION CONC
  "$py" -m gateway loadtest run --url "$2" -p "$3" -m "$4" ${5:+--model-version "$5"} --closed --concurrency "$6" \
    -d "$secs" --warmup 1 --json -q 2>>"$tmp/loadtest.err" | "$py" -c '
import json, sys
s = json.load(sys.stdin)["summary"]; lat = s["latency_ms"]
print("%-26s %10.0f %8.2f %8.2f %8s" % (sys.argv[1], s["ok_rps"], lat["p50"], lat["p99"], sum(s["errors"].values())))
' "$1"; }
echo "remote: $remote; closed loop, ${secs} s per row; load generator on the same cores"
printf '%-26s %10s %8s %8s %8s\n' path req/s p50_ms p99_ms errors
for proto in grpc http-json; do
  if [[ $proto == grpc ]]; then r=127.0.0.1:$r_grpc; f=127.0.0.1:$f_grpc; else r=127.0.0.1:$r_http; f=127.0.0.1:$f_http; fi
  row "direct $proto c=$conc" "$r" "$proto" mlp "$version" "$conc"
  row "via gateway $proto c=$conc" "$f" "$proto" far "" "$conc"
done
row "direct grpc c=1" "127.0.0.1:$r_grpc" grpc mlp "$version" 1
row "via gateway grpc c=1" "127.0.0.1:$f_grpc" grpc far "" 1
