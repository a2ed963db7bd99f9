"""`make bench-clients`: gRPC next to HTTP measured with the clients Triton's
users run (`tritonclient.grpc` and `tritonclient.http`, sync at concurrency 1,
their asyncio flavours at 32), beside the pair `make bench` uses (grpc-load
and oha), against one server, into load-tests/CLIENT_RESULTS.md.

    python load-tests/clients.py --http PORT --grpc PORT --server-pid PID \
        --gzip-grpc PORT --gzip-server-pid PID \
        --oha PATH --grpc-load PATH --bodies DIR --seconds S --rounds N \
        --out FILE --command CMD --code CODE

A second server (`--gzip-grpc`, `server.grpc_compress_answers = true`)
answers `tritonclient.grpc` beside the first, so the table shows what
gzipping its answers cost (grpcio lists gzip on every call).

Every cell runs once a round, the clients' order changing each round (each
client in every place over four rounds, each pair's gRPC client first in
two of them), so a slow phase of
the machine falls on every client alike; a cell's figure is the median of
its rounds. Besides calls a second it reads the server's CPU (its /proc
stat) and the client's (its own process time, or the child's rusage) per
call, over the timed calls only: the server's cost of a call is the part no
client can move.
"""
import argparse
import asyncio
import json
import os
import platform
import resource
import statistics
import subprocess
import time

import numpy as np
import tritonclient.grpc as grpc_sync
import tritonclient.grpc.aio as grpc_aio
import tritonclient.http as http_sync
import tritonclient.http.aio as http_aio

# name, input, shape, output: the two demo models of `make bench`.
MODELS = [
    ("unet-seg", "image", [1, 3, 128, 128], "mask"),
    ("tiny-classifier", "features", [1, 64], "logits"),
]
CONCURRENCY = [1, 32]
GZIP = "tritonclient.grpc, gzip answers"
CLIENTS = ["grpc-load", "oha", "tritonclient.grpc", "tritonclient.http", GZIP]
PAIRS = [("grpc-load", "oha"), ("tritonclient.grpc", "tritonclient.http"), (GZIP, "tritonclient.http")]
# The clients' order in each round, cycled: every client in every place
# over four rounds, and each pair's gRPC client first in two of them.
ORDERS = [[0, 1, 2, 3, 4], [4, 3, 2, 1, 0], [1, 0, 3, 2, 4], [2, 4, 0, 3, 1]]
TICK = os.sysconf("SC_CLK_TCK")


