"""The model family registry: the shipped families' declarations, and a family added as one module.

The "toy" family is written as a module into a fresh package and found by `families.discover`,
the same walk that finds comfyd's own families; it specialises sd1 (`refines`), recognising SD1
files that carry a marker tensor, with its own latent scale. Nothing else is edited, yet the
tiny writer writes it, detection picks it over sd1, and the model manager loads it.
"""

from __future__ import annotations

import importlib
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from comfyd.models import detect, families, loader
from comfyd.models.families import Family
from comfyd.models.handles import ModelHandle
from comfyd.models.tensorfile import TensorFile
from comfyd.models.text_encoding import encode_text
from comfyd.models.tiny import make_tiny, make_tiny_checkpoint
from comfyd.sampling.protocols import SamplingModel

from .conftest import make_settings

TOY_MODULE = textwrap.dedent(
    '''
    from dataclasses import fields

    import torch

    from comfyd.models.families import LatentFormat, sd1


    class Toy(type(sd1.FAMILY)):
        def recognise(self, prefixes, keys):
            return super().recognise(prefixes, keys) if "toy.marker" in keys else None

        def extra_single_file_tensors(self):
            return {**super().extra_single_file_tensors(), "toy.marker": torch.ones(1)}


    _SD1 = {f.name: getattr(sd1.FAMILY, f.name) for f in fields(sd1.FAMILY)}
    FAMILY = Toy(**{
        **_SD1,
        "name": "toy",
        "refines": "sd1",
        "latent": LatentFormat(channels=4, scale_factor=0.5),
        "config_dir": sd1.FAMILY.configs,
    })
    '''
)


@pytest.fixture
def toy_family(tmp_path: Path) -> Iterator[Family]:
    package = tmp_path / "toy_families"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "toy.py").write_text(TOY_MODULE)
    (package / "_helpers.py").write_text("FAMILY = 'not a family: private modules are skipped'\n")
    sys.path.insert(0, str(tmp_path))
    try:
        found = families.discover(importlib.import_module("toy_families"))
        assert [f.name for f in found] == ["toy"]
        yield families.get("toy")
    finally:
        families.unregister("toy")
        sys.path.remove(str(tmp_path))
        for name in [m for m in sys.modules if m == "toy_families" or m.startswith("toy_families.")]:
            del sys.modules[name]


def test_the_shipped_families_are_found_and_declare_what_the_code_needs() -> None:
    assert {"sd1", "sd2", "sdxl"} <= set(families.names())
    for family in families.all_families():
        assert families.get(family.name) is family
        # An encoder without a config file (Flux's T5) is built from its file's shapes.
        for config in ("unet.json", "vae.json", *(e.config for e in family.encoders if e.config)):
            assert (family.configs / config).is_file(), f"{family.name}: {config} is not shipped"
        assert len(set(family.encoder_names)) == len(family.encoders)
        components = [c for e in family.encoders for c in e.lora_components]
        assert len(components) == len(set(components)), f"{family.name}: a LoRA component patches two encoders"
        assert set(family.tiny_predictions) <= {"eps", "v"}
        assert family.sampling.prediction in ("eps", "v")
        if family.latent.rgb_factors is not None:
            assert len(family.latent.rgb_factors) == family.latent.channels
        if len(family.encoders) > 1 and all(e.kind == "clip" for e in family.encoders):
            assert sorted(family.context_order) == sorted(family.encoder_names)
        assert set(family.context_order) <= set(family.encoder_names)


def test_a_model_handle_is_what_the_sampler_takes() -> None:
    handle = ModelHandle("k", "sdxl", "eps", object(), 0.13025, torch.device("cpu"), torch.float32)
    assert isinstance(handle, SamplingModel)
    assert handle.vector_conditioning is families.get("sdxl").vector_conditioning is not None
    v_model = ModelHandle("k", "sd2", "v", object(), 0.18215, torch.device("cpu"), torch.float32)
    assert v_model.model_sampling.prediction == "v" and v_model.vector_conditioning is None
    assert v_model.model_sampling.schedule.num_timesteps == 1000


def test_unknown_family_names_the_known_ones() -> None:
    with pytest.raises(ValueError, match="unknown model family 'sd9'; known: .*sd1"):
        families.get("sd9")


def test_a_family_registered_twice_under_one_name_is_refused(toy_family: Family) -> None:
    from dataclasses import replace

    with pytest.raises(ValueError, match="registered twice"):
        families.register(replace(toy_family))


def test_a_dropped_in_family_module_is_written_and_detected(tmp_path: Path, toy_family: Family) -> None:
    checkpoints = tmp_path / "models" / "checkpoints"
    toy, toy_folder = make_tiny(tmp_path / "models", family="toy")
    sd1 = make_tiny_checkpoint(checkpoints, "sd1", "single", seed=0)
    assert loader.diffusers_family(toy_folder)[0] == "toy"
    with TensorFile(toy) as tf:
        info = detect.detect_checkpoint(tf)
    assert (info.family, info.latent_scale, info.prediction) == ("toy", 0.5, "eps")
    with TensorFile(sd1) as tf:
        assert detect.detect_checkpoint(tf).family == "sd1"  # the refined family keeps its own files


def test_a_dropped_in_family_loads_and_encodes(tmp_path: Path, toy_family: Family) -> None:
    toy = make_tiny_checkpoint(tmp_path / "models" / "checkpoints", "toy", "single", seed=0)
    from comfyd.models.manager import ModelManager

    manager = ModelManager(make_settings(tmp_path / "models", device="cpu"))
    model, clip, _vae = manager.load_checkpoint(toy.name)
    assert (model.family, model.latent_scale, clip.family) == ("toy", 0.5, "toy")
    assert model.model_sampling.prediction == "eps" and model.vector_conditioning is None
    cond = encode_text(clip, "a toy")
    assert cond[0][0].shape == (1, 77, 32) and torch.isfinite(cond[0][0]).all()


def test_two_families_claiming_one_file_without_refining_is_an_error(tmp_path: Path, toy_family: Family) -> None:
    from dataclasses import replace

    rival = replace(toy_family, name="toy-rival", refines=None)
    families.register(rival)
    try:
        path = make_tiny_checkpoint(tmp_path, "toy", "single", seed=0)
        with TensorFile(path) as tf, pytest.raises(detect.UnknownCheckpointLayout, match="disagree"):
            detect.detect_checkpoint(tf)
    finally:
        families.unregister("toy-rival")
