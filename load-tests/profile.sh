#!/usr/bin/env bash
# `make profile`: where a small request's instructions go. Serves the MLP
# (tiny-classifier, 64 -> 10) from a scratch repository (replicas = 1,
# max_batch_size = 32, cache off, no Redis or Postgres) under valgrind's
# callgrind, sends REQUESTS (default 2000) REST JSON predictions one after
# another on one keep-alive connection, and writes the instructions per
# request of each stage of the path (inclusive counts of the functions
# that stand for it) to load-tests/PROFILE.md. Instruction counts, unlike
# times, barely move on a noisy machine. Needs valgrind
# (apt-get install valgrind). The raw callgrind files and the annotated
# listing stay in target/profile/ (kcachegrind or callgrind_annotate read them).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
REQUESTS=${REQUESTS:-2000}
CARGO=${CARGO:-cargo}
command="make profile"
[[ -n ${MAKELEVEL:-} ]] || command="load-tests/profile.sh"
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
[[ -z $(git status --porcelain -- src actors Cargo.toml Cargo.lock 2>/dev/null) ]] ||
  commit+=" with uncommitted changes"
command -v valgrind >/dev/null || { echo "profile: needs valgrind (apt-get install valgrind)" >&2; exit 1; }

echo "== building (release, with line tables)"
"$CARGO" build --release --quiet -p gantry --bin gantry

tmp=$(mktemp -d)
pid=""
cleanup() {
  [[ -z $pid ]] || { kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; }
  rm -rf "$tmp"
}
trap cleanup EXIT

mkdir -p "$tmp/models/tiny-classifier"
cp models/tiny-classifier/model.onnx "$tmp/models/tiny-classifier/"
printf 'replicas = 1\nmax_batch_size = 32\n' >"$tmp/models/tiny-classifier/model.toml"
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')

echo "== serving under callgrind on 127.0.0.1:$port"
# Counting starts when the first profiled request arrives (the warm-up
# and the model's load are not counted): callgrind_control -i on below.
# Under callgrind every run takes some 50 times longer than it does
# natively, so the MLP's requests would miss `runtime.inline_run_us` (50 us)
# and take the batcher's path; the threshold is raised so that they take
# the path they take outside valgrind (on the worker). PATH_TAKEN=batcher
# profiles the batcher's path instead.
inline_us=10000
[[ ${PATH_TAKEN:-worker} == batcher ]] && inline_us=0
env -u REDIS_URL -u DATABASE_URL GANTRY__CACHE__ENABLED=false GANTRY__MODELS__DIR="$tmp/models" \
  GANTRY__RUNTIME__INLINE_RUN_US=$inline_us \
  valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$tmp/callgrind.out" \
  target/release/gantry --config config/gantry.toml --bind "127.0.0.1:$port" --grpc-bind= >"$tmp/server.log" 2>&1 &
pid=$!

python3 - "$port" "$REQUESTS" "$pid" <<'PY'
import http.client, json, random, subprocess, sys, time

port, requests, pid = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
deadline = time.time() + 300
while True:
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        c.request("GET", "/v2/health/ready")
        if c.getresponse().status == 200:
            break
    except OSError:
        pass
    if time.time() > deadline:
        sys.exit("profile: the server did not become ready")
    time.sleep(0.5)

rng = random.Random(7)
def body():
    values = [rng.random() for _ in range(64)]
    return json.dumps({"model": "tiny-classifier",
                       "inputs": {"features": {"shape": [1, 64], "datatype": "FP32", "data": values}}})

c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
def send(n):
    for _ in range(n):
        c.request("POST", "/api/optimized/predict", body(), {"content-type": "application/json"})
        r = c.getresponse()
        r.read()
        if r.status != 200:
            sys.exit(f"profile: status {r.status}")
send(200)
subprocess.run(["callgrind_control", "-i", "on", pid], check=True, stdout=subprocess.DEVNULL)
send(requests)
subprocess.run(["callgrind_control", "-i", "off", pid], check=True, stdout=subprocess.DEVNULL)
subprocess.run(["callgrind_control", "-d", pid], check=True, stdout=subprocess.DEVNULL)
PY
kill "$pid"
wait "$pid" 2>/dev/null || true
pid=""

# The dump taken after the profiled requests (callgrind.out.1); the file
# written at exit holds only the shutdown.
out=$tmp/callgrind.out.1
mkdir -p target/profile
callgrind_annotate --inclusive=yes --threshold=100 "$out" >target/profile/inclusive.txt
cp "$out" target/profile/
python3 load-tests/profile_report.py target/profile/inclusive.txt "$REQUESTS" "$command" "$commit" \
  | tee load-tests/PROFILE.md
