#!/usr/bin/env bash
# `make soak`: Gantry under a steady mixed load for DURATION (default 30m),
# sampling the process every INTERVAL seconds: resident memory, threads,
# open file descriptors, and the answered and failed request counters.
#
#   make soak                                   # DURATION=30m
#   DURATION=3m INTERVAL=5 load-tests/soak.sh   # a short check
#
# Settings (environment): DURATION (oha syntax: 90s, 3m, 1h), INTERVAL
# (seconds between samples, 10), WARMUP (when memory is taken as settled,
# 5m; a run shorter than twice that uses a third of the run instead),
# RSS_GROWTH_PCT (warn when RSS grows more than this from the warm-up sample
# to the end, 10), OUT (where samples.csv and summary.md go, target/soak),
# OHA (an oha binary; else one on PATH, else installed into .tools/),
# SOAK_REDIS_URL and SOAK_DATABASE_URL (give the server Redis and the
# prediction log; off by default).
#
# Builds target/release/gantry, starts it on a free 127.0.0.1 port with the
# shipped config and demo models, the result cache on, and drives with oha,
# each stream rate-limited so the load is steady, for DURATION:
#   - tiny-classifier REST JSON, one body (cache hits) and the same body with
#     Cache-Control: no-cache (inferences);
#   - unet-seg through the KServe v2 binary tensor extension (no-cache);
#   - multipart uploads: an image to spheroid-seg, a WAV clip to night-calls;
#   - bad requests: malformed JSON (400), an unknown model (404), a wrong
#     shape (422);
# plus a Python loop of distinct tiny-classifier bodies, so the cache fills
# and evicts. It exits 1 when the server dies, when a stream gets a 5xx or a
# connection error, or when a stream's answers are not the statuses it
# expects; memory growth is a warning in the summary.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

DURATION=${DURATION:-30m}
INTERVAL=${INTERVAL:-10}
WARMUP=${WARMUP:-5m}
RSS_GROWTH_PCT=${RSS_GROWTH_PCT:-10}
OUT=${OUT:-target/soak}
CARGO=${CARGO:-cargo}

seconds() {
  local d=$1
  case $d in
    *h) echo $((${d%h} * 3600)) ;;
    *m) echo $((${d%m} * 60)) ;;
    *s) echo "${d%s}" ;;
    *) echo "$d" ;;
  esac
}
duration_s=$(seconds "$DURATION")
warmup_s=$(seconds "$WARMUP")

command="make soak"
[[ -n ${MAKELEVEL:-} ]] || command="load-tests/soak.sh"
env_prefix=""
for var in DURATION INTERVAL WARMUP RSS_GROWTH_PCT; do
  if printenv "$var" >/dev/null; then env_prefix+="$var=$(printenv "$var") "; fi
done
command="$env_prefix$command"
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)

echo "== building (release)"
"$CARGO" build --release --quiet -p gantry --bin gantry

if [[ -z ${OHA:-} ]]; then
  if command -v oha >/dev/null; then
    OHA=oha
  else
    if [[ ! -x .tools/bin/oha ]]; then
      echo "== installing oha into .tools/ (once)"
      "$CARGO" install oha --locked --root .tools
    fi
    OHA=$root/.tools/bin/oha
  fi
fi

mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
tmp=$(mktemp -d)
server=""
loads=()
cleanup() {
  for pid in "${loads[@]}"; do kill "$pid" 2>/dev/null || true; done
  if [[ -n $server ]]; then
    kill "$server" 2>/dev/null || true
    wait "$server" 2>/dev/null || true
  fi
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
url=http://127.0.0.1:$port
echo "== starting gantry on $url (cache on)"
env -u REDIS_URL -u DATABASE_URL \
  ${SOAK_REDIS_URL:+REDIS_URL=$SOAK_REDIS_URL} ${SOAK_DATABASE_URL:+DATABASE_URL=$SOAK_DATABASE_URL} \
  GANTRY__CACHE__ENABLED=true \
  target/release/gantry --config config/gantry.toml --bind "127.0.0.1:$port" --grpc-bind= >"$OUT/server.log" 2>&1 &
server=$!
code=000
for _ in $(seq 600); do
  if ! kill -0 "$server" 2>/dev/null; then
    echo "gantry exited before it was ready:" >&2
    cat "$OUT/server.log" >&2
    exit 1
  fi
  code=$(curl -s -o /dev/null -w '%{http_code}' "$url/api/optimized/health" || true)
  [[ $code == 200 ]] && break
  sleep 0.1
done
if [[ $code != 200 ]]; then
  echo "gantry was not healthy after 60 s (last status $code)" >&2
  exit 1
fi

# Request bodies.
python3 - "$tmp" <<'PY'
import json, random, struct, sys
out = sys.argv[1]
random.seed(7)
def write(name, data, mode="w"):
    open(f"{out}/{name}", mode).write(data)
features = [random.random() for _ in range(64)]
tiny = {"model": "tiny-classifier",
        "inputs": {"features": {"shape": [1, 64], "datatype": "FP32", "data": features}}}
write("tiny.json", json.dumps(tiny))
write("bad-json.json", '{"model": "tiny-classifier", "inputs": {')
write("unknown-model.json", json.dumps({**tiny, "model": "no-such-model"}))
write("wrong-shape.json", json.dumps({"model": "tiny-classifier", "inputs": {
    "features": {"shape": [1, 63], "datatype": "FP32", "data": features[:63]}}}))
pixels = 3 * 128 * 128
header = json.dumps({"inputs": [{"name": "image", "shape": [1, 3, 128, 128], "datatype": "FP32",
                                 "parameters": {"binary_data_size": pixels * 4}}],
                     "outputs": [{"name": "mask", "parameters": {"binary_data": True}}]}).encode()
write("unet.bin", header + struct.pack(f"<{pixels}f", *(random.random() for _ in range(pixels))), "wb")
write("unet.len", str(len(header)))
boundary = "soak0boundary"
def form(model, path, filename):
    file = open(path, "rb").read()
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="model"\r\n\r\n{model}\r\n'.encode(),
             f'--{boundary}\r\nContent-Disposition: form-data; name="cache"\r\n\r\nfalse\r\n'.encode(),
             f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
             f'Content-Type: application/octet-stream\r\n\r\n'.encode() + file + b"\r\n",
             f"--{boundary}--\r\n".encode()]
    return b"".join(parts)
