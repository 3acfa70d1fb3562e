#!/usr/bin/env bash
# Interleaved wall-clock comparison: proxycache and its peers, round by round.
#
# ../shared/bench/run.sh measures each target's repeats back to back, target after
# target; on a shared machine whose speed drifts by 20-40% from one minute to the next,
# rows measured minutes apart disagree by more than the differences looked for. This
# script starts every target once (all stay up; an idle one costs nothing), then
# measures every target once per round, switching wrk from port to port (each run a
# second or two after the last), and reports, per round, each target's req/s against
# its reference measured in the same round, then the median of those ratios: drift
# that lasts longer than a round cancels out. The order rotates from round to round
# (no target is always first).
#
# Setup as in ../shared/bench: the proxy under test pinned to CPU 0 with one worker;
# wrk (-t1) and the backend (nginx, ../shared/bench/conf/backend.conf) on CPU 1; the
# same request to every target (`x-api-key: k1`). Proxy CPU per request is user+system
# time of all the proxy's threads (/proc/PID/stat) over the measured requests; backend
# CPU per request the same for the backend's worker. The backend shares CPU 1 with wrk,
# so what a proxy makes it do (a longer request to parse, more wake-ups) costs req/s
# too; nginx-plain-fwd (nginx sending the request headers proxycache adds) shows how
# much of a difference that is.
#
# Usage (from the repository root):
#   cargo build --release
#   bash benches/ab/run.sh [TARGET ...]
# Targets: nginx-plain nginx-lua proxycache-plain proxycache-pcmod proxycache-lua
#          proxycache-lua-empty (default: all), and nginx-plain-fwd when named. Knobs: ROUNDS (8), DURATION (4 s),
#          WARMUP (1 s), CONNS (64), URL_PATH (/).
# Reference of each target: nginx-plain (and nginx-plain-fwd) for proxycache-plain; nginx-lua for
# proxycache-pcmod and proxycache-lua; proxycache-plain for proxycache-pcmod and
# proxycache-lua-empty (the policy's and the empty hook's cost).
# Needs: nginx (+ libnginx-mod-http-lua for nginx-lua), wrk, curl, taskset.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
# shellcheck source=../targets.sh
. "$ROOT/benches/targets.sh"
ROUNDS="${ROUNDS:-8}"
DURATION="${DURATION:-4}"
WARMUP="${WARMUP:-1}"
CONNS="${CONNS:-64}"
URL_PATH="${URL_PATH:-/}"
WORK="$(mktemp -d /tmp/proxycache-ab.XXXXXX)"
requested_targets "$@"
need_tools nginx wrk curl taskset
TCK="$(getconf CLK_TCK)"

