import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage

from osteo_jax.data.augment import CropPolicy, multi_crop_batch
from osteo_jax.data.geometric import affine_crop, random_resized_crop
from osteo_jax.data.photometric import (
    PhotometricPolicy,
    adjust_brightness,
    adjust_contrast,
    adjust_gamma,
    gaussian_blur,
    gaussian_noise,
    photometric,
    photometric_from_uniforms,
)

H = 48  # segment side
POLICY = CropPolicy(global_size=32, local_size=16)
ORDINARY = dataclasses.replace(POLICY, custom=False)
N_BARS = 198  # + one sparse segment + one empty segment = 200
STRONG = dict(brightness=0.5, contrast=0.5, gamma=0.5, blur_prob=1.0, noise_std=0.1)


def _bar(rng, size=H):
    """A thin rotated bar ("bone") covering 12-20 % of the image, textured values in (0, 1]."""
    yy, xx = np.mgrid[:size, :size] + 0.5
    while True:
        angle = rng.uniform(0, np.pi)
        cy, cx = size / 2 + rng.normal(0, 3, 2)
        half_width = rng.uniform(2.5, 5.0)
        dist = np.abs(-(yy - cy) * np.sin(angle) + (xx - cx) * np.cos(angle))
        bone = dist < half_width
        if 0.12 <= bone.mean() <= 0.20:
            break
    values = 0.2 + 0.8 * rng.random((size, size))
    return np.where(bone, values, 0.0).astype(np.float32)


def _disc(size=H, radius=12.0):
    yy, xx = np.mgrid[:size, :size] + 0.5
    r2 = (yy - size / 2) ** 2 + (xx - size / 2) ** 2
    return np.where(r2 < radius**2, 0.5 + 0.4 * np.cos(xx / 5.0), 0.0).astype(np.float32)


@pytest.fixture(scope="module")
def segments():
    rng = np.random.default_rng(0)
    bars = [_bar(rng) for _ in range(N_BARS - 1)]
    bars.append(bars[0])  # a twin: identical segments must still get different crops
    sparse = np.zeros((H, H), np.float32)
    sparse[[5, 20, 40], [7, 30, 11]] = 0.7  # 3 bone pixels: 0.13 % of the segment
    empty = np.zeros((H, H), np.float32)
    return np.stack(bars + [sparse, empty])


@pytest.fixture(scope="module")
def batch_fn():
    return jax.jit(multi_crop_batch, static_argnames="policy")


@pytest.fixture(scope="module")
def custom_out(segments, batch_fn):
    out = batch_fn(jax.random.key(1), segments, policy=POLICY)
    return jax.tree.map(np.asarray, out)


def _measured(crops):
    """Independent bone fraction: the share of crop pixels > 0, in float64."""
    return (crops > 0).mean(axis=(-2, -1), dtype=np.float64)


# ----------------------------------------------------------------------------- multi-crop


def test_multi_crop_batch_shapes_dtypes(custom_out):
    b = N_BARS + 2
    assert custom_out["global"].shape == (b, 2, 32, 32)
    assert custom_out["local"].shape == (b, 4, 16, 16)
    assert custom_out["global_fraction"].shape == (b, 2)
    assert custom_out["local_fraction"].shape == (b, 4)
    for v in custom_out.values():
        assert v.dtype == np.float32
        assert np.all(np.isfinite(v))
    crops = np.concatenate([custom_out["global"].ravel(), custom_out["local"].ravel()])
    assert crops.min() >= 0.0 and crops.max() <= 1.0


def test_custom_rule_never_below_min_fraction(custom_out):
    for kind in ("global", "local"):
        measured = _measured(custom_out[kind][: N_BARS + 1])  # bars and the sparse segment
        assert measured.min() >= POLICY.min_bone_fraction, kind
        # The returned fraction is exactly the measured one (photometric keeps bone > 0).
        np.testing.assert_allclose(
            custom_out[f"{kind}_fraction"][: N_BARS + 1], measured, atol=1e-6
        )


def test_custom_rule_fallback_on_sparse_and_empty_segments(custom_out):
    for kind in ("global", "local"):  # the fallback ladder
        assert _measured(custom_out[kind][N_BARS]).min() >= POLICY.min_bone_fraction
    # No bone at all: nothing to satisfy; the crops are all background.
    assert np.all(custom_out["global"][-1] == 0) and np.all(custom_out["local"][-1] == 0)
    assert np.all(custom_out["local_fraction"][-1] == 0)


def test_ordinary_policy_does_return_low_bone_crops(segments, batch_fn):
    out = jax.tree.map(np.asarray, batch_fn(jax.random.key(1), segments[:N_BARS], policy=ORDINARY))
    measured = _measured(out["local"])
    assert (measured < ORDINARY.min_bone_fraction).sum() >= 5
    np.testing.assert_allclose(out["local_fraction"], measured, atol=1e-6)


