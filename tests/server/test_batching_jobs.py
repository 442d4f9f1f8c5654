"""Cross-request batching through the server's job path: three queued jobs share UNet calls."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from comfyd.engine.interfaces import JobStatus


@pytest.mark.slow
def test_three_jobs_share_unet_calls_and_each_succeeds(start_server, tmp_path: Path) -> None:
    from comfyd.models.tiny import make_tiny_checkpoint
    from comfyd.runtime import build_runtime

    models_dir = tmp_path / "models"
    checkpoint = make_tiny_checkpoint(models_dir / "checkpoints", "sd1")
    # The device gate as on CUDA (one computation at a time): text encodings of the later jobs
    # run while the first job's first step waits for companions; the long window makes that
    # first step wait for all three (it fires when the batch is full, not on time).
    srv = start_server(runtime=build_runtime, models_dir=models_dir, device_concurrency=1, max_concurrent_jobs=3,
                       batch_max=3, batch_window_ms=10_000)
    workflow = json.loads((Path(__file__).parents[2] / "comfyd/workflows/default_api.json").read_text())
    workflow["4"]["inputs"]["ckpt_name"] = Path(checkpoint).name
    workflow["5"]["inputs"].update(width=64, height=64)
    workflow["3"]["inputs"].update(steps=4, sampler_name="euler_ancestral")
    with srv.client() as http:
        ids = []
        for seed, prompt in ((1, "a red fox"), (2, "a lighthouse"), (3, "a bowl of soup")):
            workflow["3"]["inputs"]["seed"] = seed
            workflow["6"]["inputs"]["text"] = prompt
            answer = http.post("/prompt", json={"prompt": workflow})
            assert answer.status_code == 200, answer.text
            ids.append(answer.json()["prompt_id"])
        for job_id in ids:
            job = srv.wait_job(job_id, timeout=180)
            assert job.status is JobStatus.SUCCEEDED, job.error
            assert job.outputs
    models = srv.state.manager._runtime.env.models
    stats = models.batcher.stats
    assert stats.largest == 3  # all three jobs in one UNet call
    assert stats.network_calls < stats.member_calls
    assert models.gate.peak_holders == 1
