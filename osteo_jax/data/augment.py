"""Multi-crop augmentation of bone segments for self-supervised learning (DINO-style).

A bone segment is a float32 ``[H, W]`` image in ``[0, 1]`` whose background is exactly 0 and
whose bone pixels are ``> 0``; its bone mask is ``image > 0``. A view is one affine resample
(crop box, horizontal flip, small rotation about the box centre) followed by photometric ops
on bone pixels only, so the background stays exactly 0 and ``crop > 0`` is the crop's mask.
The resample is :func:`osteo_jax.data.geometric.affine_crop` (its module gives the geometry and
why the mask stays exact); the photometric ops are :mod:`osteo_jax.data.photometric`.

Custom multi-crop rule: every crop must hold at least ``min_bone_fraction`` bone pixels; see
:func:`multi_crop` for the selection and its guarantee.

All functions are pure and jittable with static sizes, counts and policies; randomness comes
from explicit keys, drawn in a few vectorised calls (each threefry call site costs XLA compile
time). Reference: Caron et al., "Emerging Properties in Self-Supervised Vision Transformers"
(DINO), ICCV 2021 (multi-crop, photometric views).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from osteo_jax.data.geometric import (
    N_BOX_UNIFORMS,
    Box,
    boxes_from_uniforms,
    compose_crop,
    fill_border,
    nearest_mask,
    source_coords,
)
from osteo_jax.data.photometric import (
    N_PHOTO_UNIFORMS,
    PhotometricPolicy,
    photometric_from_uniforms,
)

__all__ = ["CropPolicy", "multi_crop", "multi_crop_batch"]

_F32 = jnp.float32
# Fallback ladder: squares with sides geometric from the policy's smallest box down to
# _FALLBACK_MIN_SIDE input pixels. All samples of the last rung (any rotation) lie within
# 0.5 / sqrt(2) < 0.36 px of the bone pixel centre it is centred on, so their nearest pixel is
# that bone pixel: the last rung always has bone fraction 1.
_FALLBACK_RUNGS = 3
_FALLBACK_MIN_SIDE = 0.5


@dataclasses.dataclass(frozen=True, kw_only=True)
class CropPolicy:
    """How :func:`multi_crop` cuts views from one segment (frozen, hashable: a static arg).

    Attributes:
      global_size: output side of a global crop, in pixels.
      local_size: output side of a local crop, in pixels.
      n_global: number of global crops (>= 1).
      n_local: number of local crops (>= 0).
      global_scale: ``(lo, hi)`` box area as a fraction of the segment's area, global crops.
      local_scale: the same for local crops.
      ratio: ``(lo, hi)`` box aspect ratio ``w / h``, sampled log-uniformly.
      max_rotation_deg: the box angle is ``U[-max, max]`` degrees.
      flip: flip horizontally with probability 1/2.
      min_bone_fraction: the custom rule's minimum bone fraction of every crop.
      custom: apply the custom multi-crop rule; if False, the first random box is kept.
      max_tries: random candidate boxes per crop under the custom rule.
      photometric: photometric strengths, or None for geometric views only.
    """

    global_size: int
    local_size: int
    n_global: int = 2
    n_local: int = 4
    global_scale: tuple[float, float] = (0.4, 1.0)
    local_scale: tuple[float, float] = (0.1, 0.4)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    max_rotation_deg: float = 10.0
    flip: bool = True
    min_bone_fraction: float = 0.10
    custom: bool = True
    max_tries: int = 8
    photometric: PhotometricPolicy | None = PhotometricPolicy()

    def __post_init__(self):
        if self.global_size < 1 or self.local_size < 1:
            raise ValueError("crop sizes must be positive")
        if self.n_global < 1 or self.n_local < 0 or self.max_tries < 1:
            raise ValueError("need n_global >= 1, n_local >= 0 and max_tries >= 1")
        for name in ("global_scale", "local_scale", "ratio"):
            lo, hi = getattr(self, name)
            if not 0.0 < lo <= hi:
                raise ValueError(f"{name} must satisfy 0 < lo <= hi, got {(lo, hi)}")
        if not 0.0 <= self.min_bone_fraction <= 1.0:
            raise ValueError(f"min_bone_fraction must lie in [0, 1], got {self.min_bone_fraction}")


# ----------------------------------------------------------------------------- custom rule


def _bone_point(mask: jax.Array) -> jax.Array:
    """Centre ``[2]`` of the bone pixel nearest the bone centroid (pixel (0, 0) if no bone)."""
    height, width = mask.shape
    rows = jnp.arange(height, dtype=_F32)[:, None]
    cols = jnp.arange(width, dtype=_F32)[None, :]
    m = mask.astype(_F32)
    n = jnp.maximum(m.sum(), 1.0)
    cy, cx = (m * rows).sum() / n, (m * cols).sum() / n
    d2 = jnp.where(mask, (rows - cy) ** 2 + (cols - cx) ** 2, jnp.inf)
    r, c = jnp.divmod(jnp.argmin(d2.ravel()), width)
    return jnp.stack([r, c]).astype(_F32) + 0.5


def _ladder(point: jax.Array, *, side0: float, angle: jax.Array, flip: jax.Array) -> Box:
    """The fallback ladder ``[K]``: squares centred on ``point``, largest first."""
    sides = np.geomspace(max(side0, _FALLBACK_MIN_SIDE), _FALLBACK_MIN_SIDE, _FALLBACK_RUNGS)
    k = _FALLBACK_RUNGS
    return Box(
        jnp.broadcast_to(point, (k, 2)),
        jnp.asarray(np.stack([sides, sides], -1), _F32),
        jnp.broadcast_to(angle, (k,)),
        jnp.broadcast_to(flip, (k,)),
    )


def _min_count(fraction: float, n: int) -> int:
    """Smallest count ``c`` with ``c / n >= fraction`` in float64 (as a test would measure)."""
    c = max(0, math.ceil(fraction * n))
    while c / n < fraction:
        c += 1
    while c > 0 and (c - 1) / n >= fraction:
        c -= 1
    return c


def _select_crop(u, filled, mask_f, point, *, size, scale, policy: CropPolicy):
    """One crop from candidate uniforms ``u`` ``[T, 6]``: ``([S, S] crop, bone fraction)``."""
    height, width = mask_f.shape
    boxes = boxes_from_uniforms(
        u,
        shape=(height, width),
        scale=scale,
        ratio=policy.ratio,
        max_rotation_deg=policy.max_rotation_deg,
        flip=policy.flip,
    )
    if not policy.custom:
        coords = jax.vmap(source_coords, in_axes=(0, None))(boxes, size)[0]
        mask = nearest_mask(mask_f, coords)
        return compose_crop(filled, coords, mask), mask.mean(dtype=_F32)
    tries = u.shape[0]
    side0 = math.sqrt(scale[0] * height * width)
    ladder = _ladder(point, side0=side0, angle=boxes.angle[0], flip=boxes.flip[0])
    boxes = jax.tree.map(lambda a, b: jnp.concatenate([a, b]), boxes, ladder)
    # A loop over candidates keeps the working set to one candidate per crop; vectorising all
    # candidates at once was 2-3x slower on CPU (the coordinates overflow the cache).
    masks = jax.lax.map(lambda box: nearest_mask(mask_f, source_coords(box, size)), boxes)
    counts = masks.sum(axis=(1, 2), dtype=jnp.int32)  # [T + K]
    ok = counts >= _min_count(policy.min_bone_fraction, size * size)
    first_ladder = jnp.where(ok[tries:].any(), tries + jnp.argmax(ok[tries:]), jnp.argmax(counts))
    idx = jnp.where(ok[:tries].any(), jnp.argmax(ok[:tries]), first_ladder)
    # The values are resampled from the chosen box's parameters (a dynamic index into stored
    # coordinates feeding the resample is ~10x slower on XLA:CPU); the mask is the tested one,
    # so the returned crop has exactly the tested bone count.
    chosen = jax.tree.map(lambda a: a[idx][None], boxes)
    coords = jax.vmap(source_coords, in_axes=(0, None))(chosen, size)[0]
    return compose_crop(filled, coords, masks[idx]), counts[idx].astype(_F32) / (size * size)


# ----------------------------------------------------------------------------- multi-crop


def _uniforms_per_crop(size: int, policy: CropPolicy) -> int:
    """How many uniforms one crop consumes: box candidates, then photometric, then noise."""
    tries = policy.max_tries if policy.custom else 1
    photo = policy.photometric
    n = tries * N_BOX_UNIFORMS
    if photo is not None:
        n += N_PHOTO_UNIFORMS + (size * size if photo.noise_std > 0 else 0)
    return n


def _std_normal(u: jax.Array) -> jax.Array:
    """Standard normals from uniforms ``u ~ U[0, 1)`` by the inverse CDF (as ``jax.random``)."""
    v = jnp.maximum(2.0 * u - 1.0, np.nextafter(np.float32(-1.0), np.float32(0.0)))
    return math.sqrt(2.0) * jax.lax.erf_inv(v)


def _crops(u, filled, mask_f, point, *, size, scale, policy: CropPolicy):
    """Crops of one kind from uniforms ``u`` ``[n, _uniforms_per_crop]``: ``([n, S, S], [n])``."""
    n = u.shape[0]
    if n == 0:
        return jnp.zeros((0, size, size), _F32), jnp.zeros((0,), _F32)
    tries = policy.max_tries if policy.custom else 1
    end = tries * N_BOX_UNIFORMS
    crops, fractions = jax.vmap(
        lambda v: _select_crop(v, filled, mask_f, point, size=size, scale=scale, policy=policy)
    )(u[:, :end].reshape(n, tries, N_BOX_UNIFORMS))
    photo = policy.photometric
    if photo is not None:
        u_photo = u[:, end : end + N_PHOTO_UNIFORMS]
        end += N_PHOTO_UNIFORMS
        z = _std_normal(u[:, end:].reshape(n, size, size)) if photo.noise_std > 0 else None
        strengths = dataclasses.asdict(photo)
        crops = jax.vmap(lambda x, v, w: photometric_from_uniforms(x, x > 0, v, w, **strengths))(
            crops, u_photo, z
        )
    return crops, fractions


def multi_crop(key: jax.Array, image: jax.Array, *, policy: CropPolicy) -> dict[str, jax.Array]:
    """Global and local views of ONE segment.

    Custom rule (``policy.custom``). Per crop, ``max_tries`` random boxes are drawn at once and
    the first with bone fraction ``>= min_bone_fraction`` is kept; if none passes, the largest
    passing box of a ladder of 3 squares centred on the bone pixel nearest the bone centroid
    (sides geometric from ``sqrt(scale_lo H W)`` down to 0.5 px; angle and flip of the first
    random box).

    Guarantee: if the segment has at least one bone pixel, EVERY returned crop has
    ``mean(crop > 0) >= min_bone_fraction`` -- whatever the segment's own bone fraction,
    because the last rung always has fraction 1 (its samples all lie within 0.36 px of one
    bone pixel centre). That rung is a last resort, a magnified one-pixel patch, reached only
    when the bone is too sparse or thin for the larger boxes. A segment with no bone pixel
    gets the first random box (fraction 0). Without the rule, the first random box is kept.

    Photometric ops (``policy.photometric``) act on bone pixels only and keep them ``> 0``, so
    the returned fractions are exactly ``mean(crop > 0)`` of the returned crops.

    Args:
      key: PRNG key.
      image: ``[H, W]`` float32 segment in ``[0, 1]``, background exactly 0.
      policy: static :class:`CropPolicy`.

    Returns:
      ``{"global": [n_global, G, G], "local": [n_local, L, L], "global_fraction": [n_global],
      "local_fraction": [n_local]}``, all float32.
    """
    image = jnp.asarray(image, _F32)
    if image.ndim != 2:
        raise ValueError(f"expected one [H, W] segment, got shape {image.shape}")
    mask = image > 0
    common = dict(
        filled=fill_border(image, mask),
        mask_f=mask.astype(_F32),
        point=_bone_point(mask),
        policy=policy,
    )
    # One threefry call per segment: each call site costs about a second of XLA compile time.
    n_g, n_l = policy.n_global, policy.n_local
    per_g = _uniforms_per_crop(policy.global_size, policy)
    per_l = _uniforms_per_crop(policy.local_size, policy)
    u = jax.random.uniform(key, (n_g * per_g + n_l * per_l,), _F32)
    glob, glob_frac = _crops(
        u[: n_g * per_g].reshape(n_g, per_g),
        size=policy.global_size,
        scale=policy.global_scale,
        **common,
    )
    loc, loc_frac = _crops(
        u[n_g * per_g :].reshape(n_l, per_l),
        size=policy.local_size,
        scale=policy.local_scale,
        **common,
    )
    return {"global": glob, "local": loc, "global_fraction": glob_frac, "local_fraction": loc_frac}


def multi_crop_batch(
    key: jax.Array, images: jax.Array, *, policy: CropPolicy
) -> dict[str, jax.Array]:
    """:func:`multi_crop` over a batch, one split key per example.

    Jit with ``jax.jit(multi_crop_batch, static_argnames="policy")``.

    Args:
      key: PRNG key.
      images: ``[B, H, W]`` float32 segments, background exactly 0.
      policy: static :class:`CropPolicy`.

    Returns:
      ``{"global": [B, n_global, G, G], "local": [B, n_local, L, L],
      "global_fraction": [B, n_global], "local_fraction": [B, n_local]}``, float32.
    """
    images = jnp.asarray(images, _F32)
    keys = jax.random.split(key, images.shape[0])
    return jax.vmap(lambda k, im: multi_crop(k, im, policy=policy))(keys, images)
