#!/usr/bin/env bash
# `make bench-trace`: memory follows demand under a serverless-shaped trace.
# Serves a generated repository of twelve MLPs (7-39 MB files,
# load-tests/mlp_repository.py; about 280 MB once loaded) and replays one
# open-loop trace (load-tests/trace_replay.py: Gamma arrivals with CV 2, Zipf 1.1
# popularity, the popular set reshuffled every 20 s, fixed seed) against it
# under each configuration below, one server at a time. Latency counts from
# each request's scheduled arrival; requests carry a 2 s deadline. Writes
# load-tests/TRACE_RESULTS.md.
#
#   make bench-trace                       # release build
#   SECONDS_EACH=20 RATE=100 load-tests/trace.sh
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
python="${PYTHON:-$root/.venv/bin/python}"
gantry="${GANTRY:-target/release/gantry}"
[ -x "$gantry" ] || cargo build --release --bin gantry
export ORT_DYLIB_PATH="${ORT_DYLIB_PATH:-$root/.onnxruntime/libonnxruntime.so}"
seconds="${SECONDS_EACH:-40}"
rate="${RATE:-150}"
budget="${BUDGET_MB:-150}"
work=$(mktemp -d)
# The split copies on disk (a temporary folder may be a tmpfs, where
# weights are not mapped).
weights="$root/target/bench-weights.$$"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work" "$weights"; }
trap cleanup EXIT
mkdir -p "$work/base" "$work/negligible" "$work/mlps"
cp -r models/tiny-classifier "$work/base/"
"$python" load-tests/mlp_repository.py "$work/mlps" >/dev/null
"$python" load-tests/mlp_repository.py "$work/negligible" --negligible >/dev/null

# shellcheck source=load-tests/serve-lib.sh
source "$root/load-tests/serve-lib.sh"
# Starts a server and sets $pid to it (cleaned up on exit).
serve() {
  local dir=$1 port=$2 limit=$3 residency=$4 extra=${5:-}
  # shellcheck disable=SC2086
  env $extra GANTRY__SERVER__BIND=127.0.0.1:$port GANTRY__SERVER__GRPC_BIND= GANTRY__MODELS__DIR=$dir \
    GANTRY__CACHE__ENABLED=false GANTRY__LOG__LEVEL=warn \
    GANTRY__MEMORY__LIMIT_MB=$limit GANTRY__MEMORY__MIN_RESIDENCY_MS=$residency \
    GANTRY__MEMORY__WEIGHTS_DIR="$weights" \
    "$gantry" --config config/gantry.toml >"$work/$port.log" 2>&1 &
  pid=$!
  pids+=("$pid")
}

# Two bases for the RSS growth: the process idle with ONNX Runtime loaded
# (the same binary serving one model of 0.2 MB, tiny-classifier), and the
# process under the same trace with no model memory to speak of (the same
# binary serving the same twelve models with weights of negligible size, 8
# hidden units: its batchers, sessions, connections and request buffers).
port=$(free_port)
serve "$work/base" "$port" 1000 10000
ready "$port"
base=$(rss_mb "$pid")
kill "$pid"; wait "$pid" 2>/dev/null || true
port=$(free_port)
serve "$work/negligible" "$port" 4000 10000
ready "$port"
"$python" load-tests/trace_replay.py "$port" "$pid" --models 12 --seconds "$seconds" --rate "$rate" \
  --out "$work/base.json" >/dev/null
traffic_base=$("$python" -c 'import json,sys; print(json.load(open(sys.argv[1]))["peak_rss_mb"])' "$work/base.json")
kill "$pid"; wait "$pid" 2>/dev/null || true

# name | memory.limit_mb | memory.min_residency_ms | other settings | what it shows
configs=(
  "everything resident|4000|10000||no budget pressure: the ceiling"
  "static placement|$budget|3600000|GANTRY__MEMORY__MIN_RESIDENCY_LOADS=0|loads what fits at startup, evicts nothing (what a fixed placement does)"
  "memory follows demand|$budget|1000||cold models load on request (weights mapped), idle ones evicted by GDSF, the room earmarked for the model it was made for, the residency floor 3 load times (at most 1 s), a mapped replica replaced by a packed one once its model runs batches of 2 or more on average for 10 s"
  "without mapped weights|$budget|1000|GANTRY__MEMORY__MAP_WEIGHTS=false|the same, every load parsing and packing the weights"
  "floor not scaled to load time|$budget|1000|GANTRY__MEMORY__MIN_RESIDENCY_LOADS=0|the same with the floor at 1 s for every replica"
  "no residency floor|$budget|0||the same without the floor against thrash"
  "without repacking|$budget|1000|GANTRY__MEMORY__REPACK_AFTER_S=0|the same, mapped replicas kept mapped while resident"
)
: >"$work/rows"
for config in "${configs[@]}"; do
  IFS='|' read -r name limit residency extra what <<<"$config"
  port=$(free_port)
  serve "$work/mlps" "$port" "$limit" "$residency" "$extra"
  ready "$port"
  "$python" load-tests/trace_replay.py "$port" "$pid" --models 12 --seconds "$seconds" --rate "$rate" \
    --out "$work/run.json" >/dev/null
  curl -s "127.0.0.1:$port/metrics" >"$work/metrics.txt"
  curl -s "127.0.0.1:$port/api/optimized/stats" >"$work/stats.json"
  if [ "$limit" = 4000 ]; then cp "$work/stats.json" "$work/resident.json"; fi
  # The third base: this process once the trace is over and every model is
  # unloaded (what it kept of its own: kernels' code pages, buffers).
  for i in $(seq 0 11); do
    curl -sf -X POST "127.0.0.1:$port/v2/repository/models/mlp-$(printf %02d "$i")/unload" >/dev/null ||
      echo "$name: unloading mlp-$i failed" >&2
  done
  for k in $(seq 100); do
    [ "$(curl -s "127.0.0.1:$port/api/optimized/stats" | "$python" -c 'import json,sys; print(json.load(sys.stdin)["memory"]["reserved_mb"])')" = 0 ] && break
    [ "$k" = 100 ] && echo "$name: replicas still held 10 s after the unloads" >&2
    sleep 0.1
  done
  sleep 1
  after_base=$(rss_mb "$pid")
  "$python" - "$work/run.json" "$work/metrics.txt" "$name" "$limit" "$residency" "$base" "$what" "$work/stats.json" "$traffic_base" "$after_base" \
    >>"$work/rows" <<'PY'
