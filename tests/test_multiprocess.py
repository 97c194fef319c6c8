"""2 processes x 1 CPU device (jax.distributed, gloo) train to the 1-process parameters.

For ``train-seg``, ``pretrain`` and ``train-cls`` (fine-tuning, with its best-state choice),
through the real CLI in subprocesses on localhost:

1. a 1-process reference run, to completion;
2. the same command as 2 processes (``--coordinator localhost:PORT --num-processes 2
   --process-id i``), both SIGKILLed as soon as a complete checkpoint is on disk; its folder
   is copied;
3. the killed folder resumed under 2 processes, and the copy resumed under 1 process (a
   checkpoint written by 2 processes restores under 1), concurrently.

Both resumed runs must start at the killed run's newest checkpoint and end with the
reference's train state (parameters, optimizer state, step), and every metric line written
under 2 processes must match the reference's line of that step. Tolerance: ``rtol=1e-4,
atol=1e-5`` (measured: max abs difference 2.7e-6 for train-seg, 2.4e-7 for pretrain). The
two processes split every batch by rows, so the cross-device gradient mean sums in another
order than one device does; the numbers agree to float32 rounding, not bitwise.

Also checked: process 1 writes nothing of the run folder and prints no result on stdout
(metrics.jsonl has exactly one line per logged step; no progress bar or result line).
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from test_kill_resume import BAR, SEG, _complete_steps, _restore, _tail, write_inputs
from test_kill_resume import _args as command_args

pytestmark = pytest.mark.e2e

RTOL, ATOL = 1e-4, 1e-5
TIMEOUT_S = 420  # per invocation: compiling on 2 busy cores is the slow part


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Dataset folder, segments folder, config files and the subprocess environment."""
    root = tmp_path_factory.mktemp("multiprocess")
    return write_inputs(root, drop_env=("XLA_FLAGS",))  # 1 device a process