def test_multi_crop_deterministic_and_key_dependent(segments, custom_out, batch_fn):
    again = batch_fn(jax.random.key(1), segments, policy=POLICY)
    other = batch_fn(jax.random.key(2), segments, policy=POLICY)
    for k in custom_out:
        np.testing.assert_array_equal(again[k], custom_out[k])
    for kind in ("global", "local"):
        crops, others = custom_out[kind][:N_BARS], np.asarray(other[kind])[:N_BARS]
        assert all(not np.array_equal(a, b) for a, b in zip(crops, others, strict=True))
        # The crops of one segment differ from each other, and so do identical segments.
        assert all(not np.array_equal(c[0], c[1]) for c in crops)
    assert not np.array_equal(custom_out["local"][0], custom_out["local"][N_BARS - 1])


def test_jit_matches_eager(segments):
    # Eager multi_crop takes ~10 s to dispatch op by op; its two stages are compared instead.
    image = segments[0]
    kw = dict(size=16, scale=(0.1, 0.4), ratio=(0.75, 1.33), max_rotation_deg=10.0, flip=True)

    def crop_then_photo(key):
        k1, k2 = jax.random.split(key)
        crop, fraction = random_resized_crop(k1, image, **kw)
        return photometric(k2, crop, crop > 0, **STRONG), fraction

    key = jax.random.key(0)
    eager, jitted = crop_then_photo(key), jax.jit(crop_then_photo)(key)
    for e, j in zip(eager, jitted, strict=True):
        assert e.dtype == j.dtype == jnp.float32 and e.shape == j.shape
        np.testing.assert_allclose(e, j, atol=1e-5)


def test_policy_validation():
    with pytest.raises(ValueError):
        CropPolicy(global_size=8, local_size=4, min_bone_fraction=1.5)
    with pytest.raises(ValueError):
        CropPolicy(global_size=8, local_size=4, local_scale=(0.5, 0.1))
    with pytest.raises(ValueError):
        CropPolicy(global_size=8, local_size=4, n_global=0)


# ----------------------------------------------------------------------------- geometry

IDENTITY = dict(size=H, scale=(1.0, 1.0), ratio=(1.0, 1.0), max_rotation_deg=0.0)


def test_identity_crop_reproduces_input():
    image = _bar(np.random.default_rng(1))
    crop, fraction = jax.jit(lambda k: random_resized_crop(k, image, flip=False, **IDENTITY))(
        jax.random.key(0)
    )
    assert crop.shape == (H, H) and crop.dtype == jnp.float32
    np.testing.assert_array_equal(crop, image)
    assert float(fraction) == pytest.approx((image > 0).mean())


def test_flip_reproduces_mirrored_input():
    image = _bar(np.random.default_rng(2))
    fn = jax.jit(jax.vmap(lambda k: random_resized_crop(k, image, flip=True, **IDENTITY)[0]))
    crops = np.asarray(fn(jax.random.split(jax.random.key(0), 16)))
    flipped = [np.array_equal(c, image[:, ::-1]) for c in crops]
    same = [np.array_equal(c, image) for c in crops]
    assert all(f or s for f, s in zip(flipped, same, strict=True))
    assert any(flipped) and any(same)


@pytest.mark.parametrize("angle_deg, flip", [(10.0, False), (-10.0, True), (7.0, True)])
def test_affine_crop_matches_scipy_reference(angle_deg, flip):
    # All-bone image: the crop is plain bilinear resampling at the documented source points.
    rng = np.random.default_rng(3)
    image = (0.1 + 0.9 * rng.random((H, H))).astype(np.float32)
    size, center, extent = 20, np.array([23.0, 25.5]), np.array([22.0, 30.0])
    theta = np.deg2rad(angle_deg)
    crop, mask = jax.jit(
        lambda im: affine_crop(im, size=size, center=center, extent=extent, angle=theta, flip=flip)
    )(image)
    t = (np.arange(size) + 0.5) / size - 0.5
    v = t[:, None] * extent[0] * np.ones((1, size))
    u = (-t if flip else t)[None, :] * extent[1] * np.ones((size, 1))
    y = center[0] + np.cos(theta) * v - np.sin(theta) * u
    x = center[1] + np.sin(theta) * v + np.cos(theta) * u
    ref = scipy.ndimage.map_coordinates(image.astype(np.float64), [y - 0.5, x - 0.5], order=1)
    assert crop.dtype == jnp.float32 and bool(mask.all())
    np.testing.assert_allclose(crop, ref, atol=1e-5)


