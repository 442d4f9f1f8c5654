"""diffusers' Flux2Pipeline and Flux2KleinPipeline on comfyd's tiny Flux.2 files: the reference
the Flux.2 tests hold comfyd to.

ComfyUI cannot be the reference here: 0.3.64 (the ComfyUI this project renders with) has no
Flux.2 at all (tests/fidelity/README.md). The pipelines get the same modules comfyd loaded (the
transformer from the BFL-layout file, the VAE, the text encoders as transformers' MistralModel /
Qwen3Model) and the same initial noise; the sigmas are the pipelines' FlowMatchEulerDiscreteScheduler
with Flux.2's empirical mu, against Flux2Scheduler.

Prompts go through diffusers' own encoders (`_get_mistral_3_small_prompt_embeds`,
`_get_qwen3_prompt_embeds`: the layers, the stacking, the mask). Their tokenizers are stand-ins for
the released ones, which are not on this machine: for Qwen3, comfyd's shipped Qwen2 vocabulary as
transformers' tokenizer with Qwen3's chat template for one user turn (below, written from the
template's rules); for Mistral, mistral-common's Tekken under a minimal `apply_chat_template`
(Mistral Small 3.1's template: <s>, [SYSTEM_PROMPT]..[/SYSTEM_PROMPT], [INST]..[/INST]).

[klein]: the whole prompt-to-picture path is diffusers' (512 tokens, padding masked, CFG with an
empty negative prompt when guidance > 1), as ComfyUI's Klein tokenizer also pads to 512. [dev]:
ComfyUI does not pad the Mistral prompt; its Flux2 model pads the context with zeros in front to 512
tokens instead, where diffusers pads the tokens to 512 and encodes the padding. The [dev] reference
therefore encodes with diffusers at the prompt's own length and pads as ComfyUI's model does
(`pad_context`) before the pipeline's denoising; the real tokens' states are diffusers' either way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from comfyd.models import families, loader
from comfyd.models.devices import compute_plan
from comfyd.models.families import _flux2_tiny
from comfyd.models.families._flux2_transformer import pad_context
from comfyd.models.tensorfile import TensorFile
from comfyd.sampling.noise import initial_noise
from tests.families.pictures import psnr  # noqa: F401  (tests import it from here)

SIZE = 64
STEPS = 2
SEED = 42
GUIDANCE = 4.0
PROMPT = "a small red fox runs across a snowy field at dawn"
# Qwen3's chat template, for one user turn and the generation prompt (enable_thinking=False closes
# the thinking block); transformers renders it with trim_blocks.
QWEN3_CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{% endif %}"
    "{% endif %}"
)


def tiny_workflow(variant: str = "dev", **inputs: Any) -> dict[str, Any]:
    """comfyd's canonical Flux.2 graph (comfyd/workflows/flux2_<variant>_api.json: [dev] with Mistral
    and FluxGuidance, [klein] distilled with Qwen3, `dev_edit`: [dev] with one reference image) on the
    tiny files, 64x64, 2 steps."""
    import json

    from comfyd.workflows import __file__ as workflows_init

    names = {k: Path(v).name for k, v in _flux2_tiny.NAMES.items()}
    graph: dict[str, Any] = json.loads((Path(workflows_init).parent / f"flux2_{variant}_api.json").read_text())
    model = variant.removesuffix("_edit")
    changes: dict[str, dict[str, Any]] = {
        "1": {"unet_name": names[model]}, "2": {"clip_name": names[_flux2_tiny.ENCODER_OF[model]]},
        "3": {"vae_name": names["vae"]}, "4": {"text": PROMPT}, "7": {"noise_seed": SEED},
        "9": {"steps": STEPS, "width": SIZE, "height": SIZE}, "10": {"width": SIZE, "height": SIZE},
        "13": {"filename_prefix": "flux2"},
    }  # fmt: skip
    if "5" in graph:
        changes["5"] = {"guidance": GUIDANCE}
    for overrides in (changes, inputs):
        for node, values in overrides.items():
            graph[node]["inputs"].update(values)
    return graph


def add_reference(graph: dict[str, Any], image: str, first: str = "16") -> str:
    """Chains one more LoadImage -> VAEEncode -> ReferenceLatent after node `first` (a
    ReferenceLatent, or the prompt's CLIPTextEncode "4"); FluxGuidance "5" (or, in [klein]'s graph,
    the guider "6") then reads the new one. Returns the new ReferenceLatent's id."""
    n = max(int(k) for k in graph) + 1
    load, encode, ref = str(n), str(n + 1), str(n + 2)
    graph[load] = {"class_type": "LoadImage", "inputs": {"image": image}}
    graph[encode] = {"class_type": "VAEEncode", "inputs": {"pixels": [load, 0], "vae": ["3", 0]}}
    graph[ref] = {"class_type": "ReferenceLatent", "inputs": {"conditioning": [first, 0], "latent": [encode, 0]}}
    graph["5" if "5" in graph else "6"]["inputs"]["conditioning"] = [ref, 0]
    return ref


