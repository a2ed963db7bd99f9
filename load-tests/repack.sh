#!/usr/bin/env bash
# `make bench-repack`: a model loaded on demand (its weights mapped) that
# then turns busy, with and without the packed replica that replaces the
# mapped one (memory.repack_after_s). One MLP of 39 MB
# (load-tests/mlp_repository.py's largest, max_batch_size 16) with
# min_replicas = 0: idle at startup, it leaves memory; then 32 callers ask
# for it back to back (closed loop, slo-load) in WINDOWS windows of
# WINDOW_S seconds each, and each window's answers per second are written
# down. The server runs on core 1 and the load generator on core 0 (both
# when the machine has one core). Rows:
#   - packed from startup: the same model kept in memory from the start,
#     never mapped (the ceiling);
#   - repacked: the default (a packed replica replaces the mapped one once
#     the model's batches held 2 items or more on average for 10 s);
#   - never repacked: memory.repack_after_s = 0.
# Writes load-tests/REPACK_RESULTS.md.
#
#   make bench-repack
#   WINDOWS=4 WINDOW_S=5 load-tests/repack.sh
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
python="${PYTHON:-$root/.venv/bin/python}"
windows="${WINDOWS:-8}"
window_s="${WINDOW_S:-5}"
if [ "$(nproc)" -ge 2 ]; then server_cpus=1 load_cpus=0; else server_cpus="" load_cpus=""; fi
cargo build --release --bin gantry -p gantry -p gantry-load-tests --bin slo-load 2>&1 | tail -1
gantry="${GANTRY:-target/release/gantry}"
load=target/release/slo-load
export ORT_DYLIB_PATH="${ORT_DYLIB_PATH:-$root/.onnxruntime/libonnxruntime.so}"
work=$(mktemp -d)
# The split copies on disk (a temporary folder may be a tmpfs, where
# weights are not mapped).
weights="$root/target/bench-weights.$$"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work" "$weights"; }
trap cleanup EXIT
"$python" load-tests/mlp_repository.py "$work/all" >/dev/null
for repo in cold warm; do
  mkdir -p "$work/$repo"
  cp -r "$work/all/mlp-11" "$work/$repo/mlp"
done
printf 'replicas = 1\nmin_replicas = 0\nmax_batch_size = 16\ndownscale_delay_s = 2\n' >"$work/cold/mlp/model.toml"
printf 'replicas = 1\nmax_batch_size = 16\n' >"$work/warm/mlp/model.toml"
"$python" -c '
import json, sys
data = [round(0.01 * i, 2) for i in range(64)]
json.dump({"inputs": [{"name": "features", "shape": [1, 64], "datatype": "FP32", "data": data}]},
          open(sys.argv[1], "w"))' "$work/body.json"

# shellcheck source=load-tests/serve-lib.sh
source "$root/load-tests/serve-lib.sh"
# Starts a server of repository $1 on port $2 (on $server_cpus) with the
# extra settings in $3 and sets $pid to it.
serve() {
  local dir=$1 port=$2 extra=${3:-} pin=()
  [ -n "$server_cpus" ] && pin=(taskset -c "$server_cpus")
  # shellcheck disable=SC2086
  env $extra GANTRY__SERVER__BIND=127.0.0.1:$port GANTRY__SERVER__GRPC_BIND= GANTRY__MODELS__DIR=$dir \
    GANTRY__CACHE__ENABLED=false GANTRY__LOG__LEVEL=warn GANTRY__MEMORY__WEIGHTS_DIR="$weights" \
    ${pin[@]+"${pin[@]}"} "$gantry" --config config/gantry.toml >"$work/$port.log" 2>&1 &
  pid=$!
  pids+=("$pid")
}
stats() { curl -sf "127.0.0.1:$1/api/optimized/stats"; }

