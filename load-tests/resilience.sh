#!/usr/bin/env bash
# Two load tests of Gantry under overload and change, with oha:
#
#  1. overload: a copy of unet-seg with queue_capacity = 50 gets 4 x 50 = 200
#     concurrent requests. Every answer must be 200 or 429 (none missing,
#     none other), health must still be 200 afterwards, and the 200s must
#     equal the requests the batcher accepted (its `items` counter).
#  2. scaling: tiny-classifier under steady load (concurrency 8) while an
#     admin scales it 1 -> 4 -> 1 replicas. Every answer must be 200.
#
#   cargo build --release && load-tests/resilience.sh      # OHA=path/to/oha
set -euo pipefail
cd "$(dirname "$0")/.."
OHA=${OHA:-oha}
BIN=target/release/gantry
tmp=$(mktemp -d)
pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$tmp"; }
trap cleanup EXIT
port=18283
url="http://127.0.0.1:$port"

mkdir -p "$tmp/models/unet-seg" "$tmp/models/tiny-classifier"
cp models/unet-seg/model.onnx "$tmp/models/unet-seg/"
printf 'max_batch_size = 8\nbatch_window_ms = 100\nqueue_capacity = 50\n' >"$tmp/models/unet-seg/model.toml"
cp models/tiny-classifier/model.onnx models/tiny-classifier/model.toml "$tmp/models/tiny-classifier/"

# The cache is off so every request is inferred (replicas share ONNX
# Runtime's one thread pool, so four fit on a two-core machine).
GANTRY__CACHE__ENABLED=false \
  "$BIN" --bind "127.0.0.1:$port" --grpc-bind= --models "$tmp/models" >"$tmp/server.log" 2>&1 &
pid=$!
for _ in $(seq 100); do curl -sf "$url/api/optimized/health" >/dev/null && break; sleep 0.1; done

python3 - "$tmp" <<'PY'
import json, random, struct, sys
out = sys.argv[1]
random.seed(3)
pixels = 3 * 128 * 128
header = json.dumps({"inputs": [{"name": "image", "shape": [1, 3, 128, 128], "datatype": "FP32",
                                 "parameters": {"binary_data_size": pixels * 4}}],
                     "outputs": [{"name": "mask", "parameters": {"binary_data": True}}]}).encode()
open(f"{out}/unet.bin", "wb").write(header + struct.pack(f"<{pixels}f", *(random.random() for _ in range(pixels))))
open(f"{out}/unet.len", "w").write(str(len(header)))
tiny = {"model": "tiny-classifier", "inputs": {"features": {"shape": [1, 64], "datatype": "FP32",
        "data": [random.random() for _ in range(64)]}}}
open(f"{out}/tiny.json", "w").write(json.dumps(tiny))
PY

statuses() { python3 -c 'import json,sys; r=json.load(sys.stdin); print(json.dumps(r["statusCodeDistribution"]) + "\t" + json.dumps(r.get("errorDistribution", {})))'; }

echo "== overload: 200 concurrent requests at a queue of 50"
"$OHA" -n 200 -c 200 --no-tui --output-format json -m POST -H "content-type: application/octet-stream" \
  -H "inference-header-content-length: $(cat "$tmp/unet.len")" -D "$tmp/unet.bin" \
  "$url/v2/models/unet-seg/infer" | statuses | tee "$tmp/overload.txt"
health=$(curl -s -o /dev/null -w '%{http_code}' "$url/api/optimized/health")
accepted=$(curl -s "$url/api/optimized/stats" | python3 -c 'import json,sys; print(json.load(sys.stdin)["model_pools"]["unet-seg"]["batcher"]["items"])')
python3 - "$tmp/overload.txt" "$health" "$accepted" <<'PY'
import json, sys
codes, errors = (json.loads(part) for part in open(sys.argv[1]).read().split("\t", 1))
ok, refused = codes.get("200", 0), codes.get("429", 0)
others = {k: v for k, v in codes.items() if k not in ("200", "429")}
print(f"200: {ok}, 429: {refused}, other statuses: {others}, connection errors: {errors}")
print(f"health after: {sys.argv[2]}, accepted by the batcher: {sys.argv[3]}")
assert ok + refused == 200 and not others and not errors, "every request gets exactly one 200 or 429"
assert sys.argv[2] == "200", "health stays 200"
assert int(sys.argv[3]) == ok, "the 200s are exactly the accepted requests"
print("overload: PASS")
PY

echo "== scaling tiny-classifier 1 -> 4 -> 1 under steady load"
"$OHA" -z 12s -w -c 8 --no-tui --output-format json -m POST -H "content-type: application/json" \
  -D "$tmp/tiny.json" "$url/api/optimized/predict" >"$tmp/steady.json" &
load=$!
scale() {
  curl -s -X PUT -H 'content-type: application/json' -d "{\"replicas\": $1}" \
    "$url/api/optimized/models/tiny-classifier/replicas"; echo
}
sleep 3; scale 4
sleep 4; curl -s "$url/api/optimized/stats" | python3 -c 'import json,sys; print("replicas:", [r["state"] for r in json.load(sys.stdin)["model_pools"]["tiny-classifier"]["replicas"]])'
scale 1
sleep 2; curl -s "$url/api/optimized/stats" | python3 -c 'import json,sys; print("replicas:", [r["state"] for r in json.load(sys.stdin)["model_pools"]["tiny-classifier"]["replicas"]])'
wait "$load"
python3 - "$tmp/steady.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
codes, errors = r["statusCodeDistribution"], r.get("errorDistribution", {})
print(f"statuses: {codes}, connection errors: {errors}, requests/s: {r['summary']['requestsPerSec']:.0f}")
assert set(codes) == {"200"} and not errors, "no request fails while scaling"
print("scaling: PASS")
PY
