"""Wan 2.1's transformer, VAE and UMT5 text path held to ComfyUI's own modules.

ComfyUI's UMT5-XXL is fixed full-size in its loader (tests/fidelity/README.md), but its Wan transformer
(comfy/ldm/wan/model.py: `WanModel`) takes its width and depth as arguments and its Wan VAE
(comfy/ldm/wan/vae.py: `WanVAE`) its base width, so both load comfyd's tiny files
(`comfyd models make-tiny --family wan`, ComfyUI's key layout). Both sides get the same inputs: a
random latent [1, 16, 3, 8, 8], flow timesteps, a random UMT5 context [1, 512, 32]; comfyd runs its
`WanNetwork` (diffusers' WanTransformer3DModel) and its video VAE decode (diffusers'
AutoencoderKLWan), ComfyUI its modules with the state dicts loaded strictly from the same files.
The text path: ComfyUI's UMT5XXlTokenizer on the SentencePiece model the tiny file carries, and its
SDClipModel with Wan's UMT5 settings (attention masks, masked positions zeroed) built from the tiny
config instead of the fixed full-size one, against comfyd's tokenize + encode, on two prompts (one
weighted).
Image-to-video (Wan 2.1 with img_emb): the tiny img_emb I2V file, and the same file with a random
FLF2V position table (`img_emb.emb_pos`, 514 tokens), get the same 20 extra input channels and the
same CLIP features (random [1, 257, 1280] for one image, [1, 514, 1280] for two joined, or none),
since ComfyUI's CLIP vision loader builds full-size towers only; `i2v_*` lines compare velocities.

    python bench/wan_comfyui_parity.py --workdir /tmp/wan-parity \
        --comfyui /path/to/ComfyUI --comfyui-python /path/to/comfyui-venv/bin/python

prints RESULT lines: the largest absolute difference of the transformer's velocity (relative to
its spread) at each timestep, and the PSNR of the decoded frames (8-bit, as the savers convert).
The ComfyUI side runs in ComfyUI's own Python (`--comfyui-side`), on CPU.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

TIMESTEPS = (999.0, 875.0, 250.0)
SEED = 11
PROMPTS = ("a small red fox runs across a snowy field at dawn", "(a cat:1.3) sleeps on a warm windowsill, cinematic")


def inputs(work: Path) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(SEED)
    return {
        "x": torch.randn(1, 16, 3, 8, 8, generator=g),
        "context": torch.randn(1, 512, 32, generator=g),
        "z": torch.randn(1, 16, 3, 8, 8, generator=g),
        # Image-to-video: the 20 mask + start-latent channels, one image's CLIP ViT-H penultimate
        # states, two images' joined (WanFirstLastFrameToVideo), the FLF2V position table.
        "concat": torch.randn(1, 20, 3, 8, 8, generator=g),
        "clip1": torch.randn(1, 257, 1280, generator=g),
        "clip2": torch.randn(1, 514, 1280, generator=g),
        "emb_pos": torch.randn(1, 514, 1280, generator=g) * 0.1,
    }


# Image-to-video cases: (model, clip features): the img_emb I2V file, and that file plus the
# FLF2V position table (img_emb.emb_pos); "none" is an image model given no CLIP features.
I2V_CASES = (("i2v", "clip1"), ("i2v", "none"), ("i2v", "clip2"), ("flf", "clip2"))


def flf_file(work: Path) -> Path:
    """The tiny img_emb I2V file with a random FLF2V position table added."""
    from comfyd.models.families import _wan_tiny_clip

    path = work / "comfyd-tiny-wan-flf2v.safetensors"
    state = load_file(str(work / "models" / _wan_tiny_clip.NAMES["i2v_clip"]))
    state["img_emb.emb_pos"] = inputs(work)["emb_pos"].to(state["img_emb.proj.0.weight"].dtype)
    save_file(state, str(path))
    return path


def comfyd_side(work: Path) -> dict[str, torch.Tensor]:
    from comfyd.models import families, loader
    from comfyd.models.devices import compute_plan
    from comfyd.models.families import _wan_tiny, _wan_tiny_clip
    from comfyd.models.tensorfile import TensorFile
    from comfyd.models.tiny import make_tiny

    root = work / "models"
    if not all((root / n).is_file() for n in [*_wan_tiny.NAMES.values(), *_wan_tiny_clip.NAMES.values()]):
        make_tiny(root, family="wan")
    plan = compute_plan("cpu", "fp32")
    with TensorFile(root / _wan_tiny.NAMES["t2v"]) as tf:
        net, _ = families.get("wan").load_diffusion_model(tf, "", plan, "default")
    data = inputs(work)
    out: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for t in TIMESTEPS:
            out[f"v{int(t)}"] = net(data["x"], torch.tensor([t]), encoder_hidden_states=data["context"])[0]
        for kind, path in (("i2v", root / _wan_tiny_clip.NAMES["i2v_clip"]), ("flf", flf_file(work))):
            with TensorFile(path) as tf:
                image_net, _ = families.get("wan").load_diffusion_model(tf, "", plan, "default")
            for model, clip in I2V_CASES:
                if model == kind:
                    added = {"concat": data["concat"]} | ({"clip_fea": data[clip]} if clip != "none" else {})
                    out[f"{model}_{clip}"] = image_net(
                        data["x"], torch.tensor([875.0]), encoder_hidden_states=data["context"], added_cond_kwargs=added
                    )[0]
        vae = loader.load_vae_file(root / _wan_tiny.NAMES["vae"], plan)
        out["frames"] = vae.decode(data["z"], return_dict=False)[0].clamp(-1, 1)
    from comfyd.models import standalone, umt5_encoder

    _, encoder, _ = standalone.load_text_encoder(root / _wan_tiny.NAMES["umt5xxl"], plan, False)
    tokenizer = umt5_encoder.tokenizer_from_bytes(encoder.comfyd_spiece_model)
    for i, prompt in enumerate(PROMPTS):
        tokens = umt5_encoder.tokenize(tokenizer, prompt)
        out[f"tokens{i}"] = torch.tensor([t for t, _ in tokens])
        out[f"cond{i}"] = umt5_encoder.encode(encoder, tokens)
    config = dict(_wan_tiny.TINY_UMT5, model_type="umt5", is_gated_act=True, dense_act_fn="gelu_pytorch_tanh")
    (work / "umt5_tiny.json").write_text(json.dumps(config))
    return out


def comfyui_side(work: Path, comfyui: Path) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from comfyui_render import load_comfyui

    load_comfyui(comfyui, work, None, work / "comfyui-out")  # CPU, ComfyUI's own import set-up
    import comfy.ops
    from comfy.ldm.wan.model import WanModel
    from comfy.ldm.wan.vae import WanVAE

    models = work / "models"
    data = load_file(str(work / "inputs.safetensors"))
    sd = {k: v.float() for k, v in load_file(str(models / "diffusion_models/comfyd-tiny-wan-t2v.safetensors")).items()}
    model = WanModel(
        model_type="t2v", patch_size=(1, 2, 2), in_dim=16, dim=256, ffn_dim=512, freq_dim=256, text_dim=32,
        out_dim=16, num_heads=2, num_layers=2, operations=comfy.ops.disable_weight_init,
    )  # fmt: skip
    model.load_state_dict(sd, strict=True)
    model.eval()
    out: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for t in TIMESTEPS:
            out[f"v{int(t)}"] = model(data["x"], torch.tensor([t]), data["context"]).contiguous()
        for kind, path in (("i2v", models / "diffusion_models/comfyd-tiny-wan-i2v-clip.safetensors"),
                           ("flf", work / "comfyd-tiny-wan-flf2v.safetensors")):  # fmt: skip
            image_sd = {k: v.float() for k, v in load_file(str(path)).items()}
            image_model = WanModel(
                model_type="i2v", patch_size=(1, 2, 2), in_dim=36, dim=256, ffn_dim=512, freq_dim=256, text_dim=32,
                out_dim=16, num_heads=2, num_layers=2, operations=comfy.ops.disable_weight_init,
                flf_pos_embed_token_number=514 if kind == "flf" else None,
            )  # fmt: skip
            image_model.load_state_dict(image_sd, strict=True)
            image_model.eval()
            x = torch.cat((data["x"], data["concat"]), dim=1)
            for model, clip in I2V_CASES:
                if model == kind:
                    features = data[clip] if clip != "none" else None
                    out[f"{model}_{clip}"] = image_model(
                        x, torch.tensor([875.0]), data["context"], clip_fea=features
                    ).contiguous()
        vae_sd = {k: v.float() for k, v in load_file(str(models / "vae/comfyd-tiny-wan-vae.safetensors")).items()}
        vae = WanVAE(dim=8, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                     temperal_downsample=[False, True, True])  # fmt: skip
        vae.load_state_dict(vae_sd, strict=True)
        vae.eval()
        out["frames"] = vae.decode(data["z"]).clamp(-1, 1).contiguous()
    out.update(comfyui_text(work))
    save_file(out, str(work / "comfyui.safetensors"))


def comfyui_text(work: Path) -> dict[str, torch.Tensor]:
    """ComfyUI's Wan tokenizer on the file's SentencePiece model, and its UMT5 clip model (the
    settings of comfy/text_encoders/wan.py) built from the tiny config instead of the full one."""
    import comfy.sd1_clip as sd1_clip
    import comfy.text_encoders.t5 as t5
    import comfy.text_encoders.wan as wan

    state = load_file(str(work / "models/text_encoders/comfyd-tiny-umt5xxl.safetensors"))
    tokenizer = wan.UMT5XXlTokenizer(tokenizer_data={"spiece_model": state.pop("spiece_model")})
    clip = sd1_clip.SDClipModel(
        device="cpu", layer="last", textmodel_json_config=str(work / "umt5_tiny.json"), dtype=torch.float32,
        special_tokens={"end": 1, "pad": 0}, model_class=t5.T5, enable_attention_masks=True, zero_out_masked=True,
    )  # fmt: skip
    missing, unexpected = clip.transformer.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)
    assert not unexpected and all("embed_tokens" in k for k in missing), (missing, unexpected)
    out: dict[str, torch.Tensor] = {}
    for i, prompt in enumerate(PROMPTS):
        pairs = tokenizer.tokenize_with_weights(prompt)
        out[f"tokens{i}"] = torch.tensor([t for t, _ in pairs[0]])
        out[f"cond{i}"] = clip.encode_token_weights(pairs)[0].float().contiguous()
    return out


def psnr_8bit(a: torch.Tensor, b: torch.Tensor) -> float:
    qa = torch.clamp((a + 1) / 2 * 255, 0, 255).to(torch.uint8).double()
    qb = torch.clamp((b + 1) / 2 * 255, 0, 255).to(torch.uint8).double()
    mse = float(((qa - qb) ** 2).mean())
    return float("inf") if mse == 0 else 10 * torch.log10(torch.tensor(255.0**2 / mse)).item()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--comfyui", type=Path, required=True)
    parser.add_argument("--comfyui-python", default=sys.executable)
    parser.add_argument("--comfyui-side", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    if args.comfyui_side:
        comfyui_side(work, args.comfyui)
        return 0
    ours = comfyd_side(work)
    save_file(inputs(work), str(work / "inputs.safetensors"))
    subprocess.run(
        [args.comfyui_python, __file__, "--comfyui-side", "--workdir", str(work), "--comfyui", str(args.comfyui)],
        check=True,
    )
    theirs = load_file(str(work / "comfyui.safetensors"))
    for t in TIMESTEPS:
        a, b = ours[f"v{int(t)}"], theirs[f"v{int(t)}"]
        print(f"RESULT transformer_t{int(t)}_max_rel_diff={float((a - b).abs().max() / b.std()):.3g}")
    for model, clip in I2V_CASES:
        a, b = ours[f"{model}_{clip}"], theirs[f"{model}_{clip}"]
        print(f"RESULT {model}_clip_fea_{clip}_t875_max_rel_diff={float((a - b).abs().max() / b.std()):.3g}")
    print(f"RESULT vae_frames={tuple(ours['frames'].shape)} comfyui_frames={tuple(theirs['frames'].shape)}")
    print(f"RESULT vae_psnr_db={psnr_8bit(ours['frames'], theirs['frames']):.2f}")
    for i in range(len(PROMPTS)):
        same = torch.equal(ours[f"tokens{i}"], theirs[f"tokens{i}"])
        diff = float((ours[f"cond{i}"] - theirs[f"cond{i}"]).abs().max())
        print(f"RESULT umt5_prompt{i}_tokens_identical={same} cond_max_abs_diff={diff:.3g}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    raise SystemExit(main())
