"""Photometric augmentations of bone crops: brightness, contrast, gamma, blur, noise.

Every op acts on bone pixels only (``mask``) and keeps them in ``[_BONE_FLOOR, 1]``, so a crop's
background stays exactly 0 and ``crop > 0`` remains its bone mask (the custom multi-crop rule of
:mod:`osteo_jax.data.augment` counts bone pixels that way). Pure, jittable, explicit keys.

Gamma is dm-pix's (``dm_pix.adjust_gamma``; this is the only module that imports dm-pix). The
others stay here, each for a measured reason (dm-pix 0.4.5, jax 0.10.2, CPU): dm-pix's brightness
is additive (ours multiplies) and its contrast pivots on the whole image's mean (ours on the bone
mean, so the zero background does not pull it); its Gaussian blur is a depthwise convolution that,
with one σ per crop under ``vmap``, becomes a grouped convolution 18-33x slower on XLA:CPU than
the banded matrix products here (same values to 4e-7).
"""

from __future__ import annotations

import dataclasses
import math

import dm_pix
import jax
import jax.numpy as jnp

__all__ = [
    "PhotometricPolicy",
    "adjust_brightness",
    "adjust_contrast",
    "adjust_gamma",
    "gaussian_blur",
    "gaussian_noise",
    "N_PHOTO_UNIFORMS",
    "photometric",
    "photometric_from_uniforms",
]

_F32 = jnp.float32
# Photometric ops keep bone pixels in [_BONE_FLOOR, 1] so that `crop > 0` stays the bone mask
# (one grey level of a 12-bit radiograph).
_BONE_FLOOR = 1.0 / 4096.0
N_PHOTO_UNIFORMS = 5  # brightness, contrast, gamma, blur apply, blur sigma


@dataclasses.dataclass(frozen=True, kw_only=True)
class PhotometricPolicy:
    """Strengths of the photometric ops (the keyword arguments of :func:`photometric`).

    Attributes:
      brightness: bone pixels are multiplied by ``b ~ U[1 - brightness, 1 + brightness]``.
      contrast: factor ``c ~ U[1 - contrast, 1 + contrast]`` about the bone mean.
      gamma: exponent ``γ = exp(g)``, ``g ~ U[-gamma, gamma]``.
      blur_prob: probability of a Gaussian blur.
      blur_sigma: ``(lo, hi)`` range of the blur's σ, in crop pixels.
      noise_std: standard deviation of the additive Gaussian noise on bone pixels.
    """

    brightness: float = 0.2
    contrast: float = 0.2
    gamma: float = 0.2
    blur_prob: float = 0.5
    blur_sigma: tuple[float, float] = (0.1, 1.0)
    noise_std: float = 0.02


# ----------------------------------------------------------------------------- photometric


def _on_bone(values: jax.Array, mask: jax.Array) -> jax.Array:
    """Bone pixels clipped to ``[_BONE_FLOOR, 1]``; background exactly 0."""
    return jnp.where(mask, jnp.clip(values, _BONE_FLOOR, 1.0), 0.0)


def _sym(u: jax.Array, strength: float) -> jax.Array:
    """``U[-strength, strength]`` from ``u ~ U[0, 1)``."""
    return strength * (2.0 * u - 1.0)


def _brightness(x, mask, u, strength):
    return _on_bone(x * (1.0 + _sym(u, strength)), mask)


def _affine(x, mask, b, c):
    """Bone pixels ``b (μ + c (x - μ))``, ``μ`` the bone mean: contrast, then brightness."""
    m = mask.astype(_F32)
    mu = (x * m).sum() / jnp.maximum(m.sum(), 1.0)
    return _on_bone(b * (mu + c * (x - mu)), mask)


def _contrast(x, mask, u, strength):
    return _affine(x, mask, 1.0, 1.0 + _sym(u, strength))


