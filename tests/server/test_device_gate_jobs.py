"""Running jobs share the device one model computation at a time (COMFYD_DEVICE_CONCURRENCY=1)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from comfyd.engine.interfaces import JobStatus


@pytest.mark.slow
def test_three_running_jobs_take_turns_on_the_device(start_server, tmp_path: Path) -> None:
    from comfyd.models.tiny import make_tiny_checkpoint
    from comfyd.runtime import build_runtime

    models_dir = tmp_path / "models"
    checkpoint = make_tiny_checkpoint(models_dir / "checkpoints", "sd1")
    srv = start_server(runtime=build_runtime, models_dir=models_dir, device_concurrency=1, max_concurrent_jobs=3)
    workflow = json.loads((Path(__file__).parents[2] / "comfyd/workflows/default_api.json").read_text())
    workflow["4"]["inputs"]["ckpt_name"] = Path(checkpoint).name
    workflow["5"]["inputs"].update(width=64, height=64)
    workflow["3"]["inputs"]["steps"] = 6
    with srv.client() as http:
        ids = []
        for seed in (1, 2, 3):
            workflow["3"]["inputs"]["seed"] = seed  # different seeds: nothing comes from the node cache
            answer = http.post("/prompt", json={"prompt": workflow})
            assert answer.status_code == 200, answer.text
            ids.append(answer.json()["prompt_id"])
        for job_id in ids:
            assert srv.wait_job(job_id, timeout=120).status is JobStatus.SUCCEEDED
    gate = srv.state.manager._runtime.env.models.gate
    assert gate.limit == 1
    assert gate.peak_holders == 1