def cfg_workflow(variant: str = "klein", cfg: float = GUIDANCE) -> dict[str, Any]:
    """The [klein] base template: CFGGuider with an empty negative prompt instead of BasicGuider."""
    graph = tiny_workflow(variant)
    graph["14"] = {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["2", 0]}}
    positive = graph["6"]["inputs"]["conditioning"]
    graph["6"] = {"class_type": "CFGGuider", "inputs": {
        "model": ["1", 0], "positive": positive, "negative": ["14", 0], "cfg": cfg}}  # fmt: skip
    return graph


class TekkenChat:
    """Enough of a transformers processor for diffusers' Mistral prompt encoder: Mistral Small 3.1's
    chat template over mistral-common's Tekken, padded after the text with <pad> (11)."""

    def __init__(self) -> None:
        from comfyd.models.mistral3_encoder import tekkenizer

        self.tekken = tekkenizer()  # the shipped vocabulary (the tiny file carries none)

    def _ids(self, messages: list[dict[str, Any]]) -> list[int]:
        ids = [self.tekken.get_special_token("<s>")]
        for message in messages:
            text = "".join(part["text"] for part in message["content"] if part["type"] == "text")
            open_, close = ("[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]") if message["role"] == "system" else ("[INST]", "[/INST]")
            ids += [self.tekken.get_special_token(open_), *self.tekken.encode(text, bos=False, eos=False),
                    self.tekken.get_special_token(close)]  # fmt: skip
        return ids

    def apply_chat_template(self, batch: list[list[dict[str, Any]]], *, max_length: int, **_: Any) -> dict[str, Any]:
        rows = [self._ids(messages)[:max_length] for messages in batch]
        ids = [row + [11] * (max_length - len(row)) for row in rows]
        mask = [[1] * len(row) + [0] * (max_length - len(row)) for row in rows]
        return {"input_ids": torch.tensor(ids), "attention_mask": torch.tensor(mask)}


# Mistral Small 3.1's chat template for system and user text turns, for transformers' Tekken conversion.
MISTRAL_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}"
    "{% if m['content'] is string %}{% set text = m['content'] %}"
    "{% else %}{% set text = m['content'] | selectattr('type', 'equalto', 'text') | map(attribute='text') | join('') %}"
    "{% endif %}"
    "{% if m['role'] == 'system' %}[SYSTEM_PROMPT]{{ text }}[/SYSTEM_PROMPT]"
    "{% elif m['role'] == 'user' %}[INST]{{ text }}[/INST]{% endif %}{% endfor %}"
)


def transformers_tekken() -> Any:
    """transformers' own conversion of the shipped Tekken vocabulary (HF tokenizers' BPE, not
    tiktoken) with Mistral Small 3.1's chat template: a processor as diffusers calls it. Slow to
    build (tens of seconds on a busy machine): the bench uses it, the tests TekkenChat."""
    from transformers.integrations.mistral import convert_tekken_tokenizer

    from comfyd.models.mistral3_encoder import shipped_tekken_path

    return convert_tekken_tokenizer(str(shipped_tekken_path()), chat_template=MISTRAL_CHAT_TEMPLATE)


def qwen3_tokenizer() -> Any:
    import copy

    from comfyd.models.qwen25_encoder import shipped_tokenizer

    tokenizer = copy.deepcopy(shipped_tokenizer())
    tokenizer.chat_template = QWEN3_CHAT_TEMPLATE
    tokenizer.padding_side = "right"  # ComfyUI's Klein tokenizer pads after the text
    return tokenizer


