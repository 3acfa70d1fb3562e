#!/usr/bin/env bash
# Instructions per request, proxycache side by side with nginx and nginx+Lua.
#
# The wall-clock harness (../shared/bench/run.sh) cannot resolve differences under
# ~10% on a shared machine. This counts what each proxy executes per request instead:
# every target runs under `valgrind --tool=callgrind` with collection switched on only
# after it has started and answered once, wrk drives it with the same request
# (`x-api-key: k1`, keep-alive, 8 connections), collection is switched off before it
# stops, and the total is divided by the requests wrk made. The figure repeats to a
# fraction of a percent run to run, whatever else the machine is doing; it counts user
# space only (the kernel's share, about the same for every proxy here, is not in it).
#
# Usage (from the repository root):
#   cargo build --release
#   bash benches/instructions/run.sh [TARGET ...]
# Targets: nginx-plain nginx-lua proxycache-plain proxycache-pcmod proxycache-lua
#          proxycache-lua-empty (default: all). DURATION (seconds of wrk, default 10).
# Needs: valgrind, wrk, curl, nginx (+ libnginx-mod-http-lua for nginx-lua); a target
# whose tools are missing is skipped with a note.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
# shellcheck source=../targets.sh
. "$ROOT/benches/targets.sh"
DURATION="${DURATION:-10}"
WORK="$(mktemp -d /tmp/proxycache-instr.XXXXXX)"
requested_targets "$@"
need_tools valgrind callgrind_control wrk curl

BACKEND_STARTED=""
cleanup() {
  if [ -n "$BACKEND_STARTED" ] && [ -f "$WORK/backend/nginx.pid" ]; then
    kill -QUIT "$(cat "$WORK/backend/nginx.pid")" 2>/dev/null || true
  fi
}
trap cleanup EXIT

# The backend of the side-by-side harness, unless one already answers.
if ! curl -sf -o /dev/null http://127.0.0.1:18080/; then
  command -v nginx >/dev/null || { echo "needs nginx for the backend" >&2; exit 1; }
  mkdir -p "$WORK/backend"
  nginx -p "$WORK/backend/" -c "$BENCH/conf/backend.conf"
  BACKEND_STARTED=1
  for _ in $(seq 1 50); do curl -sf -o /dev/null http://127.0.0.1:18080/ && break; sleep 0.1; done
fi

# The command that runs target $1 in the foreground (in its own directory).
command_of() {
  case "$1" in
    nginx-*) echo "nginx -p $WORK/$1/ -c $(target_config "$1") -g 'daemon off; master_process off;'" ;;
    proxycache-*) echo "$BIN run --config $(target_config "$1")" ;;
  esac
}

declare -A RESULT
echo "| target | requests | instructions/request |"
echo "| --- | ---: | ---: |"
for t in "${TARGETS[@]}"; do
  port="$(target_port "$t")" || exit 1
  if ! target_available "$t"; then
    echo "| $t | skipped: not installed | – |"
    continue
  fi
  cmd="$(command_of "$t")"
  dir="$WORK/$t"
  mkdir -p "$dir"
  out="$dir/callgrind.out"
  # proxycache resolves its config's relative paths against the config's directory.
  (cd "$dir" && eval "exec valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file=$out $cmd" \
    >"$dir/stdout.log" 2>"$dir/valgrind.log") &
  vg=$!
  if ! wait_up "$port" 120 0.5; then
    echo "| $t | did not start (see $dir) | – |"
    kill -TERM "$vg" 2>/dev/null || true
    wait "$vg" 2>/dev/null || true
    continue
  fi
  # One request more before counting: lazily made state (pools, a Lua VM) is made.
  curl -s -o /dev/null -H 'x-api-key: k1' "http://127.0.0.1:$port/"
  callgrind_control -i on "$vg" >/dev/null 2>&1
  wrk -t1 -c8 -d"${DURATION}s" -H 'x-api-key: k1' "http://127.0.0.1:$port/" >"$dir/wrk.txt"
  callgrind_control -i off "$vg" >/dev/null 2>&1
  kill -TERM "$vg" 2>/dev/null || true
  wait "$vg" 2>/dev/null || true
  requests="$(grep -o '^ *[0-9]* requests' "$dir/wrk.txt" | awk '{print $1}')"
  total="$(awk '/^totals:/ {print $2; exit}' "$out"*)"
  if [ -z "$requests" ] || [ -z "$total" ] || [ "$requests" -eq 0 ]; then
    echo "| $t | no count (see $dir) | – |"
    continue
  fi
  RESULT[$t]=$((total / requests))
  echo "| $t | $requests | ${RESULT[$t]} |"
done

ratio() { # a b -> a/b with two decimals
  awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2fx", a / b }'
}
echo
[ -n "${RESULT[nginx-plain]:-}" ] && [ -n "${RESULT[proxycache-plain]:-}" ] &&
  echo "proxycache-plain / nginx-plain: $(ratio "${RESULT[proxycache-plain]}" "${RESULT[nginx-plain]}")"
[ -n "${RESULT[nginx-lua]:-}" ] && [ -n "${RESULT[proxycache-pcmod]:-}" ] &&
  echo "proxycache-pcmod / nginx-lua: $(ratio "${RESULT[proxycache-pcmod]}" "${RESULT[nginx-lua]}")"
[ -n "${RESULT[nginx-lua]:-}" ] && [ -n "${RESULT[proxycache-lua]:-}" ] &&
  echo "proxycache-lua / nginx-lua: $(ratio "${RESULT[proxycache-lua]}" "${RESULT[nginx-lua]}")"
[ -n "${RESULT[proxycache-plain]:-}" ] && [ -n "${RESULT[proxycache-pcmod]:-}" ] &&
  echo "proxycache-pcmod / proxycache-plain: $(ratio "${RESULT[proxycache-pcmod]}" "${RESULT[proxycache-plain]}")"
echo "(work files: $WORK)"
