"""GreyLevels: a GroupNorm backbone cannot see a brightness factor; with the wrapper a head can.

Reference: numpy's mean and percentiles (linear interpolation, as ``jnp.quantile``), and
scikit-learn's logistic regression on the features of two classes that differ only by a
brightness factor. Tiny ResNet-18 (width 4, 16 px), one compile per model.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from osteo_jax.config import BackboneConfig
from osteo_jax.models.backbones import GREY_QUANTILES, GreyLevels, make_backbone

SIZE = 16
PLAIN = BackboneConfig(depth=18, width=4, dtype="float32")
GREY = BackboneConfig(depth=18, width=4, dtype="float32", grey_levels=True)


@pytest.fixture(scope="module")
def models():
    """``(plain, grey, params, jitted plain apply, jitted grey apply)``, params shared.

    The parameters are the initial ones plus noise, so the zero-initialised residual branches
    are live and every norm has a non-trivial scale and offset.
    """
    plain, grey = make_backbone(PLAIN), make_backbone(GREY)
    x = jnp.zeros((1, SIZE, SIZE, 1), jnp.float32)
    params = plain.init(jax.random.key(0), x)["params"]  # eager: cheaper than compiling init
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    params = jax.tree.unflatten(
        tree, [p + 0.3 * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys, strict=True)]
    )
    run_plain = jax.jit(lambda p, x: plain.apply({"params": p}, x)[0])
    run_grey = jax.jit(lambda p, x: grey.apply({"params": p}, x)[0])
    return plain, grey, params, run_plain, run_grey


def _segments(n: int, seed: int) -> np.ndarray:
    """``[n, S, S, 1]`` smooth random 'bones': a bright band of random width on a dim field."""
    rng = np.random.default_rng(seed)
    cols = np.arange(SIZE)[None, :]
    centre = rng.uniform(5, 11, (n, 1))
    half = rng.uniform(2, 4, (n, 1))
    band = (np.abs(cols - centre) < half).astype(np.float32)
    img = 0.2 + 0.5 * band[:, None, :] + 0.05 * rng.standard_normal((n, SIZE, SIZE))
    return np.clip(img, 0.01, 1.0)[..., None].astype(np.float32)


def _rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / np.abs(b).max())


def test_groupnorm_backbone_is_blind_to_a_brightness_factor(models):
    _, _, params, run_plain, _ = models
    x = jnp.asarray(_segments(4, 0))
    f = run_plain(params, x)
    # Bias-free convolutions then GroupNorm: a factor changes nothing but the norm's epsilon.
    assert _rel(run_plain(params, 1.4 * x), f) < 1e-3
    # An additive change of the bright band (a spatial pattern) is seen.
    band = (x > 0.45).astype(jnp.float32)
    assert _rel(run_plain(params, x + 0.2 * band), f) > 1e-2


def test_grey_levels_append_numpy_statistics_to_the_backbone_features(models):
    plain, grey, params, run_plain, run_grey = models
    assert isinstance(grey, GreyLevels)
    assert grey.features_dim == plain.features_dim + 1 + len(GREY_QUANTILES)
    # Same parameter tree as the plain backbone: one checkpoint serves both.
    init = jax.eval_shape(grey.init, jax.random.key(0), jnp.zeros((1, SIZE, SIZE, 1)))["params"]
    assert jax.tree.structure(init) == jax.tree.structure(params)

    x = _segments(3, 1)
    f = np.asarray(run_grey(params, jnp.asarray(x)))
    d = plain.features_dim
    assert f.shape == (3, grey.features_dim)
    np.testing.assert_allclose(f[:, :d], np.asarray(run_plain(params, jnp.asarray(x))), atol=1e-6)
    flat = x.reshape(3, -1).astype(np.float64)
    np.testing.assert_allclose(f[:, d], flat.mean(axis=1), rtol=1e-5)
    percentiles = np.quantile(flat, GREY_QUANTILES, axis=1).T
    np.testing.assert_allclose(f[:, d + 1 :], percentiles, rtol=1e-5)


def test_a_linear_head_reads_a_brightness_factor_only_through_the_grey_levels(models):
    """Two classes, the same segments up to a factor 1.3: plain features cannot tell them apart."""
    _, _, params, run_plain, run_grey = models
    x = _segments(64, 2)
    y = np.arange(64) % 2
    x = x * np.where(y == 1, 1.3, 1.0)[:, None, None, None].astype(np.float32)
    train, test = slice(0, 48), slice(48, 64)

    def auc(run):
        f = np.asarray(run(params, jnp.asarray(x)), np.float64)
        f = (f - f[train].mean(0)) / (f[train].std(0) + 1e-9)
        clf = LogisticRegression(C=1.0, max_iter=2000).fit(f[train], y[train])
        return roc_auc_score(y[test], clf.decision_function(f[test]))

    # Band positions and widths differ between subjects, so the level alone separates them only
    # through the factor; the plain features carry no trace of it.
    assert auc(run_grey) > 0.95
    assert auc(run_plain) < 0.8


def test_config_label_and_vgg_wrap():
    assert GREY.label == "ResNet-18 (width 4) + grey levels"
    vgg = make_backbone(BackboneConfig(arch="vgg", depth=11, width=4, grey_levels=True))
    assert isinstance(vgg, GreyLevels)
    out = jax.eval_shape(
        lambda: vgg.init_with_output(jax.random.key(0), jnp.zeros((2, SIZE, SIZE, 1)))[0][0]
    )
    assert out.shape == (2, vgg.features_dim)