def _args(command: str, inputs: dict, out: Path) -> list[str]:
    return [*command_args(command, inputs), "--out", str(out)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


class _Run:
    """One invocation of the CLI as ``processes`` subprocesses (their logs beside ``out``)."""

    def __init__(self, args: list[str], out: Path, env: dict, name: str, processes: int):
        self.name, self.procs, self.logs = name, [], []
        port = _free_port()
        for i in range(processes):
            cluster = []
            if processes > 1:
                cluster = ["--coordinator", f"localhost:{port}", "--num-processes"]
                cluster += [str(processes), "--process-id", str(i)]
            log = (out.parent / f"{name}.{i}.out", out.parent / f"{name}.{i}.err")
            with open(log[0], "w") as o, open(log[1], "w") as e:
                self.procs.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "osteo_jax.cli", *args, *cluster],
                        stdout=o,
                        stderr=e,
                        env=env,
                        start_new_session=True,
                    )
                )
            self.logs.append(log)

    def kill(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait(timeout=60)

    def failed(self) -> str | None:
        """A description of the first process that exited non-zero, else None."""
        for i, p in enumerate(self.procs):
            if p.poll() not in (None, 0):
                return f"{self.name} process {i}: exit code {p.returncode}\n{self.err(i)}"
        return None

    def wait(self) -> None:
        """Waits for every process; fails the test if one fails or runs too long."""
        deadline = time.monotonic() + TIMEOUT_S
        try:
            while any(p.poll() is None for p in self.procs):
                if msg := self.failed():
                    pytest.fail(msg)
                if time.monotonic() > deadline:
                    pytest.fail(f"{self.name}: still running after {TIMEOUT_S} s\n{self.err(0)}")
                time.sleep(0.05)
            if msg := self.failed():
                pytest.fail(msg)
        finally:
            self.kill()

    def out(self, i: int = 0) -> str:
        return self.logs[i][0].read_text()

    def err(self, i: int = 0) -> str:
        return _tail(self.logs[i][1])


def _kill_after_first_checkpoint(run: _Run, ckpt_dir: Path) -> None:
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while not _complete_steps(ckpt_dir):
            if msg := run.failed():
                pytest.fail(msg)
            if any(p.poll() is not None for p in run.procs):
                pytest.fail(f"{run.name}: ended before a checkpoint was seen\n{run.err(0)}")
            if time.monotonic() > deadline:
                pytest.fail(f"{run.name}: no checkpoint after {TIMEOUT_S} s\n{run.err(0)}")
            time.sleep(0.01)
        for p in run.procs:
            os.killpg(p.pid, signal.SIGKILL)
        codes = [p.wait(timeout=60) for p in run.procs]
    finally:
        run.kill()
    assert codes == [-signal.SIGKILL] * 2, f"{run.name}: exit codes {codes}: the run had ended"


def _lines(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _assert_close(got: dict, want: dict, what: str) -> None:
    got_leaves, got_def = jax.tree_util.tree_flatten_with_path(got)
    want_leaves, want_def = jax.tree_util.tree_flatten_with_path(want)
    assert got_def == want_def, f"{what}: different pytree structure"
    assert any("params" in jax.tree_util.keystr(p) for p, _ in want_leaves), f"{what}: no params"
    for (path, a), (_, b) in zip(got_leaves, want_leaves, strict=True):
        a, b = np.asarray(a), np.asarray(b)
        assert a.dtype == b.dtype and a.shape == b.shape, jax.tree_util.keystr(path)
        assert np.isfinite(a).all(), jax.tree_util.keystr(path)
        np.testing.assert_allclose(
            a, b, rtol=RTOL, atol=ATOL, err_msg=f"{what}: {jax.tree_util.keystr(path)}"
        )


def _assert_lines_match(lines: list[dict], reference: list[dict], what: str) -> None:
    by_step = {x["step"]: x for x in reference}
    assert lines, f"{what}: no metric line"
    for line in lines:
        want = by_step[line["step"]]
        assert line.keys() == want.keys(), (what, line["step"])
        for k, v in line.items():
            if isinstance(v, str):
                assert v == want[k], (what, line["step"], k)
                continue
            np.testing.assert_allclose(v, want[k], rtol=RTOL, atol=ATOL, err_msg=f"{what}: {k}")


@pytest.mark.parametrize("command", ["train-seg", "pretrain", "train-cls"])
def test_two_processes_train_kill_and_resume_like_one(command, inputs, tmp_path):
    env = inputs["env"]
    ref, two = tmp_path / "reference", tmp_path / "two"
    reference = _Run(_args(command, inputs, ref), ref, env, "reference", 1)
    killed = _Run(_args(command, inputs, two), two, env, "killed", 2)
    _kill_after_first_checkpoint(killed, two / "checkpoints")
    reference.wait()
    total, want = _restore(ref / "checkpoints")
    ref_lines = _lines(ref)

    resume_step = _complete_steps(two / "checkpoints")[-1]
    assert 0 < resume_step < total, (resume_step, total)
    killed_lines = _lines(two)
    one = tmp_path / "one"  # the 2-process checkpoint, resumed by a single process
    shutil.copytree(two, one)
    resumed_two = _Run(_args(command, inputs, two), two, env, "resumed2", 2)
    resumed_one = _Run(_args(command, inputs, one), one, env, "resumed1", 1)
    resumed_two.wait()
    resumed_one.wait()

    for run, name in ((resumed_two, "2 processes"), (resumed_one, "1 process")):
        m = BAR.search(run.err(0).replace("\r", "\n"))
        assert m and int(m.group(1)) == resume_step, f"{name}: did not resume at {resume_step}"
    for run_dir, name in ((two, "2 processes"), (one, "1 process")):
        step, got = _restore(run_dir / "checkpoints")
        assert step == total
        _assert_close(got, want, f"{command}, resumed under {name} from step {resume_step}")

    # Every line logged under 2 processes is the reference's; process 0 alone wrote them.
    lines = _lines(two)
    _assert_lines_match(lines, ref_lines, f"{command} metrics under 2 processes")
    new = lines[len(killed_lines) :]
    assert [x["step"] for x in new] == [x["step"] for x in ref_lines if x["step"] > resume_step]
    steps = [x["step"] for x in killed_lines]
    assert len(steps) == len(set(steps)), "a step logged twice by one invocation"
    # Process 1's stdout holds at most gloo's own connection line (printed by C++).
    assert all(x.startswith("[Gloo]") for x in resumed_two.out(1).splitlines())
    assert not BAR.search(resumed_two.err(1).replace("\r", "\n")), "process 1 showed a bar"
    if command == "train-cls":  # the best (val macro-F1) state, chosen alike by both
        best_ref = json.loads((ref / "best.json").read_text())
        for run_dir, name in ((two, "2 processes"), (one, "1 process")):
            _assert_close(_restore(run_dir / "best")[1], _restore(ref / "best")[1], name)
            best = json.loads((run_dir / "best.json").read_text())
            assert best["epoch"] == best_ref["epoch"], name
        assert "test subjects" in resumed_two.out(0)
    else:
        assert f"{total} steps" in resumed_two.out(0)


def test_every_process_refuses_a_run_folder_of_another_config(inputs, tmp_path):
    from osteo_jax.train.runner import claim_run_dir

    out = tmp_path / "run"
    claim_run_dir(out, "train-seg", SEG, str(inputs["data"]))
    before = sorted(p.name for p in out.iterdir())
    run = _Run([*_args("train-seg", inputs, out), "--seed", "7"], out, inputs["env"], "other", 2)
    for i, p in enumerate(run.procs):
        assert p.wait(timeout=TIMEOUT_S) == 2, run.err(i)
        assert "different configuration" in run.err(i)
    assert sorted(p.name for p in out.iterdir()) == before


# Process i of 2 checks the helpers against values it computes itself (no jax reference).
_HELPERS = """
import sys
from osteo_jax.train import distributed
assert distributed.initialize(sys.argv[1], 2, int(sys.argv[2]))
import jax, numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
from osteo_jax.train.runner import data_mesh
i = jax.process_index()
assert distributed.data_shard() == (i, 2) and distributed.is_main() == (i == 0)
mesh = data_mesh(batch_size=4)
assert mesh.devices.size == 2 and jax.local_device_count() == 1
x = np.arange(12, dtype=np.float32).reshape(4, 3)
batch = distributed.global_batch(x[2 * i : 2 * i + 2], NamedSharding(mesh, P("data")))
assert batch.shape == (4, 3) and not batch.is_fully_addressable
np.testing.assert_array_equal(distributed.to_host(batch), x)  # gathered from both
state = distributed.place({"w": x[0]}, NamedSharding(mesh, P()))
total = jax.jit(lambda s, b: (s["w"] * b).sum())(state, batch)
assert float(distributed.to_host(total)) == float((x[0] * x).sum())
local = distributed.to_local(state)
assert local["w"].is_fully_addressable and (np.asarray(local["w"]) == x[0]).all()
got = distributed.from_main({"f1": 1 / 3 + i, "n": 5 + i})
assert got == {"f1": 1 / 3, "n": 5}, got  # exact: float64 survives
distributed.barrier("done")
print("ok", i)
"""


def test_helpers_under_two_processes(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["JAX_PLATFORMS"] = "cpu"
    address = f"localhost:{_free_port()}"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _HELPERS, address, str(i)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            text=True,
            start_new_session=True,
        )
        for i in range(2)
    ]
    try:
        outs = [p.communicate(timeout=TIMEOUT_S)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
    for i, (p, out) in enumerate(zip(procs, outs, strict=True)):
        assert p.returncode == 0 and f"ok {i}" in out, out[-3000:]
