"""Server load: N concurrent clients submitting tiny workflows to a real comfyd server.

    python bench/server_load.py [--clients 16] [--jobs-per-client 8] [--steps 1] [--size 64]
                                [--url http://host:port --api-key K --workflow W.json]

Without --url it starts `python -m comfyd.server` on a free loopback port, in a scratch
directory holding a tiny random-weight SD1 checkpoint, and submits ComfyUI's default graph
(64x64, 1 step, a different seed per job) through POST /prompt. Each client thread keeps one
HTTP connection and submits its jobs back to back, as fast as the server accepts them.

Prints the accept latency (POST /prompt round trip: parse, validate, durable insert, enqueue)
p50/p90/p99/max, submissions per second, and jobs per second from the first submission to the
last job's end (execution on this machine's CPU dominates that one), ending with

    RESULT accept_p99_ms=<value>
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def start_server(scratch: Path, port: int, concurrency: int) -> subprocess.Popen:
    from comfyd.models.tiny import make_tiny_checkpoint

    models = scratch / "models"
    make_tiny_checkpoint(models / "checkpoints", "sd1")
    env = dict(os.environ)
    env.update({
        "COMFYD_CONFIG": os.devnull, "COMFYD_QUEUE_MAX_DEPTH": "1000000", "COMFYD_RATE_LIMIT_PER_MINUTE": "0",
        "COMFYD_MAX_CONCURRENT_JOBS": str(concurrency), "HF_HUB_OFFLINE": "1",
    })
    command = [
        sys.executable, "-m", "comfyd.server", "--host", "127.0.0.1", "--port", str(port),
        "--models-dir", str(models), "--output-dir", str(scratch / "output"), "--input-dir", str(scratch / "input"),
        "--temp-dir", str(scratch / "temp"), "--db-path", str(scratch / "comfyd.db"),
    ]
    log = open(scratch / "server.log", "w")  # noqa: SIM115 - closed with the process
    return subprocess.Popen(command, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)


def wait_ready(url: str, headers: dict[str, str], timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            status = httpx.get(f"{url}/health-check", headers=headers, timeout=2).json()["status"]
            if status in ("READY", "BUSY"):
                return
            if status in ("SETUP_FAILED", "DEFUNCT"):
                raise SystemExit(f"server setup failed: {status}")
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit("server did not become ready")


def tiny_workflow(url: str, headers: dict[str, str], steps: int, size: int) -> dict[str, Any]:
    workflow = json.loads((ROOT / "comfyd/workflows/default_api.json").read_text())
    checkpoints = httpx.get(f"{url}/models/checkpoints", headers=headers, timeout=30).json()
    if checkpoints:
        workflow["4"]["inputs"]["ckpt_name"] = checkpoints[0]
    workflow["3"]["inputs"]["steps"] = steps
    workflow["5"]["inputs"].update(width=size, height=size)
    return workflow


def client_loop(url: str, headers: dict[str, str], workflow: dict[str, Any], jobs: int, seed_base: int,
                latencies: list[float], ids: list[str], errors: list[str], lock: threading.Lock) -> None:
    with httpx.Client(base_url=url, headers=headers, timeout=60) as http:
        for i in range(jobs):
            body = {"prompt": json.loads(json.dumps(workflow)), "client_id": "bench", "prompt_id": str(uuid.uuid4())}
            body["prompt"]["3"]["inputs"]["seed"] = seed_base + i
            started = time.perf_counter()
            answer = http.post("/prompt", json=body)
            elapsed = time.perf_counter() - started
            with lock:
                if answer.status_code == 200:
                    latencies.append(elapsed)
                    ids.append(answer.json()["prompt_id"])
                else:
                    errors.append(f"HTTP {answer.status_code}: {answer.text[:200]}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--jobs-per-client", type=int, default=8)
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=3, help="max_concurrent_jobs of the started server")
    parser.add_argument("--url", help="an already running server (default: start one)")
    parser.add_argument("--api-key")
    parser.add_argument("--workflow", help="API-format workflow to submit (default: the tiny default graph)")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds to wait for all jobs")
    args = parser.parse_args()

    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    process = None
    scratch_dir = tempfile.TemporaryDirectory(prefix="comfyd-bench-")
    url = args.url
    try:
        if url is None:
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            process = start_server(Path(scratch_dir.name), port, args.concurrency)
        wait_ready(url, headers)
        workflow = (json.loads(Path(args.workflow).read_text()) if args.workflow
                    else tiny_workflow(url, headers, args.steps, args.size))
        # One warm job: the first run loads the checkpoint; the benchmark measures steady state.
        with httpx.Client(base_url=url, headers=headers, timeout=120) as http:
            warm = http.post("/prompt", json={"prompt": workflow}).json()["prompt_id"]
            while warm not in http.get(f"/history/{warm}").json():
                time.sleep(0.1)

        latencies: list[float] = []
        ids: list[str] = []
        errors: list[str] = []
        lock = threading.Lock()
        threads = [
            threading.Thread(target=client_loop, args=(url, headers, workflow, args.jobs_per_client, 1000 * c,
                                                       latencies, ids, errors, lock))
            for c in range(args.clients)
        ]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        submitted_in = time.perf_counter() - started

        with httpx.Client(base_url=url, headers=headers, timeout=60) as http:
            deadline = time.monotonic() + args.timeout
            while http.get("/prompt").json()["exec_info"]["queue_remaining"] > 0:
                if time.monotonic() > deadline:
                    raise SystemExit("jobs did not finish in time")
                time.sleep(0.1)
            finished_in = time.perf_counter() - started
            history = http.get("/history").json()
        done = [history[i] for i in ids if i in history]
        succeeded = sum(1 for entry in done if entry["status"]["completed"])

        ms = [1000 * v for v in latencies]
        total = args.clients * args.jobs_per_client
        print(f"clients={args.clients} jobs={total} accepted={len(ids)} rejected={len(errors)} "
              f"succeeded={succeeded}/{len(ids)}")
        for error in errors[:5]:
            print(f"  rejected: {error}")
        if not ms:
            raise SystemExit("no submission was accepted")
        print(f"accept latency ms: p50={percentile(ms, 50):.1f} p90={percentile(ms, 90):.1f} "
              f"p99={percentile(ms, 99):.1f} max={max(ms):.1f} mean={statistics.fmean(ms):.1f}")
        print(f"submissions/s={len(ids) / submitted_in:.1f} (all {len(ids)} accepted in {submitted_in:.2f} s)")
        print(f"jobs/s={succeeded / finished_in:.2f} ({succeeded} jobs finished in {finished_in:.1f} s)")
        print(f"RESULT accept_p99_ms={percentile(ms, 99):.1f}")
        return 0 if not errors and succeeded == len(ids) else 1
    finally:
        if process is not None:
            process.terminate()
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
        scratch_dir.cleanup()


if __name__ == "__main__":
    sys.exit(main())
