"""Loading ComfyUI-style packs and comfyd plugins, and running their nodes in workflows."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from comfyd.compat import unavailable_nodes
from comfyd.compat.loader import node_registry, reports
from comfyd.engine.cache import NodeCache
from comfyd.engine.context import NodeEnvironment
from comfyd.engine.errors import WorkflowValidationError
from comfyd.engine.executor import Executor
from comfyd.engine.graph import parse_workflow
from comfyd.engine.schema import REGISTRY
from comfyd.engine.validate import validate_workflow
from comfyd.settings import Settings


def _report(name: str) -> Any:
    return next(r for r in reports() if r.name == name)


def _run(settings: Settings, prompt: dict[str, Any]) -> Any:
    registry = node_registry(settings)
    env = NodeEnvironment(settings)
    events: list[tuple[str, dict[str, Any]]] = []
    result = Executor(registry, env, cache=NodeCache(max_bytes=10**8)).execute(
        parse_workflow({"prompt": prompt}), job_id="job", listener=lambda e, d: events.append((e, d))
    )
    return result, events


def test_plain_import_installs_no_comfyui_names() -> None:
    code = (
        "import sys, comfyd, comfyd.compat, comfyd.runtime, comfyd.settings;"
        "print(sorted(n for n in ('folder_paths','nodes','server','comfy','node_helpers') if n in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_packs_load_broken_pack_is_reported_and_skipped(settings: Settings) -> None:
    registry = node_registry(settings)
    pack = _report("comfyd_test_pack")
    assert pack.loaded and pack.kind == "comfyui" and pack.error is None
    assert {"TestImageBrighten", "TestTextJoin", "TestShowText", "TestSplitWords", "TestJoinList"} <= set(
        pack.nodes
    )
    assert pack.missing_requirements == ["this-package-does-not-exist-anywhere>=1.0"]  # torch is installed
    assert pack.web_directory is not None and pack.web_directory.endswith("js")
    broken = _report("broken_pack")
    assert not broken.loaded and "this_module_does_not_exist" in (broken.error or "")
    plugin = _report("comfyd_plugin_folder")
    assert plugin.loaded and plugin.kind == "plugin" and plugin.nodes == ["PluginImageGain"]
    for name in ("TestImageBrighten", "TestModelTweak", "PluginImageGain"):
        assert name in registry
    # The global registry keeps comfyd's own nodes only.
    assert not any(n.startswith(("Test", "Plugin")) for n in REGISTRY.names())


def test_unavailable_nodes_have_reasons_in_object_info(settings: Settings) -> None:
    registry = node_registry(settings)
    missing = unavailable_nodes()
    assert "MODEL" in missing["TestModelTweak"] and "ModelPatcher" in missing["TestModelTweak"]
    assert "comfy.sd" in missing["TestCheckpointPeek"]
    assert "V3 schema node" in missing["TestV3"] and "TestV3" not in registry
    info = registry.object_info(None)
    assert info["TestModelTweak"]["comfyd_unavailable"] == missing["TestModelTweak"]
    assert "comfyd_unavailable" not in info["TestImageBrighten"]
    brighten = info["TestImageBrighten"]
    assert brighten["display_name"] == "Brighten (test)"
    assert brighten["python_module"] == "custom_nodes.comfyd_test_pack"
    assert brighten["input"]["required"]["amount"] == [
        "FLOAT",
        {"default": 0.1, "min": -1.0, "max": 1.0, "step": 0.01},
    ]
    assert brighten["input_order"] == {"required": ["image", "amount"], "optional": ["mask"]}
    assert info["TestShowText"]["output_node"] is True
    assert info["TestSplitWords"]["output_is_list"] == [True]
    assert info["TestMaskFromImage"]["output_name"] == ["mask", "preview"]
    assert info["TestAnyPassthrough"]["input"]["required"]["value"] == ["*", {}]  # comfy_types.IO


def test_validation_uses_validate_inputs_and_refuses_unavailable(settings: Settings) -> None:
    registry = node_registry(settings)
    env = NodeEnvironment(settings)
    show = {"class_type": "TestShowText", "inputs": {"text": ["1", 0]}}
    ok = {"1": {"class_type": "TestCheckedFile", "inputs": {"name": "a.txt", "repeat": 2}}, "2": show}
    assert validate_workflow(parse_workflow({"prompt": ok}), registry, env) == ["2"]

    bad = {"1": {"class_type": "TestCheckedFile", "inputs": {"name": "a.txt", "repeat": 3}}, "2": show}
    with pytest.raises(WorkflowValidationError) as err:
        validate_workflow(parse_workflow({"prompt": bad}), registry, env)
    error = err.value.body["node_errors"]["1"]["errors"][0]
    assert error["type"] == "custom_validation_failed" and "repeat is at most 2" in error["details"]

    unavailable = {
        "1": {"class_type": "TestModelTweak", "inputs": {"model": ["3", 0], "scale": 1.0}},
        "3": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "x.safetensors"}},
        "10": {"class_type": "TestShowText", "inputs": {"text": ["11", 0]}},
        "11": {"class_type": "TestCheckpointPeek", "inputs": {"name": "x"}},
    }
    with pytest.raises(WorkflowValidationError) as err:
        validate_workflow(parse_workflow({"prompt": unavailable}), registry, env)
    assert "comfy.sd" in err.value.body["node_errors"]["11"]["errors"][0]["details"]


def test_pack_nodes_run_with_builtin_nodes_and_comfyui_layouts(settings: Settings) -> None:
    prompt = {
        "1": {"class_type": "TestRandomNoiseImage", "inputs": {"width": 16, "height": 8}},
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},  # comfyd's own node
        "3": {"class_type": "TestMaskFromImage", "inputs": {"image": ["2", 0], "channel": "green"}},
        "4": {
            "class_type": "TestImageBrighten",
            "inputs": {"image": ["2", 0], "amount": 0.25, "mask": ["3", 0]},
        },
        "5": {"class_type": "PluginImageGain", "inputs": {"image": ["4", 0], "gain": 0.5}},
        "6": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 32, "batch_size": 1}},
        "7": {"class_type": "TestLatentScale", "inputs": {"samples": ["6", 0], "width": 32}},
        "8": {"class_type": "SaveImage", "inputs": {"images": ["5", 0], "filename_prefix": "pack"}},
        "9": {"class_type": "TestShowText", "inputs": {"text": ["10", 0]}},
        "10": {"class_type": "TestTextJoin", "inputs": {"a": "latent", "b": "ok"}},
        "11": {
            "class_type": "LatentUpscaleBy",
            "inputs": {"samples": ["7", 0], "upscale_method": "nearest-exact", "scale_by": 2.0},
        },
    }
    result, events = _run(settings, prompt)
    assert result.status == "success", result.error
    out = Path(settings.output_dir)
    # (the dot files are SaveImage's name ledger, comfyd.nodes.image.output_names)
    assert [p.name for p in out.iterdir() if not p.name.startswith(".")] == ["pack_00001_.png"]
    assert result.outputs["9"]["text"] == ["latent ok"]
    assert result.outputs["9"]["seen_id"] == ["9"] and result.outputs["9"]["prompt_has_me"] == [True]
    progress = [d for e, d in events if e == "progress" and d["node"] == "4"]
    assert [(p["value"], p["max"]) for p in progress] == [(1, 2), (2, 2)]
    assert ("test_pack.shown", {"node": "9", "text": "latent ok"}) in events


def test_values_keep_comfyui_layouts_between_pack_and_builtin_nodes(settings: Settings) -> None:
    registry = node_registry(settings)
    from comfyd.engine.context import NodeContext

    ctx = NodeContext(env=NodeEnvironment(settings), job_id="j", node_id="1", class_type="x")
    image = torch.rand(2, 8, 12, 3)
    (mask, preview) = registry.get("TestMaskFromImage")().run(ctx, image=image, channel="red").values
    assert mask.shape == (2, 8, 12) and preview.shape == (2, 8, 12, 3)
    (inverted,) = registry.get("ImageInvert")().run(ctx, image=preview)
    assert torch.allclose(inverted, 1.0 - preview)
    (latent,) = registry.get("EmptyLatentImage")().run(ctx, width=64, height=32, batch_size=1)
    (scaled,) = registry.get("TestLatentScale")().run(ctx, samples=latent, width=32).values
    assert scaled["samples"].shape == (1, 4, 2, 4)


def test_list_outputs_map_and_input_is_list(settings: Settings) -> None:
    prompt = {
        "1": {"class_type": "TestSplitWords", "inputs": {"text": "a b c"}},
        "2": {"class_type": "TestShout", "inputs": {"text": ["1", 0]}},  # runs once per word
        "3": {"class_type": "TestJoinList", "inputs": {"text": ["2", 0], "sep": "+"}},  # gets the list
        "4": {"class_type": "TestShowText", "inputs": {"text": ["3", 0]}},
        "5": {"class_type": "TestShowText", "inputs": {"text": ["2", 0]}},  # output node mapped over the list
    }
    result, _ = _run(settings, prompt)
    assert result.status == "success", result.error
    assert result.outputs["4"]["text"] == ["A!+B!+C!"]
    assert result.outputs["5"]["text"] == ["A!", "B!", "C!"]


def test_is_changed_nan_reruns_and_plain_nodes_cache(settings: Settings) -> None:
    registry = node_registry(settings)
    env = NodeEnvironment(settings)
    executor = Executor(registry, env, cache=NodeCache(max_bytes=10**8))
    prompt = {
        "1": {"class_type": "TestRandomNoiseImage", "inputs": {"width": 4, "height": 4}},
        "2": {"class_type": "TestTextJoin", "inputs": {"a": "x", "b": "y"}},
        "3": {"class_type": "TestShowText", "inputs": {"text": ["2", 0]}},
        "4": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}},
    }
    executor.execute(parse_workflow({"prompt": prompt}), job_id="a")
    second = executor.execute(parse_workflow({"prompt": prompt}), job_id="b")
    assert "2" in second.cached  # no IS_CHANGED: cached like any node
    assert "1" not in second.cached  # IS_CHANGED returns NaN: always runs, as in ComfyUI


def test_unavailable_node_fails_clearly_when_run_directly(settings: Settings) -> None:
    registry = node_registry(settings)
    from comfyd.compat.aliases import NotProvided
    from comfyd.engine.context import NodeContext

    ctx = NodeContext(env=NodeEnvironment(settings), job_id="j", node_id="1", class_type="TestCheckpointPeek")
    with pytest.raises(NotProvided, match="comfy.sd"):
        registry.get("TestCheckpointPeek")().run(ctx, name="x")


def test_folder_paths_follows_settings(settings: Settings, tmp_path: Path) -> None:
    node_registry(settings)
    import folder_paths  # installed by the loader

    (Path(settings.models_dir) / "checkpoints" / "sub").mkdir(parents=True)
    (Path(settings.models_dir) / "checkpoints" / "sub" / "m.safetensors").write_bytes(b"")
    assert folder_paths.get_output_directory() == str(Path(settings.output_dir).absolute())
    assert folder_paths.get_filename_list("checkpoints") == ["sub/m.safetensors"]
    assert folder_paths.get_full_path("checkpoints", "../checkpoints/sub/m.safetensors") is None
    folder, name, counter, sub, _ = folder_paths.get_save_image_path(
        "a/b", folder_paths.get_output_directory()
    )
    assert (name, counter, sub) == ("b", 1, "a")
    with pytest.raises(ValueError):
        folder_paths.get_save_image_path("../escape", folder_paths.get_output_directory())


def test_entry_point_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An installed distribution (a dist-info with an entry point, as pip writes it) adds nodes."""
    site = tmp_path / "site"
    (site / "tiny_plugin").mkdir(parents=True)
    (site / "tiny_plugin" / "__init__.py").write_text(
        "from comfyd.plugin import Int, Node, NodeOutput, NodeSchema, OutputSpec\n"
        "class AddTen(Node):\n"
        "    schema = NodeSchema(class_type='TinyAddTen', inputs=(Int('x', 1, min=0, max=100),),\n"
        "                        outputs=(OutputSpec('INT'),), category='tiny', output_node=True)\n"
        "    def run(self, ctx, x):\n"
        "        return NodeOutput((x + 10,), ui={'value': [x + 10]})\n"
        "COMFYD_NODES = [AddTen]\n"
    )
    dist = site / "tiny_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: tiny-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[comfyd.nodes]\ntiny = tiny_plugin\n")
    monkeypatch.syspath_prepend(str(site))
    from tests.compat.conftest import pack_settings

    settings = pack_settings(tmp_path, custom_nodes_dirs=[], load_plugins=True)
    registry = node_registry(settings)
    assert "TinyAddTen" in registry and "TinyAddTen" not in REGISTRY
    env = NodeEnvironment(settings)
    prompt = {"1": {"class_type": "TinyAddTen", "inputs": {"x": 5}}}
    result = Executor(registry, env).execute(parse_workflow({"prompt": prompt}), job_id="t")
    assert result.status == "success", result.error
    assert result.values["1"] == (15,) and result.outputs["1"] == {"value": [15]}
    assert next(r for r in reports() if r.name == "tiny").kind == "entry_point"


def test_unavailable_nodes_loads_what_settings_name(settings: Settings) -> None:
    """The entry point for `comfyd check`: settings in, {class: reason} out."""
    missing = unavailable_nodes(settings)
    assert "ModelPatcher" in missing["TestModelTweak"] and "TestImageBrighten" not in missing
