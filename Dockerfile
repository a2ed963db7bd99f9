# Gantry's container image: the release binary, ONNX Runtime's CPU library
# from PyPI's onnxruntime wheel (as `make onnxruntime`), the demo models and
# config/gantry.toml, on debian:bookworm-slim, as user gantry (10001).
#
#   docker build -t gantry .
#   docker run --rm -p 8080:8080 gantry
#   curl -s localhost:8080/v2/health/ready
#
# Runs with a read-only root file system (`docker run --read-only --tmpfs
# /tmp`): the server writes nothing to disk. Every key of config/gantry.toml
# can be set with GANTRY__SECTION__KEY variables (REDIS_URL and DATABASE_URL
# too); mount another model repository over /models, or another config over
# /etc/gantry/gantry.toml.
#
# The GPU image (CUDA 13, cuDNN 9, onnxruntime-gpu) is deploy/docker/
# Dockerfile.gpu, built from this image: it is a file of its own because the
# legacy builder (DOCKER_BUILDKIT=0) builds every stage that comes before the
# target, so a CUDA stage here would make a plain `docker build .` pull the
# CUDA base image. deploy/docker/test.sh builds and checks this image.

# ONNX Runtime version, empty for the Makefile's ORT_VERSION (the pin that
# `make run` and the tests use, so the image cannot drift from it).
ARG ORT_VERSION=

# --- build: the gantry binary and libonnxruntime.so ------------------------
FROM rust:1.95-slim-bookworm AS build
LABEL org.opencontainers.image.title="gantry"
ARG ORT_VERSION
# `make onnxruntime` needs make and python3 with pip: the official rust slim
# image lacks them (apt-get installs them), the one deploy/docker/
# base-images.sh makes has them (nothing to install).
RUN set -eu; missing=; \
    for p in make python3 python3-pip ca-certificates; do \
      dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing="$missing $p"; \
    done; \
    if [ -n "$missing" ]; then \
      apt-get update; \
      DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $missing; \
      rm -rf /var/lib/apt/lists/*; \
    fi
WORKDIR /src
# ONNX Runtime first: this layer stays cached while the sources change.
COPY Makefile ./
RUN make onnxruntime ${ORT_VERSION:+ORT_VERSION=$ORT_VERSION} PYTHON=python3 \
    && ls -l .onnxruntime/
# The project's release profile (as `make run`) without its line tables: they
# are 100 of the binary's 120 MB. Backtraces keep function names (the symbol
# table stays), not file:line; --build-arg
# CARGO_PROFILE_RELEASE_DEBUG=line-tables-only puts them back. Only the
# binary's package is compiled; the crates are fetched from crates.io.
ARG CARGO_PROFILE_RELEASE_DEBUG=false
ENV CARGO_INCREMENTAL=0 CARGO_TERM_COLOR=never
# The dependencies first, built against empty crates: this layer depends on
# the workspace's manifests (load-tests is a member: its Cargo.toml is read,
# its sources are not built), the lock file, the build scripts and the
# Triton protocol they compile, so an image build after a change to Gantry's code reuses it
# and compiles Gantry's two crates alone.
COPY Cargo.toml Cargo.lock build.rs ./
COPY load-tests/Cargo.toml load-tests/
COPY actors/Cargo.toml actors/build.rs actors/
COPY proto proto
RUN mkdir -p src actors/src \
    && echo 'fn main() {}' > src/main.rs && touch src/lib.rs actors/src/lib.rs \
    && cargo build --release --locked -p gantry --bin gantry \
    && rm -rf src actors/src
COPY actors actors
COPY src src
# Newer than the empty crates' build, whatever times the sources came with.
RUN find src actors -name '*.rs' -exec touch {} + \
    && cargo build --release --locked -p gantry --bin gantry \
    && install -m 0755 target/release/gantry /usr/local/bin/gantry \
    && rm -rf target

# --- models: the model folders `make run` serves, without the scripts -------
FROM debian:bookworm-slim AS models
LABEL org.opencontainers.image.title="gantry"
COPY models /models
# Top-level files of models/ are the build and training scripts; each folder
# is a model (model.onnx, model.toml, labels.txt).
RUN find /models -mindepth 1 -maxdepth 1 ! -type d -delete \
    && find /models -name __pycache__ -prune -exec rm -rf {} + \
    && ls -R /models

# --- runtime (last stage: the default target) -------------------------------
FROM debian:bookworm-slim AS runtime
LABEL org.opencontainers.image.title="gantry" \
      org.opencontainers.image.description="Gantry: ONNX models served over HTTP (KServe v2), CPU build of ONNX Runtime" \
      org.opencontainers.image.licenses="Apache-2.0"
# ca-certificates: TLS to managed Redis (rediss://) and PostgreSQL
# (sslrootcert=system) checks against the public roots.
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 gantry \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin gantry
COPY --from=build /src/.onnxruntime/ /opt/onnxruntime/
COPY --from=build /usr/local/bin/gantry /usr/local/bin/gantry
COPY --from=models /models /models
COPY config/gantry.toml /etc/gantry/gantry.toml
COPY deploy/docker/healthcheck.sh /usr/local/bin/gantry-healthcheck
# ONNX Runtime's telemetry is turned off by gantry itself (src/main.rs).
# NO_COLOR: the log is read by `docker logs` and log pipelines, not a
# terminal (log.format = "json" gives one JSON object per line).
ENV ORT_DYLIB_PATH=/opt/onnxruntime/libonnxruntime.so \
    NO_COLOR=1 \
    GANTRY__SERVER__BIND=0.0.0.0:8080 \
    GANTRY__SERVER__GRPC_BIND=0.0.0.0:8001 \
    GANTRY__MODELS__DIR=/models
# Numeric, so that Kubernetes' runAsNonRoot can check it.
USER 10001:10001
# HTTP, and gRPC (KServe v2 / Triton).
EXPOSE 8080 8001
# Readiness (GET /v2/health/ready answers 200 once every model has a ready
# replica, 503 while loading or draining) over bash's /dev/tcp: the slim base
# has no curl, and bash is already there, so the check adds nothing to the
# image. It finds the port in GANTRY__SERVER__BIND.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["/usr/local/bin/gantry-healthcheck"]
# SIGTERM starts the drain: readiness 503, requests still served for
# server.drain_delay_s, in-flight ones finish (up to server.shutdown_timeout_s,
# 30 s), then exit 0. Give `docker stop` more than both (--time 45, or
# stop_grace_period in compose).
STOPSIGNAL SIGTERM
CMD ["gantry", "--config", "/etc/gantry/gantry.toml"]
