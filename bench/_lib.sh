# Shared by bench/policy_bench.sh, shadow_bench.sh, coalesce_bench.sh and precomputed_bench.sh
# (sourced; needs $py).
port() { "$py" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_ready() {  # PORT: wait until the gateway there answers ready
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$1/v2/health/ready" >/dev/null && return 0; sleep 0.3; done
  echo "the gateway on port $1 never became ready" >&2
  return 1
}
wrk_model() {  # MODEL: wrk on $gw_port with $lua, $conc, $secs; prints "req/s p99_ms"; fails on any non-2xx
  local out bad rps p99
  out=$(MODEL=$1 wrk -t 2 -c "$conc" -d "${secs}s" --latency -s "$lua" "http://127.0.0.1:$gw_port/")
  bad=$(awk '/Non-2xx or 3xx responses/ {print $5}' <<<"$out")
  [[ -z $bad ]] || { echo "non-2xx answers: $bad" >&2; exit 1; }
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  p99=$(awk '$1=="99%" {v=$2; if (v ~ /us$/) {sub(/us/,"",v); v/=1000} else if (v ~ /ms$/) {sub(/ms/,"",v)} else if (v ~ /s$/) {sub(/s/,"",v); v*=1000}; print v}' <<<"$out")
  echo "$rps $p99"
}
ab_rounds() {  # A B LABEL_A LABEL_B: $rounds rounds of model A then model B; a table of rates, p99 and ratios B/A
  local sa=0 sb=0 a ap b bp r
  printf '%-6s %-11s %-9s %-11s %-9s %-8s %-s\n' round "$3/s" p99_ms "$4/s" p99_ms rps_ratio p99_ratio
  for r in $(seq "$rounds"); do
    read -r a ap <<<"$(wrk_model "$1")"; read -r b bp <<<"$(wrk_model "$2")"
    sa=$(awk -v s="$sa" -v x="$a" 'BEGIN {print s + x}'); sb=$(awk -v s="$sb" -v x="$b" 'BEGIN {print s + x}')
    printf '%-6s %-11s %-9s %-11s %-9s %-8.3f %.3f\n' "$r" "$a" "$ap" "$b" "$bp" \
      "$(awk -v a="$a" -v b="$b" 'BEGIN {print b / a}')" "$(awk -v a="$ap" -v b="$bp" 'BEGIN {print b / a}')"
  done
  printf '%-6s %-11s %-9s %-11s %-9s %.3f\n' all "$sa" "" "$sb" "" "$(awk -v a="$sa" -v b="$sb" 'BEGIN {print b / a}')"
}
