"""Qwen-Image-Edit and Qwen-Image-Edit-2509 on tiny random files (`make-tiny --family qwen-image`,
whose Qwen2.5-VL file carries a tiny vision tower).

The canonical Qwen-Image-Edit workflow (comfyd/workflows/qwen_image_edit_api.json: UNETLoader,
CLIPLoader qwen_image, VAELoader, LoadImage, ImageScaleToTotalPixels, TextEncodeQwenImageEdit x2,
ModelSamplingAuraFlow, CFGNorm, VAEEncode, KSampler, VAEDecode, SaveImage) runs through
`comfyd run`, and the Plus node with two uploaded pictures through the server. A prompt with a
picture is held to transformers' own Qwen2.5-VL (processor expansion, vision tower, multimodal
positions) on the same weights; bench/qwen_image_edit_comfyui_parity.py holds the same path, and
pictures larger than one attention window, to ComfyUI's modules.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from comfyd.cli import main
from comfyd.models import qwen25_edit, qwen25_encoder, qwen25_vision
from comfyd.models.families import _qwen_image_tiny
from comfyd.models.tiny import make_tiny
from comfyd.nodes.conditioning.qwen_image_edit import (
    REFERENCE_PIXELS,
    VISION_PIXELS,
    TextEncodeQwenImageEdit,
    TextEncodeQwenImageEditPlus,
    scaled,
)
from tests.server.conftest import start_server  # noqa: F401  (the fixture)

WORKFLOWS = Path(__file__).resolve().parents[2] / "comfyd" / "workflows"
NAMES = {k: Path(v).name for k, v in _qwen_image_tiny.NAMES.items()}


class _Ctx:
    def check_interrupted(self) -> None:
        return None


def _picture(width: int, height: int, seed: int = 0) -> np.ndarray:
    yy, xx = np.mgrid[0:height, 0:width]
    rng = np.random.default_rng(seed)
    base = np.stack([xx * 255 // max(width - 1, 1), yy * 255 // max(height - 1, 1), (xx + yy) % 256], -1)
    return np.clip(base + rng.integers(0, 40, base.shape), 0, 255).astype(np.uint8)


def _image(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(array).float().div(255.0).unsqueeze(0)


@pytest.fixture(scope="module")
def edit_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("qwen-edit")
    make_tiny(root / "models", family="qwen-image")
    (root / "input").mkdir()
    Image.fromarray(_picture(64, 48)).save(root / "input" / "example.png")
    return root


@pytest.fixture(scope="module")
def text_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Qwen2.5-VL file alone (what the fast tests need)."""
    root = tmp_path_factory.mktemp("qwen-edit-text")
    _qwen_image_tiny.write_tiny_text_encoder(root / "models")
    return root


