"""HunyuanVideo's transformer, VAE and LLaVA-Llama-3 text path held to ComfyUI's own modules.

ComfyUI's loaders fix HunyuanVideo's widths (CLIP-L and Llama-3-8B configs, a 128-wide VAE), but
its modules take them as arguments: the transformer (comfy/ldm/hunyuan_video/model.py:
`HunyuanVideo`), the VAE (comfy/ldm/models/autoencoder.py `AutoencoderKL` with ComfyUI's
HunyuanVideo ddconfig: conv3d, time_compress 4) and the Llama (comfy/text_encoders/llama.py:
`Llama2` under `SDClipModel` with LLAMAModel's settings) all load comfyd's tiny files
(`comfyd models make-tiny --family hunyuan-video`, ComfyUI's key layout) strictly. Both sides get
the same inputs: a random latent [1, 16, 3, 8, 8], flow timesteps, a random Llama context
[1, 20, 256], a random pooled CLIP-L vector and guidance 6.0; comfyd runs its `HunyuanNetwork`
(diffusers' HunyuanVideoTransformer3DModel) and its VAE decode (diffusers'
AutoencoderKLHunyuanVideo with the middle attention unmasked), ComfyUI its modules.

Text: ComfyUI's SDTokenizer with LLAMA3Tokenizer's settings on the tiny tokenizer.json (through
PreTrainedTokenizerFast: ComfyUI names LlamaTokenizerFast, which under transformers 4 reads a
tokenizer.json as it is, but under transformers 5, installed here, rebuilds a SentencePiece-style
Metaspace pipeline that is not Llama 3's byte-level one; PreTrainedTokenizerFast reads it as it is
under both), ComfyUI's
template, its LLAMAModel settings (hidden layer -3, attention masks) and its own crop
(HunyuanVideoClipModel.encode_token_weights). The crop looks for Llama 3's token ids (128006,
882, 128007, 271, 128009), which a tiny vocabulary cannot hold, so those five tokens are renamed to
Llama 3's ids in the token list the crop reads (the encoder reads the tiny ids).

    python bench/hunyuan_comfyui_parity.py --workdir /tmp/hunyuan-parity \
        --comfyui /work/comfyui --comfyui-python /work/cvenv/bin/python

prints RESULT lines: the largest absolute difference of the transformer's velocity (relative to
its spread) at each timestep, the PSNR of the decoded frames (8-bit), the PSNR of VAEDecodeTiled
on a latent that spans several tiles in time, height and width (ComfyUI's node and its
tiled_scale_multidim on the same tiny VAE), and for two prompts (one weighted) whether the tokens
match and the largest difference of the cropped Llama output.
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
SEED = 13
GUIDANCE = 6.0
TILED = (64, 32, 8, 4)  # VAEDecodeTiled's tile_size, overlap, temporal_size, temporal_overlap
PROMPTS = ("a small red fox runs across a snowy field at dawn", "(a cat:1.3) sleeps on a warm windowsill, cinematic")
LLAMA3_IDS = {"<|start_header_id|>": 128006, "user": 882, "<|end_header_id|>": 128007, "\u010a\u010a": 271,
              "<|eot_id|>": 128009}  # fmt: skip


def inputs() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(SEED)
    return {
        "x": torch.randn(1, 16, 3, 8, 8, generator=g),
        "context": torch.randn(1, 20, 256, generator=g),
        "pooled": torch.randn(1, 32, generator=g),
        "z": torch.randn(1, 16, 3, 8, 8, generator=g),
        "z_long": torch.randn(1, 16, 5, 16, 16, generator=g),  # 17 frames of 128x128: several tiles
    }


def comfyd_side(work: Path) -> dict[str, torch.Tensor]:
    from comfyd.models import families, llama_encoder, loader, standalone
    from comfyd.models.devices import compute_plan
    from comfyd.models.families import _hunyuan_tiny
    from comfyd.models.tensorfile import TensorFile
    from comfyd.models.tiny import make_tiny

    root = work / "models"
    if not all((root / n).is_file() for n in _hunyuan_tiny.NAMES.values()):
        make_tiny(root, family="hunyuan-video")
    plan = compute_plan("cpu", "fp32")
    with TensorFile(root / _hunyuan_tiny.NAMES["t2v"]) as tf:
        net, _ = families.get("hunyuan-video").load_diffusion_model(tf, "", plan, "default")
    data = inputs()
    out: dict[str, torch.Tensor] = {}
    added = {"pooled": data["pooled"], "guidance": torch.tensor([GUIDANCE])}
    with torch.no_grad():
        for t in TIMESTEPS:
            out[f"v{int(t)}"] = net(
                data["x"], torch.tensor([t]), encoder_hidden_states=data["context"], added_cond_kwargs=added
            )[0]
        vae = loader.load_vae_file(root / _hunyuan_tiny.NAMES["vae"], plan)
        out["frames"] = vae.decoder(vae.post_quant_conv(data["z"])).clamp(-1, 1)
    from comfyd.models.manager import ModelManager
    from comfyd.nodes.latent.vae_tiled import VAEDecodeTiled
    from comfyd.settings import Settings

    handle = ModelManager(Settings(models_dir=root, device="cpu", home=work / "home")).load_vae(
        Path(_hunyuan_tiny.NAMES["vae"]).name
    )
    (tiled,) = VAEDecodeTiled().run(None, {"samples": data["z_long"]}, handle, *TILED)
    out["tiled"] = tiled
    _, encoder, _ = standalone.load_text_encoder(root / _hunyuan_tiny.NAMES["llama"], plan, False)
    tokenizer = llama_encoder.require_tokenizer(encoder)
    for i, prompt in enumerate(PROMPTS):
        tokens = llama_encoder.tokenize(tokenizer, prompt)
        out[f"tokens{i}"] = torch.tensor([t for t, _ in tokens])
        out[f"cond{i}"] = llama_encoder.encode(encoder, tokens)
    ids = {text: tokenizer.token_to_id(text) for text in LLAMA3_IDS}
    special = {
        "bos": tokenizer.token_to_id(llama_encoder.BEGIN),
        "pad": llama_encoder.pad_id(tokenizer, encoder.config.vocab_size),
        "ids": ids,
        "config": {k: v for k, v in _hunyuan_tiny.TINY_LLAMA.items() if k in ("hidden_size", "intermediate_size",
                   "num_hidden_layers", "num_attention_heads", "num_key_value_heads")},  # fmt: skip
        "vocab_size": encoder.config.vocab_size,
    }
    (work / "text.json").write_text(json.dumps(special))
    return out


def comfyui_side(work: Path, comfyui: Path) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from comfyui_render import load_comfyui

    load_comfyui(comfyui, work, None, work / "comfyui-out")  # CPU, ComfyUI's own import set-up
    import comfy.ops
    from comfy.ldm.hunyuan_video.model import HunyuanVideo
    from comfy.ldm.models.autoencoder import AutoencoderKL

    models = work / "models"
    data = load_file(str(work / "inputs.safetensors"))
    sd = {k: v.float() for k, v in load_file(str(models / "diffusion_models/comfyd-tiny-hunyuan-video.safetensors")).items()}
    model = HunyuanVideo(
        image_model="hunyuan_video", in_channels=16, out_channels=16, vec_in_dim=32, context_in_dim=256,
        hidden_size=256, mlp_ratio=4.0, num_heads=2, depth=1, depth_single_blocks=1, axes_dim=[16, 56, 56],
        theta=256, patch_size=[1, 2, 2], qkv_bias=True, guidance_embed=True, byt5=False, meanflow=False,
        operations=comfy.ops.disable_weight_init,
    )  # fmt: skip
    model.load_state_dict(sd, strict=True)
    model.eval()
    out: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for t in TIMESTEPS:
            out[f"v{int(t)}"] = model(
                data["x"], torch.tensor([t]), data["context"], y=data["pooled"], guidance=torch.tensor([GUIDANCE])
            ).contiguous()
        vae_sd = {k: v.float() for k, v in load_file(str(models / "vae/comfyd-tiny-hunyuan-video-vae.safetensors")).items()}
        ddconfig = {"double_z": True, "z_channels": 16, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 32,
                    "ch_mult": [1, 1, 2, 2], "num_res_blocks": 1, "attn_resolutions": [], "dropout": 0.0,
                    "conv3d": True, "time_compress": 4}  # fmt: skip
        vae = AutoencoderKL(ddconfig=ddconfig, embed_dim=16)
        vae.load_state_dict(vae_sd, strict=True)
        vae.eval()
        out["frames"] = vae.decode(data["z"]).clamp(-1, 1).contiguous()
        out["tiled"] = comfyui_tiled(vae, data["z_long"]).contiguous()
    out.update(comfyui_text(work))
    save_file(out, str(work / "comfyui.safetensors"))


def comfyui_tiled(first_stage_model: torch.nn.Module, z: torch.Tensor) -> torch.Tensor:
    """ComfyUI's VAEDecodeTiled node -> VAE.decode_tiled_3d -> tiled_scale_multidim on the tiny
    VAE. The stand-in VAE carries the attributes comfy/sd.py sets for a HunyuanVideo VAE; its
    decode_tiled passes the arguments as VAE.decode_tiled does for 3-D latents (that method also
    loads the model onto the device, which needs ComfyUI's patcher)."""
    from types import SimpleNamespace

    import comfy.sd
    import nodes

    vae = SimpleNamespace(
        first_stage_model=first_stage_model, vae_dtype=torch.float32, device=torch.device("cpu"),
        output_device=torch.device("cpu"), output_channels=3, upscale_ratio=(lambda a: max(0, a * 4 - 3), 8, 8),
        upscale_index_formula=(4, 8, 8), process_output=lambda image: torch.clamp((image + 1.0) / 2.0, 0.0, 1.0),
        temporal_compression_decode=lambda: 4, spacial_compression_decode=lambda: 8,
    )  # fmt: skip

    def decode_tiled(samples, tile_x, tile_y, overlap, tile_t, overlap_t):  # noqa: ANN001, ANN202
        output = comfy.sd.VAE.decode_tiled_3d(vae, samples, tile_t=max(2, tile_t), tile_x=tile_x, tile_y=tile_y,
                                               overlap=(max(1, overlap_t), overlap, overlap))  # fmt: skip
        return output.movedim(1, -1)

    vae.decode_tiled = decode_tiled
    (images,) = nodes.VAEDecodeTiled().decode(vae, {"samples": z}, *TILED)
    return images


def comfyui_text(work: Path) -> dict[str, torch.Tensor]:
    """ComfyUI's Llama tokenizer settings, LLAMAModel settings and HunyuanVideo crop on the tiny files."""
    from types import SimpleNamespace

    import comfy.sd1_clip as sd1_clip
    import comfy.text_encoders.hunyuan_video as hy
    import comfy.text_encoders.llama as llama
    from transformers import PreTrainedTokenizerFast

    special = json.loads((work / "text.json").read_text())
    folder = work / "comfyui_llama_tokenizer"
    folder.mkdir(exist_ok=True)
    (folder / "tokenizer.json").write_bytes((work / "models/text_encoders/llama_tokenizer/tokenizer.json").read_bytes())
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>", "add_bos_token": True,
        "add_eos_token": False, "clean_up_tokenization_spaces": True, "tokenizer_class": "LlamaTokenizerFast",
    }))  # fmt: skip
    tokenizer = sd1_clip.SDTokenizer(
        str(folder), embedding_size=256, embedding_key="llama", tokenizer_class=PreTrainedTokenizerFast,
        has_start_token=True, has_end_token=False, pad_to_max_length=False, max_length=99999999,
        pad_token=special["pad"], min_length=1, pad_with_end=False,
    )  # fmt: skip
    config = {**special["config"], "vocab_size": special["vocab_size"]}
    model = sd1_clip.SDClipModel(
        device="cpu", layer="hidden", layer_idx=-3, textmodel_json_config=config, dtype=torch.float32,
        special_tokens={"start": special["bos"], "pad": special["pad"]}, layer_norm_hidden_state=False,
        model_class=llama.Llama2, enable_attention_masks=True, return_attention_masks=True,
        model_options={"model_name": "llama"},
    )  # fmt: skip
    state = load_file(str(work / "models/text_encoders/comfyd-tiny-llava-llama3.safetensors"))
    missing, unexpected = model.transformer.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)
    assert not unexpected and not missing, (missing, unexpected)
    to_llama3 = {tiny: LLAMA3_IDS[text] for text, tiny in special["ids"].items()}
    out: dict[str, torch.Tensor] = {}
    for i, prompt in enumerate(PROMPTS):
        pairs = tokenizer.tokenize_with_weights(_template().format(prompt))
        out[f"tokens{i}"] = torch.tensor([t for t, _ in pairs[0]])
        renamed = [[(to_llama3.get(t, t), w) for t, w in pairs[0]]]
        stub = SimpleNamespace(
            llama=SimpleNamespace(encode_token_weights=lambda _renamed, p=pairs: model.encode_token_weights(p)),
            clip_l=SimpleNamespace(encode_token_weights=lambda _pairs: (None, None)),
        )
        cond, _, extra = hy.HunyuanVideoClipModel.encode_token_weights(stub, {"l": [], "llama": renamed})
        assert "attention_mask" not in extra  # nothing masked in what is kept
        out[f"cond{i}"] = cond.float().contiguous()
    return out


