#!/usr/bin/env bash
# What the tests need on the machine, installed and started when missing:
# `make test` runs this first, and `.ci/run` through it. On a machine where
# everything is there it only checks, in well under a second.
#
#   Redis on 127.0.0.1:6379 and PostgreSQL on 127.0.0.1:5432 (database
#   `test`, user `postgres`, trust auth), the fault tests' own
#   redis-server and Postgres binaries (initdb, pg_ctl), openssl (TLS test
#   certificates), HAProxy (the multi-instance test), promtool (alert
#   rules), Chromium (the dashboard's browser test), debootstrap and Docker
#   (the container test), cargo-nextest; with --fuzz, cargo-fuzz.
#
# Debian packages need root; without it the script stops at once and prints
# the one command that installs what is missing.
set -euo pipefail

want_fuzz=false
for arg in "$@"; do
  case "$arg" in
    --fuzz) want_fuzz=true ;;
    *) echo "usage: $0 [--fuzz]" >&2; exit 2 ;;
  esac
done

# Runs a command as root (directly, or through password-less sudo); else
# stops and prints the command to run.
as_root() {
  if [ "$(id -u)" -eq 0 ]; then
    "$@"
  elif sudo -n true 2>/dev/null; then
    sudo -n "$@"
  else
    echo "setup needs root for: $*" >&2
    echo "run it as root (or run tests/setup.sh as root once), then make test again" >&2
    exit 1
  fi
}

pg_bin() {
  ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1
}

# Debian packages, by the command that shows each is there.
missing=()
command -v redis-server >/dev/null || missing+=(redis-server)
command -v redis-cli >/dev/null || missing+=(redis-tools)
[ -n "$(pg_bin)" ] && command -v pg_ctlcluster >/dev/null || missing+=(postgresql)
command -v openssl >/dev/null || missing+=(openssl)
command -v haproxy >/dev/null || missing+=(haproxy)
command -v promtool >/dev/null || missing+=(prometheus)
command -v debootstrap >/dev/null || missing+=(debootstrap)
command -v dockerd >/dev/null || missing+=(docker.io)
command -v chromium >/dev/null || missing+=(chromium)
# Node (18 or newer: Debian 12's nodejs) for the Node client and the
# dashboard's browser test; python3-venv for the venv `make test` makes.
command -v npm >/dev/null || missing+=(npm)
python3 -c 'import ensurepip, venv' 2>/dev/null || missing+=(python3-venv)
if ((${#missing[@]})); then
  install="apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ${missing[*]}"
  if [ "$(id -u)" -ne 0 ] && ! sudo -n true 2>/dev/null; then
    echo "the tests need: ${missing[*]}; install them with:" >&2
    echo "  sudo sh -c '$install'" >&2
    exit 1
  fi
  echo "setup: installing ${missing[*]}"
  as_root sh -c "$install"
fi

# Redis: the shared cache the tests use (nothing kept on disk).
if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
  echo "setup: starting redis-server on 127.0.0.1:6379"
  as_root mkdir -p /var/lib/redis /var/log/redis
  as_root redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" \
    --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log
fi

# PostgreSQL: the machine's cluster, trusted on loopback, with database `test`.
if ! pg_isready -h 127.0.0.1 -p 5432 -q; then
  cluster="$(ls /etc/postgresql | sort -V | tail -n 1)"
  echo "setup: starting postgresql $cluster"
  as_root pg_ctlcluster --skip-systemctl-redirect "$cluster" main start
  for _ in $(seq 50); do pg_isready -h 127.0.0.1 -p 5432 -q && break; sleep 0.2; done
fi
if ! psql -h 127.0.0.1 -U postgres -d postgres -w -Atc 'select 1' >/dev/null 2>&1; then
  hba="$(ls /etc/postgresql/*/main/pg_hba.conf | sort -V | tail -n 1)"
  echo "setup: trusting loopback connections in $hba"
  as_root sed -i '1i host all all 127.0.0.1/32 trust\nhost all all ::1/128 trust' "$hba"
  as_root pg_ctlcluster --skip-systemctl-redirect "$(basename "$(dirname "$(dirname "$hba")")")" main reload
  sleep 0.5
fi
if ! psql -h 127.0.0.1 -U postgres -d test -w -Atc 'select 1' >/dev/null 2>&1; then
  echo "setup: creating database test"
  psql -h 127.0.0.1 -U postgres -d postgres -w -qc 'create database test'
fi

# Cargo tools.
command -v cargo-nextest >/dev/null || cargo install cargo-nextest --locked
if $want_fuzz; then
  command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
fi