import json, statistics, sys
run, metrics, name, limit, residency, base, what, stats, traffic_base, after_base = sys.argv[1:]
pools = json.load(open(stats))["model_pools"].values()
loads = [p["usage"]["load_ms"] for p in pools if p["usage"].get("load_ms")]
load_ms = f"{statistics.median(loads):.0f}" if loads else "-"
r = json.load(open(run))
counts = {"load": 0, "evict": 0, "repack": 0}
for line in open(metrics):
    if line.startswith("gantry_residency_decisions_total{"):
        action = line.split('action="')[1].split('"')[0]
        counts[action] = counts.get(action, 0) + int(float(line.split()[-1]))
statuses = ", ".join(f"{k}: {v}" for k, v in sorted(r["statuses"].items()))
growth = r["peak_rss_mb"] - int(base)
traffic_growth = r["peak_rss_mb"] - int(traffic_base)
after_growth = r["peak_rss_mb"] - int(after_base)
print(f"| {name} | {limit} | {residency} | {r['requests']} | {100 * r['share_within_target']:.1f}% "
      f"| {r['goodput_per_s']:.1f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {statuses} "
      f"| {counts['load']} | {counts['evict']} | {counts['repack']} | {load_ms} | {growth} | {traffic_growth} | {after_growth} ({after_base}) |")
PY
  kill "$pid"; wait "$pid" 2>/dev/null || true
done

# The bound: an oracle that knows each 20 s epoch's requests in advance and
# keeps resident, for the whole epoch, the set of models that fits the
# budget (at their measured footprints) and takes the most of them.
bound=$(cd load-tests && "$python" - "$work/resident.json" "$budget" "$seconds" "$rate" <<'PY'
import argparse, collections, itertools, json, sys
import trace_replay as trace
stats, budget, seconds, rate = json.load(open(sys.argv[1])), int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
sizes = [stats["model_pools"][f"mlp-{i:02d}"]["memory_mb_per_replica"] for i in range(12)]
plan = trace.schedule(argparse.Namespace(seed=7, cv=2.0, rate=rate, seconds=seconds, models=12, zipf=1.1, rotate_s=20))
hits = 0
for epoch in {int(t // 20) for t, _ in plan}:
    asked = collections.Counter(m for t, m in plan if int(t // 20) == epoch)
    hits += max(sum(asked[i] for i in combo) for r in range(13) for combo in itertools.combinations(range(12), r)
                if sum(sizes[i] for i in combo) <= budget)
print(f"{100 * hits / len(plan):.1f}")
PY
)
commit=$(git rev-parse --short HEAD)
cpu=$(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)
{
  echo "# Memory follows demand: a serverless-shaped trace"
  echo
  echo "\`load-tests/trace.sh\` ($gantry), commit $commit, $(nproc) cores ($cpu)."
  echo
  echo "Twelve MLPs (load-tests/mlp_repository.py: 7-39 MB files, about 280 MB loaded), one replica"
  echo "each. One open-loop trace for every row: ${seconds} s at ${rate} requests/s on average, Gamma"
  echo "arrivals with CV 2 (bursts), Zipf 1.1 popularity over the twelve, the popular set reshuffled"
  echo "every 20 s, seed 7. Latency counts from each request's scheduled arrival; each request"
  echo "carries a 2 s deadline. In time = answered 200 within 100 ms. RSS growth = the server's peak"
  echo "resident memory during the trace minus a base: idle, that of the same binary serving one"
  echo "0.2 MB model ($base MB: the process with ONNX Runtime loaded); under the trace, the peak of the"
  echo "same binary serving the same twelve models with weights of negligible size (8 hidden units)"
  echo "under the same trace ($traffic_base MB: its batchers, sessions, connections and buffers); after the"
  echo "trace, the same server once every model is unloaded (what the process kept of its own: code"
  echo "pages of the kernels its models ran, buffers; a leak would show here as a base far above the"
  echo "idle one)."
  echo
  echo "| Configuration | memory.limit_mb | min_residency_ms | Requests | In time | Goodput (/s) | p50 ms | p99 ms | Statuses | Loads | Evictions | Repacks | Last load ms (median of models) | RSS growth MB, idle base | RSS growth MB, base under trace | RSS growth MB, base after trace (base MB) |"
  echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
  cat "$work/rows"
  echo
  for config in "${configs[@]}"; do
    IFS='|' read -r name _ _ _ what <<<"$config"
    echo "- **$name**: $what."
  done
  echo
  echo "Bound: an oracle that knew each 20 s epoch's requests in advance and kept resident, for the"
  echo "whole epoch, the models that fit $budget MB (at their measured footprints) and take the most of"
  echo "them would find the model in memory for **$bound%** of requests; every other request waits"
  echo "for a load."
} | tee load-tests/TRACE_RESULTS.md
