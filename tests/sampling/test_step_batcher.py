"""Cross-request batching (comfyd.sampling.step_batcher) on a tiny real diffusers UNet on CPU.

Concurrency is made deterministic without sleeps: a long gather window with `max_batch` equal to
the number of jobs makes the first round wait until every job has joined, and a long stall limit
makes every later round wait for every member (lock step), so the batch compositions are exact.
"""

from __future__ import annotations

import threading
from dataclasses import replace
from typing import Any

import pytest
import torch
from diffusers import UNet2DConditionModel

from comfyd.engine.errors import ExecutionInterrupted
from comfyd.models.device_gate import DeviceGate
from comfyd.models.handles import ModelHandle
from comfyd.sampling.custom import sample_custom
from comfyd.sampling.guiders import Guider, NoiseSource, SamplerChoice
from comfyd.sampling.ksampler import common_ksampler
from comfyd.sampling.step_batcher import StepBatcher, batch_limit

pytestmark = pytest.mark.filterwarnings("ignore:Should have t:UserWarning")

CONTEXT_DIM = 16
LONG = 60.0  # window / stall limit that a test never reaches: rounds fire on membership alone
STEPS = 3


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Several sampling threads at once: one intra-op thread each keeps a shared 2-core machine
    # from oversubscribing (results are compared at the same thread count either way).
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def unet() -> UNet2DConditionModel:
    torch.manual_seed(0)
    return UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(16, 32),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=CONTEXT_DIM, layers_per_block=1, attention_head_dim=4, norm_num_groups=8,
    ).eval()  # fmt: skip


@pytest.fixture
def model(unet: UNet2DConditionModel) -> ModelHandle:
    return ModelHandle("tiny", "sd1", "eps", unet, 0.18215, torch.device("cpu"), torch.float32)


class RecordingNet:
    """Wraps the UNet: records the batch size of every network call; optional hooks."""

    def __init__(self, unet: Any, poison: float | None = None, hold: threading.Event | None = None) -> None:
        self.unet = unet
        self.poison = poison
        self.hold = hold
        self.entered = threading.Event()
        self.sizes: list[int] = []
        self.config = unet.config

    def __call__(self, sample, timestep, encoder_hidden_states, added_cond_kwargs=None, return_dict=False, **extra):
        self.sizes.append(int(sample.shape[0]))
        self.entered.set()
        if self.hold is not None:
            assert self.hold.wait(LONG)
        if self.poison is not None and bool((encoder_hidden_states[:, 0, 0] == self.poison).any()):
            raise RuntimeError("poisoned prompt")
        return self.unet(sample, timestep, encoder_hidden_states=encoder_hidden_states,
                         added_cond_kwargs=added_cond_kwargs, return_dict=return_dict, **extra)


def cond(seed: int, marker: float | None = None) -> list:
    g = torch.Generator().manual_seed(seed)
    context = torch.randn(1, 77, CONTEXT_DIM, generator=g)
    if marker is not None:
        context[0, 0, 0] = marker
    return [[context, {}]]


NEGATIVE = cond(99)
LATENT = {"samples": torch.zeros(1, 4, 8, 8)}


def ksample(model: Any, job: dict[str, Any], **kw: Any) -> torch.Tensor:
    return common_ksampler(model, job["seed"], STEPS, job["cfg"], job["sampler"], "karras", job["prompt"],
                           NEGATIVE, LATENT, **kw)["samples"]  # fmt: skip


def custom_sample(model: Any, job: dict[str, Any], **kw: Any) -> torch.Tensor:
    guider = Guider(model, "cfg", (job["prompt"], NEGATIVE), cfg=job["cfg"])
    sigmas = torch.tensor([14.6146, 2.0, 0.5, 0.0])
    out, _ = sample_custom(guider, SamplerChoice(job["sampler"]), sigmas, NoiseSource(job["seed"]), LATENT, **kw)
    return out["samples"]


