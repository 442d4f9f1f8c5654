"""Parity check: run an API-format workflow through comfyd and compare its PNG with ComfyUI's.

    python bench/parity.py WORKFLOW.json REFERENCE.png [--models-dir D] [--input-dir D]
                           [--set 3.seed=1] [--min-psnr 40] [--device cpu] [--save-to OUT.png]

The workflow runs in this process with the real nodes (parse -> validate -> execute). The first
image the workflow saves (SaveImage before PreviewImage, in node order) is compared with the
reference: both are read as 8-bit RGB, and the script prints the PSNR in dB, the largest
per-channel difference (0..255), and a final line

    RESULT psnr_db=<value>

Exit status 0 when PSNR >= --min-psnr (ComfyUI's deterministic samplers should reach 40 dB on
CPU fp32, ancestral/SDE samplers 30 dB), 1 when below, 2 when the workflow fails to run.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

ImageLike = str | Path | Image.Image | np.ndarray


def _as_rgb_array(image: ImageLike) -> np.ndarray:
    """uint8 [H, W, 3] from a path, a PIL image or an array (uint8, or float in 0..1)."""
    if isinstance(image, (str, Path)):
        with Image.open(image) as opened:
            return np.asarray(opened.convert("RGB"), dtype=np.uint8)
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), dtype=np.uint8)
    array = np.asarray(image)
    if array.dtype != np.uint8:
        array = np.clip(array.astype(np.float64) * 255.0, 0, 255).astype(np.uint8)
    if array.ndim == 2:
        array = np.stack([array] * 3, axis=-1)
    if array.ndim != 3 or array.shape[-1] not in (3, 4):
        raise ValueError(f"expected an image shaped [H, W, 3|4], got {array.shape}")
    return array[..., :3]


def compare_png(a: ImageLike, b: ImageLike) -> tuple[float, int]:
    """(PSNR in dB over 8-bit RGB, max absolute channel difference). Identical images give inf."""
    first, second = _as_rgb_array(a), _as_rgb_array(b)
    if first.shape != second.shape:
        raise ValueError(
            f"image sizes differ: {first.shape[1]}x{first.shape[0]} vs {second.shape[1]}x{second.shape[0]}"
        )
    diff = first.astype(np.int32) - second.astype(np.int32)
    max_diff = int(np.abs(diff).max()) if diff.size else 0
    mse = float(np.mean(diff.astype(np.float64) ** 2)) if diff.size else 0.0
    if mse == 0.0:
        return math.inf, max_diff
    return 10.0 * math.log10(255.0**2 / mse), max_diff


def first_saved_image(outputs: dict[str, Any], roots: dict[str, Path]) -> Path:
    """The file of the first image in `outputs` ({node_id: ui}); saved outputs before previews."""
    entries: list[tuple[int, str, dict[str, Any]]] = []
    for node_id, ui in outputs.items():
        for image in (ui or {}).get("images", []):
            rank = 0 if image.get("type", "output") == "output" else 1
            entries.append((rank, node_id, image))
    if not entries:
        raise RuntimeError("the workflow saved no image (it needs a SaveImage or PreviewImage node)")

    def node_order(entry: tuple[int, str, dict[str, Any]]) -> tuple[int, int, str]:
        rank, node_id, _image = entry
        return (rank, int(node_id) if node_id.isdigit() else sys.maxsize, node_id)

    rank, _node_id, image = min(entries, key=node_order)
    root = roots[image.get("type", "output")]
    return root / image.get("subfolder", "") / image["filename"]


def run_workflow(
    workflow: dict[str, Any], models_dir: Path | None, input_dir: Path | None, work: Path, device: str = "cpu"
) -> Path:
    """Execute `workflow` with comfyd; returns the path of the first image it saved."""
    from comfyd.runner import LocalRunner
    from comfyd.settings import Settings

    overrides: dict[str, Any] = {"output_dir": work / "output", "temp_dir": work / "temp", "device": device}
    if models_dir is not None:
        overrides["models_dir"] = models_dir
    if input_dir is not None:
        overrides["input_dir"] = input_dir
    runner = LocalRunner(Settings(**overrides))
    result = runner.run(workflow)
    if not result.ok:
        raise RuntimeError(f"workflow {result.status}: {json.dumps(result.error, indent=2)}")
    roots = {"output": runner.env.output_dir, "temp": runner.env.temp_dir, "input": runner.env.input_dir}
    return first_saved_image(result.outputs, roots)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workflow", type=Path, help="API-format workflow JSON (bare or {'prompt': ...})")
    parser.add_argument("reference", type=Path, help="the PNG ComfyUI produced for this workflow")
    parser.add_argument("--models-dir", type=Path, default=None, help="ComfyUI-layout models folder")
    parser.add_argument("--input-dir", type=Path, default=None, help="folder LoadImage reads from")
    parser.add_argument("--set", action="append", default=[], metavar="NODE.INPUT=VALUE", dest="sets")
    parser.add_argument("--min-psnr", type=float, default=40.0, help="pass threshold in dB (default 40)")
    parser.add_argument("--device", default="cpu", help="comfyd's device (default cpu, as the references)")
    parser.add_argument("--save-to", type=Path, default=None, help="also copy comfyd's PNG here")
    args = parser.parse_args(argv)

    from comfyd.runner import apply_sets

    try:
        workflow = apply_sets(json.loads(args.workflow.read_text()), args.sets)
        reference = _as_rgb_array(args.reference)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="comfyd-parity-") as tmp:
        try:
            produced = run_workflow(workflow, args.models_dir, args.input_dir, Path(tmp), args.device)
        except Exception as exc:  # any failure to run is reported, not raised
            body = getattr(exc, "body", None)
            detail = json.dumps(body() if callable(body) else body, indent=2) if body else str(exc)
            print(f"error: the workflow did not run: {detail}", file=sys.stderr)
            return 2
        if args.save_to is not None:
            args.save_to.write_bytes(produced.read_bytes())
        try:
            psnr, max_diff = compare_png(produced, reference)
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    print(f"comfyd image:    {produced.name}")
    print(f"reference image: {args.reference}")
    print(f"PSNR:            {psnr:.2f} dB (threshold {args.min_psnr:g} dB)")
    print(f"max abs diff:    {max_diff} / 255")
    print(f"RESULT psnr_db={psnr:.4f}" if math.isfinite(psnr) else "RESULT psnr_db=inf")
    return 0 if psnr >= args.min_psnr else 1


if __name__ == "__main__":
    sys.exit(main())
