"""GGUF files (the ComfyUI-GGUF pack's loaders, built in): tensors dequantized as the gguf library
dequantizes them, the pack's folders and declarations, and the canonical Flux workflow run from
GGUF files against the same workflow from the safetensors they were made from."""

from __future__ import annotations

import shutil
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from comfyd.models.families import _flux_tiny
from comfyd.models.tensorfile import ModelFileError, TensorFile
from comfyd.models.tiny import make_tiny
from tests.families.flux_reference import tiny_workflow
from tests.models.gguf_files import write_gguf, write_wide_flux, write_wide_t5


@pytest.fixture(scope="module")
def flux_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Flux files, plus the dev transformer and the T5 as GGUF: lossless and Q8_0."""
    root = tmp_path_factory.mktemp("gguf") / "models"
    make_tiny(root, family="flux")
    unet, t5 = root / _flux_tiny.NAMES["dev"], root / _flux_tiny.NAMES["t5xxl"]
    write_gguf(unet, root / "diffusion_models" / "flux-dev-plain.gguf", "flux")
    write_gguf(unet, root / "diffusion_models" / "flux-dev-Q8_0.gguf", "flux", quant="Q8_0")
    write_gguf(t5, root / "text_encoders" / "t5-plain.gguf", "t5encoder", t5_names=True)
    write_gguf(t5, root / "text_encoders" / "t5-Q8_0.gguf", "t5encoder", quant="Q8_0", t5_names=True)
    return root


def test_tensors_read_back_as_the_gguf_library_dequantizes_them(flux_gguf: Path) -> None:
    source = load_file(str(flux_gguf / _flux_tiny.NAMES["dev"]))
    with TensorFile(flux_gguf / "diffusion_models" / "flux-dev-plain.gguf") as plain:
        assert sorted(plain.keys()) == sorted(source)
        for key, value in source.items():
            assert plain.shape(key) == tuple(value.shape)
            assert torch.equal(plain.get(key).to(value.dtype), value), key
    quantized = 0
    with TensorFile(flux_gguf / "diffusion_models" / "flux-dev-Q8_0.gguf") as q8:
        for key, value in source.items():
            if value.ndim >= 2 and value.shape[-1] % 32 == 0:
                q = gguf.quants.quantize(value.float().numpy(), gguf.GGMLQuantizationType.Q8_0)
                expected = torch.from_numpy(gguf.quants.dequantize(q, gguf.GGMLQuantizationType.Q8_0))
                assert torch.equal(q8.get(key), expected.reshape(value.shape)), key
                assert not torch.equal(q8.get(key), value.float())  # really quantized
                quantized += 1
    assert quantized > 10
    # llama.cpp's T5 names come back as the Hugging Face ones ComfyUI's files use.
    with TensorFile(flux_gguf / "text_encoders" / "t5-plain.gguf") as t5:
        assert sorted(t5.keys()) == sorted(load_file(str(flux_gguf / _flux_tiny.NAMES["t5xxl"])))


def test_original_shapes_recorded_by_the_converter_are_restored(tmp_path: Path) -> None:
    # ComfyUI-GGUF stores tensors of more than four dimensions flattened, with their shape beside.
    weight = torch.randn(2, 3, 1, 2, 2)
    writer = gguf.GGUFWriter(str(tmp_path / "five.gguf"), "wan")
    writer.add_tensor("patch_embedding.weight", weight.reshape(2, 3, 4).numpy())
    writer.add_array("comfy.gguf.orig_shape.patch_embedding.weight", list(weight.shape))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with TensorFile(tmp_path / "five.gguf") as tf:
        assert tf.shape("patch_embedding.weight") == (2, 3, 1, 2, 2)
        assert torch.equal(tf.get("patch_embedding.weight"), weight)


def test_bad_gguf_files_get_clear_errors(tmp_path: Path) -> None:
    (tmp_path / "fake.gguf").write_bytes(b"GGUF but not really")
    with pytest.raises(ModelFileError, match="cannot read fake.gguf as GGUF"):
        TensorFile(tmp_path / "fake.gguf")
    writer = gguf.GGUFWriter(str(tmp_path / "llama.gguf"), "llama")
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ModelFileError, match="architecture 'llama' are not supported yet"):
        TensorFile(tmp_path / "llama.gguf")


def _gguf_graph(unet: str, t5: str) -> dict:
    graph = tiny_workflow("dev")
    graph["12"] = {"class_type": "UnetLoaderGGUF", "inputs": {"unet_name": unet}}
    clip = graph["11"]["inputs"]
    graph["11"] = {
        "class_type": "DualCLIPLoaderGGUF",
        "inputs": {"clip_name1": t5, "clip_name2": clip["clip_name2"], "type": "flux"},
    }
    return graph


def test_flux_workflow_from_gguf_files(flux_gguf: Path, tmp_path: Path) -> None:
    from comfyd.runner import LocalRunner
    from comfyd.settings import Settings

    settings = Settings(models_dir=flux_gguf, output_dir=tmp_path / "out", home=tmp_path / "home")
    graphs = [
        tiny_workflow("dev"),
        _gguf_graph("flux-dev-plain.gguf", "t5-plain.gguf"),
        _gguf_graph("flux-dev-Q8_0.gguf", "t5-Q8_0.gguf"),
    ]
    with LocalRunner(settings) as runner:
        results = [runner.run(graph, node_id="8") for graph in graphs]
        info, clip_info, unet_info = (
            runner.registry.get(name).schema.object_info(runner.env)
            for name in ("UnetLoaderGGUF", "CLIPLoaderGGUF", "UNETLoader")
        )
    assert all(r.ok for r in results), [r.error for r in results]
    safetensors, plain, q8 = (r.values["8"][0] for r in results)
    assert torch.equal(safetensors, plain)  # the same weights give the same picture
    mse = float(((safetensors - q8) ** 2).mean())
    assert 0 < mse and 10 * np.log10(1.0 / mse) > 30  # 8-bit weights: close, not equal
    # The pack's lists: .gguf diffusion models only; text encoders of both kinds.
    assert info["input"]["required"]["unet_name"][0] == ["flux-dev-Q8_0.gguf", "flux-dev-plain.gguf"]
    assert info["category"] == "bootleg" and info["display_name"] == "Unet Loader (GGUF)"
    assert {"t5-plain.gguf", Path(_flux_tiny.NAMES["clip_l"]).name} <= set(
        clip_info["input"]["required"]["clip_name"][0]
    )
    assert not any(n.endswith(".gguf") for n in unet_info["input"]["required"]["unet_name"][0])


WIDE_QUANTS = ("Q8_0", "Q4_K")


@pytest.fixture(scope="module")
def wide_gguf(flux_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 256-wide Flux dev and T5 (rows that hold K-quant blocks) with the tiny CLIP-L and VAE, in
    a folder of their own (the other tests list theirs), as safetensors and as GGUF in Q8_0 and
    Q4_K, and a kohya LoRA for that Flux."""
    root = tmp_path_factory.mktemp("gguf-wide") / "models"
    for part in ("clip_l", "vae"):
        (root / _flux_tiny.NAMES[part]).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(flux_gguf / _flux_tiny.NAMES[part], root / _flux_tiny.NAMES[part])
    flux = write_wide_flux(root / "diffusion_models" / "wide-flux.safetensors", width=256)
    t5 = write_wide_t5(root / "text_encoders" / "wide-t5.safetensors", width=256)
    for quant in WIDE_QUANTS:
        write_gguf(flux, root / "diffusion_models" / f"wide-flux-{quant}.gguf", "flux", quant=quant)
        write_gguf(t5, root / "text_encoders" / f"wide-t5-{quant}.gguf", "t5encoder", quant=quant, t5_names=True)
    gen = torch.Generator().manual_seed(5)
    lora = {}
    for layer, weight in load_file(str(flux)).items():
        if layer.endswith(("img_attn.qkv.weight", "linear1.weight", "img_mlp.0.weight")):
            name = "lora_unet_" + layer.removesuffix(".weight").replace(".", "_")
            lora[f"{name}.lora_down.weight"] = torch.randn(4, weight.shape[1], generator=gen) * 0.1
            lora[f"{name}.lora_up.weight"] = torch.randn(weight.shape[0], 4, generator=gen) * 0.1
            lora[f"{name}.alpha"] = torch.tensor(4.0)
    (root / "loras").mkdir(exist_ok=True)
    save_file(lora, str(root / "loras" / "wide-flux-lora.safetensors"))
    return root


