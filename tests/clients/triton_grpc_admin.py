"""The gRPC admin RPCs with `server.admin_token` set.

Usage: triton_grpc_admin.py GRPC_HOST:PORT TOKEN

Expects a server serving the `tiny-classifier` demo model with that admin
token. Unloading without the token, or with a wrong one, is UNAUTHENTICATED
(and the model keeps serving); with `authorization: Bearer TOKEN` metadata
it unloads, and loads again. Run by tests/it/clients.rs.
"""

import sys

import grpc
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

CLASSIFIER = "tiny-classifier"


def check(label, condition, detail=""):
    if not condition:
        print(f"FAIL {label}: {detail}", flush=True)
        sys.exit(1)
    print(f"ok   {label}", flush=True)


def refused(label, call):
    try:
        call()
    except InferenceServerException as e:
        check(label, e.status() == str(grpc.StatusCode.UNAUTHENTICATED), f"{e.status()}: {e.message()}")
        return
    check(label, False, "no error")


def main():
    url, token = sys.argv[1], sys.argv[2]
    client = grpcclient.InferenceServerClient(url=url)
    refused("unload without the token: UNAUTHENTICATED", lambda: client.unload_model(CLASSIFIER))
    refused("unload with a wrong token: UNAUTHENTICATED",
            lambda: client.unload_model(CLASSIFIER, headers={"authorization": "Bearer nope"}))
    check("the model still serves", client.is_model_ready(CLASSIFIER) is True)
    bearer = {"authorization": f"Bearer {token}"}
    client.unload_model(CLASSIFIER, headers=bearer)
    unloaded = {m.name: m.reason for m in client.get_model_repository_index().models}
    check("unload with the token", unloaded.get(CLASSIFIER) == "unloaded", f"{unloaded}")
    client.load_model(CLASSIFIER, headers=bearer)
    check("load with the token: ready again", client.is_model_ready(CLASSIFIER) is True)
    print("all gRPC admin checks passed", flush=True)


if __name__ == "__main__":
    main()
