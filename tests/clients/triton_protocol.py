"""Drives the rest of Triton's HTTP protocol with the official Triton client:
model configuration, inference statistics, model control (load with and
without a config override, unload, the repository index), compressed
requests and responses, and Triton's wording for an unknown model.

Usage: triton_protocol.py HOST:PORT

Expects a loopback server (model control needs no token there) serving the
`dtypes` fixture and the `tiny-classifier` demo model, with a repository
folder `broken` whose model.onnx does not load. Every check runs three
times: with the sync client, with the sync client's gevent-based
`async_infer` for the inference calls, and with the asyncio client; each run
ends by reloading `dtypes` as model.toml has it. Prints one line per check
and exits non-zero on the first failure. Run by tests/it/clients.rs. The dtypes
tensors come from triton_client.py, next to this file.
"""

import asyncio
import functools
import itertools
import json
import os
import sys
import time
import traceback

import ml_dtypes
import numpy as np
import tritonclient.http as httpclient
import tritonclient.http.aio as aiohttpclient
from tritonclient.utils import InferenceServerException

from triton_client import DTYPE_TENSORS, dtypes_expected, dtypes_inputs, make_inputs

DTYPES = "dtypes"
CLASSIFIER = "tiny-classifier"
CALLS_MODEL = "night-calls"
LABELS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "../../models/night-calls/labels.txt")
BROKEN = "broken"
UNKNOWN = "no-such-model"
DELAY = "max_queue_delay_microseconds"
UNKNOWN_WORDING = f"Request for unknown model: '{UNKNOWN}' is not found"
OUTPUTS = [t[3] for t in DTYPE_TENSORS]
VALUES = dtypes_inputs()
EXPECTED = dtypes_expected(VALUES)

# The client that runs now, in front of every label.
TAG = ""


def check(label, condition, detail=""):
    if not condition:
        print(f"FAIL {TAG}{label}: {detail}", flush=True)
        sys.exit(1)
    print(f"ok   {TAG}{label}", flush=True)


def expect_error(label, call, statuses, contains=None):
    """`call()` raises InferenceServerException with a status in `statuses`
    and, when given, a message containing `contains`."""
    try:
        got = call()
    except InferenceServerException as e:
        message = e.message() or ""
        check(
            label,
            e.status() in statuses and (contains is None or contains in message),
            f"status={e.status()!r} (want {' or '.join(statuses)}), message={message!r}"
            + (f" (want it to contain {contains!r})" if contains else ""),
        )
        return
    except Exception as e:  # noqa: BLE001 - any other failure is reported
        check(label, False, f"raised {type(e).__name__}: {e} instead of InferenceServerException")
    shown = got.get_response() if hasattr(got, "get_response") else got
    check(label, False, f"no exception; answered {shown!r}")


# What the checks call; the same names on both adapters.
CALLS = [
    "get_server_metadata", "get_model_metadata", "get_model_config", "get_model_repository_index",
    "get_inference_statistics", "load_model", "unload_model", "is_model_ready", "infer",
]


class SyncClient:
    """tritonclient.http.InferenceServerClient; with `gevent`, inference goes
    through `async_infer(...).get_result()` (same arguments as `infer`)."""

    def __init__(self, url, gevent):
        self.client = httpclient.InferenceServerClient(url=url)
        for name in CALLS:
            setattr(self, name, getattr(self.client, name))
        if gevent:
            self.infer = lambda *a, **kw: self.client.async_infer(*a, **kw).get_result()

    def close(self):
        self.client.close()


class AioClient:
    """tritonclient.http.aio.InferenceServerClient; every call is awaited on
    an event loop of its own, so the checks read the same for both."""

    def __init__(self, url):
        self.loop = asyncio.new_event_loop()

        async def make():
            # aiohttp wants its session created inside a running loop.
            return aiohttpclient.InferenceServerClient(url=url)

        self.client = self.loop.run_until_complete(make())
        for name in CALLS:
            setattr(self, name, self.awaiting(getattr(self.client, name)))

    def awaiting(self, method):
        return lambda *a, **kw: self.loop.run_until_complete(method(*a, **kw))

    def close(self):
        self.loop.run_until_complete(self.client.close())
        self.loop.close()


