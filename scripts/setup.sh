#!/usr/bin/env bash
# Create .venv and install comfyd with its test tools.
#
# torch is installed first and explicitly, because a bare `torch` requirement pulls a multi-GB
# CUDA build onto a machine without a GPU. scripts/torch_index.py decides:
#   - which build: CUDA when COMFYD_TORCH_CUDA=1 or an NVIDIA GPU answers `nvidia-smi -L`,
#     else CPU (COMFYD_TORCH_CUDA=0 forces CPU);
#   - from where: pip's own resolution when it already yields that build (a local wheel, a
#     mirror), else the official index of the build (https://download.pytorch.org/whl/cpu or
#     .../whl/cu128); COMFYD_TORCH_INDEX_URL overrides.
# An existing importable torch in the venv is kept. Either way the script fails (exit 1) when
# the torch it ends with is not the wanted build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
TORCH_VERSION=${COMFYD_TORCH_VERSION:-2.13.0}

[ -x .venv/bin/python ] || "$PY" -m venv .venv
PIP=(.venv/bin/python -m pip --disable-pip-version-check)

want=$("$PY" scripts/torch_index.py want)
if ! .venv/bin/python -c "import torch" >/dev/null 2>&1; then
  report=$(mktemp)
  trap 'rm -f "$report"' EXIT
  # What pip would install unaided (metadata only, nothing is installed); may fail offline.
  "${PIP[@]}" install -q --dry-run --no-deps --ignore-installed --report "$report" \
    "torch==${TORCH_VERSION}" >/dev/null 2>&1 || : >"$report"
  index=$("$PY" scripts/torch_index.py index "$want" "$report")
  args=("torch==${TORCH_VERSION}")
  if [ -n "$index" ]; then
    args+=(--index-url "$index")
  fi
  echo "setup: installing the $want build of torch ${TORCH_VERSION} from ${index:-the configured package index}"
  "${PIP[@]}" install -q "${args[@]}"
fi
# The exact versions the images install (constraints.txt, generated from this environment).
"${PIP[@]}" install -q -c constraints.txt -e '.[dev]'
# The upscale extra's spandrel, without its torchvision requirement: PyPI's torchvision would
# replace the torch build chosen above, and comfyd loads spandrel without it (comfyd.models.upscale).
"${PIP[@]}" install -q -c constraints.txt --no-deps spandrel einops
# Refuse to end with the wrong build (a CUDA torch on a machine without a GPU, say).
.venv/bin/python scripts/torch_index.py verify "$want"
