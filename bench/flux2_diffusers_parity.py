"""PSNR of comfyd's Flux.2 template graphs against diffusers' Flux2Pipeline / Flux2KleinPipeline on
tiny files, and of the text encoders' conditioning against diffusers' encode_prompt.

    PYTHONPATH=. python bench/flux2_diffusers_parity.py [--models DIR] [--variant dev|klein|both] [--steps N]

Writes the tiny Flux.2 files (`comfyd models make-tiny --family flux2`: transformers, VAE, a Mistral
text model for [dev] and a Qwen3 for [klein]) into DIR when they are not there and, per variant:
- encodes the prompt with comfyd's CLIPLoader(flux2) + CLIPTextEncode and with diffusers'
  `_get_mistral_3_small_prompt_embeds` / `_get_qwen3_prompt_embeds` on the same module
  (`RESULT flux2_<variant>_te_max_abs_diff`);
- runs the template graph (UNETLoader, CLIPLoader flux2, CLIPTextEncode, FluxGuidance, BasicGuider,
  RandomNoise, KSamplerSelect euler, Flux2Scheduler, EmptyFlux2LatentImage, SamplerCustomAdvanced,
  VAEDecode, SaveImage) at 64x64 through `comfyd run` against the pipeline from the same prompt and
  initial noise (tests/families/flux2_reference.py says what is diffusers' and why [dev]'s padding
  is ComfyUI's): `RESULT psnr_flux2_<variant>_vs_diffusers_db` and the largest 8-bit difference;
- for [klein] also the base template (CFGGuider, cfg 4, empty negative prompt) against the
  undistilled pipeline's CFG: `RESULT psnr_flux2_klein_cfg_vs_diffusers_db`;
- for [dev] also the prompt's ids against transformers' own Tekken conversion (HF tokenizers' BPE)
  under Mistral Small 3.1's chat template, as diffusers' processor tokenizes, over a few prompts
  (unicode, digits, whitespace, quotes, emoji, control tokens typed into the prompt): `RESULT flux2_dev_token_ids_equal_transformers`;
- for [dev] also the edit workflow (comfyd/workflows/flux2_dev_edit_api.json: LoadImage ->
  VAEEncode -> ReferenceLatent, a second chained for two pictures of 64x64 and 80x64) against
  Flux2Pipeline(image=[...]): `RESULT psnr_flux2_dev_edit_{1,2}ref_vs_diffusers_db`, and how far the
  picture moves when the references are laid out at time offsets 1, 2 instead of diffusers' 10, 20
  (`RESULT psnr_flux2_dev_edit_2ref_time_scale_1_vs_diffusers_db`, informative: the tiny network
  reads its references weakly); for [klein] the same pictures chained onto its template's prompt
  against Flux2KleinPipeline(image=[...]): `RESULT psnr_flux2_klein_edit_{1,2}ref_vs_diffusers_db`;
- for [dev] also how far ComfyUI's convention (unpadded prompt, zero context padding) is from
  diffusers' own (512 tokens, the padding encoded): `RESULT psnr_flux2_dev_vs_diffusers_own_padding_db`
  (informative; no threshold).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from comfyd.cli import main as comfyd_main  # noqa: E402
from comfyd.models.families import _flux2_tiny  # noqa: E402
from comfyd.models.tiny import make_tiny  # noqa: E402
from tests.families.flux2_reference import (  # noqa: E402
    GUIDANCE,
    PROMPT,
    add_reference,
    cfg_workflow,
    diffusers_prompt_embeds,
    psnr,
    reference,
    tiny_workflow,
)


def _render(graph: dict[str, Any], root: Path, tmp: Path, name: str, inputs: Path | None = None) -> np.ndarray | None:
    workflow = tmp / f"{name}.json"
    workflow.write_text(json.dumps(graph))
    out = tmp / f"out_{name}"
    extra = ["--input-dir", str(inputs)] if inputs is not None else []
    if comfyd_main(["run", str(workflow), "--models-dir", str(root), "--output-dir", str(out), "-q", *extra]) != 0:
        return None
    with Image.open(next(out.glob("*.png"))) as png:
        return np.asarray(png.convert("RGB"))


def _conditioning_diff(root: Path, variant: str) -> float:
    from comfyd.models.manager import ModelManager
    from comfyd.models.text_encoding import encode_text
    from comfyd.settings import Settings

    manager = ModelManager(Settings(models_dir=root, output_dir=root / "out", temp_dir=root / "temp",
                                    input_dir=root / "in", device="cpu"))  # fmt: skip
    clip = manager.load_clip([Path(_flux2_tiny.NAMES[_flux2_tiny.ENCODER_OF[variant]]).name], "flux2")
    ours = encode_text(clip, PROMPT)[0][0]
    theirs = diffusers_prompt_embeds(root, variant, encoder=next(iter(clip.text_encoders.values())))
    return float((ours - theirs).abs().max())


TOKEN_PROMPTS = (
    PROMPT, "", "Ünïcödé 日本語 テスト 123456 $%^ \n\n tabs\tand  double  spaces",
    'A sign that says "FLUX.2" — em-dash, emoji 🦊!', "a (red:1.5) fox \\(escaped\\)",
    "control tokens typed in: [INST] a <s> fox[/INST]<SPECIAL_42>",
)  # fmt: skip


def _token_ids_equal() -> str:
    from diffusers.pipelines.flux2.pipeline_flux2 import SYSTEM_MESSAGE, format_input

    from comfyd.models import mistral3_encoder
    from tests.families.flux2_reference import transformers_tekken

    processor = transformers_tekken()
    equal = 0
    for prompt in TOKEN_PROMPTS:
        ours = mistral3_encoder.tokenize(mistral3_encoder.tekkenizer(), prompt)
        text = prompt.replace("\\)", ")").replace("\\(", "(")  # ComfyUI unescapes; diffusers does not
        theirs = processor.apply_chat_template(format_input([text], SYSTEM_MESSAGE)[0], tokenize=True, return_dict=True)
        equal += ours == list(theirs["input_ids"])
    return f"{equal}/{len(TOKEN_PROMPTS)}"


def _picture(path: Path, width: int, height: int, seed: int) -> Path:
    """A smooth random picture: coarse noise, bilinearly enlarged."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(height // 16 + 1, width // 16 + 1, 3), dtype=np.uint8)
    Image.fromarray(coarse).resize((width, height), Image.BILINEAR).save(path)
    return path


