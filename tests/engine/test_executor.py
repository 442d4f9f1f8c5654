"""Executor: order, events, parallel mode, interrupts, errors, timings (fake nodes, no models)."""

from __future__ import annotations

import threading
from typing import Any

import pytest
import torch

from comfyd.engine.cache import NodeCache
from comfyd.engine.executor import ExecutionResult, Executor
from comfyd.engine.graph import parse_workflow

ALL_NODES = ["4", "5", "6", "7", "3", "8", "9"]


def _run(
    fake: Any,
    body: Any,
    events: Any = None,
    *,
    cache: NodeCache | None = None,
    interrupt: threading.Event | None = None,
    job_id: str = "job-1",
    **extra: Any,
) -> ExecutionResult:
    executor = Executor(fake.registry, fake.env, cache=cache if cache is not None else NodeCache(2**30))
    return executor.execute(
        parse_workflow(body), job_id=job_id, listener=events, interrupt=interrupt, **extra
    )


def test_sequential_events_in_comfyui_order(fake: Any, default_prompt: dict[str, Any], events: Any) -> None:
    result = _run(fake, default_prompt, events, extra_data={"extra_pnginfo": {"workflow": {"w": 1}}})
    assert result.status == "success", result.error
    executing = [d["node"] for d in events.of("executing")]
    assert executing == ALL_NODES
    assert events.types() == [
        "execution_start",
        "execution_cached",
        *["executing"] * 5,
        *["progress"] * 3,
        "executing",
        "executing",
        "executed",
        "execution_success",
    ]
    assert all(data["prompt_id"] == "job-1" for _, data in events.events)
    assert events.of("execution_cached") == [
        {"nodes": [], "prompt_id": "job-1", "timestamp": pytest.approx(0, abs=1e13)}
    ]
    assert [(p["value"], p["max"], p["node"]) for p in events.of("progress")] == [
        (1, 3, "3"),
        (2, 3, "3"),
        (3, 3, "3"),
    ]
    assert events.of("executing")[0] == {"node": "4", "display_node": "4", "prompt_id": "job-1"}
    [executed] = events.of("executed")
    assert executed["node"] == "9" and executed["display_node"] == "9"
    assert executed["output"] == {
        "images": [{"filename": "ComfyUI_00001_.png", "subfolder": "", "type": "output"}]
    }
    assert isinstance(events.of("execution_start")[0]["timestamp"], int)

    assert result.outputs == {"9": executed["output"]}
    assert set(result.node_timings) == set(ALL_NODES) and all(t >= 0 for t in result.node_timings.values())
    assert result.cached == [] and result.error is None
    assert result.executed == ALL_NODES
    # Values of the followed node (the sampler's LATENT) and of the output node.
    assert set(result.values) == {"3", "9"}
    assert result.values["3"][0]["samples"].shape == (1, 4, 8, 8)
    assert result.values["9"] == ()


def test_inputs_converted_optional_omitted_hidden_passed(fake: Any, default_prompt: dict[str, Any]) -> None:
    default_prompt["3"]["inputs"].update(steps="2", cfg="6", seed="5")
    default_prompt["10"] = {"class_type": "PreviewAny", "inputs": {}}
    result = _run(fake, default_prompt, extra_data={"extra_pnginfo": {"workflow": {"w": 1}}})
    assert result.status == "success", result.error
    sampler = fake.rec.kwargs["3"]
    assert (sampler["steps"], sampler["cfg"], sampler["seed"]) == (2, 6.0, 5)
    assert type(sampler["steps"]) is int and type(sampler["cfg"]) is float
    save = fake.rec.kwargs["9"]
    assert save["prompt"] == default_prompt and save["extra_pnginfo"] == {"workflow": {"w": 1}}
    assert fake.rec.kwargs["10"] == {"unique_id": "10"}
    assert result.outputs["10"] == {"text": [["unique_id"]]}


def test_only_needed_nodes_run(fake: Any, default_prompt: dict[str, Any]) -> None:
    default_prompt["20"] = {
        "class_type": "EmptyLatentImage",
        "inputs": {"width": 64, "height": 64, "batch_size": 1},
    }
    default_prompt["21"] = {"class_type": "CLIPTextEncode", "inputs": {"text": "unused", "clip": ["4", 1]}}
    result = _run(fake, default_prompt)
    assert result.status == "success"
    assert set(fake.rec.calls) == set(ALL_NODES)
    assert all(count == 1 for count in fake.rec.calls.values())


def test_followed_node_runs_even_if_no_output_needs_it(fake: Any, default_prompt: dict[str, Any]) -> None:
    default_prompt["20"] = {
        "class_type": "EmptyLatentImage",
        "inputs": {"width": 64, "height": 32, "batch_size": 2},
    }
    result = _run(fake, {"prompt": default_prompt, "node_id": "20"})
    assert fake.rec.calls["20"] == 1
    assert result.values["20"][0]["samples"].shape == (2, 4, 4, 8)
    assert "3" not in result.values


