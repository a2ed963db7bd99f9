# shellcheck shell=bash
# Sourced by the benchmarks. Sourcing makes a scratch folder `$tmp` and
# installs an exit trap that stops every server started here and removes
# `$tmp`.
# `start_gantry [NAME=VALUE ...]` starts target/release/gantry with the
# shipped config and demo models on a free 127.0.0.1 port, result cache off
# (every request is an inference), no Redis or Postgres, waits until it is
# healthy, and sets `$url` and `$server` (its pid). Its arguments are extra
# environment for the server (e.g. ORT_DYLIB_PATH=...). The server's log goes
# to `$gantry_log` (default `$tmp/server.log`); it gets `$gantry_wait_s`
# seconds (default 60) to become healthy. gRPC is off unless `$grpc_bind`
# names its address (servers here may run side by side).
# `stop_gantry [PID]` stops one server (default `$server`) and waits for it.

tmp=$(mktemp -d)
server=""
servers=()
cleanup() {
  local pid
  for pid in "${servers[@]}"; do
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# shellcheck disable=SC2120 # arguments are optional
start_gantry() {
  local log=${gantry_log:-$tmp/server.log} wait_s=${gantry_wait_s:-60}
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  url=http://127.0.0.1:$port
  echo "== starting gantry on $url (cache off)"
  env -u REDIS_URL -u DATABASE_URL GANTRY__CACHE__ENABLED=false "$@" \
    target/release/gantry --config config/gantry.toml --bind "127.0.0.1:$port" --grpc-bind="${grpc_bind:-}" >"$log" 2>&1 &
  server=$!
  servers+=("$server")
  local code=000
  for _ in $(seq $((wait_s * 10))); do
    if ! kill -0 "$server" 2>/dev/null; then
      echo "gantry exited before it was ready:" >&2
      cat "$log" >&2
      exit 1
    fi
    code=$(curl -s -o /dev/null -w '%{http_code}' "$url/api/optimized/health" || true)
    [[ $code == 200 ]] && return 0
    sleep 0.1
  done
  echo "gantry was not healthy after $wait_s s (last status $code):" >&2
  cat "$log" >&2
  exit 1
}

# shellcheck disable=SC2120
stop_gantry() {
  local pid=${1:-$server} kept=() p
  [[ -n $pid ]] || return 0
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  for p in "${servers[@]}"; do [[ $p == "$pid" ]] || kept+=("$p"); done
  servers=("${kept[@]}")
  [[ $pid != "$server" ]] || server=""
}