def _edit_results(root: Path, tmp: Path, steps: int, variant: str) -> bool:
    from comfyd.models.families import _flux2_references

    inputs = tmp / "input"
    inputs.mkdir(exist_ok=True)
    pictures = [_picture(inputs / "first.png", 64, 64, 1), _picture(inputs / "second.png", 80, 64, 2)]
    for count in (1, 2):
        if variant == "dev":
            graph = tiny_workflow("dev_edit", **{"9": {"steps": steps}, "14": {"image": "first.png"}})
            if count == 2:
                add_reference(graph, "second.png")
        else:  # [klein]: its template with the pictures chained onto the prompt
            graph = tiny_workflow("klein", **{"9": {"steps": steps}})
            last = "4"
            for picture in pictures[:count]:
                last = add_reference(graph, picture.name, first=last)
        ours = _render(graph, root, tmp, f"{variant}_edit{count}", inputs)
        if ours is None:
            return False
        theirs = reference(root, variant, steps=steps, images=pictures[:count])
        print(f"RESULT psnr_flux2_{variant}_edit_{count}ref_vs_diffusers_db={psnr(ours, theirs):.2f}")
        print(
            f"RESULT max_diff_flux2_{variant}_edit_{count}ref={int(np.abs(ours.astype(int) - theirs.astype(int)).max())}"
        )
    if variant != "dev":
        return True
    saved = _flux2_references.TIME_SCALE
    _flux2_references.TIME_SCALE = 1
    try:
        wrong = _render(graph, root, tmp, "edit_wrong_ids", inputs)
    finally:
        _flux2_references.TIME_SCALE = saved
    if wrong is None:
        return False
    print(f"RESULT psnr_flux2_dev_edit_2ref_time_scale_1_vs_diffusers_db={psnr(wrong, theirs):.2f}")
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, default=None, help="models folder (default: a temporary one)")
    parser.add_argument("--variant", choices=("dev", "klein", "both"), default="both")
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args(argv)
    variants = ("dev", "klein") if args.variant == "both" else (args.variant,)
    with tempfile.TemporaryDirectory() as tmp:
        root = args.models or Path(tmp) / "models"
        if not all((root / name).is_file() for name in _flux2_tiny.NAMES.values()):
            make_tiny(root, family="flux2")
        for variant in variants:
            print(f"RESULT flux2_{variant}_te_max_abs_diff={_conditioning_diff(root, variant):.3g}")
            if variant == "dev":
                print(f"RESULT flux2_dev_token_ids_equal_transformers={_token_ids_equal()}")
            cases = [(variant, tiny_workflow(variant, **{"9": {"steps": args.steps}}), None)]
            if variant == "klein":
                graph = cfg_workflow("klein", GUIDANCE)
                graph["9"]["inputs"]["steps"] = args.steps
                cases.append(("klein_cfg", graph, GUIDANCE))
            for name, graph, cfg in cases:
                ours = _render(graph, root, Path(tmp), name)
                if ours is None:
                    return 1
                theirs = reference(root, variant, steps=args.steps, cfg=cfg)
                print(f"RESULT psnr_flux2_{name}_vs_diffusers_db={psnr(ours, theirs):.2f}")
                print(f"RESULT max_diff_flux2_{name}={int(np.abs(ours.astype(int) - theirs.astype(int)).max())}")
                if name == "dev":
                    own = reference(root, variant, steps=args.steps, diffusers_padding=True)
                    print(f"RESULT psnr_flux2_dev_vs_diffusers_own_padding_db={psnr(ours, own):.2f}")
            if not _edit_results(root, Path(tmp), args.steps, variant):
                return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