def _template() -> str:
    """ComfyUI's HunyuanVideo template, read from its tokenizer class's code (building that class
    would load Llama 3's full tokenizer, which the tiny setup does not have)."""
    import comfy.text_encoders.hunyuan_video as hy

    constants = hy.HunyuanVideoTokenizer.__init__.__code__.co_consts
    return next(c for c in constants if isinstance(c, str) and "Describe the video" in c)


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
    save_file(inputs(), str(work / "inputs.safetensors"))
    subprocess.run(
        [args.comfyui_python, __file__, "--comfyui-side", "--workdir", str(work), "--comfyui", str(args.comfyui)],
        check=True,
    )
    theirs = load_file(str(work / "comfyui.safetensors"))
    for t in TIMESTEPS:
        a, b = ours[f"v{int(t)}"], theirs[f"v{int(t)}"]
        print(f"RESULT transformer_t{int(t)}_max_rel_diff={float((a - b).abs().max() / b.std()):.3g}")
    print(f"RESULT vae_frames={tuple(ours['frames'].shape)} comfyui_frames={tuple(theirs['frames'].shape)}")
    print(f"RESULT vae_psnr_db={psnr_8bit(ours['frames'], theirs['frames']):.2f}")
    a, b = ours["tiled"] * 2 - 1, theirs["tiled"] * 2 - 1  # IMAGE 0..1 -> the -1..1 psnr_8bit takes
    print(f"RESULT tiled_decode_frames={tuple(a.shape)} comfyui_frames={tuple(b.shape)} "
          f"psnr_db={psnr_8bit(a, b):.2f}")  # fmt: skip
    for i in range(len(PROMPTS)):
        same = torch.equal(ours[f"tokens{i}"], theirs[f"tokens{i}"])
        a, b = ours[f"cond{i}"], theirs[f"cond{i}"]
        diff = float((a - b).abs().max()) if a.shape == b.shape else float("nan")
        print(f"RESULT llama_prompt{i}_tokens_identical={same} cond_shape={tuple(a.shape)} "
              f"comfyui_shape={tuple(b.shape)} cond_max_abs_diff={diff:.3g}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    raise SystemExit(main())
