"""UI-format -> API prompt, held to what ComfyUI's frontend produced for the same workflows."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest

import comfyd.nodes  # noqa: F401  (registers comfyd's node schemas)
from comfyd.engine.errors import WorkflowParseError
from comfyd.engine.graph import parse_workflow
from comfyd.workflow_formats import api_prompt_from_ui, is_ui_workflow, ui_to_api
from comfyd.workflow_formats.layouts import layout_from_table

PAIRS = Path(__file__).parent / "pairs"
# Older frontends also sent the upload button's value under these names; ComfyUI ignores them
# and today's frontend leaves them out, as comfyd does.
UPLOAD_BUTTON_KEYS = {"upload", "choose file to upload"}
# Saved by a ComfyUI older than 0.3.64, whose layouts are assumed (see the tests below).
OLDER_PAIRS = {"inpaint_example", "sdxlturbo_example"}
EXACT_PAIRS = sorted(p.stem for p in PAIRS.glob("*.json") if p.stem not in OLDER_PAIRS)


def load(name: str) -> dict[str, Any]:
    return json.loads((PAIRS / f"{name}.json").read_text())


def comparable(prompt: dict[str, Any]) -> dict[str, Any]:
    return {
        node_id: {
            "class_type": node["class_type"],
            "inputs": {k: v for k, v in node["inputs"].items() if k not in UPLOAD_BUTTON_KEYS},
        }
        for node_id, node in prompt.items()
    }


def test_there_are_a_dozen_pairs_or_more() -> None:
    assert len(EXACT_PAIRS) >= 12


@pytest.mark.parametrize("name", EXACT_PAIRS)
def test_conversion_equals_the_frontends_prompt(name: str) -> None:
    pair = load(name)
    conversion = ui_to_api(pair["workflow"])
    assert conversion.unknown_nodes == []
    ours = comparable(conversion.prompt)
    # A widget the node gained after the picture was made (DualCFGGuider's required `style`) is
    # absent from that frontend's prompt; the conversion fills its default, as today's frontend
    # does on loading the file, and says so.
    for warning in conversion.warnings:
        filled = re.match(r"node (\S+) \(.*?\): widget '(\w+)' not saved", warning)
        if filled and filled.group(2) not in pair["prompt"].get(filled.group(1), {}).get("inputs", {}):
            ours[filled.group(1)]["inputs"].pop(filled.group(2))
    assert ours == comparable(pair["prompt"])


def test_conversion_is_pure() -> None:
    pair = load("sdxl_edit_model")
    before = copy.deepcopy(pair["workflow"])
    first = ui_to_api(pair["workflow"]).prompt
    assert pair["workflow"] == before
    assert ui_to_api(pair["workflow"]).prompt == first


def test_features_the_pairs_cover() -> None:
    """Each feature the issue lists is exercised by at least one pair above."""
    types = {name: [n["type"] for n in load(name)["workflow"]["nodes"]] for name in EXACT_PAIRS}
    modes = {name: {n.get("mode", 0) for n in load(name)["workflow"]["nodes"]} for name in EXACT_PAIRS}
    assert any("PrimitiveNode" in t for t in types.values())
    assert any("MarkdownNote" in t for t in types.values()) and any("Note" in t for t in types.values())
    assert any(2 in m for m in modes.values()) and any(4 in m for m in modes.values())
    assert any(any(x.startswith("workflow/") for x in t) for t in types.values())
    assert any(any(x.startswith("workflow>") for x in t) for t in types.values())
    assert any("UNETLoader" in t for t in types.values())  # a split-file (Flux) workflow
    # The very old lora.json stores KSampler's control_after_generate as a boolean.
    ksampler = next(n for n in load("lora")["workflow"]["nodes"] if n["type"] == "KSampler")
    assert isinstance(ksampler["widgets_values"][1], bool)


def test_muted_nodes_are_dropped_and_bypassed_nodes_pass_through() -> None:
    pair = load("fennec_girl_hug")
    prompt = ui_to_api(pair["workflow"]).prompt
    bypassed = [str(n["id"]) for n in pair["workflow"]["nodes"] if n.get("mode") == 4]
    assert bypassed and not set(bypassed) & set(prompt)
    muted = load("model_merging_basic")
    muted_ids = [str(n["id"]) for n in muted["workflow"]["nodes"] if n.get("mode") == 2]
    assert muted_ids and not set(muted_ids) & set(ui_to_api(muted["workflow"]).prompt)


def test_a_node_whose_widgets_changed_since_the_file_was_saved() -> None:
    """inpaint_example.json predates VAEEncodeForInpaint's grow_mask_by widget: ComfyUI 0.3.64's
    layout is assumed, so the missing value takes its default, as the frontend does on load."""
    pair = load("inpaint_example")
    prompt = ui_to_api(pair["workflow"]).prompt
    expected = comparable(pair["prompt"])
    expected["26"]["inputs"]["grow_mask_by"] = 6
    assert comparable(prompt) == expected


def test_older_sd_turbo_scheduler_gets_the_newer_denoise_default() -> None:
    """sdxlturbo_example.json predates SDTurboScheduler's denoise widget, which comfyd's node
    declares as ComfyUI 0.3.64 does: the missing value takes its default, as the frontend does on
    load; everything else equals the frontend's prompt."""
    pair = load("sdxlturbo_example")
    prompt = ui_to_api(pair["workflow"]).prompt
    expected = comparable(pair["prompt"])
    expected["22"]["inputs"]["denoise"] = 1.0
    assert comparable(prompt) == expected


