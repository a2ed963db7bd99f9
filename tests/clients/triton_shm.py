"""Drives Triton's system shared memory extension with the official Triton
client: regions made with `tritonclient.utils.shared_memory` (POSIX shared
memory under /dev/shm), registered, listed, used for inputs and outputs,
unregistered one by one and all at once; and the requests Triton refuses.

Usage: triton_shm.py HOST:PORT [TOKEN]

Expects a loopback server serving the `dtypes` fixture and the
`tiny-classifier` demo model, with no region registered. Without TOKEN the
server has no admin token (loopback clients need none): every check runs
twice, with the sync client and with the asyncio client. With TOKEN the
server's admin token is TOKEN: the checks are that the shared memory routes,
and an infer request naming a region, refuse a client without it and serve
one that sends it. Prints one line per check and exits non-zero on the
first failure. Run by tests/it/clients.rs.
"""

import asyncio
import base64
import os
import sys
import traceback

import numpy as np
import tritonclient.http as httpclient
import tritonclient.http.aio as aiohttpclient
import tritonclient.utils.shared_memory as shm
from tritonclient.utils import InferenceServerException

from triton_client import DTYPE_TENSORS, dtypes_expected, dtypes_inputs, make_inputs

DTYPES = "dtypes"
CLASSIFIER = "tiny-classifier"
VALUES = dtypes_inputs()
EXPECTED = dtypes_expected(VALUES)
INPUTS = [t[0] for t in DTYPE_TENSORS]
OUTPUTS = [t[3] for t in DTYPE_TENSORS]
# What the output object holds where nothing was written.
SENTINEL = 0x5A
# Bytes between outputs in the output object, and after the last one.
GAP = 8

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


CALLS = [
    "get_server_metadata", "register_system_shared_memory", "unregister_system_shared_memory",
    "get_system_shared_memory_status", "infer", "unregister_cuda_shared_memory",
    "get_cuda_shared_memory_status", "register_cuda_shared_memory",
]


class SyncClient:
    def __init__(self, url):
        self.client = httpclient.InferenceServerClient(url=url)
        for name in CALLS:
            setattr(self, name, getattr(self.client, name))

    def close(self):
        self.client.close()


class AioClient:
    """tritonclient.http.aio.InferenceServerClient; every call is awaited on
    an event loop of its own, so the checks read the same for both."""

    def __init__(self, url):
        self.loop = asyncio.new_event_loop()

        async def make():
            return aiohttpclient.InferenceServerClient(url=url)

        self.client = self.loop.run_until_complete(make())
        for name in CALLS:
            method = getattr(self.client, name)
            setattr(self, name, lambda *a, _m=method, **kw: self.loop.run_until_complete(_m(*a, **kw)))

    def close(self):
        self.loop.run_until_complete(self.client.close())
        self.loop.close()


class Objects:
    """The shared memory objects of one run, with unique keys; destroyed
    (unlinked) at the end."""

    def __init__(self, tag):
        self.prefix = f"/gantry-shm-{os.getpid()}-{tag}"
        self.handles = []

    def create(self, name, byte_size):
        key = f"{self.prefix}-{name}"
        handle = shm.create_shared_memory_region(name, key, byte_size, create_only=True)
        self.handles.append(handle)
        return handle, key

    def destroy(self):
        for handle in self.handles:
            shm.destroy_shared_memory_region(handle)


def layout(arrays, gap=0):
    """(offset, nbytes) of each array laid out back to back, `gap` bytes
    apart, and the bytes all take with a gap after the last."""
    places, at = [], 0
    for a in arrays:
        places.append((at, a.nbytes))
        at += a.nbytes + gap
    return places, at


def dtypes_outputs(regions, offsets=None):
    """Requested outputs, each in its region (`regions[name]`), or in the
    body as binary when it has none."""
    outputs = []
    for name in OUTPUTS:
        out = httpclient.InferRequestedOutput(name, binary_data=True)
        if name in regions:
            region, size = regions[name]
            out.set_shared_memory(region, size, offset=(offsets or {}).get(name, 0))
        outputs.append(out)
    return outputs


