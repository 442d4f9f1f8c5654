"""Write the UI-format workflows in templates/: comfyd's own test data, built from comfyd's data.

    PYTHONPATH=. python tests/workflow_formats/make_templates.py

- `default.json`: the default text-to-image graph comfyd ships (comfyd/workflows/default_api.json)
  laid out as the frontend saves it, in the old style: the seed's control value stored as a
  boolean, SaveImage without `widgets_values`, and a `properties.models` download link on the
  checkpoint loader.
- `flux_fill_subgraph.json`: a Flux Fill inpainting graph in the newer style: a subgraph
  ("Grow and Blur Mask", under `definitions.subgraphs`, links as objects) whose two widgets feed
  inner widget inputs, loaders with `properties.models` entries, an optional LoRA left bypassed,
  a whole outpainting branch bypassed (mode 4), Markdown notes and groups.

Widget order, link inputs and outputs of each node come from the layouts comfyd converts with
(its node schemas, then the shipped ComfyUI 0.3.64 table written by bench/comfyui_widget_layouts.py),
so a file and the converter agree by construction; the tests check what the conversion gives.
test_templates_and_images.py checks that the stored files are this script's output.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import comfyd.nodes  # noqa: F401  (registers comfyd's node schemas)
from comfyd.workflow_formats.layouts import LayoutLookup, registry_layouts

TEMPLATES = Path(__file__).parent / "templates"
NAMESPACE = uuid.UUID("6f1c2a52-7d8e-4b0a-9c3e-2f4d5a6b7c8d")  # stable ids across regenerations
NOTE_TYPES = frozenset({"Note", "MarkdownNote"})

SD15_FP16 = "v1-5-pruned-emaonly-fp16.safetensors"
SD15_URL = f"https://huggingface.co/Comfy-Org/stable-diffusion-v1-5-archive/resolve/main/{SD15_FP16}?download=true"
FLUX_FILL = "flux1-fill-dev.safetensors"
FLUX_FILL_REPO = "https://huggingface.co/black-forest-labs/FLUX.1-Fill-dev/resolve/main"
TEXT_ENCODERS_REPO = "https://huggingface.co/comfyanonymous/flux_text_encoders/resolve/main"


def _stable_id(name: str) -> str:
    return str(uuid.uuid5(NAMESPACE, name))


def _model(name: str, url: str, directory: str) -> dict[str, str]:
    return {"name": name, "url": url, "directory": directory}


@dataclass
class _Node:
    id: int
    type: str
    values: list[Any] | None
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    mode: int
    properties: dict[str, Any]
    title: str | None


@dataclass
class GraphBuilder:
    """Collects nodes and links and writes them the way the frontend saves a graph."""

    layouts: LayoutLookup
    next_link: list[int]  # shared with nested subgraphs: link ids are unique across the file
    object_links: bool = False  # subgraph definitions (and format 1) store links as objects
    localized: bool = False  # newer frontends add localized_name to every slot
    nodes: list[_Node] = field(default_factory=list)
    links: list[tuple[int, int, int, int, int, str]] = field(default_factory=list)

    def node(self, node_id: int, node_type: str, values: dict[str, Any] | None = None,
             links: dict[str, tuple[int, int]] | None = None, *, mode: int = 0, control: Any = "randomize",
             upload: str = "image", models: list[dict[str, str]] | None = None, store_values: bool = True,
             output_names: tuple[str, ...] = (), title: str | None = None) -> None:
        """Add a node. `values` by widget name (each widget needs one unless it has a default);
        `links` by input name -> (origin node, slot); a widget named there becomes a widget
        input fed by that link, as the frontend writes it."""
        values = values or {}
        links = links or {}
        layout = self.layouts(node_type)
        if layout is None:
            raise KeyError(f"no layout for {node_type}")
        stored: list[Any] = []
        for widget in layout.widgets:
            value = values.get(widget.name, widget.default)
            if value is None:
                raise KeyError(f"{node_type}: no value for widget {widget.name}")
            stored.append(value)
            if widget.control:
                stored.append(control)
            if widget.upload:
                stored.append(upload)
        unknown = set(values) - {w.name for w in layout.widgets}
        unknown |= set(links) - {n for n, _ in layout.links} - {w.name for w in layout.widgets}
        if unknown:
            raise KeyError(f"{node_type}: no inputs named {sorted(unknown)}")
        inputs = [self._input(node_id, slot, name, kind, links.get(name), None)
                  for slot, (name, kind) in enumerate(layout.links)]
        for widget in layout.widgets:
            if widget.name in links:
                inputs.append(self._input(node_id, len(inputs), widget.name, widget.type, links[widget.name], widget.name))
        outputs = []
        for slot, kind in enumerate(layout.outputs):
            name = output_names[slot] if slot < len(output_names) else kind
            outputs.append({**self._localized(name), "name": name, "type": kind, "links": []})
        properties: dict[str, Any] = {"Node name for S&R": node_type}
        if models:
            properties["models"] = models
        self.nodes.append(_Node(node_id, node_type, stored if store_values else None, inputs, outputs, mode,
                                properties, title))

    def subgraph_node(self, node_id: int, subgraph: dict[str, Any], widgets: dict[str, Any],
                      links: dict[str, tuple[int, int]]) -> None:
        """The node that stands for a subgraph: its type is the definition's id; its widgets are
        the subgraph's inputs that no link feeds, in order."""
        inputs = []
        values = []
        for slot_input in subgraph["inputs"]:
            name = slot_input["name"]
            if name in links:
                inputs.append(self._input(node_id, len(inputs), name, slot_input["type"], links[name], None))
            else:
                values.append(widgets[name])
        outputs = [{**self._localized(o["name"]), "name": o["name"], "type": o["type"], "links": []}
                   for o in subgraph["outputs"]]
        self.nodes.append(_Node(node_id, subgraph["id"], values, inputs, outputs, 0, {}, None))

    def note(self, node_id: int, text: str, node_type: str = "MarkdownNote") -> None:
        self.nodes.append(_Node(node_id, node_type, [text], [], [], 0, {}, None))

    def _localized(self, name: str) -> dict[str, str]:
        return {"localized_name": name} if self.localized else {}

    def _input(self, node_id: int, slot: int, name: str, kind: str, origin: tuple[int, int] | None,
               widget: str | None) -> dict[str, Any]:
        entry: dict[str, Any] = {**self._localized(name), "name": name, "type": kind}
        if widget:
            entry["widget"] = {"name": widget}
        entry["link"] = None
        if origin is not None:
            link_id = self.next_link[0]
            self.next_link[0] += 1
            self.links.append((link_id, origin[0], origin[1], node_id, slot, kind))
            entry["link"] = link_id
        return entry

    def _order(self) -> dict[int, int]:
        """Execution order as the frontend stores it: a topological order, sources first."""
        remaining = {n.id for n in self.nodes}
        feeds = {n.id: {lk[1] for lk in self.links if lk[3] == n.id and lk[1] in remaining} for n in self.nodes}
        order: dict[int, int] = {}
        while remaining:
            ready = sorted(i for i in remaining if not feeds[i] & remaining)
            for node_id in ready:
                order[node_id] = len(order)
            remaining -= set(ready)
        return order

    def _depths(self) -> dict[int, int]:
        depth: dict[int, int] = {}
        order = self._order()
        for node_id in sorted(order, key=order.get):
            parents = [lk[1] for lk in self.links if lk[3] == node_id and lk[1] in depth]
            depth[node_id] = 1 + max((depth[p] for p in parents), default=-1)
        return depth

    def node_json(self, origin_x: int = 0, origin_y: int = 0) -> list[dict[str, Any]]:
        for link_id, origin, origin_slot, _target, _slot, _kind in self.links:
            for node in self.nodes:
                if node.id == origin:
                    node.outputs[origin_slot]["links"].append(link_id)
        order = self._order()
        depths = self._depths()
        column_heights: dict[int, int] = {}
        written = []
        for node in self.nodes:
            rows = max(len(node.inputs), len(node.outputs)) + len(node.values or [])
            size = [315, 46 + 24 * rows] if node.type not in NOTE_TYPES else [400, 160]
            column = depths[node.id]
            y = column_heights.get(column, 0)
            column_heights[column] = y + size[1] + 60
            entry: dict[str, Any] = {"id": node.id, "type": node.type,
                                     "pos": [origin_x + 360 * column, origin_y + y], "size": size,
                                     "flags": {}, "order": order[node.id], "mode": node.mode}
            if node.title:
                entry["title"] = node.title
            if node.inputs:
                entry["inputs"] = node.inputs
            if node.outputs:
                entry["outputs"] = node.outputs
            entry["properties"] = node.properties
            if node.values is not None:
                entry["widgets_values"] = node.values
            written.append(entry)
        return written

    def link_json(self) -> list[Any]:
        if self.object_links:
            return [{"id": i, "origin_id": o, "origin_slot": os, "target_id": t, "target_slot": ts, "type": k}
                    for i, o, os, t, ts, k in self.links]
        return [list(link) for link in self.links]