def _gamma(x, mask, u, strength):
    # Background read as 1 (1^γ = 1, finite) and zeroed again by `_on_bone`; dm-pix clips its
    # input to [0, 1] first, which bone pixels already satisfy.
    gamma = jnp.exp(_sym(u, strength))
    return _on_bone(dm_pix.adjust_gamma(jnp.where(mask, x, 1.0), gamma), mask)


def _blur(x, mask, u_apply, u_sigma, sigma, prob):
    if prob <= 0.0:
        return _on_bone(x, mask)
    size = x.shape[0]
    radius = max(1, math.ceil(3.0 * sigma[1]))
    s = sigma[0] + (sigma[1] - sigma[0]) * u_sigma
    t = jnp.arange(size, dtype=_F32)
    d = t[:, None] - t[None, :]
    # Banded [S, S] Gaussian: zero beyond `radius` taps and outside the crop (zero padding);
    # unnormalised, since the normalised convolution divides the normalisation out.
    g = jnp.where(jnp.abs(d) <= radius, jnp.exp(-0.5 * (d / s) ** 2), 0.0)
    m = mask.astype(_F32)
    both = jnp.einsum("ij,cjk,lk->cil", g, jnp.stack([x * m, m]), g)
    blurred = both[0] / jnp.where(mask, both[1], 1.0)
    return _on_bone(jnp.where(u_apply < prob, blurred, x), mask)


def _noise(x, mask, z, std):
    return _on_bone(x + std * z, mask)


def adjust_brightness(key, x, mask, *, strength: float = 0.2) -> jax.Array:
    """Multiplies bone pixels by ``b ~ U[1 - strength, 1 + strength]``.

    Args:
      key: PRNG key.
      x: ``[S, S]`` float32 crop, background 0.
      mask: ``[S, S]`` bool bone mask.
      strength: half-width of the factor's range (0: identity).

    Returns:
      ``[S, S]`` float32: bone pixels clipped to ``[1/4096, 1]``, background exactly 0.
    """
    return _brightness(x, mask, jax.random.uniform(key, (), _F32), strength)


def adjust_contrast(key, x, mask, *, strength: float = 0.2) -> jax.Array:
    """Bone pixels ``μ + c (x - μ)`` about the bone mean ``μ``, ``c ~ U[1 ± strength]``.

    Args:
      key: PRNG key.
      x: ``[S, S]`` float32 crop, background 0.
      mask: ``[S, S]`` bool bone mask.
      strength: half-width of the factor's range (0: identity).

    Returns:
      ``[S, S]`` float32: bone pixels clipped to ``[1/4096, 1]``, background exactly 0.
    """
    return _contrast(x, mask, jax.random.uniform(key, (), _F32), strength)


def adjust_gamma(key, x, mask, *, strength: float = 0.2) -> jax.Array:
    """Bone pixels ``x^γ``, ``γ = exp(g)``, ``g ~ U[-strength, strength]``.

    Args:
      key: PRNG key.
      x: ``[S, S]`` float32 crop, bone pixels in ``(0, 1]``, background 0.
      mask: ``[S, S]`` bool bone mask.
      strength: half-width of ``log γ``'s range (0: identity).

    Returns:
      ``[S, S]`` float32: bone pixels clipped to ``[1/4096, 1]``, background exactly 0.
    """
    return _gamma(x, mask, jax.random.uniform(key, (), _F32), strength)


def gaussian_blur(
    key, x, mask, *, sigma: tuple[float, float] = (0.1, 1.0), prob: float = 0.5
) -> jax.Array:
    """With probability ``prob``, a Gaussian blur of the bone, renormalised on the mask.

    Normalised convolution ``(g * (x m)) / (g * m)`` on bone pixels, so the zero background
    neither darkens the bone border nor receives bone signal. ``g`` is separable with
    ``σ ~ U[sigma]`` crop pixels, truncated beyond ``ceil(3 max(sigma))`` taps, zero padded;
    each 1-D pass is a product with a banded ``[S, S]`` matrix (a per-crop σ then batches into
    matrix products, cheaper on CPU than a grouped convolution).

    Args:
      key: PRNG key.
      x: ``[S, S]`` float32 square crop, background 0.
      mask: ``[S, S]`` bool bone mask.
      sigma: ``(lo, hi)`` range of σ in pixels, ``lo > 0``.
      prob: probability of blurring (0: identity).

    Returns:
      ``[S, S]`` float32: bone pixels clipped to ``[1/4096, 1]``, background exactly 0.
    """
    u = jax.random.uniform(key, (2,), _F32)
    return _blur(x, mask, u[0], u[1], sigma, prob)


