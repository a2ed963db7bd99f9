"""Drives Gantry's KServe v2 endpoints with the official Triton HTTP client.

Usage: triton_client.py HOST:PORT

Expects a server serving the `dtypes` fixture (tests/fixtures/models/dtypes)
and the `tiny-classifier` demo model. Prints one line per check and exits
non-zero on the first failure. Run by tests/it/clients.rs.
"""

import sys

import numpy as np
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

DTYPES = "dtypes"
CLASSIFIER = "tiny-classifier"

# Input name, Triton datatype, numpy dtype, output name.
DTYPE_TENSORS = [
    ("x_fp32", "FP32", np.float32, "y_fp32"),
    ("x_fp64", "FP64", np.float64, "y_fp64"),
    ("x_i32", "INT32", np.int32, "y_i32"),
    ("x_i64", "INT64", np.int64, "y_i64"),
    ("x_u8", "UINT8", np.uint8, "y_u8"),
    ("x_bool", "BOOL", np.bool_, "y_bool"),
]


def check(label, condition, detail=""):
    if not condition:
        print(f"FAIL {label}: {detail}", flush=True)
        sys.exit(1)
    print(f"ok   {label}", flush=True)


def dtypes_inputs():
    """Batch of 3 with distinct values per row and per dtype."""
    return {
        "x_fp32": np.array([[1.5, -2.25], [3.0, 0.125], [-7.5, 100.0]], dtype=np.float32),
        "x_fp64": np.array([[1e-3, -2.5], [1e10, 0.1], [-3.75, 42.0]], dtype=np.float64),
        "x_i32": np.array([[1, -2], [300, -400000], [7, 2**30 - 1]], dtype=np.int32),
        "x_i64": np.array([[5, -6], [2**40, -(2**41)], [0, 123456789012]], dtype=np.int64),
        # 255 and 254 wrap under +1.
        "x_u8": np.array([[0, 255], [128, 254], [1, 17]], dtype=np.uint8),
        "x_bool": np.array([[True, False], [False, False], [True, True]], dtype=np.bool_),
    }


def dtypes_expected(x):
    return {
        "y_fp32": x["x_fp32"] * np.float32(2),
        "y_fp64": x["x_fp64"] * np.float64(2),
        "y_i32": x["x_i32"] * np.int32(2),
        "y_i64": x["x_i64"] * np.int64(2),
        "y_u8": (x["x_u8"].astype(np.uint16) + 1).astype(np.uint8),  # wraps
        "y_bool": np.logical_not(x["x_bool"]),
    }


def make_inputs(values, binary):
    inputs = []
    for name, datatype, _, _ in DTYPE_TENSORS:
        arr = values[name]
        tensor = httpclient.InferInput(name, list(arr.shape), datatype)
        tensor.set_data_from_numpy(arr, binary_data=binary)
        inputs.append(tensor)
    return inputs


def compare_outputs(label, result, expected, names):
    for name in names:
        got = result.as_numpy(name)
        want = expected[name]
        check(
            f"{label}: {name}",
            got is not None
            and got.dtype == want.dtype
            and got.shape == want.shape
            and np.array_equal(got, want),
            f"got {got!r} (dtype {getattr(got, 'dtype', None)}), want {want!r} "
            f"(dtype {want.dtype}); response {result.get_response()}",
        )