def infer_dtypes(c, binary=True, **kwargs):
    outputs = [httpclient.InferRequestedOutput(n, binary_data=binary) for n in OUTPUTS]
    return c.infer(DTYPES, make_inputs(VALUES, binary), outputs=outputs, **kwargs)


def mismatch(result, want):
    """The first output of `result` that differs from `want` (value or
    dtype), described; None when all are equal."""
    for name in OUTPUTS:
        got = result.as_numpy(name)
        if got is None or got.dtype != want[name].dtype or not np.array_equal(got, want[name]):
            return (
                f"{name}: got {got!r} (dtype {getattr(got, 'dtype', None)}), want {want[name]!r} "
                f"(dtype {want[name].dtype}); response {result.get_response()}"
            )
    return None


def check_dtypes_infer(label, c, **kwargs):
    wrong = mismatch(infer_dtypes(c, **kwargs), EXPECTED)
    check(label, wrong is None, wrong)


FRESH = np.random.default_rng()


def classify(c, cols=64, features=None):
    """One row of fresh random features (so the result cache cannot answer), or `features`."""
    if features is None:
        features = FRESH.random((1, cols), dtype=np.float32)
    tensor = httpclient.InferInput("features", list(features.shape), "FP32")
    tensor.set_data_from_numpy(features)
    return c.infer(CLASSIFIER, [tensor], outputs=[httpclient.InferRequestedOutput("logits")])


def io_of(entries):
    """name, data_type and dims of each config input/output (extra keys aside)."""
    return [{k: e.get(k) for k in ("name", "data_type", "dims")} for e in entries or []]


def group_of(cfg):
    """instance_group[0] of a config ({} when there is none)."""
    groups = cfg.get("instance_group")
    return groups[0] if isinstance(groups, list) and groups and isinstance(groups[0], dict) else {}


def delay_of(cfg):
    return (cfg.get("dynamic_batching") or {}).get(DELAY)


def check_fields(label, cfg, fields):
    for key, got, want in fields:
        shown = f" == {want!r}" if len(repr(want)) <= 40 else ""
        check(f"{label}: {key}{shown}", got == want, f"got {got!r}, want {want!r}; config {cfg}")


def check_config(c):
    meta = c.get_server_metadata()
    wanted = {"binary_tensor_data", "model_repository", "model_configuration", "statistics"}
    missing = sorted(wanted - set(meta.get("extensions") or []))
    check("get_server_metadata: extensions", not missing, f"missing {missing}; {meta}")

    cfg = c.get_model_config(CLASSIFIER)
    group = group_of(cfg)
    check_fields("get_model_config(tiny-classifier)", cfg, [
        ("name", cfg.get("name"), CLASSIFIER),
        ("platform", cfg.get("platform"), "onnxruntime_onnx"),
        ("backend", cfg.get("backend"), "onnxruntime"),
        ("max_batch_size", cfg.get("max_batch_size"), 32),
        ("input", io_of(cfg.get("input")), [{"name": "features", "data_type": "TYPE_FP32", "dims": [64]}]),
        ("output", io_of(cfg.get("output")), [{"name": "logits", "data_type": "TYPE_FP32", "dims": [10]}]),
        (f"dynamic_batching.{DELAY}", delay_of(cfg), 2000),
        ("instance_group[0] count, kind", (group.get("count"), group.get("kind")), (1, "KIND_CPU")),
    ])

    # Inputs and outputs by name: x_* and y_*, each TYPE_<datatype> with dims [2].
    cfg = c.get_model_config(DTYPES)
    fields = [("max_batch_size", cfg.get("max_batch_size"), 8)]
    for key, column in [("input", 0), ("output", 3)]:
        got = {e["name"]: e for e in io_of(cfg.get(key))}
        want = {t[column]: {"name": t[column], "data_type": "TYPE_" + t[1], "dims": [2]} for t in DTYPE_TENSORS}
        fields.append((key, got, want))
    check_fields("get_model_config(dtypes)", cfg, fields)

    meta = c.get_model_metadata(CLASSIFIER)
    versions = meta.get("versions")
    check("get_model_metadata(tiny-classifier): versions", isinstance(versions, list) and versions, f"{meta}")
    version = str(versions[0])
    plain = c.get_model_config(CLASSIFIER)
    cfg = c.get_model_config(CLASSIFIER, model_version=version)
    check(
        f"get_model_config(tiny-classifier, version {version!r}) equals the unversioned one",
        all(cfg.get(k) == plain.get(k) for k in ("name", "max_batch_size", "input", "output")),
        f"versioned {cfg}; unversioned {plain}",
    )
    wrong = "987654321" if version != "987654321" else "987654322"
    expect_error(
        f"get_model_config(tiny-classifier, version {wrong!r}) raises 404",
        lambda: c.get_model_config(CLASSIFIER, model_version=wrong),
        ["404"],
    )


