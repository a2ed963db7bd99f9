"""The steps of the GPU check (load-tests/gpu.sh), standard library only.

  nvidia-libs                    lib folders of Python's nvidia-* CUDA wheels, one a line
  cuda-libs [DIR...]             the CUDA and cuDNN libraries the CUDA provider loads:
                                 found in DIR... or by ldconfig, or listed as missing
  placement URL OUT              every replica of every model ready on a GPU, and every
                                 GPU nvidia-smi lists in stats' memory.devices
  devices URL OUT                stats' memory.devices next to nvidia-smi
  outputs GPU_URL CPU_URL OUT    the same inputs posted to every model on both servers,
                                 outputs compared
  device-index MODEL PLACEMENT   the GPU index of MODEL's first replica

Each step prints its table and saves its result as JSON in OUT, from which
gpu_report.py writes GPU_RESULTS.md.
"""
import glob, json, math, os, random, re, subprocess, sys, time, urllib.error, urllib.request

CUDA_SONAMES = [
    "libcudart.so.13", "libcublas.so.13", "libcublasLt.so.13", "libcufft.so.12",
    "libcurand.so.10", "libnvrtc.so.13", "libcudnn.so.9", "libcudnn_graph.so.9",
    "libcudnn_ops.so.9", "libcudnn_cnn.so.9", "libcudnn_adv.so.9",
    "libcudnn_heuristic.so.9", "libcudnn_engines_precompiled.so.9",
    "libcudnn_engines_runtime_compiled.so.9",
]
SMI_QUERY = "index,name,memory.total,memory.used,utilization.gpu"
# States in which a replica holds its reservation.
HOLDING = {"loading", "ready", "draining"}


def get_json(url, timeout=30):
    with urllib.request.urlopen(url, timeout=timeout) as answer:
        return json.load(answer)


def save(path, value):
    with open(path, "w") as f:
        json.dump(value, f, indent=1)


def number(text):
    try:
        return float(text)
    except ValueError:  # "[N/A]", "[Not Supported]"
        return None


def parse_smi(text):
    """Rows of `nvidia-smi --query-gpu=SMI_QUERY --format=csv,noheader,nounits`."""
    gpus = []
    for line in text.splitlines():
        fields = [f.strip() for f in line.split(",")]
        if len(fields) < 5 or not fields[0].isdigit():
            continue
        total, used, util = (number(f) for f in fields[-3:])
        gpus.append({"index": int(fields[0]), "device": f"gpu:{fields[0]}",
                     "name": ",".join(fields[1:-3]).strip(), "total_mb": total,
                     "used_mb": used, "utilization_percent": util})
    return gpus


def smi_gpus():
    out = subprocess.run(["nvidia-smi", f"--query-gpu={SMI_QUERY}", "--format=csv,noheader,nounits"],
                         capture_output=True, text=True, check=True).stdout
    return parse_smi(out)


def table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


# -- CUDA libraries -----------------------------------------------------------

def nvidia_libs():
    """lib folders under every `nvidia` package folder on sys.path (the
    nvidia-* wheels: nvidia/cudnn/lib, nvidia/cu13/lib, ...)."""
    roots = []
    try:
        import nvidia  # a namespace package: no __init__, several folders
        roots += list(nvidia.__path__)
    except ImportError:
        pass
    roots += [os.path.join(p, "nvidia") for p in sys.path if os.path.isdir(os.path.join(p, "nvidia"))]
    found = []
    for root in dict.fromkeys(os.path.realpath(r) for r in roots):
        for pattern in ("lib", "lib64", "*/lib", "*/lib64", "*/*/lib", "*/*/lib64"):
            for d in sorted(glob.glob(os.path.join(root, pattern))):
                if d not in found and glob.glob(os.path.join(d, "*.so*")):
                    found.append(d)
    return found


def ldconfig_names():
    for cmd in ("ldconfig", "/sbin/ldconfig"):
        try:
            out = subprocess.run([cmd, "-p"], capture_output=True, text=True).stdout
            return {line.split()[0] for line in out.splitlines()[1:] if line.strip()}
        except OSError:
            continue
    return set()