def server_cpu_s(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def children_cpu_s():
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class Meter:
    """The server's CPU and this process's (its own and its children's)
    between `start` and `stop`."""

    def __init__(self, server_pid):
        self.server_pid = server_pid

    def now(self):
        return (server_cpu_s(self.server_pid), children_cpu_s() + time.process_time(),
                time.perf_counter())

    def start(self):
        self.started = self.now()

    def stop(self):
        ended = self.now()
        self.server_s, self.client_s, self.elapsed_s = (b - a for a, b in zip(self.started, ended))


def tensor(shape):
    # Fixed pseudo-random inputs, as grpc-load fills raw_input_contents.
    return np.random.default_rng(1).random(shape, dtype=np.float32)


def call_parts(lib, kind, model):
    """The input and the asked output of a call through `lib`: binary data
    both ways over HTTP (the v2 extension), raw contents over gRPC."""
    _, input_name, shape, output = model
    binary = {} if kind == "grpc" else {"binary_data": True}
    inp = lib.InferInput(input_name, shape, "FP32")
    inp.set_data_from_numpy(tensor(shape), **binary)
    return inp, [lib.InferRequestedOutput(output, **binary)]


def sync_calls(kind, port, model, seconds, meter):
    name = model[0]
    lib = grpc_sync if kind == "grpc" else http_sync
    client = lib.InferenceServerClient(url=f"127.0.0.1:{port}")
    inp, outputs = call_parts(lib, kind, model)
    client.infer(name, [inp], outputs=outputs)  # the connection, once
    latencies = []
    meter.start()
    deadline = time.perf_counter() + seconds
    while (start := time.perf_counter()) < deadline:
        client.infer(name, [inp], outputs=outputs)
        latencies.append(time.perf_counter() - start)
    meter.stop()
    client.close()
    return latencies


async def aio_calls(kind, port, model, seconds, concurrency, meter):
    name = model[0]
    lib = grpc_aio if kind == "grpc" else http_aio
    pool = {} if kind == "grpc" else {"conn_limit": concurrency}
    client = lib.InferenceServerClient(url=f"127.0.0.1:{port}", **pool)
    inp, outputs = call_parts(lib, kind, model)
    await client.infer(name, [inp], outputs=outputs)
    latencies = []
    meter.start()
    deadline = time.perf_counter() + seconds

    async def caller():
        while (start := time.perf_counter()) < deadline:
            await client.infer(name, [inp], outputs=outputs)
            latencies.append(time.perf_counter() - start)

    await asyncio.gather(*(caller() for _ in range(concurrency)))
    meter.stop()
    await client.close()
    return latencies


def generator(client, args, model, concurrency, meter):
    name, input_name, shape, _ = model
    dims = "x".join(map(str, shape))
    if client == "grpc-load":
        cmd = [args.grpc_load, "--addr", f"127.0.0.1:{args.grpc}", "--model", name,
               "--input", f"{input_name}:FP32:{dims}",
               "--concurrency", str(concurrency), "--seconds", str(args.seconds)]
    else:
        # The v2 binary-extension bodies of load-tests/bodies.py, answers
        # uncompressed, as make bench sends them (oha asks for gzip unless told).
        body = "unet-seg.body" if name == "unet-seg" else "tiny-classifier.v2"
        header_len = "unet-seg.len" if name == "unet-seg" else "tiny-classifier.v2len"
        with open(os.path.join(args.bodies, header_len)) as f:
            length = f.read().strip()
        cmd = [args.oha, "-z", f"{args.seconds:g}s", "-c", str(concurrency), "-w", "--no-tui",
               "--output-format", "json", "-m", "POST",
               "-H", "content-type: application/octet-stream", "-H", "accept-encoding: identity",
               "-H", f"inference-header-content-length: {length}",
               "-D", os.path.join(args.bodies, body),
               f"http://127.0.0.1:{args.http}/v2/models/{name}/infer"]
    meter.start()
    out = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
    meter.stop()
    bad = {k: v for k, v in out["statusCodeDistribution"].items() if k != "200"}
    if bad or out["errorDistribution"]:
        raise SystemExit(f"{client} {name} c={concurrency}: {bad} {out['errorDistribution']}")
    # Calls over the generator's own time, as bench_report.py reads it.
    calls = out["statusCodeDistribution"].get("200", 0)
    return calls, out["latencyPercentiles"]["p50"], out["summary"]["total"]


def cell(client, args, model, concurrency):
    """calls/s, p50 ms, server and client CPU us a call."""
    meter = Meter(args.gzip_server_pid if client == GZIP else args.server_pid)
    if client in ("grpc-load", "oha"):
        calls, p50, elapsed = generator(client, args, model, concurrency, meter)
    else:
        kind = "http" if client == "tritonclient.http" else "grpc"
        port = {"http": args.http, "grpc": args.grpc}[kind] if client != GZIP else args.gzip_grpc
        if concurrency == 1:
            latencies = sync_calls(kind, port, model, args.seconds, meter)
        else:
            latencies = asyncio.run(aio_calls(kind, port, model, args.seconds, concurrency, meter))
        calls, p50, elapsed = len(latencies), statistics.median(latencies), meter.elapsed_s
    per_call = 1e6 / max(calls, 1)
    return {"per_s": calls / elapsed, "p50_ms": p50 * 1e3,
            "server_us": meter.server_s * per_call, "client_us": meter.client_s * per_call}


def measure(args):
    results = {}
    for round_ in range(args.rounds):
        for model in MODELS:
            for concurrency in CONCURRENCY:
                for client in (CLIENTS[i] for i in ORDERS[round_ % len(ORDERS)]):
                    r = cell(client, args, model, concurrency)
                    results.setdefault((model[0], concurrency, client), []).append(r)
                    print(f"{model[0]} c={concurrency} {client}: {r['per_s']:,.1f}/s "
                          f"p50 {r['p50_ms']:.3f} ms, server {r['server_us']:,.1f} us/call", flush=True)
    return results


def median(runs, key):
    return statistics.median(r[key] for r in runs)


def report(args, results):
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")),
               platform.processor())
    lines = [
        "# `make bench-clients` results",
        "",
        "Written by `load-tests/clients.sh`; every run rewrites this file. gRPC next to HTTP (the v2 "
        "binary extension) with the clients Triton's users run, beside the pair `make bench` measures "
        "with; see load-tests/README.md.",
        "",
        f"- Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        f"- Machine: {os.cpu_count()} cores, {cpu}",
        f"- Command: `{args.command}`",
        f"- Code: {args.code}",
        f"- Server: the `make bench` repository, cache off; every client on the server's cores. "
        f"{args.rounds} rounds of {args.seconds} s cells, the clients' order turning each round; "
        "medians of the rounds",
        "- Clients: `tritonclient.grpc` / `tritonclient.http` (sync, one call at a time) at concurrency 1, "
        "`tritonclient.grpc.aio` / `tritonclient.http.aio` (asyncio tasks on one channel / one "
        "connection pool) at 32, each as it comes: `tritonclient.http.aio` sends aiohttp's "
        "`Accept-Encoding: gzip, deflate, br` on every call (Gantry gzips a binary answer only where its "
        "tensor bytes shrink), `tritonclient.grpc` lists gzip in `grpc-accept-encoding` on every call "
        "(answered plainly; its gzip-answers row is a second server with `server.grpc_compress_answers = "
        "true`); `grpc-load` (one HTTP/2 connection) and oha (a connection per caller, answers "
        "uncompressed) as in `make bench`",
        "",
        "| Model | Concurrency | Clients (gRPC / HTTP) | gRPC calls/s | HTTP calls/s | gRPC/HTTP "
        "| gRPC p50 ms | HTTP p50 ms | Server CPU us/call gRPC | HTTP | Client CPU us/call gRPC | HTTP |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, *_ in MODELS:
        for concurrency in CONCURRENCY:
            for g, h in PAIRS:
                gr, hr = results[(name, concurrency, g)], results[(name, concurrency, h)]
                lines.append(
                    f"| {name} | {concurrency} | {g} / {h} | {median(gr, 'per_s'):,.1f} "
                    f"| {median(hr, 'per_s'):,.1f} | {median(gr, 'per_s') / median(hr, 'per_s'):.3f} "
                    f"| {median(gr, 'p50_ms'):.3f} | {median(hr, 'p50_ms'):.3f} "
                    f"| {median(gr, 'server_us'):,.1f} | {median(hr, 'server_us'):,.1f} "
                    f"| {median(gr, 'client_us'):,.1f} | {median(hr, 'client_us'):,.1f} |")
    lines += ["", "Every cell's rounds (calls/s):", "",
              "| Model | Concurrency | Client | Rounds |", "| --- | ---: | --- | --- |"]
    for (name, concurrency, client), runs in results.items():
        lines.append(f"| {name} | {concurrency} | {client} | "
                     + ", ".join(f"{r['per_s']:,.1f}" for r in runs) + " |")
    with open(args.out, "w") as f:
        f.write("\n".join(lines) + "\n")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--http", type=int, required=True)
    p.add_argument("--grpc", type=int, required=True)
    p.add_argument("--server-pid", type=int, required=True)
    p.add_argument("--gzip-grpc", type=int, required=True)
    p.add_argument("--gzip-server-pid", type=int, required=True)
    p.add_argument("--oha", required=True)
    p.add_argument("--grpc-load", required=True)
    p.add_argument("--bodies", required=True)
    p.add_argument("--seconds", type=float, default=5)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--out", required=True)
    p.add_argument("--command", default="make bench-clients")
    p.add_argument("--code", default="")
    args = p.parse_args()
    report(args, measure(args))


if __name__ == "__main__":
    main()
