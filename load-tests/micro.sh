#!/usr/bin/env bash
# `make bench-micro`: the criterion microbenchmarks of load-tests/benches/
# (json_codec: JSON tensors in and out next to serde_json; compression: an
# answer deflated by zlib-rs next to miniz_oxide; statistics: the
# statistics counters' cost per request), then their medians, with the
# machine, the date and the command, into load-tests/MICRO_RESULTS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
CARGO=${CARGO:-cargo}
command="make bench-micro"
[[ -n ${MAKELEVEL:-} ]] || command="load-tests/micro.sh"
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
[[ -z $(git status --porcelain -- src actors Cargo.toml Cargo.lock load-tests 2>/dev/null) ]] ||
  commit+=" with uncommitted changes"

rm -rf target/criterion
"$CARGO" bench -p gantry-load-tests --bench json_codec --bench compression --bench statistics

python3 - "$command" "$commit" <<'PY'
import datetime, glob, json, os, sys

command, commit = sys.argv[1:3]
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "unknown")
cores = os.cpu_count()


def results():
    for path in sorted(glob.glob("target/criterion/**/new/benchmark.json", recursive=True)):
        bench = json.load(open(path))
        estimates = json.load(open(os.path.join(os.path.dirname(path), "estimates.json")))
        ns = estimates["median"]["point_estimate"]
        throughput = bench.get("throughput") or {}
        yield bench["group_id"], bench.get("function_id") or "", ns, throughput.get("Bytes")


rows = list(results())
out = ["# `make bench-micro` results\n",
       "Written by `load-tests/micro.sh` from criterion's medians; every run rewrites this file.\n",
       f"- Date: {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
       f"- Machine: {cores} cores, {cpu}",
       f"- Command: `{command}`",
       f"- Code: commit {commit}\n",
       "JSON tensors (MB/s of JSON text, median time per call):\n",
       "| Case | Implementation | Median | MB/s | vs serde_json |",
       "| --- | --- | ---: | ---: | ---: |"]
by_group = {}
for group, function, ns, size in rows:
    by_group.setdefault(group, {})[function] = (ns, size)
for group, functions in by_group.items():
    if not group.startswith("json"):
        continue
    base = functions.get("serde_json Vec<f32>", (None, None))[0]
    for function, (ns, size) in functions.items():
        mbps = size / ns * 1e9 / 1e6 if size else 0.0
        ratio = f"{base / ns:.2f}x" if base else ""
        unit = f"{ns / 1e3:,.1f} us" if ns >= 1e3 else f"{ns:,.0f} ns"
        out.append(f"| {group} | {function} | {unit} | {mbps:,.0f} | {ratio} |")
out += ["\nCompressing an answer for clients that ask for gzip (MB/s of JSON text in):\n",
        "| Case | Implementation | Median | MB/s | vs miniz_oxide |", "| --- | --- | ---: | ---: | ---: |"]
for group, functions in by_group.items():
    if not group.startswith("deflate"):
        continue
    base = functions.get("miniz_oxide, level 1", (None, None))[0]
    for function, (ns, size) in functions.items():
        mbps = size / ns * 1e9 / 1e6 if size else 0.0
        ratio = f"{base / ns:.2f}x" if base else ""
        out.append(f"| {group} | {function} | {ns / 1e3:,.1f} us | {mbps:,.0f} | {ratio} |")
out += ["\nStatistics extension counters (what one served request records):\n",
        "| Case | Median per request |", "| --- | ---: |"]
for group, function, ns, _ in rows:
    if group.startswith("statistics"):
        out.append(f"| {function or group} | {ns:,.1f} ns |")
text = "\n".join(out) + "\n"
open("load-tests/MICRO_RESULTS.md", "w").write(text)
print(text, end="")
print("\n(written to load-tests/MICRO_RESULTS.md)")
PY
