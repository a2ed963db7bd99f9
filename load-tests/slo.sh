#!/usr/bin/env bash
# `make bench-slo`: latency targets under open-loop load. For each model of
# load-tests/slo_repository.py (`mlp`: 64 -> 2048 x 3 -> 10 with small JSON
# bodies; `unet-seg` through the v2 binary extension):
#   1. capacity: closed loop at concurrency 32 for SECONDS_EACH on a server
#      without a target (200s a second);
#   2. open loop (`slo-load`: Poisson arrivals, latency counted from each
#      arrival's scheduled time) at 0.5, 1, 2 and 4 x that capacity (the
#      reading right before the server's cells), on a server without a
#      target and on one with `latency_target_ms = TARGET_MS`;
#      capacity is read again after each server's cells, and a cell is
#      judged against the mean of the readings right before and after its
#      server's cells (this machine's speed drifts by 10-20% within a
#      minute: a ratio against a reading a minute old measures the drift).
# Every cell judges answers against TARGET_MS; writes load-tests/SLO_RESULTS.md.
# On a machine of two cores or more the generator runs on core 0 and the
# server on the others (taskset), so that a cell measures the server and not
# the cores the generator left it (SPLIT=no shares them all).
#
#   make bench-slo                        # SECONDS_EACH=10 TARGET_MS=50
#   SECONDS_EACH=5 FACTORS="0.5 2" MODELS=unet-seg WITH=target load-tests/slo.sh
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
python="${PYTHON:-$root/.venv/bin/python}"
seconds="${SECONDS_EACH:-10}"
target_ms="${TARGET_MS:-50}"
factors="${FACTORS:-0.5 1 2 4}"
models="${MODELS:-mlp unet-seg}"
withs="${WITH:-none target}"
cores=$(nproc)
server_cpus="" load_cpus=""
if [ "${SPLIT:-yes}" != no ] && [ "$cores" -ge 2 ] && command -v taskset >/dev/null; then
  server_cpus="1-$((cores - 1))" load_cpus=0
fi
# Runs "$@" on the given cores (all of them when none are given).
on_cpus() {
  local cpus=$1
  shift
  if [ -n "$cpus" ]; then taskset -c "$cpus" "$@"; else "$@"; fi
}
cargo build --release --bin gantry -p gantry -p gantry-load-tests --bin slo-load 2>&1 | tail -1
gantry="${GANTRY:-target/release/gantry}"
load=target/release/slo-load
export ORT_DYLIB_PATH="${ORT_DYLIB_PATH:-$root/.onnxruntime/libonnxruntime.so}"
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
"$python" load-tests/slo_repository.py "$work/none"
"$python" load-tests/slo_repository.py "$work/target" "$target_ms"
"$python" load-tests/bodies.py "$work"

# shellcheck source=load-tests/serve-lib.sh
source "$root/load-tests/serve-lib.sh"
# Starts a server on $server_cpus and sets $pid to it (the server's own
# process: taskset execs it, so killing $pid stops the server, where a
# shell function run in the background would leave it running).
serve() {
  local dir=$1 port=$2 pin=()
  [ -n "$server_cpus" ] && pin=(taskset -c "$server_cpus")
  GANTRY__SERVER__BIND=127.0.0.1:$port GANTRY__SERVER__GRPC_BIND= GANTRY__MODELS__DIR=$dir \
    GANTRY__CACHE__ENABLED=false GANTRY__LOG__LEVEL=warn \
    ${pin[@]+"${pin[@]}"} "$gantry" --config config/gantry.toml >"$work/$port.log" 2>&1 &
  pid=$!
  pids+=("$pid")
  server_pid[$port]=$pid
}
declare -A server_pid