def test_group_node_ids_are_outer_colon_inner() -> None:
    prompt = ui_to_api(load("sdxl_edit_model")["workflow"]).prompt
    assert {"37:0", "37:1", "37:3", "37:6", "37:7", "37:8"} <= set(prompt)
    assert "37" not in prompt and "37:2" not in prompt  # the group itself and its Reroute


def _subgraph_workflow() -> dict[str, Any]:
    """A two-level subgraph: outer node 10 wraps subgraph A, which wraps subgraph B."""
    inner_b = {
        "id": "sub-b", "name": "B",
        "inputs": [{"name": "latent", "type": "LATENT", "linkIds": [1]}, {"name": "amount", "type": "INT", "linkIds": [2]}],
        "outputs": [{"name": "LATENT", "type": "LATENT", "linkIds": [3]}],
        "nodes": [{"id": 5, "type": "RepeatLatentBatch", "mode": 0,
                   "inputs": [{"name": "samples", "type": "LATENT", "link": 1},
                              {"name": "amount", "type": "INT", "widget": {"name": "amount"}, "link": 2}],
                   "outputs": [{"name": "LATENT", "type": "LATENT", "links": [3]}], "widgets_values": [1]}],
        "links": [{"id": 1, "origin_id": -10, "origin_slot": 0, "target_id": 5, "target_slot": 0, "type": "LATENT"},
                  {"id": 2, "origin_id": -10, "origin_slot": 1, "target_id": 5, "target_slot": 1, "type": "INT"},
                  {"id": 3, "origin_id": 5, "origin_slot": 0, "target_id": -20, "target_slot": 0, "type": "LATENT"}],
    }
    inner_a = {
        "id": "sub-a", "name": "A",
        "inputs": [{"name": "latent", "type": "LATENT", "linkIds": [11]}],
        "outputs": [{"name": "LATENT", "type": "LATENT", "linkIds": [12]}],
        "nodes": [{"id": 7, "type": "sub-b", "mode": 0,
                   "inputs": [{"name": "latent", "type": "LATENT", "link": 11}],
                   "outputs": [{"name": "LATENT", "type": "LATENT", "links": [12]}], "widgets_values": [3]}],
        "links": [{"id": 11, "origin_id": -10, "origin_slot": 0, "target_id": 7, "target_slot": 0, "type": "LATENT"},
                  {"id": 12, "origin_id": 7, "origin_slot": 0, "target_id": -20, "target_slot": 0, "type": "LATENT"}],
    }
    return {
        "nodes": [
            {"id": 1, "type": "EmptyLatentImage", "inputs": [], "outputs": [{"name": "LATENT", "type": "LATENT", "links": [20]}],
             "widgets_values": [64, 64, 1]},
            {"id": 10, "type": "sub-a", "inputs": [{"name": "latent", "type": "LATENT", "link": 20}],
             "outputs": [{"name": "LATENT", "type": "LATENT", "links": [21]}]},
            {"id": 2, "type": "LatentUpscaleBy", "inputs": [{"name": "samples", "type": "LATENT", "link": 21}],
             "outputs": [{"name": "LATENT", "type": "LATENT", "links": []}], "widgets_values": ["nearest-exact", 1.5]},
            {"id": 3, "type": "Note", "widgets_values": ["a note"]},
        ],
        "links": [[20, 1, 0, 10, 0, "LATENT"], [21, 10, 0, 2, 0, "LATENT"]],
        "definitions": {"subgraphs": [inner_a, inner_b]},
    }