def gaussian_noise(key, x, mask, *, std: float = 0.02) -> jax.Array:
    """Adds ``N(0, std²)`` noise to bone pixels.

    Args:
      key: PRNG key.
      x: ``[S, S]`` float32 crop, background 0.
      mask: ``[S, S]`` bool bone mask.
      std: noise standard deviation (0: identity).

    Returns:
      ``[S, S]`` float32: bone pixels clipped to ``[1/4096, 1]``, background exactly 0.
    """
    return _noise(x, mask, jax.random.normal(key, jnp.shape(x), _F32), std)


def photometric_from_uniforms(
    x, mask, u, z, *, brightness, contrast, gamma, blur_prob, blur_sigma, noise_std
):
    """:func:`photometric` from uniforms ``u`` ``[5]`` and standard normals ``z`` ``[S, S]``."""
    # Brightness then contrast about the brightened bone mean is one affine map,
    # b (μ + c (x - μ)); fused, it has one consumer of the resampled crop (chaining the two
    # made XLA:CPU recompute the resample per op, ~4x slower).
    b, c = 1.0 + _sym(u[0], brightness), 1.0 + _sym(u[1], contrast)
    x = _affine(jnp.asarray(x, _F32), mask, b, c)
    x = _gamma(x, mask, u[2], gamma)
    x = _blur(x, mask, u[3], u[4], blur_sigma, blur_prob)
    return x if z is None else _noise(x, mask, z, noise_std)


def photometric(
    key: jax.Array,
    crop: jax.Array,
    mask: jax.Array,
    *,
    brightness: float = 0.2,
    contrast: float = 0.2,
    gamma: float = 0.2,
    blur_prob: float = 0.5,
    blur_sigma: tuple[float, float] = (0.1, 1.0),
    noise_std: float = 0.02,
) -> jax.Array:
    """Brightness, contrast, gamma, blur, then noise, each on bone pixels only.

    Brightness and contrast are applied as one affine map ``b (μ + c (x - μ))`` (``μ`` the
    bone mean), the same as :func:`adjust_brightness` then :func:`adjust_contrast` except that
    nothing is clipped in between. Zero strengths and ``blur_prob = 0`` give the identity (up
    to float rounding of the contrast and gamma maps). Bone pixels stay in ``[1/4096, 1]``,
    so ``result > 0 == mask``.

    Args:
      key: PRNG key.
      crop: ``[S, S]`` float32 crop, background 0.
      mask: ``[S, S]`` bool bone mask (``crop > 0`` for crops from this module).
      brightness: see :func:`adjust_brightness`.
      contrast: see :func:`adjust_contrast`.
      gamma: see :func:`adjust_gamma`.
      blur_prob: see :func:`gaussian_blur`.
      blur_sigma: see :func:`gaussian_blur`.
      noise_std: see :func:`gaussian_noise`.

    Returns:
      ``[S, S]`` float32, background exactly 0.
    """
    k_u, k_z = jax.random.split(key)
    u = jax.random.uniform(k_u, (N_PHOTO_UNIFORMS,), _F32)
    z = jax.random.normal(k_z, jnp.shape(crop), _F32) if noise_std > 0 else None
    strengths = dict(brightness=brightness, contrast=contrast, gamma=gamma)
    blur = dict(blur_prob=blur_prob, blur_sigma=blur_sigma, noise_std=noise_std)
    return photometric_from_uniforms(crop, mask, u, z, **strengths, **blur)