def check_unknown(c):
    for label, call in [
        ("get_model_metadata(unknown)", lambda: c.get_model_metadata(UNKNOWN)),
        ("infer(unknown)", lambda: c.infer(UNKNOWN, make_inputs(VALUES, True))),
        ("get_inference_statistics(unknown)", lambda: c.get_inference_statistics(UNKNOWN)),
    ]:
        contains = None if "statistics" in label else UNKNOWN_WORDING
        expect_error(f"{label} raises 404", call, ["404"], contains)


def is_count(p):
    return isinstance(p, dict) and type(p.get("count")) is int and type(p.get("ns")) is int


PHASE_KINDS = ["compute_input", "compute_infer", "compute_output"]
STAT_KINDS = ["success", "fail", "queue", *PHASE_KINDS, "cache_hit", "cache_miss"]


def classifier_stats(c):
    stats = c.get_inference_statistics(CLASSIFIER)
    entries = stats.get("model_stats") if isinstance(stats, dict) else None
    check(
        "get_inference_statistics(tiny-classifier): one entry for it",
        isinstance(entries, list) and len(entries) == 1 and entries[0].get("name") == CLASSIFIER,
        f"{stats}",
    )
    e = entries[0]
    inference = e.get("inference_stats") or {}
    batches = e.get("batch_stats")
    wrong = [] if "version" in e else ["version"]
    wrong += [k for k in ("last_inference", "inference_count", "execution_count") if type(e.get(k)) is not int]
    wrong += [f"inference_stats.{k}" for k in STAT_KINDS if not is_count(inference.get(k))]
    if not isinstance(batches, list):
        wrong.append("batch_stats")
    else:
        wrong += [
            f"batch_stats[{i}]"
            for i, b in enumerate(batches)
            if type(b.get("batch_size")) is not int or not all(is_count(b.get(k)) for k in PHASE_KINDS)
        ]
    check("get_inference_statistics(tiny-classifier): fields", not wrong, f"wrong or missing {wrong}; {e}")
    return e


def settled(c, kind, at_least):
    """Stats once `kind`.count has reached `at_least` (at most 2 s): a
    server may record a request just after answering it. Overcounting
    still fails the exact checks that follow."""
    deadline = time.monotonic() + 2
    while True:
        e = classifier_stats(c)
        if e["inference_stats"][kind]["count"] >= at_least or time.monotonic() > deadline:
            return e
        time.sleep(0.05)


def settled_executions(c, before, more):
    """Stats once execution_count has grown from `before` by at least
    `more` (at most 2 s); with `more` 0, the count once it stops moving."""
    deadline = time.monotonic() + 2
    last = None
    while True:
        e = classifier_stats(c)
        grown = e["execution_count"] >= before + more
        if (more and grown) or (not more and last == e["execution_count"]) or time.monotonic() > deadline:
            return e if more else e["execution_count"]
        last = e["execution_count"]
        time.sleep(0.05)


