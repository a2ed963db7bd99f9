"""Writes load-tests/SLO_RESULTS.md from the cells load-tests/slo.sh ran (one
slo-load JSON object a line, labelled with model, target, factor and
capacity). Usage: slo_report.py CELLS TARGET_MS SECONDS COMMIT [SERVER_CPUS LOAD_CPUS]
(the cores each ran on, as taskset lists them, or `all`)"""
import datetime
import json
import os
import platform
import sys

cells_file, target_ms, seconds, commit = sys.argv[1], float(sys.argv[2]), sys.argv[3], sys.argv[4]
server_cpus, load_cpus = (sys.argv[5:7] + ["all", "all"])[:2]
shared = server_cpus == "all" or load_cpus == "all"
settings = os.environ.get("MODEL_SETTINGS", "").strip()
cells = [json.loads(line) for line in open(cells_file) if line.strip()]
# Each open-loop cell is judged against the capacity read right before and
# right after its server's cells (closed loop on the server without a
# target): their mean, or the one there is.
for i, c in enumerate(cells):
    if c["target"] == "closed":
        continue
    before = next((b["ok_per_s"] for b in reversed(cells[:i]) if b["model"] == c["model"] and b["target"] == "closed"), None)
    after = next((a["ok_per_s"] for a in cells[i + 1:] if a["model"] == c["model"] and a["target"] == "closed"), None)
    readings = [r for r in (before, after) if r is not None]
    c["judged_capacity"] = sum(readings) / len(readings) if readings else c["capacity"]
cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
ram_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
refusal_at_once_ms = target_ms / 5
# A cell whose generator sent late by more than this (p99) measured the
# machine's spare cores, not the server: its latencies include the lag.
lag_limit_ms = target_ms / 10


def ms(v):
    return "–" if v is None else f"{v:.1f}"


def cpu_per_answer(c):
    cpu = c.get("server_cpu_s")
    answers = sum(c["statuses"].values())
    if not cpu or not answers:
        return "–"
    return f"{1e6 * cpu['http'] / answers:.0f} + {1e6 * cpu['rest'] / answers:.0f}"


def others(c):
    return {k: v for k, v in c["statuses"].items() if k != "200"}


print("# Latency targets under open-loop load")
print()
print(f"`make bench-slo` (load-tests/slo.sh), commit {commit}, {datetime.date.today()}; "
      f"{os.cpu_count()} cores ({cpu}), {ram_gib:.1f} GiB RAM, {platform.system()}. " +
      ("The load generator (`slo-load`, one thread) shares the cores with the server." if shared else
       f"The load generator (`slo-load`, one thread) runs on core {load_cpus}, the server on core(s) "
       f"{server_cpus} (taskset), so a cell measures the server, not what the generator left it "
       f"(`SPLIT=no` shares them)."))
print()
print(f"Capacity: closed loop, 32 callers, {seconds} s, on a server without a target (200s a second), read "
      "before the open-loop cells and again after each server's cells; a cell's goodput / capacity is against "
      "the mean of the readings right before and after its server's cells (this machine's speed drifts by "
      "10-20% within a minute). "
      f"Open loop for {seconds} s a cell: Poisson arrivals at 0.5, 1, 2 and 4 x the reading right before its "
      "server's cells, sent "
      "whether or not earlier ones were answered, latency counted from each arrival's scheduled time "
      f"(a generator that falls behind shows in the latencies). Every cell is judged against {target_ms:g} ms: "
      f"goodput = 200s within it a second; attainment = their share of the 200s. **with** = the models' "
      f"model.toml sets `latency_target_ms = {target_ms:g}`; **without** = today's queue and window only. "
      "`mlp`: 64 -> 2048 -> 2048 -> 2048 -> 10 (load-tests/slo_repository.py), v2 JSON bodies, "
      "`max_batch_size = 16`; `unet-seg`: the demo UNet through the v2 binary extension, `max_batch_size = 8`." +
      (" Every model.toml also sets " + ", ".join(f"`{line.strip()}`" for line in settings.splitlines() if line.strip()) +
       " (MODEL_SETTINGS)." if settings else ""))