def shm_inputs(region, places, module=httpclient):
    """The fixture's inputs, each at its (offset, size) in `region`; `module`
    is the client's (tritonclient.http, .grpc or their aio)."""
    inputs = []
    for (name, datatype, _, _), (offset, size) in zip(DTYPE_TENSORS, places):
        tensor = module.InferInput(name, list(VALUES[name].shape), datatype)
        tensor.set_shared_memory(region, size, offset=offset)
        inputs.append(tensor)
    return inputs


def region_names(c):
    status = c.get_system_shared_memory_status()
    return sorted(r.get("name") for r in status) if isinstance(status, list) else status


def object_bytes(handle, size):
    return bytes(shm.get_contents_as_numpy(handle, np.uint8, [size]))


def check_cuda(c):
    """Triton's shared memory examples begin by unregistering every region,
    CUDA ones included: a server holding none says so."""
    c.unregister_cuda_shared_memory()
    c.unregister_cuda_shared_memory("never-registered")
    check("CUDA status: no region", c.get_cuda_shared_memory_status() == [], f"{c.get_cuda_shared_memory_status()}")
    expect_error("CUDA status of an unknown region", lambda: c.get_cuda_shared_memory_status("nope"), {"400"})
    expect_error("CUDA register is refused, pointing to system shared memory",
                 lambda: c.register_cuda_shared_memory("gpu", base64.b64encode(b"\0" * 64).decode(), 0, 64), {"400"},
                 contains="system shared memory")


