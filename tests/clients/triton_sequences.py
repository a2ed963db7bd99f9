"""Drives Gantry's sequence batching with the official Triton HTTP client.

Usage: triton_sequences.py HOST:PORT SILERO_ONNX

Expects a server serving the `accumulator` fixture (tests/fixtures/models/
accumulator, with `max_sequence_idle_ms = 500`) and Silero VAD as
`silero-vad` (its `silero_vad.onnx`, with the state pair state -> stateN).
Checks, with the sync client and the asyncio client:
- the accumulator's running sums per sequence, interleaved, with the control
  inputs the server fills (START, END, READY, CORRID) echoed back;
- requests of different sequences share batches (statistics);
- broken sequences: no sequence_id, an unknown or ended sequence, an idle
  one released, a control input sent by the client, two items at once;
- the model configuration reports sequence_batching (control inputs, state,
  idle timeout) and, like the metadata, lists only what clients send;
- Silero VAD's outputs over 512-sample chunks equal onnxruntime's with the
  recurrent state passed by hand.
Prints one line per check and exits non-zero on the first failure. Run by
tests/it/clients.rs.
"""

import asyncio
import sys
import time

import numpy as np
import onnxruntime
import tritonclient.http as httpclient
import tritonclient.http.aio as aiohttpclient
from tritonclient.utils import InferenceServerException

ACC = "accumulator"
VAD = "silero-vad"
OUTPUTS = ["sum", "start_out", "end_out", "ready_out", "corrid_out"]


def check(label, condition, detail=""):
    if not condition:
        print(f"FAIL {label}: {detail}", flush=True)
        sys.exit(1)
    print(f"ok   {label}", flush=True)


def acc_inputs(value, rows=1):
    x = httpclient.InferInput("x", [rows, 1], "FP32")
    x.set_data_from_numpy(np.full((rows, 1), value, dtype=np.float32))
    return [x]


def step(client, seq, value, start=False, end=False):
    result = client.infer(ACC, acc_inputs(value), sequence_id=seq, sequence_start=start,
                          sequence_end=end)
    return {name: result.as_numpy(name).item() for name in OUTPUTS}


def expect_400(label, call, contains):
    try:
        call()
    except InferenceServerException as e:
        message = e.message() or ""
        check(label, e.status() == "400" and contains in message,
              f"status {e.status()!r}, message {message!r} (want 400 with {contains!r})")
        return
    check(label, False, "no error")


def check_accumulator(client):
    a, b = 1001, 2002
    got = step(client, a, 1.0, start=True)
    check("sequence a starts: sum 1, START 1, READY 1, CORRID a, END 0",
          got == {"sum": 1.0, "start_out": 1, "end_out": 0, "ready_out": 1, "corrid_out": a},
          f"{got}")
    got = step(client, b, 10.0, start=True)
    check("sequence b starts on its own state", got["sum"] == 10.0 and got["corrid_out"] == b,
          f"{got}")
    got = step(client, a, 2.0)
    check("sequence a goes on: sum 3, START 0", got["sum"] == 3.0 and got["start_out"] == 0,
          f"{got}")
    got = step(client, b, 5.0)
    check("sequence b goes on: sum 15", got["sum"] == 15.0, f"{got}")
    got = step(client, a, 3.0, end=True)
    check("sequence a ends: sum 6, END 1", got["sum"] == 6.0 and got["end_out"] == 1, f"{got}")
    got = step(client, a, 7.0, start=True)
    check("sequence a starts again from zero", got["sum"] == 7.0, f"{got}")
    step(client, a, 0.0, end=True)
    state_left = client.infer(ACC, acc_inputs(1.0), sequence_id=b, sequence_end=True)
    check("sequence b's state kept meanwhile", state_left.as_numpy("sum").item() == 16.0)
    result = client.infer(ACC, acc_inputs(1.0), sequence_id=3003, sequence_start=True)
    check("state outputs are the server's, not answered",
          result.as_numpy("acc_out") is None, f"{result.get_response()}")

    expect_400("an ended sequence without start", lambda: step(client, a, 1.0), "is not open")
    expect_400("an unknown sequence without start", lambda: step(client, 9999, 1.0),
               "is not open")
    expect_400("a sequence model without sequence_id",
               lambda: client.infer(ACC, acc_inputs(1.0)), "sequence_id")
    start = httpclient.InferInput("START", [1, 1], "INT32")
    start.set_data_from_numpy(np.ones((1, 1), dtype=np.int32))
    expect_400("a control input sent by the client",
               lambda: client.infer(ACC, acc_inputs(1.0) + [start], sequence_id=3003),
               "filled by the server")
    expect_400("two items in one sequence request",
               lambda: client.infer(ACC, acc_inputs(1.0, rows=2), sequence_id=3003),
               "one item")
    step(client, 4004, 1.0, start=True)
    time.sleep(1.0)
    expect_400("an idle sequence is released", lambda: step(client, 4004, 1.0), "is not open")


