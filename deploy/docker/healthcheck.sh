#!/bin/bash
# The image's HEALTHCHECK: exit 0 when GET /v2/health/ready answers 200
# (every model has a ready replica), 1 otherwise (loading, a model without a
# ready replica, draining after SIGTERM, or nothing listening).
#
# Plain bash (its /dev/tcp), because the slim image has no curl or wget. The
# address is the one the server listens on, from GANTRY__SERVER__BIND (the
# image sets 0.0.0.0:8080; a wildcard address is asked on loopback).
# GANTRY_HEALTHCHECK_ADDR (host:port) overrides it, e.g. when the server is
# started with --bind.
set -u
addr="${GANTRY_HEALTHCHECK_ADDR:-${GANTRY__SERVER__BIND:-0.0.0.0:8080}}"
port="${addr##*:}"
host="${addr%:*}"
host="${host#[}"
host="${host%]}"
case "$host" in
  "" | 0.0.0.0) host=127.0.0.1 ;;
  ::) host=::1 ;;
esac

exec 3<>"/dev/tcp/$host/$port" || { echo "nothing listening on $host:$port"; exit 1; }
printf 'GET /v2/health/ready HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n' >&3
if ! IFS= read -r -t 4 status <&3; then
  echo "no answer from $host:$port"
  exit 1
fi
status="${status%$'\r'}"
case "$status" in
  "HTTP/1."?" 200"*) exit 0 ;;
  *) echo "not ready: $status"; exit 1 ;;
esac
