"""comfyd's /object_info against ComfyUI's own declarations of the same nodes.

`comfyui_input_types.json` was written by ComfyUI 0.3.64 (bench/comfyui_render.py --input-types):
per node, its INPUT_TYPES(), RETURN_TYPES, RETURN_NAMES and CATEGORY. Clients build their forms
and validate from these, and ComfyUI's validation errors quote them, so comfyd must declare the
same inputs in the same order, with the same types, defaults and bounds.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import comfyd.nodes  # noqa: F401  (registers the nodes)
from comfyd.engine.schema import REGISTRY
from comfyd.sampling.samplers import SAMPLER_NAMES

HERE = Path(__file__).resolve().parent
COMFYUI: dict[str, Any] = json.loads((HERE / "comfyui_input_types.json").read_text())["nodes"]
# VideoHelperSuite's declarations of the VHS nodes comfyd runs, written by ComfyUI with the VHS pack
# loaded (bench/comfyui_render.py --custom-node ... --input-types).
VHS: dict[str, Any] = json.loads((HERE / "vhs_input_types.json").read_text(encoding="utf-8"))["nodes"]
# The ComfyUI-GGUF pack's loaders (commit 795e451), dumped the same way.
GGUF: dict[str, Any] = json.loads((HERE / "gguf_input_types.json").read_text(encoding="utf-8"))["nodes"]
# Flux.2's nodes (newer ComfyUI than 0.3.64), written by hand from ComfyUI's source: see that file.
FLUX2: dict[str, Any] = json.loads((HERE / "flux2_input_types.json").read_text(encoding="utf-8"))["nodes"]
# Choices newer ComfyUI appends to 0.3.64's lists (CLIPLoader's flux2), from the same file.
EXTENDED_CHOICES: dict[str, list[str]] = json.loads(
    (HERE / "flux2_input_types.json").read_text(encoding="utf-8")
)["extended_choices"]
# Choices that depend on the files present (models, input pictures, videos), not on the declaration.
FILE_CHOICES = {"ckpt_name", "lora_name", "vae_name", "image", "file", "audio", "video", "hypernetwork_name", "control_net_name",
                "clip_name", "style_model_name",
                "unet_name", "clip_name1", "clip_name2", "clip_name3", "clip_name4"}
# Choices of which comfyd offers a subset: VHS's formats depend on the encoders it finds.
SUBSET_CHOICES = {("VHS_VideoCombine", "format")}
# Nodes comfyd has that ComfyUI 0.3.64 ships only as an example custom node, and custom-node
# pack nodes comfyd implements itself.
NOT_IN_COMFYUI_CORE = {"SaveImageWebsocket", *VHS, *GGUF, *FLUX2}
# "options" and "multiselect": ComfyUI's newer nodes declare a choice as ["COMBO", {"options": [...]}].
NUMBER_OPTIONS = ("default", "min", "max", "step", "round", "multiline", "tooltip", "options", "multiselect",
                  "disable")


def test_every_comfyd_node_is_declared_by_comfyui() -> None:
    assert set(REGISTRY.names()) - NOT_IN_COMFYUI_CORE == set(COMFYUI)


@pytest.mark.parametrize("name", sorted(COMFYUI))
def test_declaration_matches_comfyui(name: str) -> None:
    assert_same_declaration(name, COMFYUI[name])


@pytest.mark.parametrize("name", sorted(VHS))
def test_declaration_matches_videohelpersuite(name: str) -> None:
    assert_same_declaration(name, VHS[name])


@pytest.mark.parametrize("name", sorted(GGUF))
def test_declaration_matches_comfyui_gguf(name: str) -> None:
    assert_same_declaration(name, GGUF[name])


@pytest.mark.parametrize("name", sorted(FLUX2))
def test_declaration_matches_comfyui_flux2(name: str) -> None:
    assert_same_declaration(name, FLUX2[name])


def assert_same_declaration(name: str, theirs: dict[str, Any]) -> None:
    ours = REGISTRY.object_info()[name]
    assert ours["output"] == theirs["output"]
    assert ours["output_name"] == theirs["output_name"]
    assert ours["category"] == theirs["category"]
    for section in ("required", "optional"):
        their_inputs = theirs["input"].get(section, {})
        our_inputs = ours["input"].get(section, {})
        assert list(our_inputs) == list(their_inputs), f"{section} inputs of {name}"
        for input_name, their_spec in their_inputs.items():
            our_spec = our_inputs[input_name]
            their_type, our_type = their_spec[0], our_spec[0]
            their_options = their_spec[1] if len(their_spec) > 1 else {}
            our_options = our_spec[1] if len(our_spec) > 1 else {}
            where = f"{name}.{input_name}"
            if isinstance(their_type, list):
                assert isinstance(our_type, list), f"{where} should be a choice"
                if input_name in FILE_CHOICES:
                    continue
                their_type = their_type + EXTENDED_CHOICES.get(f"{name}.{input_name}", [])
                if (name, input_name) in SUBSET_CHOICES:
                    assert our_type and set(our_type) <= set(their_type), where
                    continue
                if input_name == "sampler_name":
                    # Every sampler ComfyUI offers, in its order.
                    assert our_type == their_type == SAMPLER_NAMES, where
                    continue
                assert our_type == their_type, where
                continue
            assert our_type == their_type, where
            for option in NUMBER_OPTIONS:
                if option in their_options and option != "tooltip":
                    assert our_options.get(option) == their_options[option], f"{where} {option}"


def test_vhs_format_options_are_vhs_own() -> None:
    """The per-format widgets VHS's frontend draws (its `formats` option), for each format comfyd offers."""
    theirs = VHS["VHS_VideoCombine"]["input"]["required"]["format"][1]["formats"]
    ours = REGISTRY.object_info()["VHS_VideoCombine"]["input"]["required"]["format"][1]["formats"]
    assert ours == {name: theirs[name] for name in ours}
    load_theirs = VHS["VHS_LoadVideo"]["input"]["optional"]["format"][1]["formats"]
    load_ours = REGISTRY.object_info()["VHS_LoadVideo"]["input"]["optional"]["format"][1]["formats"]
    assert json.loads(json.dumps(load_ours)) == load_theirs
