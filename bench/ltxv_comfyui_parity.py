"""LTX-Video's transformer, VAE, T5 text path and schedulers held to ComfyUI's own modules.

ComfyUI's LTXV transformer (comfy/ldm/lightricks/model.py: `LTXVModel`) takes its width, depth
and caption width as arguments, and its 0.9 video VAE is built from its `Encoder` / `Decoder`
(comfy/ldm/lightricks/vae/causal_video_autoencoder.py) at the tiny base width (ComfyUI's own
`VideoVAE` fixes the base width at 128), so both load comfyd's tiny checkpoint
(`comfyd models make-tiny --family ltxv`, ComfyUI's key layout) strictly. Both sides get the same
inputs: a random latent [1, 128, 3, 2, 2], sigmas, a random T5 context [1, 128, 32] with a padding
mask, frame rate 24, and once a per-frame denoise mask (image-to-video: the first latent frame at
timestep 0); comfyd runs its `LtxvNetwork` (diffusers' LTXVideoTransformer3DModel) and its VAE
(diffusers' AutoencoderKLLTXVideo with ComfyUI's statistics and padding), ComfyUI its modules.
The text path: ComfyUI's LTXV T5 tokenizer and an SDClipModel with LTXV's settings (attention
mask on, not zeroed) built from the tiny T5 config, on two prompts (one weighted). The schedules:
ComfyUI's LTXVScheduler node and ModelSamplingLTXV's sigma table against comfyd's. The whole
sampling: SamplerCustom (euler, CFG) on the same conditioning tensors against ComfyUI's
comfy.sample.sample_custom on a ModelPatcher of its LTXV model, text-to-video and image-to-video.

    python bench/ltxv_comfyui_parity.py --workdir /tmp/ltxv-parity \
        --comfyui /path/to/ComfyUI --comfyui-python /path/to/comfyui-venv/bin/python

prints RESULT lines: the largest absolute difference of the transformer's velocity (relative to
its spread) per case, the PSNR of decoded frames (8-bit) and the encoder's largest difference,
T5 token identity and largest difference, whether the sigmas are bit-identical, and the sampled
latents' largest difference and their decoded frames' worst PSNR.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

SIGMAS = (1.0, 0.725, 0.1)
FRAME_RATE = 24.0
SEED = 5
PROMPTS = ("a small red fox runs across a snowy field at dawn", "(a cat:1.3) sleeps on a warm windowsill, cinematic")
SCHEDULES = ((20, 2.05, 0.95, True, 0.1, 4096), (8, 2.05, 0.95, True, 0.1, 12), (30, 1.5, 0.5, False, 0.1, 6144))
SAMPLE_STEPS, SAMPLE_CFG, SAMPLE_SEED = 4, 3.0, 42
TINY_BLOCKS = [("res_x", 1), ("compress_all", 1), ("res_x_y", 1), ("res_x", 1), ("compress_all", 1),
               ("res_x_y", 1), ("res_x", 1), ("compress_all", 1), ("res_x", 1), ("res_x", 1)]  # fmt: skip


def inputs() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(SEED)
    mask = torch.zeros(1, 128, dtype=torch.long)
    mask[:, :12] = 1
    denoise = torch.ones(1, 1, 3, 2, 2)
    denoise[:, :, 0] = 0.0
    return {
        "x": torch.randn(1, 128, 3, 2, 2, generator=g),
        "context": torch.randn(1, 128, 32, generator=g),
        "mask": mask,
        "denoise": denoise,
        "z": torch.randn(1, 128, 2, 2, 2, generator=g),
        "pixels": torch.rand(1, 3, 9, 64, 64, generator=g) * 2 - 1,
        # Whole-sampling cases: two prompts' T5 outputs with their padding masks, a start latent.
        "pos": torch.randn(1, 128, 32, generator=g),
        "neg": torch.randn(1, 128, 32, generator=g),
        "pos_mask": (torch.arange(128) < 14).long().unsqueeze(0),
        "neg_mask": (torch.arange(128) < 3).long().unsqueeze(0),
        "start": torch.randn(1, 128, 1, 2, 2, generator=g),
        "guide_a": torch.rand(1, 64, 64, 3, generator=g),
        "guide_b": torch.rand(9, 64, 64, 3, generator=g),
    }


GUIDES = (("guide_a", 9, 0.8), ("guide_b", 0, 1.0))  # (image, frame_idx, strength), applied in turn


def with_sigmas(data: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    from comfyd.nodes.sampling.ltxv_scheduler import ltxv_sigmas

    return {**data, "sample_sigmas": ltxv_sigmas(SAMPLE_STEPS, 2.05, 0.95, True, 0.1, 8)}


def sampling_cases(data: dict[str, torch.Tensor]) -> dict[str, tuple]:
    """name -> (positive, negative, latent dict, sigmas): SamplerCustom's inputs, T2V and I2V."""
    positive = [[data["pos"], {"attention_mask": data["pos_mask"], "frame_rate": FRAME_RATE}]]
    negative = [[data["neg"], {"attention_mask": data["neg_mask"], "frame_rate": FRAME_RATE}]]
    empty = torch.zeros(1, 128, 2, 2, 2)
    i2v = empty.clone()
    i2v[:, :, :1] = data["start"]
    mask = torch.ones(1, 1, 2, 1, 1)
    mask[:, :, :1] = 0.0
    sigmas = data["sample_sigmas"]  # LTXVScheduler's for this latent (comfyd's, bit-identical)
    return {
        "t2v": (positive, negative, {"samples": empty}, sigmas),
        "i2v": (positive, negative, {"samples": i2v, "noise_mask": mask}, sigmas),
    }


