"""Ctrl-C on `comfyd run`: the first stops the run within a step (both execution modes), prints
"interrupted", writes no file and exits 130; a second exits at once, cleanly.

Synchronised on output, never on time: SIGINT is sent once the run has printed its first sampler
step (plain progress lines when stderr is a pipe).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = f"{ROOT}{os.pathsep}{env.get('PYTHONPATH', '')}"
    return env


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    from comfyd.models.tiny import make_tiny_checkpoint

    root = tmp_path_factory.mktemp("models")
    made = make_tiny_checkpoint(root / "checkpoints", family="sd1", fmt="single", seed=0)
    return root, made.name


def _start_run(models: tuple[Path, str], out: Path, mode: str) -> subprocess.Popen[str]:
    root, ckpt = models
    command = [
        sys.executable, "-m", "comfyd", "run", "--models-dir", str(root), "--output", str(out),
        "--mode", mode, "--ckpt", ckpt,
        # Far more steps than the test waits for: finishing them would take minutes.
        "--set", "3.steps=10000", "--set", "5.width=64", "--set", "5.height=64",
    ]
    return subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=_env())


def _wait_for(proc: subprocess.Popen[str], needle: str) -> list[str]:
    seen = []
    assert proc.stderr is not None
    for line in proc.stderr:
        seen.append(line)
        if needle in line:
            return seen
    raise AssertionError(f"{needle!r} never printed; stderr was:\n{''.join(seen)}")


@pytest.mark.parametrize("mode", ["sequential", "parallel"])
def test_first_ctrl_c_stops_within_a_step(models_dir: tuple[Path, str], tmp_path: Path, mode: str) -> None:
    out = tmp_path / "out"
    proc = _start_run(models_dir, out, mode)
    try:
        _wait_for(proc, "KSampler: step 1/10000")
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, stderr
    assert "interrupted" in stderr
    assert "Traceback" not in stderr and "terminate called" not in stderr
    # It stopped within a step or so, far from the end (the last step would print 10000/10000).
    assert "step 10000/10000" not in stderr
    assert not out.exists() or not any(out.rglob("*")), "an interrupted run must leave no files"
    assert "wrote" not in stdout


def test_second_ctrl_c_exits_at_once_while_a_node_ignores_the_flag(tmp_path: Path) -> None:
    """A node stuck in native code (a long model load, say) never looks at the interrupt flag:
    the second Ctrl-C must still end the process, with 130 and no abort message."""
    script = textwrap.dedent(
        """
        import threading, time
        from comfyd.cli import _interrupt_on_sigint, _ProgressBar
        flag = threading.Event()
        with _interrupt_on_sigint(flag, _ProgressBar(enabled=False)):
            # A non-daemon thread, as a pool thread running a node is: normal exit would wait for it.
            threading.Thread(target=time.sleep, args=(600,)).start()
            print("ready", flush=True)
            flag.wait()
            print("first seen", flush=True)
            time.sleep(600)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=_env())
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        proc.send_signal(signal.SIGINT)
        assert proc.stdout.readline().strip() == "first seen"
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130
    assert "exiting now" in stderr
    assert "Traceback" not in stderr and "terminate called" not in stderr


@pytest.mark.slow
def test_two_quick_ctrl_c_on_a_real_run_exit_130_cleanly(models_dir: tuple[Path, str], tmp_path: Path) -> None:
    proc = _start_run(models_dir, tmp_path / "out", "parallel")
    try:
        _wait_for(proc, "KSampler: step 1/10000")
        proc.send_signal(signal.SIGINT)
        _wait_for(proc, "Ctrl-C again")
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    # Either the run had already stopped (a normal interrupted exit) or the second signal ended
    # it at once: both are 130 without an abort.
    assert proc.returncode == 130, stderr
    assert "terminate called" not in stderr and "Traceback" not in stderr
