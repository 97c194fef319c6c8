"""SIGKILL of `osteo-jax synth` mid-render: its workers die with it, the re-run cleans up."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

ARGS = ["--subjects", "24", "--size", "384", "--annotators", "1", "--workers", "2", "--seed", "5"]


def _children(pid: int) -> list[int]:
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            kids.append(int(stat.parent.name))
    return kids


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_killed_synth_leaves_no_worker_and_reruns_clean(tmp_path):
    out = tmp_path / "data"
    cmd = [sys.executable, "-m", "osteo_jax.cli", "synth", *ARGS, "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 40
    workers: list[int] = []
    while time.monotonic() < deadline:  # kill once the workers have written an image
        images = list(out.glob(".partial-*/images/*.png"))
        workers = [p for p in _children(proc.pid) if _alive(p)]
        if images and len(workers) >= 2:
            break
        assert proc.poll() is None, "synth finished before it could be killed"
        time.sleep(0.05)
    assert workers, "no render worker started"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(_alive(p) for p in workers):
        time.sleep(0.1)
    assert not [p for p in workers if _alive(p)], "render workers outlived synth"
    assert list(out.glob(".partial-*")), "the kill came after the dataset was published"

    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=50)
    assert done.returncode == 0, done.stderr
    assert (out / "dataset.json").exists()
    assert not list(out.glob(".partial-*")) and not list(tmp_path.glob(".*partial*"))
    assert len(list((out / "images").glob("*.png"))) == 24