def _wide_graph(unet: str, t5: str, lora: bool = False) -> dict:
    graph = _gguf_graph(unet, t5)
    if unet.endswith(".safetensors"):
        graph["12"] = {"class_type": "UNETLoader", "inputs": {"unet_name": unet, "weight_dtype": "default"}}
    if lora:
        graph["90"] = {"class_type": "LoraLoaderModelOnly",
                       "inputs": {"model": ["12", 0], "lora_name": "wide-flux-lora.safetensors", "strength_model": 1.0}}  # fmt: skip
        for node in graph.values():
            for key, value in node["inputs"].items():
                if value == ["12", 0] and node is not graph["90"]:
                    node["inputs"][key] = ["90", 0]
    return graph


def _quantized_file_bytes(path: Path) -> tuple[int, int]:
    """(bytes of the file's block-quantized tensors, their values as float32). T5's `shared` and
    `encoder.embed_tokens` are one module, so its token embedding counts once either way."""
    reader = gguf.GGUFReader(str(path))
    plain = {"F32", "F16", "BF16"}
    tensors = [t for t in reader.tensors if t.tensor_type.name not in plain]
    return sum(int(t.n_bytes) for t in tensors), sum(int(t.n_elements) * 4 for t in tensors)


@pytest.mark.parametrize("quant", WIDE_QUANTS)
def test_quantized_weights_stay_quantized_and_draw_what_load_time_dequantization_draws(
    quant: str, wide_gguf: Path, tmp_path: Path
) -> None:
    from comfyd.runner import LocalRunner
    from comfyd.settings import Settings

    unet, t5 = f"wide-flux-{quant}.gguf", f"wide-t5-{quant}.gguf"
    graphs = {"plain": _wide_graph(unet, t5)}
    if quant == "Q8_0":  # one quant with a LoRA (its patched layers: fused q/k/v rows, plain ones)
        graphs["lora"] = _wide_graph(unet, t5, lora=True)
    images, loaded = {}, {}
    for at_load in (False, True):
        settings = Settings(models_dir=wide_gguf, output_dir=tmp_path / f"out{at_load}", home=tmp_path / "home",
                            gguf_dequantize_at_load=at_load)  # fmt: skip
        with LocalRunner(settings) as runner:
            results = {name: runner.run(graph, node_id="8") for name, graph in graphs.items()}
            stats = runner.env.models.stats()["loaded"]
        assert all(r.ok for r in results.values()), {k: r.error for k, r in results.items()}
        images[at_load] = {name: r.values["8"][0] for name, r in results.items()}
        loaded[at_load] = {e["name"]: e["host_bytes"] + e["device_bytes"] for e in stats}
    # The same weights, dequantized in each forward or once at load: identical pictures, with a
    # LoRA too (patched in float32 either way, from the same dequantized values).
    for name in graphs:
        assert torch.equal(images[False][name], images[True][name]), name
    assert "lora" not in graphs or not torch.equal(images[False]["lora"], images[False]["plain"])
    # Memory accounting: each quantized tensor counts its blocks, not its float32 values.
    clip = next(n for n in loaded[False] if n.startswith(t5))
    for name, path in ((unet, wide_gguf / "diffusion_models" / unet), (clip, wide_gguf / "text_encoders" / t5)):
        blocks, values = _quantized_file_bytes(path)
        assert blocks > 0 and loaded[False][name] == loaded[True][name] - values + blocks, name
    ratio = loaded[False][unet] / loaded[True][unet]
    assert ratio < {"Q8_0": 0.32, "Q4_K": 0.2}[quant], ratio
