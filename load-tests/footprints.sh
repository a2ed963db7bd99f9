#!/usr/bin/env bash
# `make bench-footprints`: do the memory budget's reservations match what
# replicas really take? Serves a generated repository of twelve MLPs (7-39
# MB files, load-tests/mlp_repository.py) and an empty one side by side,
# and compares the process's resident growth (RSS with the models, every
# replica loaded and warmed, minus RSS with none) with the budget's
# reserved MB (each replica's measured footprint) and with what the file
# estimates would have reserved (2 x file MB + 64 a replica). Writes
# load-tests/FOOTPRINTS.md.
#
#   make bench-footprints              # release build
#   GANTRY=target/debug/gantry load-tests/footprints.sh
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
python="${PYTHON:-$root/.venv/bin/python}"
gantry="${GANTRY:-target/release/gantry}"
[ -x "$gantry" ] || cargo build --release --bin gantry
export ORT_DYLIB_PATH="${ORT_DYLIB_PATH:-$root/.onnxruntime/libonnxruntime.so}"
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
mkdir -p "$work/empty" "$work/mlps"
"$python" load-tests/mlp_repository.py "$work/mlps" >/dev/null

# shellcheck source=load-tests/serve-lib.sh
source "$root/load-tests/serve-lib.sh"
# Starts a server and sets $pid to it (cleaned up on exit).
serve() {
  local dir=$1 port=$2
  GANTRY__SERVER__BIND=127.0.0.1:$port GANTRY__SERVER__GRPC_BIND= GANTRY__MODELS__DIR=$dir \
    GANTRY__CACHE__ENABLED=false "$gantry" --config config/gantry.toml >"$work/$port.log" 2>&1 &
  pid=$!
  pids+=("$pid")
}

empty_port=$(free_port); full_port=$(free_port)
serve "$work/empty" "$empty_port"
empty_pid=$pid
serve "$work/mlps" "$full_port"
full_pid=$pid
ready "$empty_port"; ready "$full_port"
# Every replica answers once (its session has run at batch 1 and at its cap
# in warmup already).
"$python" - "$full_port" <<'PY'
import json, sys, urllib.request
port = sys.argv[1]
for i in range(12):
    body = json.dumps({"model": f"mlp-{i:02d}", "inputs": {"features": {"shape": [1, 64], "datatype": "FP32", "data": [0.5] * 64}}}).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/api/optimized/predict", body, {"content-type": "application/json"})
    assert urllib.request.urlopen(req).status == 200
PY
sleep 1
base=$(rss_mb "$empty_pid"); full=$(rss_mb "$full_pid")
curl -s "127.0.0.1:$full_port/api/optimized/stats" >"$work/stats.json"
"$python" - "$work/stats.json" "$work/mlps" "$base" "$full" "$gantry" <<'PY' | tee load-tests/FOOTPRINTS.md
import json, os, platform, subprocess, sys
stats, repo, base, full, binary = json.load(open(sys.argv[1])), sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
growth = full - base
rows, estimate_total = [], 0
for name, pool in sorted(stats["model_pools"].items()):
    size = os.path.getsize(os.path.join(repo, name, "model.onnx")) / 2**20
    estimate = 2 * -(-int(os.path.getsize(os.path.join(repo, name, "model.onnx"))) // 2**20) + 64
    estimate_total += estimate
    r = pool["replicas"][0]
    rows.append(f"| {name} | {size:.1f} | {estimate} | {r['measured_mb']} | {r['reserved_mb']} |")
reserved = stats["memory"]["reserved_mb"]
commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.machine())
print("# Reservations against real memory\n")
print(f"`load-tests/footprints.sh` ({binary}), commit {commit}, {os.cpu_count()} cores ({cpu}).\n")
print("Twelve MLPs (load-tests/mlp_repository.py), one replica each, every replica loaded, warmed and")
print("answered once; RSS of that server minus RSS of the same binary serving an empty repository.\n")
print("| model | file MB | estimate MB | measured MB | reserved MB |")
print("|---|---:|---:|---:|---:|")
print("\n".join(rows))
print(f"\n- process growth: {full} - {base} = **{growth} MB**")
print(f"- budget reserved (measured footprints): **{reserved} MB**, {reserved / growth:.2f}x the growth (goal: 0.75-1.25x)")
print(f"- file estimates would have reserved {estimate_total} MB, {estimate_total / growth:.2f}x the growth")
PY
