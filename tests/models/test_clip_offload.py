"""Text encoders offloaded to host memory when the device budget needs room or, by the policy, when
their encode ends, and brought back to encode (comfyd.models.clip_residency,
comfyd.models.text_encoder_offload and the model manager's budgets).

There is no accelerator here, so the CPU stands in for the device and the meta device for host
memory (`manager.host_device`). Moving to meta drops a tensor's data, so `_MetaHost` keeps each
offloaded module's tensors aside and puts them back when it returns: the encoders really change
device, and an encode that ran on the offloaded (meta) encoders could not give the same numbers.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
import torch

from comfyd.models import clip_residency
from comfyd.models.families import _flux_tiny
from comfyd.models.handles import ClipHandle
from comfyd.models.manager import ModelManager, module_bytes
from comfyd.models.text_encoding import encode_text
from comfyd.models.tiny import make_tiny_checkpoint

from .conftest import make_settings, single_name

META = torch.device("meta")
T5_NAME = Path(_flux_tiny.NAMES["t5xxl"]).name


class _MetaHost:
    """Host memory for modules moved to the meta device: their tensors wait here meanwhile."""

    def __init__(self) -> None:
        self.stash: dict[int, dict[str, torch.Tensor]] = {}
        self.moves: list[str] = []

    def move(self, module: Any, device: torch.device) -> None:
        if device.type == "meta":
            self.stash[id(module)] = {name: t.detach().clone() for name, t in _tensors(module)}
            module.to(device)
        else:
            saved = self.stash.pop(id(module))
            module.to_empty(device=device)
            with torch.no_grad():
                for name, tensor in _tensors(module):
                    tensor.copy_(saved[name])
        self.moves.append(device.type)


def _tensors(module: Any) -> list[tuple[str, torch.Tensor]]:
    return [*module.named_parameters(), *module.named_buffers()]


def _devices(clip: ClipHandle) -> set[str]:
    return {t.device.type for enc in clip.text_encoders.values() for _, t in _tensors(enc)}


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("offload-models")
    _flux_tiny.write_tiny_t5(root / _flux_tiny.NAMES["t5xxl"], seed=0)
    make_tiny_checkpoint(root / "checkpoints", "sd1", "single", seed=0)
    return root


@pytest.fixture
def host(monkeypatch: pytest.MonkeyPatch) -> _MetaHost:
    host = _MetaHost()
    monkeypatch.setattr(clip_residency, "move_module", host.move)
    return host


@pytest.fixture(scope="module")
def sizes(root: Path) -> tuple[int, int]:
    """Bytes of the T5 CLIP entry and of the sd1 checkpoint entry, as the device would hold them."""
    probe = _manager(root, device_bytes=1 << 40, host_bytes=1 << 40)
    t5 = module_bytes(*probe.load_clip([T5_NAME], "chroma").text_encoders.values(), host=META)[0]
    model, clip, vae = probe.load_checkpoint(single_name("sd1"))
    return t5, module_bytes(model.unet, vae.vae, *clip.text_encoders.values(), host=META)[0]


def _manager(root: Path, device_bytes: int, host_bytes: int) -> ModelManager:
    """Offloads on pressure only (the after-encode policy is tested below)."""
    return _policy_manager(root, "on_pressure", device_bytes, host_bytes)


def test_an_idle_text_encoder_goes_to_the_host_and_comes_back_to_encode(root: Path, sizes: tuple[int, int], host: _MetaHost) -> None:
    t5_bytes, sd1_bytes = sizes
    manager = _manager(root, device_bytes=t5_bytes + sd1_bytes - 1, host_bytes=t5_bytes + sd1_bytes)
    clip = manager.load_clip([T5_NAME], "chroma")
    before = encode_text(clip, "a red fox in the snow")
    assert manager.stats()["device_bytes"] == t5_bytes

    # The checkpoint does not fit beside the T5: the T5 (least recently used) moves to the host.
    _, sd1_clip, _ = manager.load_checkpoint(single_name("sd1"))
    stats = manager.stats()
    assert (stats["offloads"], stats["evictions"]) == (1, 0)
    assert [e["name"] for e in stats["loaded"]] == [T5_NAME, single_name("sd1")]
    assert (stats["device_bytes"], stats["host_bytes"]) == (sd1_bytes, t5_bytes)
    assert _devices(clip) == {"meta"} and _devices(sd1_clip) == {"cpu"}

    # Encoding again brings it back first; the room comes from the checkpoint's CLIP, which is
    # enough (the checkpoint's UNet and VAE stay on the device).
    after = encode_text(clip.with_layer(None), "a red fox in the snow")
    stats = manager.stats()
    assert (stats["returns"], stats["offloads"], stats["evictions"]) == (1, 2, 0)
    assert _devices(clip) == {"cpu"} and _devices(sd1_clip) == {"meta"}
    sd1_clip_bytes = module_bytes(*sd1_clip.text_encoders.values(), host=META)[1]
    assert (stats["device_bytes"], stats["host_bytes"]) == (t5_bytes + sd1_bytes - sd1_clip_bytes, sd1_clip_bytes)
    assert stats["device_bytes"] <= stats["device_budget"]
    assert host.moves == ["meta", "meta", "cpu"]
    assert torch.equal(before[0][0], after[0][0])

    # The checkpoint's CLIP comes back in turn, and the T5 goes out again.
    model, sd1_clip_again, _ = manager.load_checkpoint(single_name("sd1"))
    assert sd1_clip_again is sd1_clip
    encode_text(sd1_clip, "a red fox")
    assert _devices(sd1_clip) == {"cpu"} and _devices(clip) == {"meta"}
    assert (manager.stats()["returns"], manager.stats()["offloads"]) == (2, 3)


def test_without_host_room_the_text_encoder_is_dropped_unmoved(root: Path, sizes: tuple[int, int], host: _MetaHost) -> None:
    t5_bytes, sd1_bytes = sizes
    manager = _manager(root, device_bytes=t5_bytes + sd1_bytes - 1, host_bytes=t5_bytes - 1)
    clip = manager.load_clip([T5_NAME], "chroma")
    manager.load_checkpoint(single_name("sd1"))
    stats = manager.stats()
    assert (stats["offloads"], stats["evictions"]) == (0, 1)
    assert [e["name"] for e in stats["loaded"]] == [single_name("sd1")]
    assert _devices(clip) == {"cpu"} and host.moves == []


def test_a_text_encoder_in_use_is_never_moved(root: Path, sizes: tuple[int, int], host: _MetaHost) -> None:
    t5_bytes, sd1_bytes = sizes
    manager = _manager(root, device_bytes=t5_bytes + sd1_bytes - 1, host_bytes=t5_bytes + sd1_bytes)
    clip = manager.load_clip([T5_NAME], "chroma")
    with clip.patched() as encoders:  # an encode of another job is running on it
        manager.load_checkpoint(single_name("sd1"))
        assert {t.device.type for enc in encoders.values() for _, t in _tensors(enc)} == {"cpu"}
    stats = manager.stats()
    assert (stats["offloads"], stats["evictions"]) == (0, 1)  # dropped from the cache, as before
    assert host.moves == []


def test_handles_onto_the_same_encoders_share_one_residency(root: Path) -> None:
    manager = ModelManager(make_settings(root, device="cpu"))
    clip = manager.load_clip([T5_NAME], "chroma")
    assert clip.residency is not None
    assert clip.with_layer(-2).residency is clip.residency
    assert clip.with_loras().residency is clip.residency


def test_on_the_cpu_nothing_is_offloaded(root: Path, host: _MetaHost) -> None:
    manager = ModelManager(make_settings(root, device="cpu", model_cache_host_bytes=1))
    clip = manager.load_clip([T5_NAME], "chroma")
    manager.load_checkpoint(single_name("sd1"))
    assert manager.stats()["offloads"] == 0 and host.moves == []
    assert _devices(clip) == {"cpu"}


@pytest.mark.slow  # two threads of encodes on a shared CPU: 2-5 s
def test_concurrent_encodes_that_push_each_other_out_finish_with_the_same_numbers(
    root: Path, sizes: tuple[int, int], host: _MetaHost
) -> None:
    t5_bytes, sd1_bytes = sizes
    manager = _manager(root, device_bytes=t5_bytes + sd1_bytes - 1, host_bytes=t5_bytes + sd1_bytes)
    t5 = manager.load_clip([T5_NAME], "chroma")
    sd1 = manager.load_checkpoint(single_name("sd1"))[1]
    expected = {id(clip): encode_text(clip, "a fox")[0][0] for clip in (t5, sd1)}
    failures: list[BaseException] = []

    def encode_repeatedly(clip: ClipHandle) -> None:
        try:
            for _ in range(4):
                # Within float rounding, not bit for bit: on the CPU the device gate gives a
                # computation fewer threads while another runs, which reorders sums (~1e-6).
                torch.testing.assert_close(encode_text(clip, "a fox")[0][0], expected[id(clip)], rtol=0, atol=1e-5)
        except BaseException as exc:  # reported by the main thread
            failures.append(exc)

    threads = [threading.Thread(target=encode_repeatedly, args=(clip,)) for clip in (t5, sd1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not any(thread.is_alive() for thread in threads), "deadlock between encodes and the cache"
    assert failures == []
    stats = manager.stats()
    assert stats["device_bytes"] <= stats["device_budget"] and stats["offloads"] >= 1


# --- the after-encode policy (COMFYD_TEXT_ENCODER_OFFLOAD, comfyd.models.text_encoder_offload) ---
def _policy_manager(root: Path, policy: str, device_bytes: int, host_bytes: int) -> ModelManager:
    manager = ModelManager(
        make_settings(root, device="cpu", model_cache_device_bytes=device_bytes, model_cache_host_bytes=host_bytes,
                      text_encoder_offload=policy)
    )  # fmt: skip
    manager.host_device = META  # the CPU plays the device, meta the host
    return manager


@pytest.mark.parametrize(("policy", "budget_share", "offloaded"), [
    ("after_encode", 100, True),
    ("auto", 3, True),  # the T5 takes a third of the device budget: large
    ("auto", 5, False),  # a fifth: small, it stays until the budget needs room
    ("on_pressure", 1, False),
    ("never", 1, False),
])  # fmt: skip
def test_a_large_text_encoder_goes_to_the_host_when_its_encode_ends(
    root: Path, sizes: tuple[int, int], host: _MetaHost, policy: str, budget_share: int, offloaded: bool
) -> None:
    t5_bytes, _ = sizes
    manager = _policy_manager(root, policy, device_bytes=budget_share * t5_bytes, host_bytes=t5_bytes)
    clip = manager.load_clip([T5_NAME], "chroma")
    before = encode_text(clip, "a red fox in the snow")
    stats = manager.stats()
    assert (stats["offloads"], stats["offloads_after_encode"]) == ((1, 1) if offloaded else (0, 0))
    assert (stats["device_bytes"], stats["host_bytes"]) == ((0, t5_bytes) if offloaded else (t5_bytes, 0))
    assert _devices(clip) == ({"meta"} if offloaded else {"cpu"})
    # The next encode brings it back, gives the same numbers, and it leaves again when done.
    after = encode_text(clip, "a red fox in the snow")
    assert torch.equal(before[0][0], after[0][0])
    assert manager.stats()["returns"] == (1 if offloaded else 0)
    assert host.moves == (["meta", "cpu", "meta"] if offloaded else [])


def test_after_encode_waits_for_the_last_encode_and_for_host_room(
    root: Path, sizes: tuple[int, int], host: _MetaHost
) -> None:
    t5_bytes, _ = sizes
    manager = _policy_manager(root, "after_encode", device_bytes=1 << 40, host_bytes=t5_bytes)
    clip = manager.load_clip([T5_NAME], "chroma")
    with clip.patched():  # another job's encode is running on it
        encode_text(clip, "a fox")
        assert _devices(clip) == {"cpu"} and host.moves == []
    assert _devices(clip) == {"meta"} and host.moves == ["meta"]  # the last user left

    # Without host room it stays on the device.
    tight = _policy_manager(root, "after_encode", device_bytes=1 << 40, host_bytes=t5_bytes - 1)
    clip = tight.load_clip([T5_NAME], "chroma")
    encode_text(clip, "a fox")
    assert _devices(clip) == {"cpu"} and tight.stats()["offloads"] == 0


def test_never_drops_instead_of_offloading_under_pressure(root: Path, sizes: tuple[int, int], host: _MetaHost) -> None:
    t5_bytes, sd1_bytes = sizes
    manager = _policy_manager(root, "never", device_bytes=t5_bytes + sd1_bytes - 1, host_bytes=t5_bytes + sd1_bytes)
    manager.load_clip([T5_NAME], "chroma")
    manager.load_checkpoint(single_name("sd1"))
    stats = manager.stats()
    assert (stats["offloads"], stats["evictions"]) == (0, 1) and host.moves == []


def test_the_offload_rule() -> None:
    from comfyd.models.text_encoder_offload import offloads_after_encode

    gb = 1024**3
    # Flux on a 24 GB GPU (budget ~19 GB): T5-XXL fp16 (~9.5 GB) leaves after encoding, CLIP-L stays.
    assert offloads_after_encode("auto", int(9.5 * gb), int(19.2 * gb))
    assert not offloads_after_encode("auto", gb // 4, int(19.2 * gb))
    assert not offloads_after_encode("auto", gb, 0)  # no device budget: no accelerator
    assert offloads_after_encode("after_encode", 1, 1 << 50)
    assert not offloads_after_encode("on_pressure", 1 << 50, 1)
