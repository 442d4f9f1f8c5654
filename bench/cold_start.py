"""Cold start: process start -> first image, for `comfyd serve`, `comfyd run` and (optionally) ComfyUI.

    python bench/cold_start.py [--repeats 3] [--size 256] [--steps 4]
    python bench/cold_start.py --comfyui /work/comfyui [--comfyui-python /work/cvenv/bin/python]
    python bench/cold_start.py --tiny --repeats 1          # tiny model (the test run)

The model is the full-size random SD1.5 checkpoint of bench/gpu_throughput.py (fp16 file, real
shapes, written once into --cache-dir); the workflow is ComfyUI's default text-to-image graph at
256x256, euler + normal, 4 steps, cfg 8, saving a PNG. Every trial is a fresh process on CPU:

- `serve`: `comfyd serve` on a free port. READY = the moment GET /health-check first says READY
  (polled every 50 ms); then POST /prompt, and first image = when GET /history/<id> first shows
  the finished job (polled every 100 ms), counted from the process start. Then a seed-only rerun
  (same workflow, seed + 1): POST to finished, with the model and the text encodings there.
- `run`: `comfyd run WORKFLOW`: process start to exit (its PNG checked).
- `comfyui` (with --comfyui): ComfyUI's main.py through bench/comfyui_server.py, the same HTTP
  protocol as `serve`; READY = its first answer to GET /queue (it listens once its nodes loaded).

Beside each wall time, `*_cpu_s` is the CPU time (user + system, all threads) the server process
had spent by then (for `run`: the whole process): on a machine that others load, wall times
mostly measure the neighbours, CPU times much less so (work moved onto idle cores shows in the
wall time only).

The trials alternate (serve, comfyui, run, serve, comfyui, run, ...), so a neighbour's load falls
on every side alike; medians are reported, and the load average before and after. Every trial's
figures are printed, then `RESULT` lines: absolute seconds for each side (`serve_ready_s`,
`serve_first_image_s`, `serve_rerun_s`, `run_first_image_s`, `comfyui_ready_s`, ...) and, with
--comfyui, `RESULT cold_start_ratio=<comfyd serve first image / ComfyUI first image>` (below 1:
comfyd is sooner), `cold_start_run_ratio` (`comfyd run` against the same ComfyUI figure) and
`rerun_ratio`, and `cold_start_cpu_ratio` (the CPU seconds to the first image, same sides).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"
READY_POLL_S = 0.05  # answers are cheap; the job polls less often, to leave the CPUs to the job
JOB_POLL_S = 0.1
NEGATIVE = "text, watermark"


@dataclass
class Trial:
    side: str
    figures: dict[str, float] = field(default_factory=dict)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http_json(url: str, body: dict[str, Any] | None = None, timeout: float = 5.0) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read() or b"null")


def wait_for(check: Callable[[], bool], proc: subprocess.Popen[bytes], log: Path, what: str,
             timeout_s: float, poll_s: float) -> None:
    """Poll `check` until it holds; fail with the process's log when it dies or time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what}: the process exited ({proc.returncode}):\n{tail(log)}")
        try:
            if check():
                return
        except (OSError, urllib.error.URLError, ValueError):
            pass  # not listening yet, or a half-written answer
        time.sleep(poll_s)
    raise RuntimeError(f"{what}: not done after {timeout_s:.0f} s:\n{tail(log)}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a live process, all its threads (Linux /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tail(log: Path, chars: int = 3000) -> str:
    try:
        return log.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


def workflow(ckpt_name: str, size: int, steps: int, seed: int) -> dict[str, Any]:
    """ComfyUI's default graph (comfyd ships the same file) at `size`, euler `steps`, saving a PNG."""
    graph = json.loads((REPO / "comfyd" / "workflows" / "default_api.json").read_text())
    graph["4"]["inputs"]["ckpt_name"] = ckpt_name
    graph["5"]["inputs"].update(width=size, height=size, batch_size=1)
    graph["7"]["inputs"]["text"] = NEGATIVE
    graph["3"]["inputs"].update(seed=seed, steps=steps, cfg=8.0, sampler_name="euler", scheduler="normal",
                                denoise=1.0)
    graph["9"]["inputs"]["filename_prefix"] = "cold"
    return graph


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Bench:
    def __init__(self, args: argparse.Namespace, work: Path, checkpoint: Path) -> None:
        self.args, self.work, self.checkpoint = args, work, checkpoint
        self.models = checkpoint.parent.parent
        self.count = 0

    def fresh_dir(self, side: str) -> Path:
        self.count += 1
        folder = self.work / f"{self.count:02d}-{side}"
        folder.mkdir()
        return folder

    def comfyd_env(self, folder: Path) -> dict[str, str]:
        env = dict(os.environ, COMFYD_CONFIG=os.devnull, COMFYD_HOME=str(folder / "home"), COMFYD_DEVICE="cpu",
                   HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
        env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        env.update(dict(item.split("=", 1) for item in self.args.env))
        return env

    def over_http(self, side: str, argv: list[str], env: dict[str, str], base: str, ready: Callable[[], bool],
                  folder: Path) -> Trial:
        """Start a server, wait for READY, run the workflow, then a seed-only rerun."""
        trial = Trial(side)
        log = folder / "server.log"
        first = workflow(self.checkpoint.name, self.args.size, self.args.steps, seed=1)
        with log.open("wb") as sink:
            started = time.perf_counter()
            proc = subprocess.Popen(argv, env=env, stdout=sink, stderr=subprocess.STDOUT, cwd=folder)
            try:
                wait_for(ready, proc, log, f"{side} READY", self.args.timeout_s, READY_POLL_S)
                trial.figures["ready_s"] = time.perf_counter() - started
                trial.figures["ready_cpu_s"] = cpu_seconds(proc.pid)
                self.finish(base, first, proc, log, side)
                trial.figures["first_image_s"] = time.perf_counter() - started
                trial.figures["first_image_cpu_s"] = cpu_seconds(proc.pid)
                again = workflow(self.checkpoint.name, self.args.size, self.args.steps, seed=2)
                posted = time.perf_counter()
                self.finish(base, again, proc, log, side)
                trial.figures["rerun_s"] = time.perf_counter() - posted
                trial.figures["rerun_cpu_s"] = cpu_seconds(proc.pid) - trial.figures["first_image_cpu_s"]
            finally:
                stop(proc)
        return trial

    def finish(self, base: str, graph: dict[str, Any], proc: subprocess.Popen[bytes], log: Path, side: str) -> None:
        answer = http_json(f"{base}/prompt", {"prompt": graph, "client_id": "cold-start"}, timeout=self.args.timeout_s)
        prompt_id = answer["prompt_id"]

        def done() -> bool:
            entry = http_json(f"{base}/history/{prompt_id}").get(prompt_id)
            if not entry:
                return False
            status = entry.get("status", {})
            if status.get("status_str") not in (None, "success") or not entry.get("outputs"):
                raise RuntimeError(f"{side}: the job failed: {json.dumps(entry)[:2000]}")
            return True

        wait_for(done, proc, log, f"{side} job", self.args.timeout_s, JOB_POLL_S)

    def serve(self) -> Trial:
        folder = self.fresh_dir("serve")
        port = free_port()
        argv = [sys.executable, "-m", "comfyd", "serve", "--port", str(port), "--models-dir", str(self.models),
                "--output-dir", str(folder / "out")]
        base = f"http://127.0.0.1:{port}"

        def ready() -> bool:
            return http_json(f"{base}/health-check", timeout=2).get("status") == "READY"

        return self.over_http("serve", argv, self.comfyd_env(folder), base, ready, folder)

    def comfyui(self) -> Trial:
        from comfyui_server import comfyui_argv

        folder = self.fresh_dir("comfyui")
        (folder / "base" / "models").mkdir(parents=True)
        (folder / "web").mkdir()
        (folder / "base" / "models" / "checkpoints").symlink_to(self.checkpoint.parent, target_is_directory=True)
        port = free_port()
        argv = [self.args.comfyui_python, str(BENCH / "comfyui_server.py"), str(self.args.comfyui),
                *comfyui_argv(port, folder / "base", folder / "web")]
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        env.update(dict(item.split("=", 1) for item in self.args.comfyui_env))
        base = f"http://127.0.0.1:{port}"

        def ready() -> bool:
            return isinstance(http_json(f"{base}/queue", timeout=2), dict)

        return self.over_http("comfyui", argv, env, base, ready, folder)

    def run(self) -> Trial:
        folder = self.fresh_dir("run")
        path = folder / "workflow.json"
        path.write_text(json.dumps(workflow(self.checkpoint.name, self.args.size, self.args.steps, seed=1)))
        argv = [sys.executable, "-m", "comfyd", "run", str(path), "--models-dir", str(self.models),
                "--output-dir", str(folder / "out"), "--quiet"]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        proc = subprocess.run(argv, env=self.comfyd_env(folder), cwd=folder, capture_output=True, text=True,
                              timeout=self.args.timeout_s)
        seconds = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
        if proc.returncode != 0 or not list((folder / "out").rglob("*.png")):
            raise RuntimeError(f"comfyd run failed ({proc.returncode}): {proc.stdout[-2000:]} {proc.stderr[-2000:]}")
        return Trial("run", {"first_image_s": seconds, "first_image_cpu_s": cpu})


def prepare_checkpoint(args: argparse.Namespace, work: Path) -> Path:
    sys.path.insert(0, str(BENCH))
    sys.path.insert(0, str(REPO))
    if args.tiny:
        from comfyd.models.tiny import make_tiny_checkpoint

        return Path(make_tiny_checkpoint(work / "models" / "checkpoints", family="sd1", seed=0))
    from gpu_throughput import full_checkpoint

    return full_checkpoint("sd1", args.cache_dir)


def report(trials: list[Trial], has_comfyui: bool) -> dict[str, float]:
    medians: dict[str, float] = {}
    for side in ("serve", "run", "comfyui"):
        mine = [t for t in trials if t.side == side]
        for key in sorted({k for t in mine for k in t.figures}):
            values = [t.figures[key] for t in mine if key in t.figures]
            medians[f"{side}_{key}"] = statistics.median(values)
            print(f"{side:8s} {key:18s} median {statistics.median(values):7.2f} s   runs: "
                  + " ".join(f"{v:.2f}" for v in values))
    ratios = {
        "cold_start_ratio": ("serve_first_image_s", "comfyui_first_image_s"),
        "cold_start_run_ratio": ("run_first_image_s", "comfyui_first_image_s"),
        "rerun_ratio": ("serve_rerun_s", "comfyui_rerun_s"),
        "cold_start_cpu_ratio": ("serve_first_image_cpu_s", "comfyui_first_image_cpu_s"),
    }
    for name, (ours, theirs) in ratios.items():
        if has_comfyui and ours in medians and theirs in medians:
            medians[name] = medians[ours] / medians[theirs]
    return medians


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--comfyui", type=Path, help="a ComfyUI checkout: measure it alternately")
    parser.add_argument("--comfyui-python", default="/work/cvenv/bin/python",
                        help="the Python with ComfyUI's requirements (default /work/cvenv/bin/python)")
    parser.add_argument("--repeats", type=int, default=3, help="trials of each side")
    parser.add_argument("--size", type=int, default=None, help="image side (256; 64 with --tiny)")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--tiny", action="store_true", help="tiny random model (the test run)")
    parser.add_argument("--sides", default="serve,comfyui,run", help="which of serve,comfyui,run to run")
    parser.add_argument("--env", action="append", default=[], metavar="COMFYD_X=V",
                        help="an extra environment variable for the comfyd processes")
    parser.add_argument("--comfyui-env", action="append", default=[], metavar="K=V",
                        help="an extra environment variable for ComfyUI (e.g. OMP_WAIT_POLICY=PASSIVE, which comfyd "
                             "sets for itself: OpenMP's default spinning is very slow on a busy machine)")
    parser.add_argument("--timeout-s", type=float, default=900.0, help="per step of a trial")
    parser.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "comfyd-bench")
    args = parser.parse_args(argv)
    args.size = args.size or (64 if args.tiny else 256)
    sides = [s for s in args.sides.split(",") if s and (s != "comfyui" or args.comfyui is not None)]
    if args.tiny and args.comfyui is not None:
        parser.error("--tiny is comfyd's own test model, which ComfyUI does not recognise; drop --comfyui")
    if args.comfyui is not None and not (args.comfyui / "main.py").is_file():
        parser.error(f"--comfyui {args.comfyui}: no main.py there")
    loads = [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory(prefix="comfyd-cold-start-") as tmp:
        work = Path(tmp)
        checkpoint = prepare_checkpoint(args, work)
        bench = Bench(args, work, checkpoint)
        trials: list[Trial] = []
        for i in range(args.repeats):
            order = sides if i % 2 == 0 else sides[::-1]
            for side in order:
                trial = getattr(bench, side)()
                trials.append(trial)
                shown = "  ".join(f"{k} {v:.2f}" for k, v in trial.figures.items())
                print(f"[{i + 1}/{args.repeats}] {side:8s} {shown}", flush=True)
    loads.append(os.getloadavg()[0])
    print(f"model {checkpoint.name}, {args.size}x{args.size}, euler {args.steps} steps, cpu; "
          f"{os.cpu_count()} CPUs, load average {loads[0]:.2f} before, {loads[1]:.2f} after; "
          f"comfyd env: {' '.join(args.env) or 'as inherited'}; ComfyUI env: {' '.join(args.comfyui_env) or 'as inherited'}")
    medians = report(trials, "comfyui" in sides)
    for key, value in medians.items():
        print(f"RESULT {key}={value:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
