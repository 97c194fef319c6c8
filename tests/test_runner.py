"""runner.run with a toy least-squares step: log, checkpoints, validation, resume, mesh."""

import functools
import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from osteo_jax.train.runner import Checkpointer, Schedule, data_mesh, run, write_config
from osteo_jax.train.state import TrainState

X = np.arange(12, dtype=np.float32).reshape(6, 2)  # batch b is X[b]: 3 steps an epoch, 2 epochs


def _step(state, batch, rng, *, bad_at=None):
    """One SGD step on ``mean((w - x)^2)``; ``loss`` turns NaN at step ``bad_at``."""
    del rng
    loss_fn = lambda w: jnp.mean((w - batch["x"]) ** 2)  # noqa: E731
    loss, grad = jax.value_and_grad(loss_fn)(state.params["w"])
    if bad_at is not None:
        loss = jnp.where(state.step + 1 == bad_at, jnp.nan, loss)
    count = state.opt_state["sgd"]["count"] + 1
    new = state.replace(
        step=state.step + 1,
        params={"w": state.params["w"] - 0.1 * grad},
        opt_state={"sgd": {"count": count}},
    )
    return new, {"loss": loss, "w": state.params["w"]}


def _state():
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params={"w": jnp.zeros((), jnp.float32)},
        opt_state={"sgd": {"count": jnp.zeros((), jnp.int32)}},
    )


class _Batches:
    """Batch ``b`` is ``X[b]`` whatever the start (like the grain loader); records closing."""

    closed = []

    def __init__(self, start):
        self.b = start

    def __iter__(self):
        return self

    def __next__(self):
        self.b += 1
        return {"x": X[self.b - 1]}

    def close(self):
        _Batches.closed.append(self.b)


def _run(run_dir, max_steps=None, step=None, **kw):
    kw = {"log_every": 2, "checkpoint_every": None, "progress": False, **kw}
    return run(
        _state(),
        jax.jit(step or _step),
        _Batches,
        run_dir=run_dir,
        schedule=Schedule.of(len(X), 2, epochs=2, max_steps=max_steps),
        rng=jax.random.key(0),
        mesh=data_mesh(jax.devices()[:1]),
        **kw,
    )


def _lines(run_dir):
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_schedule():
    s = Schedule.of(13, 4, epochs=3, max_steps=5)
    assert (s.steps_per_epoch, s.schedule_steps, s.total) == (3, 9, 5)
    assert Schedule.of(13, 4, epochs=3).total == 9
    with pytest.raises(ValueError, match="3 segments are fewer than one batch"):
        Schedule.of(3, 4, epochs=1, what="segments")


@pytest.mark.parametrize("split_lines", [True, False])
def test_run_logs_validates_and_checkpoints(tmp_path, split_lines):
    seen = []

    def evaluate(state, epoch):
        seen.append((int(state.step), epoch))
        return {"w": float(state.params["w"])}

    res = _run(tmp_path, evaluate_fn=evaluate, split_lines=split_lines)
    assert res.start == 0 and int(res.state.step) == 6 and res.wall_s > 0
    assert seen == [(3, 0), (6, 1)]
    # Log lines at every 2nd step and at each epoch's end; validation at each epoch's end.
    lines = _lines(tmp_path)
    train = [x for x in lines if x.get("split", "train") == "train"]
    assert [(x["step"], x["epoch"]) for x in train] == [(2, 0), (3, 0), (4, 1), (6, 1)]
    if split_lines:
        assert [x["step"] for x in lines if x.get("split") == "val"] == [3, 6]
        assert all("val_w" not in x for x in lines)
    else:
        assert [x["step"] for x in lines if "val_w" in x] == [3, 6]
        assert all("split" not in x for x in lines)
    assert res.train == {k: train[-1][k] for k in ("loss", "w")}
    assert res.val == {"w": pytest.approx(float(res.state.params["w"]))}
    # Checkpoints at each epoch's end (the newest two kept).
    ckpt = Checkpointer(tmp_path / "checkpoints")
    assert sorted(ckpt.manager.all_steps()) == [3, 6]
    ckpt.close()


@pytest.mark.parametrize("every", [2, 5])
def test_validate_every_skips_epochs_but_always_scores_the_last(tmp_path, every):
    seen = []

    def evaluate(state, epoch):
        seen.append((int(state.step), epoch))
        return {"w": float(state.params["w"])}

    res = _run(tmp_path, evaluate_fn=evaluate, validate_every=every, split_lines=True)
    assert seen == [(6, 1)]  # epoch 0 is not due; the run's last epoch always is
    assert [x["step"] for x in _lines(tmp_path) if x.get("split") == "val"] == [6]
    straight = _run(tmp_path / "every_epoch", evaluate_fn=evaluate)
    np.testing.assert_array_equal(res.state.params["w"], straight.state.params["w"])