def cuda_libs(dirs):
    known = ldconfig_names()
    missing = []
    for soname in CUDA_SONAMES:
        where = next((d for d in dirs if os.path.exists(os.path.join(d, soname))), None)
        if where is None and soname in known:
            where = "ldconfig"
        if where is None:
            missing.append(soname)
        print(f"   {soname:40} {where or 'NOT FOUND'}")
    if missing:
        print(f"warning: not found: {' '.join(missing)}; the CUDA provider will fail to load. "
              "Set CUDA_LIBS, install PyTorch's or the nvidia-* CUDA 13 and cuDNN 9 wheels, "
              "or CUDA 13 in /usr/local/cuda (the server's log names what it could not load).")


# -- Placement and per-device figures -----------------------------------------

def wait_settled(url, seconds=120):
    """Stats once no replica is loading any more (or after `seconds`)."""
    deadline = time.monotonic() + seconds
    while True:
        stats = get_json(f"{url}/api/optimized/stats")
        states = [r["state"] for p in stats["model_pools"].values() for r in p["replicas"]]
        if "loading" not in states or time.monotonic() > deadline:
            return stats
        time.sleep(0.5)


def check_placement(stats, gpus):
    rows, problems = [], []
    for model, pool in sorted(stats["model_pools"].items()):
        if not pool["replicas"]:
            problems.append(f"{model}: no replica")
        for r in pool["replicas"]:
            device = r.get("device") or "-"
            ok = device.startswith("gpu:") and r["state"] == "ready"
            rows.append({"model": model, "replica": r["id"], "device": device, "state": r["state"],
                         "memory_mb": pool["memory_mb_per_replica"], "reason": r.get("reason") or "", "ok": ok})
            if not ok:
                problems.append(f"{model} replica {r['id']}: {r['state']} on {device} {r.get('reason') or ''}".rstrip())
    for model, why in sorted((stats.get("failed_models") or {}).items()):
        problems.append(f"{model}: failed to load: {why}")
    listed = {d["device"]: d for d in stats["memory"]["devices"]}
    for g in gpus:
        d = listed.get(g["device"])
        if d is None:
            problems.append(f"{g['device']} ({g['name']}) is not in stats memory.devices")
        elif d.get("source") != "nvml":
            problems.append(f"{g['device']}: memory.devices source is {d.get('source')!r}, not 'nvml'")
    if not gpus:
        problems.append("nvidia-smi lists no GPU")
    return {"rows": rows, "problems": problems, "ok": not problems}


def gpu_fraction():
    if os.environ.get("GANTRY__MEMORY__GPU_FRACTION"):
        return float(os.environ["GANTRY__MEMORY__GPU_FRACTION"]), "GANTRY__MEMORY__GPU_FRACTION"
    try:
        import tomllib
        value = tomllib.load(open("config/gantry.toml", "rb")).get("memory", {}).get("gpu_fraction")
    except ImportError:  # Python < 3.11: the one key, by hand
        text = open("config/gantry.toml").read().split("[memory]", 1)[-1].split("\n[", 1)[0]
        m = re.search(r"^gpu_fraction\s*=\s*([\d.]+)", text, re.M)
        value = float(m.group(1)) if m else None
    return (0.9, "Gantry's default") if value is None else (float(value), "config/gantry.toml")


