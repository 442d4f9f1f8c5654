"""Server memory per job: submit N tiny jobs to a real comfyd server and sample its RSS.

    python bench/server_rss.py [--jobs 1500] [--every 250] [--clients 4] [--concurrency 3]

Starts `python -m comfyd.server` as bench/server_load.py does (tiny random-weight SD1
checkpoint, ComfyUI's default graph at 64x64, 1 step, a new seed per job, so the node cache
keeps missing and stays at its cap). After a warm-up of `--every` jobs it submits the rest in
batches of `--every`, waits for each batch to finish, and samples the server's resident set
size (VmRSS) after a short settle. Prints one line per sample and, comparing the first half of
the run with the second, ends with

    RESULT rss_growth_kb_per_job_first_half=<v> rss_growth_kb_per_job_second_half=<v> rss_mib_end=<v>

A leak grows as fast in the second half as in the first; a cache filling up levels off.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from server_load import free_port, start_server, tiny_workflow, wait_ready  # noqa: E402


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise SystemExit("no VmRSS (Linux /proc is needed)")


def submit_batch(url: str, workflow: dict[str, Any], count: int, clients: int, seed: int) -> list[str]:
    ids: list[str] = []
    lock = threading.Lock()

    def client(offset: int) -> None:
        with httpx.Client(base_url=url, timeout=120) as http:
            for i in range(offset, count, clients):
                body = {"prompt": {k: {**v, "inputs": dict(v["inputs"])} for k, v in workflow.items()},
                        "client_id": f"rss-{offset}", "prompt_id": str(uuid.uuid4())}
                body["prompt"]["3"]["inputs"]["seed"] = seed + i
                answer = http.post("/prompt", json=body)
                answer.raise_for_status()
                with lock:
                    ids.append(answer.json()["prompt_id"])

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return ids


def wait_drained(url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    with httpx.Client(base_url=url, timeout=60) as http:
        while http.get("/prompt").json()["exec_info"]["queue_remaining"] > 0:
            if time.monotonic() > deadline:
                raise SystemExit("jobs did not finish in time")
            time.sleep(0.2)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1500)
    parser.add_argument("--every", type=int, default=250)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds to wait for each batch")
    args = parser.parse_args()

    scratch = tempfile.TemporaryDirectory(prefix="comfyd-rss-")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = start_server(Path(scratch.name), port, args.concurrency)
    try:
        wait_ready(url, {})
        workflow = tiny_workflow(url, {}, steps=1, size=64)
        samples: list[tuple[int, int]] = []  # (jobs after the warm-up, RSS KiB)
        done = 0
        while done < args.jobs + args.every:  # the first batch warms up (model load, caches fill)
            ids = submit_batch(url, workflow, args.every, args.clients, seed=done)
            wait_drained(url, args.timeout)
            done += len(ids)
            time.sleep(1.0)
            rss = rss_kib(process.pid)
            samples.append((done - args.every, rss))
            print(f"jobs={done} rss_mib={rss / 1024:.1f}", flush=True)
        mid = len(samples) // 2
        first = (samples[mid][1] - samples[0][1]) / max(1, samples[mid][0] - samples[0][0])
        second = (samples[-1][1] - samples[mid][1]) / max(1, samples[-1][0] - samples[mid][0])
        print(f"RESULT rss_growth_kb_per_job_first_half={first:.2f} rss_growth_kb_per_job_second_half={second:.2f} "
              f"rss_mib_end={samples[-1][1] / 1024:.1f}")
        return 0
    finally:
        process.terminate()
        try:
            process.wait(20)
        except Exception:
            process.kill()
        scratch.cleanup()


if __name__ == "__main__":
    sys.exit(main())
