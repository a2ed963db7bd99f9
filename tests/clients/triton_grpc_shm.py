"""Inputs and outputs in system shared memory over gRPC, with the official
Triton gRPC client: regions made with `tritonclient.utils.shared_memory`,
registered over gRPC, used by ModelInfer (sync, asyncio and a stream) for
inputs, outputs or both, mixed with tensors in the message; and the
requests Triton refuses.

Usage: triton_grpc_shm.py GRPC_HOST:PORT [TOKEN]

Expects a loopback server serving the `dtypes` fixture and the
`tiny-classifier` demo model, with no region registered. With TOKEN the
server's admin token is TOKEN: an infer naming a region is UNAUTHENTICATED
without it and served with it, one naming none needs no token. Prints one
line per check and exits non-zero on the first failure. Run by
tests/it/clients.rs.
"""

import asyncio
import functools
import queue
import sys

import grpc
import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient
import tritonclient.utils.shared_memory as shm
from tritonclient.utils import InferenceServerException

from triton_client import DTYPE_TENSORS, dtypes_expected, dtypes_inputs
import triton_shm
from triton_shm import GAP, SENTINEL, Objects, layout, object_bytes

DTYPES = "dtypes"
CLASSIFIER = "tiny-classifier"
VALUES = dtypes_inputs()
EXPECTED = dtypes_expected(VALUES)
INPUTS = [t[0] for t in DTYPE_TENSORS]
OUTPUTS = [t[3] for t in DTYPE_TENSORS]
# The fixture's inputs in a region, as the HTTP test builds them, with this client.
shm_inputs = functools.partial(triton_shm.shm_inputs, module=grpcclient)


def check(label, condition, detail=""):
    if not condition:
        print(f"FAIL {label}: {detail}", flush=True)
        sys.exit(1)
    print(f"ok   {label}", flush=True)


def fails_with(label, code, call, text=""):
    try:
        call()
    except InferenceServerException as e:
        check(label, e.status() == str(code) and text in (e.message() or ""), f"{e.status()}: {e.message()}")
        return
    check(label, False, "no error")


def body_inputs():
    inputs = []
    for name, datatype, _, _ in DTYPE_TENSORS:
        t = grpcclient.InferInput(name, list(VALUES[name].shape), datatype)
        t.set_data_from_numpy(VALUES[name])
        inputs.append(t)
    return inputs


def requested(regions, offsets=None, module=grpcclient):
    """Every output, in its region (`regions[name]`) or in the message."""
    outputs = []
    for name in OUTPUTS:
        out = module.InferRequestedOutput(name)
        if name in regions:
            region, size = regions[name]
            out.set_shared_memory(region, size, offset=(offsets or {}).get(name, 0))
        outputs.append(out)
    return outputs


def answered_in(result, name):
    """(region, byte size, offset) an output's parameters answer."""
    output = result.get_output(name)
    if output is None:
        return None
    p = output.parameters
    return (
        p["shared_memory_region"].string_param if "shared_memory_region" in p else None,
        p["shared_memory_byte_size"].int64_param if "shared_memory_byte_size" in p else None,
        p["shared_memory_offset"].int64_param if "shared_memory_offset" in p else 0,
    )