def run_checks(c, objects):
    check_cuda(c)
    meta = c.get_server_metadata()
    check("extensions list system_shared_memory", "system_shared_memory" in (meta.get("extensions") or []), f"{meta}")
    check("status: no region to begin with", region_names(c) == [], f"{c.get_system_shared_memory_status()}")

    # All six inputs back to back in one object, registered as one region
    # whose tensors sit at offsets.
    arrays_in = [VALUES[n] for n in INPUTS]
    places_in, size_in = layout(arrays_in)
    handle_in, key_in = objects.create("in", size_in)
    shm.set_shared_memory_region(handle_in, arrays_in)
    c.register_system_shared_memory("in", key_in, size_in)

    # The six outputs in one object, GAP bytes apart, each registered as a
    # region of its own at its offset in the object; the rest is SENTINEL.
    arrays_out = [EXPECTED[n] for n in OUTPUTS]
    places_out, size_out = layout(arrays_out, GAP)
    handle_out, key_out = objects.create("out", size_out)
    shm.set_shared_memory_region(handle_out, [np.full(size_out, SENTINEL, dtype=np.uint8)])
    out_regions = {}
    for name, (offset, size) in zip(OUTPUTS, places_out):
        c.register_system_shared_memory(f"out-{name}", key_out, size, offset=offset)
        out_regions[name] = (f"out-{name}", size)

    status = c.get_system_shared_memory_status()
    by_name = {r.get("name"): r for r in status} if isinstance(status, list) else {}
    want = {"name": "in", "key": key_in, "offset": 0, "byte_size": size_in}
    check("status lists the input region", by_name.get("in") == want, f"{status}")
    for name, (offset, size) in zip(OUTPUTS, places_out):
        want = {"name": f"out-{name}", "key": key_out, "offset": offset, "byte_size": size}
        check(f"status lists out-{name}", by_name.get(f"out-{name}") == want, f"{status}")
    one = c.get_system_shared_memory_status("in")
    check("status of one region: a list of it", one == [by_name.get("in")], f"{one}")

    # Inputs and outputs in shared memory.
    result = c.infer(DTYPES, shm_inputs("in", places_in), outputs=dtypes_outputs(out_regions))
    for name, (offset, size) in zip(OUTPUTS, places_out):
        answer = result.get_output(name) or {}
        params = answer.get("parameters") or {}
        check(
            f"infer in and out of shm: {name} answered as in its region, without data",
            params.get("shared_memory_region") == f"out-{name}"
            and params.get("shared_memory_byte_size") == size
            and "data" not in answer
            and "binary_data_size" not in params,
            f"{answer}",
        )
        want = EXPECTED[name]
        got = shm.get_contents_as_numpy(handle_out, want.dtype, want.shape, offset=offset)
        check(f"infer in and out of shm: {name} read back", np.array_equal(got, want), f"got {got!r}, want {want!r}")
    gaps = [object_bytes(handle_out, size_out)[o + s:o + s + GAP] for o, s in places_out]
    check(
        "infer in and out of shm: nothing written between or after the outputs",
        all(g == bytes([SENTINEL]) * GAP for g in gaps),
        f"{gaps}",
    )

    # Inputs in shared memory, outputs in the body (binary and JSON).
    for binary in (True, False):
        outputs = [httpclient.InferRequestedOutput(n, binary_data=binary) for n in OUTPUTS]
        result = c.infer(DTYPES, shm_inputs("in", places_in), outputs=outputs)
        for name in OUTPUTS:
            got = result.as_numpy(name)
            check(
                f"infer inputs in shm, outputs in the body ({'binary' if binary else 'json'}): {name}",
                got is not None and got.dtype == EXPECTED[name].dtype and np.array_equal(got, EXPECTED[name]),
                f"got {got!r}, want {EXPECTED[name]!r}",
            )

    # Inputs in the body, two outputs in shared memory (the rest binary),
    # one at an offset in a region that spans the whole output object.
    shm.set_shared_memory_region(handle_out, [np.full(size_out, SENTINEL, dtype=np.uint8)])
    c.register_system_shared_memory("out-all", key_out, size_out)
    fp64_at = places_out[1][0]
    regions = {"y_i32": out_regions["y_i32"], "y_fp64": ("out-all", size_out - fp64_at)}
    result = c.infer(DTYPES, make_inputs(VALUES, True), outputs=dtypes_outputs(regions, {"y_fp64": fp64_at}))
    for name in OUTPUTS:
        if name in regions:
            offset = places_out[OUTPUTS.index(name)][0]
            want = EXPECTED[name]
            got = shm.get_contents_as_numpy(handle_out, want.dtype, want.shape, offset=offset)
            params = (result.get_output(name) or {}).get("parameters") or {}
            check(
                f"infer inputs in the body: {name} in shm (written {want.nbytes} bytes)",
                np.array_equal(got, want) and params.get("shared_memory_byte_size") == want.nbytes,
                f"got {got!r}, want {want!r}; {params}",
            )
        else:
            got = result.as_numpy(name)
            check(f"infer inputs in the body: {name} in the body", np.array_equal(got, EXPECTED[name]), f"{got!r}")

    # A real model: features in shm, logits in shm, equal to the body answer.
    features = np.random.default_rng().random((2, 64), dtype=np.float32)
    handle_f, key_f = objects.create("features", features.nbytes)
    shm.set_shared_memory_region(handle_f, [features])
    handle_l, key_l = objects.create("logits", 2 * 10 * 4)
    c.register_system_shared_memory("features", key_f, features.nbytes)
    c.register_system_shared_memory("logits", key_l, 2 * 10 * 4)
    tensor = httpclient.InferInput("features", [2, 64], "FP32")
    tensor.set_data_from_numpy(features)
    plain = c.infer(CLASSIFIER, [tensor], outputs=[httpclient.InferRequestedOutput("logits")]).as_numpy("logits")
    tensor = httpclient.InferInput("features", [2, 64], "FP32")
    tensor.set_shared_memory("features", features.nbytes)
    logits = httpclient.InferRequestedOutput("logits")
    logits.set_shared_memory("logits", 2 * 10 * 4)
    c.infer(CLASSIFIER, [tensor], outputs=[logits])
    got = shm.get_contents_as_numpy(handle_l, np.float32, [2, 10])
    check("infer(tiny-classifier) in and out of shm equals the body answer", np.array_equal(got, plain), f"{got} vs {plain}")

    check_refusals(c, objects, places_in, size_in, key_in, handle_out, size_out, out_regions)

    # Unregister one, then every region.
    c.unregister_system_shared_memory("features")
    names = region_names(c)
    check("unregister one: gone from the status", "features" not in names and "in" in names, f"{names}")
    expect_error(
        "infer naming an unregistered region raises 400",
        lambda: c.infer(CLASSIFIER, [tensor], outputs=[logits]),
        ["400"],
        "features",
    )
    c.unregister_system_shared_memory("never-registered")
    check("unregister an unknown name: succeeds, as in Triton", "in" in region_names(c))
    c.unregister_system_shared_memory()
    check("unregister all: status empty", region_names(c) == [], f"{c.get_system_shared_memory_status()}")
    expect_error(
        "status of an unregistered region raises 400",
        lambda: c.get_system_shared_memory_status("in"),
        ["400"],
        "Unable to find system shared memory region: 'in'",
    )
    result = c.infer(DTYPES, make_inputs(VALUES, True))
    check("after unregister all: infer from the body still works", np.array_equal(result.as_numpy("y_i64"), EXPECTED["y_i64"]))


