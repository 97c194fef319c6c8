"""seg_step, checkpoints, multi-device equivalence and the train-seg / eval-seg CLI."""

import dataclasses
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

from osteo_jax.cli import main
from osteo_jax.config import OTConfig, SegConfig, SegTrainConfig
from osteo_jax.train.runner import Checkpointer
from osteo_jax.train.state import create_seg_state, make_segmenter, seg_optimizer
from osteo_jax.train.steps import seg_step

TINY = SegTrainConfig(
    model=SegConfig(
        features=(8, 16), num_experts=2, num_samples=2, latent_dim=3, head_hidden=8, image_size=32
    ),
    ot=OTConfig(gamma_ramp_start=1, gamma_ramp_steps=2),
    batch_size=2,
    epochs=2,
    warmup_steps=1,
    val_fraction=0.34,
    checkpoint_every=1,
)


def _batch(seed=0, b=2):
    rng = np.random.default_rng(seed)
    img = rng.random((b, 32, 32, 1)).astype(np.float32)
    masks = np.zeros((b, 3, 32, 32), np.int32)
    masks[:, :, 8:24, 10:14] = 4  # a "metacarpal"
    masks[:, 1, 8:12, 10:14] = 0  # one annotator stops short
    return {"image": jnp.asarray(img), "masks": jnp.asarray(masks)}


@pytest.fixture(scope="module")
def setup():
    model = make_segmenter(TINY.model)
    tx = seg_optimizer(TINY, 10)
    step = jax.jit(functools.partial(seg_step, model=model, tx=tx, ot=TINY.ot))
    state = create_seg_state(TINY, jax.random.key(0), tx)
    return model, tx, step, state


def test_seg_step_trains_only_the_segmenter(setup):
    _, _, step, state = setup
    other = {"w": jnp.arange(3.0)}
    state = state.replace(params={**state.params, "backbone": other})
    batch = _batch()
    losses = []
    new = state
    for _ in range(10):
        new, metrics = step(new, batch, jax.random.key(1))
        losses.append(float(metrics["transport"]))
        assert all(np.isfinite(float(v)) for v in metrics.values())
    np.testing.assert_array_equal(new.params["backbone"]["w"], other["w"])
    assert int(new.step) == 10
    changed = jax.tree.map(
        lambda a, b: bool(jnp.any(a != b)), new.params["segmenter"], state.params["segmenter"]
    )
    assert all(jax.tree.leaves(changed))
    assert float(metrics["gamma"]) == pytest.approx(1.0)  # ramped 0.5 -> 1 over steps 1..3
    # Same gamma from step 3 on: the transport term goes down (the KL term jumps with the
    # plan's assignment as fresh latents are drawn each step, so the total is not monotone).
    assert losses[-1] < losses[3]


def test_gradients_finite_at_initialisation_with_identical_hypotheses(setup):
    model, _, _, state = setup
    from osteo_jax.train.steps import seg_loss

    batch = _batch()
    # Zero every expert's head: all K*S hypotheses identical (uniform) - the degenerate start.
    p = jax.tree_util.tree_map_with_path(
        lambda path, a: jnp.zeros_like(a) if "head2" in jax.tree_util.keystr(path) else a,
        state.params["segmenter"],
    )
    grad_fn = jax.jit(jax.grad(functools.partial(seg_loss, model=model, ot=TINY.ot), has_aux=True))
    grads, metrics = grad_fn(
        p,
        images=batch["image"],
        masks=batch["masks"],
        rng=jax.random.key(0),
        gamma=jnp.float32(0.5),
    )
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))
    assert np.isfinite(float(metrics["loss"]))


def test_checkpoint_round_trip_then_step_equals_plain_stepping(setup, tmp_path):
    _, _, step, state = setup
    batch = _batch(3)
    key = jax.random.key(7)
    s1, _ = step(state, batch, key)
    ckpt = Checkpointer(tmp_path / "ck")
    ckpt.save(s1)
    restored = ckpt.restore(state)
    ckpt.close()
    assert int(restored.step) == 1
    a, _ = step(s1, batch, key)
    b, _ = step(restored, batch, key)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


_TWO_DEVICE_SCRIPT = textwrap.dedent("""
    import functools, json, sys
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import NamedSharding, PartitionSpec as P
    sys.path.insert(0, {tests!r})
    from test_train import TINY, _batch
    from osteo_jax.train.runner import data_mesh
    from osteo_jax.train.state import create_seg_state, make_segmenter, seg_optimizer
    from osteo_jax.train.steps import seg_step
    assert len(jax.devices()) == 2, jax.devices()
    model = make_segmenter(TINY.model)
    tx = seg_optimizer(TINY, 10)
    out = {{}}
    for n in (1, 2):
        mesh = data_mesh(jax.devices()[:n])
        step = jax.jit(functools.partial(seg_step, model=model, tx=tx, ot=TINY.ot))
        state = jax.device_put(create_seg_state(TINY, jax.random.key(0), tx),
                               NamedSharding(mesh, P()))
        losses = []
        for i in range(2):
            batch = jax.device_put(_batch(i, b=4), NamedSharding(mesh, P("data")))
            state, m = step(state, batch, jax.random.key(1))
            losses.append(float(m["loss"]))
        out[n] = (losses, [np.asarray(x).tolist() for x in jax.tree.leaves(state.params)])
    d = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
            for a, b in zip(out[1][1], out[2][1]))
    print(json.dumps({{"loss1": out[1][0], "loss2": out[2][0], "max_param_diff": d}}))
""")


