#!/usr/bin/env bash
# HTTPS side by side: nginx (OpenSSL) and proxycache (rustls) terminating TLS with the
# same certificate (ECDSA P-256, made here), one worker each pinned to CPU 0; the shared
# bench backend and wrk share CPU 1 (as ../shared/bench/run.sh does).
#   keepalive: wrk -c64 over kept-alive TLS connections (bulk crypto + proxying)
#   handshake: `Connection: close` on every request, so every request is a new TLS
#              handshake (TLS 1.3, full handshake: wrk does not resume sessions)
#   h2:        h2load, HTTP/2 over TLS (ALPN h2), 64 connections x 10 streams
# Both run at once and are measured alternately, repeat by repeat (see below).
# Needs nginx, wrk, h2load (nghttp2-client), openssl, taskset; PROXYCACHE_BIN (release build).
# Usage: PROXYCACHE_BIN=$PWD/target/release/proxycache bash benches/tls/run.sh
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
SHARED=$(cd "$HERE/../../../shared/bench" && pwd)
: "${PROXYCACHE_BIN:?set PROXYCACHE_BIN}"
DURATION=${DURATION:-10}
REPEATS=${REPEATS:-3}
WORK=$(mktemp -d)
trap 'kill $(cat "$WORK"/*.pid 2>/dev/null) 2>/dev/null || true; kill $(cat "$WORK"/backend/nginx.pid "$WORK"/nginx/nginx.pid 2>/dev/null) 2>/dev/null || true; rm -rf "$WORK"' EXIT

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
  -subj /CN=localhost -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
  -keyout "$WORK/site.key" -out "$WORK/site.pem" 2>/dev/null

mkdir -p "$WORK/backend" "$WORK/nginx" "$WORK/pc/mods-none"
taskset -c 1 nginx -p "$WORK/backend/" -c "$SHARED/conf/backend.conf"
sed "s#CERT_DIR#$WORK#g" "$HERE/nginx-tls.conf" >"$WORK/nginx/nginx.conf"
sed "s#CERT_DIR#$WORK#g" "$HERE/proxycache-tls.toml" >"$WORK/pc/config.toml"
sleep 0.5

# CPU time (clock ticks) used so far by processes $1 (a space-separated PID list).
ticks() {
  local t=0 p
  for p in $1; do
    t=$((t + $(awk '{ print $14 + $15 }' "/proc/$p/stat" 2>/dev/null || echo 0)))
  done
  echo "$t"
}

HZ=$(getconf CLK_TCK)

# One measurement: MODE (keepalive|handshake|h2) against URL, CPU of PIDS.
# Prints "req/s cpu_us_per_req p99" (p99 "-" for h2load).
measure() { # mode url pids
  local mode=$1 url=$2 pids=$3 out before after rps reqs p99
  before=$(ticks "$pids")
  case "$mode" in
    keepalive) out=$(taskset -c 1 wrk -t1 -c64 -d"${DURATION}s" --latency "$url" 2>&1) ;;
    handshake) out=$(taskset -c 1 wrk -t1 -c64 -d"${DURATION}s" --latency -H "Connection: close" "$url" 2>&1) ;;
    h2) out=$(taskset -c 1 h2load -t1 -c64 -m10 -D "$DURATION" "$url" 2>&1) ;;
  esac
  after=$(ticks "$pids")
  if [ "$mode" = h2 ]; then
    rps=$(awk '/^finished in/ { print $4 }' <<<"$out")
    reqs=$(awk '/^requests:/ { print $8 }' <<<"$out")
    p99=-
  else
    rps=$(awk '/Requests\/sec/ { print $2 }' <<<"$out")
    reqs=$(awk '/requests in/ { print $1 }' <<<"$out")
    p99=$(awk '$1 == "99%" { print $2 }' <<<"$out")
    if grep -qE "Socket errors|Non-2xx" <<<"$out"; then
      echo "$mode $url: $(grep -E "Socket errors|Non-2xx" <<<"$out" | tr '\n' ' ')" >&2
    fi
  fi
  awk -v r="$rps" -v t=$((after - before)) -v hz="$HZ" -v n="${reqs:-0}" -v p="${p99:--}" \
    'BEGIN { if (n > 0) printf "%s %.1f %s\n", r, t / hz * 1e6 / n, p; else printf "%s - %s\n", r, p }'
}

