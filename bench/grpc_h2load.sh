#!/usr/bin/env bash
# gRPC unary ModelInfer throughput with h2load (a C HTTP/2 client that costs the server's cores
# little): the native front, the grpc.aio front and a bare grpc.aio server, in rounds, in one run.
#
#   bench/grpc_h2load.sh [SECONDS] [ROUNDS] [CONNS] [STREAMS]     (defaults: 5, 3, 4, 16)
#
# Every server serves model "mlp" (INPUT0 FP32 [1,64] -> OUTPUT0 FP32 [1,10]): the gateways run the
# demo model (python -m gateway serve --demo, GATEWAY_GRPC_FRONT=native or grpcio), the bare server
# (bench/grpc_bare_server.py) answers every call with a fixed response. h2load sends one fixed
# gRPC-framed ModelInferRequest (batch 1, raw contents) over CONNS connections with STREAMS
# concurrent streams each (c = CONNS x STREAMS calls in flight), for SECONDS per server per round,
# with the servers and h2load on the same cores; p50/p99 from h2load's per-call log. h2load counts HTTP 200s, and a gRPC error is an
# HTTP 200 with a non-zero grpc-status trailer: so the gateways' successes are counted from their
# own statistics (ModelStatistics success count), and a gateway that answered fewer successes than
# h2load counted calls fails the run. The bare server always answers OK.
# Needs h2load (Debian: nghttp2-client).
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-5}
rounds=${2:-3}
conns=${3:-4}
streams=${4:-16}
py=${PYTHON:-python}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
command -v h2load >/dev/null || { echo "no h2load: apt-get install nghttp2-client" >&2; exit 2; }
out=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$out"; }
trap cleanup EXIT
free_port() { "$py" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

native_port=$(free_port); grpcio_port=$(free_port); bare_port=$(free_port)
GATEWAY_GRPC_FRONT=native $py -m gateway serve --demo --http-port 0 --grpc-port "$native_port" \
  --log-level WARNING >"$out/native.log" 2>&1 &
pids+=($!)
GATEWAY_GRPC_FRONT=grpcio $py -m gateway serve --demo --http-port 0 --grpc-port "$grpcio_port" \
  --log-level WARNING >"$out/grpcio.log" 2>&1 &
pids+=($!)
$py bench/grpc_bare_server.py "$bare_port" >"$out/bare.log" 2>&1 &
pids+=($!)

$py - "$out/body.bin" <<'PY'
import struct, sys
import numpy as np
from gateway.pb import service as pb
req = pb.ModelInferRequest(model_name="mlp")
req.inputs.add(name="INPUT0", datatype="FP32", shape=[1, 64])
req.raw_input_contents.append(np.linspace(-1, 1, 64, dtype=np.float32).tobytes())
msg = req.SerializeToString()
open(sys.argv[1], "wb").write(struct.pack(">BI", 0, len(msg)) + msg)
PY

successes() {  # PORT: the gateway's ModelInfer successes for mlp so far
  $py - "$1" <<'PY'
import sys, tritonclient.grpc as g
c = g.InferenceServerClient(f"127.0.0.1:{sys.argv[1]}")
print(sum(s.inference_stats.success.count for s in c.get_inference_statistics("mlp").model_stats))
PY
}
wait_ready() {  # PORT
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
for p in "$native_port" "$grpcio_port" "$bare_port"; do wait_ready "$p"; done

h2() {  # NAME PORT: one h2load run; prints "req/s p50_ms p99_ms" (successes checked for gateways)
  local before after res rps calls
  [[ $1 == bare ]] || before=$(successes "$2")
  res=$(h2load -D "$secs" --warm-up-time 1 -c "$conns" -m "$streams" -d "$out/body.bin" \
        -H 'content-type: application/grpc' -H 'te: trailers' --log-file "$out/$1.tsv" \
        "http://127.0.0.1:$2/inference.GRPCInferenceService/ModelInfer" 2>&1)
  rps=$(awk '/^finished in/ {print $4}' <<<"$res")
  calls=$(awk '/^requests:/ {print $8}' <<<"$res")  # succeeded (HTTP 2xx)
  if [[ $1 != bare ]]; then
    after=$(successes "$2")
    if (( after - before < calls )); then
      echo "$1: h2load counted $calls answered calls, the gateway $((after - before)) successes" >&2; exit 1
    fi
  fi
  # --log-file: start (us since epoch), status, us to the end of the response, per call
  $py - "$out/$1.tsv" "$rps" <<'PY'
import sys
lat = sorted(int(line.split("\t")[2]) for line in open(sys.argv[1]) if line.strip())
q = lambda f: lat[min(len(lat) - 1, int(f * len(lat)))] / 1000
print(sys.argv[2], f"{q(0.5):.2f}", f"{q(0.99):.2f}")
PY
}
printf '%-6s %-22s %-22s %-22s %-12s %-12s\n' round "bare/s (p50/p99 ms)" "grpcio/s (p50/p99)" \
  "native/s (p50/p99)" native/bare native/grpcio
for r in $(seq "$rounds"); do
  read -r b bp50 bp99 <<<"$(h2 bare "$bare_port")"
  read -r g gp50 gp99 <<<"$(h2 grpcio "$grpcio_port")"
  read -r n np50 np99 <<<"$(h2 native "$native_port")"
  printf '%-6s %-22s %-22s %-22s %-12.2f %-12.2f\n' "$r" "$b ($bp50/$bp99)" "$g ($gp50/$gp99)" \
    "$n ($np50/$np99)" "$(awk -v a="$n" -v b="$b" 'BEGIN {print a / b}')" \
    "$(awk -v a="$n" -v b="$g" 'BEGIN {print a / b}')"
done
