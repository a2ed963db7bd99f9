"""Drives Gantry's gRPC server with the official Triton gRPC client.

Usage: triton_grpc.py GRPC_HOST:PORT

Expects a server with a 4 MB body limit serving the `dtypes` and `accumulator` fixtures
(tests/fixtures/models/) and the `tiny-classifier` demo model. Checks, with `tritonclient.grpc` (sync)
and `tritonclient.grpc.aio` (asyncio): liveness, readiness, server and
model metadata, inference of every fixture datatype through
`raw_input_contents`, the same request with typed `contents` (built with the
client's own protobuf classes), request parameters (priority, timeout, a
sequence on the stateful fixture), configuration and statistics, shared
memory regions, the repository, a bidirectional stream, errors as gRPC status codes, gzip, many concurrent
calls, and the standard `grpc.health.v1` service. Prints one line
per check and exits non-zero on the first failure. Run by tests/it/clients.rs.
"""

import asyncio
import queue
import sys

import grpc
import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient
import tritonclient.utils.shared_memory as shm
from tritonclient.grpc import model_config_pb2, service_pb2
from tritonclient.utils import InferenceServerException
from triton_client import DTYPE_TENSORS, dtypes_expected, dtypes_inputs

DTYPES = "dtypes"
CLASSIFIER = "tiny-classifier"
ACC = "accumulator"

# The fixture's tensors, inputs and expected outputs: the HTTP client test's.
VALUES = dtypes_inputs()
EXPECTED = dtypes_expected(VALUES)


def check(label, condition, detail=""):
    if not condition:
        print(f"FAIL {label}: {detail}", flush=True)
        sys.exit(1)
    print(f"ok   {label}", flush=True)


def features(rows):
    return np.arange(rows * 64, dtype=np.float32).reshape(rows, 64) / 100.0


