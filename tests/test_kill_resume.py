"""SIGKILL a training command after its first checkpoint, rerun it: bitwise the same final state.

Each training command (``train-seg``, ``pretrain``, ``train-cls``) runs three times through the
real CLI in a subprocess: once uninterrupted; once killed with SIGKILL as soon as a complete
checkpoint step folder is on disk (orbax writes ``<step>.orbax-checkpoint-tmp`` and renames it to
``<step>``); and once more, to completion, in the killed run's folder. The last run must resume
from the newest complete checkpoint (checked on the progress bar's start and the logs, so a
restart from scratch cannot pass) and end with a checkpointed train state (parameters,
optimizer state, step) bitwise equal to the uninterrupted run's.

The subprocesses share a persistent JAX compilation cache: the uninterrupted run compiles, the
other two load the executables, so the killed run reaches its first checkpoint in seconds and
then still has many steps to go when the kill lands.
"""

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from osteo_jax.cli import main
from osteo_jax.config import (
    BackboneConfig,
    ClsConfig,
    CropConfig,
    OTConfig,
    ProtocolConfig,
    SegConfig,
    SegTrainConfig,
    SSLConfig,
)
from osteo_jax.train.runner import Checkpointer

# Several real CLI subprocesses per test: `make e2e` (CI runs it after `make test`).
pytestmark = pytest.mark.e2e

# 12 training images, 2 per step: 6 steps an epoch, 18 in all. No validation split (it would
# only add a compile; validation does not touch the parameters).
SEG = SegTrainConfig(
    model=SegConfig(
        features=(8, 16), num_experts=2, num_samples=2, latent_dim=3, head_hidden=8, image_size=32
    ),
    ot=OTConfig(gamma_ramp_start=1, gamma_ramp_steps=2),
    batch_size=2,
    epochs=3,
    warmup_steps=1,
    val_fraction=0.0,
    checkpoint_every=1,
)
# pretrain: the training subjects' segments, 8 per step, 7 steps an epoch, 14 in all.
# train-cls: fine-tuning (backbone, head and the per-step crop augmentation all resume), one
# checkpoint per epoch, 6 epochs.
PROTOCOL = ProtocolConfig(
    name="tiny",
    ssl=SSLConfig(
        backbone=BackboneConfig(width=8),
        crops=CropConfig(global_size=12, local_size=8, n_local=2),
        batch_size=8,
        epochs=2,
        projector_hidden=16,
        projector_out=8,
        checkpoint_every=1,
    ),
    cls=ClsConfig(mode="finetune", epochs=6, batch_size=16, seeds=(0,), bootstrap=20),
    backbone=BackboneConfig(width=8),
)
TIMEOUT_S = 420  # per invocation; compiling on 2 busy cores is the slow part
BAR = re.compile(r"\|\s*(\d+)/(\d+) \[")  # tqdm: "...| 3/18 [00:01<..."


