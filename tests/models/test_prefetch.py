"""The background tensor conversion of a single-file load changes no weight and shares no memory."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from comfyd.models import loader
from comfyd.models.devices import compute_plan
from comfyd.models.prefetch import Target, TensorPrefetch
from comfyd.models.tensorfile import TensorFile

from .conftest import single_name

CPU = compute_plan("cpu", "auto")


def _tensors(loaded: loader.LoadedCheckpoint) -> dict[str, torch.Tensor]:
    modules = {"unet": loaded.unet, "vae": loaded.vae, **loaded.text_encoders}
    return {f"{m}.{k}": v for m, module in modules.items() for k, v in module.state_dict().items()}


@pytest.mark.parametrize("family", ["sd1", "sdxl"])  # sdxl: openclip's split q/k/v and transposed projection
def test_prefetched_load_is_bit_identical_to_a_sequential_one(
    models_root: Path, family: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = models_root / "checkpoints" / single_name(family)
    prefetched = _tensors(loader.load_single_file(path, CPU))
    taken: list[str] = []
    original_take = TensorPrefetch.take

    def no_prefetch(self: TensorPrefetch, key: str) -> torch.Tensor | None:
        taken.append(key)
        original_take(self, key)
        return None  # materialize converts the stored tensor itself, as before prefetching

    monkeypatch.setattr(TensorPrefetch, "take", no_prefetch)
    sequential = _tensors(loader.load_single_file(path, CPU))
    assert taken, "the loader did not ask the prefetch for tensors"
    assert prefetched.keys() == sequential.keys()
    for key, tensor in prefetched.items():
        assert tensor.dtype == sequential[key].dtype, key
        assert torch.equal(tensor, sequential[key]), key
    # Every parameter has memory of its own (a LoRA patches weights in place), and none of it is
    # the mapped file's.
    storages = [t.untyped_storage().data_ptr() for t in prefetched.values() if t.numel()]
    assert len(storages) == len(set(storages))
    with TensorFile(path) as tf:
        file_ptrs = {tf.get(k).untyped_storage().data_ptr() for k in tf.keys()}
    assert not file_ptrs & set(storages)


def test_a_conversion_error_reaches_the_loader_and_close_stops_the_thread(models_root: Path) -> None:
    path = models_root / "checkpoints" / single_name("sd1")

    def failing(tensor: torch.Tensor, device: torch.device, dtype: torch.dtype, rounding: object) -> torch.Tensor:
        raise OSError("disk went away")

    with TensorFile(path) as tf:
        key = next(k for k in tf.keys() if k.startswith("model.diffusion_model.") and tf.dtype(k).is_floating_point)
        prefetch = TensorPrefetch(tf, [Target("model.diffusion_model.", torch.device("cpu"), torch.float32)], failing)
        with pytest.raises(OSError, match="disk went away"):
            prefetch.take(key)
        assert prefetch.take("not.a.planned.key") is None
        prefetch.close()
        assert not prefetch._thread.is_alive()