@pytest.mark.e2e  # a two-device subprocess (~22 s): make e2e
def test_same_step_on_two_cpu_devices_matches_one(tmp_path):
    env = dict(
        os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu"
    )
    script = _TWO_DEVICE_SCRIPT.format(tests=os.path.dirname(__file__))
    res = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300
    )
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    np.testing.assert_allclose(out["loss1"], out["loss2"], rtol=1e-5)
    assert out["max_param_diff"] < 1e-5


def test_train_seg_and_eval_seg_cli_resume(tmp_path):
    data = tmp_path / "data"
    assert (
        main(
            [
                "synth",
                "--subjects",
                "6",
                "--size",
                "64",
                "--seed",
                "1",
                "--out",
                str(data),
                "--workers",
                "1",
            ]
        )
        == 0
    )
    cfg_path = tmp_path / "tiny.json"
    cfg_path.write_text(json.dumps({"config": dataclasses.asdict(TINY)}))
    run = tmp_path / "run"
    args = ["train-seg", "--data", str(data), "--out", str(run), "--config", str(cfg_path)]
    assert main([*args, "--max-steps", "2"]) == 0
    assert main([*args, "--max-steps", "3"]) == 0  # resumes at step 2 and goes on
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    train_steps = [x["step"] for x in lines if x["split"] == "train"]
    assert train_steps == [2, 3]  # each invocation logs its last step; the 2nd resumed at 2
    # Other settings in the same run folder are refused, and nothing is overwritten.
    assert main([*args, "--epochs", "5"]) == 2
    assert len((run / "metrics.jsonl").read_text().splitlines()) == len(lines)
    split = json.loads((run / "split.json").read_text())
    assert not set(split["train"]) & set(split["val"])
    assert main(["eval-seg", "--run", str(run), "--data", str(data)]) == 0
    metrics = json.loads((run / "seg_metrics.json").read_text())
    assert metrics["step"] == 3 and 0.0 <= metrics["dice/consensus/mean"] <= 1.0
    assert (run / "seg_figure.png").stat().st_size > 10_000
    assert metrics["experts_alive"] >= 1 and sum(metrics[f"alpha/expert_{k}"] for k in (0, 1)) == (
        pytest.approx(1.0)
    )


def test_ce_weight_adds_the_cross_entropy_cost(setup):
    from osteo_jax.losses.costs import cross_entropy_cost, soft_iou_cost
    from osteo_jax.train.steps import seg_loss

    model, _, _, state = setup
    batch = _batch(5)
    p = state.params["segmenter"]
    logits, _ = jax.jit(model.apply)(
        {"params": p}, batch["image"], rngs={"sample": jax.random.key(2)}
    )
    iou = jax.vmap(lambda lo, y: soft_iou_cost(probs=jax.nn.softmax(lo), labels=y))(
        logits, batch["masks"]
    )
    ce = jax.vmap(lambda lo, y: cross_entropy_cost(logits=lo, labels=y))(logits, batch["masks"])
    # cost_min reports the cheapest hypothesis per annotation, averaged: it must see iou + w ce.
    for w in (0.0, 0.5):
        ot = dataclasses.replace(TINY.ot, ce_weight=w)
        _, m = jax.jit(functools.partial(seg_loss, model=model, ot=ot))(
            p,
            images=batch["image"],
            masks=batch["masks"],
            rng=jax.random.key(2),
            gamma=jnp.float32(1.0),
        )
        expected = jnp.mean(jnp.min(iou + w * ce, axis=1))
        np.testing.assert_allclose(float(m["cost_min"]), float(expected), rtol=1e-5)


def test_expert_weights_in_the_validation_metrics(setup):
    from osteo_jax.eval.seg_eval import ALIVE_ALPHA, evaluate_segmenter

    model, _, _, state = setup
    p = state.params["segmenter"]
    batch = _batch(3, b=3)
    images, masks = np.asarray(batch["image"]), np.asarray(batch["masks"])
    m = evaluate_segmenter(model, p, images, masks, jax.random.key(4), batch_size=2)
    # Reference: the router's softmax over experts, averaged over the images.
    _, aux = model.apply({"params": p}, batch["image"], rngs={"sample": jax.random.key(4)})
    pi = np.asarray(jax.nn.softmax(aux["router_logits"], axis=-1)).mean(axis=0)
    got = np.array([m[f"alpha/expert_{k}"] for k in range(TINY.model.num_experts)])
    np.testing.assert_allclose(got, pi, atol=1e-6)
    assert m["experts_alive"] == float((pi >= ALIVE_ALPHA).sum())