def write_inputs(root: Path, *, drop_env: tuple[str, ...] = ()) -> dict:
    """Dataset folder, segments folder, the two commands' config files and the environment of
    their subprocesses (CPU, a compile cache of their own; ``drop_env`` variables removed)."""
    data, segments = root / "data", root / "segments"
    synth = ["--subjects", "12", "--size", "128", "--seed", "1", "--workers", "1"]
    assert main(["synth", *synth, "--out", str(data)]) == 0
    segment = ["--source", "exact", "--size", "16", "--out", str(segments)]
    assert main(["segment", "--data", str(data), *segment]) == 0
    seg_cfg, protocol_cfg = root / "seg.json", root / "protocol.json"
    seg_cfg.write_text(json.dumps({"config": dataclasses.asdict(SEG)}))
    protocol_cfg.write_text(json.dumps({"config": dataclasses.asdict(PROTOCOL)}))
    env = {k: v for k, v in os.environ.items() if k not in drop_env}
    env.update(
        JAX_PLATFORMS="cpu",  # bitwise equality is a CPU property (GPU reductions may reorder)
        JAX_COMPILATION_CACHE_DIR=str(root / "jax_cache"),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
    )
    return {
        "data": data,
        "segments": segments,
        "seg_cfg": seg_cfg,
        "protocol_cfg": protocol_cfg,
        "env": env,
    }


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Dataset folder, segments folder and config files shared by the three commands."""
    return write_inputs(tmp_path_factory.mktemp("kill_resume"))


def _args(command: str, inputs: dict) -> list[str]:
    if command == "train-seg":
        return [command, "--data", str(inputs["data"]), "--config", str(inputs["seg_cfg"])]
    return [command, "--segments", str(inputs["segments"]), "--config", str(inputs["protocol_cfg"])]


def _tail(path: Path, n: int = 3000) -> str:
    text = path.read_text(errors="replace").replace("\r", "\n") if path.exists() else ""
    return text[-n:]


def _start(args: list[str], out: Path, env: dict, log: str) -> tuple[subprocess.Popen, Path, Path]:
    stdout, stderr = out.parent / f"{log}.out", out.parent / f"{log}.err"
    with open(stdout, "w") as o, open(stderr, "w") as e:
        proc = subprocess.Popen(
            [sys.executable, "-m", "osteo_jax.cli", *args, "--out", str(out)],
            stdout=o,
            stderr=e,
            env=env,
            start_new_session=True,  # its own process group: the kill reaches any children
        )
    return proc, stdout, stderr


def _kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:  # not reaped yet, so the group id is still this run's
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=60)


def _run(args: list[str], out: Path, env: dict, log: str) -> tuple[str, str]:
    """Runs a command to completion; returns its stdout and stderr."""
    proc, stdout, stderr = _start(args, out, env, log)
    try:
        rc = proc.wait(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{log}: still running after {TIMEOUT_S} s\n{_tail(stderr)}")
    finally:
        _kill(proc)
    assert rc == 0, f"{log}: exit code {rc}\nstdout:\n{_tail(stdout)}\nstderr:\n{_tail(stderr)}"
    return stdout.read_text(), stderr.read_text()


def _complete_steps(ckpt_dir: Path) -> list[int]:
    """Steps of the finished checkpoints (orbax renames the temporary folder when done)."""
    try:
        names = os.listdir(ckpt_dir)
    except FileNotFoundError:
        return []
    return sorted(int(n) for n in names if n.isdigit())


def _run_and_kill(args: list[str], out: Path, env: dict, log: str) -> None:
    """Starts a command and SIGKILLs it as soon as its first checkpoint is complete."""
    proc, _, stderr = _start(args, out, env, log)
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while not _complete_steps(out / "checkpoints"):
            if proc.poll() is not None:
                pytest.fail(
                    f"{log}: exited ({proc.returncode}) before a checkpoint was seen\n"
                    f"{_tail(stderr)}"
                )
            if time.monotonic() > deadline:
                pytest.fail(f"{log}: no checkpoint after {TIMEOUT_S} s\n{_tail(stderr)}")
            time.sleep(0.01)
        os.killpg(proc.pid, signal.SIGKILL)
        rc = proc.wait(timeout=60)
    finally:
        _kill(proc)
    # A run that finished just before the kill exits 0: then this test proves nothing.
    assert rc == -signal.SIGKILL, f"{log}: exit code {rc}, the kill landed after the run ended"


def _restore(ckpt_dir: Path) -> tuple[int, dict]:
    """``(step, state tree)`` of the newest checkpoint, read back as saved."""
    ckpt = Checkpointer(ckpt_dir)
    try:
        step = ckpt.latest_step()
        assert step is not None, f"{ckpt_dir}: no checkpoint"
        tree = ckpt.manager.restore(step, args=ocp.args.StandardRestore())
    finally:
        ckpt.close()
    return step, tree


def _assert_bitwise_equal(resumed: dict, reference: dict, what: str) -> None:
    got, got_def = jax.tree_util.tree_flatten_with_path(resumed)
    want, want_def = jax.tree_util.tree_flatten_with_path(reference)
    assert got_def == want_def, f"{what}: different pytree structure"
    assert any("params" in jax.tree_util.keystr(p) for p, _ in want), f"{what}: no params"
    differ = []
    for (path, a), (_, b) in zip(got, want, strict=True):
        a, b = np.asarray(a), np.asarray(b)
        assert a.dtype == b.dtype and a.shape == b.shape, jax.tree_util.keystr(path)
        if not np.array_equal(a, b):
            diff = np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))
            differ.append(f"{jax.tree_util.keystr(path)} (max |diff| {diff:.3g})")
    assert not differ, f"{what}: {len(differ)} of {len(got)} leaves differ: {differ[:8]}"


def _bar_start(stderr: str, log: str) -> int:
    """The position the progress bar started at (tqdm's ``initial``: the resume point)."""
    m = BAR.search(stderr.replace("\r", "\n"))
    assert m, f"{log}: no progress bar in stderr:\n{stderr[-2000:]}"
    return int(m.group(1))


@pytest.fixture(scope="module")
def reference(inputs, tmp_path_factory):
    """``reference(command)``: folder and final state of an uninterrupted run (one per module)."""
    done = {}

    def get(command: str) -> tuple[Path, int, dict]:
        if command not in done:
            ref = tmp_path_factory.mktemp(command) / "reference"
            _run(_args(command, inputs), ref, inputs["env"], "reference")  # fills the cache
            done[command] = (ref, *_restore(ref / "checkpoints"))
        return done[command]

    return get


@pytest.mark.parametrize("command", ["train-seg", "pretrain", "train-cls"])
def test_killed_run_resumes_to_the_uninterrupted_state(command, inputs, reference, tmp_path):
    env = inputs["env"]
    run = tmp_path / "run"
    ref, total, want = reference(command)

    _run_and_kill(_args(command, inputs), run, env, "killed")
    killed_at = Checkpointer(run / "checkpoints")
    resume_step = killed_at.latest_step()
    killed_at.close()
    assert 0 < resume_step < total, (resume_step, total)
    lines_before = len((run / "metrics.jsonl").read_text().splitlines())

    stdout, stderr = _run(_args(command, inputs), run, env, "resumed")
    new_lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    new_lines = new_lines[lines_before:]
    assert new_lines, "the resumed run logged nothing"
    # The resumed run started at the killed run's newest checkpoint, not at 0.
    assert _bar_start(stderr, command) == resume_step
    assert all(x["step"] > resume_step for x in new_lines)
    if command == "train-cls":  # one checkpoint per epoch
        steps_per_epoch = total // PROTOCOL.cls.epochs
        assert resume_step % steps_per_epoch == 0, (resume_step, steps_per_epoch)
        assert new_lines[0]["epoch"] == resume_step // steps_per_epoch
    if command == "train-seg":
        assert f"(resumed from {resume_step})" in stdout, stdout

    step, got = _restore(run / "checkpoints")
    assert step == total
    _assert_bitwise_equal(got, want, f"{command}: final state (resumed from {resume_step})")
    if command == "train-cls":  # the selected (best val macro-F1) state and its record
        _assert_bitwise_equal(_restore(run / "best")[1], _restore(ref / "best")[1], "best state")
        best = json.loads((run / "best.json").read_text())
        assert best == json.loads((ref / "best.json").read_text())


# Dies (SIGKILL to itself) right after the 2nd improvement's best checkpoint is written, before
# best.json records it: the narrowest of the windows a kill can hit in train-cls.
_DIE_BEFORE_BEST_JSON = """
import os, pathlib, signal, sys
from osteo_jax.cli import main
write_text, seen = pathlib.Path.write_text, []
def die_on_2nd_best(self, data, *args, **kw):
    if self.name in ("best.json", ".best.json.tmp"):  # written atomically via the .tmp
        seen.append(data)
        if len(seen) == 2:
            os.kill(os.getpid(), signal.SIGKILL)
    return write_text(self, data, *args, **kw)
pathlib.Path.write_text = die_on_2nd_best
sys.exit(main(sys.argv[1:]))
"""


def test_train_cls_killed_between_best_checkpoint_and_best_json(inputs, reference, tmp_path):
    ref, _, want = reference("train-cls")
    run = tmp_path / "run"
    args = _args("train-cls", inputs)
    stderr = tmp_path / "killed.err"
    with open(stderr, "w") as e:
        proc = subprocess.run(
            [sys.executable, "-c", _DIE_BEFORE_BEST_JSON, *args, "--out", str(run)],
            stdout=subprocess.DEVNULL,
            stderr=e,
            env=inputs["env"],
            timeout=TIMEOUT_S,
        )
    assert proc.returncode == -signal.SIGKILL, f"no 2nd improvement?\n{_tail(stderr)}"
    best_steps = _complete_steps(run / "best")
    # The best checkpoint is ahead of both the running checkpoint and best.json: the resumed
    # run recomputes that epoch, finds it better than the stale best.json, and must not trip
    # over the best checkpoint already saved for that step (orbax: StepAlreadyExistsError).
    assert best_steps[-1] > _complete_steps(run / "checkpoints")[-1]
    assert (
        json.loads((run / "best.json").read_text())["epoch"]
        < json.loads((ref / "best.json").read_text())["epoch"]
    )

    _run(args, run, inputs["env"], "resumed")
    _assert_bitwise_equal(_restore(run / "checkpoints")[1], want, "final state")
    _assert_bitwise_equal(_restore(run / "best")[1], _restore(ref / "best")[1], "best state")
    assert json.loads((run / "best.json").read_text()) == json.loads(
        (ref / "best.json").read_text()
    )
