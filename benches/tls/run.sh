#!/usr/bin/env bash
# HTTPS side by side: nginx (OpenSSL) and proxycache (rustls) terminating TLS with the
# same certificate (ECDSA P-256, made here), one worker each pinned to CPU 0; the shared
# bench backend and wrk share CPU 1 (as ../shared/bench/run.sh does).
#   keepalive: wrk -c64 over kept-alive TLS connections (bulk crypto + proxying)
#   handshake: `Connection: close` on every request, so every request is a new TLS
#              handshake (TLS 1.3, full handshake: wrk does not resume sessions)
#   h2:        h2load, HTTP/2 over TLS (ALPN h2), 64 connections x 10 streams
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

# CPU time (clock ticks) used so far by the target's processes ($PIDS).
ticks() {
  local t=0 p
  for p in $PIDS; do
    t=$((t + $(awk '{ print $14 + $15 }' "/proc/$p/stat" 2>/dev/null || echo 0)))
  done
  echo "$t"
}

run() { # name url extra-wrk-args...
  local name=$1 url=$2; shift 2
  taskset -c 1 wrk -t1 -c64 -d3s "$@" "$url" >/dev/null 2>&1 || true
  local hz
  hz=$(getconf CLK_TCK)
  for i in $(seq 1 "$REPEATS"); do
    local out before after
    before=$(ticks)
    out=$(taskset -c 1 wrk -t1 -c64 -d"${DURATION}s" --latency "$@" "$url" 2>&1)
    after=$(ticks)
    local rps reqs p99 err us
    rps=$(awk '/Requests\/sec/ { print $2 }' <<<"$out")
    reqs=$(awk '/requests in/ { print $1 }' <<<"$out")
    p99=$(awk '$1 == "99%" { print $2 }' <<<"$out")
    err=$(awk '/Socket errors|Non-2xx/ { printf "%s ", $0 }' <<<"$out")
    us=$(awk -v t=$((after - before)) -v hz="$hz" -v n="$reqs" 'BEGIN { printf "%.1f", t / hz * 1e6 / n }')
    echo "$name run $i: $rps req/s p99 $p99 proxy CPU ${us} us/req $err"
  done
}

h2() { # name url
  local name=$1 url=$2
  local hz
  hz=$(getconf CLK_TCK)
  taskset -c 1 h2load -t1 -c64 -m10 -D 3 "$url" >/dev/null 2>&1 || true
  for i in $(seq 1 "$REPEATS"); do
    local out before after rps reqs us
    before=$(ticks)
    out=$(taskset -c 1 h2load -t1 -c64 -m10 -D "$DURATION" "$url" 2>&1)
    after=$(ticks)
    rps=$(awk '/^finished in/ { print $4 }' <<<"$out")
    reqs=$(awk '/^requests:/ { print $8 }' <<<"$out")
    us=$(awk -v t=$((after - before)) -v hz="$hz" -v n="$reqs" 'BEGIN { if (n > 0) printf "%.1f", t / hz * 1e6 / n; else print "-" }')
    echo "$name run $i: $rps req/s ($reqs 2xx) proxy CPU ${us} us/req"
  done
}

for target in nginx proxycache; do
  if [ "$target" = nginx ]; then
    taskset -c 0 nginx -p "$WORK/nginx/" -c "$WORK/nginx/nginx.conf"
    sleep 0.3
    master=$(cat "$WORK/nginx/nginx.pid")
    PIDS="$master $(pgrep -P "$master" | tr '\n' ' ')"
    url=https://127.0.0.1:18443/
  else
    cd "$WORK/pc"
    taskset -c 0 "$PROXYCACHE_BIN" run --config config.toml >"$WORK/pc.log" 2>&1 &
    echo $! >"$WORK/pc.pid"
    cd - >/dev/null
    PIDS=$(cat "$WORK/pc.pid")
    url=https://127.0.0.1:18444/
  fi
  for _ in $(seq 50); do curl -sk -o /dev/null "$url" && break; sleep 0.1; done
  run "$target keepalive" "$url"
  run "$target handshake" "$url" -H "Connection: close"
  h2 "$target h2" "$url"
  if [ "$target" = nginx ]; then
    kill "$(cat "$WORK/nginx/nginx.pid")"; sleep 0.5
  else
    kill "$(cat "$WORK/pc.pid")"; rm -f "$WORK/pc.pid"; sleep 0.5
  fi
done
