"""ComfyUI's newer jobs API (`/api/jobs`): list, detail, cancel, with ComfyUI's names and statuses."""

from __future__ import annotations

from comfyd.engine.interfaces import JobStatus


def test_list_detail_and_statuses(start_server, workflow) -> None:
    server = start_server(max_concurrent_jobs=1)
    with server.client() as http:
        ok = http.post("/prompt", json={"prompt": workflow(tag="ok"), "extra_data": {
            "extra_pnginfo": {"workflow": {"id": "wf-1"}}}}).json()["prompt_id"]
        server.wait_job(ok)
        bad = http.post("/prompt", json={"prompt": workflow(tag="bad", flaky={"fails": 1, "kind": "workflow"})}
                        ).json()["prompt_id"]
        server.wait_job(bad)
        running = http.post("/prompt", json={"prompt": workflow(20.0, 400, "long")}).json()["prompt_id"]
        server.wait_until(lambda: server.job(running).status is JobStatus.RUNNING, what="running")
        pending = http.post("/prompt", json={"prompt": workflow(tag="later")}).json()["prompt_id"]

        listed = http.get("/api/jobs").json()
        statuses = {j["id"]: j["status"] for j in listed["jobs"]}
        assert statuses == {ok: "completed", bad: "failed", running: "in_progress", pending: "pending"}
        assert [j["id"] for j in listed["jobs"]] == [pending, running, bad, ok]  # newest first
        assert listed["pagination"] == {"offset": 0, "limit": None, "total": 4, "has_more": False}
        entry = next(j for j in listed["jobs"] if j["id"] == ok)
        assert entry["outputs_count"] == 1 and entry["workflow_id"] == "wf-1"
        assert entry["preview_output"]["nodeId"] == "9" and entry["preview_output"]["mediaType"] == "images"
        assert entry["execution_end_time"] >= entry["execution_start_time"] >= entry["create_time"]
        assert "execution_error" not in entry  # absent values are left out
        failed = next(j for j in listed["jobs"] if j["id"] == bad)
        assert failed["execution_error"]["exception_message"] and failed["execution_error"]["node_id"] == "4"
        assert "outputs" not in next(j for j in listed["jobs"] if j["id"] == running)

        page = http.get("/api/jobs", params={"status": "completed,failed", "sort_order": "asc", "limit": 1,
                                             "offset": 1}).json()
        assert [j["id"] for j in page["jobs"]] == [bad] and page["pagination"]["has_more"] is False
        assert [j["id"] for j in http.get("/api/jobs", params={"workflow_id": "wf-1"}).json()["jobs"]] == [ok]
        for params in ({"status": "done"}, {"sort_by": "name"}, {"limit": "0"}, {"sort_order": "up"}):
            resp = http.get("/api/jobs", params=params)
            assert resp.status_code == 400 and isinstance(resp.json()["error"], str), params

        detail = http.get(f"/api/jobs/{ok}").json()
        assert detail["execution_status"]["status_str"] == "success" and detail["outputs"]["9"]["images"]
        assert detail["workflow"]["prompt"]["3"]["class_type"] == "TestSleep" and detail["update_time"]
        assert http.get("/jobs/" + ok).json()["id"] == ok  # also without /api, as ComfyUI
        assert http.get("/api/jobs/nope").status_code == 404

        assert http.post(f"/api/jobs/{pending}/cancel").json() == {"cancelled": True}
        assert server.job(pending).status is JobStatus.CANCELED
        assert http.post(f"/api/jobs/{running}/cancel").json() == {"cancelled": True}
        assert server.wait_job(running).status is JobStatus.CANCELED
        assert http.get(f"/api/jobs/{running}").json()["status"] == "cancelled"
        assert http.post(f"/api/jobs/{running}/cancel").json() == {"cancelled": False}  # idempotent
        assert http.post(f"/api/jobs/{ok}/cancel").json() == {"cancelled": False}
        assert http.post("/api/jobs/nope/cancel").status_code == 404
        assert http.post("/api/jobs/bad%20id/cancel").status_code == 400
    assert "later" not in server.recorder.order()
