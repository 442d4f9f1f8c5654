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
# Choices that depend on the files present (models, input pictures), not on the declaration.
FILE_CHOICES = {"ckpt_name", "lora_name", "vae_name", "image", "unet_name", "clip_name", "clip_name1", "clip_name2"}
# Nodes comfyd has that ComfyUI 0.3.64 ships only as an example custom node.
NOT_IN_COMFYUI_CORE = {"SaveImageWebsocket"}
# "options" and "multiselect": ComfyUI's newer nodes declare a choice as ["COMBO", {"options": [...]}].
NUMBER_OPTIONS = ("default", "min", "max", "step", "round", "multiline", "tooltip", "options", "multiselect")


def test_every_comfyd_node_is_declared_by_comfyui() -> None:
    assert set(REGISTRY.names()) - NOT_IN_COMFYUI_CORE == set(COMFYUI)


@pytest.mark.parametrize("name", sorted(COMFYUI))
def test_declaration_matches_comfyui(name: str) -> None:
    theirs, ours = COMFYUI[name], REGISTRY.object_info()[name]
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
