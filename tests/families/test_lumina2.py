"""Lumina Image 2.0 on tiny random files in both of ComfyUI's layouts (`make-tiny --family lumina2`).

Held to ComfyUI itself: `data/lumina2_comfyui_reference.safetensors` holds what ComfyUI 0.3.64's own
modules computed on these same files (bench/lumina2_comfyui_parity.py --save-reference): its NextDiT
at two latents (one odd-sized, padded) and sigmas, and its Gemma 2 text path (Gemma2BTokenizer on
the file's SentencePiece model, Gemma2_2BModel's layer -2 with a weighted prompt). The canonical
workflow (comfyd/workflows/lumina2_api.json: CLIPTextEncodeLumina2, ModelSamplingAuraFlow,
RenormCFG) runs through `comfyd run` on the all-in-one checkpoint and through the server on the
split files (UNETLoader + CLIPLoader type lumina2 + VAELoader), to the same picture.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from comfyd.cli import main
from comfyd.models import gemma2_encoder
from comfyd.models.families import _lumina2_tiny
from comfyd.models.families import _lumina2_transformer as transformer
from comfyd.models.tiny import make_tiny
from tests.server.conftest import start_server  # noqa: F401  (the fixture)

HERE = Path(__file__).resolve().parent
REFERENCE = HERE / "data" / "lumina2_comfyui_reference.safetensors"
WORKFLOW = HERE.parents[1] / "comfyd" / "workflows" / "lumina2_api.json"
SIZE = 64


@pytest.fixture(scope="module")
def lumina_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("lumina2") / "models"
    written = make_tiny(root, family="lumina2")
    assert sorted(p.relative_to(root).as_posix() for p in written) == sorted(_lumina2_tiny.NAMES.values())
    return root


@pytest.fixture(scope="module")
def reference(lumina_models: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(REFERENCE), "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        digests = json.loads(f.metadata()["sha256"])
    for name, rel in _lumina2_tiny.NAMES.items():  # the reference was computed on these very files
        assert hashlib.sha256((lumina_models / rel).read_bytes()).hexdigest() == digests[name], name
    return tensors


def _manager(root: Path, home: Path):
    from comfyd.models.manager import ModelManager
    from comfyd.settings import Settings

    return ModelManager(Settings(models_dir=root, device="cpu", home=home))


def tiny_workflow(split: bool = False) -> dict:
    graph = json.loads(WORKFLOW.read_text())
    names = {k: Path(v).name for k, v in _lumina2_tiny.NAMES.items()}
    graph["4"]["inputs"]["ckpt_name"] = names["checkpoint"]
    graph["5"]["inputs"].update(width=SIZE, height=SIZE)
    graph["3"]["inputs"].update(steps=2)
    if split:
        del graph["4"]
        graph["20"] = {
            "class_type": "UNETLoader",
            "inputs": {"unet_name": names["transformer"], "weight_dtype": "default"},
        }
        graph["21"] = {
            "class_type": "CLIPLoader",
            "inputs": {"clip_name": names["gemma2_2b"], "type": "lumina2"},
        }
        graph["22"] = {"class_type": "VAELoader", "inputs": {"vae_name": names["vae"]}}
        graph["11"]["inputs"]["model"] = ["20", 0]
        graph["6"]["inputs"]["clip"] = graph["7"]["inputs"]["clip"] = ["21", 0]
        graph["8"]["inputs"]["vae"] = ["22", 0]
    return graph


def test_stored_layout_probe_and_config(lumina_models: Path) -> None:
    from comfyd.models.header_probe import detect_family, is_supported, read_header

    unet = lumina_models / _lumina2_tiny.NAMES["transformer"]
    with safe_open(str(unet), "pt") as f:
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    assert {"layers.1.attention.qkv.weight", "context_refiner.0.attention_norm1.weight", "norm_final.weight",
            "final_layer.adaLN_modulation.1.weight", "t_embedder.mlp.2.weight"} <= set(shapes)  # fmt: skip
    assert "context_refiner.0.adaLN_modulation.1.weight" not in shapes
    assert transformer.infer_config(shapes, "") == _lumina2_tiny.TINY_TRANSFORMER
    for name, family in (("transformer", "lumina2"), ("checkpoint", "lumina2"), ("gemma2_2b", "gemma2")):
        assert detect_family(read_header(lumina_models / _lumina2_tiny.NAMES[name])) == family
        assert is_supported(family)
    full = {"model.embed_tokens.weight": (256000, 2304), "model.layers.0.self_attn.q_proj.weight": (2048, 2304),
            "model.layers.0.self_attn.k_proj.weight": (1024, 2304), "model.layers.0.mlp.gate_proj.weight": (9216, 2304),
            **{f"model.layers.{i}.input_layernorm.weight": (2304,) for i in range(26)}}  # fmt: skip
    config = gemma2_encoder.infer_config(full)
    assert (config["head_dim"], config["num_attention_heads"], config["num_key_value_heads"]) == (256, 8, 4)


def test_network_matches_comfyuis_nextdit(lumina_models: Path, reference: dict, tmp_path: Path) -> None:
    model = _manager(lumina_models, tmp_path / "home").load_diffusion_model(
        Path(_lumina2_tiny.NAMES["transformer"]).name
    )
    assert isinstance(model.unet, transformer.Lumina2Network) and model.family == "lumina2"
    with torch.inference_mode():
        out = model.unet(reference["x"], reference["sigma"], reference["context"])[0]
        odd = model.unet(reference["x_odd"], reference["sigma_odd"], reference["context"][:1])[0]
    assert torch.allclose(out, reference["out"], atol=2e-5, rtol=1e-4), (out - reference["out"]).abs().max()
    assert odd.shape == (1, 16, 5, 7)
    assert torch.allclose(odd, reference["out_odd"], atol=2e-5, rtol=1e-4), (
        (odd - reference["out_odd"]).abs().max()
    )


def test_gemma_text_matches_comfyui(lumina_models: Path, reference: dict, tmp_path: Path) -> None:
    from comfyd.models.text_encoding import encode_tokens, tokenize_text

    with safe_open(str(REFERENCE), "pt") as f:
        prompt = f.metadata()["prompt"]
    clip = _manager(lumina_models, tmp_path / "home").load_clip(
        [Path(_lumina2_tiny.NAMES["gemma2_2b"]).name], "lumina2"
    )
    assert clip.family == "lumina2"
    tokens = tokenize_text(clip, prompt)["gemma2_2b"][0]
    assert [t for t, _ in tokens] == reference["gemma_ids"].tolist()
    assert [w for _, w in tokens] == pytest.approx(reference["gemma_weights"].tolist())
    assert reference["gemma_mask"].min() == 1  # no padding: ComfyUI hands the model no mask
    cond, pooled = encode_tokens(clip, {"gemma2_2b": [tokens]})
    assert pooled is None and cond.shape == reference["gemma_cond"].shape
    assert torch.allclose(cond, reference["gemma_cond"], atol=1e-5, rtol=1e-5), (
        (cond - reference["gemma_cond"]).abs().max()
    )


def test_bf16_gemma_rounds_its_norm_scales_as_comfyui(
    lumina_models: Path, reference: dict, tmp_path: Path
) -> None:
    """A bf16 file: ComfyUI keeps the encoder in bf16 and forms each norm's 1 + weight there."""
    from comfyd.models.text_encoding import encode_text

    with safe_open(str(REFERENCE), "pt") as f:
        prompt = f.metadata()["prompt"]
    root = tmp_path / "models"
    (root / "text_encoders").mkdir(parents=True)
    state = load_file(str(lumina_models / _lumina2_tiny.NAMES["gemma2_2b"]))
    save_file({k: v if k == gemma2_encoder.SPIECE_KEY else v.to(torch.bfloat16) for k, v in state.items()},
              str(root / "text_encoders" / "gemma-bf16.safetensors"))  # fmt: skip
    clip = _manager(root, tmp_path / "home").load_clip(["gemma-bf16.safetensors"], "lumina2")
    cond = encode_text(clip, prompt)[0][0]
    expected = reference["gemma_cond_bf16"]
    assert torch.allclose(cond, expected, atol=1e-5, rtol=1e-5), (cond - expected).abs().max()
    assert not torch.allclose(expected, reference["gemma_cond"], atol=1e-3)  # the rounding shows


