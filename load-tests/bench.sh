#!/usr/bin/env bash
# `make bench`: Gantry served next to raw ONNX Runtime, per demo model.
#
#   make bench                     # DURATION=10s; OHA=/path/to/oha to skip the install
#
# Builds release, starts target/release/gantry on a free 127.0.0.1 port with
# the shipped config and demo models (result cache off, so every request is
# an inference; no Redis, no Postgres), and for each demo model:
#   - drives it with oha at concurrency 1 and 32 for DURATION (tiny-classifier
#     as REST JSON, unet-seg through the KServe v2 binary tensor extension);
#   - runs raw-onnx (ONNX Runtime through Gantry's engine, no HTTP) with the
#     model's intra_op_threads at batch 1 and at max_batch_size: the limit.
# Served c=1 is compared with raw batch 1, served c=32 with raw batch
# max_batch_size (items/s). The table, the machine and the goals go to stdout
# and to load-tests/RESULTS.md, which each run rewrites.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

DURATION=${DURATION:-10s}
CARGO=${CARGO:-cargo}
MODELS="tiny-classifier unet-seg"
CONCURRENCY="1 32"
# raw-onnx measures as long as oha does (DURATION in seconds), else 10 s.
if [[ -z ${RAW_SECONDS:-} ]]; then
  if [[ $DURATION =~ ^([0-9]+(\.[0-9]+)?)s?$ ]]; then RAW_SECONDS=${BASH_REMATCH[1]}; else RAW_SECONDS=10; fi
fi

# The command as it was given, with the settings that shape the numbers.
command="make bench"
[[ -n ${MAKELEVEL:-} ]] || command="load-tests/bench.sh"
env_prefix=""
for var in DURATION OHA RAW_SECONDS; do
  if printenv "$var" >/dev/null; then env_prefix+="$var=$(printenv "$var") "; fi
done
command="$env_prefix$command"
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
[[ -z $(git status --porcelain -- src actors Cargo.toml Cargo.lock config models 2>/dev/null) ]] ||
  commit+=" with uncommitted changes"

echo "== building (release)"
"$CARGO" build --release --quiet -p gantry --bin gantry -p gantry-load-tests --bin raw-onnx

source "$root/load-tests/start-gantry.sh"
source "$root/load-tests/bench-lib.sh"
find_oha
start_gantry

# Request bodies: fixed pseudo-random inputs, as smoke.sh sends them.
python3 load-tests/bodies.py "$tmp"

for model in $MODELS; do
  batch=$(setting "$model" max_batch_size 8)
  threads=$(setting "$model" intra_op_threads 1)
  echo "$batch $threads" >"$tmp/$model.settings"
  for c in $CONCURRENCY; do
    echo "== $model: oha, concurrency $c, $DURATION"
    curl -s "$url/api/optimized/stats" >"$tmp/$model.c$c.before"
    oha_run "$model" "$c" "$tmp/$model.c$c.oha"
    curl -s "$url/api/optimized/stats" >"$tmp/$model.c$c.after"
  done
  for b in 1 "$batch"; do
    echo "== $model: raw ONNX Runtime, $threads thread(s), batch $b, ${RAW_SECONDS}s"
    target/release/raw-onnx --model "models/$model/model.onnx" --threads "$threads" \
      --batch "$b" --seconds "$RAW_SECONDS" >"$tmp/$model.raw$b"
  done
done

stop_gantry

python3 - "$tmp" "$MODELS" "$command" "$commit" "$(readlink -f .onnxruntime/libonnxruntime.so 2>/dev/null || true)" <<'PY'
import datetime, json, os, re, sys

tmp, models, command, commit, ort_lib = sys.argv[1], sys.argv[2].split(), *sys.argv[3:6]
load = lambda name: json.load(open(os.path.join(tmp, name)))

cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "unknown")
mem_kib = int(next(l.split()[1] for l in open("/proc/meminfo") if l.startswith("MemTotal")))
cores = os.cpu_count()
ort = re.search(r"libonnxruntime\.so\.([\d.]+)$", ort_lib)

def served(model, c):
    o = load(f"{model}.c{c}.oha")
    status = {int(k): v for k, v in (o.get("statusCodeDistribution") or {}).items()}
    ok = status.get(200, 0)
    errors = sum(v for k, v in status.items() if k != 200) + sum((o.get("errorDistribution") or {}).values())
    p = o["latencyPercentiles"]
    ms = lambda q: (p.get(q) or 0.0) * 1e3
    b0, b1 = (load(f"{model}.c{c}.{s}")["model_pools"][model]["batcher"] for s in ("before", "after"))
    batches = b1["batches"] - b0["batches"]
    return {"rps": ok / o["summary"]["total"], "p50": ms("p50"), "p95": ms("p95"), "p99": ms("p99"),
            "errors": errors, "ok": ok, "inferred": b1["items"] - b0["items"],
            "avg_batch": (b1["items"] - b0["items"]) / batches if batches else 0.0}