def default_template(layouts: LayoutLookup) -> dict[str, Any]:
    """comfyd's default API graph as the UI file the frontend would save for it."""
    text = resources.files("comfyd.workflows").joinpath("default_api.json").read_text()
    prompt = json.loads(text)
    prompt["4"]["inputs"]["ckpt_name"] = SD15_FP16  # the fp16 file the download link names
    graph = GraphBuilder(layouts, [1])
    for key, api_node in prompt.items():
        class_type = api_node["class_type"]
        values = {k: v for k, v in api_node["inputs"].items() if not isinstance(v, list)}
        links = {k: (int(v[0]), v[1]) for k, v in api_node["inputs"].items() if isinstance(v, list)}
        models = [_model(SD15_FP16, SD15_URL, "checkpoints")] if class_type == "CheckpointLoaderSimple" else None
        # Very old frontends stored the seed's control as a boolean, and SaveImage's prefix not
        # at all (the converter then takes the declared default).
        graph.node(int(key), class_type, values, links, control=True, models=models,
                   store_values=class_type != "SaveImage")
    last_node = max(n.id for n in graph.nodes)
    return {"last_node_id": last_node, "last_link_id": graph.next_link[0] - 1, "nodes": graph.node_json(),
            "links": graph.link_json(), "groups": [], "config": {}, "extra": {}, "version": 0.4}


