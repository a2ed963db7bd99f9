#!/usr/bin/env bash
# Checks the deployment files (deploy/README.md): renders the kustomize base
# and overlays and validates them strictly, asserts their key properties,
# checks and unit-tests the Prometheus alerts, checks every series the
# alerts, dashboard and adapter rule read against src/metrics/,
# and checks compose.yaml and the HAProxy config. Run from anywhere; exits
# non-zero on any failure.
#
# Installs what it needs: the pinned tools of deploy/requirements.txt into
# .venv-deploy/ (again when that file changes), and Debian's prometheus
# (promtool) and haproxy packages when promtool or haproxy is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=.venv-deploy
PYTHON="${PYTHON:-python3}"
start=$SECONDS
step() { printf '\n== %s (%ds)\n' "$*" $((SECONDS - start)); }

step "tools"
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
  echo "deploy/check.sh needs Python 3.11 or newer as $PYTHON"; exit 1; }
stamp="$(sha256sum deploy/requirements.txt | cut -d' ' -f1)"
if [ "$(cat "$VENV/.requirements" 2>/dev/null)" != "$stamp" ]; then
  echo "installing deploy/requirements.txt into $VENV"
  rm -rf "$VENV"
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check -r deploy/requirements.txt
  echo "$stamp" >"$VENV/.requirements"
fi
export PATH="$PWD/$VENV/bin:$PATH"
missing=()
command -v promtool >/dev/null || missing+=(prometheus)
command -v haproxy >/dev/null || missing+=(haproxy)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing ${missing[*]}"
  apt-get update -qq
  # Install only: no service is started where the packages' scripts would.
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
echo "kubectl $(kubectl version --client -o json | python -c 'import json,sys; print(json.load(sys.stdin)["clientVersion"]["gitVersion"])')," \
  "kubernetes-validate $(kubernetes-validate --version)," \
  "$(promtool --version 2>&1 | head -n 1)," \
  "$(haproxy -v | head -n 1 | cut -d' ' -f1-3)"

step "kubernetes: kustomize base and overlays, strict schemas, assertions"
python deploy/check.py kubernetes

step "prometheus: promtool check rules, promtool test rules"
promtool check rules deploy/prometheus/alerts.yaml
promtool test rules deploy/prometheus/alerts_test.yaml
python deploy/check.py alerts

step "series: alerts, alert tests, adapter rule and dashboard read exposed series"
python deploy/check.py metrics

step "compose: Compose Specification schema, assertions"
check-jsonschema --builtin-schema vendor.compose-spec compose.yaml
python deploy/check.py compose

step "haproxy -c: as the host test runs it, and as compose does"
LISTEN_ADDR=127.0.0.1:18080 GANTRY_1_ADDR=127.0.0.1:18081 GANTRY_2_ADDR=127.0.0.1:18082 \
  haproxy -c -q -f deploy/compose/haproxy.cfg
# The names resolve only inside compose's network; haproxy starts anyway and
# resolves them at run time (init-addr none, resolvers).
LISTEN_ADDR=:8080 GANTRY_1_ADDR=gantry-1:8080 GANTRY_2_ADDR=gantry-2:8080 \
  haproxy -c -q -f deploy/compose/haproxy.cfg
echo "haproxy.cfg valid"

step "deploy checks passed"
