"""load-tests/PROFILE.md from `callgrind_annotate --inclusive=yes` output.

Usage: profile_report.py INCLUSIVE.txt REQUESTS COMMAND COMMIT

Each stage of a small request's path is stood for by the functions whose
names match its patterns; a stage's figure is the largest inclusive count
among them (the outermost one: nested matches are inside it), or their sum
when the patterns name different steps, divided by the number of
requests. Stages nest ("all of it" rows hold the rows after them). Callgrind counts user-space instructions only: the
kernel's side of socket reads and writes, and time spent waiting, are not
in these figures.
"""

import datetime
import os
import re
import sys

# (stage, what it covers, patterns on demangled function names)
STAGES = [
    ("HTTP/1 request parsing", "actix-http's decoder: request line, headers, body framing",
     [r"actix_http::h1::codec::Codec as tokio_util::codec::decoder::Decoder>::decode"]),
    ("HTTP/1 answer writing", "actix-http's encoder: status line, headers, body",
     [r"actix_http::h1::codec::Codec as tokio_util::codec::encoder::Encoder"]),
    ("Request id and span", "the id, the request's tracing span and its fields",
     [r"^tracing::span::Span::new$"]),
    ("Handler, all of it", "gantry's predict handler: body read, decode, the inference's round trip, answer",
     [r"^gantry::api::predict::predict::\{\{closure\}\}$"]),
    ("Body read", "the body's bytes gathered from the payload stream",
     [r"^gantry::api::read_body::\{\{closure\}\}$"]),
    ("Request JSON", "the body's structure pass lifting the data array out (LiftedBody::new), "
     "then serde_json on the rest",
     [r"^gantry::codec::lift::LiftedBody::new$", r"^serde_json::de::from_trait$"]),
    ("Tensor decode", "the data array into FP32 bytes (the codec's scanner)",
     [r"^gantry::codec::tensor_from_json$"]),
    ("Batcher", "queueing, the window, dispatch to a replica, the batch's return",
     [r"Batcher as actix::handler::Handler<gantry_actors::messages::Enqueue>>::handle$",
      r"Batcher as actix::handler::Handler<gantry_actors::messages::BatchDone>>::handle$"]),
    ("Run on the worker, all of it", "the request run on the HTTP worker's thread (runtime.inline_run_us): the engine's lock, the run, its counts",
     [r"^gantry_actors::inline_run::InlineLane::run$"]),
    ("Replica, all of it", "the batch on its replica: stacking, the engine, splitting",
     [r"Replica as actix::handler::Handler<gantry_actors::messages::RunBatch>>::handle$"]),
    ("ONNX Runtime run", "Session::run alone: the MLP's inference",
     [r"^ort::session::run::<impl ort::session::Session>::run$"]),
    ("Answer", "the answer's JSON and the HTTP response",
     [r"^gantry::api::predict::answer$"]),
    ("Outcome and metrics", "the request's outcome recorded: counters, histograms, statistics",
     [r"^gantry::service::outcome::Pending::finish$"]),
    ("Allocator", "malloc, free, realloc (everywhere, inclusive)",
     [r"^malloc$", r"^free$", r"^realloc$"]),
]


LINE = re.compile(r"^\s*([\d,]+)\s+\(\s*[\d.]+%\)\s+(.*?)\s*$")


def function_name(where):
    """`file:function [binary]` -> `function`."""
    where = re.sub(r"\s+\[[^\]]*\]$", "", where)
    where = re.sub(r"\s+\([\d,]+x\)$", "", where)
    # The file part ends at the first ':' that is not part of '::'.
    m = re.match(r"^(\?\?\?|[^:]*?(?<!:)):(?!:)(.*)$", where)
    return m.group(2) if m else where


def main():
    path, requests, command, commit = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    total = None
    functions = {}
    for line in open(path, errors="replace"):
        m = LINE.match(line)
        if not m:
            continue
        count = int(m.group(1).replace(",", ""))
        where = m.group(2)
        if "PROGRAM TOTALS" in where:
            total = count
            continue
        name = function_name(where)
        functions[name] = max(count, functions.get(name, 0))
    if total is None:
        sys.exit("profile_report: no PROGRAM TOTALS in the callgrind output")
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "unknown")
    out = [
        "# `make profile` results\n",
        "Written by `load-tests/profile.sh` (callgrind); every run rewrites this file.\n",
        f"- Date: {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- Machine: {os.cpu_count()} cores, {cpu}",
        f"- Command: `{command}`",
        f"- Code: commit {commit}",
        f"- Workload: {requests} REST JSON predictions of tiny-classifier (64 FP32 in, 10 out), one at a time on "
        "one keep-alive connection, cache off; counted after 200 warm-up requests; "
        + ("every request through the batcher and a replica's thread (`PATH_TAKEN=batcher`, "
           "`runtime.inline_run_us = 0`)\n" if os.environ.get("PATH_TAKEN") == "batcher" else
           "each request run on the worker that received it, as outside valgrind (`runtime.inline_run_us` "
           "raised to 10 ms: under callgrind every run is some 50 times slower)\n"),
        f"Instructions per request, all threads: **{total / requests:,.0f}** (user space; the kernel's socket work "
        "and waiting are not counted).\n",
        "| Stage | Covers | Instructions per request | Share |",
        "| --- | --- | ---: | ---: |",
    ]
    for stage, covers, patterns in STAGES:
        matched = [(c, n) for n, c in functions.items() if any(re.search(p, n) for p in patterns)]
        if not matched:
            out.append(f"| {stage} | {covers} | not seen | |")
            continue
        # One pattern's matches nest (take the outermost); different
        # patterns are different steps (add them).
        count = sum(max((c for n, c in functions.items() if re.search(p, n)), default=0) for p in patterns)
        out.append(f"| {stage} | {covers} | {count / requests:,.0f} | {100 * count / total:.1f}% |")
    out += [
        "\nThe heaviest functions of Gantry and its crates (inclusive, per request):\n",
        "| Function | Instructions per request |",
        "| --- | ---: |",
    ]
    ours = sorted(((c, n) for n, c in functions.items()
                   if re.match(r"<?(gantry|ort::|serde_json|actix_http::h1::codec)", n) and "{{closure}}" not in n),
                  reverse=True)
    for count, name in ours[:30]:
        short = re.sub(r"::h[0-9a-f]{16}$", "", name)
        if len(short) > 110:
            short = short[:107] + "..."
        out.append(f"| `{short.replace('|', '/')}` | {count / requests:,.0f} |")
    print("\n".join(out))


main()
