"""`comfyd check`: what a workflow lacks, reported precisely, without running it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from comfyd.cli import main
from comfyd.models.header_probe import detect_family, read_header
from tests.check.conftest import write_safetensors

PAIRS = Path(__file__).parents[1] / "workflow_formats" / "pairs"
TEMPLATES = Path(__file__).parents[1] / "workflow_formats" / "templates"
REFERENCE_PNG = Path(__file__).parents[1] / "fidelity" / "references" / "cfg_1_euler.png"


def check_json(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, Any]]:
    code = main(["check", *args, "--json"])
    return code, json.loads(capsys.readouterr().out)


def pair_workflow(tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(json.loads((PAIRS / f"{name}.json").read_text())["workflow"]))
    return path


def test_flux_workflow_missing_pieces(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, report = check_json(capsys, str(pair_workflow(tmp_path, "flux_dev_example")), "--models-dir", str(tmp_path / "m"))
    # Every node of the example runs in comfyd: only the model files are missing (exit 3).
    assert code == 3 and report["ok"] is False and report["format"] == "ui"
    missing = {(m["node_id"], m["class_type"], m["input"], m["name"], m["folder"]) for m in report["missing_models"]}
    assert missing == {
        ("12", "UNETLoader", "unet_name", "flux1-dev.safetensors", "diffusion_models"),
        ("11", "DualCLIPLoader", "clip_name1", "t5xxl_fp16.safetensors", "text_encoders"),
        ("11", "DualCLIPLoader", "clip_name2", "clip_l.safetensors", "text_encoders"),
        ("10", "VAELoader", "vae_name", "ae.safetensors", "vae"),
    }
    assert all(m["expected_path"].startswith(str(tmp_path / "m")) for m in report["missing_models"])
    assert report["unknown_nodes"] == []  # UNETLoader, DualCLIPLoader, FluxGuidance, ... all run
    kinds = {e["kind"] for e in report["errors"]}
    assert kinds == {"missing_model"}
    assert set(report) >= {"ok", "format", "errors", "missing_models", "unknown_nodes", "estimate"}
    assert set(report["errors"][0]) == {"kind", "node_id", "class_type", "input", "message"}


def test_wan_workflow_missing_models(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, report = check_json(capsys, str(pair_workflow(tmp_path, "text_to_video_wan")), "--models-dir", str(tmp_path))
    # Every node of ComfyUI's Wan 2.1 example runs in comfyd: only the model files are missing.
    assert code == 3 and report["unknown_nodes"] == []
    assert {(m["name"], m["folder"]) for m in report["missing_models"]} == {
        ("wan2.1_t2v_1.3B_fp16.safetensors", "diffusion_models"),
        ("umt5_xxl_fp8_e4m3fn_scaled.safetensors", "text_encoders"),
        ("wan_2.1_vae.safetensors", "vae"),
    }
    assert report["estimate"]["work_mpixel_steps"] > 0 and report["estimate"]["complete"] is False


def test_flux_files_are_recognised_from_their_headers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    models = tmp_path / "models"
    write_safetensors(models / "unet" / "flux1-dev.safetensors",  # the old folder name works too
                      {"double_blocks.0.img_attn.qkv.weight": (6, 4), "single_blocks.0.linear1.weight": (4, 4)})
    write_safetensors(models / "text_encoders" / "t5xxl_fp16.safetensors",
                      {"encoder.block.0.layer.0.SelfAttention.q.weight": (4, 4), "shared.weight": (8, 4)})
    write_safetensors(models / "text_encoders" / "clip_l.safetensors",
                      {"text_model.encoder.layers.0.mlp.fc1.weight": (4, 4),
                       "text_model.embeddings.token_embedding.weight": (10, 768)})
    write_safetensors(models / "vae" / "ae.safetensors", {"decoder.conv_in.weight": (8, 16, 3, 3)})
    code, report = check_json(capsys, str(pair_workflow(tmp_path, "flux_dev_example")), "--models-dir", str(models))
    assert report["missing_models"] == []
    families = {Path(m["path"]).name: (m["family"], m["supported"]) for m in report["models"]}
    assert families == {
        "flux1-dev.safetensors": ("flux", True),
        "t5xxl_fp16.safetensors": ("t5", True),
        "clip_l.safetensors": ("clip_l", True),
        "ae.safetensors": ("flux_sd3_vae", True),
    }
    assert [e for e in report["errors"] if e["kind"] == "unsupported_family"] == []
    weights = sum(m["weight_bytes"] for m in report["models"])
    assert report["estimate"]["weight_bytes"] == weights == 2 * (24 + 16 + 16 + 32 + 16 + 7680 + 8 * 16 * 9)
    assert code == 0  # headers only: every file is of a family comfyd runs


def test_header_only_is_read(tmp_path: Path) -> None:
    path = tmp_path / "x.safetensors"
    write_safetensors(path, {"model.diffusion_model.input_blocks.0.0.weight": (4, 4)})
    with path.open("ab") as f:  # trailing bytes are never read
        f.write(b"\xff" * 1024)
    header = read_header(path)
    assert detect_family(header) == "sd1" and header.parameters == 16


def test_runnable_ui_workflow_is_ok(tiny_models: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tiny = next((tiny_models / "checkpoints").glob("*.safetensors")).name
    args = [str(TEMPLATES / "default.json"), "--models-dir", str(tiny_models), "--set", f"4.ckpt_name={tiny}"]
    code, report = check_json(capsys, *args)
    assert (code, report["ok"], report["errors"], report["format"]) == (0, True, [], "ui")
    estimate = report["estimate"]
    assert estimate["weight_bytes"] > 0 and estimate["complete"] is True
    assert estimate["work_mpixel_steps"] == pytest.approx(20 * 512 * 512 / 1e6, rel=1e-3)
    assert estimate["peak_device_bytes"] > estimate["weight_bytes"]
    code, report = check_json(capsys, *args, "--device-memory", "0.001")
    assert code == 2 and report["estimate"]["fits"] is False and report["errors"][0]["kind"] == "limit"


def test_only_missing_checkpoint_exits_3(tiny_models: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, report = check_json(capsys, str(TEMPLATES / "default.json"), "--models-dir", str(tiny_models))
    assert code == 3
    assert [e["kind"] for e in report["errors"]] == ["missing_model"]
    assert report["missing_models"][0]["name"] == "v1-5-pruned-emaonly-fp16.safetensors"
    # The template lists where ComfyUI gets it; `check --pull` would fetch it from there.
    assert report["missing_models"][0]["url"].startswith("https://huggingface.co/Comfy-Org/")


@pytest.mark.parametrize(
    ("override", "kind", "node", "input_name"),
    [("3.steps=0", "invalid_value", "3", "steps"), ("5.width=4096", "limit", "5", "width"),
     ("3.sampler_name=\"nope\"", "invalid_value", "3", "sampler_name")],
)
def test_validation_errors_have_kinds(tiny_models: Path, capsys: pytest.CaptureFixture[str], override: str,
                                      kind: str, node: str, input_name: str) -> None:
    tiny = next((tiny_models / "checkpoints").glob("*.safetensors")).name
    code, report = check_json(capsys, str(TEMPLATES / "default.json"), "--models-dir", str(tiny_models),
                              "--set", f"4.ckpt_name={tiny}", "--set", override)
    assert code == 2
    assert [(e["kind"], e["node_id"], e["input"]) for e in report["errors"]] == [(kind, node, input_name)]


def test_missing_input(tiny_models: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from comfyd.runner import default_workflow

    workflow = default_workflow()
    del workflow["3"]["inputs"]["model"]
    path = tmp_path / "w.json"
    path.write_text(json.dumps(workflow))
    code, report = check_json(capsys, str(path), "--models-dir", str(tiny_models))
    assert code == 2 and report["format"] == "api"
    assert ("missing_input", "3", "model") in {(e["kind"], e["node_id"], e["input"]) for e in report["errors"]}


def test_run_dry_run_is_check(tiny_models: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["run", str(TEMPLATES / "default.json"), "--dry-run", "--json", "--models-dir", str(tiny_models)])
    report = json.loads(capsys.readouterr().out)
    assert code == 3 and report["missing_models"][0]["folder"] == "checkpoints"


def test_human_output(tiny_models: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["check", str(TEMPLATES / "default.json"), "--models-dir", str(tiny_models)])
    out = capsys.readouterr().out
    assert code == 3 and "missing_model: node 4 (CheckpointLoaderSimple)" in out and "runnable once" in out


def test_png_check(tiny_models: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, report = check_json(capsys, str(REFERENCE_PNG), "--models-dir", str(tiny_models))
    assert report["format"] == "png:prompt" and code == 3
    assert report["missing_models"][0]["name"] == "comfyd-parity-sd1.safetensors"


@pytest.mark.parametrize(
    ("shapes", "family"),
    [
        ({"model.diffusion_model.input_blocks.0.0.weight": (4, 4), "conditioner.embedders.1.model.ln_final.weight": (4,)}, "sdxl"),
        ({"model.diffusion_model.input_blocks.0.0.weight": (4, 4),
          "cond_stage_model.model.transformer.resblocks.0.ln_1.weight": (4,)}, "sd2"),
        ({"model.diffusion_model.joint_blocks.0.context_block.attn.qkv.weight": (6, 4)}, "sd3"),
        ({"model.diffusion_model.joint_blocks.0.context_block.attn.qkv.weight": (6, 4),
          **{f"text_encoders.t5xxl.transformer.encoder.block.{i}.layer.0.SelfAttention.q.weight": (4, 4) for i in range(3)}},
         "sd3"),
        ({"patch_embedding.weight": (4, 4, 1, 2, 2), "blocks.0.self_attn.q.weight": (4, 4)}, "wan"),
        ({"double_blocks.0.img_attn.qkv.weight": (6, 4), "txt_in.individual_token_refiner.blocks.0.norm1.weight": (4,)},
         "hunyuan_video"),
        ({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": (4, 4)}, "lora"),
        ({"lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight": (4, 4)}, "flux_lora"),
        ({"decoder.conv_in.weight": (8, 4, 3, 3)}, "sd_vae"),
        ({"decoder.middle.0.residual.0.gamma": (4,)}, "wan_vae"),
        ({"double_blocks.0.img_attn.qkv.weight": (6, 4), "single_stream_modulation.lin.weight": (12, 4)}, "flux2"),
        ({"decoder.conv_in.weight": (8, 32, 3, 3), "bn.running_mean": (128,)}, "flux2_vae"),
        ({"model.embed_tokens.weight": (131072, 2), "model.layers.0.self_attn.q_proj.weight": (2, 2)},
         "mistral3_text_encoder"),
        ({"language_model.model.embed_tokens.weight": (131072, 2),
          "language_model.model.layers.0.self_attn.q_proj.weight": (2, 2)}, "mistral3_text_encoder"),
        ({"model.embed_tokens.weight": (128256, 2), "model.layers.0.self_attn.q_proj.weight": (2, 2)},
         "llama_text_encoder"),
        ({"something.else": (1,)}, "unknown"),
    ],
)
def test_family_from_header(tmp_path: Path, shapes: dict[str, tuple[int, ...]], family: str) -> None:
    path = tmp_path / "f.safetensors"
    write_safetensors(path, shapes)
    assert detect_family(read_header(path)) == family


def test_a_file_that_is_not_safetensors_is_reported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    models = tmp_path / "models"
    (models / "vae").mkdir(parents=True)
    (models / "vae" / "ae.safetensors").write_bytes(b"\xff" * 64)
    code, report = check_json(capsys, str(pair_workflow(tmp_path, "flux_dev_example")), "--models-dir", str(models))
    assert code == 2
    assert any(e["kind"] == "invalid_value" and e["node_id"] == "10" and "header" in e["message"] for e in report["errors"])


def test_set_on_a_ui_workflow(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = str(pair_workflow(tmp_path, "flux_dev_example"))
    code, report = check_json(capsys, path, "--models-dir", str(tmp_path), "--set", '12.unet_name="flux1-schnell.safetensors"')
    assert code == 3
    assert "flux1-schnell.safetensors" in {m["name"] for m in report["missing_models"]}
    code, report = check_json(capsys, path, "--set", "99.x=1")
    assert code == 2 and "no node '99'" in report["errors"][0]["message"]


def test_custom_nodes_named_by_the_settings_are_known_to_check(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    packs = Path(__file__).parents[1] / "compat" / "fixtures" / "custom_nodes"  # the compat tests' packs
    workflow = tmp_path / "wf.json"
    workflow.write_text(json.dumps({"1": {"class_type": "TestTextJoin", "inputs": {"a": "x", "b": "y"}},
                                    "2": {"class_type": "TestShowText", "inputs": {"text": ["1", 0]}}}))
    code, without = check_json(capsys, str(workflow), "--models-dir", str(tmp_path / "m"))
    assert code == 2 and {e["class_type"] for e in without["unknown_nodes"]} == {"TestTextJoin", "TestShowText"}
    monkeypatch.setenv("COMFYD_CUSTOM_NODES_DIRS", str(packs))
    code, with_pack = check_json(capsys, str(workflow), "--models-dir", str(tmp_path / "m"))
    assert with_pack["unknown_nodes"] == [] and with_pack["errors"] == [], with_pack
    assert code == 0


def test_a_missing_upscale_model_is_reported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    workflow = Path(__file__).parents[1] / "fidelity" / "workflows" / "upscale_model_one_tile.json"
    code, report = check_json(capsys, str(workflow), "--models-dir", str(tmp_path))
    assert code != 0
    assert [(m["class_type"], m["input"], m["name"], m["folder"]) for m in report["missing_models"]] == [
        ("UpscaleModelLoader", "model_name", "comfyd-parity-esrgan-x2.safetensors", "upscale_models"),
    ]