def test_nested_subgraphs_expand_with_path_ids_and_promoted_widgets() -> None:
    prompt = ui_to_api(_subgraph_workflow()).prompt
    assert set(prompt) == {"1", "10:7:5", "2"}
    assert prompt["10:7:5"]["inputs"] == {"amount": 3, "samples": ["1", 0]}
    assert prompt["2"]["inputs"] == {"upscale_method": "nearest-exact", "scale_by": 1.5, "samples": ["10:7:5", 0]}


def test_reroute_and_primitive() -> None:
    workflow = {
        "nodes": [
            {"id": 1, "type": "EmptyLatentImage", "inputs": [{"name": "width", "type": "INT", "widget": {"name": "width"}, "link": 5}],
             "outputs": [{"name": "LATENT", "type": "LATENT", "links": [6]}], "widgets_values": [64, 64, 1]},
            {"id": 2, "type": "PrimitiveNode", "outputs": [{"name": "INT", "type": "INT", "links": [5], "widget": {"name": "width"}}],
             "widgets_values": [128, "fixed"]},
            {"id": 3, "type": "Reroute", "inputs": [{"name": "", "type": "*", "link": 6}], "outputs": [{"name": "", "type": "*", "links": [7]}]},
            {"id": 4, "type": "LatentUpscaleBy", "inputs": [{"name": "samples", "type": "LATENT", "link": 7}],
             "outputs": [{"name": "LATENT", "type": "LATENT", "links": []}], "widgets_values": ["bilinear", 2]},
        ],
        "links": [[5, 2, 0, 1, 0, "INT"], [6, 1, 0, 3, 0, "*"], [7, 3, 0, 4, 0, "LATENT"]],
    }
    prompt = ui_to_api(workflow).prompt
    assert prompt["1"]["inputs"] == {"width": 128, "height": 64, "batch_size": 1}
    assert prompt["4"]["inputs"]["samples"] == ["1", 0]
    assert set(prompt) == {"1", "4"}


def test_unknown_node_names_class_and_pack() -> None:
    workflow = {"nodes": [{"id": 1, "type": "UltimateSDUpscale", "widgets_values": [2]},
                          {"id": 2, "type": "SomethingNobodyMade", "widgets_values": []}], "links": []}
    conversion = ui_to_api(workflow)
    assert [(u.class_type, u.pack) for u in conversion.unknown_nodes] == [
        ("UltimateSDUpscale", "ComfyUI_UltimateSDUpscale (ssitu/ComfyUI_UltimateSDUpscale)"),
        ("SomethingNobodyMade", None),
    ]
    with pytest.raises(WorkflowParseError) as info:
        api_prompt_from_ui(workflow)
    assert "UltimateSDUpscale" in info.value.message and "ssitu/ComfyUI_UltimateSDUpscale" in info.value.details


