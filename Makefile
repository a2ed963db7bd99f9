# Gantry: `make run` serves the demo models, `make test` runs every test.

ORT_VERSION := 1.31.1
ORT_DIR     := .onnxruntime
ORT_LIB     := $(ORT_DIR)/libonnxruntime.so
ORT_GPU_DIR := .onnxruntime-gpu
ORT_GPU_LIB := $(ORT_GPU_DIR)/libonnxruntime.so
VENV        := .venv
# playwright-core for the dashboard's browser test (npm, pinned in its lock file).
NODE_DEPS   := tests/dashboard/node_modules/.done
PYTHON      ?= python3
CARGO       ?= cargo

export ORT_DYLIB_PATH := $(abspath $(ORT_LIB))

.PHONY: run run-gpu gpu-check setup test dashboard-screenshot deploy-check docker-test fuzz onnxruntime onnxruntime-gpu venv models train evaluate bench bench-footprints bench-trace bench-repack bench-slo bench-micro profile cpu-split bench-clients bench-media soak lint fmt clean

run: $(ORT_LIB)
	$(CARGO) run --release --bin gantry -- --config config/gantry.toml

# The demo models on the GPU build of ONNX Runtime: models with device =
# "auto" (the default) run on the GPUs when CUDA and cuDNN load.
run-gpu: $(ORT_GPU_LIB)
	ORT_DYLIB_PATH=$(abspath $(ORT_GPU_LIB)) $(CARGO) run --release --bin gantry -- --config config/gantry.toml

# The GPU check (load-tests/gpu.sh): on a machine with an NVIDIA GPU and CUDA
# 13, writes load-tests/GPU_RESULTS.md. Never run by CI.
gpu-check: $(ORT_GPU_LIB)
	load-tests/gpu.sh

# What the tests need on the machine (Redis, PostgreSQL, Chromium, HAProxy,
# openssl, promtool, Docker, cargo-nextest), installed and started when
# missing: tests/setup.sh, which .ci/run runs too.
setup:
	tests/setup.sh

test: setup $(ORT_LIB) $(VENV)/.done $(NODE_DEPS)
	GANTRY_TEST_PYTHON=$(abspath $(VENV))/bin/python $(CARGO) nextest run --workspace --no-fail-fast

$(NODE_DEPS): tests/dashboard/package.json tests/dashboard/package-lock.json | setup
	cd tests/dashboard && npm ci --no-audit --no-fund --loglevel=error
	touch $@

# The picture of /dashboard under load in docs/operations.md (the browser test, saving it).
dashboard-screenshot: $(ORT_LIB) $(NODE_DEPS)
	GANTRY_TEST_DASHBOARD_SCREENSHOT=$(abspath docs/dashboard.png) $(CARGO) nextest run --test it -E 'test(/^dashboard::/)'

# Runs each fuzz target for FUZZ_SECONDS (CI: 10) from its committed seeds
# in fuzz/corpus/<target>/. New inputs go to fuzz/target/corpus/ (not
# committed), a crash to fuzz/artifacts/<target>/ (see fuzz/README.md).
# Stable Rust: no sanitizer (`-s none`; Rust code is memory safe, and a
# panic or failed assertion is what the targets look for).
FUZZ_SECONDS ?= 20
FUZZ_TARGETS := json_tensor v2_binary npy multipart sniff image audio
# FUZZ_TARGET_DIR (set by .ci/run) keeps the instrumented build between runs.
FUZZ_FLAGS   := -s none --debug-assertions $(if $(FUZZ_TARGET_DIR),--target-dir $(FUZZ_TARGET_DIR))

