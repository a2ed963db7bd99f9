"""Request bodies for the benchmarks (bench.sh, smoke.sh, gpu.sh): fixed
pseudo-random inputs. `python3 load-tests/bodies.py DIR` writes into DIR:

  tiny-classifier.body  REST JSON for /api/optimized/predict (64 floats)
  unet-seg.body         a KServe v2 binary-extension body for
                        /v2/models/unet-seg/infer: the JSON header, then one
                        3 x 128 x 128 FP32 image, mask asked back as binary
  unet-seg.len          the header's length (Inference-Header-Content-Length)
  unet-seg.json         the same kind of image as v2 JSON (values to 4 decimals,
                        about 340 KB), mask answered as JSON
  tiny-classifier.v2    a v2 binary-extension body for
                        /v2/models/tiny-classifier/infer: 1 x 64 FP32 features,
                        logits asked back as binary
  tiny-classifier.v2len its header's length
  mlp.v2json            v2 JSON for /v2/models/mlp/infer: 1 x 64 FP32 features
                        (the MLP load-tests/slo_repository.py writes)
"""
import json, random, struct, sys
out = sys.argv[1]
random.seed(1)
tiny = {"model": "tiny-classifier",
        "inputs": {"features": {"shape": [1, 64], "datatype": "FP32",
                                "data": [random.random() for _ in range(64)]}}}
open(f"{out}/tiny-classifier.body", "w").write(json.dumps(tiny))
pixels = 3 * 128 * 128
header = json.dumps({"inputs": [{"name": "image", "shape": [1, 3, 128, 128], "datatype": "FP32",
                                 "parameters": {"binary_data_size": pixels * 4}}],
                     "outputs": [{"name": "mask", "parameters": {"binary_data": True}}]}).encode()
body = header + struct.pack(f"<{pixels}f", *(random.random() for _ in range(pixels)))
open(f"{out}/unet-seg.body", "wb").write(body)
open(f"{out}/unet-seg.len", "w").write(str(len(header)))
image = [round(random.random(), 4) for _ in range(pixels)]
as_json = {"inputs": [{"name": "image", "shape": [1, 3, 128, 128], "datatype": "FP32", "data": image}]}
open(f"{out}/unet-seg.json", "w").write(json.dumps(as_json, separators=(",", ":")))
features = [random.random() for _ in range(64)]
header = json.dumps({"inputs": [{"name": "features", "shape": [1, 64], "datatype": "FP32",
                                 "parameters": {"binary_data_size": 64 * 4}}],
                     "outputs": [{"name": "logits", "parameters": {"binary_data": True}}]}).encode()
open(f"{out}/tiny-classifier.v2", "wb").write(header + struct.pack("<64f", *features))
open(f"{out}/tiny-classifier.v2len", "w").write(str(len(header)))
v2_features = {"inputs": [{"name": "features", "shape": [1, 64], "datatype": "FP32", "data": features}]}
open(f"{out}/mlp.v2json", "w").write(json.dumps(v2_features, separators=(",", ":")))