def _grow_and_blur_subgraph(layouts: LayoutLookup, next_link: list[int]) -> dict[str, Any]:
    """Grow a mask, blur it through an image and back: `expand` and `blur_radius` are the
    subgraph's widgets; the inner nodes store other values, which the outer ones replace."""
    inner = GraphBuilder(layouts, next_link, object_links=True, localized=True)
    inner.node(199, "GrowMask", {"expand": 6, "tapered_corners": True}, {"mask": (-10, 0), "expand": (-10, 1)})
    inner.node(251, "MaskToImage", {}, {"mask": (199, 0)})
    inner.node(252, "ImageBlur", {"blur_radius": 9, "sigma": 1}, {"image": (251, 0), "blur_radius": (-10, 2)})
    inner.node(253, "ImageToMask", {"channel": "red"}, {"image": (252, 0)})
    first_output_link = next_link[0]
    next_link[0] += 1
    inner.links.append((first_output_link, 253, 0, -20, 0, "MASK"))  # to the subgraph's output
    link_ids = {name: [lk[0] for lk in inner.links if lk[1] == -10 and lk[2] == slot]
                for slot, name in enumerate(("mask", "expand", "blur_radius"))}
    inputs = [{"id": _stable_id(f"grow-and-blur/{name}"), "name": name, "type": kind, "linkIds": link_ids[name],
               "pos": {"0": 110, "1": 40 + 20 * slot}}
              for slot, (name, kind) in enumerate((("mask", "MASK"), ("expand", "INT"), ("blur_radius", "INT")))]
    nodes = inner.node_json(origin_x=200)
    return {
        "id": _stable_id("grow-and-blur"),
        "version": 1,
        "state": {"lastGroupId": 0, "lastNodeId": 253, "lastLinkId": next_link[0] - 1, "lastRerouteId": 0},
        "revision": 0,
        "config": {},
        "name": "Grow and Blur Mask",
        "inputNode": {"id": -10, "bounding": [0, 0, 120, 100]},
        "outputNode": {"id": -20, "bounding": [1700, 0, 120, 60]},
        "inputs": inputs,
        "outputs": [{"id": _stable_id("grow-and-blur/MASK"), "name": "MASK", "type": "MASK",
                     "linkIds": [first_output_link], "localized_name": "MASK", "pos": {"0": 1720, "1": 40}}],
        "widgets": [],
        "nodes": nodes,
        "groups": [],
        "links": inner.link_json(),
        "extra": {},
    }


