"""The report of `make bench` (load-tests/bench.sh): reads the oha runs,
stats snapshots and raw-onnx runs bench.sh left in its scratch folder,
takes the median of each figure over the repeated runs, and writes the
tables and the goals to stdout and to load-tests/RESULTS.md.

Usage: bench_report.py TMP REPEAT COMMAND COMMIT ORT_LIBRARY
"""
import datetime
import json
import os
import re
import statistics
import sys

tmp, repeat, command, commit, ort_lib = sys.argv[1], int(sys.argv[2]), *sys.argv[3:6]
cells = os.path.join(tmp, "cells")


def load(name):
    return json.load(open(os.path.join(cells, name)))


def median(values):
    return statistics.median(values) if values else 0.0


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def generator_run(name, k):
    """Run `k` of a cell as its load generator saw it: answered requests/s,
    200s, errors, latency percentiles (ms)."""
    o = load(f"{name}.{k}.json")
    status = {int(c): n for c, n in (o.get("statusCodeDistribution") or {}).items()}
    ok = status.get(200, 0)
    errors = sum(n for c, n in status.items() if c != 200) + sum((o.get("errorDistribution") or {}).values())
    p = o["latencyPercentiles"]
    run = {"rps": ok / o["summary"]["total"], "errors": errors, "ok": ok}
    for q in ("p50", "p95", "p99"):
        run[q] = (p.get(q) or 0.0) * 1e3
    return run


def served(name, model=None):
    """Median requests/s, latency percentiles (ms), errors in all, the
    server's CPU time per answered request (us; all its threads, user and
    system), and the average batch the batcher formed, over the runs of one
    cell."""
    runs = []
    for k in range(1, repeat + 1):
        run = generator_run(name, k)
        ok = run["ok"]
        ticks = [float(open(os.path.join(cells, f"{name}.{k}.cpu_{s}")).read()) for s in ("before", "after")]
        run["cpu_us"] = (ticks[1] - ticks[0]) / CLOCK_TICKS * 1e6 / ok if ok else 0.0
        if model:
            b0, b1 = (load(f"{name}.{k}.{s}")["model_pools"][model]["batcher"] for s in ("before", "after"))
            batches = b1["batches"] - b0["batches"]
            run["items"] = b1["items"] - b0["items"]
            run["avg_batch"] = run["items"] / batches if batches else 0.0
            inline = b1.get("inline_runs", 0) - b0.get("inline_runs", 0)
            run["inline_share"] = inline / batches if batches else 0.0
        runs.append(run)
    out = {key: median([r[key] for r in runs]) for key in runs[0] if key != "errors"}
    out["errors"] = sum(r["errors"] for r in runs)
    out["runs"] = [round(r["rps"], 1) for r in runs]
    return out


def raw(model, batch):
    runs = [load(f"raw.{model}.b{batch}.{k}") for k in range(1, repeat + 1)]
    return {key: median([r[key] for r in runs]) for key in ("items_per_s", "p50_ms", "p95_ms", "p99_ms")} | {
        "threads": runs[0].get("threads", 0)}


def beside(name):
    """Per run of a cell: its req/s and p50 (ms), and the best items/s and
    its p50 of the raw runs bench.sh took right after it (the batches it
    chose, read from the file names)."""
    runs = []
    for k in range(1, repeat + 1):
        prefix = f"{name}.{k}.raw.b"
        r = {int(f[len(prefix):]): load(f) for f in os.listdir(cells) if f.startswith(prefix)}
        best = max(r, key=lambda b: r[b]["items_per_s"])
        run = generator_run(name, k)
        runs.append({"rps": run["rps"], "p50": run["p50"], "raw_items_per_s": r[best]["items_per_s"],
                     "raw_batch": best, "raw_p50": r[best]["p50_ms"]})
    return runs


cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "unknown")
mem_kib = int(next(l.split()[1] for l in open("/proc/meminfo") if l.startswith("MemTotal")))
cores = os.cpu_count()
ort = re.search(r"libonnxruntime\.so\.([\d.]+)$", ort_lib)