# name | repository | extra settings | what it shows
configs=(
  "packed from startup|warm||the model in memory from the start, its weights packed: the ceiling"
  "repacked|cold||loaded on demand (mapped); a packed replica replaces it once its batches hold 2 items or more on average for 10 s (the default)"
  "never repacked|cold|GANTRY__MEMORY__REPACK_AFTER_S=0|loaded on demand (mapped) and kept so"
)
: >"$work/rows"
for config in "${configs[@]}"; do
  IFS='|' read -r name repo extra what <<<"$config"
  port=$(free_port)
  serve "$work/$repo" "$port" "$extra"
  ready "$port"
  if [ "$repo" = cold ]; then
    # Idle, the model leaves memory: the first request loads it on demand.
    cold=""
    for _ in $(seq 300); do
      if [ "$(stats "$port" | "$python" -c 'import json,sys; print(json.load(sys.stdin)["model_pools"]["mlp"]["residency"])')" = cold ]; then
        cold=yes
        break
      fi
      sleep 0.1
    done
    [ -n "$cold" ] || { echo "$name: the model never left memory" >&2; exit 1; }
  fi
  : >"$work/windows"
  for _ in $(seq "$windows"); do
    ${load_cpus:+taskset -c "$load_cpus"} "$load" --url "http://127.0.0.1:$port/v2/models/mlp/infer" \
      --body "$work/body.json" --concurrency 32 --seconds "$window_s" >>"$work/windows"
  done
  stats "$port" >"$work/stats.json"
  "$python" - "$work/windows" "$work/stats.json" "$name" "$what" >>"$work/rows" <<'EOF'
import json, sys
windows = [json.loads(line) for line in open(sys.argv[1])]
stats = json.load(open(sys.argv[2]))
pool = stats["model_pools"]["mlp"]
decisions = [d for d in stats["residency"]["decisions"] if d["model"] == "mlp"]
batcher = pool["batcher"]
print(json.dumps({
    "name": sys.argv[3], "what": sys.argv[4],
    "per_s": [w["ok_per_s"] for w in windows],
    "p50_ms": [w["ok_ms"]["p50"] for w in windows],
    "statuses": [w["statuses"] for w in windows],
    "mapped_at_end": [r["weights_mapped"] for r in pool["replicas"]],
    "actions": [d["action"] for d in decisions],
    "mean_batch": round(batcher["items"] / max(batcher["batches"], 1), 1),
}))
EOF
  kill "$pid"; wait "$pid" 2>/dev/null || true
done

commit=$(git rev-parse --short HEAD)
cpu=$(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)
placement="server on core $server_cpus, load generator on core $load_cpus"
[ -n "$server_cpus" ] || placement="server and load generator on the one core"
"$python" - "$work/rows" "$commit" "$cpu" "$windows" "$window_s" "$placement" >"$work/results.md" <<'EOF'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
commit, cpu, windows, window_s, placement = sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
if rows[2]["mapped_at_end"] != [True]:
    sys.exit("never repacked: the replica loaded on demand did not map its weights (is the weights folder on a tmpfs?)")
print("# A model loaded on demand that turns busy: mapped weights, then packed\n")
print(f"`load-tests/repack.sh` (target/release/gantry), commit {commit}, {cpu}; {placement}")
print("(load generator `slo-load`, closed loop, 32 callers, v2 JSON, one item a request).\n")
print("One MLP of 39 MB (64 -> 3,100 -> 3,100 -> 10, max_batch_size 16). Answers per second in")
print(f"each {window_s} s window, from the first request on (the first window includes the load):\n")
heads = [f"{i * window_s}-{(i + 1) * window_s} s" for i in range(windows)]
print("| Configuration | " + " | ".join(heads) + " | Mean batch | Weights mapped at the end | Decisions |")
print("| --- |" + " ---: |" * windows + " ---: | --- | --- |")
for r in rows:
    cells = " | ".join(f"{v:,.0f}" for v in r["per_s"])
    mapped = ", ".join("yes" if m else "no" for m in r["mapped_at_end"]) or "-"
    actions = ", ".join(r["actions"]) or "-"
    print(f"| {r['name']} | {cells} | {r['mean_batch']} | {mapped} | {actions} |")
print()
for r in rows:
    print(f"- **{r['name']}**: {r['what']}.")
bad = [(r["name"], s) for r in rows for s in r["statuses"] if set(s) - {"200"}]
print()
print("Every answer a 200." if not bad else f"Answers other than 200: {bad}")
ceiling, repacked, never = (rows[i]["per_s"] for i in range(3))
tail = max(1, windows // 2)
med = lambda xs: sorted(xs)[len(xs) // 2]
print(f"\nOver the last {tail} windows (medians): repacked {med(repacked[-tail:]):,.0f}/s, "
      f"never repacked {med(never[-tail:]):,.0f}/s, packed from startup {med(ceiling[-tail:]):,.0f}/s: "
      f"repacked / never repacked = {med(repacked[-tail:]) / med(never[-tail:]):.2f}.")
EOF
cp "$work/results.md" load-tests/REPACK_RESULTS.md
cat load-tests/REPACK_RESULTS.md