def test_parallel_overlaps_independent_branches(
    fake: Any, default_prompt: dict[str, Any], events: Any
) -> None:
    fake.rec.sleep["CLIPTextEncode"] = 0.3
    result = _run(fake, {"prompt": default_prompt, "execution_mode": "parallel"}, events)
    assert result.status == "success", result.error
    (start6, end6), (start7, end7) = fake.rec.spans["6"], fake.rec.spans["7"]
    assert start6 < end7 and start7 < end6, "the two text encoders did not run at the same time"
    # Dependencies still hold: the sampler starts after both encoders ended.
    assert fake.rec.spans["3"][0] >= max(end6, end7)
    assert fake.rec.spans["8"][0] >= fake.rec.spans["3"][1]
    assert sorted(d["node"] for d in events.of("executing")) == sorted(ALL_NODES)
    assert events.types()[0] == "execution_start" and events.types()[-1] == "execution_success"


def test_parallel_gives_the_same_results_as_sequential(fake: Any, default_prompt: dict[str, Any]) -> None:
    sequential = _run(fake, default_prompt)
    parallel = _run(fake, {"prompt": default_prompt, "execution_mode": "parallel"})
    assert parallel.status == sequential.status == "success"
    assert torch.equal(parallel.values["3"][0]["samples"], sequential.values["3"][0]["samples"])
    assert set(parallel.node_timings) == set(sequential.node_timings)
    assert parallel.outputs.keys() == sequential.outputs.keys()


def test_interrupt_between_nodes(fake: Any, default_prompt: dict[str, Any], events: Any) -> None:
    interrupt = threading.Event()

    def listener(event: str, data: dict[str, Any]) -> None:
        events(event, data)
        if event == "executing" and data["node"] == "6":
            interrupt.set()  # node 6 runs to its end; node 7 must not start

    result = _run(fake, default_prompt, listener, interrupt=interrupt)
    assert result.status == "interrupted"
    assert [d["node"] for d in events.of("executing")] == ["4", "5", "6"]
    assert events.of("execution_interrupted") == [
        {
            "prompt_id": "job-1",
            "node_id": "7",
            "node_type": "CLIPTextEncode",
            "executed": ["4", "5", "6"],
            "timestamp": pytest.approx(0, abs=1e13),
        }
    ]
    assert "execution_success" not in events.types()
    assert fake.rec.calls["3"] == 0 and fake.rec.calls["7"] == 0
    assert result.error is not None and result.error["node_id"] == "7" and not result.error["retryable"]


def test_interrupt_inside_progress(fake: Any, default_prompt: dict[str, Any], events: Any) -> None:
    interrupt = threading.Event()
    default_prompt["3"]["inputs"]["steps"] = 10
    fake.rec.on_step = lambda step: interrupt.set() if step == 2 else None
    result = _run(fake, default_prompt, events, interrupt=interrupt)
    assert result.status == "interrupted"
    assert [p["value"] for p in events.of("progress")] == [1, 2, 3]
    [data] = events.of("execution_interrupted")
    assert data["node_id"] == "3" and data["node_type"] == "KSampler"
    assert fake.rec.calls["8"] == 0
    assert "3" not in result.node_timings


def test_interrupt_already_set_runs_nothing(fake: Any, default_prompt: dict[str, Any], events: Any) -> None:
    interrupt = threading.Event()
    interrupt.set()
    result = _run(fake, {"prompt": default_prompt, "execution_mode": "parallel"}, events, interrupt=interrupt)
    assert result.status == "interrupted"
    assert sum(fake.rec.calls.values()) == 0
    assert events.types() == ["execution_start", "execution_cached", "execution_interrupted"]


def test_node_error_event_and_result(fake: Any, default_prompt: dict[str, Any], events: Any) -> None:
    fake.rec.fail["VAEDecode"] = ValueError("decoder exploded")
    result = _run(fake, default_prompt, events)
    assert result.status == "error"
    [data] = events.of("execution_error")
    assert set(data) == {
        "prompt_id",
        "node_id",
        "node_type",
        "executed",
        "exception_message",
        "exception_type",
        "traceback",
        "current_inputs",
        "current_outputs",
        "timestamp",
    }
    assert (data["node_id"], data["node_type"]) == ("8", "VAEDecode")
    assert (data["exception_type"], data["exception_message"]) == ("ValueError", "decoder exploded")
    assert data["executed"] == ["4", "5", "6", "7", "3"]
    assert isinstance(data["traceback"], list) and all(isinstance(line, str) for line in data["traceback"])
    assert any("enter" in line for line in data["traceback"])
    assert set(data["current_inputs"]) == {"samples", "vae"}
    assert data["current_inputs"]["vae"] == ["('vae', 'sd15_random.safetensors')"]
    assert sorted(data["current_outputs"]) == sorted(["4", "5", "6", "7", "3"])
    assert "execution_success" not in events.types() and fake.rec.calls["9"] == 0
    assert result.error == {
        "type": "ValueError",
        "message": "decoder exploded",
        "node_id": "8",
        "node_type": "VAEDecode",
        "traceback": data["traceback"],
        "retryable": False,
    }
    assert "9" not in result.outputs and "8" not in result.node_timings


