"""Qwen-Image-Edit's prompt encoders held to ComfyUI itself at cut size: TextEncodeQwenImageEdit
and TextEncodeQwenImageEditPlus, ComfyUI's node classes against comfyd's, on the same tiny
Qwen2.5-VL file (comfyd's `make-tiny --family qwen-image` text encoder: a 2-layer, 32-wide
language model and an 8-block, 32-wide vision tower).

METHOD: ComfyUI builds Qwen2.5-VL-7B only at full size (~30 GB in fp32, out of reach here), so
its own text-encoder model (comfy.sd.CLIP over qwen_image.te() and QwenImageTokenizer, what its
loader picks for a Qwen2.5-7B file with clip type qwen_image; the detection itself keys on the
7B's widths) runs with the language model's config and the vision tower's widths swapped for the
tiny file's (the code
paths unchanged: tokenizer and templates, picture resizing, process_qwen2vl_images, the vision
tower with window attention and ComfyUI's full-attention block 7, the embedding insertion,
multimodal positions, the dropped template tokens). Both sides get the same pictures and a VAE
stand-in that records the picture each node hands it (its "latent" is that picture), so the
reference-latent inputs are compared too (the VAE itself is held to ComfyUI elsewhere). Cases:
the Edit node with a 200x150 picture (resized to ~1 MP: a 32x42 merged grid, many attention
windows), the Edit node without a picture, the Plus node with two pictures, with pictures 1 and
3, and a prompt in a template of one's own with a vision tag.

    python bench/qwen_image_edit_comfyui_parity.py --workdir /tmp/qwen-edit-parity \
        --comfyui /path/to/ComfyUI --comfyui-python /path/to/comfyui-venv/bin/python

(`--save-reference tests/families/data/qwen_image_edit_comfyui_reference.safetensors` stores
ComfyUI's conditioning of the "edit" and "plus_two" cases and their pictures for the fast test)
prints, per case, RESULT qwen_edit_<case>_cond_rel_diff=... max_abs_diff=... shape=... and
RESULT qwen_edit_<case>_reference_pixels_max_diff=... count=.... The ComfyUI side runs in
ComfyUI's own Python (`--comfyui-side`), on CPU, through its public functions.
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

TEXT = "text_encoders/comfyd-tiny-qwen25-vl.safetensors"
TINY_TEXT = {"vocab_size": 152064, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
             "num_attention_heads": 4, "num_key_value_heads": 2}  # fmt: skip
TINY_VISION = {"hidden_size": 32, "num_heads": 4, "num_layers": 8, "intermediate_size": 64}
OWN_TEMPLATE = "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>describe the picture<|im_end|>\n"
# case -> (node, prompt, picture names per input)
CASES: dict[str, tuple[str, str, dict[str, str]]] = {
    "edit": ("TextEncodeQwenImageEdit", "make the sky purple", {"image": "wide"}),
    "edit_text_only": ("TextEncodeQwenImageEdit", "make the sky purple", {}),
    "plus_two": ("TextEncodeQwenImageEditPlus", "put the cat of picture 2 on the sofa",
                 {"image1": "wide", "image2": "tall"}),
    "plus_one_three": ("TextEncodeQwenImageEditPlus", "swap the colours", {"image1": "tall", "image3": "small"}),
    "own_template": ("TextEncodeQwenImageEdit", OWN_TEMPLATE, {"image": "small"}),
}  # fmt: skip
SAVED_CASES = ("edit", "plus_two")  # stored by --save-reference for tests/families/test_qwen_image_edit.py


def make_files(work: Path) -> None:
    from comfyd.models.tiny import make_tiny

    if not (work / TEXT).is_file():
        make_tiny(work, family="qwen-image")
    if not (work / "pictures.safetensors").is_file():
        rng = np.random.default_rng(5)
        pictures = {}
        for name, (h, w) in {"wide": (150, 200), "tall": (90, 60), "small": (40, 50)}.items():
            yy, xx = np.mgrid[0:h, 0:w]
            base = np.stack([xx * 200 // w, yy * 200 // h, (xx + yy) % 17 * 12], -1) + rng.integers(
                0, 55, (h, w, 3)
            )
            pictures[name] = torch.from_numpy(base.astype(np.uint8)).unsqueeze(0).contiguous()
        save_file(pictures, str(work / "pictures.safetensors"))


def load_pictures(path: Path) -> dict[str, torch.Tensor]:
    """IMAGE tensors [1, H, W, 3] in 0..1 of the stored 8-bit pictures."""
    return {k: v.float() / 255.0 for k, v in load_file(str(path)).items() if v.dtype == torch.uint8}


class RecordingVae:
    """A VAE stand-in (ComfyUI side): encode returns the pictures it is given."""

    def __init__(self) -> None:
        self.seen: list[torch.Tensor] = []

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        self.seen.append(pixels.float().clone())
        return pixels


def _save(outputs: dict[str, Any], path: Path) -> None:
    save_file({k: v.float().contiguous() for k, v in outputs.items()}, str(path))


def comfyd_side(work: Path) -> None:
    import comfyd.nodes.conditioning.qwen_image_edit as edit
    from comfyd.models.manager import ModelManager
    from comfyd.settings import Settings

    manager = ModelManager(Settings(models_dir=work, device="cpu", home=work / "home"))
    clip = manager.load_clip([Path(TEXT).name], "qwen_image")
    pictures = load_pictures(work / "pictures.safetensors")
    seen: list[torch.Tensor] = []

    def recording_encode(vae: Any, pixels: torch.Tensor) -> torch.Tensor:
        seen.append(pixels.float().clone())
        return pixels

    edit.vae_encode = recording_encode  # the nodes' VAE call, recorded instead of run

    class Ctx:
        def check_interrupted(self) -> None:
            return None

    out: dict[str, torch.Tensor] = {}
    for case, (node, prompt, inputs) in CASES.items():
        seen.clear()
        node_class = getattr(edit, node)
        images = {key: pictures[name] for key, name in inputs.items()}
        [[cond, options]] = node_class().run(Ctx(), clip, prompt, vae=object(), **images)[0]
        out[f"{case}_cond"] = cond
        for i, pixels in enumerate(seen):
            out[f"{case}_ref{i}"] = pixels
    _save(out, work / "comfyd-edit.safetensors")


def comfyui_side(work: Path, comfyui: Path) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from comfyui_render import load_comfyui

    load_comfyui(comfyui, work, None, work / "comfyui-out")
    import comfy.sd
    import comfy.text_encoders.llama as llama
    import comfy.text_encoders.qwen_vl as qwen_vl
    from comfy_extras import nodes_qwen

    full = llama.Qwen25_7BVLI_Config

    class TinyConfig(full):  # type: ignore[misc, valid-type]
        head_dim = 8
        rope_dims = [1, 1, 2]

    llama.Qwen25_7BVLI_Config = lambda **kw: TinyConfig(**{**TINY_TEXT, **kw})
    tower = qwen_vl.Qwen2VLVisionTransformer
    qwen_vl.Qwen2VLVisionTransformer = lambda **kw: tower(**{**kw, **TINY_VISION})
    state = load_file(str(work / TEXT))
    import comfy.text_encoders.qwen_image as qwen_image

    class Target:  # what load_text_encoder_state_dicts picks for a Qwen2.5-7B file and type qwen_image
        clip = qwen_image.te()
        tokenizer = qwen_image.QwenImageTokenizer
        params: dict[str, Any] = {}

    clip = comfy.sd.CLIP(target=Target, model_options={"dtype": torch.float32})
    missing, unexpected = clip.load_sd({k: v.float() for k, v in state.items()})
    assert not missing and not unexpected, (missing, unexpected)
    pictures = load_pictures(work / "pictures.safetensors")
    out: dict[str, torch.Tensor] = {}
    for case, (node, prompt, inputs) in CASES.items():
        vae = RecordingVae()
        images = {key: pictures[name] for key, name in inputs.items()}
        [[cond, _options]] = getattr(nodes_qwen, node).execute(clip, prompt, vae=vae, **images).result[0]
        out[f"{case}_cond"] = cond
        for i, pixels in enumerate(vae.seen):
            out[f"{case}_ref{i}"] = pixels
    _save(out, work / "comfyui-edit.safetensors")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--comfyui", type=Path, required=True)
    parser.add_argument("--comfyui-python", default=sys.executable)
    parser.add_argument("--comfyui-side", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(
        "--save-reference", type=Path, help="store ComfyUI's outputs of two cases for the tests"
    )
    args = parser.parse_args()
    work = args.workdir.resolve()
    if args.comfyui_side:
        with torch.inference_mode():  # as ComfyUI's executor runs every node
            comfyui_side(work, args.comfyui.resolve())
        return 0
    work.mkdir(parents=True, exist_ok=True)
    make_files(work)
    comfyd_side(work)
    subprocess.run([args.comfyui_python, __file__, "--workdir", str(work), "--comfyui", str(args.comfyui),
                    "--comfyui-side"], check=True)  # fmt: skip
    ours, theirs = (
        load_file(str(work / "comfyd-edit.safetensors")),
        load_file(str(work / "comfyui-edit.safetensors")),
    )
    print("METHOD cut-size Qwen2.5-VL (tiny text + vision config) in ComfyUI's own CLIP model and edit nodes")
    for case in CASES:
        a, b = ours[f"{case}_cond"], theirs[f"{case}_cond"]
        if a.shape == b.shape:
            rel = float((a - b).norm() / b.norm())
            diff = float((a - b).abs().max())
        else:
            rel = diff = float("nan")
        print(f"RESULT qwen_edit_{case}_cond_rel_diff={rel:.3g} max_abs_diff={diff:.3g} shape={tuple(a.shape)}"
              f" comfyui_shape={tuple(b.shape)}")  # fmt: skip
        refs_a = sorted(k for k in ours if k.startswith(f"{case}_ref"))
        refs_b = sorted(k for k in theirs if k.startswith(f"{case}_ref"))
        worst = 0.0
        for ka, kb in zip(refs_a, refs_b, strict=False):
            x, y = ours[ka], theirs[kb]
            worst = max(worst, float((x - y).abs().max()) if x.shape == y.shape else float("inf"))
        count = f"{len(refs_a)}/{len(refs_b)}"
        print(f"RESULT qwen_edit_{case}_reference_pixels_max_diff={worst:.3g} count={count}")
    if args.save_reference is not None:
        digest = hashlib.sha256((work / TEXT).read_bytes()).hexdigest()
        stored = {
            k: v for k, v in load_file(str(work / "pictures.safetensors")).items() if k in ("wide", "tall")
        }
        stored.update({f"{case}_cond": theirs[f"{case}_cond"] for case in SAVED_CASES})
        save_file(stored, str(args.save_reference), metadata={"text_encoder_sha256": digest})
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    raise SystemExit(main())
