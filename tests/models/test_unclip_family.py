"""SD2.1 unCLIP as a model family: detected from its keys (label_emb beside SD2's layout), built
with diffusers' projection class embedding, its image vector reaching the UNet; and the loaders
around it (unCLIPCheckpointLoader, ImageOnlyCheckpointLoader) on tiny files."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from comfyd.models import detect
from comfyd.models.clip_vision import ClipVisionOutput
from comfyd.models.manager import ModelManager
from comfyd.models.tensorfile import TensorFile
from comfyd.models.tiny import make_tiny_checkpoint
from comfyd.sampling.ksampler import common_ksampler
from comfyd.settings import Settings


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("unclip-models")
    make_tiny_checkpoint(root / "checkpoints", "sd2_unclip", "single", prediction="eps")
    # An SVD-like file: a video UNet's temporal blocks (no other tensor is read before refusing it).
    save_file({"model.diffusion_model.input_blocks.1.1.time_stack.0.attn1.to_q.weight": torch.zeros(2, 2)},
              str(root / "checkpoints" / "svd.safetensors"))  # fmt: skip
    return root


def _settings(root: Path) -> Settings:
    return Settings(device="cpu", models_dir=root, output_dir=root / "out", temp_dir=root / "temp",
                    input_dir=root / "in")  # fmt: skip


def test_unclip_files_are_recognised_and_sd2_files_are_not_taken_for_them(root: Path, models_root: Path) -> None:
    with TensorFile(root / "checkpoints" / "comfyd-tiny-sd2_unclip.safetensors") as tf:
        info = detect.detect_checkpoint(tf)
    assert info.family == "sd2_unclip" and info.prediction == "eps"
    assert info.unet_config["class_embed_type"] == "projection"
    assert info.unet_config["projection_class_embeddings_input_dim"] == 1536
    assert "addition_embed_type" not in info.unet_config
    with TensorFile(models_root / "checkpoints" / "comfyd-tiny-sd2.safetensors") as tf:  # conftest's
        plain = detect.detect_checkpoint(tf)
    assert plain.family == "sd2" and "class_embed_type" not in plain.unet_config


@pytest.mark.slow
def test_the_image_vector_reaches_the_unet(root: Path) -> None:
    manager = ModelManager(_settings(root))
    model, clip, _vae = manager.load_checkpoint("comfyd-tiny-sd2_unclip.safetensors")
    from comfyd.models.text_encoding import encode_text

    text = encode_text(clip, "a bottle")
    negative = encode_text(clip, "")
    latent = {"samples": torch.zeros(1, 4, 8, 8)}

    def sample(embeds: torch.Tensor | None, strength: float = 1.0) -> torch.Tensor:
        positive = text
        if embeds is not None:
            output = ClipVisionOutput(torch.zeros(1, 257, 8), torch.zeros(1, 257, 8), embeds)
            item = {"clip_vision_output": output, "strength": strength, "noise_augmentation": 0.2}
            positive = [[c, {**o, "unclip_conditioning": [item]}] for c, o in text]
        return common_ksampler(model, 3, 2, 5.0, "euler", "normal", positive, negative, latent)["samples"]

    generator = torch.Generator().manual_seed(0)
    a, b = torch.randn(1, 768, generator=generator), torch.randn(1, 768, generator=generator)
    with_a = sample(a)
    assert torch.isfinite(with_a).all()
    assert not torch.allclose(with_a, sample(b))
    assert not torch.allclose(with_a, sample(None))  # no image: a zero vector, as in ComfyUI
    bad = ClipVisionOutput(torch.zeros(1, 1, 8), torch.zeros(1, 1, 8), torch.zeros(1, 1024))
    positive = [[c, {**o, "unclip_conditioning": [{"clip_vision_output": bad, "strength": 1.0,
                                                   "noise_augmentation": 0.0}]}] for c, o in text]  # fmt: skip
    with pytest.raises(ValueError, match="768-wide image embeddings"):
        common_ksampler(model, 3, 1, 5.0, "euler", "normal", positive, negative, latent)


def test_the_loaders_through_the_runner(root: Path) -> None:
    from comfyd.runner import LocalRunner

    runner = LocalRunner(_settings(root))
    (root / "in").mkdir(exist_ok=True)
    image = {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}}
    workflow = {
        "1": {"class_type": "unCLIPCheckpointLoader", "inputs": {"ckpt_name": "comfyd-tiny-sd2_unclip.safetensors"}},
        "2": image,
        "3": {"class_type": "CLIPVisionEncode", "inputs": {"clip_vision": ["1", 3], "image": ["2", 0], "crop": "center"}},
        "4": {"class_type": "unCLIPConditioning", "inputs": {"conditioning": ["5", 0], "clip_vision_output": ["3", 0],
                                                            "strength": 1.0, "noise_augmentation": 0.0}},
        "5": {"class_type": "CLIPTextEncode", "inputs": {"text": "x", "clip": ["1", 1]}},
        "6": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "7": {"class_type": "KSampler", "inputs": {"seed": 1, "steps": 1, "cfg": 1.0, "sampler_name": "euler",
                                                  "scheduler": "normal", "denoise": 1.0, "model": ["1", 0],
                                                  "positive": ["4", 0], "negative": ["5", 0], "latent_image": ["6", 0]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["7", 0], "vae": ["1", 2]}},
        "9": {"class_type": "PreviewImage", "inputs": {"images": ["8", 0]}},
    }  # fmt: skip
    # The tiny file carries no tower: ComfyUI hands out None, and encoding with it is an error.
    result = runner.run(workflow)
    assert not result.ok
    assert "holds no CLIP vision model" in result.error["message"]
    svd = {"1": {"class_type": "ImageOnlyCheckpointLoader", "inputs": {"ckpt_name": "svd.safetensors"}},
           "2": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
           "3": {"class_type": "VAEDecode", "inputs": {"samples": ["2", 0], "vae": ["1", 2]}},
           "4": {"class_type": "PreviewImage", "inputs": {"images": ["3", 0]}}}  # fmt: skip
    result = runner.run(svd)
    assert not result.ok
    message = result.error["message"]
    assert "Stable Video Diffusion (SVD)" in message and "no SVD model family" in message