def flux_fill_template(layouts: LayoutLookup) -> dict[str, Any]:
    next_link = [1]
    graph = GraphBuilder(layouts, next_link, localized=True)
    unet = [_model(FLUX_FILL, f"{FLUX_FILL_REPO}/{FLUX_FILL}", "diffusion_models")]
    clips = [_model("clip_l.safetensors", f"{TEXT_ENCODERS_REPO}/clip_l.safetensors?download=true", "text_encoders"),
             _model("t5xxl_fp16.safetensors", f"{TEXT_ENCODERS_REPO}/t5xxl_fp16.safetensors?download=true",
                    "text_encoders")]
    vae = [_model("ae.safetensors", f"{FLUX_FILL_REPO}/ae.safetensors", "vae")]
    clip_values = {"clip_name1": "clip_l.safetensors", "clip_name2": "t5xxl_fp16.safetensors", "type": "flux",
                   "device": "default"}
    inpaint_outputs = ("positive", "negative", "latent")

    # Inpainting: the mask drawn on the loaded picture, grown and blurred for the final composite.
    graph.node(31, "UNETLoader", {"unet_name": FLUX_FILL, "weight_dtype": "default"}, models=unet)
    graph.node(34, "DualCLIPLoader", clip_values, models=clips)
    graph.node(32, "VAELoader", {"vae_name": "ae.safetensors"}, models=vae)
    # An optional LoRA, left bypassed: the model passes through it unchanged.
    graph.node(100, "LoraLoaderModelOnly", {"lora_name": "my_object_removal_lora.safetensors", "strength_model": 1.0},
               {"model": (31, 0)}, mode=4)
    graph.node(39, "DifferentialDiffusion", {"strength": 1.0}, {"model": (100, 0)})
    graph.node(17, "LoadImage", {"image": "bench_in_park_masked.png [input]"})
    graph.node(23, "CLIPTextEncode", {"text": "an empty wooden park bench, soft afternoon light\n"}, {"clip": (34, 0)})
    graph.node(26, "FluxGuidance", {"guidance": 30}, {"conditioning": (23, 0)})
    graph.node(46, "ConditioningZeroOut", {}, {"conditioning": (23, 0)})
    graph.node(38, "InpaintModelConditioning", {"noise_mask": True},
               {"positive": (26, 0), "negative": (46, 0), "vae": (32, 0), "pixels": (17, 0), "mask": (17, 1)},
               output_names=inpaint_outputs)
    graph.node(3, "KSampler", {"seed": 40170223, "steps": 20, "cfg": 1, "sampler_name": "euler",
                               "scheduler": "normal", "denoise": 1},
               {"model": (39, 0), "positive": (38, 0), "negative": (38, 1), "latent_image": (38, 2)})
    graph.node(8, "VAEDecode", {}, {"samples": (3, 0), "vae": (32, 0)})
    graph.node(9, "SaveImage", {"filename_prefix": "flux_fill"}, {"images": (8, 0)})
    subgraph = _grow_and_blur_subgraph(layouts, next_link)
    graph.subgraph_node(48, subgraph, {"expand": 0, "blur_radius": 31}, {"mask": (17, 1)})
    graph.node(49, "MaskPreview", {}, {"mask": (48, 0)})
    graph.node(50, "ImageCompositeMasked", {"x": 0, "y": 0, "resize_source": True},
               {"destination": (17, 0), "source": (8, 0), "mask": (48, 0)})
    graph.node(105, "PreviewImage", {}, {"images": (50, 0)})

    # Outpainting, bypassed as a whole: its own loaders, pad, sample, save.
    graph.node(64, "UNETLoader", {"unet_name": FLUX_FILL, "weight_dtype": "default"}, mode=4, models=unet)
    graph.node(57, "DualCLIPLoader", clip_values, mode=4, models=clips)
    graph.node(59, "VAELoader", {"vae_name": "ae.safetensors"}, mode=4, models=vae)
    graph.node(63, "DifferentialDiffusion", {"strength": 1.0}, {"model": (64, 0)}, mode=4)
    graph.node(72, "LoadImage", {"image": "bench_in_park.png"}, mode=4)
    graph.node(75, "ImagePadForOutpaint", {"left": 256, "top": 0, "right": 256, "bottom": 0, "feathering": 40},
               {"image": (72, 0)}, mode=4)
    graph.node(74, "CLIPTextEncode", {"text": "a park path with trees on both sides"}, {"clip": (57, 0)}, mode=4)
    graph.node(60, "FluxGuidance", {"guidance": 30}, {"conditioning": (74, 0)}, mode=4)
    graph.node(61, "ConditioningZeroOut", {}, {"conditioning": (74, 0)}, mode=4)
    graph.node(71, "InpaintModelConditioning", {"noise_mask": False},
               {"positive": (60, 0), "negative": (61, 0), "vae": (59, 0), "pixels": (75, 0), "mask": (75, 1)},
               mode=4, output_names=inpaint_outputs)
    graph.node(73, "SetLatentNoiseMask", {}, {"samples": (71, 2), "mask": (75, 1)}, mode=4)
    graph.node(58, "KSampler", {"seed": 8675309, "steps": 20, "cfg": 1, "sampler_name": "euler",
                                "scheduler": "normal", "denoise": 1},
               {"model": (63, 0), "positive": (71, 0), "negative": (71, 1), "latent_image": (73, 0)},
               mode=4, control="fixed")
    graph.node(65, "VAEDecode", {}, {"samples": (58, 0), "vae": (59, 0)}, mode=4)
    graph.node(62, "SaveImage", {"filename_prefix": "flux_outpaint"}, {"images": (65, 0)}, mode=4)
    graph.node(80, "MaskToImage", {}, {"mask": (75, 1)}, mode=4)
    graph.node(79, "ImageStitch", {"direction": "right", "match_image_size": True, "spacing_width": 0,
                                   "spacing_color": "white"}, {"image1": (75, 0), "image2": (80, 0)}, mode=4)
    graph.node(81, "PreviewImage", {}, {"images": (79, 0)}, mode=4)

    graph.note(101, "## Flux Fill\n\nInpaint the masked area of the loaded picture. The loaders list where "
                    "their files can be downloaded (`properties.models`).")
    graph.note(104, "Draw the mask on the Load Image node before queueing.")
    graph.note(103, "Enable the LoRA loader (it is bypassed) to remove objects instead of repainting them.",
               node_type="Note")

    nodes = graph.node_json()
    groups = [
        {"id": 1, "title": "Inpaint", "bounding": [-20, -80, 2200, 1500], "color": "#3f789e", "font_size": 24,
         "flags": {}},
        {"id": 2, "title": "Outpaint (bypassed)", "bounding": [-20, 1500, 2200, 1500], "color": "#8a8a3f",
         "font_size": 24, "flags": {}},
    ]
    return {
        "id": _stable_id("flux-fill-subgraph"),
        "revision": 0,
        "last_node_id": max(n["id"] for n in nodes),
        "last_link_id": next_link[0] - 1,
        "nodes": nodes,
        "links": graph.link_json(),
        "groups": groups,
        "definitions": {"subgraphs": [subgraph]},
        "config": {},
        "extra": {"ds": {"scale": 0.5, "offset": [120.0, 80.0]}, "frontendVersion": "1.28.0"},
        "version": 0.4,
    }


def build_templates() -> dict[str, dict[str, Any]]:
    layouts = registry_layouts()
    return {"default.json": default_template(layouts), "flux_fill_subgraph.json": flux_fill_template(layouts)}


def render(workflow: dict[str, Any]) -> str:
    return json.dumps(workflow, indent=2) + "\n"


def main() -> None:
    for name, workflow in build_templates().items():
        (TEMPLATES / name).write_text(render(workflow))
        print(f"wrote {TEMPLATES / name}")


if __name__ == "__main__":
    main()