rows, raws, res = [], [], {}
for model in models:
    max_batch, threads = map(int, open(os.path.join(tmp, f"{model}.settings")).read().split())
    for b in sorted({1, max_batch}):
        r = load(f"{model}.raw{b}")
        raws.append((model, threads, b, r))
        res[(model, "raw", b)] = r
    for c in (1, 32):
        s = served(model, c)
        b = 1 if c == 1 else max_batch
        raw = res[(model, "raw", b)]
        s["raw_batch"], s["raw_ips"] = b, raw["items_per_s"]
        s["ratio"] = s["rps"] / raw["items_per_s"]
        res[(model, c)] = s
        rows.append((model, c, s))

def goal(text, measured, ok):
    return (text, measured, "PASS" if ok else "MISS")

goals = []
if ("unet-seg", 32) in res:
    s = res[("unet-seg", 32)]
    goals.append(goal("unet-seg, concurrency 32: at least 90% of raw ONNX Runtime throughput, no errors",
                      f"{s['ratio']:.1%} ({s['rps']:,.1f} vs {s['raw_ips']:,.1f} items/s), {s['errors']} errors",
                      s["ratio"] >= 0.90 and s["errors"] == 0))
if ("unet-seg", 1) in res:
    s, raw = res[("unet-seg", 1)], res[("unet-seg", "raw", 1)]
    gap = s["p50"] - raw["p50_ms"]
    goals.append(goal("unet-seg, concurrency 1: p50 within 2 ms of one raw inference (raw batch-1 p50)",
                      f"p50 {s['p50']:.2f} ms vs raw {raw['p50_ms']:.2f} ms (+{gap:.2f} ms)",
                      gap <= 2.0 and s["errors"] == 0))
if ("tiny-classifier", 32) in res:
    s = res[("tiny-classifier", 32)]
    goals.append(goal("tiny-classifier, concurrency 32: at least 20,000 requests/s with p99 under 10 ms, no errors",
                      f"{s['rps']:,.0f} req/s, p99 {s['p99']:.2f} ms, {s['errors']} errors",
                      s["rps"] >= 20000 and s["p99"] < 10 and s["errors"] == 0))

out = []
w = out.append
w("# `make bench` results\n")
w("Written by `load-tests/bench.sh`; every `make bench` rewrites this file. See")
w("`load-tests/README.md` for what is measured.\n")
w(f"- Date: {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}")
w(f"- Machine: {cores} cores, {cpu}, {mem_kib / 1024 / 1024:.1f} GiB RAM; the load generator (oha) "
  "shares the cores with the server, raw ONNX Runtime runs alone")
w(f"- Command: `{command}`")
w(f"- Code: commit {commit}")
w("- Server: release `target/release/gantry --config config/gantry.toml`, demo `model.toml` files, "
  "`GANTRY__CACHE__ENABLED=false`, no Redis or Postgres"
  + (f"; ONNX Runtime {ort.group(1)} (CPU)" if ort else ""))
w("- Served: successful requests/s and oha's latency percentiles; raw: `raw-onnx` items/s with the "
  "model's `intra_op_threads`, batch 1 for concurrency 1 and `max_batch_size` for concurrency 32\n")
w("| Model | Concurrency | Served req/s | p50 ms | p95 ms | p99 ms | Errors | Avg batch | Raw batch | Raw items/s | Served/raw |")
w("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
for model, c, s in rows:
    w(f"| {model} | {c} | {s['rps']:,.1f} | {s['p50']:.2f} | {s['p95']:.2f} | {s['p99']:.2f} | {s['errors']} "
      f"| {s['avg_batch']:.2f} | {s['raw_batch']} | {s['raw_ips']:,.1f} | {s['ratio']:.1%} |")
for model, c, s in rows:
    if s["inferred"] < s["ok"]:
        w(f"\n**Warning**: {model} at concurrency {c} answered {s['ok']} requests but inferred "
          f"{s['inferred']} items: some answers did not come from ONNX Runtime (cache?).")
w("\nRaw ONNX Runtime, per inference (`raw-onnx`, no HTTP):\n")
w("| Model | Threads | Batch | Items/s | p50 ms | p95 ms | p99 ms |")
w("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
for model, threads, b, r in raws:
    w(f"| {model} | {threads} | {b} | {r['items_per_s']:,.1f} | {r['p50_ms']:.3f} | {r['p95_ms']:.3f} | {r['p99_ms']:.3f} |")
w("\nGoals:\n")
w("| Goal | Measured | Result |")
w("| --- | --- | --- |")
for text, measured, verdict in goals:
    w(f"| {text} | {measured} | {verdict} |")
text = "\n".join(out) + "\n"
open("load-tests/RESULTS.md", "w").write(text)
print()
print(text, end="")
print("\n(written to load-tests/RESULTS.md)")
PY