def test_out_of_memory_is_retryable(fake: Any, default_prompt: dict[str, Any]) -> None:
    fake.rec.fail["KSampler"] = RuntimeError("CUDA out of memory. Tried to allocate 2 GiB")
    result = _run(fake, default_prompt)
    assert result.status == "error" and result.error is not None and result.error["retryable"] is True


def test_error_in_parallel_mode_stops_new_nodes(
    fake: Any, default_prompt: dict[str, Any], events: Any
) -> None:
    fake.rec.fail["EmptyLatentImage"] = RuntimeError("no latent")
    fake.rec.sleep["CLIPTextEncode"] = 0.05
    result = _run(fake, {"prompt": default_prompt, "execution_mode": "parallel"}, events)
    assert result.status == "error" and result.error is not None and result.error["node_id"] == "5"
    assert fake.rec.calls["3"] == 0 and fake.rec.calls["9"] == 0
    assert len(events.of("execution_error")) == 1


def test_wrong_number_of_outputs_is_a_clear_error(fake: Any, default_prompt: dict[str, Any]) -> None:
    from comfyd.engine.schema import Node, NodeSchema, OutputSpec

    class Sloppy(Node):
        schema = NodeSchema(class_type="SloppyLatent", outputs=(OutputSpec("LATENT"), OutputSpec("INT")))

        def run(self, ctx: Any, **kw: Any) -> tuple[Any, ...]:
            return ({"samples": torch.zeros(1, 4, 8, 8)},)

    fake.registry.register(Sloppy)
    default_prompt["5"] = {"class_type": "SloppyLatent", "inputs": {}}
    result = _run(fake, default_prompt)
    assert result.status == "error" and result.error is not None
    assert (
        result.error["message"] == "SloppyLatent.run returned 1 value(s) but its schema declares 2 output(s)"
    )
    assert result.error["type"] == "TypeError" and result.error["node_id"] == "5"


def test_failing_listener_does_not_fail_the_job(fake: Any, default_prompt: dict[str, Any]) -> None:
    def listener(event: str, data: dict[str, Any]) -> None:
        raise RuntimeError("socket closed")

    assert _run(fake, default_prompt, listener).status == "success"


def test_workflow_invalid_at_execution_time(fake: Any, default_prompt: dict[str, Any], events: Any) -> None:
    default_prompt["4"]["inputs"]["ckpt_name"] = "deleted.safetensors"
    result = _run(fake, default_prompt, events)
    assert result.status == "error" and result.error is not None
    assert result.error["type"] == "validation_error"
    assert result.error["body"]["node_errors"]["4"]["errors"][0]["type"] == "value_not_in_list"
    assert events.types() == ["execution_start", "execution_error"]
    assert sum(fake.rec.calls.values()) == 0


def test_per_node_timings(fake: Any, default_prompt: dict[str, Any]) -> None:
    fake.rec.sleep["VAEDecode"] = 0.05
    result = _run(fake, default_prompt)
    assert result.node_timings["8"] >= 0.05
    assert result.node_timings["4"] < 0.05


def test_concurrent_jobs_share_one_executor(fake: Any, default_prompt: dict[str, Any]) -> None:
    executor = Executor(fake.registry, fake.env, cache=NodeCache(2**30))
    results: dict[int, ExecutionResult] = {}

    def job(seed: int) -> None:
        prompt = {k: {**v, "inputs": dict(v["inputs"])} for k, v in default_prompt.items()}
        prompt["3"]["inputs"]["seed"] = seed
        results[seed] = executor.execute(
            parse_workflow({"prompt": prompt, "execution_mode": "parallel"}), job_id=f"j{seed}"
        )

    threads = [threading.Thread(target=job, args=(seed,)) for seed in (1, 2, 3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(r.status == "success" for r in results.values())
    alone = _run(
        fake,
        {
            "prompt": {
                **default_prompt,
                "3": {**default_prompt["3"], "inputs": {**default_prompt["3"]["inputs"], "seed": 2}},
            }
        },
    )
    assert torch.equal(results[2].values["3"][0]["samples"], alone.values["3"][0]["samples"])
    assert not torch.equal(results[1].values["3"][0]["samples"], results[2].values["3"][0]["samples"])


def test_node_that_cannot_be_built_is_an_error_result(fake: Any, default_prompt: dict[str, Any]) -> None:
    def refuse(self: Any) -> None:
        raise RuntimeError("no GPU driver")

    fake.registry.get("VAEDecode").__init__ = refuse
    result = _run(fake, default_prompt)
    assert result.status == "error" and result.error is not None
    assert (result.error["node_id"], result.error["message"]) == ("8", "no GPU driver")
    assert sum(fake.rec.calls.values()) == 0
