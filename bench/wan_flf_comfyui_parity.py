"""WanFirstLastFrameToVideo and WanImageToVideo held to ComfyUI's own nodes, value for value.

Both sides run the node on the same inputs (start / end frames of another size and aspect, so the
resize and centre crop count; one or several frames; CLIP vision outputs with distinct
penultimate states) with a recording VAE whose `encode` keeps the clip it is given and returns a
fixed latent (ComfyUI's VAE loader builds the Wan VAE full-width, so no tiny VAE file fits it; the
VAE itself is held to ComfyUI's in bench/wan_comfyui_parity.py). Compared: the clip handed to the
VAE, `concat_mask`, the latent's shape, and the CLIP features the conditioning carries.

    PYTHONPATH=. python bench/wan_flf_comfyui_parity.py --workdir /tmp/wan-flf \
        --comfyui /path/to/ComfyUI --comfyui-python /path/to/comfyui-venv/bin/python

prints RESULT lines per case: the largest absolute difference of the encoded clip, whether the
masks, the latent shapes and the CLIP features are identical.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

WIDTH, HEIGHT, LENGTH = 48, 32, 13
# case -> (node, start frames, end frames, CLIP outputs given: start, end)
CASES: dict[str, tuple[str, int, int, bool, bool]] = {
    "flf_both": ("WanFirstLastFrameToVideo", 1, 1, True, True),
    "flf_multi": ("WanFirstLastFrameToVideo", 3, 2, True, False),
    "flf_end_only": ("WanFirstLastFrameToVideo", 0, 1, False, True),
    "flf_none": ("WanFirstLastFrameToVideo", 0, 0, False, False),
    "i2v_start": ("WanImageToVideo", 2, 0, True, False),
}


def inputs() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    return {
        "start": torch.rand(3, 40, 56, 3, generator=g),
        "end": torch.rand(2, 50, 30, 3, generator=g),
        "clip_start": torch.randn(1, 257, 1280, generator=g),
        "clip_end": torch.randn(1, 257, 1280, generator=g),
        "context": torch.randn(1, 4, 32, generator=g),
    }


class RecordingVae:
    """What the nodes ask of a VAE: encode (recorded), the compression and the latent width."""

    latent_channels = 16

    def __init__(self) -> None:
        self.clips: list[torch.Tensor] = []

    def spacial_compression_encode(self) -> int:
        return 8

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        self.clips.append(image.detach().clone().float())
        frames = (image.shape[0] - 1) // 4 + 1
        return torch.zeros(1, 16, frames, image.shape[1] // 8, image.shape[2] // 8)


def _arguments(case: str, data: dict[str, torch.Tensor], vision: Any) -> dict[str, Any]:
    node, starts, ends, clip_start, clip_end = CASES[case]
    cond = [[data["context"], {}]]
    args: dict[str, Any] = dict(positive=cond, negative=cond, width=WIDTH, height=HEIGHT, length=LENGTH, batch_size=1)
    if starts:
        args["start_image"] = data["start"][:starts]
    if node == "WanImageToVideo":
        if clip_start:
            args["clip_vision_output"] = vision(data["clip_start"])
        return args
    if ends:
        args["end_image"] = data["end"][:ends]
    if clip_start:
        args["clip_vision_start_image"] = vision(data["clip_start"])
    if clip_end:
        args["clip_vision_end_image"] = vision(data["clip_end"])
    return args


def _record(out: dict[str, torch.Tensor], case: str, vae: RecordingVae, result: Any) -> None:
    positive, _, latent = result
    values = positive[0][1]
    out[f"{case}_clip"] = vae.clips[-1] if vae.clips else torch.zeros(0)
    out[f"{case}_mask"] = values["concat_mask"].float() if "concat_mask" in values else torch.zeros(0)
    out[f"{case}_latent_shape"] = torch.tensor(latent["samples"].shape)
    vision = values.get("clip_vision_output")
    out[f"{case}_clip_fea"] = vision.penultimate_hidden_states.float() if vision is not None else torch.zeros(0)


def comfyd_side() -> dict[str, torch.Tensor]:
    import comfyd.nodes.conditioning.wan_first_last as flf
    import comfyd.nodes.conditioning.wan_video as i2v
    from comfyd.models.clip_vision import ClipVisionOutput

    class _Ctx:
        class env:  # noqa: N801
            settings = None

    data = inputs()
    out: dict[str, torch.Tensor] = {}
    for case, (node, *_) in CASES.items():
        vae = RecordingVae()
        flf.vae_encode = i2v.vae_encode = lambda _vae, clip, vae=vae: vae.encode(clip)  # type: ignore[assignment]
        args = _arguments(case, data, lambda s: ClipVisionOutput(s[:, :, :8], s, s[:, 0, :16]))
        cls = flf.WanFirstLastFrameToVideo if node == "WanFirstLastFrameToVideo" else i2v.WanImageToVideo
        _record(out, case, vae, cls().run(_Ctx(), vae=vae, **args))
    return out


def comfyui_side(work: Path, comfyui: Path) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from comfyui_render import load_comfyui

    load_comfyui(comfyui, work, None, work / "comfyui-out")
    import comfy.clip_vision
    from comfy_extras.nodes_wan import WanFirstLastFrameToVideo, WanImageToVideo

    def vision(states: torch.Tensor) -> Any:
        output = comfy.clip_vision.Output()
        output.penultimate_hidden_states = states
        output.last_hidden_state = states[:, :, :8]
        output.image_embeds = states[:, 0, :16]
        return output

    data = load_file(str(work / "inputs.safetensors"))
    out: dict[str, torch.Tensor] = {}
    for case, (node, *_) in CASES.items():
        vae = RecordingVae()
        cls = WanFirstLastFrameToVideo if node == "WanFirstLastFrameToVideo" else WanImageToVideo
        _record(out, case, vae, cls.execute(vae=vae, **_arguments(case, data, vision)).result)
    save_file({k: v.clone().contiguous() for k, v in out.items()}, str(work / "comfyui.safetensors"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--comfyui", type=Path, required=True)
    parser.add_argument("--comfyui-python", default=sys.executable)
    parser.add_argument("--comfyui-side", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    if args.comfyui_side:
        comfyui_side(work, args.comfyui)
        return 0
    save_file(inputs(), str(work / "inputs.safetensors"))
    ours = comfyd_side()
    subprocess.run(
        [args.comfyui_python, __file__, "--comfyui-side", "--workdir", str(work), "--comfyui", str(args.comfyui)],
        check=True,
    )
    theirs = load_file(str(work / "comfyui.safetensors"))
    for case in CASES:
        a, b = ours[f"{case}_clip"], theirs[f"{case}_clip"]
        diff = float((a - b).abs().max()) if a.shape == b.shape and a.numel() else float("nan")
        same = {part: bool(ours[f"{case}_{part}"].shape == theirs[f"{case}_{part}"].shape
                           and torch.equal(ours[f"{case}_{part}"], theirs[f"{case}_{part}"]))
                for part in ("mask", "latent_shape", "clip_fea")}  # fmt: skip
        print(f"RESULT {case}_clip_shape={tuple(a.shape)} comfyui={tuple(b.shape)} clip_max_abs_diff={diff:.3g}")
        print(f"RESULT {case}_mask_identical={same['mask']} latent_shape_identical={same['latent_shape']} "
              f"clip_fea_identical={same['clip_fea']}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    raise SystemExit(main())