def comfyd_side(work: Path) -> dict[str, torch.Tensor]:
    from comfyd.models import standalone, t5_encoder
    from comfyd.models.devices import compute_plan
    from comfyd.models.families import _ltxv_tiny
    from comfyd.models.tiny import make_tiny
    from comfyd.nodes.sampling.ltxv_scheduler import ltxv_sigmas, token_shift
    from comfyd.sampling.flow import ExpTimeShiftSchedule

    root = work / "models"
    if not all((root / n).is_file() for n in _ltxv_tiny.NAMES.values()):
        make_tiny(root, family="ltxv")
    plan = compute_plan("cpu", "fp32")
    _, net, _, _, vae = standalone.load_split_family_checkpoint(root / _ltxv_tiny.NAMES["checkpoint"], plan, False)
    data = with_sigmas(inputs())
    out: dict[str, torch.Tensor] = {}
    base = {"encoder_attention_mask": data["mask"].float(), "frame_rate": torch.tensor([FRAME_RATE])}
    with torch.no_grad():
        for s in SIGMAS:
            out[f"v{s}"] = net(data["x"], torch.tensor([s]), data["context"], added_cond_kwargs=base)[0]
        causal = causal_checkpoint(root, work)  # the file's metadata config turns the causal fix on
        _, causal_net, _, _, _ = standalone.load_split_family_checkpoint(causal, plan, False)
        out["v_causal"] = causal_net(data["x"], torch.tensor([SIGMAS[1]]), data["context"], added_cond_kwargs=base)[0]
        masked = {**base, "denoise_mask": data["denoise"]}
        out["v_i2v"] = net(data["x"], torch.tensor([SIGMAS[1]]), data["context"], added_cond_kwargs=masked)[0]
        out["frames"] = vae.decode(data["z"])[0].clamp(-1, 1)
        out["encoded"] = vae._encode(data["pixels"])
        *_, vae091 = standalone.load_split_family_checkpoint(root / _ltxv_tiny.NAMES["checkpoint_091"], plan, False)
        torch.manual_seed(SEED)  # 0.9.1 decodes with noise from torch's global generator, as ComfyUI
        out["frames_091"] = vae091.decode(data["z"])[0].clamp(-1, 1)
        *_, vae095 = standalone.load_split_family_checkpoint(root / _ltxv_tiny.NAMES["checkpoint_095"], plan, False)
        torch.manual_seed(SEED)
        out["frames_095"] = vae095.decode(data["z"])[0].clamp(-1, 1)
        out["encoded_095"] = vae095._encode(data["pixels"])
    out.update(comfyd_guides(net, vae, data))
    out.update(comfyd_sampling(root, work, data))
    _, encoder, _ = standalone.load_text_encoder(root / _ltxv_tiny.NAMES["t5xxl"], plan, False)
    for i, prompt in enumerate(PROMPTS):
        tokens = t5_encoder.tokenize(prompt, 128)
        out[f"tokens{i}"] = torch.tensor([t for t, _ in tokens])
        out[f"cond{i}"] = t5_encoder.encode(encoder, tokens, masked=True, zero_masked=False)
    for i, (steps, high, low, stretch, terminal, tokens) in enumerate(SCHEDULES):
        out[f"sched{i}"] = ltxv_sigmas(steps, high, low, stretch, terminal, tokens)
        out[f"table{i}"] = ExpTimeShiftSchedule(shift=token_shift(tokens, high, low)).sigmas
    (work / "t5_tiny.json").write_text(json.dumps(dict(_ltxv_tiny.TINY_T5, model_type="t5")))
    return out


