#!/usr/bin/env bash
# `make bench-media`: what uploads cost.
#   1. media-bench: decode + resize (images) and decode + resample (audio)
#      per file on one thread, next to ONNX Runtime inference per item on
#      the model the file is for.
#   2. upload-load against target/release/gantry (shipped config and demo
#      models, cache off): the same files posted as multipart uploads at
#      concurrency 1 and 8 for SECONDS each; requests/s, latency, and the
#      mean batch size, decode, queue and inference time the answers report.
# Writes load-tests/MEDIA_RESULTS.md with the machine, date, commit and
# command (every run rewrites it).
#
#   load-tests/media.sh            # ITERATIONS=50 timed runs per case, SECONDS=5 per load cell
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
iterations=${ITERATIONS:-50}
seconds=${SECONDS_PER_CELL:-5}
cargo build --release --quiet -p gantry --bin gantry -p gantry-load-tests --bin media-bench --bin upload-load
table=$(target/release/media-bench --iterations "$iterations")

source "$root/load-tests/start-gantry.sh"
start_gantry

served="| Model | File | Concurrency | Requests/s | p50 (ms) | p95 (ms) | p99 (ms) | Errors | Mean batch | Mean decode (ms) | Mean queue (ms) | Mean inference (ms) |
| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
for cell in "spheroid-seg spheroids.png" "spheroid-seg spheroids.jpg" "night-calls call-owl-hoot.wav" "night-calls call-owl-hoot.mp3"; do
  read -r model file <<<"$cell"
  for concurrency in 1 8; do
    echo "== $model $file c=$concurrency"
    json=$(target/release/upload-load --url "$url" --model "$model" --file "tests/fixtures/media/$file" \
      --concurrency "$concurrency" --seconds "$seconds")
    served+=$'\n'$(python3 -c '
import json, sys
r = json.loads(sys.argv[1])
cells = [r["model"], r["file"], r["concurrency"], "%.0f" % r["requests_per_s"], "%.2f" % r["p50_ms"],
         "%.2f" % r["p95_ms"], "%.2f" % r["p99_ms"], r["errors"], "%.2f" % r["mean_batch_size"],
         "%.2f" % r["mean_decode_ms"], "%.2f" % r["mean_queue_ms"], "%.2f" % r["mean_inference_ms"]]
print("| " + " | ".join(str(c) for c in cells) + " |")' "$json")
  done
done

commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
machine=$(python3 -c '
import os
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "unknown")
mem = int(next(l.split()[1] for l in open("/proc/meminfo") if l.startswith("MemTotal"))) / 1024 / 1024
print(f"{os.cpu_count()} cores, {cpu}, {mem:.1f} GiB RAM")')
{
  echo "# Media preparation next to inference"
  echo
  echo "Written by \`load-tests/media.sh\` (every run rewrites it)."
  echo
  echo "- Command: \`ITERATIONS=$iterations SECONDS_PER_CELL=$seconds load-tests/media.sh\`"
  echo "- Machine: $machine"
  echo "- Date: $(date -u +%Y-%m-%d), commit $commit"
  echo
  echo "## Per file, one thread"
  echo
  echo "Medians of $iterations runs. *Prepare* is what a request spends on the media pool before"
  echo "inference: decode + colour conversion + resize + normalise (images), or decode + mix +"
  echo "resample + pad (audio). Inference is ONNX Runtime alone, one intra-op thread. The camera"
  echo "images are generated, high-entropy texture: a worst case for the entropy decoder."
  echo
  echo "$table"
  echo
  echo "## Served uploads"
  echo
  echo "\`upload-load\` posting the same file as multipart, cache off, ${seconds} s per row; the load"
  echo "generator shares the cores with the server. *Mean decode* includes waiting for a media-pool"
  echo "thread; *mean batch* is the batch each request ran in."
  echo
  echo "$served"
} > load-tests/MEDIA_RESULTS.md
cat load-tests/MEDIA_RESULTS.md
