"""ssl_step / cls_step: subtrees trained; classifier loss; SSL resume; classifier on 2 devices."""

import dataclasses
import functools
import json
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from osteo_jax.config import BONE_NAMES, BackboneConfig, ClsConfig, CropConfig, SSLConfig
from osteo_jax.data.segments import SegmentSet
from osteo_jax.losses.ssl_methods import ssl_objective
from osteo_jax.models.heads import Prototypes
from osteo_jax.train.state import (
    TrainState,
    cls_optimizer,
    cls_trainable,
    crop_policy,
    init_classifier_params,
    make_backbone,
    make_projector,
    make_prototypes,
    ssl_optimizer,
)
from osteo_jax.train.steps import cls_logits, cls_loss, cls_step, ssl_step

S = 16  # segment side
B = 4  # batch
BACKBONE = BackboneConfig(depth=18, width=8)
CROPS = CropConfig(global_size=12, local_size=8, n_global=2, n_local=2)


def _ssl_cfg(method: str, crops: CropConfig = CROPS, **kw) -> SSLConfig:
    # No warm-up, so the very first step has a non-zero learning rate.
    return SSLConfig(
        method=method,
        backbone=BACKBONE,
        crops=crops,
        projector_hidden=16,
        projector_out=8,
        num_prototypes=8,
        batch_size=B,
        warmup_epochs=0.0,
        **kw,
    )


