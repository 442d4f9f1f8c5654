#!/usr/bin/env bash
# Pack the source of a ComfyUI checkout into .comfyui/comfyui-src.tar.gz (git-ignored), so that a
# lent GPU host with no network can render the same workflows beside comfyd (bench/gpu_check.sh
# unpacks it when it is carried).
#
#     scripts/comfyui_tarball.sh [COMFYUI_DIR] [--dest DIR]
#
# COMFYUI_DIR defaults to $COMFYUI_DIR, else /work/comfyui (the checkout bench/comfyui_render.py
# is pointed at). Only the code and the small data files it reads (tokenizer vocabularies, model
# configs) are packed: no .git, no models, no input/output/user folders, no custom nodes, no
# tests, no caches, and no weights file of any kind. The tarball must stay under 20 MB (the carry
# limit of a device run is 64 MiB for the wheels and this together); the script fails otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."

SRC=${COMFYUI_DIR:-/work/comfyui}
DEST=.comfyui
while [ $# -gt 0 ]; do
  case "$1" in
    --dest) DEST=$2; shift ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    -*) echo "comfyui_tarball: unknown option $1" >&2; exit 2 ;;
    *) SRC=$1 ;;
  esac
  shift
done

if [ ! -f "$SRC/main.py" ] || [ ! -f "$SRC/comfyui_version.py" ]; then
  echo "comfyui_tarball: $SRC is not a ComfyUI checkout (no main.py / comfyui_version.py)" >&2
  exit 2
fi
LIMIT_BYTES=$((20 * 1000 * 1000))
mkdir -p "$DEST"
OUT="$DEST/comfyui-src.tar.gz"
PARTIAL="$OUT.partial"
# Paths are stored under comfyui/ whatever the checkout's folder is called.
tar -C "$SRC" --transform 's,^\.,comfyui,' -czf "$PARTIAL" \
  --exclude='./.git' --exclude='./.github' --exclude='./models' --exclude='./input' --exclude='./output' \
  --exclude='./temp' --exclude='./user' --exclude='./custom_nodes/*' --exclude='./tests' \
  --exclude='./tests-unit' --exclude='__pycache__' --exclude='*.pyc' --exclude='*.safetensors' \
  --exclude='*.ckpt' --exclude='*.pt' --exclude='*.pth' --exclude='*.bin' --exclude='*.gguf' \
  --exclude='*.onnx' --exclude='*.db' .
SIZE=$(stat -c %s "$PARTIAL")
if [ "$SIZE" -ge "$LIMIT_BYTES" ]; then
  rm -f "$PARTIAL"
  echo "comfyui_tarball: the tarball would be $SIZE bytes, over the 20 MB limit" >&2
  exit 1
fi
mv "$PARTIAL" "$OUT"
VERSION=$(sed -n 's/^__version__ *= *"\(.*\)"/\1/p' "$SRC/comfyui_version.py")
echo "comfyui_tarball: wrote $OUT (ComfyUI ${VERSION:-?}, $SIZE bytes, $(tar -tzf "$OUT" | wc -l) entries)"