health = served("health-live")
mlp = {c: served(f"tiny-classifier.json.c{c}", "tiny-classifier") for c in (1, 32)}
mlp_batcher = {c: served(f"tiny-classifier.json.batcher.c{c}", "tiny-classifier") for c in (1, 32)}
unet = {c: served(f"unet-seg.json.c{c}", "unet-seg") for c in (1, 32)}
unet_gzip = served("unet-seg.gzip.c1", "unet-seg")
unet_binary = {c: served(f"unet-seg.binary.c{c}", "unet-seg") for c in (1, 32)}
unet_one_thread = {c: served(f"unet-seg.binary.one-thread.c{c}", "unet-seg") for c in (1, 32)}
unet_grpc = {c: served(f"unet-seg.grpc.c{c}", "unet-seg") for c in (1, 32)}
mlp_binary = {c: served(f"tiny-classifier.binary.c{c}", "tiny-classifier") for c in (1, 32)}
mlp_grpc = {c: served(f"tiny-classifier.grpc.c{c}", "tiny-classifier") for c in (1, 32)}
hit = served("tiny-classifier.hit.c1")
raws = {("unet-seg", b): raw("unet-seg", b) for b in (1, 2, 4, 8)}
raws.update({("tiny-classifier", b): raw("tiny-classifier", b) for b in (1, 32)})
best_unet_batch = max((b for (m, b) in raws if m == "unet-seg"), key=lambda b: raws[("unet-seg", b)]["items_per_s"])
best_unet = raws[("unet-seg", best_unet_batch)]
ready, answered = map(int, open(os.path.join(tmp, "many.result")).read().split())

rows = [
    ("GET /v2/health/live", 32, health, None),
    ("tiny-classifier (MLP), JSON", 1, mlp[1], raws[("tiny-classifier", 1)]),
    ("tiny-classifier (MLP), JSON", 32, mlp[32], raws[("tiny-classifier", 32)]),
    ("tiny-classifier (MLP), JSON, all through the batcher (inline_run_us = 0)", 1, mlp_batcher[1],
     raws[("tiny-classifier", 1)]),
    ("tiny-classifier (MLP), JSON, all through the batcher (inline_run_us = 0)", 32, mlp_batcher[32],
     raws[("tiny-classifier", 32)]),
    ("tiny-classifier (MLP), JSON, cache hits", 1, hit, None),
    ("unet-seg, v2 JSON", 1, unet[1], raws[("unet-seg", 1)]),
    ("unet-seg, v2 JSON", 32, unet[32], best_unet),
    ("unet-seg, v2 JSON, answer gzipped", 1, unet_gzip, raws[("unet-seg", 1)]),
    ("unet-seg, v2 binary", 1, unet_binary[1], raws[("unet-seg", 1)]),
    ("unet-seg, v2 binary", 32, unet_binary[32], best_unet),
    ("unet-seg, v2 binary, one thread per run (runtime.intra_op_threads = 1, a replica per core)", 1,
     unet_one_thread[1], raws[("unet-seg", 1)]),
    ("unet-seg, v2 binary, one thread per run (runtime.intra_op_threads = 1, a replica per core)", 32,
     unet_one_thread[32], best_unet),
    ("unet-seg, gRPC", 1, unet_grpc[1], raws[("unet-seg", 1)]),
    ("unet-seg, gRPC", 32, unet_grpc[32], best_unet),
    ("tiny-classifier (MLP), v2 binary", 1, mlp_binary[1], raws[("tiny-classifier", 1)]),
    ("tiny-classifier (MLP), v2 binary", 32, mlp_binary[32], raws[("tiny-classifier", 32)]),
    ("tiny-classifier (MLP), gRPC", 1, mlp_grpc[1], raws[("tiny-classifier", 1)]),
    ("tiny-classifier (MLP), gRPC", 32, mlp_grpc[32], raws[("tiny-classifier", 32)]),
]
# gRPC next to HTTP through the binary extension, cell by cell.
versus = [(model, c, g, h) for model, grpc_cells, http_cells in
          (("unet-seg", unet_grpc, unet_binary), ("tiny-classifier (MLP)", mlp_grpc, mlp_binary))
          for c in (1, 32) for g, h in [(grpc_cells[c], http_cells[c])]]


