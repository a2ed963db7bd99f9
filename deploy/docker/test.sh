#!/usr/bin/env bash
# The container test: builds the image from the Dockerfile at the top (the
# default target, `docker build .`) and checks it as it would be run:
#
#   - /v2/health/ready turns 200, and Docker's HEALTHCHECK turns healthy
#   - a JSON tensor prediction (tiny-classifier), a KServe v2 infer, an image
#     upload (spheroid-seg, PNG) and an audio upload (night-calls, WAV) are
#     answered 200
#   - the server runs as uid/gid 10001, with a read-only root file system
#     (--read-only, a tmpfs on /tmp), and takes its memory budget from the
#     container's limit (--memory)
#   - SIGTERM (docker stop) drains and exits 0
#
# and prints the image's size. Run from anywhere:  deploy/docker/test.sh
#
# Needs root. Installs Debian's docker.io when dockerd is missing and starts
# dockerd when no engine answers (and stops it again at the end). Base images
# come from deploy/docker/base-images.sh (made locally when they are missing:
# no registry is needed). Builds with the legacy builder (no buildx needed)
# and host networking (apt, pip and cargo reach the mirrors as this machine
# does); the container also runs on the host's network, on a free loopback
# port, so every request stays on 127.0.0.1.
#
# Settings (environment): IMAGE (default gantry:test), KEEP_IMAGE=0 removes
# the image at the end, SKIP_BUILD=1 tests IMAGE as it is.
# Writes target/docker-test/: build.log, container logs, summary.md.
set -euo pipefail
cd "$(dirname "$0")/../.."

IMAGE="${IMAGE:-gantry:test}"
OUT=target/docker-test
NAME="gantry-test-$$"
export DOCKER_BUILDKIT=0
mkdir -p "$OUT"
rm -f "$OUT"/summary.md "$OUT"/container.log "$OUT"/stop.log

log() { printf 'docker-test: %s\n' "$*"; }
now() { date +%s; }
T0=$(now)
started_dockerd=

cleanup() {
  local rc=$?
  if docker inspect "$NAME" >/dev/null 2>&1; then
    if [ "$rc" -ne 0 ]; then
      log "container log:"
      docker logs "$NAME" 2>&1 | tail -n 60 || true
    fi
    docker rm -f "$NAME" >/dev/null 2>&1 || true
  fi
  if [ "${KEEP_IMAGE:-1}" = 0 ]; then docker rmi "$IMAGE" >/dev/null 2>&1 || true; fi
  if [ -n "$started_dockerd" ]; then
    kill "$started_dockerd" 2>/dev/null || true
    wait "$started_dockerd" 2>/dev/null || true
  fi
  [ "$rc" -eq 0 ] || log "FAILED (exit $rc)"
  exit "$rc"
}
trap cleanup EXIT

fail() { log "FAIL: $*"; exit 1; }

# --- Docker engine -------------------------------------------------------------
if ! command -v dockerd >/dev/null; then
  log "installing docker.io"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io >/dev/null
fi
if ! docker info >/dev/null 2>&1; then
  log "starting dockerd"
  dockerd >"$OUT/dockerd.log" 2>&1 &
  started_dockerd=$!
  for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
  docker info >/dev/null 2>&1 || { tail -n 30 "$OUT/dockerd.log"; fail "dockerd did not start"; }
fi
log "engine $(docker version -f '{{.Server.Version}}')"

# --- base images and build -----------------------------------------------------
T=$(now)
deploy/docker/base-images.sh
BASE_S=$(($(now) - T))

T=$(now)
if [ "${SKIP_BUILD:-0}" != 1 ]; then
  log "docker build -t $IMAGE . (log: $OUT/build.log)"
  if ! docker build --network host --force-rm -t "$IMAGE" . >"$OUT/build.log" 2>&1; then
    tail -n 40 "$OUT/build.log"
    fail "docker build failed"
  fi
  # The previous test image's layers, once untagged, are garbage: remove
  # them (only this project's, older than this build: they carry its title
  # label; this build's cache stays).
  docker image prune -f --filter label=org.opencontainers.image.title=gantry \
    --filter "until=$T" >/dev/null || true