def concurrently(*runs: Any) -> list[Any]:
    """Run each callable in its own thread; results or the exceptions they raised."""
    results: list[Any] = [None] * len(runs)

    def body(i: int) -> None:
        try:
            results[i] = runs[i]()
        except BaseException as exc:  # noqa: BLE001 - handed back to the test
            results[i] = exc

    threads = [threading.Thread(target=body, args=(i,)) for i in range(len(runs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(LONG)
        assert not t.is_alive(), "a batched run hung"
    return results


JOBS = [
    {"seed": 1, "sampler": "euler", "cfg": 7.0, "prompt": cond(10)},
    {"seed": 2, "sampler": "euler_ancestral", "cfg": 5.0, "prompt": cond(11)},
    {"seed": 3, "sampler": "dpmpp_2m", "cfg": 1.0, "prompt": cond(12)},  # one row: no negative
    {"seed": 4, "sampler": "heun", "cfg": 3.0, "prompt": cond(13)},  # two calls per step
]


def test_batched_runs_are_bit_identical_to_runs_alone(model: ModelHandle) -> None:
    alone = [ksample(model, job) for job in JOBS] + [custom_sample(model, JOBS[1])]
    batcher = StepBatcher(len(JOBS) + 1, window_s=LONG, exact=True, stall_s=LONG)
    net = RecordingNet(model.unet)
    batched_model = replace(model, unet=net, batcher=batcher)
    runs = [lambda job=job: ksample(batched_model, job) for job in JOBS]
    runs.append(lambda: custom_sample(batched_model, JOBS[1]))
    results = concurrently(*runs)
    for i, (a, b) in enumerate(zip(alone, results, strict=True)):
        assert torch.equal(a, b), f"job {i} differs from its run alone"
    # The first call held all five jobs: 2 + 2 + 1 + 2 + 2 rows.
    assert net.sizes[0] == 9
    assert batcher.stats.largest == 5
    assert batcher.stats.network_calls < batcher.stats.member_calls
    assert batcher.stats.solo_retries == 0


def test_a_canceled_job_leaves_and_the_others_continue(model: ModelHandle) -> None:
    alone = ksample(model, JOBS[0])
    batcher = StepBatcher(2, window_s=LONG, exact=True, stall_s=LONG)
    net = RecordingNet(model.unet)
    batched_model = replace(model, unet=net, batcher=batcher)
    stop = threading.Event()
    steps: dict[str, list[int]] = {"a": [], "b": []}

    def progress(name: str):
        def callback(step: int, total: int, _denoised: Any) -> None:
            steps[name].append(step)
            if name == "b" and step == 0:
                stop.set()  # job b is canceled after its first step
        return callback

    a, b = concurrently(
        lambda: ksample(batched_model, JOBS[0], callback=progress("a")),
        lambda: ksample(batched_model, JOBS[3], callback=progress("b"), interrupt=stop),
    )
    assert isinstance(b, ExecutionInterrupted)
    assert torch.equal(a, alone)
    assert steps == {"a": [0, 1, 2], "b": [0]}  # per-job progress, each its own steps
    assert net.sizes[0] == 4 and net.sizes[-1] == 2  # together, then job a alone


def test_an_error_reaches_only_the_job_whose_input_fails(model: ModelHandle) -> None:
    alone = ksample(model, JOBS[0])
    batcher = StepBatcher(2, window_s=LONG, exact=True, stall_s=LONG)
    batched_model = replace(model, unet=RecordingNet(model.unet, poison=1234.0), batcher=batcher)
    poisoned = {**JOBS[1], "prompt": cond(11, marker=1234.0)}
    good, bad = concurrently(lambda: ksample(batched_model, JOBS[0]), lambda: ksample(batched_model, poisoned))
    assert isinstance(bad, RuntimeError) and "poisoned" in str(bad)
    assert torch.equal(good, alone)
    assert batcher.stats.solo_retries == 1


def test_a_higher_priority_job_never_waits_for_the_window(model: ModelHandle) -> None:
    batcher = StepBatcher(4, window_s=LONG, exact=True, stall_s=LONG)
    batched_model = replace(model, batcher=batcher)
    (urgent,) = concurrently(lambda: ksample(batched_model, JOBS[0], priority=5))
    assert torch.equal(urgent, ksample(model, JOBS[0]))


def test_a_higher_priority_job_ends_the_window_it_joins(model: ModelHandle) -> None:
    net = RecordingNet(model.unet)
    batcher = StepBatcher(4, window_s=LONG, exact=True, stall_s=LONG)
    batched_model = replace(model, unet=net, batcher=batcher)
    waiting = threading.Thread(target=lambda: ksample(batched_model, JOBS[0]))
    waiting.start()
    while batcher.pending_calls() < 1:  # the first job's first call waits in the window
        threading.Event().wait(0.01)
    (urgent,) = concurrently(lambda: ksample(batched_model, JOBS[1], priority=5))
    waiting.join(LONG)
    assert not waiting.is_alive()
    assert net.sizes[0] == 4  # both jobs in the first call, with no wait for the window
    assert torch.equal(urgent, ksample(model, JOBS[1]))


def test_a_joining_job_waits_only_for_the_round_in_flight(model: ModelHandle) -> None:
    hold = threading.Event()
    net = RecordingNet(model.unet, hold=hold)
    batcher = StepBatcher(4, window_s=LONG, exact=True, stall_s=LONG)
    batched_model = replace(model, unet=net, batcher=batcher)
    results: list[Any] = []
    first = threading.Thread(target=lambda: results.append(ksample(batched_model, JOBS[0], priority=5)))
    first.start()
    assert net.entered.wait(LONG)  # job a's first round is in the network
    joined = threading.Thread(target=lambda: results.append(ksample(batched_model, JOBS[1])))
    joined.start()
    while batcher.pending_calls() < 1:  # job b's first call waits for the next round
        assert joined.is_alive()
        threading.Event().wait(0.01)
    hold.set()
    first.join(LONG)
    joined.join(LONG)
    assert not first.is_alive() and not joined.is_alive()
    # a alone, then a + b from the next round on (b waited one round, never the window).
    assert net.sizes[:3] == [2, 4, 4]
    assert len(results) == 2


def test_rounds_take_the_device_gate_one_call_at_a_time(model: ModelHandle) -> None:
    gate = DeviceGate(1)
    batcher = StepBatcher(2, window_s=LONG, exact=True, stall_s=LONG)
    batched_model = replace(model, gate=gate, batcher=batcher)
    other = replace(model, key="other")  # another group: its rounds alternate with the first's
    results = concurrently(
        lambda: ksample(batched_model, JOBS[0]),
        lambda: ksample(batched_model, JOBS[1]),
        lambda: ksample(replace(other, gate=gate, batcher=batcher), JOBS[3], priority=5),
    )
    assert all(isinstance(r, torch.Tensor) for r in results)
    assert gate.peak_holders == 1
    assert torch.equal(results[2], ksample(model, JOBS[3]))


def test_batch_limit_defaults() -> None:
    assert batch_limit(0, "cpu") == 1
    assert batch_limit(0, "cuda") == 4
    assert batch_limit(3, "cpu") == 3
    with pytest.raises(ValueError):
        batch_limit(-1, "cuda")


def test_off_means_the_plain_network(model: ModelHandle) -> None:
    net = RecordingNet(model.unet)
    off = replace(model, unet=net, batcher=StepBatcher(1))
    assert torch.equal(ksample(off, JOBS[0]), ksample(model, JOBS[0]))


def test_the_model_manager_hands_its_batcher_to_models(tmp_path) -> None:
    from comfyd.models.manager import ModelManager
    from comfyd.settings import Settings

    off = ModelManager(Settings(models_dir=tmp_path, device="cpu"))
    assert not off.batcher.enabled  # CPU default: off
    on = ModelManager(Settings(models_dir=tmp_path, device="cpu", batch_max=3, batch_window_ms=20))
    assert (on.batcher.max_batch, on.batcher.window_s, on.batcher.exact) == (3, 0.02, True)


def residuals(seed: int, rows: int) -> dict[str, Any]:
    """ControlNet-style residuals for the tiny UNet: conv_in, level 0 (block, downsampler), level 1."""
    g = torch.Generator().manual_seed(seed)
    shapes = [(16, 8, 8), (16, 8, 8), (16, 4, 4), (32, 4, 4)]
    down = tuple(torch.randn(rows, *s, generator=g) for s in shapes)
    return {"down_block_additional_residuals": down,
            "mid_block_additional_residual": torch.randn(rows, 32, 4, 4, generator=g)}  # fmt: skip


def test_control_residuals_are_batched_row_wise_and_stay_exact(model: ModelHandle) -> None:
    # ControlNet residuals reach the UNet as keyword arguments with one row per sample row: a
    # batched call joins them like the samples, and each job still gets its result alone.
    jobs = []
    for seed in (1, 2):
        g = torch.Generator().manual_seed(seed)
        jobs.append((torch.randn(2, 4, 8, 8, generator=g), cond(seed)[0][0].expand(2, -1, -1), residuals(seed, 2)))
    t = torch.tensor([500.0, 500.0])
    alone = [model.unet(x, t, encoder_hidden_states=c, return_dict=False, **r)[0] for x, c, r in jobs]
    batcher = StepBatcher(2, window_s=LONG, exact=True, stall_s=LONG)
    net = RecordingNet(model.unet)

    def run(x: torch.Tensor, c: torch.Tensor, r: dict[str, Any]) -> torch.Tensor:
        with batcher.session("tiny", net) as batched:
            assert batched.config is model.unet.config  # where the sampler places residuals
            return batched(x, t, c, **r)[0]

    results = concurrently(*[lambda job=job: run(*job) for job in jobs])
    assert net.sizes == [4]
    for a, b in zip(alone, results, strict=True):
        assert torch.equal(a, b)