def classifier_inputs(module, x):
    tensor = module.InferInput("features", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    return [tensor]


def fails_with(label, code, call, text=""):
    try:
        call()
    except InferenceServerException as e:
        check(label, e.status() == str(code) and text in e.message(), f"{e.status()}: {e.message()}")
        return
    check(label, False, "no error")


def health(url, service):
    """grpc.health.v1.Health/Check, messages encoded by hand (field 1)."""
    with grpc.insecure_channel(url) as channel:
        check_rpc = channel.unary_unary(
            "/grpc.health.v1.Health/Check",
            request_serializer=lambda s: b"\x0a" + bytes([len(s)]) + s.encode() if s else b"",
            response_deserializer=lambda b: b[1] if len(b) >= 2 and b[0] == 0x08 else 0,
        )
        return check_rpc(service, timeout=5)


def main():
    if len(sys.argv) != 2:
        print("usage: triton_grpc.py GRPC_HOST:PORT", file=sys.stderr)
        sys.exit(2)
    url = sys.argv[1]
    client = grpcclient.InferenceServerClient(url=url)

    check("is_server_live", client.is_server_live() is True)
    check("is_server_ready", client.is_server_ready() is True)
    check("is_model_ready(tiny-classifier)", client.is_model_ready(CLASSIFIER) is True)
    check("is_model_ready(dtypes)", client.is_model_ready(DTYPES) is True)
    fails_with("is_model_ready of an unknown model: NOT_FOUND", grpc.StatusCode.NOT_FOUND,
               lambda: client.is_model_ready("nope"), "nope")

    meta = client.get_server_metadata(as_json=True)
    check("get_server_metadata", meta.get("name") == "gantry" and "binary_tensor_data" in meta.get("extensions", []),
          f"{meta}")
    meta = client.get_model_metadata(CLASSIFIER, as_json=True)
    inputs = meta.get("inputs", [])
    check("get_model_metadata(tiny-classifier)",
          meta.get("name") == CLASSIFIER and inputs and inputs[0]["name"] == "features"
          and inputs[0]["datatype"] == "FP32" and inputs[0]["shape"] == ["-1", "64"],
          f"{meta}")

    # Every fixture datatype through raw_input_contents.
    tensors = []
    for name, datatype, _, _ in DTYPE_TENSORS:
        t = grpcclient.InferInput(name, list(VALUES[name].shape), datatype)
        t.set_data_from_numpy(VALUES[name])
        tensors.append(t)
    result = client.infer(DTYPES, tensors)
    for _, _, _, out in DTYPE_TENSORS:
        got, want = result.as_numpy(out), EXPECTED[out]
        check(f"infer(dtypes) raw: {out}", got is not None and got.dtype == want.dtype and np.array_equal(got, want),
              f"got {got!r}, want {want!r}")

    # The classifier, whole and with one output asked for in a gzipped request.
    x = features(3)
    whole = client.infer(CLASSIFIER, classifier_inputs(grpcclient, x))
    logits = whole.as_numpy("logits")
    check("infer(tiny-classifier): logits [3, 10]", logits is not None and logits.shape == (3, 10), f"{logits}")
    asked = client.infer(CLASSIFIER, classifier_inputs(grpcclient, x),
                         outputs=[grpcclient.InferRequestedOutput("logits")], request_id="grpc-1",
                         compression_algorithm="gzip")
    check("infer with an output asked, gzip: the same logits",
          np.allclose(asked.as_numpy("logits"), logits, atol=1e-6)
          and asked.get_response().id == "grpc-1", f"{asked.get_response()}")

    # The same request with typed contents instead of raw bytes.
    request = service_pb2.ModelInferRequest(model_name=CLASSIFIER)
    typed = request.inputs.add(name="features", datatype="FP32", shape=[3, 64])
    typed.contents.fp32_contents.extend(x.flatten().tolist())
    response = client._client_stub.ModelInfer(request)
    raw = np.frombuffer(response.raw_output_contents[0], dtype=np.float32).reshape(3, 10)
    check("infer with typed contents: the same logits", np.allclose(raw, logits, atol=1e-6),
          f"{response}")

    # A message over the server's body limit (4 MB in this test), as sent or
    # gzipped: RESOURCE_EXHAUSTED, as gRPC's own servers answer.
    huge = np.zeros((20_000, 64), dtype=np.float32)
    fails_with("a message over the body limit: RESOURCE_EXHAUSTED", grpc.StatusCode.RESOURCE_EXHAUSTED,
               lambda: client.infer(CLASSIFIER, classifier_inputs(grpcclient, huge)))
    fails_with("a gzipped message inflating past the limit: RESOURCE_EXHAUSTED", grpc.StatusCode.RESOURCE_EXHAUSTED,
               lambda: client.infer(CLASSIFIER, classifier_inputs(grpcclient, huge), compression_algorithm="gzip"))

    # Errors: the HTTP ones, as gRPC status codes with the same messages.
    fails_with("infer on an unknown model: NOT_FOUND", grpc.StatusCode.NOT_FOUND,
               lambda: client.infer("nope", classifier_inputs(grpcclient, x)), "nope")
    fails_with("infer with a wrong shape: INVALID_ARGUMENT", grpc.StatusCode.INVALID_ARGUMENT,
               lambda: client.infer(CLASSIFIER, classifier_inputs(grpcclient, features(2)[:, :63].copy())),
               "features")
    short = service_pb2.ModelInferRequest(model_name=CLASSIFIER)
    short.inputs.add(name="features", datatype="FP32", shape=[1, 64])
    short.raw_input_contents.append(b"\x00" * 12)
    try:
        client._client_stub.ModelInfer(short)
        check("infer with too few raw bytes: INVALID_ARGUMENT", False, "no error")
    except grpc.RpcError as e:
        check("infer with too few raw bytes: INVALID_ARGUMENT",
              e.code() == grpc.StatusCode.INVALID_ARGUMENT and "features" in e.details(), f"{e.code()}: {e.details()}")
    fails_with("infer on a model version not served: NOT_FOUND", grpc.StatusCode.NOT_FOUND,
               lambda: client.infer(CLASSIFIER, classifier_inputs(grpcclient, x), model_version="99"), "99")
    cuda = client.get_cuda_shared_memory_status(as_json=True)
    check("get_cuda_shared_memory_status: no region", not cuda.get("regions"), f"{cuda}")

    # Configuration and statistics: Triton's messages, from the JSON HTTP answers.
    config = client.get_model_config(CLASSIFIER).config
    check("get_model_config(tiny-classifier)",
          config.name == CLASSIFIER and config.max_batch_size > 0 and config.input[0].name == "features"
          and config.input[0].data_type == model_config_pb2.TYPE_FP32
          and list(config.input[0].dims) == [64], f"{config}")
    fails_with("get_model_config of an unknown model: NOT_FOUND", grpc.StatusCode.NOT_FOUND,
               lambda: client.get_model_config("nope"), "nope")
    stats = client.get_inference_statistics(CLASSIFIER).model_stats
    check("get_inference_statistics(tiny-classifier)",
          len(stats) == 1 and stats[0].name == CLASSIFIER and stats[0].inference_count >= 6
          and stats[0].inference_stats.success.count >= 3, f"{stats}")
    every = client.get_inference_statistics().model_stats
    check("get_inference_statistics(): every model",
          sorted(s.name for s in every) == sorted([ACC, DTYPES, CLASSIFIER]), f"{every}")

    # Request parameters, read as over HTTP: priority, timeout, sequences.
    check("infer with priority 1 and a timeout",
          client.infer(CLASSIFIER, classifier_inputs(grpcclient, x), priority=1, timeout=5_000_000)
          .as_numpy("logits").shape == (3, 10))
    fails_with("infer with priority 7: INVALID_ARGUMENT", grpc.StatusCode.INVALID_ARGUMENT,
               lambda: client.infer(CLASSIFIER, classifier_inputs(grpcclient, x), priority=7), "priority")

    def acc(value, **sequence):
        t = grpcclient.InferInput("x", [1, 1], "FP32")
        t.set_data_from_numpy(np.full((1, 1), value, dtype=np.float32))
        return client.infer(ACC, [t], **sequence).as_numpy("sum").item()

    check("sequence starts: sum 1", acc(1.0, sequence_id=41, sequence_start=True) == 1.0)
    check("sequence goes on: sum 3", acc(2.0, sequence_id=41) == 3.0)
    check("sequence ends: sum 6", acc(3.0, sequence_id=41, sequence_end=True) == 6.0)
    fails_with("an ended sequence without start: INVALID_ARGUMENT", grpc.StatusCode.INVALID_ARGUMENT,
               lambda: acc(1.0, sequence_id=41), "is not open")
    fails_with("a sequence model without sequence_id: INVALID_ARGUMENT", grpc.StatusCode.INVALID_ARGUMENT,
               lambda: acc(1.0), "sequence_id")

    # A bidirectional stream: requests answered as they finish, errors as
    # answers with their message, the stream going on after them.
    answers = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    rows = [features(1) + i for i in range(8)]
    for i, r in enumerate(rows):
        client.async_stream_infer(CLASSIFIER, classifier_inputs(grpcclient, r), request_id=f"s{i}")
    client.async_stream_infer("nope", classifier_inputs(grpcclient, rows[0]), request_id="bad")
    client.stop_stream()
    got = [answers.get(timeout=10) for _ in range(9)]
    ok = {r.get_response().id: r.as_numpy("logits") for r, e in got if e is None}
    errors = [e for r, e in got if e is not None]
    check("stream: 8 answers by request id", sorted(ok) == [f"s{i}" for i in range(8)], f"{sorted(ok)}")
    check("stream: each answer is its request's",
          all(np.allclose(ok[f"s{i}"], client.infer(CLASSIFIER, classifier_inputs(grpcclient, r)).as_numpy("logits"),
                          atol=1e-5) for i, r in enumerate(rows)))
    check("stream: an unknown model is an error answer, the stream goes on",
          len(errors) == 1 and "nope" in errors[0].message(), f"{errors}")

    # asyncio: many calls at once, each its own answer.
    async def many():
        async with aioclient.InferenceServerClient(url=url) as aio:
            check("aio is_server_ready", await aio.is_server_ready() is True)
            rows = [features(1) + i for i in range(32)]
            results = await asyncio.gather(*(aio.infer(CLASSIFIER, classifier_inputs(aioclient, r)) for r in rows))
            alone = [client.infer(CLASSIFIER, classifier_inputs(grpcclient, r)).as_numpy("logits") for r in rows[:4]]
            check("aio: 32 concurrent infers answered",
                  all(r.as_numpy("logits").shape == (1, 10) for r in results))
            check("aio: each answer is its own request's",
                  all(np.allclose(results[i].as_numpy("logits"), alone[i], atol=1e-5) for i in range(4)))

    asyncio.run(many())

    # System shared memory regions: register, status, unregister (admin RPCs).
    handle = shm.create_shared_memory_region("grpc_in", "/gantry_grpc_test", 256, create_only=True)
    try:
        client.register_system_shared_memory("grpc_in", "/gantry_grpc_test", 256)
        regions = client.get_system_shared_memory_status().regions
        check("shared memory: registered and listed",
              list(regions) == ["grpc_in"] and regions["grpc_in"].byte_size == 256, f"{regions}")
        fails_with("shared memory: a taken name: INVALID_ARGUMENT", grpc.StatusCode.INVALID_ARGUMENT,
                   lambda: client.register_system_shared_memory("grpc_in", "/gantry_grpc_test", 256), "grpc_in")
        shm.set_shared_memory_region(handle, [features(1)])
        t = grpcclient.InferInput("features", [1, 64], "FP32")
        t.set_shared_memory("grpc_in", 256)
        from_shm = client.infer(CLASSIFIER, [t]).as_numpy("logits")
        from_message = client.infer(CLASSIFIER, classifier_inputs(grpcclient, features(1))).as_numpy("logits")
        check("shared memory: an input read from the region (more in triton_grpc_shm.py)",
              from_shm is not None and np.array_equal(from_shm, from_message), f"{from_shm} vs {from_message}")
        client.unregister_system_shared_memory("grpc_in")
        check("shared memory: unregistered", len(client.get_system_shared_memory_status().regions) == 0)
        client.unregister_system_shared_memory()
    finally:
        shm.destroy_shared_memory_region(handle)

    # The repository: index, unload, load (admin RPCs: loopback, no token set).
    index = {m.name: m.state for m in client.get_model_repository_index().models}
    check("get_model_repository_index", index == {ACC: "READY", DTYPES: "READY", CLASSIFIER: "READY"}, f"{index}")
    client.unload_model(DTYPES)
    unloaded = {m.name: (m.state, m.reason) for m in client.get_model_repository_index().models}
    check("unload_model: listed as unloaded", unloaded.get(DTYPES) == ("UNAVAILABLE", "unloaded"), f"{unloaded}")
    fails_with("is_model_ready on an unloaded model: NOT_FOUND", grpc.StatusCode.NOT_FOUND,
               lambda: client.is_model_ready(DTYPES), DTYPES)
    fails_with("infer on an unloaded model: NOT_FOUND", grpc.StatusCode.NOT_FOUND,
               lambda: client.infer(DTYPES, tensors), DTYPES)
    client.load_model(DTYPES)
    check("load_model: ready again", client.is_model_ready(DTYPES) is True)
    ready = sorted(m.name for m in client._client_stub.RepositoryIndex(
        service_pb2.RepositoryIndexRequest(ready=True)).models)
    check("RepositoryIndex(ready=True) after the load", ready == sorted([ACC, DTYPES, CLASSIFIER]), f"{ready}")
    fails_with("load_model with an unknown parameter: INVALID_ARGUMENT", grpc.StatusCode.INVALID_ARGUMENT,
               lambda: client.load_model(DTYPES, files={"file:1/model.onnx": b"x"}), "file:")

    check("grpc.health.v1 Check(\"\"): SERVING", health(url, "") == 1)
    check("grpc.health.v1 Check(inference.GRPCInferenceService): SERVING",
          health(url, "inference.GRPCInferenceService") == 1)
    client.close()
    print("all gRPC checks passed", flush=True)


if __name__ == "__main__":
    main()
