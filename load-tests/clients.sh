#!/usr/bin/env bash
# `make bench-clients`: gRPC next to HTTP (the v2 binary extension) measured
# with Triton's own Python clients (`tritonclient.grpc` and
# `tritonclient.http`, sync at concurrency 1 and asyncio at 32) beside the
# pair `make bench` uses (grpc-load and oha), all against one server: the
# check that `make bench`'s gRPC/HTTP ratios are the server's and not its
# generators'. Each cell also gives the server's and the client's CPU per
# call. Writes load-tests/CLIENT_RESULTS.md.
#
#   make bench-clients    # SECONDS_PER_CELL=5 ROUNDS=4; OHA=/path/to/oha skips the install
#
# Serves the `make bench` repository (unet-seg 2 replicas, max batch 8;
# tiny-classifier 2 and 32; cache off) with gRPC on, and a second one that
# gzips its gRPC answers (`server.grpc_compress_answers`) for
# `tritonclient.grpc` beside it; the clients come from the project's venv
# (`make venv`, tests/clients/requirements.txt; PYTHON names another).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
CARGO=${CARGO:-cargo}
SECONDS_PER_CELL=${SECONDS_PER_CELL:-5}
ROUNDS=${ROUNDS:-4}
python=${PYTHON:-$root/.venv/bin/python}
[[ -x $python ]] || { echo "no Python at $python: run make venv, or set PYTHON" >&2; exit 1; }

source "$root/load-tests/bench-lib.sh"
run_labels "make bench-clients" load-tests/clients.sh SECONDS_PER_CELL ROUNDS OHA

echo "== building (release)"
"$CARGO" build --release --quiet -p gantry --bin gantry -p gantry-load-tests --bin grpc-load

source "$root/load-tests/start-gantry.sh"
find_oha
python3 load-tests/bodies.py "$tmp"
bench_repository "$tmp/models"
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
grpc_port=$(free_port)
grpc_bind=127.0.0.1:$grpc_port start_gantry GANTRY__MODELS__DIR="$tmp/models"
http_port=$port plain_server=$server
gzip_port=$(free_port)
gantry_log=$tmp/gzip-server.log grpc_bind=127.0.0.1:$gzip_port \
  start_gantry GANTRY__MODELS__DIR="$tmp/models" GANTRY__SERVER__GRPC_COMPRESS_ANSWERS=true

"$python" load-tests/clients.py --http "$http_port" --grpc "$grpc_port" --server-pid "$plain_server" \
  --gzip-grpc "$gzip_port" --gzip-server-pid "$server" \
  --oha "$OHA" --grpc-load target/release/grpc-load --bodies "$tmp" \
  --seconds "$SECONDS_PER_CELL" --rounds "$ROUNDS" \
  --out load-tests/CLIENT_RESULTS.md --command "$command" --code "commit $commit"
echo "== wrote load-tests/CLIENT_RESULTS.md"
