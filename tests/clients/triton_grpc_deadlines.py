"""gRPC deadlines and cancellation reach Gantry's queue.

Usage: triton_grpc_deadlines.py GRPC_HOST:PORT

Expects a server serving the fake model `slow` (x FP32 [n, 4] -> y, one
replica, batches of one, each run taking 1 s) with the cache off. One
request holds the replica; a second with a 100 ms deadline (the client's
`client_timeout`, sent as `grpc-timeout`) fails DEADLINE_EXCEEDED; a third
is cancelled by its caller while it waits. The first is answered. The
test that runs this (tests/it/clients.rs) then reads the batcher's counters:
the second expired in the queue and the third was cancelled there, so
neither ran. Prints one line per check; non-zero exit on a failure.
"""

import asyncio
import sys

import grpc
import numpy as np
import tritonclient.grpc.aio as aioclient
from tritonclient.utils import InferenceServerException

MODEL = "slow"


def check(label, condition, detail=""):
    if not condition:
        print(f"FAIL {label}: {detail}", flush=True)
        sys.exit(1)
    print(f"ok   {label}", flush=True)


def inputs(value):
    x = aioclient.InferInput("x", [1, 4], "FP32")
    x.set_data_from_numpy(np.full((1, 4), value, dtype=np.float32))
    return [x]


async def main(url):
    async with aioclient.InferenceServerClient(url=url) as client:
        check("ready", await client.is_model_ready(MODEL) is True)
        first = asyncio.ensure_future(client.infer(MODEL, inputs(1.0)))
        # Well inside the first run's second: it is running by then.
        await asyncio.sleep(0.3)
        try:
            await client.infer(MODEL, inputs(2.0), client_timeout=0.1)
            check("a 100 ms deadline behind a 1 s run: DEADLINE_EXCEEDED", False, "answered")
        except InferenceServerException as e:
            check("a 100 ms deadline behind a 1 s run: DEADLINE_EXCEEDED",
                  e.status() == str(grpc.StatusCode.DEADLINE_EXCEEDED), f"{e.status()}: {e.message()}")
        third = asyncio.ensure_future(client.infer(MODEL, inputs(3.0)))
        await asyncio.sleep(0.1)
        third.cancel()
        result = await first
        check("the first request is answered", float(result.as_numpy("y")[0][0]) == 3.0,
              f"{result.as_numpy('y')}")
        check("the cancelled call is cancelled", third.cancelled())
    print("all gRPC deadline checks passed", flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