def check_statistics(c):
    n = 5
    before = classifier_stats(c)
    for _ in range(n):
        classify(c)
    after = settled(c, "success", before["inference_stats"]["success"]["count"] + n)
    label = f"stats after {n} single-row inferences"
    for what, path, fits in [
        (f"success.count +{n}", ("inference_stats", "success", "count"), lambda d: d == n),
        (f"inference_count +{n}", ("inference_count",), lambda d: d == n),
        (f"execution_count +1..{n}", ("execution_count",), lambda d: 1 <= d <= n),
        ("compute_infer.ns grew", ("inference_stats", "compute_infer", "ns"), lambda d: d > 0),
    ]:
        got = [functools.reduce(lambda d, k: d[k], path, e) for e in (before, after)]
        check(f"{label}: {what}", fits(got[1] - got[0]), f"{got[0]} -> {got[1]}; before {before}; after {after}")
    now_ms, last = time.time() * 1000, after["last_inference"]
    check(
        f"{label}: last_inference moved on and is recent",
        last >= before["last_inference"] and abs(now_ms - last) <= 60_000,
        f"now {now_ms:.0f} ms, before {before['last_inference']}, after {last}",
    )

    # The same features again: answered by the result cache, counted as a
    # hit and not as an execution.
    # Executions are counted once the batch has answered, so each read
    # waits for the count it expects.
    features = FRESH.random((1, 64), dtype=np.float32)
    ran_before = settled_executions(c, after["execution_count"], 0)
    classify(c, features=features)
    before_hit = settled_executions(c, ran_before, 1)
    classify(c, features=features)
    after_hit = settled(c, "success", before_hit["inference_stats"]["success"]["count"] + 1)
    time.sleep(0.1)  # room for a wrongly counted execution to show
    after_hit = classifier_stats(c)
    hits = [e["inference_stats"]["cache_hit"]["count"] for e in (before_hit, after_hit)]
    runs = [e["execution_count"] for e in (before_hit, after_hit)]
    check(
        "stats after a repeated request: cache_hit +1, execution_count +0",
        hits[1] - hits[0] == 1 and runs[1] == runs[0],
        f"cache_hit {hits}, execution_count {runs}; after {after_hit}",
    )
    after = after_hit

    # Triton answers 400 for bad input; Gantry 422 for a well-formed
    # request whose shape does not fit.
    label = "infer(tiny-classifier) shape [1, 63] raises 400/422"
    expect_error(label, lambda: classify(c, cols=63), ["400", "422"])
    fails = after["inference_stats"]["fail"]["count"]
    after_fail = settled(c, "fail", fails + 1)
    check(
        "stats after a failed inference: fail.count +1",
        after_fail["inference_stats"]["fail"]["count"] - fails == 1,
        f"before {after}; after {after_fail}",
    )

    stats = c.get_inference_statistics()
    names = {e.get("name") for e in (stats.get("model_stats") or [])}
    check("get_inference_statistics(): both models", {DTYPES, CLASSIFIER} <= names, f"{stats}")


def check_compression(c):
    # infer (sync), async_infer (gevent) and the aio client's infer all take
    # request_compression_algorithm / response_compression_algorithm ("gzip",
    # "deflate" or None) and decode a compressed response themselves. The
    # aio client's aiohttp session also sends `Accept-Encoding: gzip,
    # deflate` on every call but decodes only inference answers: any other
    # answer (an error included) must come back uncompressed.
    algorithms = [None, "gzip", "deflate"]
    for binary in (True, False):
        kind = "binary" if binary else "json"
        plain = infer_dtypes(c, binary=binary)
        wrong = mismatch(plain, EXPECTED)
        check(f"infer(dtypes) {kind} uncompressed", wrong is None, wrong)
        want = {n: plain.as_numpy(n) for n in OUTPUTS}
        for request, response in itertools.product(algorithms, algorithms):
            result = infer_dtypes(
                c,
                binary=binary,
                request_compression_algorithm=request,
                response_compression_algorithm=response,
            )
            wrong = mismatch(result, want)
            check(f"infer(dtypes) {kind} request {request} response {response}", wrong is None, wrong)