# CPU time the server on $port has used so far, in clock ticks, as "HTTP
# REST": its HTTP workers' threads (actix-rt) and the rest (batchers,
# replicas, ONNX Runtime's threads). A cell's difference says what one
# answer cost the server, and where: under overload most answers are
# refusals, and what they cost the HTTP workers is what the model's runs
# do not get.
server_cpu() {
  cat /proc/"${server_pid[$port]}"/task/*/stat 2>/dev/null | awk -F') ' '
    { split($2, f, " "); t = f[12] + f[13]; if (index($1, "(actix-rt")) h += t; else r += t }
    END { printf "%d %d\n", h, r }'
}

# The server's own count of successes within and past the target (its
# Prometheus counters for $model), as "WITHIN PAST".
server_counts() {
  curl -s "127.0.0.1:$port/metrics" | awk -v m="model=\"$1\"" '
    index($0, "gantry_requests_within_target_total{") == 1 && index($0, m) { w = $NF }
    index($0, "gantry_requests_past_target_total{") == 1 && index($0, m) { p = $NF }
    END { printf "%d %d\n", w, p }'
}

# One cell: slo-load's JSON with this cell's labels (and the server's own
# within/past counts over the cell), a line of $work/cells.
cell() {
  local model=$1 with=$2 factor=$3 capacity=$4
  shift 4
  local args=(--url "http://127.0.0.1:$port/v2/models/$model/infer" --seconds "$seconds"
    --target-ms "$target_ms")
  case $model in
    mlp) args+=(--body "$work/mlp.v2json") ;;
    unet-seg) args+=(--body "$work/unet-seg.body" --content-type application/octet-stream
      --header "Inference-Header-Content-Length:$(cat "$work/unet-seg.len")") ;;
  esac
  local before cpu_before
  before=$(server_counts "$model")
  cpu_before=$(server_cpu)
  on_cpus "$load_cpus" "$load" "${args[@]}" "$@" >"$work/cell.json"
  "$python" -c '
import json, sys
row = json.load(open(sys.argv[1]))
row.update(model=sys.argv[2], target=sys.argv[3], factor=float(sys.argv[4]), capacity=float(sys.argv[5]))
(w0, p0), (w1, p1) = (map(int, sys.argv[i].split()) for i in (6, 7))
row["server"] = {"within_target": w1 - w0, "past_target": p1 - p0}
(h0, r0), (h1, r1) = (map(int, sys.argv[i].split()) for i in (8, 9))
tick = float(sys.argv[10])
row["server_cpu_s"] = {"http": (h1 - h0) / tick, "rest": (r1 - r0) / tick}
print(json.dumps(row))' "$work/cell.json" "$model" "$with" "$factor" "$capacity" "$before" \
    "$(server_counts "$model")" "$cpu_before" "$(server_cpu)" "$(getconf CLK_TCK)" >>"$work/cells"
  sleep 1 # what the cell left queued drains
}

: >"$work/cells"
# The capacity reading between cells: closed loop on the server without a
# target; prints it and sets $reading.
read_capacity() {
  port=${ports[none]}
  cell "$1" closed 0 0 --concurrency 32
  reading=$(tail -1 "$work/cells" | "$python" -c 'import json,sys; print(json.load(sys.stdin)["ok_per_s"])')
  echo "$1: capacity $reading/s (closed loop, concurrency 32, server without a target)"
}
declare -A ports
for model in $models; do
  # Both servers run at once (an idle one costs no CPU), so that capacity
  # is read on the server without a target right before and after each
  # server's cells.
  servers=()
  for with in none $withs; do
    [ -n "${ports[$with]:-}" ] && continue
    ports[$with]=$(free_port)
    serve "$work/$with" "${ports[$with]}"
    servers+=("$with:$pid")
  done
  for with in none $withs; do ready "${ports[$with]}"; done
  read_capacity "$model"
  for with in $withs; do
    # A server's cells are offered multiples of the reading right before
    # them (a reading a server earlier may be 10-20% off by now).
    capacity=$reading
    port=${ports[$with]}
    for factor in $factors; do
      rate=$("$python" -c "print(round($factor * $capacity, 1))")
      cell "$model" "$with" "$factor" "$capacity" --rate "$rate"
      echo "$model, target $with, ${factor}x ($rate/s): $(tail -1 "$work/cells" | cut -c1-160)"
    done
    read_capacity "$model"
  done
  for server in "${servers[@]}"; do
    kill "${server#*:}"
    wait "${server#*:}" 2>/dev/null || true
  done
  ports=()
done
# The cells stay in target/slo/ (slo_report.py rewrites the report from them).
mkdir -p target/slo && cp "$work/cells" target/slo/cells.jsonl
"$python" load-tests/slo_report.py target/slo/cells.jsonl "$target_ms" "$seconds" "$(git rev-parse --short HEAD)" \
  "${server_cpus:-all}" "${load_cpus:-all}" |
  tee load-tests/SLO_RESULTS.md