def check_refusals(c, objects, places_in, size_in, key_in, handle_out, size_out, out_regions):
    expect_error(
        "register offset + byte_size beyond the object raises 400",
        lambda: c.register_system_shared_memory("too-big", key_in, size_in + 1),
        ["400"],
        "invalid args",
    )
    expect_error(
        "register offset 8 + the object's size raises 400",
        lambda: c.register_system_shared_memory("too-big", key_in, size_in, offset=8),
        ["400"],
        "invalid args",
    )
    expect_error(
        "register the same name twice raises 400",
        lambda: c.register_system_shared_memory("in", key_in, 8),
        ["400"],
        "shared memory region 'in' already in manager",
    )
    for key in ["/../etc/passwd", "/tmp/gantry-x", "../../etc/hostname", "/dev/shm/x", "/", "/a/../b"]:
        expect_error(
            f"register key {key!r} raises 400",
            lambda key=key: c.register_system_shared_memory("evil", key, 1),
            ["400"],
        )
    expect_error(
        "register an object that does not exist raises 400",
        lambda: c.register_system_shared_memory("missing", f"{objects.prefix}-missing", 8),
        ["400"],
    )
    expect_error(
        "status of an unknown region raises 400",
        lambda: c.get_system_shared_memory_status("no-such-region"),
        ["400"],
        "Unable to find system shared memory region",
    )
    names = region_names(c)
    check("refused registrations left no region", not {"too-big", "evil", "missing"} & set(names), f"{names}")

    # An input whose window runs past its region.
    places = list(places_in)
    places[0] = (size_in - 4, places[0][1])
    expect_error(
        "infer with an input past the end of its region raises 422",
        lambda: c.infer(DTYPES, shm_inputs("in", places)),
        ["422", "400"],
        "x_fp32",
    )
    places[0] = (2**64 - 32, places_in[0][1])
    expect_error(
        "infer with an input offset of 2**64 - 32 raises 422",
        lambda: c.infer(DTYPES, shm_inputs("in", places)),
        ["422", "400"],
    )
    places = list(places_in)
    places[1] = (places_in[1][0], places_in[1][1] - 8)
    expect_error(
        "infer with an input byte_size its shape does not fit raises 422",
        lambda: c.infer(DTYPES, shm_inputs("in", places)),
        ["422"],
        "x_fp64",
    )
    expect_error(
        "infer with an input in an unknown region raises 400",
        lambda: c.infer(DTYPES, shm_inputs("no-such-region", places_in)),
        ["400"],
        "no-such-region",
    )
    expect_error(
        "infer with an output in an unknown region raises 400",
        lambda: c.infer(DTYPES, make_inputs(VALUES, True), outputs=dtypes_outputs({"y_i32": ("no-such-region", 64)})),
        ["400"],
        "no-such-region",
    )

    # An output region too small: 422, and no output is written, not even
    # the one that fits.
    shm.set_shared_memory_region(handle_out, [np.full(size_out, SENTINEL, dtype=np.uint8)])
    small = {"y_fp32": out_regions["y_fp32"], "y_fp64": (out_regions["y_fp64"][0], 8)}
    expect_error(
        "infer with an output region too small raises 422",
        lambda: c.infer(DTYPES, make_inputs(VALUES, True), outputs=dtypes_outputs(small)),
        ["422"],
        "y_fp64",
    )
    check(
        "after the refused output: nothing written",
        object_bytes(handle_out, size_out) == bytes([SENTINEL]) * size_out,
        f"{object_bytes(handle_out, size_out)!r}",
    )
    region, size = out_regions["y_fp32"]
    expect_error(
        "infer with an output byte_size beyond its region raises 422",
        lambda: c.infer(DTYPES, make_inputs(VALUES, True), outputs=dtypes_outputs({"y_fp32": (region, size + 1)})),
        ["422"],
        "y_fp32",
    )

    result = c.infer(DTYPES, make_inputs(VALUES, True))
    check("after the refusals: the server still serves", np.array_equal(result.as_numpy("y_fp32"), EXPECTED["y_fp32"]))