def run_checks(c, url, objects):
    # As Triton's shared memory examples begin: every region unregistered,
    # CUDA ones included (a server holding none says so).
    c.unregister_cuda_shared_memory()
    c.unregister_cuda_shared_memory("never-registered")
    status = c.get_cuda_shared_memory_status(as_json=True)
    check("CUDA status: no region", not status.get("regions"), f"{status}")
    fails_with("CUDA status of an unknown region", grpc.StatusCode.INVALID_ARGUMENT,
               lambda: c.get_cuda_shared_memory_status("nope"))
    fails_with("CUDA register is refused, pointing to system shared memory", grpc.StatusCode.INVALID_ARGUMENT,
               lambda: c.register_cuda_shared_memory("gpu", b"\0" * 64, 0, 64), "system shared memory")
    arrays_in = [VALUES[n] for n in INPUTS]
    places_in, size_in = layout(arrays_in)
    handle_in, key_in = objects.create("in", size_in)
    shm.set_shared_memory_region(handle_in, arrays_in)
    c.register_system_shared_memory("in", key_in, size_in)

    arrays_out = [EXPECTED[n] for n in OUTPUTS]
    places_out, size_out = layout(arrays_out, GAP)
    handle_out, key_out = objects.create("out", size_out)

    def clear_out():
        shm.set_shared_memory_region(handle_out, [np.full(size_out, SENTINEL, dtype=np.uint8)])

    clear_out()
    out_regions = {}
    for name, (offset, size) in zip(OUTPUTS, places_out):
        c.register_system_shared_memory(f"out-{name}", key_out, size, offset=offset)
        out_regions[name] = (f"out-{name}", size)
    regions = c.get_system_shared_memory_status().regions
    check("status lists every region", sorted(regions) == sorted(["in"] + [f"out-{n}" for n in OUTPUTS]),
          f"{sorted(regions)}")

    # Inputs and outputs in shared memory.
    result = c.infer(DTYPES, shm_inputs("in", places_in), outputs=requested(out_regions))
    raw = result.get_response().raw_output_contents
    check("in and out of shm: no raw output contents", len(raw) == 0, f"{len(raw)} entries")
    for name, (offset, size) in zip(OUTPUTS, places_out):
        want = EXPECTED[name]
        check(f"in and out of shm: {name} answered as in its region",
              answered_in(result, name) == (f"out-{name}", want.nbytes, 0), f"{result.get_output(name)}")
        got = shm.get_contents_as_numpy(handle_out, want.dtype, want.shape, offset=offset)
        check(f"in and out of shm: {name} read back", np.array_equal(got, want), f"got {got!r}, want {want!r}")
    gaps = [object_bytes(handle_out, size_out)[o + s:o + s + GAP] for o, s in places_out]
    check("in and out of shm: nothing written between or after the outputs",
          all(g == bytes([SENTINEL]) * GAP for g in gaps), f"{gaps}")

    # Inputs in shared memory, outputs in the message.
    result = c.infer(DTYPES, shm_inputs("in", places_in))
    for name in OUTPUTS:
        got, want = result.as_numpy(name), EXPECTED[name]
        check(f"inputs in shm, outputs raw: {name}", got is not None and got.dtype == want.dtype
              and np.array_equal(got, want), f"got {got!r}, want {want!r}")

    # Inputs in the message (raw), two outputs in shared memory: the raw
    # outputs around them still read as their own (entries stay aligned).
    clear_out()
    c.register_system_shared_memory("out-all", key_out, size_out)
    fp64_at = places_out[1][0]
    mixed = {"y_i32": out_regions["y_i32"], "y_fp64": ("out-all", size_out - fp64_at)}
    result = c.infer(DTYPES, body_inputs(), outputs=requested(mixed, {"y_fp64": fp64_at}))
    for name in OUTPUTS:
        want = EXPECTED[name]
        if name in mixed:
            offset = places_out[OUTPUTS.index(name)][0]
            got = shm.get_contents_as_numpy(handle_out, want.dtype, want.shape, offset=offset)
            region = mixed[name][0]
            at = fp64_at if name == "y_fp64" else 0
            check(f"inputs raw: {name} in shm", np.array_equal(got, want)
                  and answered_in(result, name) == (region, want.nbytes, at), f"{got!r}; {answered_in(result, name)}")
        else:
            got = result.as_numpy(name)
            check(f"inputs raw: {name} in the message", got is not None and np.array_equal(got, want), f"{got!r}")

    # Some inputs in shared memory, the others raw: raw entries count only
    # the inputs the message carries.
    some = shm_inputs("in", places_in)
    for i in (1, 3):
        name, datatype = DTYPE_TENSORS[i][0], DTYPE_TENSORS[i][1]
        some[i] = grpcclient.InferInput(name, list(VALUES[name].shape), datatype)
        some[i].set_data_from_numpy(VALUES[name])
    result = c.infer(DTYPES, some)
    check("inputs half in shm, half raw: every output right",
          all(np.array_equal(result.as_numpy(n), EXPECTED[n]) for n in OUTPUTS))

    # The classifier: features and logits in shared memory equal the answer
    # in the message; over asyncio and a stream too.
    x = np.random.default_rng().random((2, 64), dtype=np.float32)
    handle_f, key_f = objects.create("features", x.nbytes)
    shm.set_shared_memory_region(handle_f, [x])
    handle_l, key_l = objects.create("logits", 2 * 10 * 4)
    c.register_system_shared_memory("features", key_f, x.nbytes)
    c.register_system_shared_memory("logits", key_l, 2 * 10 * 4)
    t = grpcclient.InferInput("features", [2, 64], "FP32")
    t.set_data_from_numpy(x)
    plain = c.infer(CLASSIFIER, [t]).as_numpy("logits")

    def classifier_shm(module):
        t = module.InferInput("features", [2, 64], "FP32")
        t.set_shared_memory("features", x.nbytes)
        out = module.InferRequestedOutput("logits")
        out.set_shared_memory("logits", 2 * 10 * 4)
        return [t], [out]

    def logits():
        got = shm.get_contents_as_numpy(handle_l, np.float32, [2, 10]).copy()
        shm.set_shared_memory_region(handle_l, [np.zeros((2, 10), dtype=np.float32)])
        return got

    inputs, outputs = classifier_shm(grpcclient)
    c.infer(CLASSIFIER, inputs, outputs=outputs)
    check("classifier in and out of shm equals the answer in the message", np.array_equal(logits(), plain))

    async def aio():
        client = aioclient.InferenceServerClient(url=url)
        try:
            inputs, outputs = classifier_shm(aioclient)
            await client.infer(CLASSIFIER, inputs, outputs=outputs)
        finally:
            await client.close()

    asyncio.run(aio())
    check("aio: classifier in and out of shm", np.array_equal(logits(), plain))

    answers = queue.Queue()
    c.start_stream(callback=lambda result, error: answers.put((result, error)))
    inputs, outputs = classifier_shm(grpcclient)
    c.async_stream_infer(CLASSIFIER, inputs, outputs=outputs, request_id="s1")
    result, error = answers.get(timeout=10)
    c.stop_stream()
    check("stream: classifier in and out of shm", error is None and np.array_equal(logits(), plain), f"{error}")

    check_refusals(c, places_in, size_in, handle_out, size_out, out_regions)

    c.unregister_system_shared_memory("features")
    inputs, outputs = classifier_shm(grpcclient)
    fails_with("infer naming an unregistered region: INVALID_ARGUMENT", grpc.StatusCode.INVALID_ARGUMENT,
               lambda: c.infer(CLASSIFIER, inputs, outputs=outputs), "features")
    c.unregister_system_shared_memory()
    check("unregister all: status empty", len(c.get_system_shared_memory_status().regions) == 0)


