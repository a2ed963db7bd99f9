#!/usr/bin/env bash
# `make bench`: Gantry served next to raw ONNX Runtime, in one run.
#
#   make bench          # DURATION=10s a cell, REPEAT=3 runs a cell; OHA=/path/to/oha skips the install
#
# Builds release and serves two models from a scratch repository whose
# model.toml files hold only `replicas` and `max_batch_size` (unet-seg:
# 2 and 8; tiny-classifier, the MLP: 2 and 32), result cache off (every
# request an inference), no Redis, no Postgres. Each cell runs REPEAT times;
# the tables hold the medians:
#   - GET /v2/health/live at concurrency 32: the server's own ceiling;
#   - the MLP as REST JSON at concurrency 1 and 32;
#   - unet-seg as v2 JSON (340 KB bodies) at concurrency 1 and 32, and
#     through the binary extension at concurrency 1 and 32 (what JSON costs),
#     also on a server with one thread per run (`runtime.intra_op_threads = 1`,
#     a unet-seg replica per core),
#     and as JSON answered gzipped at concurrency 1 (what compression costs);
#   - gRPC next to HTTP: the MLP through the v2 binary extension and both
#     models over gRPC's ModelInfer (`grpc-load`, raw_input_contents, the
#     callers sharing one HTTP/2 connection as a gRPC channel does) at
#     concurrency 1 and 32;
#   - the MLP again on a server with the cache on, every request a hit;
#   - raw-onnx: ONNX Runtime through Gantry's engine, no HTTP, on the same
#     shared pool of every core, at batch 1 and at each power of two up to
#     max_batch_size (the best is "raw's best throughput"); the goals that
#     compare unet-seg with raw take raw runs right after each served run
#     (the machine's speed may drift between the start and the end);
#   - 20 copies of the MLP in one repository: all ready, each answering.
# The tables, the goals (PASS/MISS), the machine, the commit and the command
# go to stdout and to load-tests/RESULTS.md, which each run rewrites.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

DURATION=${DURATION:-10s}
REPEAT=${REPEAT:-3}
CARGO=${CARGO:-cargo}
# raw-onnx measures as long as oha does (DURATION in seconds), else 10 s;
# beside a goal's run, BESIDE_SECONDS (default 5).
if [[ -z ${RAW_SECONDS:-} ]]; then
  if [[ $DURATION =~ ^([0-9]+(\.[0-9]+)?)s?$ ]]; then RAW_SECONDS=${BASH_REMATCH[1]}; else RAW_SECONDS=10; fi
fi
BESIDE_SECONDS=${BESIDE_SECONDS:-5}

# The command as it was given, with the settings that shape the numbers.
source "$root/load-tests/bench-lib.sh"
run_labels "make bench" load-tests/bench.sh DURATION REPEAT OHA RAW_SECONDS BESIDE_SECONDS

echo "== building (release)"
"$CARGO" build --release --quiet -p gantry --bin gantry -p gantry-load-tests --bin raw-onnx --bin grpc-load

source "$root/load-tests/start-gantry.sh"
find_oha

python3 load-tests/bodies.py "$tmp"

# The scratch repositories: the two models with only replicas and
# max_batch_size, and twenty copies of the MLP.
repo=$tmp/models
bench_repository "$repo"
many=$tmp/many
for i in $(seq -w 1 20); do
  mkdir -p "$many/mlp-$i"
  cp models/tiny-classifier/model.onnx "$many/mlp-$i/"
  printf 'replicas = 1\nmax_batch_size = 32\n' >"$many/mlp-$i/model.toml"
done

# measure NAME CONCURRENCY COMMAND...: REPEAT runs of COMMAND (a load
# generator printing oha's JSON) into $tmp/cells/NAME.K.json, with the stats
# and the server's CPU time before and after each. `cell` runs oha; `grpc_cell` runs grpc-load on the
# gRPC server at `$grpc` (oha speaks no gRPC).
mkdir -p "$tmp/cells"
# The server's CPU time so far (user + system, in clock ticks): around a
# run, what the server spent on it apart from the load generator.
server_cpu() { awk '{print $14 + $15}' "/proc/$server/stat"; }
measure() {
  local name=$1 c=$2
  shift 2
  for k in $(seq 1 "$REPEAT"); do
    echo "== $name, concurrency $c, $DURATION (run $k of $REPEAT)"
    curl -s "$url/api/optimized/stats" >"$tmp/cells/$name.$k.before"
    server_cpu >"$tmp/cells/$name.$k.cpu_before"
    "$@" >"$tmp/cells/$name.$k.json"
    server_cpu >"$tmp/cells/$name.$k.cpu_after"
    curl -s "$url/api/optimized/stats" >"$tmp/cells/$name.$k.after"
    # Raw ONNX Runtime right after the run, for the goals that compare the
    # two: this machine's speed drifts over minutes, so a ratio is taken
    # between runs a few seconds apart (the server idles meanwhile).
    local b
    for b in ${raw_beside:-}; do
      target/release/raw-onnx --model models/unet-seg/model.onnx --batch "$b" \
        --seconds "$BESIDE_SECONDS" >"$tmp/cells/$name.$k.raw.b$b"
    done
  done
}
cell() {
  local name=$1 c=$2
  shift 2
  measure "$name" "$c" "$OHA" -z "$DURATION" -c "$c" -w --no-tui --output-format json "$@"
}
grpc_cell() {
  local name=$1 c=$2
  shift 2
  measure "$name" "$c" target/release/grpc-load --addr "$grpc" --seconds "$RAW_SECONDS" --concurrency "$c" "$@"
}
# oha asks for gzip answers (`accept-encoding: gzip, compress, deflate, br`)
# unless told otherwise; Triton's clients ask for none unless set to, so the
# cells ask for identity, and one cell for a gzipped answer shows its cost.
json=(-m POST -H "content-type: application/json" -H "accept-encoding: identity")
gzipped=(-m POST -H "content-type: application/json" -H "accept-encoding: gzip")
binary=(-m POST -H "content-type: application/octet-stream" -H "accept-encoding: identity"
  -H "inference-header-content-length: $(cat "$tmp/unet-seg.len")")

