# Sourced by the benchmarks. Sourcing makes a scratch folder `$tmp` and
# installs an exit trap that stops the server and removes `$tmp`.
# `start_gantry` starts target/release/gantry with the shipped config and
# demo models on a free 127.0.0.1 port, result cache off (every request is an
# inference), no Redis or Postgres, waits until it is healthy, and sets
# `$url` and `$server` (its pid).

tmp=$(mktemp -d)
server=""
cleanup() {
  if [[ -n $server ]]; then
    kill "$server" 2>/dev/null || true
    wait "$server" 2>/dev/null || true
  fi
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

start_gantry() {
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  url=http://127.0.0.1:$port
  echo "== starting gantry on $url (cache off)"
  env -u REDIS_URL -u DATABASE_URL GANTRY__CACHE__ENABLED=false \
    target/release/gantry --config config/gantry.toml --bind "127.0.0.1:$port" >"$tmp/server.log" 2>&1 &
  server=$!
  local code=000
  for _ in $(seq 600); do
    if ! kill -0 "$server" 2>/dev/null; then
      echo "gantry exited before it was ready:" >&2
      cat "$tmp/server.log" >&2
      exit 1
    fi
    code=$(curl -s -o /dev/null -w '%{http_code}' "$url/api/optimized/health" || true)
    [[ $code == 200 ]] && return 0
    sleep 0.1
  done
  echo "gantry was not healthy after 60 s (last status $code):" >&2
  cat "$tmp/server.log" >&2
  exit 1
}