print()
print("| Model | Target | Load | Offered/s | 200 | Other answers | Goodput/s | Goodput / capacity | Attainment | Server's attainment | 200 p50 ms | 200 p99 ms | Others p99 ms | Generator lag p99 ms | Server CPU µs/answer: HTTP + rest |")
print("| --- | --- | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
for c in cells:
    if c["target"] == "closed":
        print(f"| {c['model']} | capacity | closed, 32 | – | {c['statuses'].get('200', 0)} | "
              f"{', '.join(f'{k}: {v}' for k, v in others(c).items()) or '–'} | {c['ok_per_s']:.1f} | 1.00 | "
              f"{c['attainment'] if c['attainment'] is not None else '–'} | – | {ms(c['ok_ms']['p50'])} | {ms(c['ok_ms']['p99'])} | "
              f"{ms(c['other_ms']['p99'])} | – | {cpu_per_answer(c)} |")
        continue
    offered = c["mode"]["open_loop"]["rate_per_s"]
    other = ", ".join(f"{k}: {v}" for k, v in others(c).items()) or "–"
    if c["not_sent"]:
        other += f" (not sent: {c['not_sent']})"
    lag = c["send_lag_ms"]["p99"] or 0.0
    lag_note = " (behind)" if lag > lag_limit_ms else ""
    attainment = "–" if c["attainment"] is None else f"{100 * c['attainment']:.2f}%"
    server = c.get("server") or {}
    answered = server.get("within_target", 0) + server.get("past_target", 0)
    server_attainment = f"{100 * server['within_target'] / answered:.2f}%" if answered else "–"
    print(f"| {c['model']} | {'with' if c['target'] == 'target' else 'without'} | {c['factor']:g}x | {offered:.0f} | "
          f"{c['statuses'].get('200', 0)} | {other} | {c['goodput_per_s']:.1f} | {c['goodput_per_s'] / c['judged_capacity']:.2f} | "
          f"{attainment} | {server_attainment} | {ms(c['ok_ms']['p50'])} | {ms(c['ok_ms']['p99'])} | {ms(c['other_ms']['p99'])} | "
          f"{ms(c['send_lag_ms']['p99'])}{lag_note} | {cpu_per_answer(c)} |")
print()
print("Server CPU µs/answer: the server's CPU time over the cell (utime + stime from /proc) per answer of any "
      "status, split between its HTTP workers and the rest (batchers, replicas, ONNX Runtime's threads, "
      "which spin a little after each run while the load is light). Under overload most answers are "
      "refusals: what they cost the HTTP workers is core time the model's runs do not get, and it bounds "
      "goodput at 2x capacity to about 1 - (refusals' share of the core) of capacity.")
print("Server's attainment: the same share as the server counted it (`gantry_requests_within_target_total` "
      "and `..._past_target_total` over the cell, time from the request's arrival to its answer, server "
      "side; only with a target). The generator's own figure also holds the time its requests waited for "
      "the cores before they were sent and after they were answered.")
print()
print(f"(behind): the generator's p99 send lag passed {lag_limit_ms:g} ms: it could not keep to its "
      "schedule, so that cell measured what the cores had to spare as much as the "
      "server (its latencies include the lag).")
print()
print(f"Goals (issue: latency targets), for the cells with a target:")
print()
print("| Goal | Model | Measured | |")
print("| --- | --- | --- | --- |")
for c in cells:
    if c["target"] != "target":
        continue
    model, f = c["model"], c["factor"]
    lag = c["send_lag_ms"]["p99"] or 0.0
    if lag > lag_limit_ms and f in (0.5, 2):
        print(f"| {f:g}x capacity: the generator keeps its schedule (lag p99 <= {lag_limit_ms:g} ms) | {model} | "
              f"{lag:.1f} ms: the cell below measured the machine | MISS |")
    if f == 2:
        share = c["goodput_per_s"] / c["judged_capacity"]
        offered = c["mode"]["open_loop"]["rate_per_s"]
        ok = share >= 0.9
        print(f"| 2x capacity: goodput >= 0.9 x capacity | {model} | {share:.3f} ({c['goodput_per_s']:.0f} of {c['judged_capacity']:.0f}/s; offered {offered / c['judged_capacity']:.2f}x of it) | {'PASS' if ok else 'MISS'} |")
        att = c["attainment"] or 0.0
        print(f"| 2x capacity: >= 99% of 200s within {target_ms:g} ms | {model} | {100 * att:.2f}% | {'PASS' if att >= 0.99 else 'MISS'} |")
        rest = others(c)
        at_once = set(rest) <= {"429"} and (c["other_ms"]["p99"] or 0) <= refusal_at_once_ms and not c["not_sent"]
        print(f"| 2x capacity: every other answer a 429 at once (p99 <= {refusal_at_once_ms:g} ms) | {model} | "
              f"{', '.join(f'{k}: {v}' for k, v in rest.items()) or 'none'}, p99 {ms(c['other_ms']['p99'])} ms | {'PASS' if at_once else 'MISS'} |")
    if f == 0.5:
        none_refused = not others(c)
        print(f"| 0.5x capacity: nothing refused | {model} | {', '.join(f'{k}: {v}' for k, v in others(c).items()) or 'none'} | {'PASS' if none_refused else 'MISS'} |")
        p99 = c["ok_ms"]["p99"]
        print(f"| 0.5x capacity: p99 within {target_ms:g} ms | {model} | {ms(p99)} ms | {'PASS' if p99 is not None and p99 <= target_ms else 'MISS'} |")
print()
knobs = [f"SECONDS_EACH={seconds}", f"TARGET_MS={target_ms:g}"] + (["SPLIT=no"] if os.environ.get("SPLIT") == "no" else [])
knobs += [f"MODEL_SETTINGS={settings!r}"] if settings else []
print(f"Command: `make bench-slo` ({', '.join(knobs)}).")