def check_devices(stats, gpus, fraction):
    """Per GPU: (figure, stats, expected, tolerance text, ok) rows."""
    listed = {d["device"]: d for d in stats["memory"]["devices"]}
    result = []
    for g in gpus:
        d = listed.get(g["device"], {})
        reserved = sum(p["memory_mb_per_replica"] for p in stats["model_pools"].values()
                       for r in p["replicas"] if r.get("device") == g["device"] and r["state"] in HOLDING)
        checks = []
        if g["total_mb"] is not None:
            want = math.floor(g["total_mb"] * fraction)
            checks.append(("total_mb", d.get("total_mb"), want, "1%",
                           d.get("total_mb") is not None and abs(d["total_mb"] - want) <= 0.01 * want))
        if g["used_mb"] is not None:
            slack = max(0.05 * g["used_mb"], 256)
            checks.append(("used_mb", d.get("used_mb"), g["used_mb"], f"{slack:.0f} MB",
                           d.get("used_mb") is not None and abs(d["used_mb"] - g["used_mb"]) <= slack))
        checks.append(("reserved_mb", d.get("reserved_mb"), reserved, "exact", d.get("reserved_mb") == reserved))
        checks.append(("free_mb", d.get("free_mb"), None, "reported", True))
        checks.append(("utilization_percent", d.get("utilization_percent"), g["utilization_percent"], "reported", True))
        result.append({"device": g["device"], "name": g["name"], "smi_total_mb": g["total_mb"], "checks": checks,
                       "ok": all(c[4] for c in checks)})
    return result


# -- Outputs, GPU next to CPU -------------------------------------------------

def make_input(spec, rng):
    shape = [d if d >= 0 else (1 if i == 0 else 2) for i, d in enumerate(spec["shape"])]
    n = math.prod(shape)
    dt = spec["datatype"]
    if dt in ("FP16", "FP32", "FP64", "BF16"):
        data = [rng.random() for _ in range(n)]
    elif dt == "BOOL":
        data = [rng.random() < 0.5 for _ in range(n)]
    elif dt == "BYTES":
        data = ["gantry"] * n
    else:  # integers: small, so that any index or id they are stays in range
        data = [rng.randrange(0, 4) for _ in range(n)]
    return {"name": spec["name"], "shape": shape, "datatype": dt, "data": data}