def test_clip_type_lumina2_builds_gemma_or_qwen3_by_the_file(lumina_models: Path, tmp_path: Path) -> None:
    from comfyd.models import qwen3_encoder, tiny
    from comfyd.models.families import _z_image_tiny

    root = tmp_path / "models"
    (root / "text_encoders").mkdir(parents=True)
    encoder = tiny.random_module(qwen3_encoder.empty_encoder(_z_image_tiny.tiny_encoder_config()), 0, "qwen3")
    save_file(
        {f"model.{k}": v for k, v in encoder.state_dict().items()},
        str(root / "text_encoders" / "qwen3.safetensors"),
    )
    state = load_file(str(lumina_models / _lumina2_tiny.NAMES["gemma2_2b"]))
    del state[gemma2_encoder.SPIECE_KEY]
    save_file(state, str(root / "text_encoders" / "gemma-no-tokenizer.safetensors"))
    manager = _manager(root, tmp_path / "home")
    assert manager.load_clip(["qwen3.safetensors"], "lumina2").family == "z_image"
    with pytest.raises(Exception, match="no tokenizer.*spiece_model"):
        manager.load_clip(["gemma-no-tokenizer.safetensors"], "lumina2")


def test_renorm_cfg_as_comfyui() -> None:
    from comfyd.sampling.guidance import CfgArgs
    from comfyd.sampling.renorm_cfg import RenormCfg

    g = torch.Generator().manual_seed(0)
    x, cond, uncond = (torch.randn(1, 16, 4, 4, generator=g) for _ in range(3))
    args = CfgArgs(x, torch.tensor(0.5), cond, uncond, 4.0)
    guided = uncond + 4.0 * (cond - uncond)
    limited = RenormCfg(100.0, 1.0).bind(None)(args)  # type: ignore[arg-type]
    assert torch.allclose(limited, guided * cond.norm() / guided.norm())
    assert torch.equal(RenormCfg(100.0, 0.0).bind(None)(args), guided)  # type: ignore[arg-type]
    assert torch.equal(RenormCfg(100.0, 50.0).bind(None)(args), guided)  # type: ignore[arg-type]
    assert torch.equal(RenormCfg(0.4, 1.0).bind(None)(args), cond)  # type: ignore[arg-type]  # sigma >= cfg_trunc


