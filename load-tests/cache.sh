#!/usr/bin/env bash
# p50 latency of a cache miss, an L1 hit and an L2 (Redis) hit, per demo
# model, at concurrency 1, with the oha load generator.
#
#   cargo build --release && load-tests/cache.sh     # needs Redis on 127.0.0.1:6379
#
# It starts two servers of its own on 127.0.0.1: one with L1 and L2, one
# whose L1 holds nothing (l1_capacity_mb = 0) so every hit comes from Redis.
# Misses send `Cache-Control: no-cache`; hits repeat one request.
set -euo pipefail
cd "$(dirname "$0")/.."
OHA=${OHA:-oha}
REQUESTS=${REQUESTS:-2000}
REDIS=${REDIS_URL:-redis://127.0.0.1:6379}
BIN=target/release/gantry
tmp=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; rm -rf "$tmp"; }
trap cleanup EXIT

start() { # port, l1_capacity_mb
  GANTRY__CACHE__REDIS_URL="$REDIS" GANTRY__CACHE__L1_CAPACITY_MB="$2" GANTRY__CACHE__REDIS_TIMEOUT_MS=50 \
    "$BIN" --bind "127.0.0.1:$1" --grpc-bind= >"$tmp/server-$1.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 100); do
    curl -sf "http://127.0.0.1:$1/api/optimized/health" >/dev/null && return
    sleep 0.1
  done
  echo "server on $1 did not start"; cat "$tmp/server-$1.log"; exit 1
}
start 18181 256
start 18182 0

python3 - "$tmp" <<'PY'
import json, random, sys
out = sys.argv[1]
random.seed(7)
def body(model, name, shape):
    n = 1
    for d in shape:
        n *= d
    data = [round(random.random(), 6) for _ in range(n)]
    return {"model": model, "inputs": {name: {"shape": shape, "datatype": "FP32", "data": data}}}
json.dump(body("tiny-classifier", "features", [1, 64]), open(f"{out}/tiny.json", "w"))
json.dump(body("unet-seg", "image", [1, 3, 128, 128]), open(f"{out}/unet.json", "w"))
PY

p50() { # port, body, extra header...
  local port=$1 body=$2; shift 2
  "$OHA" -n "$REQUESTS" -c 1 --no-tui --output-format json -m POST \
    -H "content-type: application/json" "$@" -D "$body" \
    "http://127.0.0.1:$port/api/optimized/predict" |
    python3 -c 'import json,sys; r=json.load(sys.stdin); print("%.3f" % (r["latencyPercentiles"]["p50"]*1000))'
}

echo "| Model | Miss p50 ms | L1 hit p50 ms | L2 hit p50 ms |"
echo "| --- | --- | --- | --- |"
for model in tiny unet; do
  body="$tmp/$model.json"
  miss=$(p50 18181 "$body" -H "cache-control: no-cache")
  l1=$(p50 18181 "$body")
  l2=$(p50 18182 "$body")
  name=$([ "$model" = tiny ] && echo tiny-classifier || echo unet-seg)
  echo "| $name | $miss | $l1 | $l2 |"
done