warm() { # mode url
  case "$1" in
    keepalive) taskset -c 1 wrk -t1 -c64 -d3s "$2" >/dev/null 2>&1 || true ;;
    handshake) taskset -c 1 wrk -t1 -c64 -d3s -H "Connection: close" "$2" >/dev/null 2>&1 || true ;;
    h2) taskset -c 1 h2load -t1 -c64 -m10 -D 3 "$2" >/dev/null 2>&1 || true ;;
  esac
}

# Both servers up at once (the idle one costs nothing) and measured alternately: each
# repeat runs nginx and proxycache back to back, in alternating order, so the shared
# machine's drift (its speed moves by 20-40% within minutes) hits both alike; the
# summary gives each repeat's ratio and their median.
taskset -c 0 nginx -p "$WORK/nginx/" -c "$WORK/nginx/nginx.conf"
sleep 0.3
master=$(cat "$WORK/nginx/nginx.pid")
NGINX_PIDS="$master $(pgrep -P "$master" | tr '\n' ' ')"
NGINX_URL=https://127.0.0.1:18443/
cd "$WORK/pc"
taskset -c 0 "$PROXYCACHE_BIN" run --config config.toml >"$WORK/pc.log" 2>&1 &
echo $! >"$WORK/pc.pid"
cd - >/dev/null
PC_PIDS=$(cat "$WORK/pc.pid")
PC_URL=https://127.0.0.1:18444/
for url in "$NGINX_URL" "$PC_URL"; do
  for _ in $(seq 50); do curl -sk -o /dev/null "$url" && break; sleep 0.1; done
done

median() { sort -g | awk '{ a[NR] = $1 } END { if (NR == 0) print "-"; else if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }

SUMMARY=()
for mode in keepalive handshake h2; do
  warm "$mode" "$NGINX_URL"
  warm "$mode" "$PC_URL"
  ratios="" n_rps="" p_rps="" n_us="" p_us=""
  for i in $(seq 1 "$REPEATS"); do
    if [ $((i % 2)) -eq 1 ]; then order="nginx proxycache"; else order="proxycache nginx"; fi
    for target in $order; do
      if [ "$target" = nginx ]; then
        read -r rps us p99 < <(measure "$mode" "$NGINX_URL" "$NGINX_PIDS")
        n_rps="$n_rps $rps" n_us="$n_us $us" n_last=$rps
      else
        read -r rps us p99 < <(measure "$mode" "$PC_URL" "$PC_PIDS")
        p_rps="$p_rps $rps" p_us="$p_us $us" p_last=$rps
      fi
      echo "$target $mode run $i: $rps req/s p99 $p99 proxy CPU $us us/req"
    done
    ratios="$ratios $(awk -v a="$p_last" -v b="$n_last" 'BEGIN { printf "%.2f", a / b }')"
  done
  SUMMARY+=("| $mode | $(echo "$n_rps" | tr ' ' '\n' | grep . | median) | $(echo "$n_us" | tr ' ' '\n' | grep . | median) | $(echo "$p_rps" | tr ' ' '\n' | grep . | median) | $(echo "$p_us" | tr ' ' '\n' | grep . | median) | $(echo "$ratios" | sed 's/^ //; s/ / \/ /g') | $(echo "$ratios" | tr ' ' '\n' | grep . | median)x |")
done

echo
echo "| mode | nginx req/s | nginx µs/req | proxycache req/s | proxycache µs/req | proxycache/nginx per repeat | median |"
echo "| --- | ---: | ---: | ---: | ---: | --- | ---: |"
printf '%s\n' "${SUMMARY[@]}"