def check_model_control(c):
    c.unload_model(DTYPES)
    index = c.get_model_repository_index()
    entries = [e for e in index if isinstance(e, dict)] if isinstance(index, list) else []
    entry = next((e for e in entries if e.get("name") == DTYPES), {})
    check(
        "after unload_model(dtypes): index lists it UNAVAILABLE, reason unloaded",
        entry.get("state") == "UNAVAILABLE" and "unloaded" in str(entry.get("reason", "")).lower(),
        f"{index}",
    )
    check("after unload_model(dtypes): is_model_ready is False", c.is_model_ready(DTYPES) is False)

    # load_model returns once the model is ready: no waiting, no retries.
    c.load_model(DTYPES)
    check("after load_model(dtypes): is_model_ready at once", c.is_model_ready(DTYPES) is True)
    check_dtypes_infer("after load_model(dtypes): infer at once", c)

    label = f"load_model({BROKEN}) raises 400 naming it"
    expect_error(label, lambda: c.load_model(BROKEN), ["400"], BROKEN)

    c.load_model(DTYPES, config=json.dumps({"max_batch_size": 4}))
    cfg = c.get_model_config(DTYPES)
    label = "load_model(dtypes, max_batch_size 4)"
    check(f"{label}: config says 4", cfg.get("max_batch_size") == 4, f"{cfg}")
    check_dtypes_infer(f"{label}: infer", c)
    expect_error(
        "load_model(dtypes, max_batch_size 0) raises 400",
        lambda: c.load_model(DTYPES, config=json.dumps({"max_batch_size": 0})),
        ["400"],
    )
    cfg = c.get_model_config(DTYPES)
    check("after the refused load: config still says 4", cfg.get("max_batch_size") == 4, f"{cfg}")
    expect_error(
        "load_model(dtypes, config 'not json') raises 400",
        lambda: c.load_model(DTYPES, config="not json"),
        ["400"],
    )

    c.load_model(DTYPES, config=json.dumps({"instance_group": [{"count": 2}]}))
    cfg = c.get_model_config(DTYPES)
    label = "load_model(dtypes, instance_group count 2)"
    check(f"{label}: config says 2", group_of(cfg).get("count") == 2, f"{cfg}")
    check_dtypes_infer(f"{label}: infer", c)

    c.load_model(DTYPES, config=json.dumps({"dynamic_batching": {DELAY: 5000}}))
    cfg = c.get_model_config(DTYPES)
    label = f"load_model(dtypes, {DELAY} 5000)"
    check(f"{label}: config says 5000", delay_of(cfg) == 5000, f"{cfg}")
    check_dtypes_infer(f"{label}: infer", c)

    # Back to model.toml: max_batch_size 8, one replica, a 20 ms window.
    c.load_model(DTYPES)
    cfg = c.get_model_config(DTYPES)
    check_fields("load_model(dtypes) without config", cfg, [
        ("max_batch_size", cfg.get("max_batch_size"), 8),
        ("instance_group[0].count", group_of(cfg).get("count"), 1),
        (f"dynamic_batching.{DELAY}", delay_of(cfg), 20000),
    ])
    check_dtypes_infer("load_model(dtypes) without config: infer", c)


def check_classification(c):
    """class_count: the top classes as "score:index[:label]" strings."""
    features = FRESH.random((2, 64), dtype=np.float32)
    tensor = httpclient.InferInput("features", [2, 64], "FP32")
    tensor.set_data_from_numpy(features)
    logits = c.infer(CLASSIFIER, [tensor]).as_numpy("logits")
    for binary in [True, False]:
        asked = [httpclient.InferRequestedOutput("logits", binary_data=binary, class_count=3)]
        got = c.infer(CLASSIFIER, [tensor], outputs=asked).as_numpy("logits")
        want = [
            [f"{row[i]:.6f}:{i}" for i in np.argsort(-row, kind="stable")[:3]] for row in logits
        ]
        texts = None if got is None else [
            [v.decode() if isinstance(v, bytes) else v for v in row] for row in got
        ]
        check(
            f"classification (tiny-classifier, {'binary' if binary else 'json'}): top 3 of each row",
            texts == want,
            f"got {texts}, want {want}",
        )
    labels = open(LABELS).read().split()
    wave = httpclient.InferInput("waveform", [1, 16000], "FP32")
    wave.set_data_from_numpy(FRESH.uniform(-0.5, 0.5, (1, 16000)).astype(np.float32))
    plain = c.infer(CALLS_MODEL, [wave]).as_numpy("logits")[0]
    top = c.infer(
        CALLS_MODEL, [wave], outputs=[httpclient.InferRequestedOutput("logits", class_count=2)]
    ).as_numpy("logits")
    best = int(np.argmax(plain))
    check(
        "classification (night-calls): labels from labels.txt",
        top is not None and top.shape == (1, 2)
        and top[0][0].decode() == f"{plain[best]:.6f}:{best}:{labels[best]}",
        f"got {top!r}, scores {plain}, labels {labels}",
    )
    expect_error(
        "classification of 0 classes",
        lambda: c.infer(CLASSIFIER, [tensor], outputs=[_RawOutput("logits", {"classification": 0})]),
        ["400"],
    )


class _RawOutput(httpclient.InferRequestedOutput):
    """A requested output with raw parameters (the client refuses
    class_count=0 itself, so the server's check is reached this way)."""

    def __init__(self, name, parameters):
        super().__init__(name)
        self._parameters = dict(parameters)