cleanup() {
  for f in "$WORK"/*/nginx.pid; do
    [ -f "$f" ] && kill -QUIT "$(cat "$f")" 2>/dev/null || true
  done
  for p in ${PC_PIDS:-}; do
    kill -TERM "$p" 2>/dev/null || true
  done
}
trap cleanup EXIT

if curl -sf -o /dev/null http://127.0.0.1:18080/; then
  echo "port 18080 is taken (a backend of another run?): stop it first" >&2
  exit 1
fi
mkdir -p "$WORK/backend"
taskset -c 1 nginx -p "$WORK/backend/" -c "$BENCH/conf/backend.conf"
for _ in $(seq 1 50); do curl -sf -o /dev/null http://127.0.0.1:18080/ && break; sleep 0.1; done
BACKEND_PID="$(pgrep -P "$(cat "$WORK/backend/nginx.pid")" | head -1)"

# Starts target $1 pinned to CPU 0; prints the PID whose CPU time is the proxy's.
start() {
  local t=$1 dir="$WORK/$1"
  mkdir -p "$dir"
  case "$t" in
    nginx-*)
      taskset -c 0 nginx -p "$dir/" -c "$(target_config "$t")"
      for _ in $(seq 1 50); do [ -s "$dir/nginx.pid" ] && break; sleep 0.1; done
      # The one worker (its master only forks and waits).
      local master
      master="$(cat "$dir/nginx.pid")"
      for _ in $(seq 1 50); do
        pgrep -P "$master" >/dev/null && break
        sleep 0.1
      done
      pgrep -P "$master" | head -1
      ;;
    proxycache-*)
      taskset -c 0 "$BIN" run --config "$(target_config "$t")" >"$dir/out.log" 2>&1 &
      echo $!
      ;;
  esac
}

stop() {
  local t=$1 pid=$2
  case "$t" in
    nginx-*) kill -QUIT "$(cat "$WORK/$t/nginx.pid")" 2>/dev/null || true ;;
    *) kill -TERM "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true ;;
  esac
  local port
  port="$(target_port "$t")"
  for _ in $(seq 1 50); do curl -s -o /dev/null "http://127.0.0.1:$port/" || break; sleep 0.1; done
}

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

declare -A RPS CPU P99 BCPU
ACTIVE=()
for t in "${TARGETS[@]}"; do
  target_port "$t" >/dev/null || exit 1
  if target_available "$t"; then ACTIVE+=("$t"); else echo "skipped $t: not installed" >&2; fi
done

# Every target is started once and stays up (idle ones cost nothing): a round then
# only switches wrk from one port to the next, so the runs compared are seconds apart.
declare -A PIDS
UP=()
for t in "${ACTIVE[@]}"; do
  port="$(target_port "$t")"
  pid="$(start "$t")"
  [ "$t" = "${t#nginx}" ] && PC_PIDS="${PC_PIDS:-} $pid"
  if ! wait_up "$port" 100 0.1; then
    echo "$t did not start (see $WORK/$t)" >&2
    stop "$t" "$pid"
    continue
  fi
  PIDS[$t]=$pid
  UP+=("$t")
done
ACTIVE=("${UP[@]}")

for r in $(seq 1 "$ROUNDS"); do
  # Each round starts one target later, so that over as many rounds as there are
  # targets each one runs once in every position (first after the previous round's
  # last, and so on).
  ORDER=()
  for i in "${!ACTIVE[@]}"; do
    ORDER+=("${ACTIVE[$(((i + r - 1) % ${#ACTIVE[@]}))]}")
  done
  for t in "${ORDER[@]}"; do
    port="$(target_port "$t")"
    pid="${PIDS[$t]}"
    taskset -c 1 wrk -t1 -c"$CONNS" -d"${WARMUP}s" -H 'x-api-key: k1' "http://127.0.0.1:$port$URL_PATH" >/dev/null
    before="$(cpu_ticks "$pid")"
    b_before="$(cpu_ticks "$BACKEND_PID")"
    out="$(taskset -c 1 wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency -H 'x-api-key: k1' "http://127.0.0.1:$port$URL_PATH")"
    after="$(cpu_ticks "$pid")"
    b_after="$(cpu_ticks "$BACKEND_PID")"
    echo "$out" >"$WORK/$t.round$r.txt"
    n="$(echo "$out" | grep -o '^ *[0-9]* requests' | awk '{print $1}')"
    rps="$(echo "$out" | awk '/Requests\/sec/ {print $2}')"
    p99="$(echo "$out" | awk '$1 == "99%" {v=$2; if (v ~ /us$/) {sub(/us/,"",v); v/=1000} else if (v ~ /ms$/) {sub(/ms/,"",v)} else if (v ~ /s$/) {sub(/s/,"",v); v*=1000}; print v}')"
    if echo "$out" | grep -q "Non-2xx"; then
      echo "$t round $r: non-2xx responses (see $WORK/$t.round$r.txt)" >&2
    fi
    RPS[$t.$r]=$rps
    P99[$t.$r]=$p99
    CPU[$t.$r]="$(awk -v a="$before" -v b="$after" -v n="$n" -v t="$TCK" 'BEGIN { printf "%.1f", (b - a) * 1e6 / t / n }')"
    BCPU[$t.$r]="$(awk -v a="$b_before" -v b="$b_after" -v n="$n" -v t="$TCK" 'BEGIN { printf "%.1f", (b - a) * 1e6 / t / n }')"
    printf '[round %s] %-22s %9s req/s  p99 %6s ms  CPU %5s us/req  backend %5s us/req\n' "$r" "$t" "$rps" "$p99" "${CPU[$t.$r]}" "${BCPU[$t.$r]}" >&2
  done
done

for t in "${ACTIVE[@]}"; do
  stop "$t" "${PIDS[$t]}"
done
PC_PIDS=""

median() { sort -g | awk '{a[NR]=$1} END { if (NR == 0) print "-"; else if (NR % 2) print a[(NR+1)/2]; else print (a[NR/2] + a[NR/2+1]) / 2 }'; }

echo
echo "| target | req/s per round | median req/s | median p99 ms | median CPU µs/req | median backend CPU µs/req |"
echo "| --- | --- | ---: | ---: | ---: | ---: |"
for t in "${ACTIVE[@]}"; do
  per=""; for r in $(seq 1 "$ROUNDS"); do per="$per${per:+ / }${RPS[$t.$r]:--}"; done
  m_rps="$(for r in $(seq 1 "$ROUNDS"); do [ -n "${RPS[$t.$r]:-}" ] && echo "${RPS[$t.$r]}"; done | median)"
  m_p99="$(for r in $(seq 1 "$ROUNDS"); do [ -n "${P99[$t.$r]:-}" ] && echo "${P99[$t.$r]}"; done | median)"
  m_cpu="$(for r in $(seq 1 "$ROUNDS"); do [ -n "${CPU[$t.$r]:-}" ] && echo "${CPU[$t.$r]}"; done | median)"
  m_bcpu="$(for r in $(seq 1 "$ROUNDS"); do [ -n "${BCPU[$t.$r]:-}" ] && echo "${BCPU[$t.$r]}"; done | median)"
  echo "| $t | $per | $m_rps | $m_p99 | $m_cpu | $m_bcpu |"
done

pairs=(proxycache-plain:nginx-plain proxycache-plain:nginx-plain-fwd proxycache-pcmod:nginx-lua proxycache-lua:nginx-lua
  proxycache-pcmod:proxycache-plain proxycache-lua-empty:proxycache-plain)
echo
echo "| comparison (same round) | req/s ratio per round | median | CPU/req ratio (median) | p99 ratio (median) |"
echo "| --- | --- | ---: | ---: | ---: |"
for pair in "${pairs[@]}"; do
  a=${pair%%:*} b=${pair##*:}
  per="" ratios="" cpus="" p99s=""
  for r in $(seq 1 "$ROUNDS"); do
    if [ -n "${RPS[$a.$r]:-}" ] && [ -n "${RPS[$b.$r]:-}" ]; then
      x="$(awk -v a="${RPS[$a.$r]}" -v b="${RPS[$b.$r]}" 'BEGIN { printf "%.2f", a / b }')"
      per="$per${per:+ / }$x"
      ratios="$ratios $x"
      cpus="$cpus $(awk -v a="${CPU[$a.$r]}" -v b="${CPU[$b.$r]}" 'BEGIN { printf "%.2f", a / b }')"
      p99s="$p99s $(awk -v a="${P99[$a.$r]}" -v b="${P99[$b.$r]}" 'BEGIN { printf "%.2f", a / b }')"
    fi
  done
  [ -z "$per" ] && continue
  echo "| $a / $b | $per | $(echo "$ratios" | tr ' ' '\n' | grep . | median)x | $(echo "$cpus" | tr ' ' '\n' | grep . | median)x | $(echo "$p99s" | tr ' ' '\n' | grep . | median)x |"
done
echo
echo "(raw wrk output: $WORK)"
