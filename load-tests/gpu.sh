#!/usr/bin/env bash
# `make gpu-check`: Gantry on an NVIDIA GPU, checked and measured.
#
#   make gpu-check                 # DURATION=10s; OHA=/path/to/oha; SKIP_BUILD=1 to use target/release as is
#
# Needs an NVIDIA GPU with its driver, CUDA 13 and cuDNN 9 libraries, the GPU
# build of ONNX Runtime (`make onnxruntime-gpu`) and the CPU build
# (`make onnxruntime`); no network once the binaries are built. It:
#   1. checks nvidia-smi lists a GPU and both ONNX Runtime builds are there;
#   2. puts the CUDA and cuDNN libraries on LD_LIBRARY_PATH: CUDA_LIBS
#      (colon-separated folders), then the lib folders of Python's nvidia-*
#      wheels (PyTorch's), then /usr/local/cuda/lib64; lists those not found;
#   3. builds release gantry and raw-onnx when cargo is on PATH (not with
#      SKIP_BUILD=1), and finds oha as `make bench` does;
#   4. starts gantry on the GPU build (cache off, as start-gantry.sh does) and
#      checks that every replica of every model is ready on a GPU and that
#      stats' memory.devices lists every GPU nvidia-smi lists;
#   5. compares stats' per-GPU memory figures with nvidia-smi;
#   6. starts a second gantry on the CPU build and posts the same inputs to
#      every model on both: outputs must agree within
#      1e-3 x max(1, max |CPU output|);
#   7. stops the CPU server and measures unet-seg served on the GPU (oha at
#      concurrency 1 and 32 for DURATION, KServe v2 binary extension) next to
#      raw ONNX Runtime with the CUDA provider (raw-onnx --gpu) at batch 1 and
#      max_batch_size, for RAW_SECONDS.
# The tables, the machine and the goals go to stdout and to
# load-tests/GPU_RESULTS.md, which each run rewrites. Exits nonzero when
# placement or outputs fail; speed goals missed are reported, not fatal.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

DURATION=${DURATION:-10s}
CARGO=${CARGO:-cargo}
ort_gpu=$root/.onnxruntime-gpu/libonnxruntime.so
ort_cpu=$root/.onnxruntime/libonnxruntime.so
# raw-onnx measures as long as oha does (DURATION in seconds), else 10 s.
if [[ -z ${RAW_SECONDS:-} ]]; then
  if [[ $DURATION =~ ^([0-9]+(\.[0-9]+)?)s?$ ]]; then RAW_SECONDS=${BASH_REMATCH[1]}; else RAW_SECONDS=10; fi
fi

fail() {
  echo "gpu-check: $*" >&2
  exit 1
}
check() { python3 load-tests/gpu_check.py "$@"; }

# The command as it was given, with the settings that shape the run.
command="make gpu-check"
[[ -n ${MAKELEVEL:-} ]] || command="load-tests/gpu.sh"
env_prefix=""
for var in DURATION OHA RAW_SECONDS CUDA_LIBS SKIP_BUILD GANTRY__MEMORY__GPU_FRACTION; do
  if printenv "$var" >/dev/null; then env_prefix+="$var=$(printenv "$var") "; fi
done
command="$env_prefix$command"

echo "== preconditions"
command -v nvidia-smi >/dev/null ||
  fail "no NVIDIA GPU (nvidia-smi not found): this check needs an NVIDIA GPU and its driver"
gpu_list=$(nvidia-smi --query-gpu=index,name,memory.total --format=csv,noheader 2>&1) ||
  fail "nvidia-smi failed (is the driver loaded?): $gpu_list"
[[ -n $gpu_list ]] || fail "nvidia-smi lists no GPU"
while IFS= read -r line; do echo "   GPU $line"; done <<<"$gpu_list"
[[ -f $ort_gpu ]] || fail ".onnxruntime-gpu/libonnxruntime.so not found: run make onnxruntime-gpu"
[[ -f .onnxruntime-gpu/libonnxruntime_providers_cuda.so ]] ||
  fail ".onnxruntime-gpu/libonnxruntime_providers_cuda.so not found: run make onnxruntime-gpu"
[[ -f $ort_cpu ]] ||
  fail ".onnxruntime/libonnxruntime.so (the CPU build, for the reference outputs) not found: run make onnxruntime"
for tool in curl python3; do
  command -v "$tool" >/dev/null || fail "$tool not found"
done

echo "== CUDA and cuDNN libraries"
cuda_dirs=()
if [[ -n ${CUDA_LIBS:-} ]]; then
  IFS=: read -r -a cuda_dirs <<<"$CUDA_LIBS"