def test_parse_workflow_accepts_the_ui_shape_bare_and_wrapped() -> None:
    pair = load("hiresfix_latent_workflow")
    bare = parse_workflow(copy.deepcopy(pair["workflow"]))
    wrapped = parse_workflow({"prompt": copy.deepcopy(pair["workflow"]), "client_id": "c1"})
    assert comparable(bare.prompt) == comparable(pair["prompt"]) == comparable(wrapped.prompt)
    assert wrapped.client_id == "c1"
    # The UI graph travels on for saved PNGs, as ComfyUI's frontend sends it.
    assert bare.extra_data["extra_pnginfo"]["workflow"] == pair["workflow"]
    assert wrapped.extra_data["extra_pnginfo"]["workflow"] == pair["workflow"]


def test_broken_link_is_a_clear_error() -> None:
    workflow = {"nodes": [{"id": 1, "type": "VAEDecode", "inputs": [{"name": "vae", "type": "VAE", "link": 9}]}],
                "links": [[9, 42, 0, 1, 0, "VAE"]]}
    assert is_ui_workflow(workflow)
    with pytest.raises(WorkflowParseError) as info:
        parse_workflow(workflow)
    assert "node 42" in info.value.message


def test_layout_table_comes_from_comfyui_declarations() -> None:
    unet = layout_from_table("UNETLoader")
    assert unet is not None and [w.name for w in unet.widgets] == ["unet_name", "weight_dtype"]
    assert unet.model_folders == {"unet_name": "diffusion_models"}
    dual = layout_from_table("DualCLIPLoader")
    assert dual is not None and dual.model_folders == {"clip_name1": "text_encoders", "clip_name2": "text_encoders"}


@pytest.mark.parametrize(
    "workflow",
    [
        {"nodes": [{"id": 1, "type": 5}], "links": []},
        {"nodes": [{"id": 1, "type": "KSampler", "inputs": 3}], "links": []},
        {"nodes": [{"id": 1, "type": "KSampler", "widgets_values": "seed"}], "links": []},
        {"nodes": [{"id": 1, "type": "KSampler", "mode": "muted"}], "links": []},
        {"nodes": [{"id": 1, "type": "VAEDecode"}], "links": [[1, 2, "x", 1, 0, "VAE"]]},
        {"nodes": [{"id": 1, "type": "VAEDecode"}], "links": {"1": 2}},
        {"nodes": [{"id": 1, "type": "workflow/G"}], "links": [], "extra": {"groupNodes": {"G": {"nodes": 7}}}},
        {"nodes": [{"id": 1, "type": "sg"}], "links": [], "definitions": {"subgraphs": [{"id": "sg", "nodes": [3]}]}},
        {"nodes": [{"id": 1, "type": "Note"}], "links": []},
    ],
)
def test_malformed_ui_workflows_are_parse_errors(workflow: dict[str, Any]) -> None:
    with pytest.raises(WorkflowParseError):
        parse_workflow(workflow)


def test_mangled_real_workflows_never_crash() -> None:
    """Random damage to UI files (a group-node one ComfyUI saved, comfyd's subgraph template)
    gives a parse error or a prompt, never another exception."""
    import random

    rng = random.Random(7)
    sources = [load("sdxl_edit_model")["workflow"],
               json.loads((Path(__file__).parent / "templates" / "flux_fill_subgraph.json").read_text())]
    junk: list[Any] = [None, 1, -1, "x", [], {}, [1], {"a": 1}, True, [None] * 6]

    def mutate(obj: Any) -> None:
        if isinstance(obj, dict) and obj:
            key = rng.choice(list(obj))
            if rng.random() < 0.3:
                obj[key] = copy.deepcopy(rng.choice(junk))
            else:
                mutate(obj[key])
        elif isinstance(obj, list) and obj:
            index = rng.randrange(len(obj))
            if rng.random() < 0.3:
                obj[index] = copy.deepcopy(rng.choice(junk))
            else:
                mutate(obj[index])

    for n in range(300):
        workflow = copy.deepcopy(sources[n % 2])
        for _ in range(rng.randint(1, 4)):
            mutate(workflow)
        try:
            parse_workflow(workflow)
        except WorkflowParseError:
            pass


