"""Chroma on tiny random files in ComfyUI's split layout (`make-tiny --family chroma`): its network
against diffusers' ChromaTransformer2DModel, T5 tokens unpadded as ComfyUI's PixArt tokenizer leaves
them, and the canonical workflow (comfyd/workflows/chroma_api.json) through `comfyd run` and the
server. ComfyUI's own Chroma code holds the transformer + sampler + VAE path in
bench/chroma_comfyui_parity.py (tests/fidelity/README.md says why a bench)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from comfyd.cli import main
from comfyd.models.families import _chroma_tiny
from comfyd.models.families import _chroma_transformer as transformer
from comfyd.models.tiny import make_tiny
from tests.server.conftest import start_server  # noqa: F401  (the fixture)

SIZE = 64
WORKFLOW = Path(__file__).resolve().parents[2] / "comfyd" / "workflows" / "chroma_api.json"


@pytest.fixture(scope="module")
def chroma_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("chroma") / "models"
    written = make_tiny(root, family="chroma")
    assert sorted(p.relative_to(root).as_posix() for p in written) == sorted(_chroma_tiny.NAMES.values())
    return root


def tiny_workflow(**changes: dict) -> dict:
    graph = json.loads(WORKFLOW.read_text())
    names = {k: Path(v).name for k, v in _chroma_tiny.NAMES.items()}
    graph["10"]["inputs"]["unet_name"] = names["transformer"]
    graph["11"]["inputs"]["clip_name"] = names["t5xxl"]
    graph["12"]["inputs"]["vae_name"] = names["vae"]
    graph["5"]["inputs"].update(width=SIZE, height=SIZE)
    graph["3"]["inputs"]["steps"] = 2
    for node_id, inputs in changes.items():
        graph[node_id]["inputs"].update(inputs)
    return graph


def test_network_is_diffusers_chroma_with_comfyui_modulation_rows(chroma_models: Path, tmp_path: Path) -> None:
    """With ComfyUI's 344 modulation rows given to diffusers' embedding, diffusers' own forward and
    comfyd's (which also feeds the conditioning's guidance) agree at guidance 0."""
    from diffusers.models.embeddings import get_timestep_embedding

    from comfyd.models.manager import ModelManager
    from comfyd.settings import Settings

    manager = ModelManager(Settings(models_dir=chroma_models, home=tmp_path / "home"))
    model = manager.load_diffusion_model(Path(_chroma_tiny.NAMES["transformer"]).name)
    net = model.unet
    assert isinstance(net, transformer.ChromaNetwork)
    t = net.transformer
    g = torch.Generator().manual_seed(0)
    x, context = torch.randn(1, 16, 4, 4, generator=g), torch.randn(1, 7, 32, generator=g)
    timestep = torch.tensor([0.7])
    with torch.inference_mode():
        ours = net(x, timestep, context, {"guidance": torch.tensor([0.0])})[0]
        rows = transformer.MODULATION_ROWS
        t.time_text_embed.mod_proj = get_timestep_embedding(torch.arange(rows) * 1000, 32, True, 0)
        packed = x.reshape(1, 16, 2, 2, 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(1, 4, 64)
        ids = transformer.position_ids(2, 2)
        theirs = t(packed, context, timestep, img_ids=ids, txt_ids=torch.zeros(7, 3), return_dict=False)[0]
        theirs = theirs.reshape(1, 2, 2, 16, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(1, 16, 4, 4)
        guided = net(x, timestep, context, {"guidance": torch.tensor([4.0])})[0]
    assert torch.allclose(ours, theirs, atol=1e-5)
    assert not torch.allclose(ours, guided, atol=1e-3)  # the guidance input reaches the approximator


def test_chroma_prompts_are_not_padded(chroma_models: Path, tmp_path: Path) -> None:
    from comfyd.models.manager import ModelManager
    from comfyd.models.text_encoding import tokenize_text
    from comfyd.settings import Settings

    manager = ModelManager(Settings(models_dir=chroma_models, home=tmp_path / "home"))
    clip = manager.load_clip([Path(_chroma_tiny.NAMES["t5xxl"]).name], "chroma")
    assert clip.family == "chroma"
    tokens = tokenize_text(clip, "a red fox")["t5xxl"][0]
    assert tokens[-1] == (1, 1.0) and 1 < len(tokens) < 10  # the prompt and its end token, no pads
    assert tokenize_text(clip, "")["t5xxl"][0] == [(1, 1.0)]


def test_canonical_workflow_through_comfyd_run(chroma_models: Path, tmp_path: Path, capsys) -> None:
    path = tmp_path / "chroma.json"
    path.write_text(json.dumps(tiny_workflow()))
    out = tmp_path / "out"
    code = main(["run", str(path), "--models-dir", str(chroma_models), "--output-dir", str(out), "-q", "--json"])
    assert code == 0, capsys.readouterr().err
    result = json.loads(capsys.readouterr().out)
    assert result["status"] == "success" and len(result["images"]) == 1
    image = np.asarray(Image.open(out / Path(result["images"][0]).name).convert("RGB"))
    assert image.shape == (SIZE, SIZE, 3) and image.std() > 5


def test_canonical_workflow_through_the_server(chroma_models: Path, start_server) -> None:  # noqa: F811
    from comfyd.runtime import build_runtime

    server = start_server(runtime=build_runtime, models_dir=chroma_models)
    graph = tiny_workflow()
    with server.client() as http:
        info = http.get("/object_info/CLIPLoader").json()["CLIPLoader"]
        assert "chroma" in info["input"]["required"]["type"][0]
        answer = http.post("/prompt", json={"prompt": graph})
        assert answer.status_code == 200, answer.text
        prompt_id = answer.json()["prompt_id"]
        job = server.wait_job(prompt_id, timeout=120)
        assert job.status.value == "succeeded", job
        image = http.get(f"/history/{prompt_id}").json()[prompt_id]["outputs"]["9"]["images"][0]
        png = http.get("/view", params=image)
    assert png.status_code == 200
    assert Image.open(io.BytesIO(png.content)).size == (SIZE, SIZE)
