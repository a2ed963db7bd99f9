#!/usr/bin/env bash
# Throughput and latency of a running Gantry, per demo model, at concurrency
# 1 and 32, with the oha load generator (`cargo install oha --locked`).
#
#   make run                      # in another terminal
#   load-tests/smoke.sh           # GANTRY_URL, DURATION, OHA override defaults
#
# tiny-classifier is sent as REST JSON (64 floats); unet-seg through the
# KServe v2 binary tensor extension (one 3x128x128 image, 196 KiB), the way
# a Triton client sends it. Traffic goes to 127.0.0.1 only.
set -euo pipefail
URL=${GANTRY_URL:-http://127.0.0.1:8080}
OHA=${OHA:-oha}
DURATION=${DURATION:-10s}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

python3 "$(dirname "$0")/bodies.py" "$tmp"

summary() {
  # oha's text summary: keep throughput, percentiles and status counts.
  grep -E "Requests/sec|Success rate|50(\.00)?% in|95(\.00)?% in|99(\.00)?% in|\[[0-9]{3}\]" || true
}

for c in 1 32; do
  echo "== tiny-classifier, REST JSON, concurrency $c, $DURATION"
  "$OHA" -z "$DURATION" -c "$c" --no-tui -m POST -H "content-type: application/json" \
    -D "$tmp/tiny-classifier.body" "$URL/api/optimized/predict" | summary
  echo "== unet-seg, v2 binary, concurrency $c, $DURATION"
  "$OHA" -z "$DURATION" -c "$c" --no-tui -m POST -H "content-type: application/octet-stream" \
    -H "inference-header-content-length: $(cat "$tmp/unet-seg.len")" \
    -D "$tmp/unet-seg.body" "$URL/v2/models/unet-seg/infer" | summary
done
curl -s "$URL/api/optimized/stats" | python3 -c '
import json, sys
stats = json.load(sys.stdin)
for name, pool in stats["model_pools"].items():
    b = pool["batcher"]
    print("%s: %d batches, %d items, average batch %.2f" % (name, b["batches"], b["items"], b["avg_batch_size"]))'
