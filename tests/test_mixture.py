"""Segmenter: stacked experts, stochastic samples, router weights, vmap == scan, ablation forms."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from osteo_jax.models.mixture import Segmenter, StochasticHead
from osteo_jax.models.unet import Upsample, depth_to_space

K, S, L = 3, 2, 4
KW = dict(features=(8, 16), num_experts=K, num_samples=S, latent_dim=L, head_hidden=8)


@pytest.fixture(scope="module")
def x():
    return jnp.asarray(np.random.default_rng(0).random((2, 16, 16, 1)), jnp.float32)


@pytest.fixture(scope="module")
def params(x):
    model = Segmenter(mode="scan", **KW)
    init = jax.jit(model.init)
    return init({"params": jax.random.key(0), "sample": jax.random.key(1)}, x)["params"]


@pytest.fixture(scope="module")
def z():
    return jax.random.normal(jax.random.key(3), (K, 2, S, L))


@pytest.fixture(scope="module")
def apply_fns():
    return {mode: jax.jit(Segmenter(mode=mode, **KW).apply) for mode in ("scan", "vmap")}


def test_experts_have_stacked_distinct_parameters(params):
    leaves = jax.tree.leaves(params["decoders"])
    assert all(leaf.shape[0] == K for leaf in leaves)
    kernel = params["decoders"]["decoder"]["dec0"]["conv0"]["kernel"]
    assert kernel.dtype == jnp.float32
    for a in range(K):
        for b in range(a + 1, K):
            assert not np.allclose(kernel[a], kernel[b])


def test_outputs_shapes_weights_and_expert_diversity(params, x, z, apply_fns):
    logits, aux = apply_fns["scan"]({"params": params}, x, z)
    assert logits.shape == (2, K * S, 16, 16, 8) and logits.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(logits)))
    alpha = jnp.exp(aux["log_alpha"])
    np.testing.assert_allclose(alpha.sum(1), 1.0, rtol=1e-6)
    # alpha = pi_k / S: the S samples of an expert share one weight.
    np.testing.assert_allclose(
        alpha.reshape(2, K, S),
        jnp.repeat(jax.nn.softmax(aux["router_logits"])[..., None] / S, S, axis=2),
        rtol=1e-6,
    )
    per_expert = logits.reshape(2, K, S, 16, 16, 8)
    for a in range(K):
        for b in range(a + 1, K):
            assert float(jnp.abs(per_expert[:, a] - per_expert[:, b]).max()) > 1e-3


def test_samples_differ_only_through_z(params, x, z, apply_fns):
    same = z.at[:, :, 1].set(z[:, :, 0])  # both samples of every expert get the same latent
    logits, _ = apply_fns["scan"]({"params": params}, x, same)
    lo = logits.reshape(2, K, S, 16, 16, 8)
    np.testing.assert_allclose(lo[:, :, 0], lo[:, :, 1], atol=1e-6)
    logits, _ = apply_fns["scan"]({"params": params}, x, z)
    lo = logits.reshape(2, K, S, 16, 16, 8)
    assert float(jnp.abs(lo[:, :, 0] - lo[:, :, 1]).max()) > 1e-4


def test_vmap_and_scan_same_outputs_and_gradients(params, x, z, apply_fns):
    out = {m: f({"params": params}, x, z)[0] for m, f in apply_fns.items()}
    np.testing.assert_allclose(out["scan"], out["vmap"], atol=1e-5, rtol=1e-5)

    def loss(p, mode):
        lo, aux = apply_fns[mode]({"params": p}, x, z)
        return jnp.mean(jax.nn.log_softmax(lo)[..., 1] * jnp.exp(aux["log_alpha"])[..., None, None])

    g = {m: jax.grad(loss)(params, m) for m in apply_fns}
    for a, b in zip(jax.tree.leaves(g["scan"]), jax.tree.leaves(g["vmap"]), strict=True):
        assert bool(jnp.all(jnp.isfinite(a)))
        np.testing.assert_allclose(a, b, atol=2e-5, rtol=1e-4)


def test_fused_head_equals_naive_film(rng):
    u = jnp.asarray(rng.standard_normal((2, 5, 6, 8)), jnp.float32)
    zz = jnp.asarray(rng.standard_normal((2, 3, 4)), jnp.float32)
    head = StochasticHead(num_classes=5, hidden=7)
    p = jax.jit(head.init)(jax.random.key(0), u, zz)["params"]
    p = jax.tree.map(lambda a: a + 0.1 * jnp.asarray(rng.standard_normal(a.shape), a.dtype), p)
    fused = head.apply({"params": p}, u, zz)
    # Reference: u_bar = (W_s z + b_s) * (u + W_b z + b_b), then two 1 x 1 layers, per sample.
    p = jax.tree.map(np.asarray, p)
    u, zz = np.asarray(u), np.asarray(zz)
    s = zz @ p["film_scale"]["kernel"] + p["film_scale"]["bias"]
    b = zz @ p["film_shift"]["kernel"] + p["film_shift"]["bias"]
    ubar = s[:, :, None, None, :] * (u[:, None] + b[:, :, None, None, :])
    h = np.asarray(nn.gelu(ubar @ p["head1_kernel"] + p["head1_bias"]))
    ref = h @ p["head2"]["kernel"] + p["head2"]["bias"]
    assert fused.shape == (2, 3, 5, 6, 5)
    np.testing.assert_allclose(fused, ref, atol=1e-5, rtol=1e-5)


def test_upsample_is_a_stride_two_transposed_conv(rng):
    x = jnp.asarray(rng.standard_normal((1, 3, 4, 5)), jnp.float32)
    up = Upsample(features=2)
    p = up.init(jax.random.key(0), x)["params"]
    y = up.apply({"params": p}, x)
    assert y.shape == (1, 6, 8, 2)
    kernel = np.asarray(p["proj"]["kernel"]).reshape(5, 2, 2, 2)  # [Cin, dy, dx, Cout]
    x = np.asarray(x)
    ref = np.zeros((1, 6, 8, 2), np.float32)
    for i in range(3):
        for j in range(4):
            for dy in range(2):
                for dx in range(2):
                    ref[0, 2 * i + dy, 2 * j + dx] = x[0, i, j] @ kernel[:, dy, dx]
    np.testing.assert_allclose(
        y,
        ref
        + np.asarray(p["proj"]["bias"]).reshape(2, 2, 2)[
            np.arange(6)[:, None] % 2, np.arange(8)[None] % 2
        ],
        atol=1e-5,
    )
    np.testing.assert_array_equal(
        depth_to_space(jnp.arange(8.0).reshape(1, 1, 1, 8)),
        jnp.array([[[[0, 1], [2, 3]], [[4, 5], [6, 7]]]], jnp.float32),
    )


@pytest.mark.parametrize("form, n", [("mose", K * S), ("unet", 1)])
def test_ablation_forms(x, form, n):
    kw = dict(KW, num_experts=1, num_samples=1) if form == "unet" else KW
    model = Segmenter(form=form, **kw)
    v = jax.jit(model.init)({"params": jax.random.key(0), "sample": jax.random.key(1)}, x)
    apply = jax.jit(model.apply)
    logits, aux = apply(v, x, rngs={"sample": jax.random.key(2)})
    assert logits.shape == (2, n, 16, 16, 8)
    np.testing.assert_allclose(jnp.exp(aux["log_alpha"]).sum(1), 1.0, rtol=1e-6)
    if form == "mose":  # one shared decoder, no expert axis
        assert v["params"]["decoder"]["decoder"]["dec0"]["conv0"]["kernel"].ndim == 4
        assert v["params"]["prior_mean"].shape == (K, L)
    else:
        again, _ = apply(v, x, rngs={"sample": jax.random.key(9)})
        np.testing.assert_array_equal(logits, again)  # deterministic: no latent


def test_bfloat16_option_runs_under_strict_promotion_and_tracks_float32(params, x, z):
    # Same float32 parameters, bf16 computation: runs under the suite's strict dtype promotion
    # and gives the float32 model's probabilities to bf16 accuracy.
    bf16 = jax.jit(Segmenter(mode="scan", dtype=jnp.bfloat16, **KW).apply)
    f32 = jax.jit(Segmenter(mode="scan", **KW).apply)
    lo16, aux16 = bf16({"params": params}, x, z)
    lo32, _ = f32({"params": params}, x, z)
    assert np.isfinite(np.asarray(lo16, np.float32)).all()
    p16 = jax.nn.softmax(lo16.astype(jnp.float32), -1)
    p32 = jax.nn.softmax(lo32, -1)
    assert float(jnp.max(jnp.abs(p16 - p32))) < 0.05
    np.testing.assert_allclose(jnp.sum(jnp.exp(aux16["log_alpha"]), -1), 1.0, rtol=1e-2)


def test_expert_map_hook_identity_equals_the_stacked_module(params, x, z, apply_fns):
    calls = []

    def identity(fn, p, z_, skips, bottleneck):
        calls.append(jax.tree.leaves(p)[0].shape[0])
        return fn(p, z_, skips, bottleneck)

    want, _ = apply_fns["scan"]({"params": params}, x, z)
    for mode in ("scan", "vmap"):
        hooked = Segmenter(mode=mode, expert_map=identity, **KW)
        got, _ = jax.jit(hooked.apply)({"params": params}, x, z)
        assert got.shape == want.shape and got.dtype == want.dtype
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert calls == [K, K]
    # Gradients flow to the decoder parameters through the hook, as without it.
    loss = lambda m: lambda p: jnp.sum(m.apply({"params": p}, x, z)[0] ** 2)  # noqa: E731
    g_hook = jax.jit(jax.grad(loss(Segmenter(mode="scan", expert_map=identity, **KW))))(params)
    g_ref = jax.jit(jax.grad(loss(Segmenter(mode="scan", **KW))))(params)
    for a, b in zip(jax.tree.leaves(g_hook), jax.tree.leaves(g_ref), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
