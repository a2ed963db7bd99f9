"""GPU_RESULTS.md from the GPU check's results (load-tests/gpu.sh), standard
library only:

  python3 load-tests/gpu_report.py TMP COMMAND COMMIT ORT_LIB

TMP holds placement.json, devices.json, outputs.json (gpu_check.py) and the
unet-seg speed runs: unet-seg.settings ("max_batch_size intra_op_threads"),
unet-seg.c{1,32}.oha (oha JSON), unet-seg.c{1,32}.{before,after} (stats
around each oha run) and unet-seg.raw{1,B} (raw-onnx JSON). Prints the report,
writes load-tests/GPU_RESULTS.md, and exits 1 when the outputs check failed.
"""
import datetime, json, os, re, subprocess, sys

from gpu_check import print_devices, print_outputs, print_placement, table

MODEL = "unet-seg"


def smi(*args):
    try:
        return subprocess.run(["nvidia-smi", *args], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return ""


def machine():
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "unknown")
    mem_kib = int(next(l.split()[1] for l in open("/proc/meminfo") if l.startswith("MemTotal")))
    gpus = []
    for line in smi("--query-gpu=index,name,memory.total,driver_version", "--format=csv,noheader,nounits").splitlines():
        f = [x.strip() for x in line.split(",")]
        if len(f) >= 4:
            gpus.append(f"GPU {f[0]}: {','.join(f[1:-2]).strip()}, {f[-2]} MiB, driver {f[-1]}")
    cuda = re.search(r"CUDA Version:\s*([\d.]+)", smi())
    return (f"{os.cpu_count()} cores, {cpu}, {mem_kib / 1024 / 1024:.1f} GiB RAM; "
            + ("; ".join(gpus) or "GPU unknown") + f"; CUDA {cuda.group(1) if cuda else 'unknown'} (nvidia-smi)")


def served(tmp, c):
    load = lambda name: json.load(open(os.path.join(tmp, name)))
    o = load(f"{MODEL}.c{c}.oha")
    status = {int(k): v for k, v in (o.get("statusCodeDistribution") or {}).items()}
    ok = status.get(200, 0)
    errors = sum(v for k, v in status.items() if k != 200) + sum((o.get("errorDistribution") or {}).values())
    p = o["latencyPercentiles"]
    ms = lambda q: (p.get(q) or 0.0) * 1e3
    b0, b1 = (load(f"{MODEL}.c{c}.{s}")["model_pools"][MODEL]["batcher"] for s in ("before", "after"))
    batches = b1["batches"] - b0["batches"]
    return {"rps": ok / o["summary"]["total"], "p50": ms("p50"), "p95": ms("p95"), "p99": ms("p99"),
            "errors": errors, "avg_batch": (b1["items"] - b0["items"]) / batches if batches else 0.0}


