"""dtype "auto": bfloat16 compute on GPU / TPU, float32 on the CPU (bit-identical), f32 params."""

import dataclasses
import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from osteo_jax.config import BackboneConfig, OTConfig, SegConfig, SegTrainConfig
from osteo_jax.config.precision import resolve_dtype, resolve_dtypes
from osteo_jax.models.backbones import compute_dtype, make_backbone
from osteo_jax.train.runner import write_config
from osteo_jax.train.state import create_seg_state, make_segmenter, seg_optimizer
from osteo_jax.train.steps import seg_step

TINY = SegTrainConfig(
    model=SegConfig(
        features=(8, 16), num_experts=2, num_samples=2, latent_dim=3, head_hidden=8, image_size=32
    ),
    ot=OTConfig(gamma_ramp_start=1, gamma_ramp_steps=2, num_iters=20),
    batch_size=2,
    warmup_steps=1,
)


@pytest.mark.parametrize(
    "name, backend, expected",
    [
        ("auto", "cpu", "float32"),
        ("auto", "gpu", "bfloat16"),
        ("auto", "cuda", "bfloat16"),
        ("auto", "tpu", "bfloat16"),
        ("float32", "tpu", "float32"),
        ("bfloat16", "cpu", "bfloat16"),
    ],
)
def test_resolve_dtype(name, backend, expected):
    assert resolve_dtype(name, backend) == expected


def test_auto_is_the_default_and_float32_here():
    assert SegConfig().dtype == "auto" and BackboneConfig().dtype == "auto"
    assert jax.default_backend() == "cpu"
    assert resolve_dtype("auto") == "float32"
    assert make_segmenter(SegConfig()).dtype == jnp.float32
    assert make_backbone(BackboneConfig()).dtype == jnp.float32
    with pytest.raises(ValueError, match="dtype must be one of"):
        compute_dtype("float16")
    with pytest.raises(ValueError, match="SegConfig.dtype must be one of"):
        SegConfig(dtype="half")


def test_auto_on_an_accelerator_computes_bf16_with_float32_params(monkeypatch):
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    model = make_segmenter(TINY.model)
    assert model.dtype == jnp.bfloat16
    assert make_backbone(BackboneConfig()).dtype == jnp.bfloat16
    tx = seg_optimizer(TINY, 10)
    state = create_seg_state(TINY, jax.random.key(0), tx)
    leaves = jax.tree.leaves((state.params, state.opt_state))
    floats = [x for x in leaves if jnp.issubdtype(x.dtype, jnp.floating)]
    assert floats and all(x.dtype == jnp.float32 for x in floats)


def _batch():
    rng = np.random.default_rng(0)
    masks = np.zeros((2, 3, 32, 32), np.int32)
    masks[:, :, 8:24, 10:14] = 4
    return {
        "image": jnp.asarray(rng.random((2, 32, 32, 1)), jnp.float32),
        "masks": jnp.asarray(masks),
    }


def test_auto_step_on_cpu_is_bit_identical_to_float32():
    tx = seg_optimizer(TINY, 10)
    batch, key = _batch(), jax.random.key(1)
    out = {}
    for name in ("auto", "float32"):
        cfg = dataclasses.replace(TINY, model=dataclasses.replace(TINY.model, dtype=name))
        step = jax.jit(
            functools.partial(seg_step, model=make_segmenter(cfg.model), tx=tx, ot=cfg.ot)
        )
        state = create_seg_state(cfg, jax.random.key(0), tx)
        for _ in range(2):
            state, metrics = step(state, batch, key)
        out[name] = (state, metrics)
    leaves = jax.tree.leaves(out["auto"])
    assert all(np.all(np.isfinite(np.asarray(x))) for x in leaves if x.dtype == jnp.float32)
    jax.tree.map(np.testing.assert_array_equal, out["auto"], out["float32"])


def test_resume_treats_auto_as_what_it_resolves_to(tmp_path):
    old = dataclasses.replace(TINY, model=dataclasses.replace(TINY.model, dtype="float32"))
    write_config(tmp_path, old, "data")  # a run folder from before "auto"
    assert json.loads((tmp_path / "config.json").read_text())["config"]["model"]["dtype"] == (
        "float32"
    )
    write_config(tmp_path, TINY, "data")  # resumes: "auto" is float32 on the CPU
    bf16 = dataclasses.replace(TINY, model=dataclasses.replace(TINY.model, dtype="bfloat16"))
    with pytest.raises(ValueError, match="different configuration"):
        write_config(tmp_path, bf16, "data")
    assert resolve_dtypes({"a": [{"dtype": "auto"}], "dtype": "auto"}, "tpu") == {
        "a": [{"dtype": "bfloat16"}],
        "dtype": "bfloat16",
    }
