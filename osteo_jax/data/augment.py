"""Multi-crop augmentation of bone segments for self-supervised learning (DINO-style).

A bone segment is a float32 ``[H, W]`` image in ``[0, 1]`` whose background is exactly 0 and
whose bone pixels are ``> 0``; its bone mask is ``image > 0``. A view is one affine resample
(crop box, horizontal flip, small rotation about the box centre) followed by photometric ops
on bone pixels only, so the background stays exactly 0 and ``crop > 0`` is the crop's mask.

Geometry, in edge coordinates (the image spans ``[0, H] x [0, W]``, pixel ``(i, j)`` has centre
``(i + 1/2, j + 1/2)``). A box has centre ``c``, extent ``(h, w)``, angle ``θ`` and a flip bit;
output pixel ``(i, j)`` of an ``S x S`` crop reads the source point

    t_k = (k + 1/2) / S - 1/2,   v = t_i h,   u = ±t_j w  (minus when flipped),
    (y, x) = c + R(θ) (v, u),    R(θ) = [[cos θ, -sin θ], [sin θ, cos θ]],

with ``map_coordinates``. The crop's mask ``m`` is the nearest-neighbour (order 0) resample
of ``image > 0``, zero outside the image (one gather per sample keeps the custom rule's
candidate tests cheap). Bone values are one bilinear (order 1) resample of the *filled* image:
each background pixel next to bone (8-neighbourhood) holds the mean of its bone neighbours,
so ``crop = bilinear(filled)`` on ``m`` and 0 elsewhere. The four pixels read by a sample all
touch its nearest pixel, so where ``m`` holds they are bone or filled from bone: the zero
background does not darken the bone border and every bone value is ``> 0``. A crop's bone
fraction is ``mean(m) == mean(crop > 0)``. (Renormalising by a bilinear mask instead needs a
second bilinear gather feeding the same fusion, which XLA:CPU runs ~10x slower.)

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
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.ndimage import map_coordinates

from osteo_jax.data.photometric import (
    N_PHOTO_UNIFORMS,
    PhotometricPolicy,
    adjust_brightness,
    adjust_contrast,
    adjust_gamma,
    gaussian_blur,
    gaussian_noise,
    photometric,
    photometric_from_uniforms,
)

__all__ = [
    "CropPolicy",
    "PhotometricPolicy",
    "adjust_brightness",
    "adjust_contrast",
    "adjust_gamma",
    "affine_crop",
    "gaussian_blur",
    "gaussian_noise",
    "multi_crop",
    "multi_crop_batch",
    "photometric",
    "random_resized_crop",
]

_F32 = jnp.float32
# Fallback ladder: squares with sides geometric from the policy's smallest box down to
# _FALLBACK_MIN_SIDE input pixels. All samples of the last rung (any rotation) lie within
# 0.5 / sqrt(2) < 0.36 px of the bone pixel centre it is centred on, so their nearest pixel is
# that bone pixel: the last rung always has bone fraction 1.
_FALLBACK_RUNGS = 3
_FALLBACK_MIN_SIDE = 0.5
_N_BOX_UNIFORMS = 6  # area, ratio, centre row, centre col, angle, flip


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


class _Box(NamedTuple):
    """Crop boxes in edge coordinates; fields may carry a leading batch axis ``[...]``."""

    center: jax.Array  # [..., 2] (row, col)
    extent: jax.Array  # [..., 2] (height, width) in input pixels
    angle: jax.Array  # [...] radians
    flip: jax.Array  # [...] bool


# ----------------------------------------------------------------------------- geometry


def _source_coords(box: _Box, size: int) -> jax.Array:
    """Pixel-index coordinates ``[2, S, S]`` read by each output pixel (module equation)."""
    # (k + 1/2) h / S - h / 2 rather than t_k h, and a flip as the reversed index S - k - 1/2:
    # both exact for an identity box (h = S), whatever XLA reassociates.
    k = jnp.arange(size, dtype=_F32) + 0.5
    v = (k * box.extent[0] / size - box.extent[0] / 2)[:, None]
    k = jnp.where(box.flip, size - k, k)
    u = (k * box.extent[1] / size - box.extent[1] / 2)[None, :]
    cos, sin = jnp.cos(box.angle), jnp.sin(box.angle)
    y = box.center[0] + (cos * v - sin * u)
    x = box.center[1] + (sin * v + cos * u)
    return jnp.stack([y - 0.5, x - 0.5])


def _fill_border(image: jax.Array, mask: jax.Array) -> jax.Array:
    """``image`` ``[H, W]`` with each background pixel set to the mean of its bone 3x3 neighbours.

    Background pixels with no bone neighbour stay 0.
    """
    m = mask.astype(_F32)

    def box3(a):
        p = jnp.pad(a, 1)
        rows = p[:-2] + p[1:-1] + p[2:]
        return rows[:, :-2] + rows[:, 1:-1] + rows[:, 2:]

    return jnp.where(mask, image, box3(image * m) / jnp.maximum(box3(m), 1.0))


def _nearest_mask(mask_f: jax.Array, coords: jax.Array) -> jax.Array:
    """Bone mask ``[S, S]`` bool: order-0 samples of ``mask_f`` ``[H, W]``, zero outside."""
    sample = map_coordinates(mask_f, [coords[0], coords[1]], order=0, mode="constant", cval=0.0)
    return sample > 0.5


def _compose(filled: jax.Array, coords: jax.Array, mask: jax.Array) -> jax.Array:
    """The crop ``[S, S]``: bilinear samples of the filled image on ``mask``, 0 elsewhere."""
    # Edge-replicating mode: a bone pixel at the image edge is not darkened by outside zeros
    # (outside samples are off `mask` anyway).
    value = map_coordinates(filled, [coords[0], coords[1]], order=1, mode="nearest")
    # `value` is a convex combination of bone values with weight >= 1/4 on one of them; `tiny`
    # only guards float underflow so that `crop > 0` is exactly `mask`.
    return jnp.where(mask, jnp.maximum(value, np.finfo(np.float32).tiny), 0.0)


def _boxes(
    u: jax.Array,
    *,
    shape: tuple[int, int],
    scale: tuple[float, float],
    ratio: tuple[float, float],
    max_rotation_deg: float,
    flip: bool,
) -> _Box:
    """Boxes ``[n]`` from uniforms ``u`` ``[n, 6]``: area ``U[scale] H W``, log-uniform ratio.

    A side longer than the image is clipped to it (the area then shrinks); the centre is
    uniform over the positions that keep the unrotated box inside the image.
    """
    height, width = shape
    area = (scale[0] + (scale[1] - scale[0]) * u[:, 0]) * (height * width)
    lo, hi = math.log(ratio[0]), math.log(ratio[1])
    r = jnp.exp(lo + (hi - lo) * u[:, 1])
    h = jnp.minimum(jnp.sqrt(area / r), float(height))
    w = jnp.minimum(jnp.sqrt(area * r), float(width))
    cy = h / 2 + u[:, 2] * (height - h)
    cx = w / 2 + u[:, 3] * (width - w)
    angle = math.radians(max_rotation_deg) * (2.0 * u[:, 4] - 1.0)
    flips = (u[:, 5] < 0.5) & flip
    return _Box(jnp.stack([cy, cx], -1), jnp.stack([h, w], -1), angle, flips)


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


def _ladder(point: jax.Array, *, side0: float, angle: jax.Array, flip: jax.Array) -> _Box:
    """The fallback ladder ``[K]``: squares centred on ``point``, largest first."""
    sides = np.geomspace(max(side0, _FALLBACK_MIN_SIDE), _FALLBACK_MIN_SIDE, _FALLBACK_RUNGS)
    k = _FALLBACK_RUNGS
    return _Box(
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


def affine_crop(
    image: jax.Array,
    *,
    size: int,
    center: jax.Array,
    extent: jax.Array,
    angle: jax.Array | float = 0.0,
    flip: jax.Array | bool = False,
) -> tuple[jax.Array, jax.Array]:
    """Resamples one box of a segment (module equation): nearest mask, bilinear values.

    Args:
      image: ``[H, W]`` float32 segment, background exactly 0.
      size: output side ``S`` (static).
      center: ``[2]`` box centre ``(row, col)`` in edge coordinates.
      extent: ``[2]`` box ``(height, width)`` in input pixels.
      angle: scalar box rotation ``θ`` in radians.
      flip: scalar bool, horizontal flip of the output.

    Returns:
      ``(crop, mask)``: ``[S, S]`` float32 crop and ``[S, S]`` bool mask, ``mask == crop > 0``.
    """
    image = jnp.asarray(image, _F32)
    box = _Box(
        jnp.asarray(center, _F32),
        jnp.asarray(extent, _F32),
        jnp.asarray(angle, _F32),
        jnp.asarray(flip, bool),
    )
    coords = _source_coords(box, size)
    bone = image > 0
    mask = _nearest_mask(bone.astype(_F32), coords)
    return _compose(_fill_border(image, bone), coords, mask), mask


def random_resized_crop(
    key: jax.Array,
    image: jax.Array,
    *,
    size: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    max_rotation_deg: float,
    flip: bool,
) -> tuple[jax.Array, jax.Array]:
    """One random box (area, ratio, position, angle, flip) resampled by :func:`affine_crop`.

    Args:
      key: PRNG key.
      image: ``[H, W]`` float32 segment, background exactly 0.
      size: output side ``S`` (static).
      scale: ``(lo, hi)`` box area as a fraction of ``H W``.
      ratio: ``(lo, hi)`` aspect ratio ``w / h``, log-uniform.
      max_rotation_deg: angle ``~ U[-max, max]`` degrees.
      flip: flip horizontally with probability 1/2 if True.

    Returns:
      ``(crop, bone_fraction)``: ``[S, S]`` float32 and the float32 scalar ``mean(crop > 0)``.
    """
    image = jnp.asarray(image, _F32)
    u = jax.random.uniform(key, (1, _N_BOX_UNIFORMS), _F32)
    box = _boxes(
        u,
        shape=image.shape,
        scale=scale,
        ratio=ratio,
        max_rotation_deg=max_rotation_deg,
        flip=flip,
    )
    box = jax.tree.map(lambda a: a[0], box)
    crop, mask = affine_crop(
        image, size=size, center=box.center, extent=box.extent, angle=box.angle, flip=box.flip
    )
    return crop, mask.mean(dtype=_F32)


def _select_crop(u, filled, mask_f, point, *, size, scale, policy: CropPolicy):
    """One crop from candidate uniforms ``u`` ``[T, 6]``: ``([S, S] crop, bone fraction)``."""
    height, width = mask_f.shape
    boxes = _boxes(
        u,
        shape=(height, width),
        scale=scale,
        ratio=policy.ratio,
        max_rotation_deg=policy.max_rotation_deg,
        flip=policy.flip,
    )
    if not policy.custom:
        coords = jax.vmap(_source_coords, in_axes=(0, None))(boxes, size)[0]
        mask = _nearest_mask(mask_f, coords)
        return _compose(filled, coords, mask), mask.mean(dtype=_F32)
    tries = u.shape[0]
    side0 = math.sqrt(scale[0] * height * width)
    ladder = _ladder(point, side0=side0, angle=boxes.angle[0], flip=boxes.flip[0])
    boxes = jax.tree.map(lambda a, b: jnp.concatenate([a, b]), boxes, ladder)
    # A loop over candidates keeps the working set to one candidate per crop; vectorising all
    # candidates at once was 2-3x slower on CPU (the coordinates overflow the cache).
    masks = jax.lax.map(lambda box: _nearest_mask(mask_f, _source_coords(box, size)), boxes)
    counts = masks.sum(axis=(1, 2), dtype=jnp.int32)  # [T + K]
    ok = counts >= _min_count(policy.min_bone_fraction, size * size)
    first_ladder = jnp.where(ok[tries:].any(), tries + jnp.argmax(ok[tries:]), jnp.argmax(counts))
    idx = jnp.where(ok[:tries].any(), jnp.argmax(ok[:tries]), first_ladder)
    # The values are resampled from the chosen box's parameters (a dynamic index into stored
    # coordinates feeding the resample is ~10x slower on XLA:CPU); the mask is the tested one,
    # so the returned crop has exactly the tested bone count.
    chosen = jax.tree.map(lambda a: a[idx][None], boxes)
    coords = jax.vmap(_source_coords, in_axes=(0, None))(chosen, size)[0]
    return _compose(filled, coords, masks[idx]), counts[idx].astype(_F32) / (size * size)


# ----------------------------------------------------------------------------- multi-crop


def _uniforms_per_crop(size: int, policy: CropPolicy) -> int:
    """How many uniforms one crop consumes: box candidates, then photometric, then noise."""
    tries = policy.max_tries if policy.custom else 1
    photo = policy.photometric
    n = tries * _N_BOX_UNIFORMS
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
    end = tries * _N_BOX_UNIFORMS
    crops, fractions = jax.vmap(
        lambda v: _select_crop(v, filled, mask_f, point, size=size, scale=scale, policy=policy)
    )(u[:, :end].reshape(n, tries, _N_BOX_UNIFORMS))
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
        filled=_fill_border(image, mask),
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