def test_affine_crop_linear_ramp_closed_form():
    # Bilinear interpolation is exact on a linear ramp: crop = f(source point).
    yy, xx = np.mgrid[:H, :H] + 0.5
    image = (0.2 + 0.01 * yy + 0.005 * xx).astype(np.float32)
    theta = np.deg2rad(10.0)
    crop = np.asarray(
        affine_crop(image, size=8, center=[24.0, 24.0], extent=[16.0, 16.0], angle=theta)[0]
    )
    t = (np.arange(8) + 0.5) / 8 - 0.5
    v, u = np.meshgrid(16 * t, 16 * t, indexing="ij")
    y = 24 + np.cos(theta) * v - np.sin(theta) * u
    x = 24 + np.sin(theta) * v + np.cos(theta) * u
    np.testing.assert_allclose(crop, 0.2 + 0.01 * y + 0.005 * x, atol=1e-5)


@pytest.mark.parametrize("angle_deg", [10.0, -10.0])
def test_rotation_preserves_disc_area(angle_deg):
    disc = _disc()
    crop, mask = affine_crop(
        disc, size=H, center=[H / 2, H / 2], extent=[H, H], angle=np.deg2rad(angle_deg)
    )
    area = (disc > 0).sum()
    assert abs(int((np.asarray(crop) > 0).sum()) - area) <= 0.02 * area
    np.testing.assert_array_equal(np.asarray(crop) > 0, mask)


# ----------------------------------------------------------------------------- photometric


@pytest.fixture(scope="module")
def crop_and_mask():
    disc = _disc(size=24, radius=8.0)
    return jnp.asarray(disc), jnp.asarray(disc > 0)


@pytest.mark.parametrize(
    "op",
    [
        lambda k, x, m: adjust_brightness(k, x, m, strength=0.5),
        lambda k, x, m: adjust_contrast(k, x, m, strength=0.5),
        lambda k, x, m: adjust_gamma(k, x, m, strength=0.5),
        lambda k, x, m: gaussian_blur(k, x, m, sigma=(0.5, 2.0), prob=1.0),
        lambda k, x, m: gaussian_noise(k, x, m, std=0.2),
        lambda k, x, m: photometric(k, x, m, **STRONG),
    ],
    ids=["brightness", "contrast", "gamma", "blur", "noise", "photometric"],
)
def test_photometric_background_stays_zero(op, crop_and_mask):
    x, m = crop_and_mask
    out = np.asarray(
        jax.jit(jax.vmap(op, in_axes=(0, None, None)))(jax.random.split(jax.random.key(0), 8), x, m)
    )
    assert out.shape == (8, 24, 24) and out.dtype == np.float32 and np.all(np.isfinite(out))
    assert np.all(out[:, ~np.asarray(m)] == 0.0)
    assert np.all(out[:, np.asarray(m)] > 0.0) and out.max() <= 1.0
    assert not np.allclose(out, np.asarray(x)[None])


def test_photometric_zero_strength_is_identity(crop_and_mask):
    x, m = crop_and_mask
    zero = dict(brightness=0.0, contrast=0.0, gamma=0.0, blur_prob=0.0, noise_std=0.0)
    out = jax.jit(lambda k: photometric(k, x, m, **zero))(jax.random.key(0))
    np.testing.assert_allclose(out, x, atol=1e-6)
    assert dataclasses.asdict(PhotometricPolicy(**zero)) == {**zero, "blur_sigma": (0.1, 1.0)}


def test_photometric_ops_closed_forms(crop_and_mask):
    x, m = crop_and_mask
    xb, mb = np.asarray(x)[np.asarray(m)], np.asarray(m)
    key = jax.random.key(5)
    # Brightness: one factor b in [0.9, 1.1] (values stay below 1, so no clipping).
    ratio = np.asarray(adjust_brightness(key, x, m, strength=0.1))[mb] / xb
    assert np.ptp(ratio) < 1e-5 and 0.9 <= ratio[0] <= 1.1
    # Contrast about the bone mean: the bone mean is preserved, deviations scale by one c.
    out = np.asarray(adjust_contrast(key, x, m, strength=0.1))[mb]
    assert out.mean() == pytest.approx(xb.mean(), abs=1e-5)
    c = np.polyfit(xb - xb.mean(), out - out.mean(), 1)[0]
    np.testing.assert_allclose(out - out.mean(), c * (xb - xb.mean()), atol=1e-5)
    assert 0.9 <= c <= 1.1
    # Gamma: log(out) / log(x) is one exponent in [exp(-0.1), exp(0.1)].
    g = np.log(np.asarray(adjust_gamma(key, x, m, strength=0.1))[mb]) / np.log(xb)
    assert np.ptp(g) < 1e-4 and np.exp(-0.1) <= g[0] <= np.exp(0.1)
    # Noise: zero mean, the requested standard deviation.
    d = np.asarray(gaussian_noise(key, x, m, std=0.02))[mb] - xb
    assert abs(d.mean()) < 0.005 and d.std() == pytest.approx(0.02, rel=0.2)