def check_token(url, token):
    global TAG
    TAG = "[token] "
    c = httpclient.InferenceServerClient(url=url)
    bearer = {"Authorization": f"Bearer {token}"}
    objects = Objects("token")
    try:
        arrays = [VALUES[n] for n in INPUTS]
        places, size = layout(arrays)
        handle, key = objects.create("in", size)
        shm.set_shared_memory_region(handle, arrays)
        for label, call in [
            ("register", lambda: c.register_system_shared_memory("in", key, size)),
            ("status", lambda: c.get_system_shared_memory_status()),
            ("status of a region", lambda: c.get_system_shared_memory_status("in")),
            ("unregister", lambda: c.unregister_system_shared_memory("in")),
            ("unregister all", lambda: c.unregister_system_shared_memory()),
        ]:
            expect_error(f"{label} without the token raises 401", call, ["401"])
        c.register_system_shared_memory("in", key, size, headers=bearer)
        names = [r.get("name") for r in c.get_system_shared_memory_status(headers=bearer)]
        check("register and status with the token", names == ["in"], f"{names}")
        expect_error(
            "infer naming a region without the token raises 401",
            lambda: c.infer(DTYPES, shm_inputs("in", places)),
            ["401"],
        )
        result = c.infer(DTYPES, shm_inputs("in", places), headers=bearer)
        check("infer naming a region with the token", np.array_equal(result.as_numpy("y_u8"), EXPECTED["y_u8"]))
        result = c.infer(DTYPES, make_inputs(VALUES, True))
        check("infer without shared memory needs no token", np.array_equal(result.as_numpy("y_u8"), EXPECTED["y_u8"]))
        c.unregister_system_shared_memory(headers=bearer)
        check("unregister all with the token", c.get_system_shared_memory_status(headers=bearer) == [])
    finally:
        c.close()
        objects.destroy()


def run(tag, make):
    global TAG
    TAG = f"[{tag}] "
    c = make()
    objects = Objects(tag.replace(" ", "-"))
    try:
        run_checks(c, objects)
    except Exception as e:  # noqa: BLE001 - an unexpected error is a failure too
        traceback.print_exc()
        check("the checks run through", False, f"{type(e).__name__}: {e}")
    finally:
        try:
            c.unregister_system_shared_memory()
        finally:
            c.close()
            objects.destroy()


def main():
    if len(sys.argv) not in (2, 3):
        print("usage: triton_shm.py HOST:PORT [TOKEN]", file=sys.stderr)
        sys.exit(2)
    url = sys.argv[1]
    if len(sys.argv) == 3:
        check_token(url, sys.argv[2])
        print("all Triton shared memory token checks passed", flush=True)
        return
    run("sync", lambda: SyncClient(url))
    run("aio", lambda: AioClient(url))
    print("all Triton shared memory checks passed", flush=True)


if __name__ == "__main__":
    main()