fi
while IFS= read -r dir; do
  if [[ -n $dir ]]; then cuda_dirs+=("$dir"); fi
done < <(check nvidia-libs)
if [[ -d /usr/local/cuda/lib64 ]]; then cuda_dirs+=(/usr/local/cuda/lib64); fi
lib_path=""
for dir in "${cuda_dirs[@]}"; do
  if [[ -n $dir ]]; then lib_path+=${lib_path:+:}$dir; fi
done
if [[ -n $lib_path ]]; then
  export LD_LIBRARY_PATH=$lib_path${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
fi
echo "   LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}"
check cuda-libs "${cuda_dirs[@]}"

if [[ ${SKIP_BUILD:-0} != 1 ]] && command -v "$CARGO" >/dev/null; then
  echo "== building (release)"
  "$CARGO" build --release --quiet -p gantry --bin gantry -p gantry-load-tests --bin raw-onnx
else
  echo "== not building (SKIP_BUILD=1 or no cargo): using target/release as it is"
fi
for bin in gantry raw-onnx; do
  [[ -x target/release/$bin ]] || fail "target/release/$bin not found: build it first with
  cargo build --release -p gantry --bin gantry -p gantry-load-tests --bin raw-onnx
(on this machine, or on one like it, copying target/release/ here)"
done
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
[[ $commit == unknown || -z $(git status --porcelain -- src actors Cargo.toml Cargo.lock config models 2>/dev/null) ]] ||
  commit+=" with uncommitted changes"

source "$root/load-tests/start-gantry.sh"
source "$root/load-tests/bench-lib.sh"
if [[ ${SKIP_BUILD:-0} == 1 ]]; then find_oha --no-install; else find_oha; fi ||
  fail "no load generator for the speed runs"

# Session creation on the GPU and cuDNN's first load can take tens of seconds.
gantry_wait_s=180
gantry_log=$tmp/gpu.log
start_gantry ORT_DYLIB_PATH="$ort_gpu"
gpu_url=$url gpu_server=$server

log_tail() {
  echo "-- $1 (last 40 lines):" >&2
  tail -n 40 "$2" >&2
}

echo "== placement (GPU server)"
if ! check placement "$gpu_url" "$tmp/placement.json"; then
  log_tail "GPU server log" "$tmp/gpu.log"
  exit 1
fi

echo "== per-device figures: stats next to nvidia-smi"
check devices "$gpu_url" "$tmp/devices.json"

gantry_log=$tmp/cpu.log
start_gantry ORT_DYLIB_PATH="$ort_cpu"
cpu_url=$url cpu_server=$server

echo "== outputs: GPU server next to CPU server"
if ! check outputs "$gpu_url" "$cpu_url" "$tmp/outputs.json"; then
  log_tail "GPU server log" "$tmp/gpu.log"
fi
stop_gantry "$cpu_server"
if ! kill -0 "$gpu_server" 2>/dev/null; then
  log_tail "GPU server log" "$tmp/gpu.log"
  fail "the GPU server exited"
fi

echo "== speed: unet-seg on the GPU"
url=$gpu_url
python3 load-tests/bodies.py "$tmp"
batch=$(setting unet-seg max_batch_size 8)
threads=$(setting unet-seg intra_op_threads 0)
echo "$batch $threads" >"$tmp/unet-seg.settings"
for c in 1 32; do
  echo "== unet-seg: oha, concurrency $c, $DURATION"
  curl -s "$url/api/optimized/stats" >"$tmp/unet-seg.c$c.before"
  oha_run unet-seg "$c" "$tmp/unet-seg.c$c.oha"
  curl -s "$url/api/optimized/stats" >"$tmp/unet-seg.c$c.after"
done
stop_gantry "$gpu_server"

gpu_index=$(check device-index unet-seg "$tmp/placement.json")
for b in 1 "$batch"; do
  echo "== unet-seg: raw ONNX Runtime on gpu:$gpu_index, batch $b, ${RAW_SECONDS}s"
  ORT_DYLIB_PATH=$ort_gpu target/release/raw-onnx --model models/unet-seg/model.onnx --gpu "$gpu_index" \
    --threads "$threads" --batch "$b" --seconds "$RAW_SECONDS" >"$tmp/unet-seg.raw$b" ||
    fail "raw-onnx failed on gpu:$gpu_index (its error is above)"
done

python3 load-tests/gpu_report.py "$tmp" "$command" "$commit" "$(readlink -f "$ort_gpu")"