def _bars(rng: np.random.Generator, n: int) -> np.ndarray:
    """``[n, S, S]`` bar-shaped segments: a bright shaft with darker walls, background 0."""
    out = np.zeros((n, S, S), np.float32)
    for k in range(n):
        c, w = int(rng.integers(5, 11)), int(rng.integers(3, 6))
        r0, r1 = int(rng.integers(0, 3)), int(rng.integers(S - 3, S + 1))
        out[k, r0:r1, c - w // 2 : c - w // 2 + w] = rng.uniform(0.3, 0.9, (r1 - r0, w))
        out[k, r0:r1, c - w // 2] = 0.95
    return out


def _random_like(shapes, seed: int):
    """Parameters of the init's shapes, drawn in numpy (jit-compiling the ResNet init costs
    more than a step here, and the steps' properties do not depend on the init scheme)."""
    rng = np.random.default_rng(seed)

    def draw(path, s):
        name = jax.tree_util.keystr(path)
        if "scale" in name:
            return jnp.asarray(1 + 0.1 * rng.standard_normal(s.shape), s.dtype)
        scale = 1 / np.sqrt(np.prod(s.shape[:-1])) if len(s.shape) > 1 else 0.1
        return jnp.asarray(scale * rng.standard_normal(s.shape), s.dtype)

    return jax.tree_util.tree_map_with_path(draw, shapes)


@pytest.fixture(scope="module")
def params():
    """The one parameter pytree: segmenter, backbone, ssl_head (with prototypes), classifier."""
    backbone = make_backbone(BACKBONE)
    cfg = _ssl_cfg("swav")
    x = jnp.zeros((1, CROPS.global_size, CROPS.global_size, 1), jnp.float32)
    bb = _random_like(jax.eval_shape(backbone.init, jax.random.key(0), x)["params"], 0)
    k1, k2, k3 = jax.random.split(jax.random.key(1), 3)
    feat = jnp.zeros((1, backbone.features_dim), jnp.float32)
    projector = make_projector(cfg).init(k1, feat)["params"]
    z = jnp.zeros((1, cfg.projector_out), jnp.float32)
    prototypes = Prototypes(cfg.num_prototypes).init(k2, z)["params"]
    segmenter = {
        "encoder": {"kernel": jnp.arange(12.0).reshape(3, 4), "scale": jnp.ones(4, jnp.bfloat16)},
        "count": jnp.array([3, 1], jnp.int32),
    }
    return {
        "segmenter": segmenter,
        "backbone": bb,
        "ssl_head": {"projector": projector, "prototypes": prototypes},
        "classifier": init_classifier_params(backbone.features_dim, k3),
    }


@pytest.fixture(scope="module")
def batch():
    images = _bars(np.random.default_rng(0), B)
    return {
        "image": jnp.asarray(images),
        "label": jnp.array([0, 1, 1, 0], jnp.int32),
        "weight": jnp.array([1.0, 2.5, 0.5, 0.0], jnp.float32),  # the last is padding
    }


def _same(a, b) -> bool:
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert jax.tree.structure(a) == jax.tree.structure(b)
    return all(
        x.dtype == y.dtype and np.array_equal(np.asarray(x), np.asarray(y))
        for x, y in zip(la, lb, strict=True)
    )


def _changed_fraction(a, b) -> float:
    flags = [
        not np.array_equal(x, y)
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    ]
    return float(np.mean(flags))


def _check_metrics(metrics: dict) -> None:
    assert metrics and all(np.shape(v) == () for v in metrics.values())
    assert all(np.isfinite(float(v)) for v in metrics.values()), metrics


# ---------------------------------------------------------------------------------------- SSL


@pytest.mark.parametrize("method", ["simclr", "swav"])
def test_ssl_step_trains_backbone_and_head_only(params, batch, method):
    cfg = _ssl_cfg(method)
    p = dict(params)
    if method != "swav":
        p["ssl_head"] = {"projector": params["ssl_head"]["projector"]}
    tx = ssl_optimizer(cfg, total_steps=10)
    cls_tx = cls_optimizer(ClsConfig(), 10)
    state = TrainState(
        step=jnp.zeros((), jnp.int32),
        params=p,
        opt_state={
            "ssl": tx.init({k: p[k] for k in ("backbone", "ssl_head")}),
            "cls": cls_tx.init({"classifier": p["classifier"]}),
        },
    )
    step = jax.jit(
        functools.partial(
            ssl_step,
            backbone=make_backbone(cfg.backbone),
            projector=make_projector(cfg),
            objective=ssl_objective(cfg),
            prototypes=make_prototypes(cfg),
            tx=tx,
            policy=crop_policy(cfg.crops),
        )
    )
    key = jax.random.key(3)
    ssl_batch = {"image": batch["image"], "label": batch["label"]}
    new, metrics = step(state, ssl_batch, key)
    _check_metrics(metrics)
    assert {"loss", "grad_norm", "feature_std", "bone_fraction_min"} <= set(metrics)
    assert float(metrics["grad_norm"]) > 0
    assert float(metrics["bone_fraction_min"]) >= CROPS.min_bone_fraction
    assert int(new.step) == 1
    # Untouched subtrees pass through bit-identical, with their dtypes.
    assert _same(new.params["segmenter"], p["segmenter"])
    assert _same(new.params["classifier"], p["classifier"])
    assert _same(new.opt_state["cls"], state.opt_state["cls"])
    # Trained subtrees move, every leaf of the head and (nearly) every leaf of the backbone.
    assert _changed_fraction(new.params["ssl_head"], p["ssl_head"]) == 1.0
    assert _changed_fraction(new.params["backbone"], p["backbone"]) > 0.9
    for leaf in jax.tree.leaves(new.params):
        assert np.isfinite(np.asarray(leaf, np.float32)).all()
    # The step's key is fold_in(rng, step): same state, same result; next step, new views.
    again, m2 = step(state, ssl_batch, key)
    assert _same(again.params, new.params) and float(m2["loss"]) == float(metrics["loss"])
    _, m3 = step(state.replace(step=jnp.ones((), jnp.int32)), ssl_batch, key)
    assert float(m3["loss"]) != float(metrics["loss"])


# --------------------------------------------------------------------------- classification


def _cls_state(params, cfg: ClsConfig):
    trainable = cls_trainable(cfg)
    tx = cls_optimizer(cfg, total_steps=1)  # one step: no warm-up, the peak rate at step 0
    state = TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state={"cls": tx.init({k: params[k] for k in trainable})},
    )
    return state, tx, trainable


@pytest.fixture(scope="module")
def backbone_features(params, batch):
    backbone = make_backbone(BACKBONE)
    fn = jax.jit(lambda p, x: backbone.apply({"params": p}, x[..., None])[0])
    return fn(params["backbone"], batch["image"])


@pytest.mark.parametrize("mode", ["probe", "finetune"])
def test_cls_step_trains_only_its_subtrees(params, batch, backbone_features, mode):
    cfg = ClsConfig(mode=mode)
    state, tx, trainable = _cls_state(params, cfg)
    assert trainable == (("classifier",) if mode == "probe" else ("backbone", "classifier"))
    backbone = make_backbone(BACKBONE)
    step = jax.jit(functools.partial(cls_step, backbone=backbone, tx=tx, trainable=trainable))
    new, metrics = step(state, batch, jax.random.key(0))
    _check_metrics(metrics)
    assert int(new.step) == 1
    assert _same(new.params["segmenter"], params["segmenter"])
    assert _same(new.params["ssl_head"], params["ssl_head"])
    assert _changed_fraction(new.params["classifier"], params["classifier"]) == 1.0
    if mode == "probe":
        assert _same(new.params["backbone"], params["backbone"])
        # The probe on precomputed features is the same step: same loss, same new head.
        new_f, metrics_f = step(
            state,
            {"features": backbone_features, "label": batch["label"], "weight": batch["weight"]},
            jax.random.key(0),
        )
        np.testing.assert_allclose(float(metrics_f["loss"]), float(metrics["loss"]), rtol=1e-6)
        np.testing.assert_allclose(
            float(metrics_f["grad_norm"]), float(metrics["grad_norm"]), rtol=1e-5
        )
        for a, b in zip(
            jax.tree.leaves(new_f.params["classifier"]),
            jax.tree.leaves(new.params["classifier"]),
            strict=True,
        ):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
        assert _same(new_f.params["backbone"], params["backbone"])
    else:
        assert _changed_fraction(new.params["backbone"], params["backbone"]) > 0.9


def test_cls_loss_is_weighted_cross_entropy(params, batch, backbone_features):
    backbone = make_backbone(BACKBONE)
    fbatch = {k: batch[k] for k in ("label", "weight")} | {"features": backbone_features}
    loss_fn = jax.jit(functools.partial(cls_loss, backbone=backbone))
    loss, metrics = loss_fn(params, batch=fbatch)
    assert loss.shape == () and loss.dtype == jnp.float32 and np.isfinite(float(loss))
    logits = np.asarray(
        jax.jit(functools.partial(cls_logits, backbone=backbone))(
            params, features=backbone_features
        ),
        np.float64,
    )
    assert logits.shape == (B, 2)
    y, w = np.asarray(batch["label"]), np.asarray(batch["weight"], np.float64)
    lse = np.log(np.exp(logits).sum(-1))
    xent = lse - logits[np.arange(B), y]
    np.testing.assert_allclose(float(loss), np.sum(w * xent) / np.sum(w), rtol=1e-5)
    keep = w > 0  # accuracy over the real examples, not the padding
    acc = np.mean(logits.argmax(-1)[keep] == y[keep])
    assert float(metrics["accuracy"]) == pytest.approx(acc)


def test_cls_loss_hand_case(params):
    # Zero kernel, bias (0, ln 3): p(osteoporosis) = 3/4 for every example.
    head = {"fc": {"kernel": jnp.zeros((8, 2)), "bias": jnp.array([0.0, np.log(3.0)])}}
    batch = {
        "features": jnp.ones((3, 8)),
        "label": jnp.array([1, 0, 1], jnp.int32),
        "weight": jnp.array([1.0, 3.0, 0.0]),
    }
    loss, metrics = cls_loss({"classifier": head}, backbone=make_backbone(BACKBONE), batch=batch)
    expected = (1 * -np.log(0.75) + 3 * -np.log(0.25)) / 4
    assert float(loss) == pytest.approx(expected, rel=1e-6)
    assert float(metrics["accuracy"]) == pytest.approx(0.5)


# ------------------------------------------------------------------------------ SSL resume


def _segment_set(n_images: int) -> SegmentSet:
    rng = np.random.default_rng(5)
    nb = len(BONE_NAMES)
    images = _bars(rng, n_images * nb).reshape(n_images, nb, S, S)
    valid = np.ones((n_images, nb), bool)
    valid[0, 2] = False
    images[0, 2] = 0
    return SegmentSet(
        images=images,
        valid=valid,
        image_ids=np.array([f"I{i}" for i in range(n_images)]),
        subject_ids=np.array([f"S{i // 2}" for i in range(n_images)]),
        labels=np.arange(n_images) % 2,
        t_scores=np.full(n_images, np.nan),
        bones=BONE_NAMES,
        meta={"data": "<test>"},
    )


@pytest.mark.slow
def test_train_ssl_resumes_bitwise(tmp_path):
    from osteo_jax.train.ssl_loop import train_ssl

    segs = _segment_set(3)  # 20 valid segments: 5 steps of 4 per epoch
    # Global views only, plain multi-crop: the loop is under test, and compiling is the cost.
    crops = dataclasses.replace(CROPS, n_local=0, custom=False)
    cfg = _ssl_cfg("simclr", crops=crops, epochs=1, checkpoint_every=2, max_steps=4)
    straight = train_ssl(segs, tmp_path / "a", cfg, progress=False, log_every=1)
    assert straight["steps"] == 4 and straight["resumed_from"] == 0
    ckpts = tmp_path / "a" / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir() if p.name.isdigit()) == ["2", "4"]
    # A run killed after its step-2 checkpoint: resume it and finish.
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    shutil.rmtree(tmp_path / "b" / "checkpoints" / "4")
    resumed = train_ssl(segs, tmp_path / "b", cfg, progress=False, log_every=1)
    assert resumed["resumed_from"] == 2 and resumed["steps"] == 4
    assert _same(resumed["state"].params, straight["state"].params)
    assert _same(resumed["state"].opt_state, straight["state"].opt_state)
    # Changing anything but max_steps in the same folder is refused.
    with pytest.raises(ValueError):
        train_ssl(segs, tmp_path / "b", dataclasses.replace(cfg, seed=1), progress=False)