write("image.form", form("spheroid-seg", "tests/fixtures/media/spheroids.png", "spheroids.png"), "wb")
write("audio.form", form("night-calls", "tests/fixtures/media/call-owl-hoot.wav", "owl.wav"), "wb")
write("boundary", boundary)
PY

# stream NAME EXPECTED_STATUSES RATE CONCURRENCY PATH BODY [HEADER...]
# (each stream's oha report goes to $reports, apart from the bodies)
reports=$tmp/reports
mkdir -p "$reports"
stream() {
  local name=$1 expected=$2 rate=$3 concurrency=$4 path=$5 body=$6
  shift 6
  local headers=()
  for h in "$@"; do headers+=(-H "$h"); done
  echo "$expected" >"$reports/$name.expected"
  "$OHA" -z "$DURATION" -w -q "$rate" -c "$concurrency" --no-tui --output-format json -m POST \
    "${headers[@]}" -D "$tmp/$body" "$url$path" >"$reports/$name.json" 2>"$reports/$name.err" &
  loads+=($!)
}
json=content-type:application/json
form="content-type: multipart/form-data; boundary=$(cat "$tmp/boundary")"
echo "== driving the mixed load for $DURATION, sampling every ${INTERVAL}s into $OUT/samples.csv"
stream tiny-cached 200 200 2 /api/optimized/predict tiny.json "$json"
stream tiny-uncached 200 100 2 /api/optimized/predict tiny.json "$json" "cache-control: no-cache"
stream unet-v2-binary 200,429 20 2 /v2/models/unet-seg/infer unet.bin \
  "content-type: application/octet-stream" "inference-header-content-length: $(cat "$tmp/unet.len")"
stream image-upload 200,429 10 1 /api/optimized/predict image.form "$form"
stream audio-upload 200,429 10 1 /api/optimized/predict audio.form "$form"
stream bad-json 400 10 1 /api/optimized/predict bad-json.json "$json"
stream unknown-model 404 10 1 /api/optimized/predict unknown-model.json "$json"
stream wrong-shape 422 10 1 /api/optimized/predict wrong-shape.json "$json"

