"""Worker processes: when a spawned pool can start, and how many radiogrammetry measures with."""

import subprocess
import sys

from osteo_jax.data import workers
from osteo_jax.pipeline.experiment import _measure_jobs

PROBE = "from osteo_jax.data.workers import spawnable; print(spawnable())"


def test_spawnable_is_false_only_for_a_program_read_from_stdin(tmp_path):
    script = tmp_path / "probe.py"
    script.write_text(PROBE + "\n")
    runs = {
        "-c": [sys.executable, "-c", PROBE],
        "file": [sys.executable, str(script)],
        "stdin": [sys.executable, "-"],
    }
    got = {
        name: subprocess.run(
            argv, input=PROBE if name == "stdin" else None, capture_output=True, text=True,
            check=True,
        ).stdout.strip()
        for name, argv in runs.items()
    }  # fmt: skip
    assert got == {"-c": "True", "file": "True", "stdin": "False"}


def test_measure_jobs_falls_back_to_this_process(monkeypatch):
    monkeypatch.setattr(workers, "spawnable", lambda: True)
    assert _measure_jobs(3) == 3 and _measure_jobs(1) == 0
    monkeypatch.setattr(workers, "spawnable", lambda: False)  # e.g. python - <<EOF
    assert _measure_jobs(3) == 0