_CLS_TWO_DEVICE_SCRIPT = """
import json, sys
import jax, numpy as np
sys.path.insert(0, {tests!r})
import test_ssl_train as t
from osteo_jax.config import ClsConfig
from osteo_jax.eval.cls_metrics import subject_metrics
from osteo_jax.train.cls_loop import train_classifier
assert len(jax.devices()) == 2, jax.devices()
out = {{}}
for n in (1, 2):
    res = train_classifier(
        t._segment_set(4), t._segment_set(2), {out!r} + str(n),
        ClsConfig(mode="probe", epochs=2, batch_size=8), evaluate_fn=subject_metrics,
        backbone_cfg=t.BACKBONE, devices=jax.devices()[:n], progress=False,
    )
    lines = open({out!r} + str(n) + "/metrics.jsonl").read().splitlines()
    out[n] = {{
        "loss": [json.loads(x)["loss"] for x in lines],
        "params": [np.asarray(x).tolist() for x in jax.tree.leaves(res["params"]["classifier"])],
    }}
print(json.dumps(out))
"""


@pytest.mark.slow
def test_train_classifier_on_two_devices_matches_one(tmp_path):
    env = dict(
        os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu"
    )
    script = _CLS_TWO_DEVICE_SCRIPT.format(
        tests=os.path.dirname(__file__), out=str(tmp_path / "run")
    )
    res = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300
    )
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert len(out["1"]["loss"]) == 2  # one line an epoch
    np.testing.assert_allclose(out["1"]["loss"], out["2"]["loss"], rtol=1e-5)
    for a, b in zip(out["1"]["params"], out["2"]["params"], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
