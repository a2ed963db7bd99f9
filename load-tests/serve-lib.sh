# shellcheck shell=bash disable=SC2154 # python, work: set by the sourcing script
# Sourced by footprints.sh and trace.sh, which start Gantry servers of their
# own on free ports (`$python` is the interpreter, `$work` the scratch folder
# holding each server's log as `$work/PORT.log`):
#   free_port      a free TCP port on 127.0.0.1
#   ready PORT     waits (60 s at most) for the server on PORT to be ready;
#                  exits 1 with its log when it never is
#   rss_mb PID     the resident memory of process PID, in MB

free_port() { "$python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
ready() {
  for _ in $(seq 600); do
    curl -sf "127.0.0.1:$1/v2/health/ready" >/dev/null && return 0
    sleep 0.1
  done
  echo "server on $1 never became ready" >&2
  cat "$work/$1.log" >&2
  exit 1
}
rss_mb() { awk '/VmRSS/ {print int($2 / 1024)}' "/proc/$1/status"; }
