"""Node-output cache: keys by content (not node id), reruns skip work, LRU bound."""

from __future__ import annotations

import copy
import threading
from typing import Any

import torch

from comfyd.engine.cache import UNKNOWN_OBJECT_BYTES, NodeCache, estimate_size, make_cache_key
from comfyd.engine.executor import ExecutionResult, Executor
from comfyd.engine.graph import parse_workflow
from comfyd.models.handles import VaeHandle


def _execute(executor: Executor, body: Any, events: Any = None) -> ExecutionResult:
    result = executor.execute(parse_workflow(body), job_id="job", listener=events)
    assert result.status == "success", result.error
    return result


def test_seed_only_rerun_hits_loader_and_encoders(
    fake: Any, default_prompt: dict[str, Any], events: Any
) -> None:
    executor = Executor(fake.registry, fake.env, cache=NodeCache(2**30))
    first = _execute(executor, default_prompt)
    assert first.cached == []

    default_prompt["3"]["inputs"]["seed"] = 43
    second = _execute(executor, default_prompt, events)
    assert second.cached == ["4", "5", "6", "7"]
    assert events.of("execution_cached")[0]["nodes"] == ["4", "5", "6", "7"]
    assert [d["node"] for d in events.of("executing")] == ["3", "8", "9"]
    assert fake.rec.calls == {"4": 1, "5": 1, "6": 1, "7": 1, "3": 2, "8": 2, "9": 2}
    assert set(second.node_timings) == {"3", "8", "9"}
    assert not torch.equal(first.values["3"][0]["samples"], second.values["3"][0]["samples"])


def test_identical_rerun_is_fully_cached_and_resends_ui(
    fake: Any, default_prompt: dict[str, Any], events: Any
) -> None:
    # ComfyUI's behaviour: output nodes are cached too, and their UI output is sent again.
    executor = Executor(fake.registry, fake.env, cache=NodeCache(2**30), cache_output_nodes=True)
    first = _execute(executor, default_prompt)
    second = _execute(executor, default_prompt, events)
    assert second.cached == ["4", "5", "6", "7", "3", "8", "9"]
    assert sum(fake.rec.calls.values()) == 7
    assert events.types() == ["execution_start", "execution_cached", "executed", "execution_success"]
    assert second.outputs == first.outputs
    assert torch.equal(second.values["3"][0]["samples"], first.values["3"][0]["samples"])


def test_output_nodes_run_on_every_job_by_default(fake: Any, default_prompt: dict[str, Any]) -> None:
    executor = Executor(fake.registry, fake.env, cache=NodeCache(2**30))
    _execute(executor, default_prompt)
    second = _execute(executor, default_prompt)
    assert second.cached == ["4", "5", "6", "7", "3", "8"]
    assert fake.rec.calls["9"] == 2 and fake.rec.calls["8"] == 1
    assert second.outputs["9"]["images"][0]["filename"] == "ComfyUI_00002_.png"


def test_key_ignores_node_ids(fake: Any, default_prompt: dict[str, Any]) -> None:
    executor = Executor(fake.registry, fake.env, cache=NodeCache(2**30))
    _execute(executor, default_prompt)
    renumbered = {str(int(k) + 100): copy.deepcopy(v) for k, v in default_prompt.items()}
    for node in renumbered.values():
        for name, value in node["inputs"].items():
            if isinstance(value, list):
                node["inputs"][name] = [str(int(value[0]) + 100), value[1]]
    renumbered["103"]["inputs"]["seed"] = 7
    second = _execute(executor, renumbered)
    assert second.cached == ["104", "105", "106", "107"]


def test_changed_text_reencodes_only_that_prompt(fake: Any, default_prompt: dict[str, Any]) -> None:
    executor = Executor(fake.registry, fake.env, cache=NodeCache(2**30))
    _execute(executor, default_prompt)
    default_prompt["6"]["inputs"]["text"] = "a red fox"
    second = _execute(executor, default_prompt)
    assert second.cached == ["4", "5", "7"]
    assert fake.rec.calls["6"] == 2 and fake.rec.calls["7"] == 1


def test_hidden_inputs_are_part_of_the_key(fake: Any, default_prompt: dict[str, Any]) -> None:
    executor = Executor(fake.registry, fake.env, cache=NodeCache(2**30), cache_output_nodes=True)
    executor.execute(
        parse_workflow(default_prompt), job_id="a", extra_data={"extra_pnginfo": {"workflow": 1}}
    )
    result = executor.execute(
        parse_workflow(default_prompt), job_id="b", extra_data={"extra_pnginfo": {"workflow": 2}}
    )
    # The PNG metadata differs, so SaveImage runs again; everything upstream is cached.
    assert result.cached == ["4", "5", "6", "7", "3", "8"]
    assert fake.rec.calls["9"] == 2


