#!/usr/bin/env bash
# `make cpu-split`: where the CPU goes under load, for the cells whose goals
# are bounded by the machine (load-tests/README.md, "What bounds the goals").
#
#   make cpu-split      # DURATION=6s measured a cell; OHA=/path/to/oha skips the install
#
# Serves the `make bench` repository (unet-seg 2 replicas, max batch 8;
# tiny-classifier 2 and 32; cache off) and loads it at concurrency 32 with
# oha on the same cores: GET /v2/health/live, the MLP as REST JSON, unet-seg
# as v2 JSON and v2 binary (answers uncompressed); then the MLP at
# concurrency 1 through the v2 binary extension (oha) and over gRPC's
# ModelInfer (`grpc-load`), the pair `make bench` compares. For each cell:
# the server's and the load generator's CPU (utime + stime from /proc over
# the middle of the cell), the server's CPU time per request and, where
# `perf` (Debian's linux-perf) can sample the server, its samples split
# between the kernel and user space, between its threads (the receiving
# workers, `actix-rt|...` for HTTP and `grpc-N` for gRPC; `gantry`: the
# batchers on the main thread, the replicas and ONNX Runtime's pool) and to
# the protocol crates (actix-web and actix-http; h2, hyper, tonic, tower,
# axum; http), and the kernel functions that take most. Writes
# load-tests/CPU_SPLIT.md.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
DURATION=${DURATION:-6s}
CARGO=${CARGO:-cargo}
seconds=${DURATION%s}

source "$root/load-tests/bench-lib.sh"
run_labels "make cpu-split" load-tests/cpu-split.sh DURATION OHA

echo "== building (release)"
"$CARGO" build --release --quiet -p gantry --bin gantry -p gantry-load-tests --bin grpc-load

source "$root/load-tests/start-gantry.sh"
find_oha
python3 load-tests/bodies.py "$tmp"
repo=$tmp/models
bench_repository "$repo"

perf_ok=false
if command -v perf >/dev/null && perf record -q -e cpu-clock -o "$tmp/probe.data" -- true >/dev/null 2>&1; then
  perf_ok=true
else
  echo "== perf cannot sample here (apt-get install linux-perf); CPU time only"
fi

ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
mkdir -p "$tmp/cells"
# measure NAME CONCURRENCY LOAD-COMMAND...: the load command runs for
# DURATION and 5 s more; CPU ticks of both processes and perf samples of the
# server over its middle.
measure() {
  local name=$1 c=$2 window
  shift 2
  # The load runs past the measured window on both sides: 1 s before it,
  # and long enough after it for perf to stop and write its samples.
  window=$seconds
  echo "== $name, concurrency $c, $DURATION measured"
  "$@" >"$tmp/cells/$name.json" &
  local load=$! g0 g1 o0 o1 t0 t1
  sleep 1
  g0=$(ticks "$server") o0=$(ticks "$load") t0=$(date +%s.%N)
  if $perf_ok; then
    perf record -q -F 999 -e cpu-clock -p "$server" -o "$tmp/cells/$name.perf" -- sleep "$window" >/dev/null 2>&1 || true
  else
    sleep "$window"
  fi
  g1=$(ticks "$server") o1=$(ticks "$load") t1=$(date +%s.%N)
  wait "$load"
  echo "$g0 $g1 $o0 $o1 $t0 $t1 $(getconf CLK_TCK)" >"$tmp/cells/$name.ticks"
  if $perf_ok; then
    perf report -i "$tmp/cells/$name.perf" --stdio -g none --sort comm,dso 2>/dev/null >"$tmp/cells/$name.threads" || true
    perf report -i "$tmp/cells/$name.perf" --stdio -g none --sort dso,sym 2>/dev/null >"$tmp/cells/$name.symbols" || true
  fi
}
# cell NAME CONCURRENCY oha-arguments...; grpc_cell NAME CONCURRENCY grpc-load-arguments...
cell() {
  local name=$1 c=$2
  shift 2
  measure "$name" "$c" "$OHA" -z "$(python3 -c "print($seconds + 5)")s" -c "$c" -w --no-tui --output-format json "$@"
}
grpc_cell() {
  local name=$1 c=$2
  shift 2
  measure "$name" "$c" target/release/grpc-load --addr "$grpc" --seconds "$(python3 -c "print($seconds + 5)")" --concurrency "$c" "$@"
}

json=(-m POST -H "content-type: application/json" -H "accept-encoding: identity")
binary=(-m POST -H "content-type: application/octet-stream" -H "accept-encoding: identity"
  -H "inference-header-content-length: $(cat "$tmp/unet-seg.len")")
mlp_binary=(-m POST -H "content-type: application/octet-stream" -H "accept-encoding: identity"
  -H "inference-header-content-length: $(cat "$tmp/tiny-classifier.v2len")")
