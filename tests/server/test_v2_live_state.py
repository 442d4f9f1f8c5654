"""The v2 live state keeps what a progress snapshot needs of a job, not its whole workflow."""

from __future__ import annotations

from comfyd.engine.interfaces import JobRecord
from comfyd.http.v2.live import LiveJobs


def test_snapshot_names_the_running_node_from_the_kept_classes() -> None:
    live = LiveJobs(status_of=lambda job: job.status.value)
    workflow = {"4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "x" * 10_000}},
                "3": {"class_type": "KSampler", "inputs": {}}, "meta": "not a node"}
    job = JobRecord(id="j", workflow=workflow)
    live.on_job_event(job, "executing", {"node": "4"})
    live.on_job_event(job, "executing", {"node": "3"})
    live.on_job_event(job, "progress", {"node": "3", "value": 2, "max": 4})
    state = live.get("j")
    assert state is not None and state.node_classes == {"4": "CheckpointLoaderSimple", "3": "KSampler"}
    snapshot = state.snapshot()
    assert snapshot["nodes_total"] == 2 and snapshot["nodes_done"] == 1
    assert snapshot["current_node_class"] == "KSampler" and snapshot["message"] == "KSampler 2/4"
    assert snapshot["value"] == 0.75