def test_system_prompt_goes_before_the_user_prompt(lumina_models: Path, tmp_path: Path) -> None:
    from comfyd.nodes.conditioning.lumina2 import SYSTEM_PROMPTS, CLIPTextEncodeLumina2, lumina2_prompt

    assert lumina2_prompt("alignment", "a fox") == f"{SYSTEM_PROMPTS['alignment']} <Prompt Start> a fox"
    with pytest.raises(ValueError, match="system_prompt"):
        lumina2_prompt("best", "a fox")
    with pytest.raises(RuntimeError, match="clip input is invalid"):
        CLIPTextEncodeLumina2().run(None, None, "a fox", "superior")  # type: ignore[arg-type]


def _run(graph: dict, root: Path, tmp_path: Path, capsys) -> np.ndarray:
    path = tmp_path / "lumina2.json"
    path.write_text(json.dumps(graph))
    out = tmp_path / "out"
    code = main(["run", str(path), "--models-dir", str(root), "--output-dir", str(out), "-q", "--json"])
    assert code == 0, capsys.readouterr().err
    result = json.loads(capsys.readouterr().out)
    assert result["status"] == "success" and len(result["images"]) == 1
    return np.asarray(Image.open(out / Path(result["images"][0]).name).convert("RGB"))


def test_canonical_workflow_through_comfyd_run_and_the_server(
    lumina_models: Path,
    tmp_path: Path,
    capsys,
    start_server,  # noqa: F811
) -> None:
    from comfyd.runtime import build_runtime

    image = _run(tiny_workflow(), lumina_models, tmp_path, capsys)
    assert image.shape == (SIZE, SIZE, 3) and image.std() > 5
    server = start_server(runtime=build_runtime, models_dir=lumina_models)
    with server.client() as http:
        info = http.get("/object_info/CLIPTextEncodeLumina2").json()["CLIPTextEncodeLumina2"]
        assert info["input"]["required"]["system_prompt"][1]["options"] == ["superior", "alignment"]
        answer = http.post("/prompt", json={"prompt": tiny_workflow(split=True)})
        assert answer.status_code == 200, answer.text
        prompt_id = answer.json()["prompt_id"]
        job = server.wait_job(prompt_id, timeout=120)
        assert job.status.value == "succeeded", job
        entry = http.get(f"/history/{prompt_id}").json()[prompt_id]["outputs"]["9"]["images"][0]
        png = http.get("/view", params=entry)
    assert png.status_code == 200
    split = np.asarray(Image.open(io.BytesIO(png.content)).convert("RGB"))
    assert np.array_equal(split, image)  # the same weights in either layout: the same picture