fuzz:
	cd fuzz && $(CARGO) fuzz build $(FUZZ_FLAGS)
	@set -e; for t in $(FUZZ_TARGETS); do \
	  case $$t in json_tensor|v2_binary) dict=-dict=dict/json.dict;; \
	    multipart) dict=-dict=dict/multipart.dict;; *) dict=;; esac; \
	  mkdir -p fuzz/target/corpus/$$t; \
	  echo "fuzz $$t: $(FUZZ_SECONDS) s"; \
	  (cd fuzz && $(CARGO) fuzz run $(FUZZ_FLAGS) $$t target/corpus/$$t corpus/$$t -- \
	    -max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=2048 -timeout=10 \
	    -print_final_stats=1 $$dict); \
	done

# The deployment files (deploy/README.md): Kubernetes manifests rendered and
# strictly validated, alert rules and their unit tests (promtool), the
# Grafana dashboard's series, compose.yaml and haproxy.cfg.
deploy-check:
	deploy/check.sh

# Builds the container image (`docker build .`, base images made locally
# when no registry is reachable) and checks it: health, a JSON prediction
# and an image upload, non-root, read-only root, SIGTERM drains to exit 0.
docker-test:
	deploy/docker/test.sh

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

# Served vs raw ONNX Runtime throughput and latency per demo model, written to
# load-tests/RESULTS.md (DURATION=10s, OHA=path to skip installing oha).
bench: $(ORT_LIB)
	load-tests/bench.sh

# Where the CPU goes at concurrency 32 (server vs load generator, kernel vs
# user, HTTP workers vs replicas; perf when present), into
# load-tests/CPU_SPLIT.md.
cpu-split: $(ORT_LIB)
	load-tests/cpu-split.sh

# gRPC next to HTTP with Triton's own Python clients beside grpc-load and
# oha, one server, into load-tests/CLIENT_RESULTS.md.
bench-clients: $(ORT_LIB) $(VENV)/.done
	load-tests/clients.sh

# Criterion microbenchmarks: JSON tensors in and out next to serde_json, and
# the statistics counters' cost per request, into load-tests/MICRO_RESULTS.md.
bench-micro: $(ORT_LIB)
	load-tests/micro.sh

# Instructions per request of each stage of a small request's path, under
# callgrind, into load-tests/PROFILE.md (needs valgrind).
profile: $(ORT_LIB)
	load-tests/profile.sh

# The memory budget's reservations (measured footprints) against the
# process's real growth for twelve MLPs of 7-39 MB, into
# load-tests/FOOTPRINTS.md.
bench-footprints: $(ORT_LIB) $(VENV)/.done
	load-tests/footprints.sh

# Memory follows demand: twelve MLPs under a budget of about half what they
# take, one open-loop serverless-shaped trace per configuration (everything
# resident, static placement, eviction with and without the residency
# floor), written to load-tests/TRACE_RESULTS.md.
bench-trace: $(ORT_LIB) $(VENV)/.done
	load-tests/trace.sh

# A model loaded on demand (weights mapped) that turns busy: answers per
# second window by window with and without the packed replica that replaces
# the mapped one, into load-tests/REPACK_RESULTS.md.
bench-repack: $(ORT_LIB) $(VENV)/.done
	load-tests/repack.sh

# Latency targets: capacity closed loop, then open-loop Poisson load at 0.5,
# 1, 2 and 4 x capacity with and without latency_target_ms, for a
# compute-bound MLP and unet-seg, into load-tests/SLO_RESULTS.md.
bench-slo: $(ORT_LIB) $(VENV)/.done
	load-tests/slo.sh

# Image and audio decode time next to inference time, and uploads served
# over HTTP, written to load-tests/MEDIA_RESULTS.md (ITERATIONS=50,
# SECONDS_PER_CELL=5).
bench-media: $(ORT_LIB)
	load-tests/media.sh

# A steady mixed load for DURATION (default 30m), sampling the server's RSS,
# threads and open file descriptors every INTERVAL seconds into
# target/soak/samples.csv and target/soak/summary.md. Never run by CI.
soak: $(ORT_LIB)
	load-tests/soak.sh

# ONNX Runtime from PyPI's onnxruntime wheel: the shared library it ships is
# extracted into $(ORT_DIR)/; nothing else is downloaded at build or run time.
onnxruntime: $(ORT_LIB)

