"""The model manager and CheckpointLoaderSimple: every family loads, runs, and is shared."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
import torch

from comfyd.models import manager as manager_module
from comfyd.models.handles import ClipHandle, ModelHandle, VaeHandle
from comfyd.models.manager import ModelManager
from comfyd.models.paths import UnsafeModelName
from comfyd.models.tiny import make_tiny_checkpoint, make_tiny_embedding
from comfyd.nodes.loaders.checkpoints import CheckpointLoaderSimple

from .conftest import FAMILIES, diffusers_name, make_settings, node_context, single_name


def _forward(model: ModelHandle, clip: ClipHandle, vae: VaeHandle) -> tuple[torch.Tensor, torch.Tensor]:
    """One UNet step on text features from the text encoder(s), and one VAE decode."""
    hidden = []
    pooled = None
    with torch.no_grad(), clip.patched() as encoders, model.patched() as unet:
        for name, encoder in encoders.items():
            ids = clip.tokenizers[name](
                "a red fox", padding="max_length", max_length=77, return_tensors="pt"
            ).input_ids
            out = encoder(ids, output_hidden_states=True)
            hidden.append(out.hidden_states[-2])
            pooled = getattr(out, "text_embeds", None)
        context = torch.cat(hidden, dim=-1)
        extra = {}
        if model.family == "sdxl":
            extra["added_cond_kwargs"] = {
                "text_embeds": pooled,
                "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]]),
            }
        latent = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
        prediction = unet(latent, torch.tensor([999]), context, **extra).sample
        image = vae.vae.decode(latent / model.latent_scale).sample
    return prediction, image


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("fmt", ["single", "diffusers"])
def test_checkpoint_loader_node_loads_every_family_and_it_runs(
    manager: ModelManager, family: str, fmt: str
) -> None:
    name = single_name(family) if fmt == "single" else diffusers_name(family)
    model, clip, vae = CheckpointLoaderSimple().run(node_context(manager), ckpt_name=name)
    assert (model.family, clip.family, vae.family) == (family, family, family)
    assert model.prediction == ("v" if family == "sd2" else "eps")
    assert model.latent_scale == (0.13025 if family == "sdxl" else 0.18215)
    assert set(clip.text_encoders) == {"sd1": {"l"}, "sd2": {"h"}, "sdxl": {"l", "g"}}[family]
    assert (vae.latent_channels, vae.downscale) == (4, 8)
    prediction, image = _forward(model, clip, vae)
    assert prediction.shape == (1, 4, 8, 8) and torch.isfinite(prediction).all()
    assert image.shape == (1, 3, 64, 64) and torch.isfinite(image).all() and image.abs().max() > 0.01


def test_second_load_loads_nothing_and_returns_the_same_objects(models_root: Path) -> None:
    manager = ModelManager(make_settings(models_root, device="cpu"))
    first = manager.load_checkpoint(single_name("sd1"))
    second = manager.load_checkpoint(single_name("sd1"))
    assert second is first and second[0].unet is first[0].unet
    stats = manager.stats()
    assert (stats["loads"], stats["hits"]) == (1, 1)
    assert stats["host_bytes"] > 0 and stats["loaded"][0]["kind"] == "checkpoint"


def test_concurrent_loads_of_one_file_load_once(models_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    manager = ModelManager(make_settings(models_root, device="cpu"))
    calls = []
    real = manager_module.loader.load_single_file
    gate = threading.Event()

    def slow_load(*args: object, **kwargs: object):
        calls.append(1)
        gate.wait(5)
        return real(*args, **kwargs)

    monkeypatch.setattr(manager_module.loader, "load_single_file", slow_load)
    results: list[object] = []
    threads = [
        threading.Thread(target=lambda: results.append(manager.load_checkpoint(single_name("sd1"))))
        for _ in range(3)
    ]
    for thread in threads:
        thread.start()
    gate.set()
    for thread in threads:
        thread.join(30)
    assert len(calls) == 1 and len(results) == 3
    assert all(r is results[0] for r in results)
    assert manager.stats()["loads"] == 1


def test_lru_evicts_the_least_recently_used_model_under_a_small_budget(models_root: Path) -> None:
    probe = ModelManager(make_settings(models_root, device="cpu"))
    probe.load_checkpoint(single_name("sd1"))
    one_model = probe.stats()["host_bytes"]
    manager = ModelManager(
        make_settings(models_root, device="cpu", model_cache_host_bytes=int(one_model * 2.5))
    )
    manager.load_checkpoint(single_name("sd1"))
    manager.load_checkpoint(single_name("sd2"))
    manager.load_checkpoint(single_name("sd1"))  # sd1 is now the most recently used
    manager.load_checkpoint(diffusers_name("sd1"))  # over budget: sd2 goes
    names = [entry["name"] for entry in manager.stats()["loaded"]]
    assert names == [single_name("sd1"), diffusers_name("sd1")]
    assert manager.stats()["evictions"] == 1
    manager.load_checkpoint(single_name("sd2"))
    assert manager.stats()["loads"] == 4


def test_free_drops_everything(models_root: Path) -> None:
    manager = ModelManager(make_settings(models_root, device="cpu"))
    first = manager.load_checkpoint(single_name("sd1"))
    manager.free()
    assert manager.stats()["loaded"] == [] and manager.stats()["host_bytes"] == 0
    again = manager.load_checkpoint(single_name("sd1"))
    assert again[0].unet is not first[0].unet and manager.stats()["loads"] == 2


def test_a_changed_file_is_loaded_again(tmp_path: Path) -> None:
    path = make_tiny_checkpoint(tmp_path / "checkpoints", "sd1", "single", seed=1)
    manager = ModelManager(make_settings(tmp_path, device="cpu"))
    first = manager.load_checkpoint(path.name)
    before = manager.fingerprint("checkpoints", path.name)
    make_tiny_checkpoint(tmp_path / "new", "sd1", "single", seed=1).replace(path)
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    assert manager.fingerprint("checkpoints", path.name) != before
    assert manager.load_checkpoint(path.name) is not first


def test_unsafe_checkpoint_name_is_refused(manager: ModelManager) -> None:
    with pytest.raises(UnsafeModelName):
        manager.load_checkpoint("../checkpoints/" + single_name("sd1"))


def test_embeddings_in_every_format(tmp_path: Path) -> None:
    folder = tmp_path / "embeddings"
    make_tiny_embedding(folder, "style", "sd1", vectors=3)
    make_tiny_embedding(folder, "xl-style", "sdxl", vectors=2)
    torch.save({"string_to_param": {"*": torch.randn(2, 768)}, "name": "old"}, folder / "old.pt")
    manager = ModelManager(make_settings(tmp_path, device="cpu"))
    style = manager.load_embedding("style")
    assert style is not None and style["*"].shape == (3, 32)
    xl = manager.load_embedding("xl-style.safetensors")
    assert xl is not None and set(xl) == {"l", "g"}
    # Pickle embeddings are skipped (with a warning) unless allowed; then read weights_only.
    assert manager.load_embedding("old") is None
    allowed = ModelManager(make_settings(tmp_path, device="cpu", allow_pickle=True)).load_embedding("old")
    assert allowed is not None and allowed["l"].shape == (2, 768)
    assert manager.load_embedding("missing") is None
    assert manager.load_embedding("../../etc/passwd") is None
