"""Checks run on whatever devices exist: a GPU or TPU on a device machine, the CPU in CI.

``make accelerator`` (and ``experiments/device_check.sh``, which runs them after installing the
``[cuda12]`` extra). Three properties the accelerator defaults rely on, each with its
tolerance stated where it is asserted:

* the mixture's ``vmap`` execution (the accelerator default) equals its ``scan`` execution (the
  CPU default): same parameters, same latents, same loss and gradients;
* a bfloat16 step (dtype ``"auto"`` on an accelerator) is finite and close to float32;
* a step on one device equals the same step data-parallel over all devices (with one device,
  over two forced CPU devices in a subprocess).

Float32 comparisons run at ``highest`` matmul precision: a GPU's default lets float32
convolutions and matmuls round through TF32 (10-bit mantissa), which would swamp the
tolerances below.
"""

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
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from osteo_jax.config import OTConfig, SegConfig, SegTrainConfig
from osteo_jax.train.runner import data_mesh
from osteo_jax.train.state import (
    create_seg_state,
    make_segmenter,
    seg_optimizer,
    seg_schedule,
)
from osteo_jax.train.steps import seg_loss, seg_step

pytestmark = pytest.mark.accelerator

SIZE = 32
TINY = SegTrainConfig(
    model=SegConfig(
        features=(8, 16),
        num_experts=2,
        num_samples=2,
        latent_dim=3,
        head_hidden=8,
        image_size=SIZE,
        dtype="float32",
    ),
    ot=OTConfig(num_iters=20, gamma_ramp_start=1, gamma_ramp_steps=2),
    batch_size=4,
    warmup_steps=1,
)
STEPS = 3


def _cfg(**model):
    return dataclasses.replace(TINY, model=dataclasses.replace(TINY.model, **model))


def _batch(seed, b):
    rng = np.random.default_rng(seed)
    masks = np.zeros((b, 3, SIZE, SIZE), np.int32)
    masks[:, :, 8:24, 10:14] = 4  # a "metacarpal"
    masks[:, 1, 8:12, 10:14] = 0  # one annotator stops short
    return {
        "image": jnp.asarray(rng.random((b, SIZE, SIZE, 1)), jnp.float32),
        "masks": jnp.asarray(masks),
    }


def _loss_and_grads(cfg):
    """Loss and segmenter gradients at the initial parameters (same latents for every mode)."""
    state = create_seg_state(cfg, jax.random.key(0), seg_optimizer(cfg, 10))
    fn = jax.jit(
        jax.value_and_grad(
            functools.partial(seg_loss, model=make_segmenter(cfg.model), ot=cfg.ot), has_aux=True
        )
    )
    batch = _batch(0, cfg.batch_size)
    (loss, _), grads = fn(
        state.params["segmenter"],
        images=batch["image"],
        masks=batch["masks"],
        rng=jax.random.key(1),
        gamma=jnp.float32(0.5),
    )
    return float(loss), grads


def _train(cfg, mesh, steps=STEPS):
    """``steps`` seg_steps from the seed-0 state on ``mesh``: (state on host, losses)."""
    tx = seg_optimizer(cfg, 10)
    step = jax.jit(functools.partial(seg_step, model=make_segmenter(cfg.model), tx=tx, ot=cfg.ot))
    state = jax.device_put(create_seg_state(cfg, jax.random.key(0), tx), NamedSharding(mesh, P()))
    losses = []
    for i in range(steps):
        batch = jax.device_put(_batch(i, cfg.batch_size), NamedSharding(mesh, P("data")))
        state, metrics = step(state, batch, jax.random.key(1))
        losses.append(float(metrics["loss"]))
    return jax.device_get(state), losses


def _max_abs_diff(a, b):
    return max(
        float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )


def _cosine(a, b):
    x = np.concatenate([np.ravel(np.asarray(v, np.float64)) for v in jax.tree.leaves(a)])
    y = np.concatenate([np.ravel(np.asarray(v, np.float64)) for v in jax.tree.leaves(b)])
    return float(x @ y / (np.linalg.norm(x) * np.linalg.norm(y)))


