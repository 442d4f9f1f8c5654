#!/usr/bin/env bash
# The GPU check in one prepared command, for a lent GPU host with no network.
#
#     bash bench/gpu_check.sh                 # GPU host: results under $OUT
#     bash bench/gpu_check.sh --cpu-dry-run   # any machine: the same steps, tiny models, CPU
#
# On the GPU host the wheels that scripts/device_wheels.sh downloaded into .whl/ (carried with the
# working tree) are installed into a temporary site directory first; nothing is fetched. The
# huggingface_hub family of wheels is added only if diffusers cannot import with the host's own
# (a newer hub than the host's transformers accepts would break transformers instead).
# Then bench/gpu_check.py runs every step; see its docstring for what they are.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${OUT:-$PWD/gpu-check-out}
mkdir -p "$OUT"
export OUT HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 COMFYD_CONFIG=/dev/null
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

DRY_RUN=0
for arg in "$@"; do [ "$arg" = "--cpu-dry-run" ] && DRY_RUN=1; done

if compgen -G ".whl/*.whl" >/dev/null; then
  SITE=$(mktemp -d "${TMPDIR:-/tmp}/comfyd-site-XXXXXX")
  HUB='^(huggingface_hub|hf_xet|httpx2|httpcore2|truststore|lazy_importer|opentelemetry_api)-'
  base=() hub=()
  for wheel in .whl/*.whl; do
    if [[ "$(basename "$wheel")" =~ $HUB ]]; then hub+=("$wheel"); else base+=("$wheel"); fi
  done
  (cd .whl && sha256sum --quiet -c SHA256SUMS) || { echo "gpu_check: .whl/ does not match SHA256SUMS" >&2; exit 1; }
  PIP=("$PY" -m pip install -q --no-index --no-deps --disable-pip-version-check --target "$SITE")
  if [ "$DRY_RUN" = 1 ]; then
    # Prove the carried set installs for the GPU host (CPython 3.12, manylinux x86_64), then run
    # with this machine's own packages: the wheels need not fit this interpreter.
    "${PIP[@]}" --only-binary=:all: --python-version 3.12 --implementation cp --abi cp312 \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
      --platform any "${base[@]}" "${hub[@]}"
    echo "gpu_check: the .whl/ set installs for cp312 ($(ls "$SITE" | wc -l) entries); dry run uses this interpreter's packages"
  else
    "${PIP[@]}" "${base[@]}"
    export PYTHONPATH="$PWD:$SITE"
    if ! "$PY" -c "import diffusers" 2>/dev/null && [ ${#hub[@]} -gt 0 ]; then
      echo "gpu_check: diffusers needs a newer huggingface_hub than the host's; adding the carried one"
      "${PIP[@]}" "${hub[@]}"
    fi
    echo "gpu_check: installed $(ls "$SITE" | wc -l) entries from .whl/ into $SITE"
  fi
elif [ "$DRY_RUN" = 0 ]; then
  echo "gpu_check: no .whl/ (run scripts/device_wheels.sh before the GPU window); using what is installed"
fi

# A carried ComfyUI source tarball (scripts/comfyui_tarball.sh) makes ComfyUI render the same job
# in the same run (gpu_its_ratio against ComfyUI). COMFYUI_TARBALL names another one; empty: none.
TARBALL=${COMFYUI_TARBALL-.comfyui/comfyui-src.tar.gz}
COMFYUI_ARGS=()
if [ -n "$TARBALL" ] && [ -f "$TARBALL" ]; then
  CDIR=$(mktemp -d "${TMPDIR:-/tmp}/comfyui-src-XXXXXX")
  tar -xzf "$TARBALL" -C "$CDIR"
  COMFYUI_ARGS=(--comfyui "$CDIR/comfyui")
  echo "gpu_check: ComfyUI from $TARBALL unpacked into $CDIR/comfyui; it renders beside comfyd"
fi

exec "$PY" bench/gpu_check.py "$@" ${COMFYUI_ARGS[@]+"${COMFYUI_ARGS[@]}"} --out "$OUT"