fi
BUILD_S=$(($(now) - T))
SIZE_MB=$(($(docker image inspect -f '{{.Size}}' "$IMAGE") / 1000000))
log "image $IMAGE: $SIZE_MB MB"

# --- the image's settings ------------------------------------------------------
[ "$(docker image inspect -f '{{.Config.User}}' "$IMAGE")" = 10001:10001 ] || fail "image user is not 10001:10001"
[ "$(docker image inspect -f '{{json .Config.Cmd}}' "$IMAGE")" = '["gantry","--config","/etc/gantry/gantry.toml"]' ] ||
  fail "unexpected CMD"
[ "$(docker image inspect -f '{{.Config.StopSignal}}' "$IMAGE")" = SIGTERM ] || fail "STOPSIGNAL is not SIGTERM"
docker image inspect -f '{{json .Config.ExposedPorts}}' "$IMAGE" | grep -q '"8080/tcp"' || fail "8080 not exposed"
docker image inspect -f '{{json .Config.ExposedPorts}}' "$IMAGE" | grep -q '"8001/tcp"' || fail "8001 (gRPC) not exposed"

# --- run -----------------------------------------------------------------------
T=$(now)
PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
URL="http://127.0.0.1:$PORT"
GRPC_PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
log "docker run --read-only --tmpfs /tmp --network host, on 127.0.0.1:$PORT"
# The healthcheck's interval is shortened so that the test sees it turn healthy.
# A memory limit, so that the budget must come from the container's cgroup.
docker run -d --name "$NAME" --network host --read-only --tmpfs /tmp --memory 3g \
  --health-interval 2s --health-start-period 60s \
  -e GANTRY__SERVER__BIND="127.0.0.1:$PORT" -e GANTRY__SERVER__GRPC_BIND="127.0.0.1:$GRPC_PORT" \
  "$IMAGE" >/dev/null

ready=
for _ in $(seq 120); do
  if [ "$(curl -s -o /dev/null -w '%{http_code}' "$URL/v2/health/ready")" = 200 ]; then ready=1; break; fi
  [ "$(docker inspect -f '{{.State.Running}}' "$NAME")" = true ] || fail "the container exited ($(docker inspect -f '{{.State.ExitCode}}' "$NAME"))"
  sleep 0.5
done
[ -n "$ready" ] || fail "/v2/health/ready did not turn 200 within 60 s"
READY_S=$(($(now) - T))
log "ready after ${READY_S}s"

# expect CODE PATTERN NAME CURL-ARGS...: the answer's status is CODE and its
# body matches PATTERN (grep -E).
expect() {
  local code=$1 pattern=$2 what=$3
  shift 3
  local got
  got=$(curl -s -o "$OUT/body" -w '%{http_code}' "$@") || true
  if [ "$got" != "$code" ] || ! grep -Eq "$pattern" "$OUT/body"; then
    log "$what: HTTP $got, body:"
    head -c 600 "$OUT/body"; echo
    fail "$what"
  fi
  log "ok: $what"
}

python3 -c 'import json; print(json.dumps({"model": "tiny-classifier",
  "inputs": {"features": {"shape": [1, 64], "datatype": "FP32", "data": [0.5] * 64}}}))' >"$OUT/predict.json"
python3 -c 'import json; print(json.dumps({"id": "r1", "inputs": [{"name": "features",
  "shape": [2, 64], "datatype": "FP32", "data": [0.25] * 128}], "outputs": [{"name": "logits"}]}))' >"$OUT/infer.json"

expect 200 '"logits"' "JSON prediction (tiny-classifier)" \
  "$URL/api/optimized/predict" -H 'content-type: application/json' --data-binary @"$OUT/predict.json"
expect 200 '"shape":\[2,10\]' "KServe v2 infer (tiny-classifier)" \
  "$URL/v2/models/tiny-classifier/infer" -H 'content-type: application/json' --data-binary @"$OUT/infer.json"
