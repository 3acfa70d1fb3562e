# Sourced by benches/instructions/run.sh and benches/ab/run.sh: the side-by-side targets
# (nginx and nginx+Lua from ../shared/bench, proxycache on the bench configs), where
# each listens and what it needs. Expects ROOT (the repository) to be set.

BENCH="${BENCH_DIR:-$ROOT/../shared/bench}"
BIN="${PROXYCACHE_BIN:-$ROOT/target/release/proxycache}"
ALL_TARGETS=(nginx-plain nginx-lua proxycache-plain proxycache-pcmod proxycache-lua proxycache-lua-empty)
# Also known, run only when named: nginx-plain-fwd (nginx-plain sending the request
# headers proxycache adds, benches/proxy/nginx-plain-fwd.conf).

# Sets TARGETS to the targets named on the command line ("$@"), or all of them.
requested_targets() {
  if [ $# -eq 0 ]; then
    TARGETS=("${ALL_TARGETS[@]}")
  else
    TARGETS=("$@")
  fi
}

# The port target $1 listens on (fails for an unknown target).
target_port() {
  case "$1" in
    nginx-plain) echo 18101 ;;
    nginx-lua) echo 18102 ;;
    nginx-plain-fwd) echo 18109 ;;
    proxycache-plain) echo 18105 ;;
    proxycache-pcmod) echo 18106 ;;
    proxycache-lua) echo 18107 ;;
    proxycache-lua-empty) echo 18108 ;;
    *) echo "unknown target $1" >&2; return 1 ;;
  esac
}

# The config file of target $1: nginx's .conf or proxycache's .toml.
target_config() {
  case "$1" in
    nginx-plain-fwd) echo "$ROOT/benches/proxy/nginx-plain-fwd.conf" ;;
    nginx-*) echo "$BENCH/conf/$1.conf" ;;
    proxycache-lua-empty) echo "$ROOT/benches/proxy/lua-empty.toml" ;;
    proxycache-*) echo "$BENCH/proxycache/${1#proxycache-}.toml" ;;
  esac
}

# Whether target $1 can run here.
target_available() {
  case "$1" in
    nginx-plain | nginx-plain-fwd) command -v nginx >/dev/null ;;
    nginx-lua) command -v nginx >/dev/null && [ -e /usr/lib/nginx/modules/ngx_http_lua_module.so ] ;;
    proxycache-*) [ -x "$BIN" ] ;;
  esac
}

# Exits unless every tool named is installed and ../shared/bench is there.
need_tools() {
  local tool
  for tool in "$@"; do
    command -v "$tool" >/dev/null || { echo "needs $tool" >&2; exit 1; }
  done
  [ -d "$BENCH/conf" ] || { echo "no $BENCH/conf (../shared/bench beside the repository)" >&2; exit 1; }
}

# Waits until the target on port $1 answers the bench request: up to $2 tries, $3 s
# apart. Fails if it never does.
wait_up() {
  local port=$1 tries=$2 pause=$3
  for _ in $(seq 1 "$tries"); do
    curl -s -o /dev/null -H 'x-api-key: k1' "http://127.0.0.1:$port/" && return 0
    sleep "$pause"
  done
  return 1
}