def main(tmp, command, commit, ort_lib):
    load = lambda name: json.load(open(os.path.join(tmp, name)))
    placement, devices, outs = load("placement.json"), load("devices.json"), load("outputs.json")
    max_batch, threads = map(int, open(os.path.join(tmp, f"{MODEL}.settings")).read().split())
    raw = {b: load(f"{MODEL}.raw{b}") for b in sorted({1, max_batch})}
    speed = {}
    for c in (1, 32):
        s = served(tmp, c)
        s["raw_batch"] = 1 if c == 1 else max_batch
        s["raw_ips"] = raw[s["raw_batch"]]["items_per_s"]
        s["ratio"] = s["rps"] / s["raw_ips"]
        speed[c] = s
    devices_ok = all(d["ok"] for d in devices["devices"])

    goals = []
    s = speed[32]
    goals.append((f"{MODEL} on the GPU, concurrency 32: at least 90% of raw ONNX Runtime throughput "
                  f"(CUDA provider, batch {max_batch}), no errors",
                  f"{s['ratio']:.1%} ({s['rps']:,.1f} vs {s['raw_ips']:,.1f} items/s), {s['errors']} errors",
                  s["ratio"] >= 0.90 and s["errors"] == 0))
    s, r1 = speed[1], raw[1]
    gap = s["p50"] - r1["p50_ms"]
    goals.append((f"{MODEL} on the GPU, concurrency 1: p50 within 1 ms of one raw inference (raw batch-1 p50), no errors",
                  f"p50 {s['p50']:.2f} ms vs raw {r1['p50_ms']:.2f} ms ({gap:+.2f} ms), {s['errors']} errors",
                  gap <= 1.0 and s["errors"] == 0))

    ort = re.search(r"libonnxruntime\.so\.([\d.]+)$", ort_lib)
    out = []
    w = out.append
    w("# `make gpu-check` results\n")
    w("Written by `load-tests/gpu.sh`; every `make gpu-check` rewrites this file. See")
    w("`load-tests/README.md` for what is checked and measured.\n")
    w(f"- Date: {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}")
    w(f"- Machine: {machine()}")
    w(f"- Command: `{command}`")
    w(f"- Code: commit {commit}")
    w("- Server: release `target/release/gantry --config config/gantry.toml`, demo `model.toml` files, "
      "`GANTRY__CACHE__ENABLED=false`, no Redis or Postgres; ONNX Runtime "
      + (ort.group(1) if ort else "unknown") + " GPU build (`.onnxruntime-gpu/`, CUDA provider), "
      "the reference server on the CPU build (`.onnxruntime/`)\n")
    w("## Checks\n")
    w(table(("Check", "Result"), [
        ("Placement: every replica of every model ready on a GPU; every GPU nvidia-smi lists in `memory.devices`",
         "PASS" if placement["ok"] else "FAIL"),
        ("Outputs: GPU server next to CPU server, max abs diff <= 1e-3 x max(1, max abs CPU value), every model",
         "PASS" if outs["ok"] else "FAIL"),
        ("Per-device figures next to nvidia-smi (reported, not fatal)", "PASS" if devices_ok else "MISS"),
    ]))
    w("\n## Placement (`GET /api/optimized/stats`, `model_pools.<model>.replicas[]`)\n")
    w(print_placement(placement))
    w("\n## Outputs, GPU next to CPU (`POST /v2/models/<model>/infer`, the same JSON body to both)\n")
    w("Inputs: fixed pseudo-random values (FP32 in [0, 1), integers 0..3), a dynamic batch "
      "dimension as 1. Relative diff: |GPU - CPU| / max(|CPU|, 1e-6).\n")
    w(print_outputs(outs))
    w("\n## Per device: stats' `memory.devices[]` next to nvidia-smi\n")
    w(f"`total_mb` is expected to be floor(nvidia-smi memory.total x {devices['fraction']:g}) "
      f"(`memory.gpu_fraction`, from {devices['fraction_from']}), within 1%; `used_mb` within "
      "max(5%, 256 MB) of nvidia-smi's memory.used sampled right after; `reserved_mb` the sum of "
      "`memory_mb_per_replica` over the replicas on that device.\n")
    w(print_devices(devices["devices"]))
    w(f"\n## Speed: {MODEL} served on the GPU next to raw ONNX Runtime with the CUDA provider\n")
    w(f"Served: oha for the run's duration through the KServe v2 binary extension (as `make bench`), "
      f"the CPU reference server stopped. Raw: `raw-onnx --gpu <index>` on {raw[1].get('device', '?')} with "
      (f"{threads} intra-op thread(s)" if threads else "the shared intra-op pool of every core")
      + ", after the server was stopped.\n")
    w(table(("Concurrency", "Served req/s", "p50 ms", "p95 ms", "p99 ms", "Errors", "Avg batch",
             "Raw batch", "Raw items/s", "Served/raw"),
            [(c, f"{s['rps']:,.1f}", f"{s['p50']:.2f}", f"{s['p95']:.2f}", f"{s['p99']:.2f}", s["errors"],
              f"{s['avg_batch']:.2f}", s["raw_batch"], f"{s['raw_ips']:,.1f}", f"{s['ratio']:.1%}")
             for c, s in speed.items()]))
    w("\nRaw ONNX Runtime, per inference (`raw-onnx`, no HTTP):\n")
    w(table(("Device", "Batch", "Items/s", "p50 ms", "p95 ms", "p99 ms"),
            [(r.get("device", "?"), b, f"{r['items_per_s']:,.1f}", f"{r['p50_ms']:.3f}", f"{r['p95_ms']:.3f}",
              f"{r['p99_ms']:.3f}") for b, r in raw.items()]))
    w("\nGoals:\n")
    w(table(("Goal", "Measured", "Result"), [(g, m, "PASS" if ok else "MISS") for g, m, ok in goals]))
    text = "\n".join(out) + "\n"
    open("load-tests/GPU_RESULTS.md", "w").write(text)
    print()
    print(text, end="")
    print("\n(written to load-tests/GPU_RESULTS.md)")
    return 0 if placement["ok"] and outs["ok"] else 1


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:5]))