expect 200 '"foreground_fraction"' "image upload (spheroid-seg, PNG)" \
  "$URL/api/optimized/predict" -F model=spheroid-seg -F file=@tests/fixtures/media/spheroids.png
expect 200 '"label":"owl-hoot"' "audio upload (night-calls, WAV)" \
  "$URL/api/optimized/predict" -F model=night-calls -F top_k=1 -F file=@tests/fixtures/media/call-owl-hoot.wav
expect 200 '"source":"cgroup"' "stats: memory budget from the cgroup limit" "$URL/api/optimized/stats"

# The server's process as the host sees it: uid and gid 10001 (real,
# effective, saved, file system).
PID=$(docker inspect -f '{{.State.Pid}}' "$NAME")
grep -Eq '^Uid:\s+10001\s+10001\s+10001\s+10001$' "/proc/$PID/status" || fail "uid: $(grep ^Uid: "/proc/$PID/status")"
grep -Eq '^Gid:\s+10001\s+10001\s+10001\s+10001$' "/proc/$PID/status" || fail "gid: $(grep ^Gid: "/proc/$PID/status")"
log "ok: runs as uid/gid 10001 ($(tr '\0' ' ' <"/proc/$PID/cmdline"))"
[ "$(docker inspect -f '{{.HostConfig.ReadonlyRootfs}}' "$NAME")" = true ] || fail "root file system not read-only"
log "ok: served with a read-only root file system"

health=
for _ in $(seq 30); do
  health=$(docker inspect -f '{{.State.Health.Status}}' "$NAME")
  [ "$health" = healthy ] && break
  sleep 1
done
[ "$health" = healthy ] || fail "HEALTHCHECK: $health ($(docker inspect -f '{{json .State.Health.Log}}' "$NAME" | tail -c 400))"
log "ok: HEALTHCHECK healthy"

# --- SIGTERM -------------------------------------------------------------------
T=$(now)
docker stop --time 45 "$NAME" >/dev/null
STOP_S=$(($(now) - T))
docker logs "$NAME" >"$OUT/container.log" 2>&1
code=$(docker inspect -f '{{.State.ExitCode}}' "$NAME")
[ "$code" = 0 ] || { tail -n 30 "$OUT/container.log"; fail "exit code $code after SIGTERM"; }
grep -Eiq 'shutting down|drain' "$OUT/container.log" || { tail -n 30 "$OUT/container.log"; fail "no drain in the log"; }
grep -q 'stopped' "$OUT/container.log" || { tail -n 30 "$OUT/container.log"; fail "no 'stopped' in the log"; }
log "ok: SIGTERM drained and exited 0 in ${STOP_S}s"
# ONNX Runtime's telemetry is off (gantry sets ORT_DISABLE_TELEMETRY before
# loading the library; the image sets nothing): with it on, it
# logs that it cannot keep its device id on the read-only file system.
if grep -qi telemetry "$OUT/container.log"; then
  grep -i telemetry "$OUT/container.log"
  fail "ONNX Runtime's telemetry is on"
fi
log "ok: ONNX Runtime telemetry off"
grep -Ei 'shutting down|drain|stopped' "$OUT/container.log" | sed 's/^/  | /'

TOTAL_S=$(($(now) - T0))
cat >"$OUT/summary.md" <<EOF
# Container test

| | |
| --- | --- |
| image | \`$IMAGE\`, $SIZE_MB MB |
| base images | ${BASE_S} s |
| docker build | ${BUILD_S} s |
| ready after start | ${READY_S} s (read-only root, tmpfs /tmp, uid 10001) |
| predictions | JSON, v2 infer, PNG upload, WAV upload: 200 |
| HEALTHCHECK | healthy |
| SIGTERM | exit 0 in ${STOP_S} s, drain logged |
| total | ${TOTAL_S} s |
EOF
cat "$OUT/summary.md"
log "passed"