# The GPU build from PyPI's onnxruntime-gpu wheel (CUDA 13, cuDNN 9), with
# its CUDA provider library (about 284 MB), into $(ORT_GPU_DIR)/. CUDA and
# cuDNN come from the system or from PyPI's nvidia-* wheels (docs/gpus.md).
onnxruntime-gpu: $(ORT_GPU_LIB)

# $(call ort_wheel,package,folder): the wheel's libonnxruntime* files into
# folder/, with folder/libonnxruntime.so linking to the versioned library.
define ort_wheel
	rm -rf $(2) && mkdir -p $(2)/wheel
	$(PYTHON) -m pip download --quiet --no-deps --only-binary=:all: \
		--dest $(2)/wheel $(1)==$(ORT_VERSION)
	$(PYTHON) -c "import glob, os, zipfile; \
		wheel = glob.glob('$(2)/wheel/*.whl')[0]; \
		z = zipfile.ZipFile(wheel); \
		libs = [n for n in z.namelist() if os.path.basename(n).startswith('libonnxruntime')]; \
		[open(os.path.join('$(2)', os.path.basename(n)), 'wb').write(z.read(n)) for n in libs]; \
		main = [os.path.basename(n) for n in libs if os.path.basename(n).startswith('libonnxruntime.so.')][0]; \
		os.symlink(main, '$(2)/libonnxruntime.so.tmp')"
	rm -rf $(2)/wheel
	mv $(2)/libonnxruntime.so.tmp $(2)/libonnxruntime.so
endef

$(ORT_LIB):
	$(call ort_wheel,onnxruntime,$(ORT_DIR))

$(ORT_GPU_LIB):
	$(call ort_wheel,onnxruntime-gpu,$(ORT_GPU_DIR))

# Python tools for the client tests and the demo-model script.
venv: $(VENV)/.done

$(VENV)/.done: tests/clients/requirements.txt models/requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet -r tests/clients/requirements.txt -r models/requirements.txt
	# Silero VAD (MIT), a stateful model for the sequence tests, from its PyPI wheel.
	rm -rf $(VENV)/silero && $(VENV)/bin/pip download --quiet --no-deps --dest $(VENV)/silero silero-vad==6.2.3
	$(VENV)/bin/python -c "import glob, zipfile; \
		z = zipfile.ZipFile(glob.glob('$(VENV)/silero/*.whl')[0]); \
		open('$(VENV)/silero_vad.onnx', 'wb').write(z.read('silero_vad/data/silero_vad.onnx'))"
	touch $@

# Rebuild the demo and fixture models (their .onnx files are committed).
models: $(VENV)/.done
	$(VENV)/bin/python models/build_demo_models.py

# Retrain the two trained demo models (spheroid-seg, night-calls) and rewrite
# the media test fixtures: about 25 minutes on 2 cores, JAX on the CPU, in
# its own virtual environment. Never run by `make test` or CI.
VENV_TRAIN := .venv-train

train: $(VENV_TRAIN)/.done
	$(VENV_TRAIN)/bin/python models/train_spheroid_seg.py
	$(VENV_TRAIN)/bin/python models/train_night_calls.py
	$(VENV_TRAIN)/bin/python models/make_media_fixtures.py
	$(VENV_TRAIN)/bin/python models/evaluate_demo_models.py

# Held-out mean IoU of spheroid-seg and accuracy of night-calls, from the
# committed .onnx files (about 20 s).
evaluate: $(VENV_TRAIN)/.done
	$(VENV_TRAIN)/bin/python models/evaluate_demo_models.py

$(VENV_TRAIN)/.done: models/requirements-train.txt
	$(PYTHON) -m venv $(VENV_TRAIN)
	$(VENV_TRAIN)/bin/pip install --quiet -r models/requirements-train.txt
	touch $@

clean:
	$(CARGO) clean
	rm -rf $(ORT_DIR) $(ORT_GPU_DIR) $(VENV)