def test_group_node_widget_order_plain_first_then_converted() -> None:
    """A legacy group node's widgets: each inner node's plain widgets in node order, then the
    widgets converted to inputs (and not fed inside the group), as the frontend lays them out."""
    group = {
        "nodes": [
            {"index": 0, "type": "EmptyLatentImage", "widgets_values": [64, 64, 1],
             "inputs": [{"name": "width", "type": "INT", "widget": {"name": "width"}, "link": None}],
             "outputs": [{"name": "LATENT", "type": "LATENT", "links": []}]},
            {"index": 1, "type": "LatentUpscaleBy", "widgets_values": ["bilinear", 1.5],
             "inputs": [{"name": "samples", "type": "LATENT", "link": None}],
             "outputs": [{"name": "LATENT", "type": "LATENT", "links": []}]},
        ],
        "links": [[0, 0, 1, 0, 5, "LATENT"]],
        "external": [],
    }
    workflow = {
        "nodes": [{"id": 3, "type": "workflow/G", "inputs": [], "outputs": [{"name": "LATENT", "type": "LATENT", "links": []}],
                   "widgets_values": [48, 2, "nearest-exact", 2.0, 96]}],
        "links": [],
        "extra": {"groupNodes": {"G": group}},
    }
    prompt = ui_to_api(workflow).prompt
    # plain: height, batch_size (node 0), upscale_method, scale_by (node 1); then converted: width
    assert prompt["3:0"]["inputs"] == {"width": 96, "height": 48, "batch_size": 2}
    assert prompt["3:1"]["inputs"] == {"upscale_method": "nearest-exact", "scale_by": 2.0, "samples": ["3:0", 0]}


def test_widgets_listed_in_the_file_win_over_a_changed_layout() -> None:
    """A node saved (newer frontend format: every widget listed among its inputs) by a version
    whose node lacked a widget, or had one since removed: values follow the saved list."""
    node = {"id": 1, "type": "EmptyLatentImage", "outputs": [],
            "inputs": [{"name": "width", "type": "INT", "widget": {"name": "width"}, "link": None},
                       {"name": "gone", "type": "INT", "widget": {"name": "gone"}, "link": None},
                       {"name": "batch_size", "type": "INT", "widget": {"name": "batch_size"}, "link": None}],
            "widgets_values": [320, 7, 2]}
    prompt = ui_to_api({"nodes": [node], "links": []}).prompt
    assert prompt["1"]["inputs"] == {"width": 320, "batch_size": 2, "height": 512}  # height: its default


def test_a_required_combo_the_saved_node_predates_takes_its_first_choice() -> None:
    """A node saved before it had a widget: the frontend shows a required combo's first choice (and
    says nothing); the conversion does the same and warns. An optional one stays out."""
    workflow = {"nodes": [
        {"id": 1, "type": "DualCFGGuider", "inputs": [], "outputs": [], "widgets_values": [5, 2]},
        {"id": 2, "type": "DualCLIPLoader", "inputs": [], "outputs": [],
         "widgets_values": ["t5xxl.safetensors", "clip_l.safetensors", "flux"]},
    ], "links": []}  # fmt: skip
    conversion = ui_to_api(workflow)
    assert conversion.prompt["1"]["inputs"] == {"cfg_conds": 5, "cfg_cond2_negative": 2, "style": "regular"}
    assert "device" not in conversion.prompt["2"]["inputs"]
    assert any("node 1 (DualCFGGuider): widget 'style' not saved" in w for w in conversion.warnings)
