#!/usr/bin/env bash
# Create .venv and install comfyd with its test tools.
#
# torch is installed first and explicitly, because a bare `torch` requirement pulls a multi-GB
# CUDA build on a machine without torch:
#   - no NVIDIA GPU: torch==2.13.0, the CPU build (set COMFYD_TORCH_INDEX_URL to a CPU wheel
#     index if your pip does not already resolve torch==2.13.0 to a CPU wheel);
#   - NVIDIA GPU (nvidia-smi works) or COMFYD_TORCH_CUDA=1: the CUDA build from
#     COMFYD_TORCH_INDEX_URL (see Dockerfile.gpu for the pinned CUDA index).
# An existing importable torch in the venv is kept.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
TORCH_VERSION=${COMFYD_TORCH_VERSION:-2.13.0}

[ -x .venv/bin/python ] || "$PY" -m venv .venv
PIP=(.venv/bin/python -m pip --disable-pip-version-check)

if ! .venv/bin/python -c "import torch" >/dev/null 2>&1; then
  args=("torch==${TORCH_VERSION}")
  if [ -n "${COMFYD_TORCH_INDEX_URL:-}" ]; then
    args+=(--index-url "${COMFYD_TORCH_INDEX_URL}")
  fi
  if [ "${COMFYD_TORCH_CUDA:-0}" != "1" ] && ! command -v nvidia-smi >/dev/null 2>&1; then
    echo "setup: no NVIDIA GPU found: installing the CPU build of torch ${TORCH_VERSION}"
  else
    echo "setup: NVIDIA GPU: installing torch ${TORCH_VERSION} (CUDA build from \${COMFYD_TORCH_INDEX_URL:-PyPI})"
  fi
  "${PIP[@]}" install -q "${args[@]}"
fi
# The exact versions the images install (constraints.txt, generated from this environment).
"${PIP[@]}" install -q -c constraints.txt -e '.[dev]'
# Refuse to go on with a CUDA build on a machine without a GPU: it means the pin above failed.
.venv/bin/python - <<'PYEOF'
import torch
print(f"setup: torch {torch.__version__} (cuda available: {torch.cuda.is_available()})")
PYEOF