def goal(text, measured, ok):
    return (text, measured, "PASS" if ok else "MISS")


# The unet-seg goals: each run against the raw run right after it, the
# median over the runs.
unet_c1_beside = beside("unet-seg.json.c1")
unet_c32_beside = beside("unet-seg.json.c32")
unet_binary_beside = beside("unet-seg.binary.c32")
gap = median([r["p50"] - r["raw_p50"] for r in unet_c1_beside])
unet_ratio = median([r["rps"] / r["raw_items_per_s"] for r in unet_c32_beside])
unet_binary_ratio = median([r["rps"] / r["raw_items_per_s"] for r in unet_binary_beside])


def latencies_text(runs):
    return ", ".join(f"{r['p50']:,.2f} vs {r['raw_p50']:.2f}" for r in runs)


def rates_text(runs):
    return ", ".join(f"{r['rps']:,.1f} vs {r['raw_items_per_s']:,.1f} (batch {r['raw_batch']})" for r in runs)


mlp_ratio = mlp[32]["rps"] / health["rps"]
goals = [
    goal("unet-seg JSON, concurrency 1: p50 <= one raw inference on all cores + 1 ms",
         f"{gap:+.2f} ms (p50 ms of each run vs raw batch 1 right after it: {latencies_text(unet_c1_beside)})",
         gap <= 1.0 and unet[1]["errors"] == 0),
    goal("unet-seg JSON, concurrency 32: >= 0.95 x raw ONNX Runtime's best throughput on all cores",
         f"{unet_ratio:.3f} (items/s of each run vs raw's best right after it: {rates_text(unet_c32_beside)})",
         unet_ratio >= 0.95 and unet[32]["errors"] == 0),
    goal("unet-seg v2 binary, concurrency 32: >= 0.95 x raw ONNX Runtime's best throughput on all cores",
         f"{unet_binary_ratio:.3f} ({rates_text(unet_binary_beside)})",
         unet_binary_ratio >= 0.95 and unet_binary[32]["errors"] == 0),
    goal("MLP JSON, concurrency 32: >= 0.5 x GET /v2/health/live at concurrency 32, p99 < 5 ms",
         f"{mlp_ratio:.3f} ({mlp[32]['rps']:,.0f} vs {health['rps']:,.0f} req/s), p99 {mlp[32]['p99']:.2f} ms",
         mlp_ratio >= 0.5 and mlp[32]["p99"] < 5 and mlp[32]["errors"] == 0),
    goal("MLP JSON, concurrency 1: p50 <= 0.15 ms", f"p50 {mlp[1]['p50']:.3f} ms",
         mlp[1]["p50"] <= 0.15 and mlp[1]["errors"] == 0),
]
for model, c, g, h in versus:
    ratio = g["rps"] / h["rps"] if h["rps"] else 0.0
    goals.append(goal(f"{model}, concurrency {c}: gRPC >= HTTP through the binary extension",
                      f"{ratio:.3f} ({g['rps']:,.1f} vs {h['rps']:,.1f} req/s)",
                      ratio >= 1.0 and g["errors"] == 0))
goals += [
    goal("MLP JSON, cache hits at concurrency 1: p50 < 0.2 ms", f"p50 {hit['p50']:.3f} ms",
         hit["p50"] < 0.2 and hit["errors"] == 0),
    goal("20 copies of the MLP in one repository: all ready, each answering",
         f"{ready} of 20 ready, {answered} of 20 answered 200", ready == 20 and answered == 20),
]

out = []
w = out.append
w("# `make bench` results\n")
w("Written by `load-tests/bench.sh` (report: `load-tests/bench_report.py`); every `make bench`")
w("rewrites this file. See `load-tests/README.md` for what is measured.\n")
w(f"- Date: {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}")
w(f"- Machine: {cores} cores, {cpu}, {mem_kib / 1024 / 1024:.1f} GiB RAM; the load generator (oha) "
  "shares the cores with the server, raw ONNX Runtime runs alone")
