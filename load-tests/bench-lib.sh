# shellcheck shell=bash disable=SC2154 # root, tmp, url: set by the sourcing script
# Sourced by bench.sh, cpu-split.sh, clients.sh and gpu.sh (from the
# repository root; `$root` is that root; all but run_labels also need
# start-gantry.sh's `$tmp` or `$url`):
#   bench_repository DIR     the `make bench` repository in DIR: unet-seg and
#                            tiny-classifier with only `replicas` (2) and
#                            `max_batch_size` (8 and 32) in their model.toml
#   find_oha [--no-install]  sets `$OHA`: as given, else oha on PATH, else
#                            .tools/bin/oha, installed there with
#                            `$CARGO install oha --locked` when it is missing
#                            (not with --no-install); returns 1 when none is found
#   setting MODEL KEY DEFAULT  a top-level model.toml key (an integer), with
#                            Gantry's default
#   oha_run MODEL CONCURRENCY OUTPUT  oha on `$url` for `$DURATION`, JSON to
#                            OUTPUT (tiny-classifier as REST JSON, unet-seg
#                            through the v2 binary extension; bodies from
#                            load-tests/bodies.py in `$tmp`)
#   run_labels TARGET SCRIPT VAR...  sets `$command` (the make target when
#                            make runs the script, else the script, after
#                            the named variables the environment sets, paths
#                            in the repository written relative to it) and
#                            `$commit` (HEAD, "with uncommitted changes"
#                            when the code or the load tests differ from it)

run_labels() {
  local var prefix=""
  command=$1
  [[ -n ${MAKELEVEL:-} ]] || command=$2
  shift 2
  for var in "$@"; do
    if printenv "$var" >/dev/null; then prefix+="$var=$(printenv "$var" | sed "s|^$root/||") "; fi
  done
  command="$prefix$command"
  commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
  [[ -z $(git status --porcelain -- src actors Cargo.toml Cargo.lock config models load-tests 2>/dev/null) ]] ||
    commit+=" with uncommitted changes"
}

bench_repository() {
  mkdir -p "$1/unet-seg" "$1/tiny-classifier"
  cp models/unet-seg/model.onnx "$1/unet-seg/"
  printf 'replicas = 2\nmax_batch_size = 8\n' >"$1/unet-seg/model.toml"
  cp models/tiny-classifier/model.onnx "$1/tiny-classifier/"
  printf 'replicas = 2\nmax_batch_size = 32\n' >"$1/tiny-classifier/model.toml"
}

# shellcheck disable=SC2120 # the argument is optional
find_oha() {
  [[ -z ${OHA:-} ]] || return 0
  if command -v oha >/dev/null; then
    OHA=oha
    return 0
  fi
  if [[ ! -x .tools/bin/oha ]]; then
    if [[ ${1:-} == --no-install ]] || ! command -v "${CARGO:-cargo}" >/dev/null; then
      echo "oha not found: set OHA=/path/to/oha, put oha on PATH or in .tools/bin/ (cargo install oha --locked --root .tools)" >&2
      return 1
    fi
    echo "== installing oha into .tools/ (once)"
    "${CARGO:-cargo}" install oha --locked --root .tools
  fi
  OHA=$root/.tools/bin/oha
}

setting() {
  python3 - "models/$1/model.toml" "$2" "$3" <<'PY'
import os, re, sys
path, key, default = sys.argv[1:]
try:
    import tomllib
    print(tomllib.load(open(path, "rb")).get(key, int(default)) if os.path.exists(path) else default)
except ImportError:  # Python < 3.11: the top-level `key = integer` line
    text = open(path).read().split("\n[", 1)[0] if os.path.exists(path) else ""
    m = re.search(rf"^{key}\s*=\s*(\d+)", text, re.M)
    print(m.group(1) if m else default)
PY
}

oha_run() { # model concurrency output
  local args=(-z "$DURATION" -c "$2" -w --no-tui --output-format json -m POST)
  case $1 in
    tiny-classifier)
      "$OHA" "${args[@]}" -H "content-type: application/json" \
        -D "$tmp/$1.body" "$url/api/optimized/predict" >"$3" ;;
    unet-seg)
      "$OHA" "${args[@]}" -H "content-type: application/octet-stream" \
        -H "inference-header-content-length: $(cat "$tmp/$1.len")" \
        -D "$tmp/$1.body" "$url/v2/models/$1/infer" >"$3" ;;
  esac
}
