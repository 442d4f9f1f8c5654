"""comfyd's GGUF dequantization against the ComfyUI-GGUF pack's own, weights and pictures.

    PYTHONPATH=. python bench/gguf_pack_parity.py --pack PATH [--quants Q8_0,Q5_1,Q4_K]

PATH is a ComfyUI-GGUF checkout (its `dequant.py` is imported as a library; it needs only torch,
gguf and tqdm). For each quant: random weights are quantized and dequantized both ways, and the
canonical Flux dev workflow runs on a 256-wide random Flux and T5 (tests/models/gguf_files.py)
written in that quant, once with comfyd's dequantizers and once with the pack's default
(`dequant_dtype` "default": its arithmetic in float16, the scales' dtype) in their place.

    RESULT gguf_<quant>_weights_equal_pack_float32=1|0   (the pack with dequant_dtype float32)
    RESULT gguf_<quant>_weights_max_abs_diff_pack_default=...
    RESULT psnr_gguf_<quant>_vs_pack_default_db=...      (the two pictures, CPU fp32)
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from comfyd.models import gguf_layers  # noqa: E402
from comfyd.models.gguf_dequant import dequantize  # noqa: E402
from comfyd.models.tiny import make_tiny  # noqa: E402
from tests.models.gguf_files import quantize_q4_k, write_gguf, write_wide_flux, write_wide_t5  # noqa: E402
from tests.models.test_gguf import _wide_graph  # noqa: E402


def _pack(path: Path):
    spec = importlib.util.spec_from_file_location("comfyui_gguf_dequant", path / "dequant.py")
    if spec is None or spec.loader is None:
        raise SystemExit(f"no dequant.py in {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _quantize(values: np.ndarray, quant: str) -> np.ndarray:
    import gguf

    if quant == "Q4_K":
        return quantize_q4_k(values)
    return gguf.quants.quantize(values, getattr(gguf.GGMLQuantizationType, quant))


def main(argv: list[str] | None = None) -> int:
    import gguf

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pack", type=Path, required=True, help="a ComfyUI-GGUF checkout")
    parser.add_argument("--quants", default="Q8_0,Q5_1,Q4_K")
    args = parser.parse_args(argv)
    pack = _pack(args.pack)
    quants = args.quants.split(",")
    weights = (np.random.default_rng(0).standard_normal((256, 1024)) * 0.05).astype(np.float32)
    for quant in quants:
        qtype = getattr(gguf.GGMLQuantizationType, quant)
        raw = torch.from_numpy(_quantize(weights, quant).copy())
        ours = dequantize(raw, quant, weights.shape)
        exact = pack.dequantize(raw, qtype, weights.shape, dtype=torch.float32).float()
        default = pack.dequantize(raw, qtype, weights.shape, dtype=None).float()
        print(f"RESULT gguf_{quant}_weights_equal_pack_float32={int(torch.equal(ours, exact))}")
        print(f"RESULT gguf_{quant}_weights_max_abs_diff_pack_default={float((ours - default).abs().max()):.3g}")

    from comfyd.runner import LocalRunner
    from comfyd.settings import Settings

    def pack_default(raw: torch.Tensor, type_name: str, shape: tuple[int, ...]) -> torch.Tensor:
        return pack.dequantize(raw, getattr(gguf.GGMLQuantizationType, type_name), shape, dtype=None).float()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "models"
        make_tiny(root, family="flux")
        flux = write_wide_flux(root / "diffusion_models" / "wide-flux.safetensors", width=256)
        t5 = write_wide_t5(root / "text_encoders" / "wide-t5.safetensors", width=256)
        for quant in quants:
            write_gguf(flux, root / "diffusion_models" / f"wide-flux-{quant}.gguf", "flux", quant=quant)
            write_gguf(t5, root / "text_encoders" / f"wide-t5-{quant}.gguf", "t5encoder", quant=quant, t5_names=True)
        pictures: dict[tuple[str, str], torch.Tensor] = {}
        ours_fn = gguf_layers.dequantize
        try:
            for label, fn in (("comfyd", ours_fn), ("pack", pack_default)):
                gguf_layers.dequantize = fn  # what each kept layer calls in its forward
                settings = Settings(models_dir=root, output_dir=Path(tmp) / label, home=Path(tmp) / "home")
                with LocalRunner(settings) as runner:
                    for quant in quants:
                        graph = _wide_graph(f"wide-flux-{quant}.gguf", f"wide-t5-{quant}.gguf")
                        result = runner.run(graph, node_id="8")
                        if not result.ok:
                            raise SystemExit(f"{label} {quant}: {result.error}")
                        pictures[label, quant] = result.values["8"][0].float()
        finally:
            gguf_layers.dequantize = ours_fn
        for quant in quants:
            mse = float(((pictures["comfyd", quant] - pictures["pack", quant]) ** 2).mean())
            psnr = float("inf") if mse == 0 else 10 * np.log10(1.0 / mse)
            print(f"RESULT psnr_gguf_{quant}_vs_pack_default_db={psnr:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