def text_encoder(root: Path, variant: str) -> Any:
    """The tiny [dev] / [klein] text encoder as comfyd loads it (transformers' model, fp32)."""
    from comfyd.models import standalone

    name = _flux2_tiny.NAMES[_flux2_tiny.ENCODER_OF[variant]]
    return standalone.load_text_encoder(root / name, compute_plan("cpu", "fp32"), False)[1]


def diffusers_prompt_embeds(
    root: Path, variant: str, prompt: str = PROMPT, length: int | None = None, encoder: Any = None
) -> torch.Tensor:
    """diffusers' encode_prompt of `prompt`: [klein] padded to 512 (or `length`); [dev] at the
    prompt's own token count unless `length` is given. `encoder`: the module to drive (default:
    the tiny file's, loaded anew)."""
    from diffusers import Flux2KleinPipeline, Flux2Pipeline

    encoder = encoder if encoder is not None else text_encoder(root, variant)
    with torch.inference_mode():
        if variant == "klein":
            return Flux2KleinPipeline._get_qwen3_prompt_embeds(
                encoder, qwen3_tokenizer(), prompt, max_sequence_length=length or 512
            ).float()
        chat = TekkenChat()
        if length is None:
            from diffusers.pipelines.flux2.pipeline_flux2 import SYSTEM_MESSAGE, format_input

            length = len(chat._ids(format_input([prompt], SYSTEM_MESSAGE)[0]))
        return Flux2Pipeline._get_mistral_3_small_prompt_embeds(encoder, chat, prompt, max_sequence_length=length).float()


def flux2_pipeline(root: Path, variant: str, distilled: bool = True) -> Any:
    from diffusers import FlowMatchEulerDiscreteScheduler, Flux2KleinPipeline, Flux2Pipeline

    plan = compute_plan("cpu", "fp32")
    with TensorFile(root / _flux2_tiny.NAMES[variant]) as tf:
        network, _ = families.get("flux2").load_diffusion_model(tf, "", plan, "default")
    vae = loader.load_vae_file(root / _flux2_tiny.NAMES["vae"], plan)
    scheduler = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True)  # mu comes from the pipeline
    if variant == "klein":
        return Flux2KleinPipeline(scheduler=scheduler, vae=vae.vae, text_encoder=text_encoder(root, variant),
                                  tokenizer=qwen3_tokenizer(), transformer=network.transformer,
                                  is_distilled=distilled)  # fmt: skip
    return Flux2Pipeline(scheduler=scheduler, vae=vae.vae, text_encoder=None, tokenizer=None,
                         transformer=network.transformer)  # fmt: skip


def reference(
    root: Path, variant: str = "dev", steps: int = STEPS, seed: int = SEED, cfg: float | None = None,
    diffusers_padding: bool = False, images: list[Path] | None = None,
) -> np.ndarray:
    """[H, W, 3] uint8 of the pipeline, converted as ComfyUI's SaveImage converts. `cfg`: [klein]
    as a base (undistilled) model with that guidance scale and diffusers' empty negative prompt.
    `diffusers_padding`: [dev] with diffusers' own 512 encoded pad tokens (after the text) instead
    of ComfyUI's zero context padding, to measure how far the two conventions differ. `images`:
    editing, the pictures as the pipeline's `image=[...]` (RGB files)."""
    noise = initial_noise(torch.zeros(1, 128, SIZE // 16, SIZE // 16), seed)
    common = {"height": SIZE, "width": SIZE, "num_inference_steps": steps, "latents": noise, "output_type": "np"}
    if images:
        from PIL import Image

        common["image"] = [Image.open(path).convert("RGB") for path in images]
    with torch.inference_mode():
        if variant == "klein":
            pipe = flux2_pipeline(root, variant, distilled=cfg is None)
            image = pipe(prompt=PROMPT, guidance_scale=cfg or 1.0, **common).images[0]
        else:
            context = (
                diffusers_prompt_embeds(root, variant, length=512)
                if diffusers_padding
                else pad_context(diffusers_prompt_embeds(root, variant))
            )
            pipe = flux2_pipeline(root, variant)
            image = pipe(prompt_embeds=context, guidance_scale=GUIDANCE, **common).images[0]
    return np.clip(255.0 * image, 0, 255).astype(np.uint8)