def comfyd_guides(net: torch.nn.Module, vae: torch.nn.Module, data: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Two LTXVAddGuide nodes on an empty 17-frame latent, then the transformer on the result
    (keyframe positions and per-token timesteps), then LTXVCropGuides."""
    from comfyd.models.handles import VaeHandle
    from comfyd.nodes.conditioning.ltxv_guides import LTXVAddGuide, LTXVCropGuides

    handle = VaeHandle(key="v", family="ltxv", vae=vae, device="cpu", dtype=torch.float32, latent_channels=128,
                       downscale=32)  # fmt: skip
    positive = [[data["pos"], {"attention_mask": data["pos_mask"], "frame_rate": FRAME_RATE}]]
    negative = [[data["neg"], {"attention_mask": data["neg_mask"], "frame_rate": FRAME_RATE}]]
    latent: dict[str, torch.Tensor] = {"samples": torch.zeros(1, 128, 3, 2, 2)}
    for name, frame_idx, strength in GUIDES:
        positive, negative, latent = LTXVAddGuide().run(None, positive, negative, handle, latent, data[name],
                                                        frame_idx, strength)  # fmt: skip
    keyframe_idxs = positive[0][1]["keyframe_idxs"]
    added = {"encoder_attention_mask": data["pos_mask"].float(), "frame_rate": torch.tensor([FRAME_RATE]),
             "keyframe_idxs": keyframe_idxs.float(), "denoise_mask": latent["noise_mask"].expand(1, 1, -1, 2, 2)}  # fmt: skip
    with torch.no_grad():
        velocity = net(latent["samples"], torch.tensor([SIGMAS[1]]), data["pos"], added_cond_kwargs=added)[0]
    _, _, cropped = LTXVCropGuides().run(None, positive, negative, latent)
    return {"guide_samples": latent["samples"], "guide_mask": latent["noise_mask"], "guide_idxs": keyframe_idxs,
            "guide_velocity": velocity, "guide_cropped": cropped["samples"]}  # fmt: skip


def causal_checkpoint(root: Path, work: Path) -> Path:
    """The tiny checkpoint again, with a metadata config asking for causal temporal positions
    (as LTX-Video 0.9.5+ files carry one)."""
    from comfyd.models.families import _ltxv_tiny

    target = work / "causal" / "comfyd-tiny-ltxv-causal.safetensors"
    target.parent.mkdir(parents=True, exist_ok=True)
    config = {"transformer": {"causal_temporal_positioning": True}}
    save_file(load_file(str(root / _ltxv_tiny.NAMES["checkpoint"])), str(target), metadata={"config": json.dumps(config)})
    return target


def comfyd_sampling(root: Path, work: Path, data: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """SamplerCustom (euler, CFG) on comfyd's MODEL from the tiny checkpoint, then VAEDecode."""
    from comfyd.models.families import _ltxv_tiny
    from comfyd.models.manager import ModelManager
    from comfyd.sampling.custom import sample_custom
    from comfyd.sampling.guiders import Guider, NoiseSource, SamplerChoice
    from comfyd.settings import Settings

    manager = ModelManager(Settings(models_dir=root, home=work / "home"))
    model, _, vae = manager.load_checkpoint(Path(_ltxv_tiny.NAMES["checkpoint"]).name)
    out: dict[str, torch.Tensor] = {}
    for name, (positive, negative, latent, sigmas) in sampling_cases(data).items():
        guider = Guider(model, "cfg", (positive, negative), cfg=SAMPLE_CFG)
        sampled = sample_custom(guider, SamplerChoice("euler"), sigmas, NoiseSource(SAMPLE_SEED), latent)[0]
        out[f"sampled_{name}"] = sampled["samples"]
        with torch.no_grad():
            out[f"video_{name}"] = vae.vae.decode(sampled["samples"])[0].clamp(-1, 1)
    return out


def comfyui_sampling(work: Path, unet: dict[str, torch.Tensor], vae: torch.nn.Module,
                     data: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:  # fmt: skip
    """ComfyUI's SamplerCustom path (comfy.sample.sample_custom on a ModelPatcher of its LTXV
    model_base with the tiny transformer) on the same conditioning tensors, then its VAE decode."""
    import comfy.model_base
    import comfy.model_patcher
    import comfy.sample
    import comfy.samplers
    import comfy.supported_models

    config = comfy.supported_models.LTXV({
        "image_model": "ltxv", "in_channels": 128, "cross_attention_dim": 128, "attention_head_dim": 4,
        "num_attention_heads": 32, "caption_channels": 32, "num_layers": 2})  # fmt: skip
    config.set_inference_dtype(torch.float32, None)
    base = comfy.model_base.LTXV(config, device=torch.device("cpu"))
    base.diffusion_model.load_state_dict(unet, strict=True)
    base.eval()
    cpu = torch.device("cpu")
    patcher = comfy.model_patcher.ModelPatcher(base, load_device=cpu, offload_device=cpu)
    out: dict[str, torch.Tensor] = {}
    for name, (positive, negative, latent, sigmas) in sampling_cases(data).items():
        image = latent["samples"]
        noise = comfy.sample.prepare_noise(image, SAMPLE_SEED)
        sampled = comfy.sample.sample_custom(
            patcher, noise, SAMPLE_CFG, comfy.samplers.sampler_object("euler"), sigmas, positive, negative, image,
            noise_mask=latent.get("noise_mask"), seed=SAMPLE_SEED, disable_pbar=True,
        )  # fmt: skip
        out[f"sampled_{name}"] = sampled.float().contiguous()
        with torch.no_grad():
            out[f"video_{name}"] = vae.decode(sampled.float()).clamp(-1, 1).contiguous()
    return out


def comfyui_side(work: Path, comfyui: Path) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from comfyui_render import load_comfyui

    load_comfyui(comfyui, work, None, work / "comfyui-out")  # CPU, ComfyUI's own import set-up
    import comfy.ops
    from comfy.ldm.lightricks.model import LTXVModel
    from comfy.ldm.lightricks.vae.causal_video_autoencoder import Decoder, Encoder, VideoVAE, processor

    data = load_file(str(work / "inputs.safetensors"))
    state = {k: v.float() for k, v in load_file(str(work / "models/checkpoints/comfyd-tiny-ltxv.safetensors")).items()}
    unet = {k[len("model.diffusion_model.") :]: v for k, v in state.items() if k.startswith("model.diffusion_model.")}
    model = LTXVModel(in_channels=128, cross_attention_dim=128, attention_head_dim=4, num_attention_heads=32,
                      caption_channels=32, num_layers=2, operations=comfy.ops.disable_weight_init)  # fmt: skip
    model.load_state_dict(unet, strict=True)
    model.eval()
    out: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for s in SIGMAS:
            out[f"v{s}"] = model(data["x"], torch.tensor([s]), data["context"], data["mask"], frame_rate=FRAME_RATE)
        causal = LTXVModel(in_channels=128, cross_attention_dim=128, attention_head_dim=4, num_attention_heads=32,
                           caption_channels=32, num_layers=2, causal_temporal_positioning=True,
                           operations=comfy.ops.disable_weight_init)  # fmt: skip
        causal.load_state_dict(unet, strict=True)
        out["v_causal"] = causal.eval()(data["x"], torch.tensor([SIGMAS[1]]), data["context"], data["mask"],
                                        frame_rate=FRAME_RATE)  # fmt: skip
        # model_base.LTXV.process_timestep: the denoise mask times sigma, one timestep per token.
        per_token = model.patchifier.patchify(data["denoise"] * torch.tensor([SIGMAS[1]]).view(1, 1, 1, 1, 1))[0]
        out["v_i2v"] = model(data["x"], per_token, data["context"], data["mask"], frame_rate=FRAME_RATE)
        vae = VideoVAE.__new__(VideoVAE)
        torch.nn.Module.__init__(vae)
        vae.timestep_conditioning = False
        vae.encoder = Encoder(dims=3, in_channels=3, out_channels=128, blocks=TINY_BLOCKS, base_channels=8,
                              patch_size=4, norm_layer="pixel_norm", latent_log_var="uniform")  # fmt: skip
        vae.decoder = Decoder(dims=3, in_channels=128, out_channels=3, blocks=TINY_BLOCKS, base_channels=8,
                              patch_size=4, norm_layer="pixel_norm", causal=False, spatial_padding_mode="reflect")  # fmt: skip
        vae.per_channel_statistics = processor()
        vae.load_state_dict({k[len("vae.") :]: v for k, v in state.items() if k.startswith("vae.")}, strict=True)
        vae.eval()
        out["frames"] = vae.decode(data["z"]).clamp(-1, 1).contiguous()
        out["encoded"] = vae.encode(data["pixels"]).contiguous()
        out["frames_091"] = comfyui_vae_091(work).contiguous()
        out["frames_095"], out["encoded_095"] = comfyui_vae_095(work)
    out.update(comfyui_guides(model, vae, data))
    out.update(comfyui_sampling(work, unet, vae, data))
    out.update(comfyui_text(work))
    import comfy.model_sampling
    from comfy_extras.nodes_lt import LTXVScheduler

    for i, (steps, high, low, stretch, terminal, tokens) in enumerate(SCHEDULES):
        latent = {"samples": torch.zeros(1, 128, 1, 1, tokens)}
        out[f"sched{i}"] = LTXVScheduler.execute(steps, high, low, stretch, terminal, latent).result[0]
        slope = (high - low) / (4096 - 1024)
        sampling = comfy.model_sampling.ModelSamplingFlux(None)
        sampling.set_parameters(shift=tokens * slope + (low - slope * 1024))
        out[f"table{i}"] = sampling.sigmas.float().contiguous()
    save_file({k: v.contiguous() for k, v in out.items()}, str(work / "comfyui.safetensors"))


def comfyui_guides(model: torch.nn.Module, vae: torch.nn.Module, data: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """ComfyUI's LTXVAddGuide / LTXVCropGuides nodes (with a stand-in for its VAE wrapper: the
    tiny VideoVAE's encode on the frames as one clip, in -1..1) and its LTXVModel with the
    keyframe positions and per-token timesteps (model_base.LTXV.process_timestep)."""
    from comfy_extras.nodes_lt import LTXVAddGuide, LTXVCropGuides

    class Wrapper:
        downscale_index_formula = (8, 32, 32)

        def encode(self, pixels: torch.Tensor) -> torch.Tensor:
            return vae.encode(pixels.movedim(-1, 0).unsqueeze(0) * 2 - 1)

    positive = [[data["pos"], {"attention_mask": data["pos_mask"], "frame_rate": FRAME_RATE}]]
    negative = [[data["neg"], {"attention_mask": data["neg_mask"], "frame_rate": FRAME_RATE}]]
    latent: dict[str, torch.Tensor] = {"samples": torch.zeros(1, 128, 3, 2, 2)}
    with torch.no_grad():
        for name, frame_idx, strength in GUIDES:
            positive, negative, latent = LTXVAddGuide.execute(positive, negative, Wrapper(), latent, data[name],
                                                              frame_idx, strength).result  # fmt: skip
        keyframe_idxs = positive[0][1]["keyframe_idxs"]
        mask = latent["noise_mask"].expand(1, 1, -1, 2, 2)
        per_token = model.patchifier.patchify(mask * torch.tensor([SIGMAS[1]]).view(1, 1, 1, 1, 1))[0]
        velocity = model(latent["samples"], per_token, data["pos"], data["pos_mask"], frame_rate=FRAME_RATE,
                         keyframe_idxs=keyframe_idxs)  # fmt: skip
        _, _, cropped = LTXVCropGuides.execute(positive, negative, latent).result
    return {"guide_samples": latent["samples"], "guide_mask": latent["noise_mask"], "guide_idxs": keyframe_idxs,
            "guide_velocity": velocity, "guide_cropped": cropped["samples"]}  # fmt: skip


def comfyui_vae_091(work: Path) -> torch.Tensor:
    """ComfyUI's 0.9.1 ("version 1") VAE decode at the tiny width: residual upsamplers, injected
    noise, timestep 0.05 and 2.5% fresh latent noise, drawn from the same seeded global generator."""
    from comfy.ldm.lightricks.vae.causal_video_autoencoder import Decoder, Encoder, VideoVAE, processor

    data = load_file(str(work / "inputs.safetensors"))
    state = load_file(str(work / "models/checkpoints/comfyd-tiny-ltxv-0.9.1.safetensors"))
    decoder_blocks = [("res_x", {"num_layers": 1, "inject_noise": True}), ("compress_all", {"residual": True, "multiplier": 2}),
                      ("res_x", {"num_layers": 1, "inject_noise": True}), ("compress_all", {"residual": True, "multiplier": 2}),
                      ("res_x", {"num_layers": 1, "inject_noise": True}), ("compress_all", {"residual": True, "multiplier": 2}),
                      ("res_x", {"num_layers": 1, "inject_noise": False})]  # fmt: skip
    vae = VideoVAE.__new__(VideoVAE)
    torch.nn.Module.__init__(vae)
    vae.timestep_conditioning = True
    vae.encoder = Encoder(dims=3, in_channels=3, out_channels=128, blocks=TINY_BLOCKS, base_channels=8,
                          patch_size=4, norm_layer="pixel_norm", latent_log_var="uniform")  # fmt: skip
    vae.decoder = Decoder(dims=3, in_channels=128, out_channels=3, blocks=decoder_blocks, base_channels=8, patch_size=4,
                          norm_layer="pixel_norm", causal=False, timestep_conditioning=True,
                          spatial_padding_mode="reflect")  # fmt: skip
    vae.per_channel_statistics = processor()
    vae.load_state_dict({k[4:]: v.float() for k, v in state.items() if k.startswith("vae.")}, strict=True)
    vae.eval()
    with torch.no_grad():
        torch.manual_seed(SEED)
        return vae.decode(data["z"]).clamp(-1, 1)


def comfyui_vae_095(work: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """ComfyUI's 0.9.5 ("version 2") VAE at the tiny width: decode (timestep 0.05, 2.5% fresh noise
    from the seeded global generator) and encode (residual space / time / all compressions)."""
    from comfy.ldm.lightricks.vae.causal_video_autoencoder import Decoder, Encoder, VideoVAE, processor

    data = load_file(str(work / "inputs.safetensors"))
    state = load_file(str(work / "models/checkpoints/comfyd-tiny-ltxv-0.9.5.safetensors"))
    res = {"num_layers": 1}
    encoder_blocks = [("res_x", res), ("compress_space_res", {"multiplier": 2}), ("res_x", res),
                      ("compress_time_res", {"multiplier": 2}), ("res_x", res), ("compress_all_res", {"multiplier": 2}),
                      ("res_x", res), ("compress_all_res", {"multiplier": 2}), ("res_x", res)]  # fmt: skip
    up = ("compress_all", {"residual": True, "multiplier": 2})
    plain = ("res_x", {"num_layers": 1, "inject_noise": False})
    vae = VideoVAE.__new__(VideoVAE)
    torch.nn.Module.__init__(vae)
    vae.timestep_conditioning = True
    vae.encoder = Encoder(dims=3, in_channels=3, out_channels=128, blocks=encoder_blocks, base_channels=8,
                          patch_size=4, norm_layer="pixel_norm", latent_log_var="uniform")  # fmt: skip
    vae.decoder = Decoder(dims=3, in_channels=128, out_channels=3, blocks=[plain, up, plain, up, plain, up, plain],
                          base_channels=8, patch_size=4, norm_layer="pixel_norm", causal=False,
                          timestep_conditioning=True, spatial_padding_mode="reflect")  # fmt: skip
    vae.per_channel_statistics = processor()
    vae.load_state_dict({k[4:]: v.float() for k, v in state.items() if k.startswith("vae.")}, strict=True)
    vae.eval()
    with torch.no_grad():
        torch.manual_seed(SEED)
        frames = vae.decode(data["z"]).clamp(-1, 1).contiguous()
        return frames, vae.encode(data["pixels"]).contiguous()


def comfyui_text(work: Path) -> dict[str, torch.Tensor]:
    """ComfyUI's LTXV tokenizer and a T5 SDClipModel with LTXV's settings (comfy/text_encoders/lt.py
    and genmo.py: attention mask used and returned, not zeroed), built from the tiny config."""
    import comfy.sd1_clip as sd1_clip
    import comfy.text_encoders.lt as lt
    import comfy.text_encoders.t5 as t5

    state = load_file(str(work / "models/text_encoders/comfyd-tiny-ltxv-t5xxl.safetensors"))
    tokenizer = lt.LTXVT5Tokenizer()
    clip = sd1_clip.SDClipModel(
        device="cpu", layer="last", textmodel_json_config=str(work / "t5_tiny.json"), dtype=torch.float32,
        special_tokens={"end": 1, "pad": 0}, model_class=t5.T5, enable_attention_masks=True,
        return_attention_masks=True,
    )  # fmt: skip
    missing, unexpected = clip.transformer.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)
    assert not unexpected and all("embed_tokens" in k for k in missing), (missing, unexpected)
    out: dict[str, torch.Tensor] = {}
    for i, prompt in enumerate(PROMPTS):
        pairs = tokenizer.tokenize_with_weights(prompt)["t5xxl"]
        out[f"tokens{i}"] = torch.tensor([t for t, _ in pairs[0]])
        out[f"cond{i}"] = clip.encode_token_weights(pairs)[0].float().contiguous()
    return out


def save_reference(theirs: dict[str, torch.Tensor], work: Path, target: Path) -> None:
    """ComfyUI's velocities, encoded latent and sigmas as float32, its decoded frames as 8-bit,
    with the SHA-256 of the tiny checkpoint and T5 file they were computed from."""
    import hashlib

    from comfyd.models.families import _ltxv_tiny

    wanted = ("v1", "v0", "v_i2v", "v_causal", "guide_", "sched", "cond", "tokens", "sampled")
    keep = {k: v.float().contiguous() for k, v in theirs.items() if k.startswith(wanted)}
    keep["encoded"] = theirs["encoded"].float().contiguous()
    keep["encoded_095"] = theirs["encoded_095"].float().contiguous()
    for key in ("frames", "frames_091", "frames_095"):
        keep[f"{key}_u8"] = torch.clamp((theirs[key] + 1) / 2 * 255, 0, 255).to(torch.uint8).contiguous()
    digests = {
        name: hashlib.sha256((work / "models" / rel).read_bytes()).hexdigest() for name, rel in _ltxv_tiny.NAMES.items()
    }
    save_file(keep, str(target), metadata={"sha256": json.dumps(digests), "comfyui": "0.3.64"})


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
    parser.add_argument("--save-reference", type=Path, help="also write ComfyUI's outputs here (the test's reference)")
    args = parser.parse_args(argv)
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    if args.comfyui_side:
        comfyui_side(work, args.comfyui)
        return 0
    ours = comfyd_side(work)
    save_file(with_sigmas(inputs()), str(work / "inputs.safetensors"))
    subprocess.run(
        [args.comfyui_python, __file__, "--comfyui-side", "--workdir", str(work), "--comfyui", str(args.comfyui)],
        check=True,
    )
    theirs = load_file(str(work / "comfyui.safetensors"))
    if args.save_reference is not None:
        save_reference(theirs, work, args.save_reference)
    for case in [*(f"v{s}" for s in SIGMAS), "v_i2v", "v_causal"]:
        a, b = ours[case], theirs[case]
        print(f"RESULT transformer_{case}_max_rel_diff={float((a - b).abs().max() / b.std()):.3g}")
    print(f"RESULT vae_frames={tuple(ours['frames'].shape)} comfyui_frames={tuple(theirs['frames'].shape)}")
    print(f"RESULT vae_decode_psnr_db={psnr_8bit(ours['frames'], theirs['frames']):.2f}")
    print(f"RESULT vae_091_decode_psnr_db={psnr_8bit(ours['frames_091'], theirs['frames_091']):.2f} "
          f"frames={tuple(ours['frames_091'].shape)}")  # fmt: skip
    enc095 = float((ours["encoded_095"] - theirs["encoded_095"]).abs().max() / theirs["encoded_095"].std())
    print(f"RESULT vae_095_decode_psnr_db={psnr_8bit(ours['frames_095'], theirs['frames_095']):.2f} "
          f"vae_095_encode_max_rel_diff={enc095:.3g}")  # fmt: skip
    enc_diff = float((ours["encoded"] - theirs["encoded"]).abs().max() / theirs["encoded"].std())
    print(f"RESULT vae_encode_max_rel_diff={enc_diff:.3g}")
    same = all(torch.equal(ours[k].float(), theirs[k].float()) for k in ("guide_mask", "guide_idxs"))
    diff = float((ours["guide_samples"] - theirs["guide_samples"]).abs().max())
    crop = tuple(ours["guide_cropped"].shape) == tuple(theirs["guide_cropped"].shape)
    vel = float((ours["guide_velocity"] - theirs["guide_velocity"]).abs().max() / theirs["guide_velocity"].std())
    print(f"RESULT ltxv_add_guide_mask_and_keyframes_identical={same} latent_max_abs_diff={diff:.3g} "
          f"crop_shapes_equal={crop} transformer_keyframes_max_rel_diff={vel:.3g}")  # fmt: skip
    for name in ("t2v", "i2v"):
        a, b = ours[f"sampled_{name}"], theirs[f"sampled_{name}"]
        frames = ours[f"video_{name}"].shape[2]
        worst = min(psnr_8bit(ours[f"video_{name}"][:, :, f], theirs[f"video_{name}"][:, :, f]) for f in range(frames))
        print(f"RESULT samplercustom_{name}_latent_max_rel_diff={float((a - b).abs().max() / b.std()):.3g} "
              f"frames={frames} min_frame_psnr_db={worst:.2f}")  # fmt: skip
    for i in range(len(PROMPTS)):
        same = torch.equal(ours[f"tokens{i}"], theirs[f"tokens{i}"])
        diff = float((ours[f"cond{i}"] - theirs[f"cond{i}"]).abs().max())
        print(f"RESULT t5_prompt{i}_tokens_identical={same} cond_max_abs_diff={diff:.3g}")
    for i in range(len(SCHEDULES)):
        print(f"RESULT ltxv_scheduler_{i}_identical={torch.equal(ours[f'sched{i}'], theirs[f'sched{i}'])} "
              f"model_sampling_ltxv_{i}_table_identical={torch.equal(ours[f'table{i}'], theirs[f'table{i}'])}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    raise SystemExit(main())