async def check_shared_batches(url):
    client = aiohttpclient.InferenceServerClient(url=url)
    try:
        before = await client.get_inference_statistics(ACC)
        sequences = list(range(5001, 5009))
        sums = {s: 0.0 for s in sequences}
        for k in range(5):
            calls = [
                client.infer(ACC, acc_inputs(float(s - 5000 + k)), sequence_id=s,
                             sequence_start=(k == 0), sequence_end=(k == 4))
                for s in sequences
            ]
            results = await asyncio.gather(*calls)
            for s, result in zip(sequences, results):
                sums[s] += float(s - 5000 + k)
                got = result.as_numpy("sum").item()
                if got != sums[s]:
                    check(f"aio: sequence {s} step {k}", False, f"sum {got}, want {sums[s]}")
        check("aio: 8 concurrent sequences keep their own sums over 5 steps", True)
        after = await client.get_inference_statistics(ACC)

        def sizes(stats):
            return {b["batch_size"]: b["compute_infer"]["count"]
                    for b in stats["model_stats"][0]["batch_stats"]}

        grown = {size: n - sizes(before).get(size, 0) for size, n in sizes(after).items()}
        check("aio: requests of different sequences share batches",
              any(size > 1 and n > 0 for size, n in grown.items()), f"batches by size {grown}")
    finally:
        await client.close()


def check_silero(client, onnx_path):
    rng = np.random.default_rng(3)
    rate, chunk = 16000, 512
    t = np.arange(rate * 2) / rate
    # Quiet noise, then a voiced-like burst (harmonics with an envelope).
    audio = 0.01 * rng.standard_normal(t.size)
    burst = (t > 0.6) & (t < 1.4)
    voice = sum(np.sin(2 * np.pi * f * t) / (i + 1) for i, f in enumerate([180, 360, 540, 720]))
    audio[burst] += 0.4 * voice[burst]
    audio = audio.astype(np.float32)
    chunks = [audio[i:i + chunk] for i in range(0, audio.size - chunk + 1, chunk)]

    session = onnxruntime.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    state = np.zeros((2, 1, 128), dtype=np.float32)
    sr = np.array(rate, dtype=np.int64)
    expected = []
    for piece in chunks:
        out, state = session.run(None, {"input": piece[None, :], "state": state, "sr": sr})
        expected.append(out.item())

    served = []
    for i, piece in enumerate(chunks):
        wave = httpclient.InferInput("input", [1, chunk], "FP32")
        wave.set_data_from_numpy(piece[None, :])
        rate_in = httpclient.InferInput("sr", [], "INT64")
        rate_in.set_data_from_numpy(sr)
        result = client.infer(VAD, [wave, rate_in], sequence_id="call-42",
                              sequence_start=(i == 0), sequence_end=(i == len(chunks) - 1),
                              outputs=[httpclient.InferRequestedOutput("output")])
        served.append(result.as_numpy("output").item())
    expected, served = np.array(expected), np.array(served)
    check(f"silero-vad: {len(chunks)} chunks equal onnxruntime with the state passed by hand",
          np.allclose(served, expected, rtol=1e-5, atol=1e-6),
          f"max abs diff {np.max(np.abs(served - expected))}")
    # The state matters: each chunk alone, from zero state, answers otherwise.
    zero = np.zeros((2, 1, 128), dtype=np.float32)
    alone = np.array([
        session.run(None, {"input": p[None, :], "state": zero, "sr": sr})[0].item() for p in chunks
    ])
    check("silero-vad: the carried state changes the answers",
          np.max(np.abs(alone - expected)) > 1e-3, f"max abs diff {np.max(np.abs(alone - expected))}")


def check_config(client):
    config = client.get_model_config(ACC)
    seq = config.get("sequence_batching")
    check("config: sequence_batching instead of dynamic_batching",
          seq is not None and "dynamic_batching" not in config, f"{config}")
    kinds = {c["name"]: c["control"][0]["kind"] for c in seq["control_input"]}
    check("config: the four control inputs", kinds == {
        "START": "CONTROL_SEQUENCE_START", "END": "CONTROL_SEQUENCE_END",
        "READY": "CONTROL_SEQUENCE_READY", "CORRID": "CONTROL_SEQUENCE_CORRID"}, f"{kinds}")
    check("config: the idle timeout in microseconds",
          int(seq["max_sequence_idle_microseconds"]) == 500_000, f"{seq}")
    check("config: the implicit state pair",
          [(s["input_name"], s["output_name"], s["data_type"]) for s in seq["state"]]
          == [("acc_in", "acc_out", "TYPE_FP32")], f"{seq['state']}")
    names = [i["name"] for i in config["input"]]
    check("config: inputs are what clients send", names == ["x"], f"{names}")
    outputs = [o["name"] for o in config["output"]]
    check("config: the state output is not listed", "acc_out" not in outputs, f"{outputs}")
    meta = client.get_model_metadata(ACC)
    check("metadata: inputs are what clients send",
          [i["name"] for i in meta["inputs"]] == ["x"], f"{meta}")
    check("metadata: the state output is not listed",
          "acc_out" not in [o["name"] for o in meta["outputs"]], f"{meta}")


def main():
    if len(sys.argv) != 3:
        print("usage: triton_sequences.py HOST:PORT SILERO_ONNX", file=sys.stderr)
        sys.exit(2)
    url, onnx_path = sys.argv[1], sys.argv[2]
    client = httpclient.InferenceServerClient(url=url)
    check_config(client)
    check_accumulator(client)
    asyncio.run(check_shared_batches(url))
    check_silero(client, onnx_path)
    print("all Triton sequence checks passed", flush=True)


if __name__ == "__main__":
    main()
