#!/usr/bin/env bash
# Download the wheels comfyd needs on an air-gapped GPU host into .whl/ (git-ignored), so that
# bench/gpu_check.sh can install them there with no network.
#
# The host is assumed to have Python 3.12 with torch (CUDA), transformers, accelerate, safetensors
# and numpy, and with them what those depend on (huggingface_hub, tokenizers, requests, pyyaml,
# regex, packaging, filelock, tqdm, fsspec, typing_extensions). Everything else comfyd imports is
# fetched here, pinned, for CPython 3.12 on manylinux x86_64.
#
# scipy (34 MB) is left out on purpose: only the `beta` scheduler needs it, comfyd imports it
# lazily, and the carry limit (64 MiB for every carried path together) would leave no room for a
# ComfyUI source tarball. Pass --with-scipy to add it. kornia (the Canny node), boto3 (AWS
# backends), av (PyAV, ~40 MB with its FFmpeg: the video and audio nodes), gguf (read only
# when a .gguf model loads) and mistral-common (its Tekken vocabulary, read only for a Flux.2
# Mistral encoder without its own) are imported lazily and left out too; the GPU check runs no
# video node, no GGUF model and no Flux.2 text encoder.
#
#     scripts/device_wheels.sh [--with-scipy] [--dest DIR] [--dry-run]
#
# --dry-run prints the pip command and the pinned list without downloading (the tests use it).
set -euo pipefail
cd "$(dirname "$0")/.."

DEST=.whl
WITH_SCIPY=0
DRY_RUN=0
while [ $# -gt 0 ]; do
  case "$1" in
    --with-scipy) WITH_SCIPY=1 ;;
    --dest) DEST=$2; shift ;;
    --dry-run) DRY_RUN=1 ;;
    -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
    *) echo "device_wheels: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done

LIMIT_BYTES=$((64 * 1024 * 1024))

# Resolved with their dependencies (then the host's own packages are removed again).
WITH_DEPS=(
  diffusers==0.42.1
  pillow==13.0.0
  pydantic==2.14.4
  pydantic-settings==2.16.3
  fastapi==0.165.0
  uvicorn==0.55.0
  python-multipart==0.0.34
  httpx==0.29.0
  websocket-client==1.9.2
  blake3==1.0.11
  sentencepiece==0.2.3
  pytest==9.2.0
)
# Taken alone: their requirements include torch/scipy, which must not be downloaded.
NO_DEPS=(torchsde==0.2.6 trampoline==0.1.2)
[ "$WITH_SCIPY" = 1 ] && NO_DEPS+=(scipy==1.17.1)
# Already on the host (see above): dropped from the download.
HOST_HAS='^(numpy|torch|triton|nvidia_.*|transformers|accelerate|safetensors|tokenizers|requests|urllib3|charset_normalizer|certifi|idna|pyyaml|regex|packaging|filelock|tqdm|fsspec|typing_extensions|sympy|networkx|jinja2|markupsafe|mpmath)-'

PLATFORM=(--only-binary=:all: --python-version 3.12 --implementation cp --abi cp312
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
  --platform any)
PIP=(python3 -m pip download --disable-pip-version-check -q "${PLATFORM[@]}")

if [ "$DRY_RUN" = 1 ]; then
  echo "${PIP[*]} -d $DEST ${WITH_DEPS[*]}"
  echo "${PIP[*]} --no-deps -d $DEST ${NO_DEPS[*]}"
  echo "drop: $HOST_HAS"
  exit 0
fi

mkdir -p "$DEST"
"${PIP[@]}" -d "$DEST" "${WITH_DEPS[@]}"
"${PIP[@]}" --no-deps -d "$DEST" "${NO_DEPS[@]}"
for wheel in "$DEST"/*.whl; do
  name=$(basename "$wheel" | tr 'A-Z' 'a-z')
  if [[ "$name" =~ $HOST_HAS ]]; then
    rm -f "$wheel"
  fi
done
(cd "$DEST" && sha256sum ./*.whl > SHA256SUMS)
total=$(du -cb "$DEST"/*.whl | tail -n 1 | cut -f1)
echo "device_wheels: $(ls "$DEST"/*.whl | wc -l) wheels, $((total / 1024 / 1024)) MiB in $DEST"
echo "RESULT device_wheels_mib=$((total / 1024 / 1024))"
if [ "$total" -gt "$LIMIT_BYTES" ]; then
  echo "device_wheels: over the 64 MiB carry limit" >&2
  exit 1
fi
