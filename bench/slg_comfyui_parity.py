"""SkipLayerGuidanceDiT, SkipLayerGuidanceDiTSimple and FreSca held to ComfyUI itself (ComfyUI runs
in its own Python, `--comfyui-side`, on CPU, through its public functions and the nodes' own
`execute`).

Both sides load the same seeded random transformers and sample the same fixed conditioning tensors
(a positive and a negative prompt; text encoders left out) with KSampler (euler, 3 steps, cfg 4.5,
64x64, seed 7), each case with one of the patches, and the sampled latents are compared:

- an SD3.5-layout MMDiT two joint blocks deep (128 wide, 2 heads; ComfyUI reads every size of an
  MMDiT from the file), ModelSamplingSD3 shift 3, sgm_uniform;
- a Flux (schnell layout: no guidance embedding) cut to two double and two single blocks of one
  128-wide head, with 64-wide text and 32-wide pooled inputs. ComfyUI fixes Flux's width (3072,
  24 heads) and text width (4096), so the ComfyUI side replaces those three numbers in its
  detected config by the file's (the bench's only change to ComfyUI); simple scheduler.

    python bench/slg_comfyui_parity.py --workdir /tmp/slg-parity \
        --comfyui /work/comfyui --comfyui-python /work/cvenv/bin/python [--save-reference PATH]

prints RESULT psnr_<case>_db=... per case (over the latent, peak = ComfyUI's latent range) and
RESULT max_abs_diff_<case>=..., and how far each patch moved the latent from the unpatched run
(RESULT moved_<case>=..., so a patch that does nothing cannot pass). `--save-reference` also
writes ComfyUI's latents and ComfyUI's FreSca `Fourier_filter` on seeded random 4-D and 5-D
tensors, for tests/families/test_skip_layer_guidance_dit.py.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

SIZE, STEPS, SEED, CFG, SD3_SHIFT = 64, 3, 7, 4.5, 3.0
FILES = {
    "sd3": "diffusion_models/slg-sd3-cut.safetensors",
    "flux": "diffusion_models/slg-flux-cut.safetensors",
    "chroma": "diffusion_models/slg-chroma-cut.safetensors",
}
COND = "slg-conditioning.safetensors"
SD3_CONFIG = {
    "sample_size": 32, "patch_size": 2, "in_channels": 16, "num_layers": 2, "attention_head_dim": 64,
    "num_attention_heads": 2, "joint_attention_dim": 4096, "caption_projection_dim": 128,
    "pooled_projection_dim": 2048, "out_channels": 16, "pos_embed_max_size": 32,
    "dual_attention_layers": (), "qk_norm": "rms_norm",
}  # fmt: skip
FLUX_CONFIG = {
    "patch_size": 1, "in_channels": 64, "out_channels": 64, "num_layers": 2, "num_single_layers": 2,
    "attention_head_dim": 128, "num_attention_heads": 1, "joint_attention_dim": 64,
    "pooled_projection_dim": 32, "guidance_embeds": False, "axes_dims_rope": [16, 56, 56],
}  # fmt: skip
CHROMA_CONFIG = {
    "patch_size": 1, "in_channels": 64, "out_channels": 64, "num_layers": 2, "num_single_layers": 2,
    "attention_head_dim": 128, "num_attention_heads": 1, "joint_attention_dim": 64,
    "axes_dims_rope": [16, 56, 56], "approximator_num_channels": 64, "approximator_hidden_dim": 32,
    "approximator_layers": 2,
}  # fmt: skip
# case -> (family, node, inputs as ComfyUI's execute takes them)
CASES: dict[str, tuple[str, str | None, dict[str, Any]]] = {
    "sd3_plain": ("sd3", None, {}),
    "sd3_dit": ("sd3", "SkipLayerGuidanceDiT", dict(
        double_layers="0", single_layers="7, 8, 9", scale=3.0, start_percent=0.0, end_percent=0.6,
        rescaling_scale=0.5)),
    "sd3_simple": ("sd3", "SkipLayerGuidanceDiTSimple", dict(
        double_layers="1", single_layers="", start_percent=0.0, end_percent=0.5)),
    "sd3_fresca": ("sd3", "FreSca", dict(scale_low=0.8, scale_high=1.5, freq_cutoff=2)),
    "flux_plain": ("flux", None, {}),
    "flux_dit": ("flux", "SkipLayerGuidanceDiT", dict(
        double_layers="1", single_layers="0", scale=2.0, start_percent=0.0, end_percent=0.6,
        rescaling_scale=0.0)),
    "flux_simple": ("flux", "SkipLayerGuidanceDiTSimple", dict(
        double_layers="0", single_layers="1", start_percent=0.0, end_percent=1.0)),
    "chroma_plain": ("chroma", None, {}),
    "chroma_dit": ("chroma", "SkipLayerGuidanceDiT", dict(
        double_layers="0", single_layers="1", scale=3.0, start_percent=0.0, end_percent=0.6,
        rescaling_scale=0.3)),
    "chroma_simple": ("chroma", "SkipLayerGuidanceDiTSimple", dict(
        double_layers="", single_layers="0, 1", start_percent=0.0, end_percent=1.0)),
}  # fmt: skip
# FreSca's filter on random tensors: (shape, scale_low, scale_high, freq_cutoff)
FILTER_CASES = (((2, 4, 9, 8), 0.7, 1.3, 2), ((1, 3, 2, 7, 6), 1.0, 1.25, 20), ((1, 2, 16, 10), 1.2, 0.5, 3))


def make_files(work: Path) -> None:
    from comfyd.models import tiny
    from comfyd.models.families import _chroma_transformer, _flux_transformer, _sd3_transformer
    from comfyd.models.keymap import to_original

    (work / "diffusion_models").mkdir(parents=True, exist_ok=True)
    for family, module, config, translator in (
        ("sd3", _sd3_transformer, SD3_CONFIG, _sd3_transformer.SD3Translator),
        ("flux", _flux_transformer, FLUX_CONFIG, _flux_transformer.FluxTranslator),
        ("chroma", _chroma_transformer, CHROMA_CONFIG, _chroma_transformer.ChromaTranslator),
    ):
        path = work / FILES[family]
        if not path.is_file():
            net = tiny.random_module(module.empty_transformer(config), 0, f"slg-{family}-cut")
            save_file(to_original(net.state_dict(), translator(config, "")), str(path))
    if not (work / COND).is_file():
        generator = torch.Generator().manual_seed(1)
        shapes = {"sd3_context": (1, 12, 4096), "sd3_pooled": (1, 2048), "flux_context": (1, 10, 64),
                  "flux_pooled": (1, 32), "chroma_context": (1, 9, 64)}  # fmt: skip
        save_file(
            {f"{side}{name}": torch.randn(*shape, generator=generator)
             for side in ("", "negative_") for name, shape in shapes.items()},
            str(work / COND),
        )  # fmt: skip


def conditioning(cond: dict[str, torch.Tensor], family: str) -> tuple[list, list]:
    if family == "chroma":  # T5 alone: no pooled vector
        return [[cond["chroma_context"], {"pooled_output": None}]], [
            [cond["negative_chroma_context"], {"pooled_output": None}]
        ]
    return tuple(  # type: ignore[return-value]
        [[cond[f"{side}{family}_context"], {"pooled_output": cond[f"{side}{family}_pooled"]}]]
        for side in ("", "negative_")
    )


def _scheduler(family: str) -> str:
    return "sgm_uniform" if family == "sd3" else "simple"


def comfyd_sample(work: Path, case: str) -> torch.Tensor:
    """comfyd's sampled latent for one case."""
    from comfyd.models.families import sd3
    from comfyd.models.manager import ModelManager
    from comfyd.nodes.advanced.fresca import FreSca
    from comfyd.nodes.advanced.skip_layer_guidance_dit import SkipLayerGuidanceDiT, SkipLayerGuidanceDiTSimple
    from comfyd.sampling.ksampler import common_ksampler
    from comfyd.settings import Settings

    family, node, inputs = CASES[case]
    manager = ModelManager(Settings(models_dir=work, device="cpu", home=work / "home"))
    model = manager.load_diffusion_model(Path(FILES[family]).name)
    if family == "sd3":
        model = model.with_sampling(sd3.model_sampling(SD3_SHIFT))
    if node is not None:
        patches = {"SkipLayerGuidanceDiT": SkipLayerGuidanceDiT, "SkipLayerGuidanceDiTSimple": SkipLayerGuidanceDiTSimple,
                   "FreSca": FreSca}  # fmt: skip
        (model,) = patches[node]().run(None, model, **inputs)  # type: ignore[arg-type]
    positive, negative = conditioning(load_file(str(work / COND)), family)
    latent = {"samples": torch.zeros(1, 16, SIZE // 8, SIZE // 8)}
    out = common_ksampler(model, SEED, STEPS, CFG, "euler", _scheduler(family), positive, negative, latent)
    return out["samples"].float()


def comfyui_side(work: Path, comfyui: Path, reference: Path) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from comfyui_render import load_comfyui

    load_comfyui(comfyui, work, None, work / "comfyui-out")
    import comfy.model_detection
    import comfy.sd
    import comfy.utils
    import nodes
    from comfy_extras.nodes_fresca import Fourier_filter, FreSca
    from comfy_extras.nodes_model_advanced import ModelSamplingSD3
    from comfy_extras.nodes_slg import SkipLayerGuidanceDiT, SkipLayerGuidanceDiTSimple

    detect = comfy.model_detection.detect_unet_config

    def cut_detect(state_dict, key_prefix, metadata=None):  # the bench's only change to ComfyUI
        config = detect(state_dict, key_prefix, metadata=metadata)
        if config is not None and config.get("image_model") in ("flux", "chroma"):
            hidden, context = state_dict[f"{key_prefix}txt_in.weight"].shape
            config = {**config, "hidden_size": hidden, "num_heads": hidden // 128, "context_in_dim": context}
        if config is not None and config.get("image_model") == "chroma":
            layers = f"{key_prefix}distilled_guidance_layer.layers."
            config["out_dim"] = hidden
            config["hidden_dim"] = state_dict[f"{key_prefix}distilled_guidance_layer.in_proj.weight"].shape[0]
            config["n_layers"] = len(
                {k[len(layers) :].split(".")[0] for k in state_dict if k.startswith(layers)}
            )
        return config

    comfy.model_detection.detect_unet_config = cut_detect
    patches = {"SkipLayerGuidanceDiT": SkipLayerGuidanceDiT, "SkipLayerGuidanceDiTSimple": SkipLayerGuidanceDiTSimple,
               "FreSca": FreSca}  # fmt: skip
    cond = comfy.utils.load_torch_file(str(work / COND))
    out: dict[str, torch.Tensor] = {}
    for case, (family, node, inputs) in CASES.items():
        stored = comfy.utils.load_torch_file(str(work / FILES[family]))
        model = comfy.sd.load_diffusion_model_state_dict(dict(stored))
        built = set(model.model.diffusion_model.state_dict())
        if built != set(stored):  # ComfyUI loads non-strictly: make sure every weight is the file's
            raise SystemExit(
                f"ComfyUI's {family} model differs from the file: {sorted(built ^ set(stored))[:8]}"
            )
        if family == "sd3":
            (model,) = ModelSamplingSD3().patch(model, SD3_SHIFT)
        if node is not None:
            model = patches[node].execute(model, **inputs).result[0]
        positive, negative = conditioning(cond, family)
        latent = {"samples": torch.zeros(1, 16, SIZE // 8, SIZE // 8)}
        (sampled,) = nodes.common_ksampler(
            model, SEED, STEPS, CFG, "euler", _scheduler(family), positive, negative, latent
        )
        out[case] = sampled["samples"].float().contiguous()
    generator = torch.Generator().manual_seed(11)
    for i, (shape, low, high, cutoff) in enumerate(FILTER_CASES):
        x = torch.randn(*shape, generator=generator)
        out[f"filter{i}_input"] = x
        out[f"filter{i}_output"] = Fourier_filter(
            x, scale_low=low, scale_high=high, freq_cutoff=cutoff
        ).contiguous()
    save_file(out, str(reference))


def psnr(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    mse = float(((ours - theirs) ** 2).mean())
    peak = float(theirs.max() - theirs.min())
    return float("inf") if mse == 0 else 10 * torch.log10(torch.tensor(peak**2 / mse)).item()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--comfyui", type=Path, required=True)
    parser.add_argument("--comfyui-python", default=sys.executable)
    parser.add_argument("--save-reference", type=Path, help="keep ComfyUI's latents and filter outputs here")
    parser.add_argument("--comfyui-side", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    work = args.workdir.resolve()
    reference = (args.save_reference or work / "comfyui-reference.safetensors").resolve()
    if args.comfyui_side:
        with torch.inference_mode():  # as ComfyUI's executor runs every node
            comfyui_side(work, args.comfyui.resolve(), reference)
        return 0
    work.mkdir(parents=True, exist_ok=True)
    make_files(work)
    subprocess.run([args.comfyui_python, __file__, "--workdir", str(work), "--comfyui", str(args.comfyui),
                    "--comfyui-side", "--save-reference", str(reference)], check=True)  # fmt: skip
    theirs = load_file(str(reference))
    plain: dict[str, torch.Tensor] = {}
    for case, (family, node, _) in CASES.items():
        ours = comfyd_sample(work, case)
        if node is None:
            plain[family] = ours
        print(f"RESULT psnr_{case}_db={psnr(ours, theirs[case]):.2f}")
        print(f"RESULT max_abs_diff_{case}={float((ours - theirs[case]).abs().max()):.3g}")
        if node is not None:
            print(f"RESULT moved_{case}={float((theirs[case] - theirs[f'{family}_plain']).abs().max()):.3g}")
    from comfyd.sampling.fresca import frequency_scaled

    for i, (_, low, high, cutoff) in enumerate(FILTER_CASES):
        ours = frequency_scaled(theirs[f"filter{i}_input"], low, high, cutoff)
        print(
            f"RESULT max_abs_diff_fresca_filter{i}={float((ours - theirs[f'filter{i}_output']).abs().max()):.3g}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
