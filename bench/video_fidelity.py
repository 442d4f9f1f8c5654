"""Per-case comparison of comfyd's video and audio files with ComfyUI's (tests/fidelity/video_*).

    python bench/video_fidelity.py

Runs every workflow of tests/fidelity/video_workflows through comfyd and prints, per case, the
frame count, the lowest per-frame PSNR and the audio PSNR against ComfyUI 0.3.64's file (decoded;
the VideoHelperSuite cases rendered with that pack loaded), and whether the two files are
byte-identical; then RESULT lines.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "fidelity"))

import test_video_parity as cases  # noqa: E402


def main() -> int:
    from comfyd.runner import LocalRunner
    from comfyd.settings import Settings

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        runner = LocalRunner(Settings(device="cpu", models_dir=work / "models", input_dir=cases.HERE / "inputs",
                                      output_dir=work / "output", temp_dir=work / "temp"))
        roots = {"output": runner.env.output_dir, "temp": runner.env.temp_dir, "input": runner.env.input_dir}
        identical, lowest, lowest_loose = 0, float("inf"), float("inf")
        for path in cases.WORKFLOWS:
            result = runner.run(json.loads(path.read_text()))
            if not result.ok:
                print(f"{path.stem}: FAILED {result.error}")
                return 1
            produced = cases.first_saved_file(result.outputs, roots)
            (expected,) = cases.REFERENCES.glob(f"{path.stem}.*")
            ours, theirs = cases.decode(produced), cases.decode(expected)
            frame_db = [cases.psnr(a, b, 255.0) for a, b in zip(ours["frames"], theirs["frames"], strict=True)]
            audio_db = None
            if ours.get("audio") is not None and theirs.get("audio") is not None:
                n = min(ours["audio"].shape[1], theirs["audio"].shape[1])
                audio_db = cases.psnr(ours["audio"][:, :n], theirs["audio"][:, :n], 2.0)
            same = produced.read_bytes() == expected.read_bytes()
            identical += same
            worst = min([*frame_db, *([audio_db] if audio_db is not None else [])], default=float("inf"))
            if path.stem in cases.CASE_BAR_DB:
                lowest_loose = min(lowest_loose, worst)
            else:
                lowest = min(lowest, worst)
            print(f"{path.stem}: frames {len(ours['frames'])}, min frame PSNR "
                  f"{min(frame_db, default=float('nan')):.2f} dB, audio PSNR {audio_db}, byte-identical {same}")
    print(f"RESULT video_cases={len(cases.WORKFLOWS)}")
    print(f"RESULT byte_identical={identical}")
    print(f"RESULT min_psnr_db={lowest:.2f}")
    # AV1 (not deterministic) and VideoHelperSuite's lossy videos (another FFmpeg build): see
    # CASE_BAR_DB in tests/fidelity/test_video_parity.py.
    print(f"RESULT loose_cases_min_psnr_db={lowest_loose:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
