"""The device gate: how many model computations share a device at once."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import pytest
import torch

from comfyd.models.device_gate import DeviceGate, gate_limit
from comfyd.models.handles import ModelHandle, VaeHandle


def test_automatic_limit_is_one_on_accelerators_and_none_on_cpu() -> None:
    assert gate_limit(0, torch.device("cpu")) == 0
    assert gate_limit(0, torch.device("cuda")) == 1
    assert gate_limit(0, torch.device("mps")) == 1
    assert gate_limit(2, torch.device("cuda")) == 2
    assert gate_limit(1, torch.device("cpu")) == 1
    with pytest.raises(ValueError, match="device_concurrency"):
        gate_limit(-1, torch.device("cpu"))


def _overlap(gate: DeviceGate, threads: int = 4, hold_s: float = 0.05) -> int:
    start = threading.Barrier(threads)

    def work() -> None:
        start.wait()
        with gate.held():
            time.sleep(hold_s)

    pool = [threading.Thread(target=work) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join(timeout=10)
    return gate.peak_holders


def test_a_limit_of_one_serialises_holders() -> None:
    assert _overlap(DeviceGate(1)) == 1


def test_a_limit_of_two_lets_two_in() -> None:
    assert _overlap(DeviceGate(2)) == 2


def test_no_limit_lets_everyone_in() -> None:
    assert _overlap(DeviceGate(0)) == 4


def test_the_gate_is_reentrant_within_a_thread() -> None:
    gate = DeviceGate(1)
    done = threading.Event()

    def nested() -> None:
        with gate.held(), gate.held():
            done.set()

    t = threading.Thread(target=nested)
    t.start()
    t.join(timeout=5)
    assert done.is_set(), "a thread already holding the gate blocked on it"
    # And it was released: another thread gets in.
    with gate.held():
        pass


def test_handles_hold_the_gate_while_computing() -> None:
    gate = DeviceGate(1)
    model = ModelHandle(key="k", family="sd1", prediction="eps", unet=object(), latent_scale=0.18215,
                        device=torch.device("cpu"), dtype=torch.float32, gate=gate)
    vae = VaeHandle(key="k", family="sd1", vae=object(), device=torch.device("cpu"), dtype=torch.float32,
                    gate=gate)
    entered = threading.Event()

    def other() -> None:
        with vae.computing():
            entered.set()

    with model.patched():
        t = threading.Thread(target=other)
        t.start()
        assert not entered.wait(0.2), "the VAE ran while the UNet held the device"
    t.join(timeout=5)
    assert entered.is_set()


def test_on_cpu_the_thread_entering_gets_threads_by_how_many_compute() -> None:
    asked: list[int] = []

    def threads_for(running: int) -> int:
        asked.append(running)
        return 1 if running > 1 else 2

    gate = DeviceGate(0, threads_for=threads_for)
    seen: dict[str, int] = {}
    original = torch.get_num_threads()
    inside, release = threading.Event(), threading.Event()

    def first() -> None:
        with gate.held():
            seen["first"] = torch.get_num_threads()
            inside.set()
            release.wait(10)

    worker = threading.Thread(target=first)
    worker.start()
    assert inside.wait(10)
    second = threading.Thread(target=lambda: _hold(gate, seen, "second"))
    second.start()
    second.join(10)
    release.set()
    worker.join(10)
    torch.set_num_threads(original)  # the threads of later tests start from the global count
    assert asked == [1, 2]
    assert seen == {"first": 2, "second": 1}  # torch keeps the count per thread


def _hold(gate: DeviceGate, seen: dict[str, int], name: str) -> None:
    with gate.held(), gate.held():  # re-entry asks nothing more
        seen[name] = torch.get_num_threads()


def test_threads_follow_load_only_on_cpu_with_the_automatic_count() -> None:
    from comfyd.models.threads import cpu_threads_by_load

    cpu = torch.device("cpu")
    assert cpu_threads_by_load(SimpleNamespace(cpu_threads=3), cpu) is None
    assert cpu_threads_by_load(SimpleNamespace(cpu_threads=0), torch.device("meta")) is None
    share = cpu_threads_by_load(SimpleNamespace(cpu_threads=0), cpu)
    assert share is not None and share(1) >= share(2) >= 1