def post(url, body):
    req = urllib.request.Request(url, data=body, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as answer:
            return json.load(answer), None
    except urllib.error.HTTPError as e:
        return None, f"HTTP {e.code}: {e.read()[:300].decode(errors='replace')}"
    except OSError as e:
        return None, str(e)


def flat(data):
    for x in data:
        if isinstance(x, list):
            yield from flat(x)
        else:
            yield float(x)


def compare(gpu_out, cpu_out):
    """Rows per output name: max abs diff, max rel diff, tolerance, ok."""
    rows = []
    gpu = {o["name"]: o for o in gpu_out["outputs"]}
    for c in cpu_out["outputs"]:
        g = gpu.get(c["name"])
        row = {"output": c["name"], "shape": c["shape"], "datatype": c["datatype"]}
        if g is None or g["shape"] != c["shape"] or g["datatype"] != c["datatype"]:
            row.update(ok=False, problem=f"GPU answer: {None if g is None else (g['shape'], g['datatype'])}")
            rows.append(row)
            continue
        a, b = list(flat(g["data"])), list(flat(c["data"]))
        # NaN on both sides agrees; on one side only, it is infinitely off.
        diffs = [(0.0 if math.isnan(x) and math.isnan(y) else math.inf) if math.isnan(x - y) else abs(x - y)
                 for x, y in zip(a, b)]
        rels = [0.0 if not d else math.inf if math.isnan(y) else d / max(abs(y), 1e-6) for d, y in zip(diffs, b)]
        cpu_max = max((abs(y) for y in b if not math.isnan(y)), default=0.0)
        tol = 1e-3 * max(1.0, cpu_max)
        max_abs = max(diffs, default=0.0)
        ok = len(a) == len(b) and max_abs <= tol
        row.update(max_abs_diff=max_abs, max_rel_diff=max(rels, default=0.0), cpu_max_abs=cpu_max,
                   tolerance=tol, ok=ok, **({} if len(a) == len(b) else {"problem": "lengths differ"}))
        rows.append(row)
    return rows


def outputs(gpu_url, cpu_url):
    models = sorted(get_json(f"{gpu_url}/api/optimized/stats")["model_pools"])
    result = []
    for model in models:
        meta = get_json(f"{gpu_url}/v2/models/{model}")
        rng = random.Random(1)
        inputs = [make_input(spec, rng) for spec in meta["inputs"]]
        body = json.dumps({"inputs": inputs}).encode()
        (g, g_err), (c, c_err) = (post(f"{u}/v2/models/{model}/infer", body) for u in (gpu_url, cpu_url))
        entry = {"model": model, "inputs": [{k: i[k] for k in ("name", "shape", "datatype")} for i in inputs]}
        if g_err or c_err:
            entry.update(ok=False, problem=f"GPU: {g_err or 'ok'}; CPU: {c_err or 'ok'}", rows=[])
        else:
            rows = compare(g, c)
            entry.update(rows=rows, ok=bool(rows) and all(r["ok"] for r in rows))
        result.append(entry)
    return {"models": result, "ok": bool(result) and all(m["ok"] for m in result)}


def print_outputs(res):
    rows = []
    for m in res["models"]:
        if not m["rows"]:
            rows.append((m["model"], "-", "-", "-", "-", "FAIL: " + m["problem"]))
        for r in m["rows"]:
            if "max_abs_diff" not in r:
                rows.append((m["model"], r["output"], "-", "-", "-", "FAIL: " + r["problem"]))
                continue
            rows.append((m["model"], r["output"], f"{r['max_abs_diff']:.3g}", f"{r['max_rel_diff']:.3g}",
                         f"{r['tolerance']:.3g}", "PASS" if r["ok"] else "FAIL"))
    return table(("Model", "Output", "Max abs diff", "Max rel diff", "Tolerance", "Result"), rows)


def print_devices(res):
    rows = []
    for d in res:
        for name, have, want, tol, ok in d["checks"]:
            rows.append((d["device"], name, "-" if have is None else have, "-" if want is None else f"{want:g}",
                         tol, "OK" if ok else "MISS"))
    return table(("Device", "Figure", "Stats", "Expected (nvidia-smi)", "Within", "Result"), rows)


def print_placement(res):
    return table(("Model", "Replica", "Device", "State", "MB reserved", "Reason"),
                 [(r["model"], r["replica"], r["device"], r["state"], r["memory_mb"], r["reason"] or "-")
                  for r in res["rows"]])


def main(argv):
    cmd, args = argv[1], argv[2:]
    if cmd == "nvidia-libs":
        print("\n".join(nvidia_libs()))
    elif cmd == "cuda-libs":
        cuda_libs(args)
    elif cmd == "placement":
        stats = wait_settled(args[0])
        res = check_placement(stats, smi_gpus())
        save(args[1], res)
        print(print_placement(res))
        if not res["ok"]:
            print("placement: FAIL\n" + "\n".join("  " + p for p in res["problems"]), file=sys.stderr)
            excerpt = {"replicas": {m: [{k: r.get(k) for k in ("id", "state", "device", "reason")} for r in p["replicas"]]
                                    for m, p in stats["model_pools"].items()},
                       "memory": stats["memory"], "failed_models": stats.get("failed_models")}
            print("stats excerpt:\n" + json.dumps(excerpt, indent=1), file=sys.stderr)
            return 1
        print("placement: PASS")
    elif cmd == "devices":
        stats = get_json(f"{args[0]}/api/optimized/stats")
        gpus = smi_gpus()  # right after the stats, for memory.used
        fraction, source = gpu_fraction()
        res = {"fraction": fraction, "fraction_from": source, "devices": check_devices(stats, gpus, fraction)}
        save(args[1], res)
        print(f"memory.gpu_fraction {fraction:g} ({source})")
        print(print_devices(res["devices"]))
    elif cmd == "outputs":
        res = outputs(args[0], args[1])
        save(args[2], res)
        print(print_outputs(res))
        print("outputs:", "PASS" if res["ok"] else "FAIL")
        return 0 if res["ok"] else 1
    elif cmd == "device-index":
        rows = [r for r in json.load(open(args[1]))["rows"] if r["model"] == args[0]]
        print(rows[0]["device"].split(":", 1)[1] if rows and rows[0]["device"].startswith("gpu:") else 0)
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