HALF_TEXT = "half-and-text"


def half_and_text_inputs():
    """FP16, BF16 (ml_dtypes, as tritonclient wants) and BYTES, batch of 3."""
    return {
        "x_fp16": np.array([[1.5, -2.0], [65504 / 4, 0.125], [-7.5, 3.0]], dtype=np.float16),
        "x_bf16": np.array([[1.5, -2.0], [1e30, 0.125], [-7.5, 3.0]], dtype=ml_dtypes.bfloat16),
        "x_str": np.array(
            [[b"a", "\u00e9t\u00e9".encode()], [b"", b"longer text, with commas"], [b"x" * 300, b"7"]],
            dtype=np.object_,
        ),
    }


def check_half_and_text(c):
    x = half_and_text_inputs()
    want = {
        "y_fp16": (x["x_fp16"].astype(np.float32) * 2).astype(np.float16),
        "y_bf16": (x["x_bf16"].astype(np.float32) * 2).astype(ml_dtypes.bfloat16),
        "y_str": x["x_str"],
    }
    datatypes = {"x_fp16": "FP16", "x_bf16": "BF16", "x_str": "BYTES"}
    for binary in [True, False]:
        inputs = []
        for name, arr in x.items():
            tensor = httpclient.InferInput(name, list(arr.shape), datatypes[name])
            # tritonclient sends BF16 as binary data only.
            tensor.set_data_from_numpy(arr, binary_data=binary or name == "x_bf16")
            inputs.append(tensor)
        names = ["y_fp16", "y_str"] if not binary else list(want)
        outputs = [httpclient.InferRequestedOutput(n, binary_data=binary) for n in names]
        result = c.infer(HALF_TEXT, inputs, outputs=outputs)
        for name in names:
            got = result.as_numpy(name)
            if name == "y_str" and not binary:
                # JSON answers carry strings; the client gives them as str.
                got = np.array([[v.encode() for v in row] for row in got], dtype=np.object_)
            check(
                f"infer({HALF_TEXT}) {'binary' if binary else 'json'}: {name}",
                got is not None and got.shape == want[name].shape and np.array_equal(got, want[name])
                and (name == "y_str" or got.dtype == want[name].dtype),
                f"got {got!r}, want {want[name]!r}; response {result.get_response()}",
            )
    # Bytes that are not UTF-8, and NUL bytes, go through the model's string
    # tensor and come back unchanged (binary answers).
    raw = np.array([[b"\xff", b"a\x00b"], [b"", b"c"], [b"\x00", b"\xfe\xfd"]], dtype=np.object_)
    odd = httpclient.InferInput("x_str", [3, 2], "BYTES")
    odd.set_data_from_numpy(raw)
    rest = []
    for name in ["x_fp16", "x_bf16"]:
        tensor = httpclient.InferInput(name, [3, 2], datatypes[name])
        tensor.set_data_from_numpy(x[name])
        rest.append(tensor)
    result = c.infer(HALF_TEXT, [odd] + rest, outputs=[httpclient.InferRequestedOutput("y_str", binary_data=True)])
    got = result.as_numpy("y_str")
    check(f"infer({HALF_TEXT}) with non-UTF-8 and NUL BYTES: back unchanged",
          got is not None and np.array_equal(got, raw), f"got {got!r}")


PHASES = [
    check_config,
    check_unknown,
    check_statistics,
    check_compression,
    check_half_and_text,
    check_classification,
    check_model_control,
]


def run(tag, make):
    global TAG
    TAG = f"[{tag}] "
    c = make()
    try:
        for phase in PHASES:
            try:
                phase(c)
            except Exception as e:  # noqa: BLE001 - an unexpected error is a failure too
                traceback.print_exc()
                check(f"{phase.__name__} runs through", False, f"{type(e).__name__}: {e}")
    finally:
        c.close()


def main():
    if len(sys.argv) != 2:
        print("usage: triton_protocol.py HOST:PORT", file=sys.stderr)
        sys.exit(2)
    url = sys.argv[1]
    run("sync", lambda: SyncClient(url, gevent=False))
    run("gevent async_infer", lambda: SyncClient(url, gevent=True))
    run("aio", lambda: AioClient(url))
    print("all Triton protocol checks passed", flush=True)


if __name__ == "__main__":
    main()
