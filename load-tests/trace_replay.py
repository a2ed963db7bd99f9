"""Replays an open-loop trace shaped like public serverless traces against a
Gantry server and reports what it answered in time.

Arrivals are Gamma-distributed (a chosen coefficient of variation: bursts),
each request picks a model by Zipf popularity, and which models are popular
is reshuffled every `--rotate-s` seconds. Requests are sent at their
scheduled instants whether or not earlier ones were answered, and latency
counts from the scheduled instant, so a server that falls behind pays for
it. The server's RSS is sampled every 50 ms.

Usage: trace_replay.py PORT PID --models N --seconds S --rate R [--cv C] [--zipf A]
       [--rotate-s T] [--seed K] [--target-ms M] [--timeout-ms M] --out FILE [--records FILE]
"""
import argparse
import asyncio
import json
import time

import aiohttp
import numpy as np


def schedule(args):
    """(offset in seconds, model index) for every request of the trace."""
    rng = np.random.default_rng(args.seed)
    shape = 1.0 / (args.cv**2)
    scale = 1.0 / (args.rate * shape)
    gaps = rng.gamma(shape, scale, size=int(args.rate * args.seconds * 2) + 100)
    times = np.cumsum(gaps)
    times = times[times < args.seconds]
    ranks = np.arange(1, args.models + 1, dtype=float)
    weights = ranks ** -args.zipf
    weights /= weights.sum()
    orders = {}
    out = []
    for t in times:
        epoch = int(t // args.rotate_s)
        if epoch not in orders:
            orders[epoch] = rng.permutation(args.models)
        rank = rng.choice(args.models, p=weights)
        out.append((float(t), int(orders[epoch][rank])))
    return out


def rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) // 1024
    return 0


async def main(args):
    plan = schedule(args)
    url = f"http://127.0.0.1:{args.port}/api/optimized/predict"
    features = {"shape": [1, 64], "datatype": "FP32", "data": [0.5] * 64}
    results = []
    peak = [rss_mb(args.pid)]
    done = asyncio.Event()

    async def sample():
        while not done.is_set():
            peak[0] = max(peak[0], rss_mb(args.pid))
            await asyncio.sleep(0.05)

    connector = aiohttp.TCPConnector(limit=0)
    headers = {"x-request-timeout-ms": str(args.timeout_ms), "accept-encoding": "identity"}
    async with aiohttp.ClientSession(connector=connector) as session:
        start = time.perf_counter() + 0.2

        async def one(offset, model):
            at = start + offset
            delay = at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            body = {"model": f"mlp-{model:02d}", "cache": False, "inputs": {"features": features}}
            try:
                async with session.post(url, json=body, headers=headers) as r:
                    await r.read()
                    status = r.status
            except aiohttp.ClientError:
                status = 0
            results.append((model, status, (time.perf_counter() - at) * 1000.0, offset))

        sampler = asyncio.create_task(sample())
        await asyncio.gather(*(one(t, m) for t, m in plan))
        done.set()
        await sampler
    latencies = sorted(ms for _, status, ms, _ in results if status == 200)
    statuses = {}
    for _, status, _, _ in results:
        statuses[str(status)] = statuses.get(str(status), 0) + 1
    within = sum(1 for _, status, ms, _ in results if status == 200 and ms <= args.target_ms)
    pct = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))] if latencies else None
    summary = {
        "requests": len(results),
        "statuses": statuses,
        "within_target": within,
        "share_within_target": within / len(results) if results else 0.0,
        "goodput_per_s": within / args.seconds,
        "p50_ms": pct(0.5),
        "p99_ms": pct(0.99),
        "peak_rss_mb": peak[0],
    }
    with open(args.out, "w") as f:
        json.dump(summary, f)
    if args.records:
        with open(args.records, "w") as f:
            json.dump(sorted(results, key=lambda r: r[3]), f)
    print(json.dumps(summary))


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("port")
    p.add_argument("pid", type=int)
    p.add_argument("--models", type=int, default=12)
    p.add_argument("--seconds", type=float, default=40)
    p.add_argument("--rate", type=float, default=150)
    p.add_argument("--cv", type=float, default=2.0)
    p.add_argument("--zipf", type=float, default=1.1)
    p.add_argument("--rotate-s", type=float, default=20)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--target-ms", type=float, default=100)
    p.add_argument("--timeout-ms", type=int, default=2000)
    p.add_argument("--out", required=True)
    p.add_argument("--records", help="writes every request as [model, status, ms, offset s]")
    asyncio.run(main(p.parse_args()))
