# Shared by bench/policy_bench.sh, shadow_bench.sh and coalesce_bench.sh (sourced; needs $py).
port() { "$py" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_ready() {  # PORT: wait until the gateway there answers ready
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$1/v2/health/ready" >/dev/null && return 0; sleep 0.3; done
  echo "the gateway on port $1 never became ready" >&2
  return 1
}
