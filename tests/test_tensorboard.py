"""TensorBoard event files hold the numbers of metrics.jsonl; lr and expert weights α logged."""

import functools
import json
import struct

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from tensorboardX.proto import event_pb2

from osteo_jax.config import OTConfig, SegConfig
from osteo_jax.train.runner import Schedule, data_mesh, run
from osteo_jax.train.state import TrainState, init_segmenter_params, make_segmenter
from osteo_jax.train.steps import seg_loss
from osteo_jax.train.tensorboard import TENSORBOARD_DIR, scalar_tags

X = np.arange(12, dtype=np.float32).reshape(6, 2)  # batch b is X[b]: 3 steps an epoch, 2 epochs


def _step(state, batch, rng):
    del rng
    loss, grad = jax.value_and_grad(lambda w: jnp.mean((w - batch["x"]) ** 2))(state.params["w"])
    new = state.replace(step=state.step + 1, params={"w": state.params["w"] - 0.1 * grad})
    return new, {"loss": loss, "expert_alpha_0": jnp.float32(0.25), "w": state.params["w"]}


def _events(logdir):
    """``{tag: {step: value}}`` of every scalar in the TFRecord event files under ``logdir``."""
    out = {}
    for path in sorted(logdir.glob("events.out.tfevents.*")):
        data = path.read_bytes()
        pos = 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos : pos + 8])
            record = data[pos + 12 : pos + 12 + length]  # after length and its CRC
            pos += 12 + length + 4  # and the record's CRC
            event = event_pb2.Event.FromString(record)
            for v in event.summary.value:
                out.setdefault(v.tag, {})[event.step] = v.simple_value
    return out


def test_scalar_tags():
    line = {"step": 3, "epoch": 0, "loss": 1.5, "val_ged": 0.2, "expert_alpha_2": 0.3}
    assert scalar_tags(line) == {"train/loss": 1.5, "val/ged": 0.2, "alpha/expert_2": 0.3}
    val = {"step": 3, "epoch": 0, "split": "val", "dice": 0.9, "ok": True, "names": ["a"]}
    assert scalar_tags(val) == {"val/dice": 0.9}


@pytest.mark.parametrize("split_lines", [True, False])
def test_event_files_match_metrics_jsonl(tmp_path, split_lines):
    lr = optax.warmup_cosine_decay_schedule(0.0, 0.1, warmup_steps=2, decay_steps=6)
    state = TrainState(step=jnp.zeros((), jnp.int32), params={"w": jnp.zeros(())}, opt_state={})
    run(
        state,
        jax.jit(_step),
        lambda start: iter({"x": x} for x in X[start:]),
        run_dir=tmp_path,
        schedule=Schedule.of(len(X), 2, epochs=2),
        rng=jax.random.key(0),
        mesh=data_mesh(jax.devices()[:1]),
        log_every=2,
        evaluate_fn=lambda state, epoch: {"w": float(state.params["w"]), "epoch_seen": epoch},
        split_lines=split_lines,
        progress=False,
        learning_rate=lr,
    )
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train = [x for x in lines if x.get("split", "train") == "train"]
    # lr of the step that produced the line (step done - 1), from the schedule on the host
    with jax.numpy_dtype_promotion("standard"):
        assert [x["lr"] for x in train] == [float(lr(x["step"] - 1)) for x in train]
    assert train[0]["lr"] == pytest.approx(0.05) and max(x["lr"] for x in train) == pytest.approx(
        0.1
    )
    events = _events(tmp_path / TENSORBOARD_DIR)
    expected = {}
    for line in lines:
        for tag, value in scalar_tags(line).items():
            expected.setdefault(tag, {})[line["step"]] = value
    assert {"train/loss", "train/lr", "val/w", "alpha/expert_0"} <= set(expected)
    assert set(events) == set(expected)
    for tag, by_step in expected.items():
        assert set(events[tag]) == set(by_step), tag
        for step, value in by_step.items():  # event files hold float32
            assert events[tag][step] == pytest.approx(value, rel=1e-6, abs=1e-7), (tag, step)


def test_seg_loss_reports_the_weight_of_each_expert():
    cfg = SegConfig(
        features=(8, 16), num_experts=3, num_samples=2, latent_dim=3, head_hidden=8, image_size=16
    )
    params = init_segmenter_params(cfg, jax.random.key(0))
    images = jax.random.uniform(jax.random.key(1), (2, 16, 16, 1))
    masks = jnp.zeros((2, 2, 16, 16), jnp.int32)
    loss = functools.partial(seg_loss, model=make_segmenter(cfg), ot=OTConfig(num_iters=5))
    _, metrics = jax.jit(loss)(
        params, images=images, masks=masks, rng=jax.random.key(2), gamma=jnp.float32(0.5)
    )
    alpha = np.array([float(metrics[f"expert_alpha_{k}"]) for k in range(3)])
    assert f"expert_alpha_{3}" not in metrics
    assert np.all(np.isfinite(alpha)) and np.all(alpha > 0)
    np.testing.assert_allclose(alpha.sum(), 1.0, rtol=1e-5)
    assert float(metrics["alpha_max"]) <= alpha.max() + 1e-6  # a hypothesis <= its expert