def main():
    if len(sys.argv) != 2:
        print("usage: triton_client.py HOST:PORT", file=sys.stderr)
        sys.exit(2)
    url = sys.argv[1]
    client = httpclient.InferenceServerClient(url=url)

    check("is_server_live", client.is_server_live() is True)
    check("is_server_ready", client.is_server_ready() is True)

    meta = client.get_server_metadata()
    check(
        "get_server_metadata",
        isinstance(meta, dict) and meta.get("name") and "version" in meta,
        f"{meta}",
    )

    check("is_model_ready(dtypes)", client.is_model_ready(DTYPES) is True)
    check("is_model_ready(tiny-classifier)", client.is_model_ready(CLASSIFIER) is True)

    # Model metadata as the fixture declares it.
    meta = client.get_model_metadata(DTYPES)
    check("get_model_metadata(dtypes): name", meta.get("name") == DTYPES, f"{meta}")
    inputs = {t["name"]: t for t in meta.get("inputs", [])}
    outputs = {t["name"]: t for t in meta.get("outputs", [])}
    check(
        "get_model_metadata(dtypes): input names",
        sorted(inputs) == sorted(t[0] for t in DTYPE_TENSORS),
        f"{meta}",
    )
    check(
        "get_model_metadata(dtypes): output names",
        sorted(outputs) == sorted(t[3] for t in DTYPE_TENSORS),
        f"{meta}",
    )
    for name, datatype, _, out in DTYPE_TENSORS:
        check(
            f"get_model_metadata(dtypes): {name} {datatype} [-1, 2]",
            inputs[name].get("datatype") == datatype
            and list(inputs[name].get("shape", [])) == [-1, 2],
            f"{inputs[name]}",
        )
        check(
            f"get_model_metadata(dtypes): {out} {datatype} [-1, 2]",
            outputs[out].get("datatype") == datatype
            and list(outputs[out].get("shape", [])) == [-1, 2],
            f"{outputs[out]}",
        )

    values = dtypes_inputs()
    expected = dtypes_expected(values)
    all_outputs = [t[3] for t in DTYPE_TENSORS]

    # (a) Binary tensor extension both ways (the client's default).
    result = client.infer(
        DTYPES,
        make_inputs(values, binary=True),
        outputs=[httpclient.InferRequestedOutput(n, binary_data=True) for n in all_outputs],
    )
    compare_outputs("infer(dtypes) binary", result, expected, all_outputs)

    # (b) JSON data both ways.
    result = client.infer(
        DTYPES,
        make_inputs(values, binary=False),
        outputs=[httpclient.InferRequestedOutput(n, binary_data=False) for n in all_outputs],
    )
    compare_outputs("infer(dtypes) json", result, expected, all_outputs)

    # (c) A subset of outputs: only those come back.
    subset = ["y_i64", "y_bool"]
    result = client.infer(
        DTYPES,
        make_inputs(values, binary=True),
        outputs=[httpclient.InferRequestedOutput(n) for n in subset],
    )
    compare_outputs("infer(dtypes) subset", result, expected, subset)
    returned = [o["name"] for o in result.get_response().get("outputs", [])]
    check(
        "infer(dtypes) subset: only requested outputs returned",
        sorted(returned) == sorted(subset),
        f"returned {returned}",
    )
    for name in all_outputs:
        if name not in subset:
            check(
                f"infer(dtypes) subset: {name} absent",
                result.as_numpy(name) is None,
                f"{result.as_numpy(name)!r}",
            )

    # (d) No outputs requested: the client asks for all of them, binary.
    result = client.infer(DTYPES, make_inputs(values, binary=True))
    compare_outputs("infer(dtypes) default outputs", result, expected, all_outputs)

    # tiny-classifier: a batch of 4 equals four single-item inferences.
    rng = np.random.default_rng(7)
    features = rng.random((4, 64), dtype=np.float32)

    def classify(batch, request_id=""):
        tensor = httpclient.InferInput("features", list(batch.shape), "FP32")
        tensor.set_data_from_numpy(batch)
        return client.infer(
            CLASSIFIER,
            [tensor],
            outputs=[httpclient.InferRequestedOutput("logits")],
            request_id=request_id,
        )

    result = classify(features, request_id="abc-1")
    logits = result.as_numpy("logits")
    check(
        "infer(tiny-classifier) batch of 4: shape [4, 10] FP32",
        logits is not None and logits.shape == (4, 10) and logits.dtype == np.float32,
        f"{None if logits is None else (logits.shape, logits.dtype)}",
    )
    check(
        "infer(tiny-classifier): response id echoes request_id",
        result.get_response().get("id") == "abc-1",
        f"{result.get_response()}",
    )
    singles = np.concatenate([classify(features[i : i + 1]).as_numpy("logits") for i in range(4)])
    check(
        "infer(tiny-classifier): batch equals 4 single inferences",
        singles.shape == (4, 10) and np.allclose(logits, singles, rtol=1e-5, atol=1e-6),
        f"max abs diff {np.max(np.abs(logits - singles)) if singles.shape == logits.shape else singles.shape}",
    )

    # Unknown model: InferenceServerException saying not found.
    try:
        client.is_model_ready("no-such-model")
    except InferenceServerException as e:
        check("is_model_ready(unknown) raises", False, f"{e}")
    else:
        # is_model_ready answers False on a non-200; that is the client's contract.
        check(
            "is_model_ready(unknown) is False",
            client.is_model_ready("no-such-model") is False,
        )
    for label, call in [
        ("get_model_metadata(unknown)", lambda: client.get_model_metadata("no-such-model")),
        ("infer(unknown)", lambda: client.infer("no-such-model", make_inputs(values, binary=True))),
    ]:
        try:
            call()
        except InferenceServerException as e:
            # 404 Not Found, and the message names the model.
            check(
                f"{label} raises not found (404)",
                e.status() == "404" and "no-such-model" in (e.message() or ""),
                f"status={e.status()!r} message={e.message()!r}",
            )
        else:
            check(f"{label} raises", False, "no exception")

    print("all Triton client checks passed", flush=True)


if __name__ == "__main__":
    main()