@pytest.fixture(scope="module")
def clip(text_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    from comfyd.models.manager import ModelManager
    from comfyd.settings import Settings

    home = tmp_path_factory.mktemp("qwen-edit-home")
    manager = ModelManager(Settings(models_dir=text_root / "models", home=home, device="cpu"))
    return manager.load_clip([NAMES["qwen25_7b"]], "qwen_image")


def edit_workflow(**changes: Any) -> dict[str, Any]:
    graph = json.loads((WORKFLOWS / "qwen_image_edit_api.json").read_text())
    graph["37"]["inputs"]["unet_name"] = NAMES["transformer"]
    graph["38"]["inputs"]["clip_name"] = NAMES["qwen25_7b"]
    graph["39"]["inputs"]["vae_name"] = NAMES["vae"]
    graph["3"]["inputs"]["steps"] = 2
    graph["93"]["inputs"]["megapixels"] = 0.01  # the sampled picture small; the references stay ~1 MP
    for node, inputs in changes.items():
        graph[node]["inputs"].update(inputs)
    return graph


@pytest.mark.slow
def test_canonical_edit_workflow_through_comfyd_run(
    edit_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "edit.json"
    path.write_text(json.dumps(edit_workflow()))
    out = tmp_path / "out"
    argv = ["run", str(path), "--models-dir", str(edit_root / "models"), "--input-dir", str(edit_root / "input"),
            "--output-dir", str(out), "-q", "--json"]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    result = json.loads(capsys.readouterr().out)
    assert result["status"] == "success" and len(result["images"]) == 1
    image = np.asarray(Image.open(out / Path(result["images"][0]).name).convert("RGB"))
    # 64x48 scaled to 0.01 MP is 118x89; VAEEncode crops to multiples of 8.
    assert image.shape == (88, 112, 3) and image.std() > 5
    # The same workflow with a text encoder file without the vision tower: a clear node error.
    models = tmp_path / "text-only"
    for part in ("transformer", "vae"):
        (models / _qwen_image_tiny.NAMES[part]).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(
            edit_root / "models" / _qwen_image_tiny.NAMES[part], models / _qwen_image_tiny.NAMES[part]
        )
    state = load_file(str(edit_root / "models" / _qwen_image_tiny.NAMES["qwen25_7b"]))
    (models / "text_encoders").mkdir()
    save_file(
        {k: v for k, v in state.items() if k.startswith("model.")},
        str(models / _qwen_image_tiny.NAMES["qwen25_7b"]),
    )
    argv[argv.index("--models-dir") + 1] = str(models)
    assert main(argv) != 0
    failed = json.loads(capsys.readouterr().out)
    assert failed["status"] == "error" and failed["error"]["node_id"] == "76"
    assert (
        failed["error"]["type"].endswith("MissingVisionTower")
        and "no vision tower" in failed["error"]["message"]
    )


@pytest.mark.slow
def test_plus_workflow_with_two_pictures_through_the_server(edit_root: Path, start_server) -> None:  # noqa: F811
    from comfyd.runtime import build_runtime
    from tests.server.test_comfy_flow import connect, follow

    server = start_server(runtime=build_runtime, models_dir=edit_root / "models", job_timeout_s=300.0)
    client_id = uuid.uuid4().hex
    ws = connect(server.ws_url, client_id)
    ws.recv()
    try:
        with server.client() as http:
            names = []
            for index, (w, h) in enumerate(((40, 56), (72, 40))):
                data = io.BytesIO()
                Image.fromarray(_picture(w, h, seed=index)).save(data, format="PNG")
                upload = http.post(
                    "/upload/image", files={"image": (f"pic{index}.png", data.getvalue(), "image/png")}
                )
                assert upload.status_code == 200, upload.text
                names.append(upload.json()["name"])
            graph = edit_workflow()
            graph["79"] = {"class_type": "LoadImage", "inputs": {"image": names[1]}}
            graph["78"]["inputs"]["image"] = names[0]
            # Without a VAE the Plus node adds no reference latents (each a ~1 MP encode, minutes
            # on 2 cores); the reference-latent path runs in the `comfyd run` test above.
            for node, prompt in (("76", "put the cat from picture 2 on the sofa"), ("77", "")):
                graph[node] = {"class_type": "TextEncodeQwenImageEditPlus", "inputs": {
                    "prompt": prompt, "clip": ["38", 0], "image1": ["93", 0], "image2": ["79", 0]}}  # fmt: skip
            answer = http.post("/prompt", json={"prompt": graph, "client_id": client_id})
            assert answer.status_code == 200, answer.text
            prompt_id = answer.json()["prompt_id"]
            events = follow(ws, prompt_id, timeout=300)
            executed = {d["node"]: d["output"] for t, d in events if t == "executed"}
            [saved] = executed["60"]["images"]
            job = server.wait_job(prompt_id, timeout=60)
            assert job.status.value == "succeeded", job
            view = http.get("/view", params=saved)
            assert view.status_code == 200
    finally:
        ws.close()
    picture = np.asarray(Image.open(io.BytesIO(view.content)).convert("RGB"))
    assert picture.shape == (120, 80, 3) and picture.std() > 5  # 40x56 at 0.01 MP: 87x121, cropped


def test_plus_node_reads_both_pictures_in_order(clip: Any) -> None:
    node = TextEncodeQwenImageEditPlus()
    a, b = _image(_picture(40, 56, 1)), _image(_picture(72, 40, 2))
    [[cond, extra]] = node.run(_Ctx(), clip, "swap them", image1=a, image2=b)[0]
    # 384^2 pixels: 40x56 -> 325x454 -> 336x448 for the tower (12x16 merged tokens); 72x40 ->
    # 515x286 -> 504x280 (18x10). Kept: "Picture 1: " + vision_start + 192 + vision_end +
    # "Picture 2: " + vision_start + 180 + vision_end + the prompt and the template's tail.
    tokenizer = qwen25_encoder.shipped_tokenizer()
    ids = qwen25_edit.tokenize(tokenizer, f"Picture 1: {qwen25_edit.VISION_TAG}Picture 2: {qwen25_edit.VISION_TAG}"
                               "swap them", qwen25_edit.PLUS_TEMPLATE)  # fmt: skip
    kept = len(ids) - qwen25_edit._template_end(ids, 10**6) - 2 + 192 + 180
    assert cond.shape == (1, kept, 32) and extra == {"pooled_output": None}
    [[swapped, _]] = node.run(_Ctx(), clip, "swap them", image1=b, image2=a)[0]
    [[once, _]] = node.run(_Ctx(), clip, "swap them", image1=a)[0]
    assert swapped.shape == cond.shape and not torch.allclose(swapped, cond)
    assert once.shape[1] == cond.shape[1] - 180 - 2 - len(tokenizer("Picture 2: ")["input_ids"])
    # No picture: the 2509 template around the prompt alone, no references without a VAE.
    [[plain, options]] = node.run(_Ctx(), clip, "swap them")[0]
    assert "reference_latents" not in options and plain.shape[1] < once.shape[1]


def test_edit_picture_sizes_as_comfyui() -> None:
    picture = _image(_picture(64, 48))
    big = scaled(picture, REFERENCE_PIXELS)
    assert big.shape == (1, 887, 1182, 3)  # round(48 * 18.475), round(64 * 18.475)
    assert scaled(picture, REFERENCE_PIXELS, multiple=8).shape == (1, 888, 1184, 3)
    assert scaled(picture, VISION_PIXELS).shape == (1, 333, 443, 3)
    assert qwen25_vision.resized_size(887, 1182) == (896, 1176)  # 32 x 42 merged tokens
    ids = qwen25_edit.tokenize(qwen25_encoder.shipped_tokenizer(), "make it red", with_images=True)
    assert qwen25_edit._template_end(ids, 10**6) == 64  # diffusers' drop_idx for the edit template


def test_prompt_with_picture_matches_transformers_qwen25_vl(text_root: Path, clip: Any) -> None:
    """One 112x112 picture (a single attention window, where ComfyUI's token order equals
    transformers'): transformers' Qwen2_5_VLForConditionalGeneration on the same weights, its
    image processor, the processor's <|image_pad|> expansion and multimodal token types, the last
    hidden state from diffusers' drop index (64) on. (diffusers' QwenImageEditPipeline.encode_prompt
    itself passes no mm_token_type_ids to transformers 5, which then falls back to 1-D positions.)"""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    text, vision = _qwen_image_tiny.tiny_encoder_config(), _qwen_image_tiny.tiny_vision_config()
    model = Qwen2_5_VLForConditionalGeneration(
        Qwen2_5_VLConfig(text_config=text, vision_config=vision)
    ).eval()
    state = load_file(str(text_root / "models" / _qwen_image_tiny.NAMES["qwen25_7b"]))
    for part, module in (("model.", model.model.language_model), ("visual.", model.model.visual)):
        module.load_state_dict(
            {k.removeprefix(part): v.float() for k, v in state.items() if k.startswith(part)}
        )
    array = _picture(112, 112, 3)
    pixels = Qwen2VLImageProcessorPil()(images=Image.fromarray(array), return_tensors="pt")
    count = int(pixels["image_grid_thw"].prod()) // 4
    prompt = qwen25_edit.EDIT_TEMPLATE.format("make it red").replace("<|image_pad|>", "<|image_pad|>" * count)
    tokenizer = qwen25_encoder.shipped_tokenizer()
    input_ids = torch.tensor([tokenizer(prompt)["input_ids"]])
    with torch.inference_mode():
        out = model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                    mm_token_type_ids=(input_ids == qwen25_edit.IMAGE_PAD).int(), output_hidden_states=True,
                    pixel_values=pixels["pixel_values"], image_grid_thw=pixels["image_grid_thw"])  # fmt: skip
    theirs = out.hidden_states[-1][:, 64:]
    ids = qwen25_edit.tokenize(tokenizer, "make it red", with_images=True)
    with clip.patched() as encoders:
        ours = qwen25_edit.encode(encoders["qwen25_7b"], ids, [_image(array)])
    assert ours.shape == theirs.shape == (1, len(ids) - 64 - 1 + count, 32)
    assert float((ours - theirs).abs().max()) < 1e-5


def test_edit_nodes_refuse_a_text_encoder_without_vision_tower(text_root: Path, tmp_path: Path) -> None:
    from comfyd.models.manager import ModelManager
    from comfyd.settings import Settings

    models = tmp_path / "models"
    (models / "text_encoders").mkdir(parents=True)
    state = load_file(str(text_root / "models" / _qwen_image_tiny.NAMES["qwen25_7b"]))
    save_file({k: v for k, v in state.items() if not k.startswith("visual.")},
              str(models / "text_encoders" / "text-only.safetensors"))  # fmt: skip
    manager = ModelManager(Settings(models_dir=models, home=tmp_path / "home", device="cpu"))
    text_only = manager.load_clip(["text-only.safetensors"], "qwen_image")
    picture = _image(_picture(30, 20))
    with pytest.raises(qwen25_edit.MissingVisionTower, match="no vision tower .*'visual"):
        TextEncodeQwenImageEdit().run(_Ctx(), text_only, "make it red", image=picture)
    with pytest.raises(qwen25_edit.MissingVisionTower, match="no vision tower"):
        TextEncodeQwenImageEditPlus().run(_Ctx(), text_only, "make it red", image2=picture)
    [[cond, _]] = TextEncodeQwenImageEdit().run(_Ctx(), text_only, "make it red")[0]  # text alone is fine
    assert cond.shape[0] == 1 and cond.shape[-1] == 32
    with pytest.raises(ValueError, match="IMAGE"):
        TextEncodeQwenImageEdit().run(_Ctx(), text_only, "x", image=torch.zeros(1, 8, 8))


def test_edit_nodes_match_comfyui_stored_reference(text_root: Path, clip: Any) -> None:
    """ComfyUI's own TextEncodeQwenImageEdit (a 200x150 picture read at ~1 MP: a 32x42 merged grid
    over many attention windows, in ComfyUI's window order) and TextEncodeQwenImageEditPlus (two
    pictures) on this same tiny file, stored by bench/qwen_image_edit_comfyui_parity.py
    --save-reference."""
    import hashlib

    from safetensors import safe_open

    path = Path(__file__).resolve().parent / "data" / "qwen_image_edit_comfyui_reference.safetensors"
    with safe_open(str(path), "pt") as f:
        stored = {k: f.get_tensor(k) for k in f.keys()}
        digest = f.metadata()["text_encoder_sha256"]
    text_file = text_root / "models" / _qwen_image_tiny.NAMES["qwen25_7b"]
    assert hashlib.sha256(text_file.read_bytes()).hexdigest() == digest  # the weights ComfyUI ran
    wide, tall = (stored[k].float() / 255.0 for k in ("wide", "tall"))
    runs = {
        "edit": TextEncodeQwenImageEdit().run(_Ctx(), clip, "make the sky purple", image=wide)[0],
        "plus_two": TextEncodeQwenImageEditPlus().run(
            _Ctx(), clip, "put the cat of picture 2 on the sofa", image1=wide, image2=tall
        )[0],
    }
    # 200x150 at ~1 MP: 1182x887, read as 1176x896, 42x32 merged tokens.
    ids = qwen25_edit.tokenize(qwen25_encoder.shipped_tokenizer(), "make the sky purple", with_images=True)
    assert runs["edit"][0][0].shape == (1, len(ids) - 64 - 1 + 32 * 42, 32)
    for case, [[ours, _]] in runs.items():
        theirs = stored[f"{case}_cond"]
        assert ours.shape == theirs.shape, case
        assert float((ours - theirs).norm() / theirs.norm()) < 1e-5, case


@pytest.mark.slow
@pytest.mark.skipif(
    os.environ.get("COMFYD_HEAVY_FIDELITY") != "1",
    reason="a ~1 MP reference picture encoded on both sides (a minute on 2 cores); set COMFYD_HEAVY_FIDELITY=1 to run",
)
def test_edit_render_matches_diffusers_edit_pipeline_on_the_same_conditioning(
    edit_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """TextEncodeQwenImageEdit's reference latent and the sampling with it against diffusers'
    QwenImageEditPipeline on the same files, a 1024x1024 picture (both sides' ~1 MP size, so
    neither resizes it), the same initial noise and comfyd's conditioning tensor as
    `prompt_embeds` (the pipeline's own prompt encoding differs from ComfyUI's:
    tests/fidelity/README.md). cfg 1, 64x64, 2 euler steps."""
    from diffusers import QwenImageEditPipeline

    from comfyd.models.manager import ModelManager
    from comfyd.sampling.noise import initial_noise
    from comfyd.settings import Settings
    from tests.families.qwen_image_reference import psnr, qwen_pipeline, simple_timesteps

    size, steps, seed = 64, 2, 7
    yy, xx = np.mgrid[0:1024, 0:1024]
    noise_pixels = np.random.default_rng(0).integers(0, 30, (1024, 1024, 3))
    array = np.clip(np.stack([xx // 4, yy // 4, (xx + yy) // 8 % 256], -1) + noise_pixels, 0, 255).astype(
        np.uint8
    )
    inputs = tmp_path / "input"
    inputs.mkdir()
    Image.fromarray(array).save(inputs / "big.png")
    graph = {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": NAMES["transformer"], "weight_dtype": "default"}},
        "2": {"class_type": "CLIPLoader", "inputs": {"clip_name": NAMES["qwen25_7b"], "type": "qwen_image", "device": "default"}},
        "3": {"class_type": "VAELoader", "inputs": {"vae_name": NAMES["vae"]}},
        "4": {"class_type": "LoadImage", "inputs": {"image": "big.png"}},
        "5": {"class_type": "TextEncodeQwenImageEdit", "inputs": {"prompt": "make it blue", "clip": ["2", 0], "vae": ["3", 0], "image": ["4", 0]}},
        "6": {"class_type": "ConditioningZeroOut", "inputs": {"conditioning": ["5", 0]}},
        "7": {"class_type": "ModelSamplingAuraFlow", "inputs": {"shift": 3.1, "model": ["1", 0]}},
        "8": {"class_type": "EmptySD3LatentImage", "inputs": {"width": size, "height": size, "batch_size": 1}},
        "9": {"class_type": "KSampler", "inputs": {"seed": seed, "steps": steps, "cfg": 1.0, "sampler_name": "euler", "scheduler": "simple",
                                                   "denoise": 1.0, "model": ["7", 0], "positive": ["5", 0], "negative": ["6", 0], "latent_image": ["8", 0]}},
        "10": {"class_type": "VAEDecode", "inputs": {"samples": ["9", 0], "vae": ["3", 0]}},
        "11": {"class_type": "SaveImage", "inputs": {"filename_prefix": "edit", "images": ["10", 0]}},
    }  # fmt: skip
    path = tmp_path / "edit.json"
    path.write_text(json.dumps(graph))
    out = tmp_path / "out"
    argv = ["run", str(path), "--models-dir", str(edit_root / "models"), "--input-dir", str(inputs),
            "--output-dir", str(out), "-q", "--json"]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    result = json.loads(capsys.readouterr().out)
    ours = np.asarray(Image.open(out / Path(result["images"][0]).name).convert("RGB"))

    manager = ModelManager(Settings(models_dir=edit_root / "models", home=tmp_path / "home", device="cpu"))
    clip = manager.load_clip([NAMES["qwen25_7b"]], "qwen_image")
    vae = manager.load_vae(NAMES["vae"])
    [[cond, options]] = TextEncodeQwenImageEdit().run(
        _Ctx(), clip, "make it blue", vae=vae, image=_image(array)
    )[0]
    base = qwen_pipeline(edit_root / "models")
    pipe = QwenImageEditPipeline(scheduler=base.scheduler, vae=base.vae, text_encoder=base.text_encoder,
                                 tokenizer=base.tokenizer, processor=None, transformer=base.transformer)  # fmt: skip
    # The reference latent itself, normalised as both transformers take it.
    pixels = pipe.image_processor.preprocess(Image.fromarray(array), 1024, 1024).unsqueeze(2)
    with torch.inference_mode():
        theirs_latent = pipe._encode_vae_image(pixels, generator=None)
    from comfyd.models.families import wan

    mean = torch.tensor(wan.LATENTS_MEAN).view(1, -1, 1, 1, 1)
    std = torch.tensor(wan.LATENTS_STD).view(1, -1, 1, 1, 1)
    [reference] = options["reference_latents"]
    ours_latent = (reference.reshape(theirs_latent.shape) - mean) / std
    assert float((ours_latent - theirs_latent).abs().max()) < 1e-3 * float(theirs_latent.abs().max())
    noise = initial_noise(torch.zeros(1, 16, size // 8, size // 8), seed)
    latents = QwenImageEditPipeline._pack_latents(noise, 1, 16, size // 8, size // 8)
    with torch.inference_mode():
        image = pipe(image=Image.fromarray(array), prompt_embeds=cond, height=size, width=size, num_inference_steps=steps,
                     sigmas=simple_timesteps(steps), true_cfg_scale=1.0, latents=latents, output_type="np").images[0]  # fmt: skip
    theirs = np.clip(255.0 * image, 0, 255).astype(np.uint8)
    assert ours.shape == theirs.shape == (size, size, 3) and theirs.std() > 20
    assert psnr(ours, theirs) >= 40.0