mlp_binary=(-m POST -H "content-type: application/octet-stream" -H "accept-encoding: identity"
  -H "inference-header-content-length: $(cat "$tmp/tiny-classifier.v2len")")

grpc=127.0.0.1:$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
grpc_bind=$grpc start_gantry GANTRY__MODELS__DIR="$repo"
cell health-live 32 "$url/v2/health/live"
for c in 1 32; do
  cell "tiny-classifier.json.c$c" "$c" "${json[@]}" -D "$tmp/tiny-classifier.body" "$url/api/optimized/predict"
done
# The goals' cells take raw runs beside each run: batch 1 at concurrency 1,
# every batch (the best of them) at 32.
raw_beside_of() { if [[ $1 == 1 ]]; then echo 1; else echo 1 2 4 8; fi; }
for c in 1 32; do
  raw_beside=$(raw_beside_of "$c") cell "unet-seg.json.c$c" "$c" "${json[@]}" -D "$tmp/unet-seg.json" \
    "$url/v2/models/unet-seg/infer"
done
cell unet-seg.gzip.c1 1 "${gzipped[@]}" -D "$tmp/unet-seg.json" "$url/v2/models/unet-seg/infer"
cell unet-seg.binary.c1 1 "${binary[@]}" -D "$tmp/unet-seg.body" "$url/v2/models/unet-seg/infer"
raw_beside=$(raw_beside_of 32) cell unet-seg.binary.c32 32 "${binary[@]}" -D "$tmp/unet-seg.body" "$url/v2/models/unet-seg/infer"
for c in 1 32; do
  grpc_cell "unet-seg.grpc.c$c" "$c" --model unet-seg --input image:FP32:1x3x128x128
done
for c in 1 32; do
  cell "tiny-classifier.binary.c$c" "$c" "${mlp_binary[@]}" -D "$tmp/tiny-classifier.v2" \
    "$url/v2/models/tiny-classifier/infer"
  grpc_cell "tiny-classifier.grpc.c$c" "$c" --model tiny-classifier --input features:FP32:1x64
done
stop_gantry

# unet-seg with one thread per run (`runtime.intra_op_threads = 1`) and a
# replica per core: each replica computes on its own thread, side by side,
# instead of taking turns on a pool of every core. The throughput layout,
# beside the default.
one_thread=$tmp/one-thread
bench_repository "$one_thread"
sed -i "s/^replicas = .*/replicas = $(nproc)/" "$one_thread/unet-seg/model.toml"
start_gantry GANTRY__MODELS__DIR="$one_thread" GANTRY__RUNTIME__INTRA_OP_THREADS=1
for c in 1 32; do
  cell "unet-seg.binary.one-thread.c$c" "$c" "${binary[@]}" -D "$tmp/unet-seg.body" "$url/v2/models/unet-seg/infer"
done
stop_gantry

# The MLP with every request through the batcher and a replica's thread
# (runs on the receiving worker turned off), beside the cells above.
start_gantry GANTRY__MODELS__DIR="$repo" GANTRY__RUNTIME__INLINE_RUN_US=0
for c in 1 32; do
  cell "tiny-classifier.json.batcher.c$c" "$c" "${json[@]}" -D "$tmp/tiny-classifier.body" "$url/api/optimized/predict"
done
stop_gantry

start_gantry GANTRY__MODELS__DIR="$repo" GANTRY__CACHE__ENABLED=true
curl -s -o /dev/null -H "content-type: application/json" --data-binary "@$tmp/tiny-classifier.body" \
  "$url/api/optimized/predict"
cell tiny-classifier.hit.c1 1 "${json[@]}" -D "$tmp/tiny-classifier.body" "$url/api/optimized/predict"
stop_gantry

echo "== twenty copies of the MLP"
gantry_wait_s=120 start_gantry GANTRY__MODELS__DIR="$many"
answered=0
for i in $(seq -w 1 20); do
  body=$(python3 -c "import json,sys; b=json.load(open(sys.argv[1])); b['model']='mlp-$i'; print(json.dumps(b))" \
    "$tmp/tiny-classifier.body")
  code=$(curl -s -o /dev/null -w '%{http_code}' -H "content-type: application/json" -d "$body" \
    "$url/api/optimized/predict")
  [[ $code == 200 ]] && answered=$((answered + 1))
done
ready=$(curl -s "$url/api/optimized/stats" | python3 -c "
import json, sys
pools = json.load(sys.stdin)['model_pools']
print(sum(all(r['state'] == 'ready' for r in p['replicas']) for p in pools.values()))")
echo "$ready $answered" >"$tmp/many.result"
stop_gantry

for model_batches in "unet-seg 1 2 4 8" "tiny-classifier 1 32"; do
  read -r model batches <<<"$model_batches"
  for b in $batches; do
    for k in $(seq 1 "$REPEAT"); do
      echo "== $model: raw ONNX Runtime, batch $b, ${RAW_SECONDS}s (run $k of $REPEAT)"
      target/release/raw-onnx --model "models/$model/model.onnx" --batch "$b" \
        --seconds "$RAW_SECONDS" >"$tmp/cells/raw.$model.b$b.$k"
    done
  done
done

python3 load-tests/bench_report.py "$tmp" "$REPEAT" "$command" "$commit" \
  "$(readlink -f .onnxruntime/libonnxruntime.so 2>/dev/null || true)"