def check_refusals(c, places_in, size_in, handle_out, size_out, out_regions):
    places = list(places_in)
    places[0] = (size_in - 4, places[0][1])
    fails_with("an input past the end of its region: INVALID_ARGUMENT", grpc.StatusCode.INVALID_ARGUMENT,
               lambda: c.infer(DTYPES, shm_inputs("in", places)), "x_fp32")
    places = list(places_in)
    places[1] = (places_in[1][0], places_in[1][1] - 8)
    fails_with("an input byte_size its shape does not fit: INVALID_ARGUMENT", grpc.StatusCode.INVALID_ARGUMENT,
               lambda: c.infer(DTYPES, shm_inputs("in", places)), "x_fp64")
    fails_with("an input in an unknown region: INVALID_ARGUMENT", grpc.StatusCode.INVALID_ARGUMENT,
               lambda: c.infer(DTYPES, shm_inputs("no-such-region", places_in)), "no-such-region")
    fails_with("an output in an unknown region: INVALID_ARGUMENT", grpc.StatusCode.INVALID_ARGUMENT,
               lambda: c.infer(DTYPES, body_inputs(), outputs=requested({"y_i32": ("no-such-region", 64)})),
               "no-such-region")
    both = body_inputs()
    both[0].set_shared_memory("in", places_in[0][1])
    both[0]._input.contents.fp32_contents.extend([1.0])
    fails_with("an input both in shm and with contents: INVALID_ARGUMENT", grpc.StatusCode.INVALID_ARGUMENT,
               lambda: c.infer(DTYPES, both), "x_fp32")

    # An output region too small: refused, and no output written, not even
    # the one that fits.
    shm.set_shared_memory_region(handle_out, [np.full(size_out, SENTINEL, dtype=np.uint8)])
    small = {"y_fp32": out_regions["y_fp32"], "y_fp64": (out_regions["y_fp64"][0], 8)}
    fails_with("an output region too small: INVALID_ARGUMENT", grpc.StatusCode.INVALID_ARGUMENT,
               lambda: c.infer(DTYPES, body_inputs(), outputs=requested(small)), "y_fp64")
    check("after the refused output: nothing written",
          object_bytes(handle_out, size_out) == bytes([SENTINEL]) * size_out)
    result = c.infer(DTYPES, body_inputs())
    check("after the refusals: the server still serves", np.array_equal(result.as_numpy("y_fp32"), EXPECTED["y_fp32"]))


def check_token(c, token, objects):
    bearer = {"authorization": f"Bearer {token}"}
    arrays = [VALUES[n] for n in INPUTS]
    places, size = layout(arrays)
    handle, key = objects.create("in", size)
    shm.set_shared_memory_region(handle, arrays)
    fails_with("[token] register without the token: UNAUTHENTICATED", grpc.StatusCode.UNAUTHENTICATED,
               lambda: c.register_system_shared_memory("in", key, size))
    c.register_system_shared_memory("in", key, size, headers=bearer)
    fails_with("[token] infer naming a region without the token: UNAUTHENTICATED",
               grpc.StatusCode.UNAUTHENTICATED, lambda: c.infer(DTYPES, shm_inputs("in", places)))
    result = c.infer(DTYPES, shm_inputs("in", places), headers=bearer)
    check("[token] infer naming a region with the token", np.array_equal(result.as_numpy("y_u8"), EXPECTED["y_u8"]))
    result = c.infer(DTYPES, body_inputs())
    check("[token] infer without shared memory needs no token",
          np.array_equal(result.as_numpy("y_u8"), EXPECTED["y_u8"]))
    c.unregister_system_shared_memory(headers=bearer)


def main():
    if len(sys.argv) not in (2, 3):
        print("usage: triton_grpc_shm.py GRPC_HOST:PORT [TOKEN]", file=sys.stderr)
        sys.exit(2)
    url = sys.argv[1]
    c = grpcclient.InferenceServerClient(url=url)
    objects = Objects("grpc" if len(sys.argv) == 2 else "grpc-token")
    try:
        if len(sys.argv) == 3:
            check_token(c, sys.argv[2], objects)
            print("all gRPC shared memory token checks passed", flush=True)
        else:
            run_checks(c, url, objects)
            print("all gRPC shared memory checks passed", flush=True)
    finally:
        if len(sys.argv) == 2:
            c.unregister_system_shared_memory()
        c.close()
        objects.destroy()


if __name__ == "__main__":
    main()