def test_a_seg_run_resumes_with_another_validate_every_but_not_other_epochs(tmp_path):
    import dataclasses

    from osteo_jax.config import SegTrainConfig

    cfg = SegTrainConfig()
    write_config(tmp_path, cfg, "data")
    write_config(tmp_path, dataclasses.replace(cfg, validate_every=6), "data")  # same run
    with pytest.raises(ValueError, match="different configuration"):
        write_config(tmp_path, dataclasses.replace(cfg, epochs=cfg.epochs + 1), "data")
    with pytest.raises(ValueError, match="validate_every must be > 0"):
        SegTrainConfig(validate_every=0)


def test_an_experiment_folder_resumes_with_its_segmenter_scored_more_or_less_often(tmp_path):
    import dataclasses

    from osteo_jax.pipeline.experiment import demo_config

    cfg = demo_config()

    def with_seg(**kw):
        return dataclasses.replace(cfg, seg=dataclasses.replace(cfg.seg, **kw))

    write_config(tmp_path, cfg, "data")
    path = tmp_path / "config.json"
    recorded = json.loads(path.read_text())
    del recorded["config"]["seg"]["validate_every"]  # a demo folder from before the field
    path.write_text(json.dumps(recorded))
    write_config(tmp_path, cfg, "data")  # resumed: scored every 6 epochs from now on
    write_config(tmp_path, with_seg(validate_every=2), "data")
    for other in (with_seg(epochs=cfg.seg.epochs + 1), with_seg(max_steps=10)):
        with pytest.raises(ValueError, match="different configuration"):
            write_config(tmp_path, other, "data")


def test_resumed_run_equals_uninterrupted(tmp_path):
    straight = _run(tmp_path / "a", checkpoint_every=1)
    first = _run(tmp_path / "b", max_steps=4, checkpoint_every=1)
    assert int(first.state.step) == 4
    _Batches.closed.clear()
    resumed = _run(tmp_path / "b", checkpoint_every=1)
    assert resumed.start == 4 and _Batches.closed == [6]  # the loader began at batch 4
    np.testing.assert_array_equal(resumed.state.params["w"], straight.state.params["w"])
    assert [x["step"] for x in _lines(tmp_path / "b")] == [2, 3, 4, 6]


def test_non_finite_metric_names_step_and_term(tmp_path):
    _Batches.closed.clear()
    with pytest.raises(FloatingPointError, match="non-finite loss = nan at step 4"):
        _run(tmp_path, step=functools.partial(_step, bad_at=4), checkpoint_every=1)
    assert _Batches.closed == [4]  # closed on the way out
    ckpt = Checkpointer(tmp_path / "checkpoints")
    assert ckpt.latest_step() == 3  # the bad step was not saved
    ckpt.close()


_TWO_DEVICE_SCRIPT = textwrap.dedent("""
    import json, sys
    import jax
    sys.path.insert(0, {tests!r})
    import test_runner as t
    from osteo_jax.train.runner import data_mesh, run, Schedule
    assert len(jax.devices()) == 2, jax.devices()
    jitted = jax.jit(t._step)
    seen = []
    def step(state, batch, rng):
        specs = [list(state.params["w"].sharding.spec), list(batch["x"].sharding.spec)]
        seen.append(json.dumps(specs))
        return jitted(state, batch, rng)
    out = {{}}
    for n in (1, 2):
        res = run(t._state(), step, t._Batches, run_dir={out!r} + str(n),
                  schedule=Schedule.of(6, 2, epochs=2), rng=jax.random.key(0),
                  mesh=data_mesh(jax.devices()[:n]), progress=False)
        out[n] = float(res.state.params["w"])
    try:
        data_mesh(batch_size=3)
    except ValueError as e:
        raised = str(e)
    print(json.dumps({{"w": out, "specs": sorted(set(seen)), "raised": raised}}))
""")


def test_state_replicated_and_batch_sharded_on_two_devices(tmp_path):
    env = dict(
        os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu"
    )
    script = _TWO_DEVICE_SCRIPT.format(tests=os.path.dirname(__file__), out=str(tmp_path / "r"))
    res = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300
    )
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert [json.loads(x) for x in out["specs"]] == [[[], ["data"]]]  # on both meshes
    assert out["w"]["1"] == pytest.approx(out["w"]["2"], rel=1e-6)
    assert out["raised"] == "batch_size 3 is not divisible by 2 devices"


def test_a_folder_written_before_a_config_field_existed_resumes_on_its_default(tmp_path):
    import dataclasses

    from osteo_jax.config import SSLConfig

    cfg = SSLConfig()
    write_config(tmp_path, cfg, "data")
    path = tmp_path / "config.json"
    recorded = json.loads(path.read_text())
    del recorded["config"]["backbone"]["grey_levels"]  # as written before the field existed
    path.write_text(json.dumps(recorded))
    write_config(tmp_path, cfg, "data")  # the default: the same run, resumed
    grey = dataclasses.replace(cfg, backbone=dataclasses.replace(cfg.backbone, grey_levels=True))
    with pytest.raises(ValueError, match="different configuration"):
        write_config(tmp_path, grey, "data")
    assert "grey_levels" not in json.loads(path.read_text())["config"]["backbone"]  # untouched