def test_gaussian_blur_matches_scipy_normalised_convolution(crop_and_mask):
    x, m = crop_and_mask
    sigma = 0.8
    out = gaussian_blur(jax.random.key(0), x, m, sigma=(sigma, sigma), prob=1.0)
    k = np.exp(-0.5 * (np.arange(-3, 4) / sigma) ** 2)  # radius ceil(3 * 0.8) = 3
    xm, mf = np.asarray(x, np.float64), np.asarray(m, np.float64)

    def blur(a):
        a = scipy.ndimage.correlate1d(a, k, axis=0, mode="constant")
        return scipy.ndimage.correlate1d(a, k, axis=1, mode="constant")

    num, den = blur(xm * mf), blur(mf)
    ref = np.where(mf > 0, num / np.where(mf > 0, den, 1.0), 0.0)
    np.testing.assert_allclose(out, ref, atol=1e-5)
    # Probability 0: no change.
    np.testing.assert_array_equal(gaussian_blur(jax.random.key(0), x, m, prob=0.0), x)


def test_photometric_chain_matches_float64_reference(crop_and_mask):
    # The fused chain the multi-crop uses, against numpy/scipy in float64 from the same uniforms:
    # clip(b (mu + c (x - mu))), clip(x^g), normalised blur, clip(x + std z), bone pixels only.
    x, m = crop_and_mask
    strengths = dict(brightness=0.3, contrast=0.3, gamma=0.3, blur_prob=1.0, noise_std=0.05)
    u = np.array([0.9, 0.2, 0.7, 0.1, 0.6], np.float32)
    z = np.random.default_rng(0).standard_normal(x.shape).astype(np.float32)
    out = jax.jit(
        lambda x, u, z: photometric_from_uniforms(x, m, u, z, blur_sigma=(0.5, 1.0), **strengths)
    )(x, u, z)
    assert out.shape == x.shape and out.dtype == jnp.float32

    mf, floor = np.asarray(m), 1.0 / 4096.0
    on_bone = lambda a: np.where(mf, np.clip(a, floor, 1.0), 0.0)  # noqa: E731
    ref = np.asarray(x, np.float64)
    b, c = 1 + 0.3 * (2 * u[0] - 1), 1 + 0.3 * (2 * u[1] - 1)
    mu = ref[mf].mean()
    ref = on_bone(b * (mu + c * (ref - mu)))
    ref = on_bone(np.where(mf, ref, 1.0) ** np.exp(0.3 * (2 * u[2] - 1)))
    sigma = 0.5 + 0.5 * u[4]
    k = np.exp(-0.5 * (np.arange(-3, 4) / sigma) ** 2)  # radius ceil(3 * 1.0) = 3

    def blur(a):
        a = scipy.ndimage.correlate1d(a, k, axis=0, mode="constant")
        return scipy.ndimage.correlate1d(a, k, axis=1, mode="constant")

    num, den = blur(ref * mf), blur(mf.astype(np.float64))
    ref = on_bone(num / np.where(mf, den, 1.0))
    ref = on_bone(ref + 0.05 * z)
    np.testing.assert_allclose(out, ref, atol=2e-6)


def test_views_keep_a_uniform_bones_grey_level_without_intensity_jitter():
    """CropConfig(intensity_jitter=False): a bone of grey v is seen at v in every view
    (blur of a uniform field is v, noise is symmetric); with the jitter its brightness moves.

    Medians, not means: a rotated full-size box reaches past the segment's corner (zeros)."""
    from osteo_jax.config import CropConfig
    from osteo_jax.train.state import crop_policy

    v = np.array([0.3, 0.5, 0.7], np.float32)
    images = jnp.asarray(np.broadcast_to(v[:, None, None], (3, 24, 24)))  # all bone, no edge
    crops = CropConfig(global_size=16, local_size=8, n_local=2, min_bone_fraction=0.0)
    run = jax.jit(multi_crop_batch, static_argnames="policy")
    means = {}
    for jitter in (False, True):
        policy = crop_policy(dataclasses.replace(crops, intensity_jitter=jitter))
        views = [run(jax.random.key(s), images, policy=policy)["global"] for s in range(8)]
        means[jitter] = np.stack([np.median(np.asarray(g), (2, 3)) for g in views])  # [8,3,G]
    # noise std 0.02 over 256 pixels: the median of a view is v within ~0.005
    np.testing.assert_allclose(
        means[False], np.broadcast_to(v[None, :, None], means[False].shape), atol=0.006
    )
    assert (means[True] / v[None, :, None]).std() > 0.05  # brightness U[0.8, 1.2] and gamma