grpc=127.0.0.1:$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
grpc_bind=$grpc start_gantry GANTRY__MODELS__DIR="$repo"
cell health-live 32 "$url/v2/health/live"
cell mlp-json 32 "${json[@]}" -D "$tmp/tiny-classifier.body" "$url/api/optimized/predict"
cell unet-json 32 "${json[@]}" -D "$tmp/unet-seg.json" "$url/v2/models/unet-seg/infer"
cell unet-binary 32 "${binary[@]}" -D "$tmp/unet-seg.body" "$url/v2/models/unet-seg/infer"
cell mlp-binary-c1 1 "${mlp_binary[@]}" -D "$tmp/tiny-classifier.v2" "$url/v2/models/tiny-classifier/infer"
grpc_cell mlp-grpc-c1 1 --model tiny-classifier --input features:FP32:1x64
stop_gantry

python3 - "$tmp/cells" "$command" "$commit" "$perf_ok" <<'PY'
import datetime, json, os, re, sys

cells, command, commit, perf_ok = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "true"
names = [("health-live", "GET /v2/health/live", 32), ("mlp-json", "tiny-classifier (MLP), REST JSON", 32),
         ("unet-json", "unet-seg, v2 JSON", 32), ("unet-binary", "unet-seg, v2 binary", 32),
         ("mlp-binary-c1", "tiny-classifier (MLP), v2 binary (oha)", 1),
         ("mlp-grpc-c1", "tiny-classifier (MLP), gRPC ModelInfer (grpc-load)", 1)]
# The protocol crates: actix-web and actix-http for HTTP/1; h2, hyper,
# tonic, tower and axum (tonic's router) for gRPC; the http crate for both.
stack = re.compile(r"\b(actix_\w+|h2|hyper|hyper_util|tonic|tower|tower_\w+|axum|http)::")
workers_comm = ("actix-rt", "grpc-")
line = re.compile(r"^\s*([\d.]+)%\s+(\S+)\s+(\S.*?)\s*$")


def shares(path):
    """perf report rows: (percent, first key, second key)."""
    if not os.path.exists(path):
        return []
    return [(float(m[1]), m[2], m[3]) for m in map(line.match, open(path, errors="replace")) if m]


cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "unknown")
out = ["# `make cpu-split` results\n",
       "Written by `load-tests/cpu-split.sh`; every run rewrites this file. Where the CPU goes with the load "
       "generator (oha; `grpc-load` for gRPC) on the same cores; see load-tests/README.md.\n",
       f"- Date: {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
       f"- Machine: {os.cpu_count()} cores, {cpu}",
       f"- Command: `{command}`",
       f"- Code: commit {commit}",
       "- Server: the `make bench` repository (unet-seg 2 replicas, max batch 8; tiny-classifier 2 and 32), "
       "cache off, answers uncompressed\n",
       "| Cell | Concurrency | req/s | Server cores | Load generator cores | Server CPU us/request | "
       "Kernel share of server | Receiving workers (actix-rt, grpc-N) | Replicas, ONNX Runtime, rest (gantry) | "
       "Protocol crates |",
       "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
kernel_top = {}
for key, label, concurrency in names:
    o = json.load(open(f"{cells}/{key}.json"))
    rps = o["summary"]["requestsPerSec"]
    g0, g1, o0, o1, t0, t1, hz = map(float, open(f"{cells}/{key}.ticks").read().split())
    span = t1 - t0
    server_cores, load_cores = (g1 - g0) / hz / span, (o1 - o0) / hz / span
    per_request = server_cores * 1e6 / rps if rps else 0.0
    kernel = workers = rest = protocol = ""
    rows = shares(f"{cells}/{key}.threads")
    if rows:
        kernel = f"{sum(p for p, _, dso in rows if dso == '[kernel.kallsyms]'):.1f}%"
        workers = f"{sum(p for p, comm, _ in rows if comm.startswith(workers_comm)):.1f}%"
        rest = f"{sum(p for p, comm, _ in rows if not comm.startswith(workers_comm)):.1f}%"
    symbols = shares(f"{cells}/{key}.symbols")
    if symbols:
        protocol = f"{sum(p for p, dso, sym in symbols if dso != '[kernel.kallsyms]' and stack.search(sym)):.1f}%"
    kernel_top[label] = [(p, sym) for p, dso, sym in symbols if dso == "[kernel.kallsyms]"][:6]
    out.append(f"| {label} | {concurrency} | {rps:,.0f} | {server_cores:.2f} | {load_cores:.2f} | {per_request:.1f} | "
               f"{kernel} | {workers} | {rest} | {protocol} |")
if perf_ok:
    out.append("\nThe kernel functions taking most of the server's samples (share of all its samples):\n")
    out.append("| Cell | Kernel functions |")
    out.append("| --- | --- |")
    for label, top in kernel_top.items():
        out.append(f"| {label} | " + ", ".join(f"`{s.removeprefix('[k] ')}` {p:.1f}%" for p, s in top) + " |")
else:
    out.append("\n(perf could not sample the server here: no kernel/user split.)")
text = "\n".join(out) + "\n"
open("load-tests/CPU_SPLIT.md", "w").write(text)
print(text, end="")
PY