w(f"- Command: `{command}`")
w(f"- Code: commit {commit}")
w("- Server: release `target/release/gantry --config config/gantry.toml` on a scratch repository whose "
  "`model.toml` files hold only `replicas` and `max_batch_size` (unet-seg 2 and 8, tiny-classifier 2 and 32), "
  "result cache off (on for the cache-hit row), no Redis or Postgres; requests ask for answers "
  "uncompressed (`accept-encoding: identity`, as Triton's clients do by default) except the gzipped row"
  + (f"; ONNX Runtime {ort.group(1)} (CPU)" if ort else ""))
w(f"- Every figure is the median of {repeat} runs of one cell; req/s of each run in the last column. "
  "Raw: `raw-onnx`, the engine a replica uses on the same shared pool of every core, no HTTP, run at the end "
  "(the Served/raw column); the unet-seg goals instead compare each run with a raw run right after it "
  "(the machine's speed may drift within a bench)\n")
w("| Cell | Concurrency | Served req/s | p50 ms | p95 ms | p99 ms | Errors | Server CPU us/req | Avg batch | On the worker | Raw items/s (batch) | Served/raw | Runs (req/s) |")
w("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
for name, c, s, r in rows:
    batch = f"{s['avg_batch']:.2f}" if "avg_batch" in s else ""
    on_worker = f"{s['inline_share']:.0%}" if "inline_share" in s else ""
    raw_cell, ratio = "", ""
    if r is not None:
        b = next(b for (m, b), v in raws.items() if v is r)
        raw_cell, ratio = f"{r['items_per_s']:,.1f} ({b})", f"{s['rps'] / r['items_per_s']:.3f}"
    w(f"| {name} | {c} | {s['rps']:,.1f} | {s['p50']:.3f} | {s['p95']:.3f} | {s['p99']:.3f} | {s['errors']} "
      f"| {s['cpu_us']:,.1f} | {batch} | {on_worker} | {raw_cell} | {ratio} | {', '.join(f'{x:,.1f}' for x in s['runs'])} |")
for name, c, s, _ in rows:
    if "items" in s and s["items"] < s["ok"]:
        w(f"\n**Warning**: {name} at concurrency {c} answered {s['ok']:.0f} requests but inferred "
          f"{s['items']:.0f} items: some answers did not come from ONNX Runtime (cache?).")
w("\ngRPC (`grpc-load`: ModelInfer with raw_input_contents, the callers on one HTTP/2 connection) next to "
  "HTTP through the v2 binary extension (oha: a connection per caller), the same server and inputs:\n")
w("| Model | Concurrency | gRPC req/s | HTTP binary req/s | gRPC/HTTP | gRPC p50 ms | HTTP p50 ms | gRPC p99 ms | HTTP p99 ms | Server CPU us/req gRPC | HTTP |")
w("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
for model, c, g, h in versus:
    ratio = g["rps"] / h["rps"] if h["rps"] else 0.0
    w(f"| {model} | {c} | {g['rps']:,.1f} | {h['rps']:,.1f} | {ratio:.3f} | {g['p50']:.3f} | {h['p50']:.3f} "
      f"| {g['p99']:.3f} | {h['p99']:.3f} | {g['cpu_us']:,.1f} | {h['cpu_us']:,.1f} |")
w("\nRaw ONNX Runtime, per inference (`raw-onnx`, shared pool of every core, no HTTP):\n")
w("| Model | Batch | Items/s | p50 ms | p95 ms | p99 ms |")
w("| --- | ---: | ---: | ---: | ---: | ---: |")
for (model, b), r in raws.items():
    w(f"| {model} | {b} | {r['items_per_s']:,.1f} | {r['p50_ms']:.3f} | {r['p95_ms']:.3f} | {r['p99_ms']:.3f} |")
w("\nGoals:\n")
w("| Goal | Measured | Result |")
w("| --- | --- | --- |")
for text, measured, verdict in goals:
    w(f"| {text} | {measured} | {verdict} |")
text = "\n".join(out) + "\n"
open("load-tests/RESULTS.md", "w").write(text)
print()
print(text, end="")
print("\n(written to load-tests/RESULTS.md)")
