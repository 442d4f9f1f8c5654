"""Per-case PSNR of comfyd against ComfyUI's references in tests/fidelity (what the README quotes).

    python bench/fidelity_cases.py [--models-dir D] [CASE ...]

Writes the parity model files into --models-dir (a temporary folder by default), runs each case's
workflow through one comfyd runner on CPU, and prints PSNR and max abs diff per case, then

    RESULT cases=<n>  RESULT cases_passing=<n>  RESULT bit_identical=<n>
    RESULT min_psnr_db=<value>  RESULT max_diff=<value>

(min_psnr_db over the cases that are not bit-identical). tests/fidelity/test_parity.py asserts the
issue's bar on the same cases; this script only reports.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
CASES = HERE.parent / "tests" / "fidelity"
sys.path.insert(0, str(CASES))

from make_cases import threshold_db, write_models  # noqa: E402
from parity import compare_png, first_saved_image  # noqa: E402
from PIL import Image, ImageSequence  # noqa: E402


def compare_frames(produced: Path, reference: Path) -> tuple[float, int]:
    """compare_png over every frame (animated outputs): the lowest PSNR and the largest diff."""
    with Image.open(produced) as ours, Image.open(reference) as theirs:
        if getattr(ours, "n_frames", 1) != getattr(theirs, "n_frames", 1):
            return -math.inf, 255
        pairs = list(zip(ImageSequence.Iterator(ours), ImageSequence.Iterator(theirs), strict=True))
        scores = [compare_png(a.convert("RGB"), b.convert("RGB")) for a, b in pairs]
    return min(s[0] for s in scores), max(s[1] for s in scores)


def reference_file(name: str) -> Path:
    png = CASES / "references" / f"{name}.png"
    return png if png.exists() else png.with_suffix(".webp")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cases", nargs="*", help="case names (default: all)")
    parser.add_argument("--models-dir", type=Path, default=None)
    args = parser.parse_args(argv)

    from comfyd.runner import LocalRunner
    from comfyd.settings import Settings

    names = args.cases or sorted(p.stem for p in (CASES / "workflows").glob("*.json"))
    with tempfile.TemporaryDirectory(prefix="comfyd-fidelity-") as tmp:
        models = args.models_dir or Path(tmp) / "models"
        write_models(models)
        # allow_pickle: the hypernetwork case's file is A1111's (weights-only) pickle format.
        settings = Settings(device="cpu", allow_pickle=True, models_dir=models, input_dir=CASES / "inputs",
                            output_dir=Path(tmp) / "output", temp_dir=Path(tmp) / "temp")
        results: list[tuple[str, float, int, float]] = []
        with LocalRunner(settings) as runner:
            roots = {"output": runner.env.output_dir, "temp": runner.env.temp_dir, "input": runner.env.input_dir}
            for name in names:
                workflow = json.loads((CASES / "workflows" / f"{name}.json").read_text())
                result = runner.run(workflow)
                if not result.ok:
                    print(f"{name}: failed: {json.dumps(result.error)[:500]}")
                    results.append((name, -math.inf, 255, threshold_db(workflow)))
                    continue
                produced = first_saved_image(result.outputs, roots)
                psnr, max_diff = compare_frames(produced, reference_file(name))
                bar = threshold_db(workflow)
                results.append((name, psnr, max_diff, bar))
                print(f"{name:36s} PSNR {psnr:7.2f} dB  max diff {max_diff:3d}  bar {bar:g} dB", flush=True)
    finite = [psnr for _, psnr, _, _ in results if math.isfinite(psnr)]
    print(f"RESULT cases={len(results)}")
    print(f"RESULT cases_passing={sum(1 for _, psnr, _, bar in results if psnr >= bar)}")
    print(f"RESULT bit_identical={sum(1 for _, psnr, _, _ in results if psnr == math.inf)}")
    print(f"RESULT min_psnr_db={min(finite):.2f}" if finite else "RESULT min_psnr_db=inf")
    print(f"RESULT max_diff={max((d for _, _, d, _ in results), default=0)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