# Distinct bodies, so the result cache fills and evicts (50 a second).
echo 200 >"$reports/cache-fill.expected"
python3 - "$url" "$duration_s" "$reports/cache-fill.json" <<'PY' &
import json, random, sys, time, urllib.error, urllib.request
url, seconds, out = sys.argv[1], float(sys.argv[2]), sys.argv[3]
codes, errors, i = {}, {}, 0
end = time.monotonic() + seconds
while time.monotonic() < end:
    i += 1
    rng = random.Random(i)
    body = json.dumps({"model": "tiny-classifier", "inputs": {"features": {
        "shape": [1, 64], "datatype": "FP32", "data": [rng.random() for _ in range(64)]}}}).encode()
    request = urllib.request.Request(f"{url}/api/optimized/predict", body, {"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            r.read()
            codes[str(r.status)] = codes.get(str(r.status), 0) + 1
    except urllib.error.HTTPError as e:
        codes[str(e.code)] = codes.get(str(e.code), 0) + 1
    except Exception as e:
        errors[type(e).__name__] = errors.get(type(e).__name__, 0) + 1
    time.sleep(0.02)
json.dump({"statusCodeDistribution": codes, "errorDistribution": errors}, open(out, "w"))
PY
loads+=($!)

# Samples until every load stream has finished.
echo "elapsed_s,rss_mb,threads,fds,requests_total,errors_total" >"$OUT/samples.csv"
started=$(date +%s)
sample() {
  local elapsed=$(($(date +%s) - started)) rss threads fds counters
  rss=$(awk '/^VmRSS:/ {printf "%.1f", $2 / 1024}' "/proc/$server/status")
  threads=$(awk '/^Threads:/ {print $2}' "/proc/$server/status")
  fds=$(find "/proc/$server/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l)
  counters=$(curl -s --max-time 10 "$url/api/optimized/stats" | python3 -c '
import json, sys
try:
    p = json.load(sys.stdin)["performance_metrics"]
    print(p["requests_total"], p["errors_total"], sep=",")
except Exception:
    print(",")' || echo ",")
  echo "$elapsed,$rss,$threads,$fds,$counters" | tee -a "$OUT/samples.csv"
}
while :; do
  if ! kill -0 "$server" 2>/dev/null; then
    echo "gantry died during the soak; its log:" >&2
    tail -50 "$OUT/server.log" >&2
    exit 1
  fi
  sample
  running=0
  for pid in "${loads[@]}"; do kill -0 "$pid" 2>/dev/null && running=1; done
  [[ $running == 1 ]] || break
  sleep "$INTERVAL"
done
for pid in "${loads[@]}"; do wait "$pid" || true; done
loads=()
health=$(curl -s -o /dev/null -w '%{http_code}' "$url/v2/health/ready" || true)

machine="$(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), \
$(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo)"
python3 - "$OUT" "$reports" "$warmup_s" "$duration_s" "$RSS_GROWTH_PCT" "$health" \
  "$command" "$commit" "$machine" "$(date -u +%Y-%m-%d)" <<'PY'
import csv, glob, json, os, sys
out, reports, warmup, duration, growth_pct, health, command, commit, machine, date = sys.argv[1:]
warmup, duration, growth_pct = float(warmup), float(duration), float(growth_pct)
rows = [r for r in csv.DictReader(open(f"{out}/samples.csv")) if r["rss_mb"]]
if duration < 2 * warmup:
    warmup = duration / 3
warm = next((r for r in rows if float(r["elapsed_s"]) >= warmup), rows[-1])
first, last = rows[0], rows[-1]
lines = [f"Date: {date}. Commit: {commit}. Machine: {machine}; the load generators share the cores with the server.",
         f"Command: `{command}`. {len(rows)} samples over {last['elapsed_s']} s; "
         f"memory taken as settled at {warm['elapsed_s']} s.", "",
         "| | first | at warm-up | last | max |", "| --- | --- | --- | --- | --- |"]
failed = []
warnings = []
for key, label in [("rss_mb", "RSS MB"), ("threads", "threads"), ("fds", "open fds")]:
    values = [float(r[key]) for r in rows]
    fmt = (lambda v: f"{v:.1f}") if key == "rss_mb" else (lambda v: f"{v:.0f}")
    lines.append(f"| {label} | {fmt(float(first[key]))} | {fmt(float(warm[key]))} | "
                 f"{fmt(float(last[key]))} | {fmt(max(values))} |")
    base = float(warm[key])
    if base > 0 and (float(last[key]) - base) / base * 100 > growth_pct:
        warnings.append(f"WARNING: {label} grew {(float(last[key]) - base) / base * 100:.1f}% "
                        f"from {fmt(base)} at {warm['elapsed_s']} s to {fmt(float(last[key]))} at the end "
                        f"(threshold {growth_pct:g}%)")
lines += ["", f"Server counters at the end: {last['requests_total']} requests, {last['errors_total']} errors "
          f"(errors include the deliberate bad requests). `/v2/health/ready` after: {health}.", "",
          "| stream | answers | statuses | connection errors | expected |", "| --- | --- | --- | --- | --- |"]
for path in sorted(glob.glob(f"{reports}/*.expected")):
    name = os.path.basename(path)[:-len(".expected")]
    expected = set(open(path).read().strip().split(","))
    try:
        r = json.load(open(f"{reports}/{name}.json"))
    except Exception as e:
        failed.append(f"{name}: no report ({e})")
        continue
    codes, errors = r.get("statusCodeDistribution", {}), r.get("errorDistribution", {})
    answers = sum(codes.values())
    lines.append(f"| {name} | {answers} | {json.dumps(codes)} | {json.dumps(errors)} | {','.join(sorted(expected))} |")
    if errors:
        failed.append(f"{name}: connection errors {errors}")
    if set(codes) - expected:
        failed.append(f"{name}: unexpected statuses {sorted(set(codes) - expected)}")
    if not answers:
        failed.append(f"{name}: no answers")
if health != "200":
    failed.append(f"health after the soak: {health}")
lines.append("")
lines += warnings or [f"No growth above {growth_pct:g}% from the warm-up sample to the end."]
lines += [f"FAILED: {f}" for f in failed] or ["PASS: no 5xx, no connection error, every stream answered as expected."]
text = "\n".join(lines) + "\n"
open(f"{out}/summary.md", "w").write(text)
print(text)
sys.exit(1 if failed else 0)
PY