def test_fingerprint_changes_invalidate(fake: Any, default_prompt: dict[str, Any]) -> None:
    version = {"value": 1}
    loader = fake.registry.get("CheckpointLoaderSimple")
    loader.fingerprint = lambda self, ctx, **inputs: (inputs["ckpt_name"], version["value"])
    executor = Executor(fake.registry, fake.env, cache=NodeCache(2**30), cache_output_nodes=True)
    _execute(executor, default_prompt)
    assert _execute(executor, default_prompt).cached == ["4", "5", "6", "7", "3", "8", "9"]
    version["value"] = 2  # the file changed on disk
    assert _execute(executor, default_prompt).cached == ["5"]
    assert fake.rec.calls["4"] == 2


def test_failing_fingerprint_means_not_cached(fake: Any, default_prompt: dict[str, Any]) -> None:
    def broken(self: Any, ctx: Any, **inputs: Any) -> Any:
        raise OSError("stat failed")

    fake.registry.get("CheckpointLoaderSimple").fingerprint = broken
    executor = Executor(fake.registry, fake.env, cache=NodeCache(2**30))
    _execute(executor, default_prompt)
    assert _execute(executor, default_prompt).cached == ["5"]


def test_zero_budget_caches_nothing(fake: Any, default_prompt: dict[str, Any]) -> None:
    executor = Executor(fake.registry, fake.env, cache=NodeCache(0))
    _execute(executor, default_prompt)
    assert _execute(executor, default_prompt).cached == []
    assert all(count == 2 for count in fake.rec.calls.values())


def test_default_cache_uses_settings_budget(fake: Any) -> None:
    executor = Executor(fake.registry, fake.env)
    assert executor.cache.max_bytes == fake.env.settings.node_cache_bytes


# --- NodeCache itself --------------------------------------------------------------------------


def test_size_estimates() -> None:
    tensor = torch.zeros(2, 4, 8, 8)  # 2048 bytes
    assert estimate_size(tensor) == 2048
    latent = {"samples": tensor, "batch_index": [0, 1]}
    assert estimate_size((latent,)) == 2048 + len("samples") + len("batch_index") + 16
    conditioning = [[torch.zeros(1, 77, 8), {"pooled_output": torch.zeros(1, 8)}]]
    assert estimate_size(conditioning) == 77 * 8 * 4 + len("pooled_output") + 8 * 4
    # A handle points at weights the model manager owns: it counts as a small object.
    big_module = torch.nn.Linear(512, 512)
    handle = VaeHandle(key="k", family="sd1", vae=big_module, device="cpu", dtype=torch.float32)
    assert estimate_size((handle,)) == UNKNOWN_OBJECT_BYTES
    assert estimate_size([tensor, tensor]) == 2048  # the same storage is counted once


def test_lru_bound_evicts_least_recently_used() -> None:
    cache = NodeCache(max_bytes=3000)
    one_kib = lambda: (torch.zeros(256),)  # noqa: E731
    assert cache.put("a", one_kib()) and cache.put("b", one_kib())
    assert cache.get("a") is not None  # a is now the most recent
    cache.put("c", one_kib())  # 3072 > 3000: the least recent (b) goes
    assert "b" not in cache and "a" in cache and "c" in cache
    assert cache.size_bytes == 2048 and len(cache) == 2
    assert cache.stats()["evictions"] == 1
    assert not cache.put("huge", (torch.zeros(1024),))  # 4 KiB alone exceeds the bound
    assert "huge" not in cache and len(cache) == 2
    cache.put("a", (torch.zeros(10),))  # replacing an entry adjusts the total
    assert cache.size_bytes == 1024 + 40


def test_cache_bound_applies_across_runs(fake: Any, default_prompt: dict[str, Any]) -> None:
    # Room for the small entries but not for the 64x64 latents' neighbours: the total stays bounded.
    default_prompt["5"]["inputs"].update(width=512, height=512)  # 64 KiB latents
    cache = NodeCache(max_bytes=100_000)
    executor = Executor(fake.registry, fake.env, cache=cache)
    for seed in range(4):
        default_prompt["3"]["inputs"]["seed"] = seed
        _execute(executor, default_prompt)
        assert cache.size_bytes <= 100_000
    assert cache.stats()["evictions"] > 0


def test_cache_key_depends_on_content_only() -> None:
    base = make_cache_key("KSampler", {"seed": 1, "cfg": 8.0}, {"model": ("k4", 0)})
    assert base == make_cache_key("KSampler", {"cfg": 8.0, "seed": 1}, {"model": ("k4", 0)})
    assert base != make_cache_key("KSampler", {"seed": 2, "cfg": 8.0}, {"model": ("k4", 0)})
    assert base != make_cache_key("KSampler", {"seed": 1, "cfg": 8.0}, {"model": ("k4", 1)})
    assert base != make_cache_key("KSampler", {"seed": 1, "cfg": 8.0}, {"model": ("k5", 0)})
    assert base != make_cache_key("Other", {"seed": 1, "cfg": 8.0}, {"model": ("k4", 0)})


def test_cache_is_thread_safe() -> None:
    cache = NodeCache(max_bytes=50 * 400)

    def worker(offset: int) -> None:
        for i in range(300):
            cache.put(f"{offset}-{i}", (torch.zeros(100),))
            cache.get(f"{offset}-{i - 3}")

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert cache.size_bytes == 400 * len(cache) <= 50 * 400