def test_vmap_execution_equals_scan_on_this_device():
    with jax.default_matmul_precision("highest"):
        out = {mode: _loss_and_grads(_cfg(mode=mode)) for mode in ("vmap", "scan")}
    (loss_v, g_v), (loss_s, g_s) = out["vmap"], out["scan"]
    assert np.isfinite(loss_v) and jax.tree.structure(g_v) == jax.tree.structure(g_s)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(g_v))
    # Tolerance: loss to 1e-5 relative; every gradient entry within 1e-4 of the largest one.
    assert loss_v == pytest.approx(loss_s, rel=1e-5)
    scale = max(float(jnp.max(jnp.abs(x))) for x in jax.tree.leaves(g_s))
    assert scale > 0 and _max_abs_diff(g_v, g_s) <= 1e-4 * scale


def test_bf16_step_is_finite_and_close_to_float32():
    mesh = data_mesh(jax.devices()[:1])
    with jax.default_matmul_precision("highest"):
        loss32, g32 = _loss_and_grads(_cfg(dtype="float32"))
        state32, losses32 = _train(_cfg(dtype="float32"), mesh)
    loss16, g16 = _loss_and_grads(_cfg(dtype="bfloat16"))
    state16, losses16 = _train(_cfg(dtype="bfloat16"), mesh)
    # Parameters and optimizer state stay float32 under bf16 compute, and finite.
    leaves = jax.tree.leaves((state16.params, state16.opt_state))
    floats = [x for x in leaves if np.issubdtype(np.asarray(x).dtype, np.floating)]
    assert floats and all(np.asarray(x).dtype == np.float32 for x in floats)
    assert all(np.isfinite(np.asarray(x)).all() for x in floats)
    assert np.isfinite(losses16).all()
    # Tolerances: bf16 keeps 8 bits of mantissa (~0.4 %); the losses agree to 5 %, the
    # gradients point the same way (cosine > 0.98), and after STEPS AdamW steps no parameter
    # is further apart than 3x the learning rates summed (AdamW moves a parameter by about
    # the rate per step, so two runs on different rounding cannot drift further).
    assert loss16 == pytest.approx(loss32, rel=0.05)
    np.testing.assert_allclose(losses16, losses32, rtol=0.05)
    assert _cosine(g16, g32) > 0.98
    with jax.numpy_dtype_promotion("standard"):
        lr = seg_schedule(TINY, 10)
        budget = 3 * sum(float(lr(i)) for i in range(STEPS))
    assert 0 < _max_abs_diff(state16.params, state32.params) <= budget


def _one_vs_all_devices():
    """One device vs every device on the same global batch: losses and final parameters."""
    n = len(jax.devices())
    cfg = dataclasses.replace(TINY, batch_size=2 * n)  # two images per device
    with jax.default_matmul_precision("highest"):
        one, losses1 = _train(cfg, data_mesh(jax.devices()[:1]))
        every, losses_n = _train(cfg, data_mesh(jax.devices()))
    return {
        "devices": n,
        "kind": jax.devices()[0].device_kind,
        "loss1": losses1,
        "loss_n": losses_n,
        "max_param_diff": _max_abs_diff(one.params, every.params),
    }


_SUBPROCESS = textwrap.dedent("""
    import json, sys
    import jax
    jax.config.update("jax_numpy_dtype_promotion", "strict")
    jax.config.update("jax_numpy_rank_promotion", "raise")
    sys.path.insert(0, {tests!r})
    from test_accelerator import _one_vs_all_devices
    print(json.dumps(_one_vs_all_devices()))
""")


def test_one_device_equals_all_devices():
    if len(jax.devices()) > 1:
        out = _one_vs_all_devices()
    else:  # one device here: the same check over two forced CPU devices
        env = dict(
            os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu"
        )
        script = _SUBPROCESS.format(tests=os.path.dirname(__file__))
        res = subprocess.run(
            [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300
        )
        assert res.returncode == 0, res.stderr[-3000:]
        out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["devices"] >= 2
    assert np.isfinite(out["loss1"]).all()
    # Tolerance: the data-parallel gradient is a different summation order of the same
    # numbers: losses to 1e-5 relative, parameters within 1e-4 after STEPS steps.
    np.testing.assert_allclose(out["loss_n"], out["loss1"], rtol=1e-5)
    assert out["max_param_diff"] < 1e-4, out
